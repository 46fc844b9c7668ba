//! Errors of the MCP layer, each with a stable reason code and whose fault
//! it is.
//!
//! An error reaches the caller in one of three ways, chosen by
//! [`McpError::surface`]:
//!
//! - as an HTTP status with a JSON-RPC error body, before rmcp sees the
//!   request (wrong host, access denied, body too large, malformed JSON,
//!   session of another caller);
//! - as a JSON-RPC error of `tools/call`, only when the request cannot be
//!   routed at all (unknown tool, arguments of the wrong shape);
//! - as a tool result with `isError: true` for everything that happened
//!   while trying to run a tool (policy denial, inspection block, rate
//!   limit, backend or upstream failure). MCP clients show tool errors to
//!   the model and the user verbatim, while protocol errors are often
//!   rendered opaquely, so everything an agent can act on is a tool error.

use std::time::Duration;

use crate::backend::BackendError;
use crate::policy::Reason;

use super::limits::Limited;

/// JSON-RPC error code: the body is not JSON.
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC error code: not a valid request (also used for an oversized body).
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC error code: bad params, including an unknown tool name.
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC error code: internal error.
pub const INTERNAL_ERROR: i32 = -32603;
/// JSON-RPC error code (server range): the caller may not use the endpoint.
pub const ACCESS_DENIED: i32 = -32001;
/// JSON-RPC error code (server range): unknown session, or one started by
/// another caller.
pub const SESSION_NOT_FOUND: i32 = -32002;
/// Server error: the audit log cannot record the call, so it is refused.
pub const AUDIT_UNAVAILABLE: i32 = -32003;

/// Whose fault an error is, for metrics and log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was bad or not allowed.
    Caller,
    /// A backend or upstream failed.
    Backend,
    /// Something in the connector failed.
    Internal,
}

/// How an error reaches the caller (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// An HTTP response with this status and a JSON-RPC error body.
    Http(u16),
    /// A JSON-RPC error with this code.
    JsonRpc(i32),
    /// A tool result with `isError: true`.
    ToolError,
}

/// Everything that can go wrong in the MCP layer.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The endpoint file has no `[mcp]` section.
    #[error("no [mcp] section is configured")]
    NotConfigured,
    /// No tailnet name or address was given for the Host check.
    #[error("the MCP device has no tailnet names or addresses to accept as Host")]
    NoAllowedHosts,
    /// The `Host` header names something other than this device.
    #[error("Host {host:?} is not a name of this device")]
    HostNotAllowed {
        /// The header as sent.
        host: String,
    },
    /// The request path is not `/mcp`.
    #[error("no such path {path:?}; the MCP endpoint is /mcp")]
    NotFound {
        /// The path as sent.
        path: String,
    },
    /// Policy refused the caller the MCP device or a tool.
    #[error("denied: {reason}")]
    Denied {
        /// The policy's reason.
        reason: Reason,
    },
    /// The request body is larger than `mcp.max_body_bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The request body could not be read.
    #[error("reading the request body: {0}")]
    BodyRead(String),
    /// The request body is not JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// The session ID is unknown or belongs to another caller.
    #[error("session not found")]
    SessionNotFound {
        /// True if the session exists but was started by another caller.
        other_caller: bool,
    },
    /// No tool of that name exists for this caller.
    #[error("unknown tool: {name}")]
    UnknownTool {
        /// The name asked for.
        name: String,
    },
    /// The arguments do not fit the tool.
    #[error("invalid arguments for {tool}: {why}")]
    InvalidArguments {
        /// Tool name.
        tool: String,
        /// What is wrong.
        why: String,
    },
    /// A rate limit is exhausted.
    #[error(
        "rate limited: {} limit {} exceeded; retry in {} ms",
        .0.limit, .0.rate, .0.retry_after.as_millis()
    )]
    RateLimited(Limited),
    /// Inspection found something the endpoint's settings refuse.
    #[error("blocked: {what} of type {kind} in {place} at {location:?}")]
    Blocked {
        /// `secret` or `prompt injection`.
        what: &'static str,
        /// Finding code, e.g. `github_token`.
        kind: &'static str,
        /// `arguments` or `result`.
        place: &'static str,
        /// JSON pointer of the finding.
        location: String,
    },
    /// The backend of an `http` endpoint could not be reached.
    #[error("{endpoint}: {source}")]
    Backend {
        /// Endpoint name.
        endpoint: String,
        /// What failed.
        source: BackendError,
    },
    /// The HTTP exchange with the backend failed after connecting.
    #[error("{endpoint}: HTTP exchange failed: {why}")]
    Http {
        /// Endpoint name.
        endpoint: String,
        /// What failed.
        why: String,
    },
    /// The backend or upstream did not answer in time.
    #[error("{endpoint}: no answer within {after:?}")]
    Timeout {
        /// Endpoint name.
        endpoint: String,
        /// The time cap that passed.
        after: Duration,
    },
    /// TLS to this backend is configured but not built into this connector.
    #[error("{endpoint}: tls = true is not supported by the MCP tools yet")]
    TlsUnsupported {
        /// Endpoint name.
        endpoint: String,
    },
    /// An upstream MCP server is not connected (down at start or since).
    #[error("{endpoint}: upstream MCP server unavailable: {why}")]
    UpstreamUnavailable {
        /// Endpoint name.
        endpoint: String,
        /// The last connection error.
        why: String,
    },
    /// An upstream MCP server answered a call with an error.
    #[error("{endpoint}: upstream error: {why}")]
    Upstream {
        /// Endpoint name.
        endpoint: String,
        /// The upstream's message.
        why: String,
    },
    /// The request carries no caller identity; a wiring bug, never the
    /// caller's doing.
    #[error("internal error: no caller identity on the request")]
    NoIdentity,
    /// The audit log cannot take the call's record; nothing was done.
    #[error("refused: {0}")]
    AuditUnavailable(crate::audit::Unavailable),
}

impl McpError {
    /// Stable reason code for audit and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            McpError::NotConfigured => "mcp_not_configured",
            McpError::NoAllowedHosts => "mcp_no_allowed_hosts",
            McpError::HostNotAllowed { .. } => "host_not_allowed",
            McpError::NotFound { .. } => "not_found",
            McpError::Denied { reason } => reason.code(),
            McpError::BodyTooLarge { .. } => "body_too_large",
            McpError::BodyRead(_) => "body_read_error",
            McpError::Parse(_) => "parse_error",
            McpError::SessionNotFound { other_caller: true } => "session_caller_mismatch",
            McpError::SessionNotFound {
                other_caller: false,
            } => "session_not_found",
            McpError::UnknownTool { .. } => "unknown_tool",
            McpError::InvalidArguments { .. } => "invalid_arguments",
            McpError::RateLimited(_) => "rate_limited",
            McpError::Blocked { .. } => "blocked_by_inspection",
            McpError::Backend { source, .. } => source.code(),
            McpError::Http { .. } => "backend_http_error",
            McpError::Timeout { .. } => "backend_timeout",
            McpError::TlsUnsupported { .. } => "tls_unsupported",
            McpError::UpstreamUnavailable { .. } => "upstream_unavailable",
            McpError::Upstream { .. } => "upstream_error",
            McpError::NoIdentity => "no_identity",
            McpError::AuditUnavailable(_) => crate::audit::Unavailable::CODE,
        }
    }

    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self {
            McpError::NotConfigured
            | McpError::NoAllowedHosts
            | McpError::NoIdentity
            | McpError::AuditUnavailable(_)
            | McpError::TlsUnsupported { .. } => Fault::Internal,
            McpError::Backend { .. }
            | McpError::Http { .. }
            | McpError::Timeout { .. }
            | McpError::UpstreamUnavailable { .. }
            | McpError::Upstream { .. } => Fault::Backend,
            _ => Fault::Caller,
        }
    }

    /// How the error reaches the caller.
    pub fn surface(&self) -> Surface {
        match self {
            McpError::HostNotAllowed { .. } => Surface::Http(403),
            McpError::NotFound { .. } => Surface::Http(404),
            McpError::BodyTooLarge { .. } => Surface::Http(413),
            McpError::BodyRead(_) | McpError::Parse(_) => Surface::Http(400),
            McpError::SessionNotFound { .. } => Surface::Http(404),
            McpError::NotConfigured | McpError::NoAllowedHosts | McpError::NoIdentity => {
                Surface::JsonRpc(INTERNAL_ERROR)
            }
            McpError::UnknownTool { .. } | McpError::InvalidArguments { .. } => {
                Surface::JsonRpc(INVALID_PARAMS)
            }
            McpError::AuditUnavailable(_) => Surface::JsonRpc(AUDIT_UNAVAILABLE),
            _ => Surface::ToolError,
        }
    }

    /// The JSON-RPC error code used when the error is sent as an HTTP
    /// response before rmcp sees the request.
    pub fn jsonrpc_code(&self) -> i32 {
        match self {
            McpError::Parse(_) => PARSE_ERROR,
            McpError::BodyTooLarge { .. } | McpError::BodyRead(_) | McpError::NotFound { .. } => {
                INVALID_REQUEST
            }
            McpError::Denied { .. } | McpError::HostNotAllowed { .. } => ACCESS_DENIED,
            McpError::SessionNotFound { .. } => SESSION_NOT_FOUND,
            McpError::UnknownTool { .. } | McpError::InvalidArguments { .. } => INVALID_PARAMS,
            McpError::AuditUnavailable(_) => AUDIT_UNAVAILABLE,
            _ => INTERNAL_ERROR,
        }
    }

    /// The audit `status` of a call that ended with this error.
    pub fn status(&self) -> &'static str {
        match self {
            McpError::Denied { .. } => "denied",
            McpError::Blocked { .. } => "blocked",
            McpError::RateLimited(_) => "rate_limited",
            McpError::Timeout { .. } => "timeout",
            McpError::UnknownTool { .. } | McpError::InvalidArguments { .. } => "invalid",
            McpError::AuditUnavailable(_) => "refused",
            _ => "error",
        }
    }
}
