//! Review warnings: allowed by validation, but worth a reviewer's attention.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Config, Host, Identity, Kind, OnAuditFailure, SecretsAction};

/// One finding, with a stable code for tooling and the field path it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Stable snake_case code.
    pub code: &'static str,
    /// What is risky and why.
    pub message: String,
    /// Field path in the file, e.g. `endpoint[1].allow`.
    pub path: String,
}

fn everyone(list: &[Identity]) -> bool {
    list.iter()
        .any(|id| id.expand().contains(&&Identity::Everyone))
}

fn uses_group(list: &[Identity], group: &str) -> bool {
    list.iter()
        .any(|id| matches!(id, Identity::Group { name, .. } if name == group))
}

pub(super) fn collect(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |code: &'static str, path: String, message: String| {
        out.push(Warning {
            code,
            message,
            path,
        });
    };
    let mut targets: BTreeMap<String, &str> = BTreeMap::new();
    for (i, e) in config.endpoints.iter().enumerate() {
        let at = |f: &str| format!("endpoint[{i}].{f}");
        if everyone(&e.allow) {
            warn(
                "allow_everyone",
                at("allow"),
                format!(
                    "endpoint {:?} is open to every peer on the tailnet (\"*\")",
                    e.name
                ),
            );
        }
        if e.allow.is_empty() {
            let unless = match config.mcp.as_ref().and_then(|m| m.capability.as_deref()) {
                Some(cap) => format!(" except through grants of capability {cap}"),
                None => String::new(),
            };
            warn(
                "unreachable_endpoint",
                at("allow"),
                format!(
                    "nobody may reach endpoint {:?}{unless}: its allow list is empty",
                    e.name
                ),
            );
        }
        match &e.target.host {
            Host::Name(name) if name != "localhost" => warn(
                "dns_target",
                at("target"),
                format!(
                    "target {} is a DNS name: it is resolved once when the config is loaded, so review what it resolves to",
                    e.target
                ),
            ),
            Host::Ip(_) if !e.target.host.is_private() => warn(
                "public_target",
                at("target"),
                format!(
                    "target {} is a public address, outside private and loopback ranges",
                    e.target
                ),
            ),
            _ => {}
        }
        let tls = match e.kind {
            Kind::Http => e.http.as_ref().map(|h| (h.tls, "http.tls")),
            Kind::Mcp => e.mcp.as_ref().map(|m| (m.tls, "mcp.tls")),
            Kind::Tcp => None,
        };
        if let Some((false, field)) = tls
            && !e.target.host.is_private()
        {
            warn(
                "plaintext_http",
                at(field),
                format!(
                    "endpoint {:?} speaks plain HTTP to non-private target {}; traffic and identity headers travel unencrypted",
                    e.name, e.target
                ),
            );
        }
        if let Some(first) = targets.insert(e.target.to_string(), &e.name) {
            warn(
                "duplicate_target",
                at("target"),
                format!(
                    "endpoints {first:?} and {:?} both point at {}; access to the service is the union of both allow lists",
                    e.name, e.target
                ),
            );
        }
        if let Some(m) = &e.mcp
            && m.tools_allow.iter().any(|g| g.is_match_all())
            && m.tools_deny.is_empty()
        {
            warn(
                "wildcard_tools",
                at("mcp.tools_allow"),
                format!(
                    "endpoint {:?} offers every upstream tool, including ones added later, with no tools_deny",
                    e.name
                ),
            );
        }
        if e.inspect.secrets == SecretsAction::Log {
            warn(
                "secrets_logged",
                at("inspect.secrets"),
                format!(
                    "endpoint {:?} only logs detected secrets; they pass through to the caller",
                    e.name
                ),
            );
        }
    }
    if let Some(m) = &config.mcp {
        if everyone(&m.allow) {
            warn(
                "allow_everyone",
                "mcp.allow".into(),
                "the MCP endpoint is open to every peer on the tailnet (\"*\")".into(),
            );
        }
        if everyone(&m.metrics_allow) {
            warn(
                "metrics_open",
                "mcp.metrics_allow".into(),
                "metrics are readable by every peer on the tailnet (\"*\")".into(),
            );
        }
    }
    // Tailscale renames a device whose hostname is taken to `<name>-1`,
    // `<name>-2`, ...; a device already called that invites confusion.
    let mut hostnames: Vec<(String, String)> = config
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| (e.hostname.clone(), format!("endpoint[{i}].name")))
        .collect();
    if let Some(m) = &config.mcp {
        hostnames.push((m.hostname.clone(), "mcp.name".into()));
    }
    for (host, path) in &hostnames {
        for (other, _) in &hostnames {
            let renamed = host
                .strip_prefix(other.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if renamed {
                warn(
                    "name_collision",
                    path.clone(),
                    format!(
                        "hostname {host:?} looks like the tailnet's automatic rename of {other:?}; a name clash could make one device answer for the other"
                    ),
                );
            }
        }
    }
    for name in config.groups.keys() {
        let used = config.endpoints.iter().any(|e| uses_group(&e.allow, name))
            || config
                .mcp
                .as_ref()
                .is_some_and(|m| uses_group(&m.allow, name) || uses_group(&m.metrics_allow, name));
        if !used {
            warn(
                "unused_group",
                format!("groups.{name}"),
                format!("group {name:?} is defined but grants nothing"),
            );
        }
    }
    if config.audit.on_failure == OnAuditFailure::Serve {
        warn(
            "audit_failure_serves",
            "audit.on_failure".to_owned(),
            "on_failure = \"serve\": when audit records cannot be written (disk full, \
             database down), the connector keeps serving WITHOUT an audit trail; records \
             that do not fit the queue are dropped and only counted"
                .to_owned(),
        );
    }
    out
}
