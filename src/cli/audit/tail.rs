//! `portcullis audit tail`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use portcullis::audit::{self, Filter, StoredRecord, Tail};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{FilterArgs, StoreArgs};
use crate::cli::EXIT_OK;

/// How often `--follow` looks for new records.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Arguments of `portcullis audit tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    filter: FilterArgs,

    /// How many of the most recent matching records to print first.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 20)]
    limit: u32,

    /// Keep printing new records as they are written, until Ctrl-C or
    /// SIGTERM.
    #[arg(long, short)]
    follow: bool,

    /// Print one JSON object per record instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the last records, then with `--follow` new ones every 500 ms.
pub async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let url = args.store.url()?;
    let context = || format!("cannot read audit store {}", crate::cli::redact_url(&url));
    let filter = args.filter.to_filter(None);
    let backlog_filter = Filter {
        limit: Some(args.limit),
        ..filter.clone()
    };
    let mut printer = Printer::new(args.json);
    if !args.follow {
        let backlog = audit::query(&url, &backlog_filter)
            .await
            .with_context(context)?;
        printer.print(&backlog)?;
        return Ok(ExitCode::from(EXIT_OK));
    }
    // Signals are caught before anything is printed, so a stop that comes
    // right after the first output still ends the loop cleanly.
    let mut stop = Stop::new().context("cannot catch SIGINT/SIGTERM")?;
    // Follow from the current heads first, then read the backlog: a record
    // written in between shows up in both and is printed once, and none is
    // missed.
    let mut follower = Tail::open(&url, filter.connector.as_deref(), 0)
        .await
        .with_context(context)?;
    let result = async {
        let backlog = audit::query(&url, &backlog_filter)
            .await
            .with_context(context)?;
        printer.print(&backlog)?;
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.wait() => return Ok(()),
                _ = interval.tick() => {
                    let fresh = follower.poll().await.with_context(context)?;
                    let shown: Vec<StoredRecord> = fresh
                        .into_iter()
                        .filter(|r| super::matches(&filter, r))
                        .collect();
                    printer.print(&shown)?;
                }
            }
        }
    }
    .await;
    follower.close().await;
    result.map(|()| ExitCode::from(EXIT_OK))
}

/// SIGINT (Ctrl-C) or SIGTERM.
struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    fn new() -> std::io::Result<Stop> {
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Prints batches of records, each record once: the table header only
/// before the first batch, and no record at or below a seq already printed
/// for its connector.
struct Printer {
    json: bool,
    header_done: bool,
    printed: BTreeMap<String, u64>,
}

impl Printer {
    fn new(json: bool) -> Printer {
        Printer {
            json,
            header_done: false,
            printed: BTreeMap::new(),
        }
    }

    fn print(&mut self, records: &[StoredRecord]) -> anyhow::Result<()> {
        let fresh: Vec<StoredRecord> = records
            .iter()
            .filter(|r| {
                self.printed
                    .get(&r.record.connector)
                    .is_none_or(|&seen| r.seq > seen)
            })
            .cloned()
            .collect();
        for r in &fresh {
            let seen = self.printed.entry(r.record.connector.clone()).or_insert(0);
            *seen = (*seen).max(r.seq);
        }
        let text = if self.json {
            super::json_lines(&fresh)?
        } else {
            let table = audit::render_table(&fresh);
            if self.header_done {
                table.lines().skip(1).map(|l| format!("{l}\n")).collect()
            } else {
                self.header_done = true;
                table
            }
        };
        if text.is_empty() {
            return Ok(());
        }
        crate::cli::print(&text)
    }
}
