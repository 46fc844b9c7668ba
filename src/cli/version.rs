//! `portcullis version`: what this binary was built from.

use std::process::ExitCode;

use anyhow::Context;

use super::EXIT_OK;

/// Arguments of `portcullis version`.
#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Print one JSON object `{"portcullis", "tailscale", "go"}`.
    #[arg(long)]
    pub json: bool,
}

/// Prints the portcullis version and the tailscale.com module and Go
/// toolchain versions of the embedded tailnet node.
pub fn version(args: VersionArgs) -> anyhow::Result<ExitCode> {
    let built = portcullis::tailnet::build_versions();
    let ours = env!("CARGO_PKG_VERSION");
    let text = if args.json {
        let value = serde_json::json!({
            "portcullis": ours,
            "tailscale": built.tailscale,
            "go": built.go,
        });
        serde_json::to_string(&value).context("cannot render versions as JSON")? + "\n"
    } else {
        format!(
            "portcullis {ours}\ntailscale.com {}\nGo toolchain {}\n",
            built.tailscale, built.go
        )
    };
    super::print(&text)?;
    Ok(ExitCode::from(EXIT_OK))
}
