//! `portcullis run`: the connector itself.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `portcullis run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The endpoint file to enforce; validated exactly as `review` does.
    #[arg(value_name = "ENDPOINTS.toml")]
    pub config: PathBuf,

    /// Audit store: `sqlite://PATH`, a file path, or `postgres://...`.
    /// Default: `sqlite://<state_dir>/audit.db`, with `state_dir` from the
    /// file's `[tailnet]` section.
    #[arg(long, value_name = "URL")]
    pub audit: Option<String>,

    /// Name of this connector's chain in the audit log; connectors sharing
    /// one PostgreSQL log need distinct names. Default: the machine's
    /// hostname.
    #[arg(long, value_name = "NAME")]
    pub connector: Option<String>,

    /// Seconds to let open connections finish after SIGTERM or Ctrl-C
    /// before they are cut.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub drain_timeout: u64,
}

/// Runs the connector until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config, "endpoint file")?;
    let audit = args
        .audit
        .clone()
        .unwrap_or_else(|| super::default_audit_url(&config));
    let connector = args
        .connector
        .clone()
        .unwrap_or_else(super::default_connector);
    tracing::info!(
        file = %args.config.display(),
        fingerprint = %config.fingerprint,
        audit = %super::redact_url(&audit),
        %connector,
        drain_timeout_s = args.drain_timeout,
        "endpoint file valid"
    );
    anyhow::bail!("run: not wired yet")
}
