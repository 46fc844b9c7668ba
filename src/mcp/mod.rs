//! The governed MCP endpoint: an rmcp Streamable HTTP server whose tools
//! reach the endpoints of `endpoints.toml` on the caller's behalf.
//!
//! # One request, top to bottom
//!
//! ```text
//! serve_connection(state, io, caller)        hyper http1 on the tailnet connection
//!   front::handle                            per HTTP request
//!     Host is a name of this device          else 403
//!     path is /mcp                           else 404 (/metrics is reserved)
//!     decide(McpAccess)                      else 403 + audit
//!     Mcp-Session-Id bound to this caller    else 404 + audit
//!     body <= mcp.max_body_bytes, JSON       else 413 / 400 parse error
//!     Caller into the request's extensions
//!   rmcp StreamableHttpService               JSON-RPC, sessions, SSE
//!     handler::Handler                       initialize / tools/list / tools/call
//!       caller from http::request::Parts     (never from the session)
//!       decide(CallTool / Http)              per call
//!       rate limits                          per caller, per (caller, tool)
//!       inspect arguments                    redact | block | log
//!       http_request | upstream call         pinned target, time and size caps
//!       inspect result                       secrets, prompt injection
//!       audit                                one record per call, on drop
//! ```
//!
//! The caller's identity comes from the tailnet connection only. It is put
//! into every HTTP request before rmcp parses it, and tool handlers read it
//! from that request, never from session state: a session created by one
//! caller and presented by another is refused before rmcp sees it.
//!
//! # Tool names
//!
//! Built-in tools: [`WHOAMI_TOOL`], [`LIST_ENDPOINTS_TOOL`] and
//! [`HTTP_REQUEST_TOOL`]. Each tool of an upstream MCP endpoint appears as
//! `<endpoint>__<tool>` ([`NAMESPACE_SEPARATOR`] is two underscores).
//! Endpoint names are DNS labels and never contain `_`, so the first `__`
//! always splits a name unambiguously.
//!
//! This module does not know about `devices` or the CLI; the runtime calls
//! [`serve_connection`] for each accepted tailnet connection.

mod builtin;
mod canonical;
mod error;
mod federation;
mod front;
mod handler;
mod http_tool;
mod inspection;
mod limits;
mod sessions;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::backend::Pinned;
use crate::config::{Config, Endpoint, RateLimits};
use crate::identity::Caller;
use crate::policy::{Action, Decision, decide};

pub use crate::policy::HTTP_REQUEST_TOOL;
pub use error::{Fault, McpError, Surface};
pub use federation::UpstreamStatus;
pub(crate) use front::METRICS_PATH;
pub use limits::{Limited, RateLimiter};

/// Built-in tool: who the caller is and what they may use.
pub const WHOAMI_TOOL: &str = "whoami";
/// Built-in tool: the endpoints the caller may use.
pub const LIST_ENDPOINTS_TOOL: &str = "list_endpoints";
/// Separates endpoint and upstream tool in federated tool names.
pub const NAMESPACE_SEPARATOR: &str = "__";

pub use crate::policy::SharedPolicy;

/// The MCP device's own settings from `[mcp]`.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    /// Device name (for audit records).
    pub name: String,
    /// Largest accepted request body.
    pub max_body_bytes: u64,
    /// Names and addresses accepted in the `Host` header, lower-case.
    pub allowed_hosts: Vec<String>,
}

/// The endpoints of one config version with their pinned targets.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    /// Endpoint settings by name.
    pub by_name: HashMap<String, Endpoint>,
    /// Pinned targets by endpoint name.
    pub pinned: HashMap<String, Pinned>,
}

impl Endpoints {
    fn new(config: &Config, pinned: HashMap<String, Pinned>) -> Self {
        Endpoints {
            by_name: config
                .endpoints
                .iter()
                .map(|e| (e.name.clone(), e.clone()))
                .collect(),
            pinned,
        }
    }
}

/// Everything the HTTP front and the tool handlers share.
pub(crate) struct Shared {
    pub device: Device,
    pub policy: SharedPolicy,
    pub endpoints: ArcSwap<Endpoints>,
    pub audit: AuditLog,
    pub limiter: RateLimiter,
    pub sessions: sessions::Bindings,
    pub upstreams: federation::Federation,
    pub shutdown: CancellationToken,
    pub metrics: std::sync::OnceLock<MetricsSource>,
    pub pool: http_tool::Pool,
}

/// Renders the `/metrics` page, given the upstreams' status.
pub type MetricsSource = Box<dyn Fn(&[(String, UpstreamStatus)]) -> String + Send + Sync>;

/// The state of the MCP device: build it once per process with
/// [`McpState::new`], start federation with [`McpState::start_federation`],
/// then hand it to [`serve_connection`] for every accepted connection.
pub struct McpState {
    shared: Arc<Shared>,
    rmcp: StreamableHttpService<handler::Handler, LocalSessionManager>,
    session_manager: Arc<LocalSessionManager>,
}

impl std::fmt::Debug for McpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpState")
            .field("device", &self.shared.device)
            .finish_non_exhaustive()
    }
}

impl McpState {
    /// Builds the MCP device's state.
    ///
    /// `pinned` maps endpoint names to their pinned targets (endpoints
    /// without one answer with a tool error). `allowed_hosts` are the
    /// device's tailnet names (short and FQDN) and addresses, optionally
    /// with `:port`; a request whose `Host` is none of them is refused, which
    /// stops DNS rebinding. It must not be empty.
    pub fn new(
        config: &Config,
        policy: SharedPolicy,
        pinned: HashMap<String, Pinned>,
        audit: AuditLog,
        allowed_hosts: Vec<String>,
    ) -> Result<Arc<McpState>, McpError> {
        let mcp = config.mcp.as_ref().ok_or(McpError::NotConfigured)?;
        let allowed_hosts: Vec<String> = allowed_hosts
            .into_iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if allowed_hosts.is_empty() {
            return Err(McpError::NoAllowedHosts);
        }
        let shutdown = CancellationToken::new();
        let endpoints = Endpoints::new(config, pinned);
        let upstreams = federation::Federation::new(&endpoints, shutdown.child_token());
        let shared = Arc::new(Shared {
            device: Device {
                name: mcp.name.clone(),
                max_body_bytes: mcp.max_body_bytes,
                allowed_hosts: allowed_hosts.clone(),
            },
            policy,
            endpoints: ArcSwap::from_pointee(endpoints),
            audit,
            limiter: RateLimiter::new(rate_limits(config)),
            sessions: sessions::Bindings::default(),
            upstreams,
            shutdown: shutdown.clone(),
            metrics: std::sync::OnceLock::new(),
            pool: http_tool::Pool::default(),
        });
        let session_manager = Arc::new(LocalSessionManager::default());
        let rmcp_config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(allowed_hosts)
            .with_cancellation_token(shutdown.child_token())
            .with_max_request_body_bytes(usize::try_from(mcp.max_body_bytes).unwrap_or(usize::MAX));
        let factory_shared = Arc::clone(&shared);
        let rmcp = StreamableHttpService::new(
            move || Ok(handler::Handler::new(Arc::clone(&factory_shared))),
            Arc::clone(&session_manager),
            rmcp_config,
        );
        Ok(Arc::new(McpState {
            shared,
            rmcp,
            session_manager,
        }))
    }

    /// Starts one background task per `kind = "mcp"` endpoint that connects
    /// to the upstream, lists its tools and keeps retrying while it is
    /// down. Tools appear in `tools/list` once their upstream is reachable;
    /// connected sessions are sent `notifications/tools/list_changed`.
    pub fn start_federation(self: &Arc<Self>) {
        federation::start(&self.shared);
    }

    /// Sets what `/metrics` serves (once; later calls are ignored). Until
    /// set, permitted callers get an empty page.
    pub fn set_metrics(&self, source: MetricsSource) {
        let _ = self.shared.metrics.set(source);
    }

    /// Connection status of each upstream MCP endpoint, by endpoint name.
    pub fn upstream_status(&self) -> Vec<(String, UpstreamStatus)> {
        self.shared.upstreams.status()
    }

    /// Replaces the endpoint settings, pinned targets and rate limits after
    /// a reload, and connects, reconnects or disconnects upstream MCP
    /// servers whose endpoints were added, changed or removed (unchanged
    /// ones keep their connection). The policy is swapped separately
    /// through the [`SharedPolicy`]. Returns the upstreams started and
    /// stopped.
    pub fn apply_config(
        &self,
        config: &Config,
        pinned: HashMap<String, Pinned>,
    ) -> (Vec<String>, Vec<String>) {
        let endpoints = Endpoints::new(config, pinned);
        let changed = federation::apply(&self.shared, &endpoints);
        self.shared.endpoints.store(Arc::new(endpoints));
        self.shared.pool.clear();
        self.shared.limiter.set_limits(rate_limits(config));
        changed
    }

    /// Whether `caller` may keep using the MCP device under the policy in
    /// force (asked for open connections after a reload).
    pub fn recheck(&self, caller: &Caller) -> Decision {
        decide(&self.shared.policy.load(), caller, &Action::McpAccess)
    }

    /// Ends every session, stops federation tasks and asks open connections
    /// to close once their current request is answered.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }
}

fn rate_limits(config: &Config) -> RateLimits {
    config
        .mcp
        .as_ref()
        .map(|m| m.rate_limit.clone())
        .unwrap_or_default()
}

/// Serves the MCP endpoint on one accepted tailnet connection until the
/// peer closes it or the state is shut down. `caller` is the identity the
/// tailnet reported for this connection; it applies to every request on it.
pub async fn serve_connection<IO>(state: Arc<McpState>, io: IO, caller: Caller)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    front::serve(state, io, caller).await;
}
