//! `portcullis check`: validate endpoint files, for CI.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{EXIT_ERROR, EXIT_OK};

/// Arguments of `portcullis check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Endpoint files to validate.
    #[arg(value_name = "ENDPOINTS.toml", required = true)]
    pub configs: Vec<PathBuf>,
}

/// Validates every file. Prints `<fingerprint>  <file>` for each valid one
/// (the format of `sha256sum`, since the fingerprint is the SHA-256 of the
/// file bytes) and every problem of each invalid one; exit 0 if all are
/// valid, else 2.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut invalid = 0usize;
    for path in &args.configs {
        match super::load_config(path, "endpoint file") {
            Ok(config) => super::print(&format!("{}  {}\n", config.fingerprint, path.display()))?,
            Err(e) => {
                invalid += 1;
                super::report_error(&e);
            }
        }
    }
    Ok(ExitCode::from(if invalid == 0 {
        EXIT_OK
    } else {
        EXIT_ERROR
    }))
}
