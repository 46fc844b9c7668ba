//! The `portcullis` command line: parses arguments, sets up logging and
//! calls one function per subcommand in [`cli`].
//!
//! Exit codes, for every subcommand: 0 success; 1 the check the command
//! performs failed (`review --strict` found warnings, `review --replay`
//! found recorded decisions the file would make differently, `audit verify`
//! found a broken chain); 2 bad input or an error (usage error, invalid
//! endpoint file, bad flag value, unreadable audit store).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Governed, identity-checked access from AI agents on a tailnet to a
/// company's private services.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = cli::LogFormat::Human,
        help_heading = "Logging"
    )]
    log_format: cli::LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or
    /// `portcullis=debug,sqlx=warn`. Defaults to $PORTCULLIS_LOG, else `info`.
    #[arg(long, global = true, value_name = "FILTER", help_heading = "Logging")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the connector: one tailnet device per endpoint, plus the MCP device.
    Run(cli::run::RunArgs),
    /// Print the security review of an endpoint file, optionally with the
    /// exposure changes against an older version and the recorded decisions
    /// it would make differently.
    Review(cli::review::ReviewArgs),
    /// Read, verify and export the audit log.
    Audit(cli::audit::AuditArgs),
    /// Validate endpoint files and print their fingerprints (for CI).
    Check(cli::check::CheckArgs),
    /// Print the versions of portcullis, tailscale.com and Go built in.
    Version(cli::version::VersionArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    if let Err(e) = cli::init_logging(args.log_format, args.log.as_deref()) {
        return cli::report_error(&e);
    }
    let result = match args.command {
        Command::Run(a) => cli::run::run(a).await,
        Command::Review(a) => cli::review::review(a).await,
        Command::Audit(a) => cli::audit::audit(a).await,
        Command::Check(a) => cli::check::check(a),
        Command::Version(a) => cli::version::version(a),
    };
    result.unwrap_or_else(|e| cli::report_error(&e))
}
