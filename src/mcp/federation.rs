//! Federation of upstream MCP servers (`kind = "mcp"` endpoints).
//!
//! One task per upstream connects over Streamable HTTP to
//! `http://<target><path>` — the target name resolves only to its pinned
//! addresses, proxies are ignored and redirects are not followed — lists
//! its tools and keeps the connection. While an upstream is down its tools
//! are absent from `tools/list` and calls to it are tool errors; the task
//! retries with backoff (0.5 s doubling to 30 s), and a call that finds the
//! transport closed asks it to reconnect at once. Each change is announced
//! to connected sessions with `notifications/tools/list_changed`.
//!
//! Upstream tool lists are read when the connection is made; a tool added
//! upstream later appears after the next reconnect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, Tool,
};
use rmcp::service::{Peer, RoleClient, RoleServer, ServiceError, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backend::Pinned;
use crate::config::{Endpoint, Host, Kind};

use super::error::McpError;
use super::{Endpoints, Shared};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where an upstream connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamStatus {
    /// Not connected; `why` is the last error.
    Down {
        /// The last connection error.
        why: String,
    },
    /// Connected, with this many tools.
    Ready {
        /// Number of upstream tools.
        tools: usize,
    },
}

enum State {
    Down(String),
    Ready {
        peer: Peer<RoleClient>,
        tools: Arc<Vec<Tool>>,
    },
}

struct Upstream {
    /// Stops this upstream's task (a child of the federation's token).
    cancel: CancellationToken,
    endpoint: String,
    path: String,
    tls: bool,
    timeout: Duration,
    connect_timeout: Duration,
    pinned: Option<Pinned>,
    state: RwLock<State>,
    reconnect: Notify,
}

impl Upstream {
    fn new(e: &Endpoint, pinned: Option<Pinned>, cancel: CancellationToken) -> Option<Upstream> {
        let settings = e.mcp.as_ref()?;
        Some(Upstream {
            cancel,
            endpoint: e.name.clone(),
            path: settings.path.clone(),
            tls: settings.tls,
            timeout: Duration::from_millis(settings.timeout_ms),
            connect_timeout: Duration::from_millis(e.connect_timeout_ms),
            pinned,
            state: RwLock::new(State::Down("not connected yet".to_owned())),
            reconnect: Notify::new(),
        })
    }

    /// Whether `other` connects the same way (same target, path, timeouts).
    fn same_as(&self, other: &Upstream) -> bool {
        self.path == other.path
            && self.tls == other.tls
            && self.timeout == other.timeout
            && self.connect_timeout == other.connect_timeout
            && self.pinned.as_ref().map(|p| (&p.target, &p.addrs))
                == other.pinned.as_ref().map(|p| (&p.target, &p.addrs))
    }

    fn set(&self, state: State) {
        *self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    fn peer(&self) -> Result<Peer<RoleClient>, McpError> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Ready { peer, .. } => Ok(peer.clone()),
            State::Down(why) => Err(McpError::UpstreamUnavailable {
                endpoint: self.endpoint.clone(),
                why: why.clone(),
            }),
        }
    }

    fn tools(&self) -> Option<Arc<Vec<Tool>>> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Ready { tools, .. } => Some(Arc::clone(tools)),
            State::Down(_) => None,
        }
    }
}

/// The upstream connections of the MCP device; a reload adds, replaces and
/// removes them with [`apply`].
pub struct Federation {
    upstreams: RwLock<HashMap<String, Arc<Upstream>>>,
    cancel: CancellationToken,
    /// Sessions to tell when the tool set changes.
    listeners: Mutex<Vec<Peer<RoleServer>>>,
}

impl Federation {
    /// One (not yet started) upstream per `kind = "mcp"` endpoint.
    pub fn new(endpoints: &Endpoints, cancel: CancellationToken) -> Self {
        let federation = Federation {
            upstreams: RwLock::new(HashMap::new()),
            cancel,
            listeners: Mutex::new(Vec::new()),
        };
        let upstreams = federation.build(endpoints);
        *federation.write() = upstreams;
        federation
    }

    fn build(&self, endpoints: &Endpoints) -> HashMap<String, Arc<Upstream>> {
        endpoints
            .by_name
            .values()
            .filter(|e| e.kind == Kind::Mcp)
            .filter_map(|e| {
                let pinned = endpoints.pinned.get(&e.name).cloned();
                let up = Upstream::new(e, pinned, self.cancel.child_token())?;
                Some((e.name.clone(), Arc::new(up)))
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Upstream>>> {
        self.upstreams.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Upstream>>> {
        self.upstreams.write().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, endpoint: &str) -> Option<Arc<Upstream>> {
        self.read().get(endpoint).cloned()
    }

    /// Status of each upstream, sorted by endpoint name.
    pub fn status(&self) -> Vec<(String, UpstreamStatus)> {
        let mut out: Vec<_> = self
            .read()
            .iter()
            .map(|(name, up)| {
                let status = match &*up.state.read().unwrap_or_else(|p| p.into_inner()) {
                    State::Ready { tools, .. } => UpstreamStatus::Ready { tools: tools.len() },
                    State::Down(why) => UpstreamStatus::Down { why: why.clone() },
                };
                (name.clone(), status)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether `endpoint` is a federated upstream.
    pub fn has(&self, endpoint: &str) -> bool {
        self.read().contains_key(endpoint)
    }

    /// The tools of every connected upstream, by endpoint name.
    pub fn tools(&self) -> Vec<(String, Arc<Vec<Tool>>)> {
        let mut out: Vec<_> = self
            .read()
            .iter()
            .filter_map(|(name, up)| up.tools().map(|t| (name.clone(), t)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether `endpoint` is connected and offers `tool`; `None` while it
    /// is down (the tool may exist).
    pub fn offers(&self, endpoint: &str, tool: &str) -> Option<bool> {
        let up = self.get(endpoint)?;
        up.tools().map(|tools| tools.iter().any(|t| t.name == tool))
    }

    /// Registers a session to be told when the tool set changes.
    pub fn listen(&self, peer: Peer<RoleServer>) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|p| !p.is_transport_closed());
        listeners.push(peer);
    }

    async fn announce(&self) {
        let peers: Vec<_> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for peer in peers {
            if !peer.is_transport_closed() {
                let _ = peer.notify_tool_list_changed().await;
            }
        }
    }

    /// Calls `tool` on the upstream of `endpoint` within its timeout.
    pub async fn call(
        &self,
        endpoint: &str,
        tool: &str,
        args: Value,
    ) -> Result<CallToolResult, McpError> {
        let up = self
            .get(endpoint)
            .ok_or_else(|| McpError::UpstreamUnavailable {
                endpoint: endpoint.to_owned(),
                why: "not a federated endpoint".to_owned(),
            })?;
        let peer = up.peer()?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        match tokio::time::timeout(up.timeout, peer.call_tool(params)).await {
            Err(_) => Err(McpError::Timeout {
                endpoint: endpoint.to_owned(),
                after: up.timeout,
            }),
            Ok(Ok(result)) => Ok(result),
            Ok(Err(ServiceError::McpError(e))) => Err(McpError::Upstream {
                endpoint: endpoint.to_owned(),
                why: format!("{} (code {})", e.message, e.code.0),
            }),
            Ok(Err(e)) => {
                if matches!(
                    e,
                    ServiceError::TransportClosed | ServiceError::TransportSend(_)
                ) {
                    up.reconnect.notify_one();
                }
                Err(McpError::UpstreamUnavailable {
                    endpoint: endpoint.to_owned(),
                    why: e.to_string(),
                })
            }
        }
    }
}

/// Starts the connection task of every upstream.
pub fn start(shared: &Arc<Shared>) {
    let upstreams: Vec<_> = shared.upstreams.read().values().cloned().collect();
    for up in upstreams {
        spawn(up, shared);
    }
}

fn spawn(up: Arc<Upstream>, shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move { run(up, shared).await });
}

/// Brings the upstreams in line with `endpoints` after a reload: an
/// upstream whose settings are unchanged keeps its connection; added or
/// changed ones connect anew; removed ones disconnect. Sessions are told
/// the tool list changed. Returns the names of upstreams started and
/// stopped.
pub fn apply(shared: &Arc<Shared>, endpoints: &Endpoints) -> (Vec<String>, Vec<String>) {
    let federation = &shared.upstreams;
    let wanted = federation.build(endpoints);
    let (mut started, mut stopped) = (Vec::new(), Vec::new());
    {
        let mut current = federation.write();
        current.retain(|name, up| {
            let keep = wanted.get(name).is_some_and(|w| w.same_as(up));
            if !keep {
                up.cancel.cancel();
                stopped.push(name.clone());
            }
            keep
        });
        for (name, up) in wanted {
            if !current.contains_key(&name) {
                current.insert(name.clone(), Arc::clone(&up));
                spawn(up, shared);
                started.push(name);
            } else {
                up.cancel.cancel();
            }
        }
    }
    if !stopped.is_empty() {
        let shared = Arc::clone(shared);
        tokio::spawn(async move { shared.upstreams.announce().await });
    }
    started.sort();
    stopped.sort();
    (started, stopped)
}

async fn run(up: Arc<Upstream>, shared: Arc<Shared>) {
    let cancel = up.cancel.clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let attempt = tokio::select! {
            () = cancel.cancelled() => return,
            attempt = connect(&up) => attempt,
        };
        match attempt {
            Ok((service, tools)) => {
                tracing::info!(endpoint = %up.endpoint, tools = tools.len(), "upstream MCP server connected");
                backoff = FIRST_BACKOFF;
                let stop = service.cancellation_token();
                up.set(State::Ready {
                    peer: service.peer().clone(),
                    tools: Arc::new(tools),
                });
                shared.upstreams.announce().await;
                let mut done = tokio::spawn(service.waiting());
                let cancelled = tokio::select! {
                    () = cancel.cancelled() => true,
                    () = up.reconnect.notified() => false,
                    _ = &mut done => false,
                };
                stop.cancel();
                up.set(State::Down("connection lost".to_owned()));
                if cancelled {
                    return;
                }
                tracing::warn!(endpoint = %up.endpoint, "upstream MCP connection lost; reconnecting");
                shared.upstreams.announce().await;
            }
            Err(why) => {
                tracing::debug!(endpoint = %up.endpoint, %why, "upstream MCP server unavailable");
                up.set(State::Down(why));
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

type Running = rmcp::service::RunningService<RoleClient, ClientConfig>;

async fn connect(up: &Upstream) -> Result<(Running, Vec<Tool>), String> {
    let pinned = up
        .pinned
        .as_ref()
        .ok_or_else(|| "target was not resolved".to_owned())?;
    if up.tls {
        return Err("tls = true is not supported for upstream MCP servers yet".to_owned());
    }
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(up.connect_timeout);
    let uri = match &pinned.target.host {
        Host::Ip(ip) => format!(
            "http://{}{}",
            std::net::SocketAddr::new(*ip, pinned.target.port),
            up.path
        ),
        Host::Name(name) => {
            builder = builder.resolve_to_addrs(name, &pinned.addrs);
            format!("http://{name}:{}{}", pinned.target.port, up.path)
        }
    };
    let client = builder.build().map_err(|e| e.to_string())?;
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(uri),
    );
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("portcullis", env!("CARGO_PKG_VERSION")),
    );
    let service = tokio::time::timeout(up.timeout, info.serve(transport))
        .await
        .map_err(|_| format!("no answer to initialize within {:?}", up.timeout))?
        .map_err(|e| e.to_string())?;
    let tools = tokio::time::timeout(up.timeout, service.peer().list_all_tools())
        .await
        .map_err(|_| format!("no answer to tools/list within {:?}", up.timeout))?
        .map_err(|e| e.to_string())?;
    Ok((service, tools))
}
