//! Why a decision came out as it did.

use std::fmt;

use crate::config::Kind;

/// The reason of a [`Decision`](super::Decision). [`Reason::code`] is stable
/// (audit records and metrics labels use it); `Display` is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// An allow-list entry matched; `rule` names it (and the group member).
    AllowedByIdentity {
        /// The matching entry, e.g. `group:sre (user:alice@example.com)`.
        rule: String,
    },
    /// The tailnet app capability granted it.
    AllowedByCapability {
        /// Capability name.
        capability: String,
        /// The grant that matched, e.g. `tools: tickets/search_*`.
        grant: String,
    },
    /// No endpoint has this name.
    UnknownEndpoint {
        /// The name asked for.
        endpoint: String,
    },
    /// The action does not apply to this kind of endpoint.
    WrongKind {
        /// Endpoint name.
        endpoint: String,
        /// Its kind.
        kind: Kind,
        /// What was attempted (`http`, `tools`).
        action: &'static str,
    },
    /// The caller matches no allow-list entry and no grant.
    NotInAllowList {
        /// Endpoint name.
        endpoint: String,
    },
    /// The device does not listen on that port.
    PortNotAllowed {
        /// Endpoint name.
        endpoint: String,
        /// Port connected to.
        port: u16,
    },
    /// The HTTP method is not in `methods`.
    MethodNotAllowed {
        /// Endpoint name.
        endpoint: String,
        /// Method as sent.
        method: String,
    },
    /// The normalised path matches no `paths` pattern.
    PathNotAllowed {
        /// Endpoint name.
        endpoint: String,
        /// The normalised path.
        path: String,
    },
    /// The path is refused before matching (traversal, encoded slashes, ...).
    MalformedPath {
        /// Path as sent.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The tool matches `tools_deny`.
    ToolDenied {
        /// Endpoint name.
        endpoint: String,
        /// Tool name.
        tool: String,
        /// The deny pattern that matched.
        pattern: String,
    },
    /// The tool matches no `tools_allow` pattern or grant.
    ToolNotAllowed {
        /// Endpoint name.
        endpoint: String,
        /// Tool name.
        tool: String,
    },
    /// The caller may not use the MCP device.
    McpNotAllowed,
    /// The file has no `[mcp]` section.
    McpNotConfigured,
    /// The caller is not in `metrics_allow`.
    MetricsNotAllowed,
}

impl Reason {
    /// Every code [`code`](Self::code) can return.
    pub const CODES: [&'static str; 14] = [
        "allowed_by_identity",
        "allowed_by_capability",
        "unknown_endpoint",
        "wrong_kind",
        "not_in_allow_list",
        "port_not_allowed",
        "method_not_allowed",
        "path_not_allowed",
        "malformed_path",
        "tool_denied",
        "tool_not_allowed",
        "mcp_not_allowed",
        "mcp_not_configured",
        "metrics_not_allowed",
    ];

    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::AllowedByIdentity { .. } => "allowed_by_identity",
            Reason::AllowedByCapability { .. } => "allowed_by_capability",
            Reason::UnknownEndpoint { .. } => "unknown_endpoint",
            Reason::WrongKind { .. } => "wrong_kind",
            Reason::NotInAllowList { .. } => "not_in_allow_list",
            Reason::PortNotAllowed { .. } => "port_not_allowed",
            Reason::MethodNotAllowed { .. } => "method_not_allowed",
            Reason::PathNotAllowed { .. } => "path_not_allowed",
            Reason::MalformedPath { .. } => "malformed_path",
            Reason::ToolDenied { .. } => "tool_denied",
            Reason::ToolNotAllowed { .. } => "tool_not_allowed",
            Reason::McpNotAllowed => "mcp_not_allowed",
            Reason::McpNotConfigured => "mcp_not_configured",
            Reason::MetricsNotAllowed => "metrics_not_allowed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::AllowedByIdentity { rule } => write!(f, "allowed by {rule}"),
            Reason::AllowedByCapability { capability, grant } => {
                write!(f, "allowed by capability {capability} ({grant})")
            }
            Reason::UnknownEndpoint { endpoint } => write!(f, "no endpoint named {endpoint:?}"),
            Reason::WrongKind {
                endpoint,
                kind,
                action,
            } => write!(
                f,
                "endpoint {endpoint:?} is kind {kind}, which has no {action} access"
            ),
            Reason::NotInAllowList { endpoint } => {
                write!(
                    f,
                    "caller is not in the allow list of endpoint {endpoint:?}"
                )
            }
            Reason::PortNotAllowed { endpoint, port } => {
                write!(f, "endpoint {endpoint:?} does not listen on port {port}")
            }
            Reason::MethodNotAllowed { endpoint, method } => {
                write!(
                    f,
                    "method {method:?} is not allowed on endpoint {endpoint:?}"
                )
            }
            Reason::PathNotAllowed { endpoint, path } => {
                write!(f, "path {path:?} is not allowed on endpoint {endpoint:?}")
            }
            Reason::MalformedPath { path, why } => write!(f, "refused path {path:?}: {why}"),
            Reason::ToolDenied {
                endpoint,
                tool,
                pattern,
            } => write!(f, "tool {tool:?} on {endpoint:?} is denied by {pattern:?}"),
            Reason::ToolNotAllowed { endpoint, tool } => {
                write!(f, "tool {tool:?} on {endpoint:?} is not allowed")
            }
            Reason::McpNotAllowed => f.write_str("caller is not allowed to use the MCP endpoint"),
            Reason::McpNotConfigured => f.write_str("no [mcp] device is configured"),
            Reason::MetricsNotAllowed => f.write_str("caller may not read metrics"),
        }
    }
}
