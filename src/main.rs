//! Placeholder entry point on the `devices` branch, replaced by the CLI
//! branch's `main.rs` on merge.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// Governed, identity-checked access from AI agents on a tailnet.
#[derive(Debug, Parser)]
#[command(name = "portcullis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve every device of an endpoint file.
    Run(cli::run::RunArgs),
    /// Print versions.
    Version,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => match cli::run::run(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            let v = portcullis::tailnet::build_versions();
            println!(
                "portcullis {} (tailscale {}, go {})",
                env!("CARGO_PKG_VERSION"),
                v.tailscale,
                v.go
            );
            ExitCode::SUCCESS
        }
    }
}
