//! One module per subcommand, each with its clap arguments and the one
//! function `main` calls; plus what they share: logging set-up, error
//! reporting, exit codes and defaults derived from the endpoint file.

pub mod audit;
pub mod check;
mod reload;
pub mod review;
pub mod run;
pub mod version;

mod when;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use portcullis::config::{self, Config, ConfigError};

/// Exit code when the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code when the check a command performs failed (warnings under
/// `review --strict`, recorded decisions that change under `review --replay`,
/// a broken audit chain).
pub const EXIT_CHECK_FAILED: u8 = 1;
/// Exit code for bad input or an error; clap's usage errors use it too.
pub const EXIT_ERROR: u8 = 2;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// Whether stderr is for people (`--log-format human`).
static HUMAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether status lines go to stderr as plain text (`--log-format human`)
/// rather than as log events.
pub fn human() -> bool {
    HUMAN.load(std::sync::atomic::Ordering::Relaxed)
}

/// A status line for the operator: plain text on stderr with
/// `--log-format human`, an info event (one JSON object) with `json`.
pub fn say(line: std::fmt::Arguments<'_>) {
    if human() {
        eprintln!("{line}");
    } else {
        tracing::info!("{line}");
    }
}

/// Installs the tracing subscriber, writing to stderr. `filter` is the
/// `--log` value; without it `PORTCULLIS_LOG`, else `info`.
pub fn init_logging(format: LogFormat, filter: Option<&str>) -> anyhow::Result<()> {
    let (text, origin) = match filter {
        Some(f) => (f.to_owned(), "--log"),
        None => match std::env::var("PORTCULLIS_LOG") {
            Ok(f) if !f.trim().is_empty() => (f, "PORTCULLIS_LOG"),
            _ => ("info".to_owned(), "default"),
        },
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&text)
        .with_context(|| format!("invalid log filter {text:?} from {origin}"))?;
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr);
    HUMAN.store(
        format == LogFormat::Human,
        std::sync::atomic::Ordering::Relaxed,
    );
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Prints `error` and its causes to stderr, every cause indented on its own
/// lines (config diagnostics span several), and returns [`EXIT_ERROR`]. A
/// closed stdout (`portcullis audit export --jsonl | head`) ends the
/// command quietly with [`EXIT_OK`].
pub fn report_error(error: &anyhow::Error) -> ExitCode {
    let broken_pipe = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::from(EXIT_OK);
    }
    let mut text = format!("error: {error}\n");
    let mut previous = error.to_string();
    for cause in error.chain().skip(1) {
        let message = cause.to_string();
        // Wrapping errors often repeat their source in their own message.
        if previous.contains(&message) {
            continue;
        }
        previous.clone_from(&message);
        for line in message.lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = std::io::stderr().write_all(text.as_bytes());
    ExitCode::from(EXIT_ERROR)
}

/// Loads and validates an endpoint file. `role` names it in the error
/// ("endpoint file", "old endpoint file"); the cause lists every problem
/// as `file:line:column: field.path: message`.
pub fn load_config(path: &Path, role: &str) -> anyhow::Result<Config> {
    config::load(path).map_err(|e| {
        let summary = match &e {
            ConfigError::Invalid(problems) => {
                let n = problems.len();
                let s = if n == 1 { "" } else { "s" };
                format!("{role} {} is not valid ({n} problem{s})", path.display())
            }
            _ => format!("cannot load {role} {}", path.display()),
        };
        anyhow::Error::new(e).context(summary)
    })
}

/// The audit store used when `--audit` is not given: `audit.db` in the
/// config's `[tailnet].state_dir`.
pub fn default_audit_url(config: &Config) -> String {
    format!(
        "sqlite://{}",
        config.tailnet.state_dir.join("audit.db").display()
    )
}

/// The connector name used when `--connector` is not given: the machine's
/// hostname, else `portcullis`.
pub fn default_connector() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let from_env = || std::env::var("HOSTNAME").ok();
    from_kernel
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            from_env()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "portcullis".to_owned())
}

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// `url` with any password (`user:PASSWORD@` or a `password=` query
/// parameter) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_passwords() {
        let table = [
            (
                "postgres://u:secret@db:5432/audit",
                "postgres://u:***@db:5432/audit",
            ),
            ("postgres://u:s@cret@db/audit", "postgres://u:***@db/audit"),
            ("postgres://u@db/audit", "postgres://u@db/audit"),
            (
                "postgres://db/audit?user=x&password=secret&sslmode=require",
                "postgres://db/audit?user=x&password=***&sslmode=require",
            ),
            (
                "sqlite:///var/lib/p/audit.db",
                "sqlite:///var/lib/p/audit.db",
            ),
            ("./audit.db", "./audit.db"),
        ];
        for (url, expected) in table {
            assert_eq!(redact_url(url), expected);
        }
    }
}
