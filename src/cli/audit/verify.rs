//! `portcullis audit verify`.

use std::process::ExitCode;

use anyhow::Context;
use portcullis::audit;

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
}

/// Verifies the chains. Prints one summary line per chain (compare its
/// head hash with the one the connector logged at its last shutdown) and
/// `OK`; exit 1 with the first bad record on stderr if a chain is broken.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let url = args.store.url()?;
    let report = audit::verify(&url, args.connector.as_deref())
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
                "{}: {} records, head seq {}, head hash {}, {end}\n",
                chain.connector, chain.records, chain.head_seq, chain.head_hash
            ));
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
