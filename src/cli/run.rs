//! `portcullis run`: start every device of an endpoint file and serve until
//! SIGTERM or SIGINT.
//!
//! Order matters: the file is validated, targets are pinned and the start-up
//! record (with the pinned addresses) is written *before* any node joins the
//! tailnet, so the audit log says what was exposed before it was.
//!
//! # Tailscale knobs
//!
//! The embedded Go runtime copies the process environment when it loads, so
//! `TS_*` variables set in the environment before the process starts reach
//! every node. `PORTCULLIS_TS_KNOBS` (e.g.
//! `TS_DEBUG_USE_DERP_HTTP=1,TS_DISABLE_PORTMAPPER=1`) sets knobs from inside
//! the process instead, through [`tailnet::set_knob`], before any node
//! starts; it is meant for local and test tailnets.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use portcullis::audit::{self, AuditLog, Checkpointer, OnFailure, Record, WriterTask};
use portcullis::config::{self, Config, OnAuditFailure};
use portcullis::devices::{self, Connector, Options, Plan};
use portcullis::mcp;
use portcullis::metrics;
use portcullis::policy::Policy;
use portcullis::tailnet;
use std::sync::Arc;

use super::reload::{Reloader, Trigger};

/// Environment variable with comma-separated `NAME=VALUE` tailnet knobs.
const KNOBS_ENV: &str = "PORTCULLIS_TS_KNOBS";

/// Arguments of `portcullis run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Endpoint file
    pub config: PathBuf,
    /// Audit store URL (default sqlite://<state_dir>/audit.db)
    #[arg(long)]
    pub audit: Option<String>,
    /// Connector name in the audit log (default: hostname)
    #[arg(long)]
    pub connector: Option<String>,
    /// Seconds to drain on SIGTERM (and for devices a reload removes)
    #[arg(long, default_value_t = 10)]
    pub drain_timeout: u64,
    /// Seconds between checks of the endpoint file for changes (0: reload
    /// only on SIGHUP)
    #[arg(long, default_value_t = 2)]
    pub watch_interval: u64,
    /// Places in the audit queue (default: `[audit].queue` of the file,
    /// else 65536); each open connection and request in flight holds one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_queue: Option<u64>,
    /// Most devices joining the tailnet at once
    #[arg(long, default_value_t = devices::DEFAULT_START_CONCURRENCY)]
    pub start_concurrency: usize,
    /// GOGC of the embedded Go runtime: "off" or a percentage (overrides
    /// `[tailnet] go_gc`)
    #[arg(long, value_name = "PERCENT|off", value_parser = config::parse_go_gc)]
    pub go_gc: Option<config::GoGc>,
    /// GOMEMLIMIT of the embedded Go runtime, e.g. 3GiB (overrides
    /// `[tailnet] go_memory_limit`)
    #[arg(long, value_name = "SIZE", value_parser = config::parse_bytes)]
    pub go_memory_limit: Option<u64>,
}

/// Runs the connector until a stop signal; exit code 2 for an invalid
/// endpoint file, 0 after an orderly stop with every record written.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match super::load_config(&args.config, "endpoint file") {
        Ok(config) => config,
        Err(e) => return Ok(super::report_error(&e)),
    };
    apply_knobs(std::env::var(KNOBS_ENV).ok().as_deref())?;
    apply_go_gc(&args, &config)?;
    let auth_key = config
        .tailnet
        .auth_key()
        .context("reading the tailnet auth key")?;

    let plan = Plan::prepare(&config).await.context("preparing devices")?;
    let (audit, writer, key) = open_audit(&args, &config).await?;
    audit.record(startup_record(&config, &plan, &audit, &key));

    let options = Options {
        progress: super::human(),
        start_concurrency: args.start_concurrency.max(1),
        ..Options::default()
    };
    let policy = devices::shared_policy(Policy::from_config(&config));
    let pinned = plan.pinned().clone();
    // The MCP device joins the tailnet together with the endpoint devices;
    // its service is built once its node is up and knows its names.
    let (mcp_tx, mcp_rx) = std::sync::mpsc::channel();
    let services = config
        .mcp
        .as_ref()
        .map(|device| {
            let (config, policy, audit) = (config.clone(), policy.clone(), audit.clone());
            let make: devices::MakeService = Box::new(move |info| {
                let mut hosts = info.names.clone();
                hosts.extend(info.ips.iter().map(ToString::to_string));
                let state = mcp::McpState::new(&config, policy, pinned, audit, hosts)
                    .map_err(|e| e.to_string())?;
                state.start_federation();
                let _ = mcp_tx.send(Arc::clone(&state));
                Ok(Arc::new(McpService(state)) as Arc<dyn devices::Service>)
            });
            devices::ServiceDevice {
                hostname: device.hostname.clone(),
                ports: vec![device.port],
                make,
            }
        })
        .into_iter()
        .collect();
    let started = Connector::start_with(
        plan.clone(),
        services,
        &auth_key,
        policy.clone(),
        audit.clone(),
        options,
    );
    let connector = match started.await {
        Ok(connector) => connector,
        Err(e) => {
            // The start-up record is already written; end the chain cleanly.
            let flushed = audit.shutdown().await;
            let _ = writer.await;
            flushed.context("flushing the audit log")?;
            return Err(e).context("starting devices");
        }
    };
    let mcp_state = mcp_rx.try_recv().ok();
    super::say(format_args!(
        "serving {} ({}), fingerprint {}; reload with SIGHUP, stop with SIGTERM or Ctrl-C",
        config.file_name,
        audit.connector(),
        config.fingerprint
    ));

    if let Some(state) = &mcp_state {
        let (board, audit) = (connector.status_board(), audit.clone());
        state.set_metrics(Box::new(move |upstreams| {
            metrics::render(&metrics::Snapshot {
                audit: &audit,
                devices: &board.snapshot(),
                upstreams,
                fingerprint: &audit.fingerprint(),
            })
        }));
    }
    let drain = Duration::from_secs(args.drain_timeout);
    let reloader = Reloader::new(&args.config, config, &plan, mcp_state, audit.clone(), drain);
    let watch = Duration::from_secs(args.watch_interval);
    serve_until_stopped(connector, reloader, watch, audit, writer, drain).await
}

/// Serves, reloading on SIGHUP or a changed file, until a stop signal (or
/// a failed audit writer); then drains and flushes.
async fn serve_until_stopped(
    mut connector: Connector,
    mut reloader: Reloader,
    watch: Duration,
    audit: AuditLog,
    mut writer: WriterTask,
    drain: Duration,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut poll = (!watch.is_zero()).then(|| {
        let mut poll = tokio::time::interval(watch);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll
    });
    loop {
        tokio::select! {
            _ = terminate.recv() => { super::say(format_args!("SIGTERM: stopping")); break; }
            _ = tokio::signal::ctrl_c() => { super::say(format_args!("SIGINT: stopping")); break; }
            _ = hangup.recv() => {
                super::say(format_args!("SIGHUP: reloading"));
                reloader.reload(&mut connector, Trigger::Signal).await;
            }
            _ = async { poll.as_mut().expect("guarded").tick().await }, if poll.is_some() => {
                if reloader.file_changed() {
                    super::say(format_args!("endpoint file changed: reloading"));
                    reloader.reload(&mut connector, Trigger::FileChanged).await;
                }
            }
            ended = &mut writer => {
                // Serving without an audit trail is not allowed: stop at once.
                connector.shutdown(Duration::ZERO).await;
                return match ended {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the audit writer stopped unexpectedly")),
                    Ok(Err(e)) => Err(e).context("audit writer failed; devices stopped"),
                    Err(e) => Err(e).context("audit writer panicked; devices stopped"),
                };
            }
        }
    }
    super::say(format_args!(
        "draining connections for up to {}s",
        drain.as_secs()
    ));
    let report = connector.shutdown(drain).await;
    if report.cut > 0 {
        super::say(format_args!(
            "{} connections cut at the drain deadline",
            report.cut
        ));
    }
    audit.shutdown().await.context("flushing the audit log")?;
    writer
        .await
        .context("audit writer panicked")?
        .context("audit writer")?;
    super::say(format_args!("stopped"));
    Ok(ExitCode::SUCCESS)
}

/// Opens the audit log named by `--audit`, or the default SQLite file under
/// the state dir, with the `[audit]` settings and the checkpoint key of the
/// state dir. Returns the key's `name+id` too.
async fn open_audit(
    args: &RunArgs,
    config: &Config,
) -> anyhow::Result<(AuditLog, WriterTask, String)> {
    let dir = &config.tailnet.state_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state dir {}", dir.display()))?;
    let url = match &args.audit {
        Some(url) => url.clone(),
        None => super::default_audit_url(config),
    };
    let name = args
        .connector
        .clone()
        .unwrap_or_else(super::default_connector);
    let checkpoints =
        Checkpointer::load_or_create(dir, &name).context("loading the audit checkpoint key")?;
    let key = checkpoints.key().to_owned();
    let on_failure = match config.audit.on_failure {
        OnAuditFailure::Refuse => OnFailure::Refuse,
        OnAuditFailure::Serve => OnFailure::Serve,
    };
    if on_failure == OnFailure::Serve {
        tracing::warn!(
            "[audit].on_failure = \"serve\": if audit records cannot be written, the connector \
             keeps serving WITHOUT an audit trail (records that do not fit the queue are dropped \
             and counted)"
        );
    }
    let queue = args.audit_queue.map_or(config.audit.queue, |n| {
        usize::try_from(n).unwrap_or(usize::MAX)
    });
    let options = audit::Options {
        queue,
        on_failure,
        checkpoints: Some(checkpoints),
    };
    let (log, writer) = AuditLog::open_with(&url, &name, options)
        .await
        .with_context(|| format!("opening audit store {}", super::redact_url(&url)))?;
    log.set_fingerprint(&config.fingerprint);
    Ok((log, writer, key))
}

/// The start-up record: which file, which devices, where their targets
/// pointed when pinned, and which build.
fn startup_record(config: &Config, plan: &Plan, audit: &AuditLog, key: &str) -> Record {
    let versions = tailnet::build_versions();
    let settings = serde_json::json!({
        "on_failure": config.audit.on_failure.to_string(),
        "queue": audit.queue_capacity(),
        "checkpoint_key": key,
    });
    Record::startup(config.fingerprint.clone())
        .with_extra("audit", settings)
        .with_extra("config_file", config.file_name.clone().into())
        .with_extra("version", env!("CARGO_PKG_VERSION").into())
        .with_extra("tailscale", versions.tailscale.into())
        .with_extra("devices", serde_json::json!(plan.hostnames()))
        .with_extra("pinned", plan.pinned_json())
}

/// The governed MCP endpoint as a device service.
struct McpService(Arc<mcp::McpState>);

impl devices::Service for McpService {
    fn serve(
        &self,
        io: tokio::net::UnixStream,
        caller: portcullis::identity::Caller,
        _port: u16,
    ) -> devices::BoxFuture<()> {
        Box::pin(mcp::serve_connection(self.0.clone(), io, caller))
    }

    fn recheck(
        &self,
        caller: &portcullis::identity::Caller,
        _port: u16,
    ) -> Option<portcullis::policy::Decision> {
        Some(self.0.recheck(caller))
    }
}

/// Applies the Go GC settings of the flags, else of the file, before any
/// node starts. The Go runtime's own GOGC / GOMEMLIMIT environment
/// variables apply when neither sets them.
fn apply_go_gc(args: &RunArgs, config: &Config) -> anyhow::Result<()> {
    let gc = args.go_gc.or(config.tailnet.go_gc);
    let limit = args.go_memory_limit.or(config.tailnet.go_memory_limit);
    if gc == Some(config::GoGc::Off) && limit.is_none() {
        anyhow::bail!(
            "Go GC off needs a memory limit (--go-memory-limit or [tailnet] go_memory_limit)"
        );
    }
    let settings = tailnet::GoGc {
        percent: gc.map(|g| match g {
            config::GoGc::Off => 0,
            config::GoGc::Percent(p) => p,
        }),
        memory_limit: limit,
    };
    if settings != tailnet::GoGc::default() {
        tailnet::set_go_gc(settings).context("applying the Go GC settings")?;
        tracing::info!(gc = ?gc.map(|g| g.to_string()), memory_limit = ?limit, "Go GC settings applied");
    }
    Ok(())
}

/// Sets each `NAME=VALUE` of `knobs` (comma-separated) on the embedded
/// tailnet runtime.
fn apply_knobs(knobs: Option<&str>) -> anyhow::Result<()> {
    for (name, value) in parse_knobs(knobs.unwrap_or_default())? {
        tailnet::set_knob(name, value).with_context(|| format!("{KNOBS_ENV}: setting {name}"))?;
        tracing::info!(knob = name, value, "tailnet knob set");
    }
    Ok(())
}

fn parse_knobs(text: &str) -> anyhow::Result<Vec<(&str, &str)>> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => Ok((name.trim(), value.trim())),
            _ => anyhow::bail!("{KNOBS_ENV}: {item:?} is not NAME=VALUE"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_parse_and_bad_items_are_named() {
        assert_eq!(
            parse_knobs(" TS_A=1, TS_B=x=y ,,").expect("valid"),
            vec![("TS_A", "1"), ("TS_B", "x=y")]
        );
        assert!(parse_knobs("").expect("empty").is_empty());
        let err = parse_knobs("TS_A=1,oops").expect_err("invalid");
        assert!(err.to_string().contains("\"oops\""), "{err}");
    }
}
