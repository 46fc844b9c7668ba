//! `portcullis review`: the security review of an endpoint file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use portcullis::review;

use super::{EXIT_CHECK_FAILED, EXIT_OK};

/// Output format of `review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Markdown, for people signing off.
    #[value(alias = "markdown")]
    Md,
    /// One JSON object `{"report": ..., "diff": ...}`; `diff` is null
    /// without `--against`.
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

    /// Exit with 1 if the review raises any warning.
    #[arg(long)]
    pub strict: bool,
}

/// Prints the review; exit 0, or 1 on warnings under `--strict`. An invalid
/// file (either one) is an error, exit 2.
pub fn review(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config, "endpoint file")?;
    let old = match &args.against {
        Some(path) => Some(super::load_config(path, "old endpoint file")?),
        None => None,
    };
    let report = review::report(&config);
    let diff = old.as_ref().map(|old| review::diff(old, &config));
    let text = match args.format {
        Format::Md => {
            let mut text = review::render_markdown(&report);
            if let Some(diff) = &diff {
                text.push('\n');
                text.push_str(&review::render_diff_markdown(diff));
            }
            text
        }
        Format::Json => {
            let value = JsonOutput {
                report: &report,
                diff: diff.as_ref(),
            };
            let mut text =
                serde_json::to_string_pretty(&value).context("cannot render the review as JSON")?;
            text.push('\n');
            text
        }
    };
    super::print(&text)?;
    let warnings = report.warnings.len();
    if args.strict && warnings > 0 {
        let s = if warnings == 1 { "" } else { "s" };
        eprintln!(
            "error: {} has {warnings} review warning{s} and --strict was given",
            args.config.display()
        );
        return Ok(ExitCode::from(EXIT_CHECK_FAILED));
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// The JSON output: the report first, then the diff (null without
/// `--against`).
#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    report: &'a review::Report,
    diff: Option<&'a review::Diff>,
}
