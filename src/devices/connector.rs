//! The devices runtime: one tailnet node per endpoint, accept loops, a
//! connection cap per device, and an orderly drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::ctx::{DeviceCtx, Phase, SharedPolicy, reached};
use super::{DeviceError, Service, serve_http, serve_tcp};
use crate::audit::{AuditLog, Kind as RecordKind, Record};
use crate::backend::{self, Pinned};
use crate::config::{Config, Endpoint, Kind, Tailnet};
use crate::tailnet::{Listener, Node, NodeBuilder, TailnetError};

/// How long handlers get to write their records after the drain deadline
/// told them to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (for example out of file descriptors), so a
/// persistent failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Runtime settings of a [`Connector`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Most connections served at once per device; more wait in the
    /// tailnet listener's queue.
    pub max_connections: usize,
    /// How long each node may take to join the tailnet.
    pub up_timeout: Duration,
    /// Print start-up progress on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 1024,
            up_timeout: Duration::from_secs(60),
            progress: false,
        }
    }
}

/// The devices of a config with their targets pinned: everything decided
/// before any node starts, so it can be audited first.
#[derive(Debug, Clone)]
pub struct Plan {
    tailnet: Tailnet,
    devices: Vec<(Endpoint, Pinned)>,
    /// Every endpoint's pinned target, `mcp` upstreams included.
    pinned: HashMap<String, Pinned>,
}

impl Plan {
    /// Pins the target of every `tcp` and `http` endpoint (names resolve
    /// here, once) and refuses settings this connector cannot honor.
    pub async fn prepare(config: &Config) -> Result<Plan, DeviceError> {
        let mut devices = Vec::new();
        let mut all = HashMap::new();
        for endpoint in &config.endpoints {
            if endpoint.http.as_ref().is_some_and(|h| h.tls) {
                return Err(DeviceError::Unsupported {
                    endpoint: endpoint.name.clone(),
                    what: "http.tls = true (TLS to the target)",
                });
            }
            let pinned =
                backend::pin(&endpoint.target)
                    .await
                    .map_err(|cause| DeviceError::Backend {
                        endpoint: endpoint.name.clone(),
                        cause,
                    })?;
            tracing::info!(endpoint = %endpoint.name, target = %endpoint.target, addrs = ?pinned.addrs, "target pinned");
            all.insert(endpoint.name.clone(), pinned.clone());
            // An `mcp` upstream is reached only through the MCP device, whose
            // per-tool rules a raw device would bypass.
            if endpoint.kind != Kind::Mcp {
                devices.push((endpoint.clone(), pinned));
            }
        }
        Ok(Plan {
            tailnet: config.tailnet.clone(),
            devices,
            pinned: all,
        })
    }

    /// Every endpoint's pinned target by endpoint name.
    pub fn pinned(&self) -> &HashMap<String, Pinned> {
        &self.pinned
    }

    /// Hostnames of the planned devices, in file order.
    pub fn hostnames(&self) -> Vec<&str> {
        self.devices
            .iter()
            .map(|(e, _)| e.hostname.as_str())
            .collect()
    }

    /// `{endpoint: {"target": "db:5432", "addrs": ["10.0.0.5:5432"]}}`, for
    /// the start-up record.
    pub fn pinned_json(&self) -> serde_json::Value {
        let map = self
            .pinned
            .iter()
            .map(|(name, p)| {
                let addrs: Vec<String> = p.addrs.iter().map(SocketAddr::to_string).collect();
                (
                    name.clone(),
                    serde_json::json!({ "target": p.target.to_string(), "addrs": addrs }),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}

/// What a device does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// Splices TCP to its target.
    Tcp,
    /// Reverse-proxies HTTP to its target.
    Http,
    /// A plugged-in [`Service`].
    Service,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Tcp => "tcp",
            DeviceKind::Http => "http",
            DeviceKind::Service => "service",
        })
    }
}

/// A running device, as shown in the start-up summary.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// Tailnet hostname.
    pub hostname: String,
    /// Names the device answers to on the tailnet: the hostname and, once
    /// known, its full MagicDNS name.
    pub names: Vec<String>,
    /// Endpoint served, if the device is an endpoint's.
    pub endpoint: Option<String>,
    /// What it does with connections.
    pub kind: DeviceKind,
    /// Its tailnet addresses (IPv4 first).
    pub ips: Vec<IpAddr>,
    /// Tailnet ports it listens on.
    pub ports: Vec<u16>,
    /// Backend target as written in the file, if any.
    pub target: Option<String>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self
            .ips
            .first()
            .map_or_else(|| "-".to_owned(), IpAddr::to_string);
        let ports: Vec<String> = self.ports.iter().map(|p| format!(":{p}")).collect();
        write!(f, "{:<12} up  {ip:<15} {}", self.hostname, ports.join(","))?;
        if let Some(target) = &self.target {
            write!(f, " -> {target}")?;
        }
        write!(f, " ({})", self.kind)
    }
}

enum Handler {
    Tcp(DeviceCtx),
    Http(DeviceCtx),
    Service(Arc<dyn Service>),
}

/// What every connection task of one device shares.
struct Device {
    hostname: String,
    endpoint: Option<String>,
    node: Node,
    handler: Handler,
    audit: AuditLog,
    phase: watch::Receiver<Phase>,
}

/// Running devices: one tailnet node each, accepting until
/// [`shutdown`](Connector::shutdown).
pub struct Connector {
    tailnet: Tailnet,
    auth_key: String,
    options: Options,
    audit: AuditLog,
    phase: watch::Sender<Phase>,
    devices: Vec<DeviceInfo>,
    nodes: Vec<Node>,
    /// Accept loops; aborting one drops its listener.
    accepting: JoinSet<()>,
    /// Held by every connection task; the channel closes when the last one
    /// ends, which is how the drain knows it is done.
    in_flight: mpsc::Sender<()>,
    in_flight_done: mpsc::Receiver<()>,
    active: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("devices", &self.devices)
            .field("active", &self.active_connections())
            .finish_non_exhaustive()
    }
}

/// How an orderly stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open at the deadline, cut off.
    pub cut: usize,
}

impl Connector {
    /// Starts one node per planned device, all in parallel, and listens on
    /// each device's ports. If any device fails to start, the nodes already
    /// started are closed and the error names the device.
    pub async fn start(
        plan: Plan,
        auth_key: &str,
        policy: SharedPolicy,
        audit: AuditLog,
        options: Options,
    ) -> Result<Connector, DeviceError> {
        let (phase, _) = watch::channel(Phase::Running);
        let (in_flight, in_flight_done) = mpsc::channel(1);
        let mut connector = Connector {
            tailnet: plan.tailnet.clone(),
            auth_key: auth_key.to_owned(),
            options,
            audit,
            phase,
            devices: Vec::new(),
            nodes: Vec::new(),
            accepting: JoinSet::new(),
            in_flight,
            in_flight_done,
            active: Arc::new(AtomicUsize::new(0)),
        };
        let mut seen = std::collections::HashSet::new();
        if let Some((e, _)) = plan
            .devices
            .iter()
            .find(|(e, _)| !seen.insert(e.hostname.clone()))
        {
            return Err(DeviceError::DuplicateDevice {
                hostname: e.hostname.clone(),
            });
        }

        let began = Instant::now();
        connector.progress(format_args!("starting {} devices...", plan.devices.len()));
        let mut starting = JoinSet::new();
        for (i, (endpoint, _)) in plan.devices.iter().enumerate() {
            let start = connector.start_node(&endpoint.hostname, endpoint.ports.clone());
            starting.spawn(async move { (i, start.await) });
        }
        let mut started: Vec<Option<(Node, Vec<Listener>)>> =
            plan.devices.iter().map(|_| None).collect();
        while let Some(joined) = starting.join_next().await {
            let result = match joined {
                Ok((i, Ok(up))) => {
                    connector.progress(format_args!("  {}", info_of(&plan.devices[i].0, &up.0)));
                    started[i] = Some(up);
                    continue;
                }
                Ok((_, Err(e))) => e,
                Err(join) => DeviceError::Start {
                    hostname: "(unknown)".to_owned(),
                    cause: TailnetError::Worker {
                        hostname: String::new(),
                        op: "start".to_owned(),
                        message: join.to_string(),
                    },
                },
            };
            // Dropping the other start futures closes their nodes.
            starting.abort_all();
            let nodes = started.into_iter().flatten().map(|(node, _)| node);
            close_nodes(nodes).await;
            return Err(result);
        }

        for ((endpoint, pinned), up) in plan.devices.into_iter().zip(started) {
            let Some((node, listeners)) = up else {
                continue;
            };
            let info = info_of(&endpoint, &node);
            let ctx = DeviceCtx::new(
                endpoint,
                pinned,
                Arc::clone(&policy),
                connector.audit.clone(),
            )
            .with_phase(connector.phase.subscribe());
            let handler = match info.kind {
                DeviceKind::Http => Handler::Http(ctx),
                _ => Handler::Tcp(ctx),
            };
            connector.serve(info, node, listeners, handler);
        }
        connector.progress(format_args!(
            "{} devices up in {:.1}s",
            connector.devices.len(),
            began.elapsed().as_secs_f64()
        ));
        Ok(connector)
    }

    /// Starts one more device, `hostname` on `ports`, whose connections go to
    /// the service that `make` builds once the device is up (so the service
    /// can know the device's tailnet names and addresses), after WhoIs has
    /// named the caller. It joins the tailnet like the endpoint devices (same
    /// control server, key, tags).
    pub async fn add_service<F>(
        &mut self,
        hostname: &str,
        ports: &[u16],
        make: F,
    ) -> Result<(), DeviceError>
    where
        F: FnOnce(&DeviceInfo) -> Result<Arc<dyn Service>, String>,
    {
        if self.devices.iter().any(|d| d.hostname == hostname) {
            return Err(DeviceError::DuplicateDevice {
                hostname: hostname.to_owned(),
            });
        }
        let (node, listeners) = self.start_node(hostname, ports.to_vec()).await?;
        let mut names = vec![hostname.to_owned()];
        match node.dns_name().await {
            Ok(fqdn) => names.push(fqdn),
            Err(e) => tracing::warn!(device = hostname, "no MagicDNS name: {e}"),
        }
        let info = DeviceInfo {
            hostname: hostname.to_owned(),
            names,
            endpoint: None,
            kind: DeviceKind::Service,
            ips: node.ips().unwrap_or_default(),
            ports: ports.to_vec(),
            target: None,
        };
        let service = match make(&info) {
            Ok(service) => service,
            Err(message) => {
                let _ = node.close().await;
                return Err(DeviceError::ServiceSetup {
                    hostname: hostname.to_owned(),
                    message,
                });
            }
        };
        self.progress(format_args!("  {info}"));
        self.serve(info, node, listeners, Handler::Service(service));
        Ok(())
    }

    /// The running devices.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// Connections being served right now, across devices.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Stops accepting (listeners are dropped), lets open connections finish
    /// until `deadline` (HTTP connections close after their current
    /// request), cuts the rest, then closes every node.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        self.phase.send_replace(Phase::Draining);
        self.accepting.abort_all();
        while self.accepting.join_next().await.is_some() {}
        let Connector {
            in_flight,
            mut in_flight_done,
            nodes,
            phase,
            active,
            ..
        } = self;
        drop(in_flight);
        let open = active.load(Ordering::Relaxed);
        if open > 0 {
            tracing::info!(open, "draining connections for up to {deadline:?}");
        }
        let mut cut = 0;
        if tokio::time::timeout(deadline, in_flight_done.recv())
            .await
            .is_err()
        {
            cut = active.load(Ordering::Relaxed);
            tracing::warn!(cut, "drain deadline passed; cutting open connections");
            phase.send_replace(Phase::Stopped);
            let _ = tokio::time::timeout(STOP_GRACE, in_flight_done.recv()).await;
        }
        close_nodes(nodes).await;
        ShutdownReport { cut }
    }

    fn progress(&self, line: std::fmt::Arguments<'_>) {
        if self.options.progress {
            eprintln!("{line}");
        }
    }

    /// A future that starts a node for `hostname` and listens on `ports`;
    /// owns everything it needs so it can run in a task.
    fn start_node(
        &self,
        hostname: &str,
        ports: Vec<u16>,
    ) -> impl Future<Output = Result<(Node, Vec<Listener>), DeviceError>> + Send + 'static {
        let t = &self.tailnet;
        let builder = NodeBuilder::new(hostname, t.device_state_dir(hostname))
            .auth_key(self.auth_key.clone())
            .control_url(t.control_url.clone())
            .ephemeral(t.ephemeral)
            .tags(t.tags.clone())
            .up_timeout(self.options.up_timeout);
        let hostname = hostname.to_owned();
        async move {
            let fail = |cause| DeviceError::Start {
                hostname: hostname.clone(),
                cause,
            };
            let node = builder.start().await.map_err(fail)?;
            let mut listeners = Vec::with_capacity(ports.len());
            for port in ports {
                listeners.push(node.listen(port).await.map_err(fail)?);
            }
            Ok((node, listeners))
        }
    }

    /// Spawns the accept loops of a started device.
    fn serve(&mut self, info: DeviceInfo, node: Node, listeners: Vec<Listener>, handler: Handler) {
        let device = Arc::new(Device {
            hostname: info.hostname.clone(),
            endpoint: info.endpoint.clone(),
            node: node.clone(),
            handler,
            audit: self.audit.clone(),
            phase: self.phase.subscribe(),
        });
        let limit = Arc::new(Semaphore::new(self.options.max_connections.max(1)));
        for listener in listeners {
            let span =
                tracing::info_span!("device", device = %info.hostname, port = listener.port());
            self.accepting.spawn(
                accept_loop(
                    listener,
                    Arc::clone(&device),
                    Arc::clone(&limit),
                    self.in_flight.clone(),
                    Arc::clone(&self.active),
                )
                .instrument(span),
            );
        }
        self.nodes.push(node);
        self.devices.push(info);
    }
}

fn info_of(endpoint: &Endpoint, node: &Node) -> DeviceInfo {
    DeviceInfo {
        hostname: endpoint.hostname.clone(),
        names: vec![endpoint.hostname.clone()],
        endpoint: Some(endpoint.name.clone()),
        kind: if endpoint.kind == Kind::Http {
            DeviceKind::Http
        } else {
            DeviceKind::Tcp
        },
        ips: node.ips().unwrap_or_default(),
        ports: endpoint.ports.clone(),
        target: Some(endpoint.target.to_string()),
    }
}

async fn close_nodes(nodes: impl IntoIterator<Item = Node>) {
    let mut closing = JoinSet::new();
    for node in nodes {
        closing.spawn(async move {
            let hostname = node.hostname().to_owned();
            if let Err(e) = node.close().await {
                tracing::warn!(device = %hostname, "close: {e}");
            }
        });
    }
    while closing.join_next().await.is_some() {}
}

/// Accepts until the listener closes or the loop is aborted. The cap is
/// taken before accepting, so a full device leaves new connections queued
/// in the node rather than accepting and dropping them.
async fn accept_loop(
    listener: Listener,
    device: Arc<Device>,
    limit: Arc<Semaphore>,
    in_flight: mpsc::Sender<()>,
    active: Arc<AtomicUsize>,
) {
    let port = listener.port();
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(TailnetError::ListenerClosed { .. }) => {
                tracing::debug!("listener closed");
                return;
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let device = Arc::clone(&device);
        let in_flight = in_flight.clone();
        let active = Arc::clone(&active);
        active.fetch_add(1, Ordering::Relaxed);
        // A root span: the connection outlives nothing of the accept loop,
        // and repeating the loop's fields on every line is noise.
        let span = tracing::info_span!(
            parent: None,
            "conn",
            device = %device.hostname,
            %peer,
            port,
            caller = tracing::field::Empty,
        );
        tokio::spawn(
            async move {
                connection(&device, stream, peer, port).await;
                active.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
                drop(in_flight);
            }
            .instrument(span),
        );
    }
}

/// One accepted connection: identify, then hand over to the device's handler.
async fn connection(device: &Device, stream: UnixStream, peer: SocketAddr, port: u16) {
    let caller = match device.node.whois(peer).await {
        Ok(caller) => caller,
        Err(cause) => {
            let err = DeviceError::UnknownCaller {
                hostname: device.hostname.clone(),
                cause,
            };
            tracing::info!(reason = err.code(), "refused: {err}");
            let mut record = Record::new(RecordKind::ConnectionDenied)
                .with_device(&device.hostname)
                .deny(err.code(), &err.to_string())
                .with_extra("peer", peer.to_string().into())
                .with_extra("port", port.into());
            record.endpoint.clone_from(&device.endpoint);
            device.audit.record(record);
            return;
        }
    };
    tracing::Span::current().record("caller", caller.label());
    match &device.handler {
        Handler::Tcp(ctx) => serve_tcp(ctx, stream, caller, port).await,
        Handler::Http(ctx) => serve_http(ctx, stream, caller, port).await,
        Handler::Service(service) => {
            tokio::select! {
                () = service.serve(stream, caller, port) => {}
                () = reached(&device.phase, Phase::Stopped) => {
                    tracing::debug!("cut at the drain deadline");
                }
            }
        }
    }
}
