//! What changes in exposure between two config versions.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::{Config, Endpoint, Identity, McpDevice};

/// Exposure changes from `old` to `new`.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Fingerprint of the old file.
    pub old_fingerprint: String,
    /// Fingerprint of the new file.
    pub new_fingerprint: String,
    /// Devices that appear.
    pub added: Vec<DeviceSummary>,
    /// Devices that disappear.
    pub removed: Vec<DeviceSummary>,
    /// Endpoints present in both whose settings or access changed.
    pub changed: Vec<SectionDiff>,
    /// Changes to the MCP device (`[mcp]`), if any.
    pub mcp: Option<SectionDiff>,
    /// Changes to `[tailnet]`, if any.
    pub tailnet: Option<SectionDiff>,
}

impl Diff {
    /// True if the two versions differ in anything reviewed.
    pub fn has_changes(&self) -> bool {
        !(self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.mcp.is_none()
            && self.tailnet.is_none())
    }
}

/// A device that was added or removed, with who gains or loses it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    /// Endpoint name.
    pub endpoint: String,
    /// Tailnet hostname.
    pub hostname: String,
    /// Kind.
    pub kind: String,
    /// Target.
    pub target: String,
    /// Ports.
    pub ports: Vec<u16>,
    /// Resolved identities that may reach it.
    pub access: Vec<String>,
}

/// Changes within one section (an endpoint, `[mcp]` or `[tailnet]`).
#[derive(Debug, Clone, Serialize)]
pub struct SectionDiff {
    /// Endpoint name, `mcp` or `tailnet`.
    pub name: String,
    /// Scalar settings that changed.
    pub fields: Vec<FieldChange>,
    /// Lists whose members changed; for `access`, `added` are identities
    /// gaining access and `removed` those losing it.
    pub lists: Vec<ListChange>,
}

/// One setting with its old and new value.
#[derive(Debug, Clone, Serialize)]
pub struct FieldChange {
    /// Field name.
    pub field: String,
    /// Value before.
    pub old: String,
    /// Value after.
    pub new: String,
}

/// Members added to and removed from one list.
#[derive(Debug, Clone, Serialize)]
pub struct ListChange {
    /// Field name (`access`, `ports`, `methods`, ...).
    pub field: String,
    /// Members only in the new version.
    pub added: Vec<String>,
    /// Members only in the old version.
    pub removed: Vec<String>,
}

/// The identities an allow list resolves to, groups expanded, so moving a
/// user between a group and a direct entry is not reported as a change.
fn resolved(list: &[Identity]) -> Vec<String> {
    let set: BTreeSet<String> = list
        .iter()
        .flat_map(|id| id.expand())
        .map(|id| match id {
            Identity::User(login) => format!("user:{}", login.to_ascii_lowercase()),
            other => other.to_string(),
        })
        .collect();
    set.into_iter().collect()
}

#[derive(Default)]
struct Section {
    fields: Vec<FieldChange>,
    lists: Vec<ListChange>,
}

impl Section {
    fn field(&mut self, field: &str, old: impl ToString, new: impl ToString) {
        let (old, new) = (old.to_string(), new.to_string());
        if old != new {
            self.fields.push(FieldChange {
                field: field.into(),
                old,
                new,
            });
        }
    }

    fn list<T: ToString>(&mut self, field: &str, old: &[T], new: &[T]) {
        let old: BTreeSet<String> = old.iter().map(ToString::to_string).collect();
        let new: BTreeSet<String> = new.iter().map(ToString::to_string).collect();
        let added: Vec<String> = new.difference(&old).cloned().collect();
        let removed: Vec<String> = old.difference(&new).cloned().collect();
        if !added.is_empty() || !removed.is_empty() {
            self.lists.push(ListChange {
                field: field.into(),
                added,
                removed,
            });
        }
    }

    fn finish(self, name: &str) -> Option<SectionDiff> {
        (!self.fields.is_empty() || !self.lists.is_empty()).then(|| SectionDiff {
            name: name.into(),
            fields: self.fields,
            lists: self.lists,
        })
    }
}

fn summary(e: &Endpoint) -> DeviceSummary {
    DeviceSummary {
        endpoint: e.name.clone(),
        hostname: e.hostname.clone(),
        kind: e.kind.to_string(),
        target: e.target.to_string(),
        ports: e.ports.clone(),
        access: resolved(&e.allow),
    }
}

fn opt(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
}

fn endpoint_diff(old: &Endpoint, new: &Endpoint) -> Option<SectionDiff> {
    let mut s = Section::default();
    s.field("hostname", &old.hostname, &new.hostname);
    s.field("kind", old.kind, new.kind);
    s.field("target", &old.target, &new.target);
    s.list("access", &resolved(&old.allow), &resolved(&new.allow));
    s.list("ports", &old.ports, &new.ports);
    let (oh, nh) = (old.http.as_ref(), new.http.as_ref());
    s.list(
        "methods",
        &oh.map(|h| h.methods.clone()).unwrap_or_default(),
        &nh.map(|h| h.methods.clone()).unwrap_or_default(),
    );
    s.list(
        "paths",
        &oh.map(|h| h.paths.clone()).unwrap_or_default(),
        &nh.map(|h| h.paths.clone()).unwrap_or_default(),
    );
    s.field("http.tls", opt(oh.map(|h| h.tls)), opt(nh.map(|h| h.tls)));
    s.field(
        "http.identity_headers",
        opt(oh.map(|h| h.identity_headers)),
        opt(nh.map(|h| h.identity_headers)),
    );
    s.list(
        "strip_headers",
        &oh.map(|h| h.strip_headers.clone()).unwrap_or_default(),
        &nh.map(|h| h.strip_headers.clone()).unwrap_or_default(),
    );
    let (om, nm) = (old.mcp.as_ref(), new.mcp.as_ref());
    s.list(
        "tools_allow",
        &om.map(|m| m.tools_allow.clone()).unwrap_or_default(),
        &nm.map(|m| m.tools_allow.clone()).unwrap_or_default(),
    );
    s.list(
        "tools_deny",
        &om.map(|m| m.tools_deny.clone()).unwrap_or_default(),
        &nm.map(|m| m.tools_deny.clone()).unwrap_or_default(),
    );
    s.field("inspect.secrets", old.inspect.secrets, new.inspect.secrets);
    s.field(
        "inspect.injection",
        old.inspect.injection,
        new.inspect.injection,
    );
    s.finish(&new.name)
}

fn mcp_diff(old: Option<&McpDevice>, new: Option<&McpDevice>) -> Option<SectionDiff> {
    let mut s = Section::default();
    s.field("enabled", old.is_some(), new.is_some());
    s.field(
        "hostname",
        opt(old.map(|m| &m.hostname)),
        opt(new.map(|m| &m.hostname)),
    );
    s.field("port", opt(old.map(|m| m.port)), opt(new.map(|m| m.port)));
    s.field(
        "capability",
        opt(old.and_then(|m| m.capability.as_ref())),
        opt(new.and_then(|m| m.capability.as_ref())),
    );
    s.field(
        "max_body_bytes",
        opt(old.map(|m| m.max_body_bytes)),
        opt(new.map(|m| m.max_body_bytes)),
    );
    s.field(
        "rate_limit.per_caller",
        opt(old.and_then(|m| m.rate_limit.per_caller)),
        opt(new.and_then(|m| m.rate_limit.per_caller)),
    );
    s.field(
        "rate_limit.per_tool",
        opt(old.and_then(|m| m.rate_limit.per_tool)),
        opt(new.and_then(|m| m.rate_limit.per_tool)),
    );
    let allow = |m: Option<&McpDevice>| m.map(|m| resolved(&m.allow)).unwrap_or_default();
    let metrics = |m: Option<&McpDevice>| m.map(|m| resolved(&m.metrics_allow)).unwrap_or_default();
    s.list("access", &allow(old), &allow(new));
    s.list("metrics_access", &metrics(old), &metrics(new));
    s.finish("mcp")
}

/// Compares two configs by exposure; endpoints are matched by name.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let added = new
        .endpoints
        .iter()
        .filter(|e| old.endpoint(&e.name).is_none())
        .map(summary)
        .collect();
    let removed = old
        .endpoints
        .iter()
        .filter(|e| new.endpoint(&e.name).is_none())
        .map(summary)
        .collect();
    let changed = new
        .endpoints
        .iter()
        .filter_map(|n| old.endpoint(&n.name).and_then(|o| endpoint_diff(o, n)))
        .collect();
    let (ot, nt) = (&old.tailnet, &new.tailnet);
    let mut t = Section::default();
    t.field("control_url", &ot.control_url, &nt.control_url);
    t.field("auth_key", &ot.auth_key, &nt.auth_key);
    t.field("state_dir", ot.state_dir.display(), nt.state_dir.display());
    t.field("hostname_prefix", &ot.hostname_prefix, &nt.hostname_prefix);
    t.field("ephemeral", ot.ephemeral, nt.ephemeral);
    t.list("tags", &ot.tags, &nt.tags);
    Diff {
        old_fingerprint: old.fingerprint.clone(),
        new_fingerprint: new.fingerprint.clone(),
        added,
        removed,
        changed,
        mcp: mcp_diff(old.mcp.as_ref(), new.mcp.as_ref()),
        tailnet: t.finish("tailnet"),
    }
}
