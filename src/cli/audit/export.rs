//! `portcullis audit export`.

use std::fs::OpenOptions;
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use portcullis::audit;

use super::StoreArgs;
use crate::cli::EXIT_OK;

/// Arguments of `portcullis audit export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// JSON lines: one object per record with `connector`, `seq`,
    /// `prev_hash`, `hash`, the exact hashed `body` and the parsed `record`
    /// (the only format so far, so required).
    #[arg(long, required = true)]
    jsonl: bool,

    /// Write to this file (created with mode 0600, replaced only once the
    /// export is complete) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Writes every record of every chain, in connector and seq order.
pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let url = args.store.url()?;
    let what = || format!("cannot export audit store {}", crate::cli::redact_url(&url));
    match &args.output {
        None => {
            let mut out = BufWriter::new(std::io::stdout());
            let lines = audit::export_jsonl(&url, &mut out)
                .await
                .with_context(what)?;
            tracing::debug!(lines, "audit export written to stdout");
        }
        Some(path) => {
            let partial = partial_path(path);
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut out = BufWriter::new(file);
            let written = audit::export_jsonl(&url, &mut out).await;
            let lines = match written {
                Ok(lines) => lines,
                Err(e) => {
                    drop(out);
                    // The partial file is useless; the export error matters more.
                    let _ = std::fs::remove_file(&partial);
                    return Err(anyhow::Error::new(e).context(what()));
                }
            };
            let file = out
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("cannot write {}", partial.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(&partial, path).with_context(|| {
                format!("cannot move {} to {}", partial.display(), path.display())
            })?;
            tracing::info!(lines, file = %path.display(), "audit export written");
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `dir/.name.partial` next to `path`, so the rename stays on one file
/// system.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".to_owned());
    path.with_file_name(format!(".{name}.partial"))
}
