//! `portcullis audit query`.

use std::process::ExitCode;

use anyhow::Context;
use portcullis::audit;

use super::{FilterArgs, StoreArgs};
use crate::cli::EXIT_OK;

/// Arguments of `portcullis audit query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    filter: FilterArgs,

    /// Show at most this many records: the most recent ones.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    limit: u32,

    /// Print one JSON object per record instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the most recent matching records, oldest first.
pub async fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let url = args.store.url()?;
    let filter = args.filter.to_filter(Some(args.limit));
    let records = audit::query(&url, &filter)
        .await
        .with_context(|| format!("cannot query audit store {}", crate::cli::redact_url(&url)))?;
    let text = if args.json {
        super::json_lines(&records)?
    } else {
        audit::render_table(&records)
    };
    crate::cli::print(&text)?;
    if u32::try_from(records.len()).is_ok_and(|n| n == args.limit) {
        tracing::info!(
            "showing the {} most recent matching records; raise --limit for more",
            args.limit
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}
