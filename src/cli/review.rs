//! `portcullis review`: the security review of an endpoint file, optionally
//! with the exposure changes against an older version and the recorded
//! decisions that would change under it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use portcullis::audit::{self, Access, Store, StoredRecord};
use portcullis::review;
use time::OffsetDateTime;

use super::{EXIT_CHECK_FAILED, EXIT_OK};

/// Rows read per round trip when replaying an audit log.
const PAGE: u32 = 1000;

/// Output format of `review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Markdown, for people signing off.
    #[value(alias = "markdown")]
    Md,
    /// One JSON object `{"report": ..., "diff": ..., "replay": ...}`;
    /// `diff` is null without `--against`, `replay` without `--replay`.
    Json,
}

/// Arguments of `portcullis review`.
#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// The endpoint file to review.
    #[arg(value_name = "ENDPOINTS.toml")]
    pub config: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,

    /// An older version of the file (for example the one in production):
    /// also print who gains or loses access to what.
    #[arg(long, value_name = "OLD.toml")]
    pub against: Option<PathBuf>,

    /// An audit store (`sqlite://PATH`, a file path, or `postgres://...`):
    /// decide its recorded connections, requests and tool calls again under
    /// this file and list those that would come out differently. Exit 1 if
    /// any would.
    #[arg(long, value_name = "AUDIT")]
    pub replay: Option<String>,

    /// With --replay: only records at or after this time, an age like
    /// `15m`, `2h`, `7d`, or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", requires = "replay", value_parser = super::when::parse_when)]
    pub since: Option<OffsetDateTime>,

    /// With --replay: only this connector's chain.
    #[arg(long, value_name = "NAME", requires = "replay")]
    pub connector: Option<String>,

    /// The tailnet's policy file (Tailscale or headscale, HuJSON): also say
    /// which peers each device will see and whether devices see each other.
    #[arg(long, value_name = "POLICY.hujson")]
    pub tailnet_policy: Option<PathBuf>,

    /// With --tailnet-policy: a tag the devices carry (repeatable). Default:
    /// `[tailnet] tags`; needed when the tags come from the auth key.
    #[arg(long, value_name = "TAG", requires = "tailnet_policy")]
    pub device_tag: Vec<String>,

    /// Exit with 1 if the review raises any warning.
    #[arg(long)]
    pub strict: bool,
}

/// Prints the review; exit 0, or 1 on warnings under `--strict` or on
/// recorded decisions that would change under `--replay`. An invalid file
/// (either one) or an unreadable audit store is an error, exit 2.
pub async fn review(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config, "endpoint file")?;
    let old = match &args.against {
        Some(path) => Some(super::load_config(path, "old endpoint file")?),
        None => None,
    };
    let report = review::report(&config);
    let diff = old.as_ref().map(|old| review::diff(old, &config));
    let peers = match &args.tailnet_policy {
        Some(path) => Some(tailnet_policy(path, &args.device_tag, &config)?),
        None => None,
    };
    let replay = match &args.replay {
        Some(url) => Some(
            replay(&config, url, args.since, args.connector.as_deref())
                .await
                .with_context(|| format!("cannot read audit store {}", super::redact_url(url)))?,
        ),
        None => None,
    };
    let text = match args.format {
        Format::Md => {
            let mut text = review::render_markdown(&report);
            if let Some(diff) = &diff {
                text.push('\n');
                text.push_str(&review::render_diff_markdown(diff));
            }
            if let Some(replay) = &replay {
                text.push('\n');
                text.push_str(&review::render_replay_markdown(replay));
            }
            if let Some(peers) = &peers {
                text.push('\n');
                text.push_str(&peers.render_markdown());
            }
            text
        }
        Format::Json => {
            let value = JsonOutput {
                report: &report,
                diff: diff.as_ref(),
                replay: replay.as_ref(),
                tailnet_policy: peers.as_ref(),
            };
            let mut text =
                serde_json::to_string_pretty(&value).context("cannot render the review as JSON")?;
            text.push('\n');
            text
        }
    };
    super::print(&text)?;
    let mut failed = false;
    let warnings = report.warnings.len() + peers.as_ref().map_or(0, |p| p.warnings.len());
    if args.strict && warnings > 0 {
        let s = if warnings == 1 { "" } else { "s" };
        eprintln!(
            "error: {} has {warnings} review warning{s} and --strict was given",
            args.config.display()
        );
        failed = true;
    }
    if let Some(replay) = replay.as_ref().filter(|r| r.has_changes()) {
        let changed = replay.totals.changed;
        let s = if changed == 1 { "" } else { "s" };
        eprintln!(
            "error: {changed} recorded decision{s} would change under {}",
            args.config.display()
        );
        failed = true;
    }
    Ok(ExitCode::from(if failed {
        EXIT_CHECK_FAILED
    } else {
        EXIT_OK
    }))
}

/// Reads the chains of `url` (or only `connector`'s) page by page and
/// replays every record at or after `since` under `config`.
async fn replay(
    config: &portcullis::config::Config,
    url: &str,
    since: Option<OffsetDateTime>,
    connector: Option<&str>,
) -> anyhow::Result<review::Replay> {
    let store = Store::open(url, Access::ReadOnly).await?;
    let result = replay_store(&store, config, since, connector).await;
    store.close().await;
    let replayer = result?;
    let source = review::ReplaySource {
        store: super::redact_url(url),
        since: since.map(audit::time_fmt::format),
        connector: connector.map(str::to_owned),
    };
    Ok(replayer.finish(source))
}

async fn replay_store(
    store: &Store,
    config: &portcullis::config::Config,
    since: Option<OffsetDateTime>,
    connector: Option<&str>,
) -> anyhow::Result<review::Replayer> {
    let names = match connector {
        Some(name) => vec![name.to_owned()],
        None => store.connectors().await?,
    };
    let mut replayer = review::Replayer::new(config);
    for name in names {
        let mut after = 0u64;
        loop {
            let rows = store.rows_after(&name, after, PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for row in &rows {
                let stored = StoredRecord::from_row(row)?;
                let in_window = match (since, stored.record.time) {
                    (None, _) => true,
                    (Some(since), Some(time)) => time >= since,
                    (Some(_), None) => false,
                };
                if in_window {
                    replayer.add(&stored);
                }
            }
        }
    }
    Ok(replayer)
}

/// The JSON output: the report first, then the diff (null without
/// `--against`), the replay (null without `--replay`) and the tailnet
/// policy view (null without `--tailnet-policy`).
#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    report: &'a review::Report,
    diff: Option<&'a review::Diff>,
    replay: Option<&'a review::Replay>,
    tailnet_policy: Option<&'a review::PeerView>,
}

/// Reads the tailnet policy at `path` and says which peers the devices of
/// `config` (tagged `tags`, else `[tailnet] tags`) will see under it.
fn tailnet_policy(
    path: &std::path::Path,
    tags: &[String],
    config: &portcullis::config::Config,
) -> anyhow::Result<review::PeerView> {
    let tags = if tags.is_empty() {
        config.tailnet.tags.clone()
    } else {
        tags.to_vec()
    };
    if tags.is_empty() {
        anyhow::bail!(
            "--tailnet-policy: which tags do the devices carry? `[tailnet] tags` is empty \
             (the auth key tags them); pass --device-tag tag:NAME"
        );
    }
    if let Some(bad) = tags.iter().find(|t| !t.starts_with("tag:") || t.len() < 5) {
        anyhow::bail!("--device-tag {bad:?}: a tag looks like tag:NAME");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read tailnet policy {}", path.display()))?;
    review::analyse_tailnet_policy(&path.display().to_string(), &text, &tags)
        .map_err(|e| anyhow::anyhow!("invalid tailnet policy {e}"))
}
