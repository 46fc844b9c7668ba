//! The file format as written: serde types that reject unknown fields.
//!
//! Required fields and enumerations are `Option<String>` here on purpose:
//! a missing or misspelt value then becomes one of many validation errors
//! instead of stopping deserialization at the first one.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::{ConfigError, Diagnostic};
use super::locate;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub tailnet: Option<RawTailnet>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    pub mcp: Option<RawMcp>,
    pub audit: Option<RawAudit>,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTailnet {
    pub control_url: Option<String>,
    /// Accepted by the parser only so validation can say why it is refused.
    pub auth_key: Option<IgnoredAny>,
    pub auth_key_env: Option<String>,
    pub auth_key_file: Option<String>,
    pub state_dir: Option<String>,
    pub hostname_prefix: Option<String>,
    pub tags: Option<Vec<String>>,
    pub ephemeral: Option<bool>,
    pub go_gc: Option<IntOrString>,
    pub go_memory_limit: Option<IntOrString>,
}

/// A setting written either as a number or as a string (`go_gc = 50` or
/// `go_gc = "off"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum IntOrString {
    Int(i64),
    Str(String),
}

impl IntOrString {
    pub fn text(&self) -> String {
        match self {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub allow: Option<Vec<String>>,
    pub metrics_allow: Option<Vec<String>>,
    pub capability: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub on_failure: Option<String>,
    pub queue: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub per_caller: Option<String>,
    pub per_tool: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub ports: Option<Vec<i64>>,
    pub allow: Option<Vec<String>>,
    pub description: Option<String>,
    pub connect_timeout_ms: Option<i64>,
    pub http: Option<RawHttp>,
    pub mcp: Option<RawUpstream>,
    pub inspect: Option<RawInspect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub identity_headers: Option<bool>,
    pub strip_headers: Option<Vec<String>>,
    pub tls: Option<bool>,
    pub max_response_bytes: Option<i64>,
    pub timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub path: Option<String>,
    pub tools_allow: Option<Vec<String>>,
    pub tools_deny: Option<Vec<String>>,
    pub tls: Option<bool>,
    pub timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInspect {
    pub secrets: Option<String>,
    pub injection: Option<String>,
}

/// Syntax, type and unknown-field errors, each with its field path.
pub(super) fn deserialize(source: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::parse(source).map_err(|e| {
        let (line, column) = e
            .span()
            .map_or((1, 1), |span| locate::line_col(source, span.start));
        ConfigError::Invalid(vec![Diagnostic::new(
            file,
            line,
            column,
            "",
            &clean_message(e.message()),
        )])
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => String::new(),
            p => p,
        };
        let inner = e.inner();
        let (line, column) = match inner.span() {
            Some(span) => locate::line_col(source, span.start),
            None => locate::position(source, &locate::parse_path(&path)),
        };
        ConfigError::Invalid(vec![Diagnostic::new(
            file,
            line,
            column,
            &path,
            &clean_message(inner.message()),
        )])
    })
}

/// serde's messages name Rust types (`i64`, `a sequence`); keep them on one
/// line so a diagnostic stays one line.
fn clean_message(message: &str) -> String {
    message.trim().replace('\n', " ")
}
