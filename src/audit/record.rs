//! What one audit record says.
//!
//! A [`Record`] is the unit that goes into the hash chain. Field order in the
//! struct is the field order of the canonical JSON (see [`super::chain`]), so
//! reordering, renaming or retyping a field changes the hashes of every new
//! record and must be treated like a storage format change.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::Caller;

/// What happened. Stored as its snake_case name (`connection_open`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The connector started with a given endpoint file.
    Startup,
    /// The connector stopped in an orderly way; always the last record of a run.
    Shutdown,
    /// A tailnet connection was accepted and authorized.
    ConnectionOpen,
    /// An accepted connection ended (bytes and duration are filled in).
    ConnectionClose,
    /// A tailnet connection was refused by policy or because of an error.
    ConnectionDenied,
    /// An open connection was closed because a reloaded file no longer
    /// allows it.
    ConnectionRevoked,
    /// One HTTP request on an HTTP endpoint.
    HttpRequest,
    /// An MCP `initialize` handshake.
    McpInitialize,
    /// An MCP `tools/list` call.
    McpListTools,
    /// An MCP `tools/call` call.
    McpToolCall,
    /// A new endpoint file was accepted and is now enforced.
    Reload,
    /// A new endpoint file was rejected; the previous one stays in force.
    ReloadRejected,
    /// The audit queue was full and records were dropped (count in `extra`).
    RecordsDropped,
    /// A caller hit a rate limit.
    RateLimited,
    /// A periodic snapshot of counters (in `extra`).
    Metrics,
    /// A signed checkpoint of the row before it (the signed note in
    /// `extra.note`; see [`super::checkpoint`]).
    Checkpoint,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 16] = [
        Kind::Startup,
        Kind::Shutdown,
        Kind::ConnectionOpen,
        Kind::ConnectionClose,
        Kind::ConnectionDenied,
        Kind::ConnectionRevoked,
        Kind::HttpRequest,
        Kind::McpInitialize,
        Kind::McpListTools,
        Kind::McpToolCall,
        Kind::Reload,
        Kind::ReloadRejected,
        Kind::RecordsDropped,
        Kind::RateLimited,
        Kind::Metrics,
        Kind::Checkpoint,
    ];

    /// The stored name, identical to the serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Startup => "startup",
            Kind::Shutdown => "shutdown",
            Kind::ConnectionOpen => "connection_open",
            Kind::ConnectionClose => "connection_close",
            Kind::ConnectionDenied => "connection_denied",
            Kind::ConnectionRevoked => "connection_revoked",
            Kind::HttpRequest => "http_request",
            Kind::McpInitialize => "mcp_initialize",
            Kind::McpListTools => "mcp_list_tools",
            Kind::McpToolCall => "mcp_tool_call",
            Kind::Reload => "reload",
            Kind::ReloadRejected => "reload_rejected",
            Kind::RecordsDropped => "records_dropped",
            Kind::RateLimited => "rate_limited",
            Kind::Metrics => "metrics",
            Kind::Checkpoint => "checkpoint",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a policy decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed.
    Permit,
    /// Refused.
    Deny,
}

impl Decision {
    /// The stored name: `permit` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Permit => "permit",
            Decision::Deny => "deny",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Decision> {
        match name {
            "permit" => Some(Decision::Permit),
            "deny" => Some(Decision::Deny),
            _ => None,
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of a [`Caller`] worth keeping in the log. Capabilities are left
/// out: they can be large and are policy input, not identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerInfo {
    /// Node name (FQDN without trailing dot).
    pub node: String,
    /// Stable node ID.
    pub node_id: String,
    /// Login name of the node owner; `None` for tagged nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// ACL tags of the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Tailnet address and port the connection came from.
    pub addr: SocketAddr,
}

impl CallerInfo {
    /// A short human label: the user login, or the tags of a tagged node,
    /// or the node name (same rule as [`Caller::label`]).
    pub fn label(&self) -> String {
        match &self.user {
            Some(user) => user.clone(),
            None if !self.tags.is_empty() => self.tags.join(","),
            None => self.node.clone(),
        }
    }

    /// The text stored in the indexed `caller` column: user, node and tags
    /// separated by spaces, so a substring filter matches any of them.
    pub fn search_text(&self) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(2 + self.tags.len());
        if let Some(user) = &self.user {
            parts.push(user);
        }
        parts.push(&self.node);
        parts.extend(self.tags.iter().map(String::as_str));
        parts.join(" ")
    }
}

impl From<&Caller> for CallerInfo {
    fn from(caller: &Caller) -> Self {
        CallerInfo {
            node: caller.node.clone(),
            node_id: caller.node_id.clone(),
            user: caller.user.clone(),
            tags: caller.tags.clone(),
            addr: caller.addr,
        }
    }
}

/// What an inspector did about something it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingAction {
    /// Noted only; the traffic passed unchanged.
    Flagged,
    /// The matching part was replaced before passing on.
    Redacted,
    /// The request or result was refused.
    Blocked,
}

/// One inspector finding. It names the kind of thing found and where, and
/// never the matched value: the audit log must not become a store of the
/// very secrets the inspectors keep out of agent traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What was found, e.g. `aws_access_key` or `prompt_injection`.
    pub kind: String,
    /// Where, e.g. a JSON pointer `/arguments/query` or `result`.
    pub location: String,
    /// What was done about it.
    pub action: FindingAction,
}

impl Finding {
    /// A finding of `kind` at `location`.
    pub fn new(
        kind: impl Into<String>,
        location: impl Into<String>,
        action: FindingAction,
    ) -> Self {
        Finding {
            kind: kind.into(),
            location: location.into(),
            action,
        }
    }
}

/// One audit record. Optional fields that are `None` (and empty lists or an
/// empty `extra`) are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What happened.
    pub kind: Kind,
    /// When, in UTC. [`super::AuditLog::record`] fills it in when `None`;
    /// stored as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    #[serde(default, with = "super::time_fmt::option")]
    pub time: Option<OffsetDateTime>,
    /// Name of the connector that wrote the record (one chain per
    /// connector). Set by the writer.
    #[serde(default)]
    pub connector: String,
    /// Fingerprint of the endpoint file in force when the record was made.
    /// Filled from the log's current fingerprint when empty.
    #[serde(default)]
    pub fingerprint: String,
    /// Who, for records about a tailnet peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerInfo>,
    /// The virtual tailnet device that was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The endpoint (from `endpoints.toml`) concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The policy outcome, if a decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Stable machine-readable reason code, e.g. `no_matching_rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Bytes from the caller to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Bytes from the backend to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    /// How long a connection lasted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// MCP tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path (without query string: queries can carry secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Digest of the tool arguments (see [`arg_digest`]), so calls can be
    /// correlated without storing the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg_digest: Option<String>,
    /// Inspector findings (kind and location only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Outcome of the call, e.g. an HTTP status or `ok` / `error` / `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Time from request to response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Anything else, as a JSON object.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub extra: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn is_empty_object(value: &serde_json::Value) -> bool {
    matches!(value, serde_json::Value::Object(map) if map.is_empty())
}

/// `sha256:` followed by the hex SHA-256 of `bytes`: the form used for
/// [`Record::arg_digest`].
pub fn arg_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Record {
    /// An empty record of `kind`; time, connector and fingerprint are filled
    /// in when it is logged.
    pub fn new(kind: Kind) -> Self {
        Record {
            kind,
            time: None,
            connector: String::new(),
            fingerprint: String::new(),
            caller: None,
            device: None,
            endpoint: None,
            decision: None,
            reason: None,
            detail: None,
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
            tool: None,
            method: None,
            path: None,
            arg_digest: None,
            findings: Vec::new(),
            status: None,
            latency_us: None,
            extra: empty_object(),
        }
    }

    /// Start-up with the endpoint file `fingerprint` now in force.
    pub fn startup(fingerprint: impl Into<String>) -> Self {
        Record::new(Kind::Startup).with_fingerprint(fingerprint)
    }

    /// An accepted connection from `caller` to `device` / `endpoint`,
    /// permitted; turn it into the close record later with
    /// [`Record::into_close`] or keep it in an [`super::AuditGuard`].
    pub fn connection_open(caller: &Caller, device: &str, endpoint: &str) -> Self {
        Record::new(Kind::ConnectionOpen)
            .with_caller(caller)
            .with_device(device)
            .with_endpoint(endpoint)
            .permit()
    }

    /// A refused connection, with the policy's reason code and explanation.
    pub fn connection_denied(
        caller: &Caller,
        device: &str,
        endpoint: &str,
        reason: &str,
        detail: &str,
    ) -> Self {
        Record::new(Kind::ConnectionDenied)
            .with_caller(caller)
            .with_device(device)
            .with_endpoint(endpoint)
            .deny(reason, detail)
    }

    /// An MCP tool call by `caller` of `tool` on `endpoint`; the decision,
    /// status and latency are set as the call proceeds.
    pub fn tool_call(caller: &Caller, endpoint: &str, tool: &str) -> Self {
        let mut record = Record::new(Kind::McpToolCall)
            .with_caller(caller)
            .with_endpoint(endpoint);
        record.tool = Some(tool.to_owned());
        record
    }

    /// One HTTP request by `caller` on `endpoint`.
    pub fn http_request(caller: &Caller, endpoint: &str, method: &str, path: &str) -> Self {
        let mut record = Record::new(Kind::HttpRequest)
            .with_caller(caller)
            .with_endpoint(endpoint);
        record.method = Some(method.to_owned());
        // The query string is cut off because it often carries tokens.
        record.path = Some(path.split('?').next().unwrap_or_default().to_owned());
        record
    }

    /// A new endpoint file with `fingerprint` is in force.
    pub fn reload(fingerprint: impl Into<String>) -> Self {
        Record::new(Kind::Reload).with_fingerprint(fingerprint)
    }

    /// A proposed endpoint file was rejected; `detail` says why.
    pub fn reload_rejected(reason: &str, detail: &str) -> Self {
        let mut record = Record::new(Kind::ReloadRejected);
        record.reason = Some(reason.to_owned());
        record.detail = Some(detail.to_owned());
        record
    }

    /// `count` records were dropped because the audit queue was full.
    pub fn records_dropped(count: u64) -> Self {
        let mut record = Record::new(Kind::RecordsDropped);
        record.reason = Some("audit_queue_full".to_owned());
        record.extra = serde_json::json!({ "count": count });
        record
    }

    /// `caller` was rate limited on `endpoint`.
    pub fn rate_limited(caller: &Caller, endpoint: &str) -> Self {
        Record::new(Kind::RateLimited)
            .with_caller(caller)
            .with_endpoint(endpoint)
            .deny("rate_limited", "rate limit exceeded")
    }

    /// A counters snapshot; `counters` should be a JSON object.
    pub fn metrics(counters: serde_json::Value) -> Self {
        let mut record = Record::new(Kind::Metrics);
        record.extra = counters;
        record
    }

    /// Turns an open record into the matching close record, keeping caller,
    /// device, endpoint and decision.
    pub fn into_close(mut self) -> Self {
        self.kind = Kind::ConnectionClose;
        self.time = None;
        self
    }

    /// Sets the caller.
    pub fn with_caller(mut self, caller: &Caller) -> Self {
        self.caller = Some(CallerInfo::from(caller));
        self
    }

    /// Sets the device name.
    pub fn with_device(mut self, device: &str) -> Self {
        self.device = Some(device.to_owned());
        self
    }

    /// Sets the endpoint name.
    pub fn with_endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = Some(endpoint.to_owned());
        self
    }

    /// Sets the endpoint file fingerprint.
    pub fn with_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = fingerprint.into();
        self
    }

    /// Marks the record as permitted.
    pub fn permit(mut self) -> Self {
        self.decision = Some(Decision::Permit);
        self
    }

    /// Marks the record as denied with a reason code and explanation.
    pub fn deny(mut self, reason: &str, detail: &str) -> Self {
        self.decision = Some(Decision::Deny);
        self.reason = Some(reason.to_owned());
        self.detail = Some(detail.to_owned());
        self
    }

    /// Adds an inspector finding.
    pub fn with_finding(mut self, finding: Finding) -> Self {
        self.findings.push(finding);
        self
    }

    /// Sets `extra[key] = value`; a non-object `extra` is replaced by an
    /// object first.
    pub fn with_extra(mut self, key: &str, value: serde_json::Value) -> Self {
        self.set_extra(key, value);
        self
    }

    /// Sets `extra[key] = value` in place.
    pub fn set_extra(&mut self, key: &str, value: serde_json::Value) {
        if !self.extra.is_object() {
            self.extra = empty_object();
        }
        if let serde_json::Value::Object(map) = &mut self.extra {
            map.insert(key.to_owned(), value);
        }
    }
}
