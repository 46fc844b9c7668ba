//! The security review: what a security team reads and signs off before a
//! file goes live, and what changes between two versions.
//!
//! [`report`] describes every device a config creates, who can reach it and
//! how, with [`Warning`]s for risky choices; [`diff`] compares two configs by
//! exposure (identities gaining or losing access, not text lines); [`replay`]
//! decides the calls and connections of an audit log again under a config
//! and lists those that would come out differently. All are built from the
//! validated [`Config`], the same value `run` enforces, and carry its
//! fingerprint so a sign-off names the exact file bytes.

mod diff;
mod hujson;
mod render;
mod replay;
mod tailnet_policy;
mod warnings;

#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::config::{Config, Identity, Inspect, Kind};

pub use diff::{DeviceSummary, Diff, FieldChange, ListChange, SectionDiff, diff};
pub use render::{
    render_diff_json, render_diff_markdown, render_json, render_markdown, render_replay_json,
    render_replay_markdown,
};
pub use replay::{
    Change, ChangeGroup, ChangedRecord, EXAMPLES_PER_CAUSE, EXAMPLES_PER_GROUP, NotReplayed,
    Outcome, RecordRef, RecordedUnder, Replay, ReplaySource, ReplayTotals, Replayer, replay,
};
pub use tailnet_policy::{PeerRule, PeerView, analyse as analyse_tailnet_policy};
pub use warnings::Warning;

/// Everything a reviewer needs about one config version.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// File name as loaded.
    pub file: String,
    /// Hex SHA-256 of the exact file bytes.
    pub fingerprint: String,
    /// How devices join the tailnet.
    pub tailnet: TailnetSummary,
    /// The governed MCP device, if any.
    pub mcp: Option<McpSummary>,
    /// Every endpoint device, in file order.
    pub devices: Vec<Device>,
    /// Every group, its members and where it is used.
    pub groups: Vec<GroupSummary>,
    /// Risky choices a reviewer should look at.
    pub warnings: Vec<Warning>,
}

impl Report {
    /// True if any warning was raised; the CLI exits non-zero on it.
    pub fn has_warnings(&self) -> bool {
        !self.warnings.is_empty()
    }
}

/// The `[tailnet]` section as reviewed.
#[derive(Debug, Clone, Serialize)]
pub struct TailnetSummary {
    /// Control server URL.
    pub control_url: String,
    /// Where the auth key is read from (never the key).
    pub auth_key_source: String,
    /// State directory root.
    pub state_dir: String,
    /// Hostname prefix.
    pub hostname_prefix: String,
    /// Tags every device advertises.
    pub tags: Vec<String>,
    /// Whether devices are ephemeral.
    pub ephemeral: bool,
}

/// One allow-list entry; `members` lists a group's resolved members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    /// The entry as written, e.g. `group:sre`.
    pub identity: String,
    /// Group members (empty for non-groups).
    pub members: Vec<String>,
}

/// The MCP device as reviewed.
#[derive(Debug, Clone, Serialize)]
pub struct McpSummary {
    /// Tailnet hostname.
    pub hostname: String,
    /// Tailnet port.
    pub port: u16,
    /// Who may use it.
    pub allow: Vec<Access>,
    /// Who may read metrics.
    pub metrics_allow: Vec<Access>,
    /// App capability carrying central grants.
    pub capability: Option<String>,
    /// Request body cap in bytes.
    pub max_body_bytes: u64,
    /// Per-caller rate, e.g. `20/s`.
    pub rate_per_caller: Option<String>,
    /// Per-tool rate.
    pub rate_per_tool: Option<String>,
}

/// One endpoint device as reviewed.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// Hostname as it appears on the tailnet.
    pub hostname: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint kind.
    pub kind: Kind,
    /// Backend target.
    pub target: String,
    /// Tailnet ports.
    pub ports: Vec<u16>,
    /// Free text from the file.
    pub description: Option<String>,
    /// Who may reach it.
    pub access: Vec<Access>,
    /// HTTP rules (`http` endpoints).
    pub http: Option<HttpSummary>,
    /// Upstream tool rules (`mcp` endpoints).
    pub tools: Option<ToolsSummary>,
    /// Inspection actions.
    pub inspect: Inspect,
}

/// HTTP rules as reviewed.
#[derive(Debug, Clone, Serialize)]
pub struct HttpSummary {
    /// Allowed methods.
    pub methods: Vec<String>,
    /// Allowed path globs.
    pub paths: Vec<String>,
    /// Whether identity headers go to the backend.
    pub identity_headers: bool,
    /// Caller headers removed beyond the fixed list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strip_headers: Vec<String>,
    /// Whether the backend connection uses TLS.
    pub tls: bool,
}

/// Upstream MCP rules as reviewed.
#[derive(Debug, Clone, Serialize)]
pub struct ToolsSummary {
    /// Upstream path.
    pub path: String,
    /// Offered tool globs.
    pub allow: Vec<String>,
    /// Withheld tool globs.
    pub deny: Vec<String>,
    /// Whether the upstream connection uses TLS.
    pub tls: bool,
}

/// A group and where it grants access.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    /// Group name.
    pub name: String,
    /// Members.
    pub members: Vec<String>,
    /// Allow lists referring to it (`endpoint web`, `mcp`, `metrics`).
    pub used_by: Vec<String>,
}

fn access(list: &[Identity]) -> Vec<Access> {
    list.iter()
        .map(|id| Access {
            identity: id.to_string(),
            members: match id {
                Identity::Group { members, .. } => {
                    members.iter().map(ToString::to_string).collect()
                }
                _ => Vec::new(),
            },
        })
        .collect()
}

fn refers_to(list: &[Identity], group: &str) -> bool {
    list.iter()
        .any(|id| matches!(id, Identity::Group { name, .. } if name == group))
}

/// Builds the review report of a validated config.
pub fn report(config: &Config) -> Report {
    let t = &config.tailnet;
    let devices = config
        .endpoints
        .iter()
        .map(|e| Device {
            hostname: e.hostname.clone(),
            endpoint: e.name.clone(),
            kind: e.kind,
            target: e.target.to_string(),
            ports: e.ports.clone(),
            description: e.description.clone(),
            access: access(&e.allow),
            http: e.http.as_ref().map(|h| HttpSummary {
                methods: h.methods.clone(),
                paths: h.paths.iter().map(ToString::to_string).collect(),
                identity_headers: h.identity_headers,
                strip_headers: h.strip_headers.clone(),
                tls: h.tls,
            }),
            tools: e.mcp.as_ref().map(|m| ToolsSummary {
                path: m.path.clone(),
                allow: m.tools_allow.iter().map(ToString::to_string).collect(),
                deny: m.tools_deny.iter().map(ToString::to_string).collect(),
                tls: m.tls,
            }),
            inspect: e.inspect,
        })
        .collect();
    let groups = config
        .groups
        .iter()
        .map(|(name, members)| {
            let mut used_by: Vec<String> = config
                .endpoints
                .iter()
                .filter(|e| refers_to(&e.allow, name))
                .map(|e| format!("endpoint {}", e.name))
                .collect();
            if let Some(m) = &config.mcp {
                if refers_to(&m.allow, name) {
                    used_by.push("mcp".into());
                }
                if refers_to(&m.metrics_allow, name) {
                    used_by.push("metrics".into());
                }
            }
            GroupSummary {
                name: name.clone(),
                members: members.iter().map(ToString::to_string).collect(),
                used_by,
            }
        })
        .collect();
    Report {
        file: config.file_name.clone(),
        fingerprint: config.fingerprint.clone(),
        tailnet: TailnetSummary {
            control_url: t.control_url.clone(),
            auth_key_source: t.auth_key.to_string(),
            state_dir: t.state_dir.display().to_string(),
            hostname_prefix: t.hostname_prefix.clone(),
            tags: t.tags.clone(),
            ephemeral: t.ephemeral,
        },
        mcp: config.mcp.as_ref().map(|m| McpSummary {
            hostname: m.hostname.clone(),
            port: m.port,
            allow: access(&m.allow),
            metrics_allow: access(&m.metrics_allow),
            capability: m.capability.clone(),
            max_body_bytes: m.max_body_bytes,
            rate_per_caller: m.rate_limit.per_caller.map(|r| r.to_string()),
            rate_per_tool: m.rate_limit.per_tool.map(|r| r.to_string()),
        }),
        devices,
        groups,
        warnings: warnings::collect(config),
    }
}
