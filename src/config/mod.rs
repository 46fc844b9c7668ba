//! `endpoints.toml`: the one reviewable file that says which services exist
//! on the tailnet, where they point and who may reach them.
//!
//! Loading goes through exactly one path, used by both `run` and `review`:
//! [`load`] / [`parse`] deserialize the raw file format (`raw`, every table
//! with `deny_unknown_fields`), then one validation pass fills in defaults,
//! resolves groups and either returns a [`Config`] or *every* problem found,
//! each as `file:line:column: field.path: message`. What review accepts is
//! therefore exactly what run enforces.
//!
//! # Host resolution
//!
//! A target is an IP literal or a DNS name ([`Host`]). Config never resolves
//! names: it keeps them as written. The runtime resolves each name once when a
//! config is loaded or applied, not per connection, so a DNS change cannot
//! silently redirect traffic between two reviews; review flags every
//! DNS-name target for that reason.
//!
//! # Fingerprint
//!
//! [`Config::fingerprint`] is the hex SHA-256 of the exact file bytes, not of
//! a normalised form, so the security team can match the running config
//! against the file they signed off with `sha256sum`.

mod endpoint;
mod error;
mod glob;
mod locate;
mod raw;
mod runtime;
mod target;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use error::{ConfigError, Diagnostic};
pub use glob::Glob;
pub use runtime::{GoGc, parse_bytes, parse_go_gc};
pub use target::{Host, Target};

/// A validated `endpoints.toml`, defaults filled in and groups resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// File name the config was read from, as given to [`load`] / [`parse`].
    pub file_name: String,
    /// Hex SHA-256 of the exact file bytes that were reviewed.
    pub fingerprint: String,
    /// How the devices join the tailnet.
    pub tailnet: Tailnet,
    /// Groups as defined in `[groups]`, members in file order.
    pub groups: BTreeMap<String, Vec<Identity>>,
    /// The governed MCP device, if `[mcp]` is present.
    pub mcp: Option<McpDevice>,
    /// The `[audit]` section, defaults filled in.
    pub audit: AuditSettings,
    /// Every endpoint, in file order; each becomes its own tailnet device.
    pub endpoints: Vec<Endpoint>,
}

impl Config {
    /// The endpoint with this name.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

/// The `[tailnet]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tailnet {
    /// Control server URL (Tailscale or headscale).
    pub control_url: String,
    /// Where the pre-auth key comes from; it is never in the file itself.
    pub auth_key: AuthKeySource,
    /// Root of the per-device state directories.
    pub state_dir: PathBuf,
    /// Prepended to every device name to form its tailnet hostname.
    pub hostname_prefix: String,
    /// ACL tags every device advertises (each starts with `tag:`).
    pub tags: Vec<String>,
    /// Whether devices register as ephemeral nodes.
    pub ephemeral: bool,
    /// GOGC of the embedded Go runtime (`go_gc`); `None`: Go's default.
    pub go_gc: Option<GoGc>,
    /// GOMEMLIMIT of the embedded Go runtime in bytes (`go_memory_limit`).
    pub go_memory_limit: Option<u64>,
}

impl Tailnet {
    /// The tailnet hostname of a device named `name`.
    pub fn hostname(&self, name: &str) -> String {
        format!("{}{}", self.hostname_prefix, name)
    }

    /// The state directory of the device with this hostname; every tsnet
    /// node needs its own.
    pub fn device_state_dir(&self, hostname: &str) -> PathBuf {
        self.state_dir.join(hostname)
    }

    /// Reads the pre-auth key from its environment variable or file,
    /// trimmed of surrounding whitespace.
    pub fn auth_key(&self) -> Result<String, ConfigError> {
        match &self.auth_key {
            AuthKeySource::Env(name) => {
                let value = std::env::var(name)
                    .map_err(|_| ConfigError::AuthKeyEnvMissing { name: name.clone() })?;
                let value = value.trim();
                if value.is_empty() {
                    return Err(ConfigError::AuthKeyEnvEmpty { name: name.clone() });
                }
                Ok(value.to_owned())
            }
            AuthKeySource::File(path) => {
                let value = std::fs::read_to_string(path).map_err(|source| {
                    ConfigError::AuthKeyFileRead {
                        path: path.clone(),
                        source,
                    }
                })?;
                let value = value.trim();
                if value.is_empty() {
                    return Err(ConfigError::AuthKeyFileEmpty { path: path.clone() });
                }
                Ok(value.to_owned())
            }
        }
    }
}

/// Where the tailnet pre-auth key is read from at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKeySource {
    /// An environment variable name (`auth_key_env`).
    Env(String),
    /// A file path, e.g. a systemd credential (`auth_key_file`).
    File(PathBuf),
}

impl fmt::Display for AuthKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthKeySource::Env(name) => write!(f, "environment variable {name}"),
            AuthKeySource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// The `[audit]` section: how the audit trail gates the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditSettings {
    /// What the connector does while audit records cannot be committed.
    pub on_failure: OnAuditFailure,
    /// Places in the in-memory queue of records waiting to be committed
    /// (each open connection and each request in flight holds one); `run
    /// --audit-queue` overrides it.
    pub queue: usize,
}

/// Default of [`AuditSettings::queue`].
pub const DEFAULT_AUDIT_QUEUE: usize = 65_536;

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            on_failure: OnAuditFailure::Refuse,
            queue: DEFAULT_AUDIT_QUEUE,
        }
    }
}

/// `[audit].on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAuditFailure {
    /// Refuse new connections, requests and tool calls until records can be
    /// written again (the default).
    #[default]
    Refuse,
    /// Keep serving without an audit trail; records that do not fit the
    /// queue are dropped and counted. `review` warns about it.
    Serve,
}

impl fmt::Display for OnAuditFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnAuditFailure::Refuse => "refuse",
            OnAuditFailure::Serve => "serve",
        })
    }
}

/// Who an allow-list entry names, with groups already resolved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Identity {
    /// `user:<login>`: the node's owner; compared case-insensitively.
    User(String),
    /// `group:<name>` and its members (never groups themselves).
    Group {
        /// Group name without the `group:` prefix.
        name: String,
        /// Resolved members.
        members: Vec<Identity>,
    },
    /// `tag:<name>`, stored with its `tag:` prefix as tailnets report tags.
    Tag(String),
    /// `node:<name>`: node FQDN, its first label, or its stable node ID.
    Node(String),
    /// `*`: every peer on the tailnet.
    Everyone,
}

impl Identity {
    /// The identities this entry stands for: a group's members, or itself.
    pub fn expand(&self) -> Vec<&Identity> {
        match self {
            Identity::Group { members, .. } => members.iter().collect(),
            other => vec![other],
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::User(login) => write!(f, "user:{login}"),
            Identity::Group { name, .. } => write!(f, "group:{name}"),
            Identity::Tag(tag) => f.write_str(tag),
            Identity::Node(node) => write!(f, "node:{node}"),
            Identity::Everyone => f.write_str("*"),
        }
    }
}

/// The `[mcp]` section: the device serving the governed MCP endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct McpDevice {
    /// Device name as written (default `mcp`).
    pub name: String,
    /// Tailnet hostname: prefix + name.
    pub hostname: String,
    /// Tailnet port the MCP endpoint listens on.
    pub port: u16,
    /// Who may use the MCP endpoint at all.
    pub allow: Vec<Identity>,
    /// Who may read `/metrics`; empty means nobody.
    pub metrics_allow: Vec<Identity>,
    /// Tailnet app capability whose grants add endpoints and tools.
    pub capability: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: u64,
    /// Token-bucket rate limits.
    pub rate_limit: RateLimits,
}

/// `[mcp.rate_limit]`; each limit is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RateLimits {
    /// Per calling identity, across all tools.
    pub per_caller: Option<Rate>,
    /// Per tool, across all callers.
    pub per_tool: Option<Rate>,
}

/// A token-bucket rate: `count` per `period`, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Tokens per period, also the burst size.
    pub count: u32,
    /// Refill period.
    pub period: RatePeriod,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period {
            RatePeriod::Second => "s",
            RatePeriod::Minute => "m",
            RatePeriod::Hour => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Refill period of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RatePeriod {
    /// `N/s`
    Second,
    /// `N/m`
    Minute,
    /// `N/h`
    Hour,
}

impl RatePeriod {
    /// Length of the period.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            RatePeriod::Second => 1,
            RatePeriod::Minute => 60,
            RatePeriod::Hour => 3600,
        })
    }
}

/// How a device forwards traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Raw TCP splice.
    Tcp,
    /// HTTP reverse proxy with method/path allow-lists.
    Http,
    /// Upstream MCP server (Streamable HTTP), federated into the MCP device.
    Mcp,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Tcp => "tcp",
            Kind::Http => "http",
            Kind::Mcp => "mcp",
        })
    }
}

/// One `[[endpoint]]`: a backend service exposed as its own tailnet device.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Endpoint name (a DNS label).
    pub name: String,
    /// Tailnet hostname: prefix + name.
    pub hostname: String,
    /// How traffic is forwarded.
    pub kind: Kind,
    /// Backend address; the only place traffic for this device may go.
    pub target: Target,
    /// Tailnet ports the device listens on.
    pub ports: Vec<u16>,
    /// Who may reach the endpoint; empty means nobody.
    pub allow: Vec<Identity>,
    /// Free text for humans.
    pub description: Option<String>,
    /// Timeout for connecting to the target, in milliseconds.
    pub connect_timeout_ms: u64,
    /// HTTP rules; present exactly when `kind` is `http`.
    pub http: Option<HttpRules>,
    /// Upstream MCP settings; present exactly when `kind` is `mcp`.
    pub mcp: Option<McpUpstream>,
    /// What inspection does with findings in traffic via MCP.
    pub inspect: Inspect,
}

/// `[endpoint.http]`, defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRules {
    /// Allowed methods, upper-case.
    pub methods: Vec<String>,
    /// Allowed path globs (default `/**`, every path).
    pub paths: Vec<Glob>,
    /// Whether to send the verified identity as `X-Forwarded-User` and
    /// `X-Portcullis-*` headers (see [`crate::backend::headers`]).
    pub identity_headers: bool,
    /// More caller headers to remove before forwarding, beyond the fixed
    /// list in [`crate::backend::headers`]: names, or prefixes ending in
    /// `*`; lowercase, `_` written as `-`.
    pub strip_headers: Vec<String>,
    /// Whether to connect to the target with TLS.
    pub tls: bool,
    /// Response size cap for the MCP `http_request` tool, in bytes.
    pub max_response_bytes: u64,
    /// Whole-request timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// `[endpoint.mcp]`, defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct McpUpstream {
    /// Streamable HTTP path on the target.
    pub path: String,
    /// Upstream tool names offered (globs).
    pub tools_allow: Vec<Glob>,
    /// Upstream tool names never offered (globs); deny wins over allow.
    pub tools_deny: Vec<Glob>,
    /// Whether to connect to the upstream with TLS.
    pub tls: bool,
    /// Per-call timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// `[endpoint.inspect]`, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Inspect {
    /// What to do with secrets found in arguments or results.
    pub secrets: SecretsAction,
    /// What to do with suspected prompt injection in results.
    pub injection: InjectionAction,
}

/// Action on detected secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretsAction {
    /// Replace the secret and pass the rest.
    #[default]
    Redact,
    /// Refuse the call.
    Block,
    /// Record the finding and pass the secret through unchanged.
    Log,
}

/// Action on suspected prompt injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectionAction {
    /// Pass the content and mark it in the result and audit.
    #[default]
    Flag,
    /// Refuse the call.
    Block,
}

impl fmt::Display for SecretsAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretsAction::Redact => "redact",
            SecretsAction::Block => "block",
            SecretsAction::Log => "log",
        })
    }
}

impl fmt::Display for InjectionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InjectionAction::Flag => "flag",
            InjectionAction::Block => "block",
        })
    }
}

/// Reads and validates the file at `path`. Errors name `path` as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file_name = path.display().to_string();
    let source = String::from_utf8(bytes).map_err(|_| {
        ConfigError::Invalid(vec![Diagnostic::new(
            &file_name,
            1,
            1,
            "",
            "file is not valid UTF-8",
        )])
    })?;
    parse(&source, &file_name)
}

/// Validates `source`; `file_name` is used in error messages and kept in
/// [`Config::file_name`].
pub fn parse(source: &str, file_name: &str) -> Result<Config, ConfigError> {
    let fingerprint = hex::encode(Sha256::digest(source.as_bytes()));
    let raw = raw::deserialize(source, file_name)?;
    validate::validate(raw, source, file_name, fingerprint)
}
