//! `portcullis audit`: read, verify and export the audit log. Every
//! subcommand opens the store read-only.

mod export;
mod query;
mod tail;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use portcullis::audit::{Decision, Filter, Kind, StoredRecord};
use time::OffsetDateTime;

/// Arguments of `portcullis audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Print the most recent records matching the filters, oldest first.
    Query(query::QueryArgs),
    /// Print the last records, and with --follow every new one as it is
    /// written, until Ctrl-C or SIGTERM.
    Tail(tail::TailArgs),
    /// Check the hash chain of every connector (or one); exit 1 if broken.
    Verify(verify::VerifyArgs),
    /// Write every record as JSON lines, for a SIEM.
    Export(export::ExportArgs),
}

/// Runs one `audit` subcommand.
pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Query(a) => query::query(a).await,
        AuditCommand::Tail(a) => tail::tail(a).await,
        AuditCommand::Verify(a) => verify::verify(a).await,
        AuditCommand::Export(a) => export::export(a).await,
    }
}

/// Where the audit store is: given directly, or derived from the endpoint
/// file the connector runs with.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct StoreArgs {
    /// Audit store: `sqlite://PATH`, a file path, or `postgres://...`.
    #[arg(long, value_name = "URL")]
    audit: Option<String>,

    /// Use the store `portcullis run` uses for this endpoint file by
    /// default: `sqlite://<state_dir>/audit.db`.
    #[arg(long, value_name = "ENDPOINTS.toml")]
    pub(super) config: Option<PathBuf>,
}

impl StoreArgs {
    /// The store URL.
    fn url(&self) -> anyhow::Result<String> {
        match (&self.audit, &self.config) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(path)) => {
                let config = crate::cli::load_config(path, "endpoint file")?;
                Ok(crate::cli::default_audit_url(&config))
            }
            (None, None) => anyhow::bail!("give the audit store with --audit URL or --config FILE"),
        }
    }
}

/// Decision values accepted by `--decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DecisionArg {
    /// Allowed by policy.
    Permit,
    /// Refused by policy.
    Deny,
}

impl From<DecisionArg> for Decision {
    fn from(value: DecisionArg) -> Self {
        match value {
            DecisionArg::Permit => Decision::Permit,
            DecisionArg::Deny => Decision::Deny,
        }
    }
}

fn kind_parser() -> impl TypedValueParser<Value = Kind> {
    PossibleValuesParser::new(Kind::ALL.map(Kind::as_str))
        .try_map(|name| Kind::parse(&name).ok_or_else(|| format!("unknown record kind {name:?}")))
}

/// Which records to show; every given filter must match.
#[derive(Debug, Clone, clap::Args)]
struct FilterArgs {
    /// Only records at or after this time: an age like `15m`, `2h`, `7d`,
    /// or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::cli::when::parse_when)]
    since: Option<OffsetDateTime>,

    /// Only records before this time: an age or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::cli::when::parse_when)]
    until: Option<OffsetDateTime>,

    /// Only this connector's chain.
    #[arg(long, value_name = "NAME")]
    connector: Option<String>,

    /// Only callers whose user, node name or tags contain this text
    /// (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    caller: Option<String>,

    /// Only this endpoint.
    #[arg(long, value_name = "NAME")]
    endpoint: Option<String>,

    /// Only this policy decision.
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,

    /// Only this kind of record.
    #[arg(long, value_parser = kind_parser())]
    kind: Option<Kind>,
}

impl FilterArgs {
    fn to_filter(&self, limit: Option<u32>) -> Filter {
        Filter {
            since: self.since,
            until: self.until,
            connector: self.connector.clone(),
            caller: self.caller.clone(),
            endpoint: self.endpoint.clone(),
            decision: self.decision.map(Decision::from),
            kind: self.kind,
            limit,
        }
    }
}

/// Whether `stored` passes `filter` (its limit aside); the same rules as
/// the store's query, for records read while following.
fn matches(filter: &Filter, stored: &StoredRecord) -> bool {
    let r = &stored.record;
    let in_time = |bound: Option<OffsetDateTime>, after: bool| match (bound, r.time) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(b), Some(t)) => {
            if after {
                t >= b
            } else {
                t < b
            }
        }
    };
    let caller_ok = match &filter.caller {
        None => true,
        Some(text) => r.caller.as_ref().is_some_and(|c| {
            c.search_text()
                .to_lowercase()
                .contains(&text.to_lowercase())
        }),
    };
    in_time(filter.since, true)
        && in_time(filter.until, false)
        && filter.connector.as_ref().is_none_or(|c| *c == r.connector)
        && caller_ok
        && filter
            .endpoint
            .as_ref()
            .is_none_or(|e| r.endpoint.as_ref() == Some(e))
        && filter.decision.is_none_or(|d| r.decision == Some(d))
        && filter.kind.is_none_or(|k| r.kind == k)
}

/// Renders records as one JSON object per line.
fn json_lines(records: &[StoredRecord]) -> anyhow::Result<String> {
    let mut out = String::new();
    for record in records {
        out.push_str(&serde_json::to_string(record)?);
        out.push('\n');
    }
    Ok(out)
}
