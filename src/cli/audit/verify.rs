//! `portcullis audit verify`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use portcullis::audit::{self, Anchors, checkpoint};

use super::StoreArgs;
use crate::cli::{EXIT_CHECK_FAILED, EXIT_OK};

/// Arguments of `portcullis audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// Check only this connector's chain; it must have records.
    #[arg(long, value_name = "NAME")]
    connector: Option<String>,

    /// Print the verify report as one JSON object.
    #[arg(long)]
    json: bool,

    /// A signed checkpoint kept elsewhere (a SIEM, the log): the store must
    /// hold the head it names. Repeatable. Replaces the witness in the
    /// state directory, which is used by default with --config.
    #[arg(long, value_name = "FILE")]
    checkpoint: Vec<PathBuf>,

    /// The checkpoint verifier key (`audit.pub`); default with --config:
    /// `<state_dir>/audit.pub`. Without a key, checkpoint signatures are
    /// not checked (their hashes still are).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// Verifies the chains. Prints one summary line per chain (compare its
/// head hash with the one the connector logged at its last shutdown) and
/// `OK`; exit 1 with the first bad record on stderr if a chain is broken.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let url = args.store.url()?;
    let anchors = anchors(&args)?;
    if anchors.checkpoints.is_empty() {
        tracing::warn!(
            "no signed checkpoint to compare with (give --config with a witness, or --checkpoint): \
             a chain cut short or recomputed after the last checkpoint record cannot be detected"
        );
    }
    let report = audit::verify_anchored(&url, args.connector.as_deref(), &anchors)
        .await
        .with_context(|| format!("cannot verify audit store {}", crate::cli::redact_url(&url)))?;
    let mut text = String::new();
    if args.json {
        text = serde_json::to_string_pretty(&report)? + "\n";
    } else {
        for chain in &report.connectors {
            let end = if chain.ends_with_shutdown {
                "ends with shutdown"
            } else {
                "no shutdown record at the end (running, crashed, or cut short)"
            };
            text.push_str(&format!(
                "{}: {} records, head seq {}, head hash {}, {end}; {} checkpoint records\n",
                chain.connector,
                chain.records,
                chain.head_seq,
                chain.head_hash,
                chain.checkpoints_in_chain
            ));
        }
        for anchor in report.anchors.iter().filter(|a| a.ok) {
            if let Some(cp) = &anchor.checkpoint {
                let signed = if cp.signature_checked {
                    "signature verified"
                } else {
                    "signature NOT checked (no key)"
                };
                text.push_str(&format!(
                    "checkpoint {}: matches ({cp}; {signed})\n",
                    anchor.source
                ));
            }
        }
    }
    if let Some(bad) = &report.first_bad {
        crate::cli::print(&text)?;
        eprintln!(
            "error: audit chain broken: connector {}, seq {}: {}",
            bad.connector, bad.seq, bad.problem
        );
        return Ok(ExitCode::from(EXIT_CHECK_FAILED));
    }
    if let Some(name) = &args.connector
        && report.records == 0
    {
        crate::cli::print(&text)?;
        eprintln!("error: connector {name} has no audit records in this store");
        return Ok(ExitCode::from(EXIT_CHECK_FAILED));
    }
    if report.connectors.is_empty() {
        tracing::warn!("the audit store holds no records");
    }
    if !args.json {
        let chains = report.connectors.len();
        let s = if chains == 1 { "" } else { "s" };
        text.push_str(&format!(
            "OK: {} records in {chains} chain{s} verified\n",
            report.records
        ));
    }
    crate::cli::print(&text)?;
    Ok(ExitCode::from(EXIT_OK))
}

/// The checkpoints and key to verify against: the flags, else the witness
/// and key beside the state of the `--config` file.
fn anchors(args: &VerifyArgs) -> anyhow::Result<Anchors> {
    let state_dir = match &args.store.config {
        Some(path) => Some(
            crate::cli::load_config(path, "endpoint file")?
                .tailnet
                .state_dir,
        ),
        None => None,
    };
    let key_path = args.key.clone().or_else(|| {
        state_dir
            .as_ref()
            .map(|d| d.join(checkpoint::PUBLIC_KEY_FILE))
            .filter(|p| p.exists())
    });
    let key = match &key_path {
        Some(path) => Some(read(path, "checkpoint verifier key")?),
        None => None,
    };
    let files: Vec<PathBuf> = if args.checkpoint.is_empty() {
        state_dir
            .map(|d| d.join(checkpoint::WITNESS_FILE))
            .filter(|p| p.exists())
            .into_iter()
            .collect()
    } else {
        args.checkpoint.clone()
    };
    let mut checkpoints = Vec::new();
    for path in files {
        checkpoints.push((path.display().to_string(), read(&path, "checkpoint")?));
    }
    Ok(Anchors { key, checkpoints })
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}
