//! Config errors: one enum for the layer, and [`Diagnostic`] for each
//! problem found in a file.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong loading a config or reading its secrets.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not valid; every problem found, in file order.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
    /// `auth_key_env` names a variable that is not set.
    #[error("tailnet auth key: environment variable {name} is not set")]
    AuthKeyEnvMissing {
        /// The variable name.
        name: String,
    },
    /// `auth_key_env` names a variable that is empty.
    #[error("tailnet auth key: environment variable {name} is empty")]
    AuthKeyEnvEmpty {
        /// The variable name.
        name: String,
    },
    /// `auth_key_file` could not be read.
    #[error("tailnet auth key: cannot read file {}: {source}", path.display())]
    AuthKeyFileRead {
        /// The file path.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// `auth_key_file` is empty.
    #[error("tailnet auth key: file {} is empty", path.display())]
    AuthKeyFileEmpty {
        /// The file path.
        path: PathBuf,
    },
}

impl ConfigError {
    /// The individual problems, for an invalid file; empty otherwise.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            _ => &[],
        }
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One problem in a config file, located by line, column and field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File name as given to `load` / `parse`.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Field path such as `endpoint[2].http.methods[0]`; empty for the
    /// whole document.
    pub path: String,
    /// What is wrong, and where it helps, why.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at an explicit position.
    pub fn new(file: &str, line: usize, column: usize, path: &str, message: &str) -> Self {
        Diagnostic {
            file: file.to_owned(),
            line,
            column,
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}
