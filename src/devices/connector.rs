//! The devices runtime: one tailnet node per endpoint, accept loops, a
//! connection cap per device, and an orderly drain.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument;

use super::ctx::{DeviceCtx, Phase, SharedPolicy, reached, set_reason};
use super::registry::Registry;
use super::{DeviceError, Service, serve_http, serve_tcp};
use crate::audit::{AuditLog, Kind as RecordKind, Record};
use crate::backend::{self, Pinned};
use crate::config::{Config, Endpoint, Kind, Tailnet};
use crate::policy::{self, Action};
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
    /// Most connections served at once per device; more are refused at
    /// once, each with an `overloaded` record.
    pub max_connections: usize,
    /// How long each node may take to join the tailnet.
    pub up_timeout: Duration,
    /// Print start-up progress as plain lines on stderr (else as info
    /// log events).
    pub progress: bool,
    /// Most nodes joining the tailnet at once, at start-up and on reload.
    pub start_concurrency: usize,
}

/// Nodes joining at once by default: enough to hide the control server's
/// round trips, few enough not to queue 100 registrations on it at once.
pub const DEFAULT_START_CONCURRENCY: usize = 32;

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 1024,
            up_timeout: Duration::from_secs(60),
            progress: false,
            start_concurrency: DEFAULT_START_CONCURRENCY,
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
        Plan::prepare_reusing(config, &HashMap::new()).await
    }

    /// Like [`prepare`](Self::prepare), but an endpoint whose target is
    /// unchanged keeps its pinned addresses from `previous` (a reload does
    /// not re-resolve names it already pinned).
    pub async fn prepare_reusing(
        config: &Config,
        previous: &HashMap<String, Pinned>,
    ) -> Result<Plan, DeviceError> {
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
                match previous.get(&endpoint.name) {
                    Some(p) if p.target == endpoint.target => p.clone(),
                    _ => backend::pin(&endpoint.target).await.map_err(|cause| {
                        DeviceError::Backend {
                            endpoint: endpoint.name.clone(),
                            cause,
                        }
                    })?,
                };
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

    /// The `[tailnet]` section the plan was made for.
    pub fn tailnet(&self) -> &Tailnet {
        &self.tailnet
    }

    /// The planned endpoint devices with their pinned targets.
    pub(super) fn into_devices(self) -> Vec<(Endpoint, Pinned)> {
        self.devices
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
pub(super) struct Device {
    pub(super) hostname: String,
    pub(super) endpoint: Option<String>,
    node: Node,
    /// Swapped by a reload that changes the endpoint's settings; each
    /// connection keeps the handler it was accepted with.
    handler: ArcSwap<Handler>,
    audit: AuditLog,
    phase: watch::Receiver<Phase>,
    open: Arc<Registry>,
    accepted: AtomicU64,
}

/// One running device: its shared state and what stops it.
struct Running {
    info: DeviceInfo,
    /// The endpoint it serves as last applied (`None` for a service).
    endpoint: Option<Endpoint>,
    device: Arc<Device>,
    /// One accept loop per port; aborting one drops its listener.
    accepting: HashMap<u16, AbortHandle>,
    limit: Arc<Semaphore>,
    phase: watch::Sender<Phase>,
}

/// Running devices: one tailnet node each, accepting until
/// [`shutdown`](Connector::shutdown).
pub struct Connector {
    pub(super) tailnet: Tailnet,
    auth_key: String,
    options: Options,
    pub(super) audit: AuditLog,
    pub(super) policy: SharedPolicy,
    /// Running devices by hostname.
    running: BTreeMap<String, Running>,
    /// Devices removed by a reload, draining in the background.
    retiring: JoinSet<()>,
    tasks: JoinSet<()>,
    pub(super) open: Arc<Registry>,
    board: StatusBoard,
    /// Held by every connection task; the channel closes when the last one
    /// ends, which is how the drain knows it is done.
    in_flight: mpsc::Sender<()>,
    in_flight_done: mpsc::Receiver<()>,
    active: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("devices", &self.devices())
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

/// Per-device figures for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Tailnet hostname.
    pub hostname: String,
    /// What it does with connections.
    pub kind: DeviceKind,
    /// Whether it accepts new connections (false while draining).
    pub accepting: bool,
    /// Connections open right now.
    pub open: usize,
    /// Connections accepted since it started.
    pub accepted: u64,
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
        Connector::start_with(plan, Vec::new(), auth_key, policy, audit, options).await
    }

    /// A connector with no devices yet.
    pub(super) fn empty(
        plan: &Plan,
        auth_key: &str,
        policy: SharedPolicy,
        audit: AuditLog,
        options: Options,
    ) -> Connector {
        let (in_flight, in_flight_done) = mpsc::channel(1);
        let open = Arc::new(Registry::default());
        Connector {
            tailnet: plan.tailnet.clone(),
            auth_key: auth_key.to_owned(),
            options,
            audit,
            policy,
            running: BTreeMap::new(),
            retiring: JoinSet::new(),
            tasks: JoinSet::new(),
            open: Arc::clone(&open),
            board: StatusBoard {
                devices: Arc::default(),
                open,
            },
            in_flight,
            in_flight_done,
            active: Arc::new(AtomicUsize::new(0)),
        }
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
        if self.running.contains_key(hostname) {
            return Err(DeviceError::DuplicateDevice {
                hostname: hostname.to_owned(),
            });
        }
        let (node, listeners) = self.start_node(hostname, ports.to_vec()).await?;
        self.serve_service(hostname, ports, node, listeners, make)
            .await
    }

    /// Serves a started service device: names it, builds its service with
    /// `make` and spawns its accept loops. Closes the node if `make` fails.
    pub(super) async fn serve_service<F>(
        &mut self,
        hostname: &str,
        ports: &[u16],
        node: Node,
        listeners: Vec<Listener>,
        make: F,
    ) -> Result<(), DeviceError>
    where
        F: FnOnce(&DeviceInfo) -> Result<Arc<dyn Service>, String>,
    {
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

    /// The running devices, by hostname.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.running.values().map(|r| r.info.clone()).collect()
    }

    /// A live view of the devices' figures, for metrics; it follows
    /// reloads.
    pub fn status_board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// Connections being served right now, across devices.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Stops accepting (listeners are dropped), lets open connections finish
    /// until `deadline` (HTTP connections close after their current
    /// request), cuts the rest, then closes every node.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        for running in self.running.values() {
            running.phase.send_replace(Phase::Draining);
            for accept in running.accepting.values() {
                accept.abort();
            }
        }
        while self.tasks.join_next().await.is_some() {}
        tracing::debug!("accept loops stopped");
        let Connector {
            in_flight,
            mut in_flight_done,
            running,
            active,
            mut retiring,
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
            for r in running.values() {
                r.phase.send_replace(Phase::Stopped);
            }
            let _ = tokio::time::timeout(STOP_GRACE, in_flight_done.recv()).await;
        }
        // Devices retired by a reload have cut their connections by now.
        while retiring.join_next().await.is_some() {}
        tracing::debug!(cut, "connections drained; closing nodes");
        close_nodes(running.into_values().map(|r| r.device.node.clone())).await;
        ShutdownReport { cut }
    }

    pub(super) fn progress(&self, line: std::fmt::Arguments<'_>) {
        if self.options.progress {
            eprintln!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }

    /// Starts the nodes of `devices` in parallel. On any failure the nodes
    /// already up are closed and the first error is returned.
    pub(super) async fn start_nodes(
        &self,
        devices: &[(Endpoint, Pinned)],
    ) -> Result<Vec<(Node, Vec<Listener>)>, DeviceError> {
        let specs: Vec<(&str, &[u16])> = devices
            .iter()
            .map(|(e, _)| (e.hostname.as_str(), e.ports.as_slice()))
            .collect();
        self.start_specs(&specs, |i, node| {
            Some(info_of(&devices[i].0, node).to_string())
        })
        .await
    }

    /// Starts one node per `(hostname, ports)`, at most
    /// [`Options::start_concurrency`] joining the tailnet at once, and
    /// returns them in order. `describe` gives the progress line of a node
    /// that came up. On any failure the nodes already up are closed and the
    /// first error is returned.
    pub(super) async fn start_specs(
        &self,
        specs: &[(&str, &[u16])],
        describe: impl Fn(usize, &Node) -> Option<String>,
    ) -> Result<Vec<(Node, Vec<Listener>)>, DeviceError> {
        let slots = Arc::new(Semaphore::new(self.options.start_concurrency.max(1)));
        let mut starting = JoinSet::new();
        for (i, (hostname, ports)) in specs.iter().enumerate() {
            let start = self.start_node(hostname, ports.to_vec());
            let slots = Arc::clone(&slots);
            starting.spawn(async move {
                let _slot = slots.acquire_owned().await;
                (i, start.await)
            });
        }
        let mut started: Vec<Option<(Node, Vec<Listener>)>> = specs.iter().map(|_| None).collect();
        while let Some(joined) = starting.join_next().await {
            let result = match joined {
                Ok((i, Ok(up))) => {
                    if let Some(line) = describe(i, &up.0) {
                        self.progress(format_args!("  {line}"));
                    }
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
        Ok(started.into_iter().flatten().collect())
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

    /// The handler of an endpoint device.
    fn endpoint_handler(
        &self,
        endpoint: Endpoint,
        pinned: Pinned,
        phase: watch::Receiver<Phase>,
    ) -> Handler {
        let http = endpoint.kind == Kind::Http;
        let ctx = DeviceCtx::new(
            endpoint,
            pinned,
            Arc::clone(&self.policy),
            self.audit.clone(),
        )
        .with_phase(phase);
        if http {
            Handler::Http(ctx)
        } else {
            Handler::Tcp(ctx)
        }
    }

    /// Serves a started endpoint device; returns its summary.
    pub(super) fn serve_endpoint(
        &mut self,
        endpoint: Endpoint,
        pinned: Pinned,
        node: Node,
        listeners: Vec<Listener>,
    ) -> DeviceInfo {
        let info = info_of(&endpoint, &node);
        // The handler follows the device's phase.
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let handler = self.endpoint_handler(endpoint.clone(), pinned, phase_rx);
        self.serve_with_phase(
            info.clone(),
            Some(endpoint),
            node,
            listeners,
            handler,
            phase,
        );
        info
    }

    /// Spawns the accept loops of a started service device.
    fn serve(&mut self, info: DeviceInfo, node: Node, listeners: Vec<Listener>, handler: Handler) {
        let (phase, _) = watch::channel(Phase::Running);
        self.serve_with_phase(info, None, node, listeners, handler, phase);
    }

    fn serve_with_phase(
        &mut self,
        info: DeviceInfo,
        endpoint: Option<Endpoint>,
        node: Node,
        listeners: Vec<Listener>,
        handler: Handler,
        phase: watch::Sender<Phase>,
    ) {
        let device = Arc::new(Device {
            hostname: info.hostname.clone(),
            endpoint: info.endpoint.clone(),
            node,
            handler: ArcSwap::from_pointee(handler),
            audit: self.audit.clone(),
            phase: phase.subscribe(),
            open: Arc::clone(&self.open),
            accepted: AtomicU64::new(0),
        });
        let mut running = Running {
            info,
            endpoint,
            device,
            accepting: HashMap::new(),
            limit: Arc::new(Semaphore::new(self.options.max_connections.max(1))),
            phase,
        };
        for listener in listeners {
            self.accept_on(&mut running, listener);
        }
        self.board.insert(&running);
        self.running.insert(running.info.hostname.clone(), running);
    }

    /// Spawns the accept loop of one more listener of a running device.
    fn accept_on(&mut self, running: &mut Running, listener: Listener) {
        let port = listener.port();
        let span = tracing::info_span!("device", device = %running.info.hostname, port);
        let handle = self.tasks.spawn(
            accept_loop(
                listener,
                Arc::clone(&running.device),
                Arc::clone(&running.limit),
                self.in_flight.clone(),
                Arc::clone(&self.active),
            )
            .instrument(span),
        );
        running.accepting.insert(port, handle);
    }

    /// Applies a reloaded endpoint's settings to its running device: new
    /// connections use them, new ports are served from `listeners`, ports
    /// no longer listed stop accepting. False if nothing changed.
    pub(super) fn update_device(
        &mut self,
        endpoint: &Endpoint,
        pinned: Pinned,
        listeners: Vec<Listener>,
    ) -> bool {
        let Some(mut running) = self.running.remove(&endpoint.hostname) else {
            return false;
        };
        let same = |a: &Endpoint, b: &Endpoint| {
            serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
        };
        if running
            .endpoint
            .as_ref()
            .is_some_and(|old| same(old, endpoint))
        {
            self.running.insert(endpoint.hostname.clone(), running);
            return false;
        }
        let handler = self.endpoint_handler(endpoint.clone(), pinned, running.phase.subscribe());
        running.device.handler.store(Arc::new(handler));
        running.accepting.retain(|port, accept| {
            let keep = endpoint.ports.contains(port);
            if !keep {
                accept.abort();
            }
            keep
        });
        for listener in listeners {
            self.accept_on(&mut running, listener);
        }
        running.info = info_of_parts(endpoint, running.info.ips.clone());
        running.endpoint = Some(endpoint.clone());
        self.board.insert(&running);
        self.running.insert(endpoint.hostname.clone(), running);
        true
    }

    /// Listens on the ports of `endpoint` its running device does not
    /// listen on yet.
    pub(super) async fn listen_new_ports(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Vec<Listener>, DeviceError> {
        let Some(running) = self.running.get(&endpoint.hostname) else {
            return Ok(Vec::new());
        };
        let mut listeners = Vec::new();
        for port in &endpoint.ports {
            if !running.accepting.contains_key(port) {
                let listener = running.device.node.listen(*port).await.map_err(|cause| {
                    DeviceError::Start {
                        hostname: endpoint.hostname.clone(),
                        cause,
                    }
                })?;
                listeners.push(listener);
            }
        }
        Ok(listeners)
    }

    /// Whether a device (endpoint or service) named `hostname` is running.
    pub(super) fn is_running(&self, hostname: &str) -> bool {
        self.running.contains_key(hostname)
    }

    /// Hostnames of the running endpoint devices (not plugged-in services).
    pub(super) fn endpoint_devices(&self) -> Vec<String> {
        self.running
            .values()
            .filter(|r| r.info.endpoint.is_some())
            .map(|r| r.info.hostname.clone())
            .collect()
    }

    /// Stops `hostname` accepting and drains it in the background: open
    /// connections get `deadline` to finish, then are cut, then its node
    /// closes.
    pub(super) fn retire(&mut self, hostname: &str, deadline: Duration) {
        let Some(running) = self.running.remove(hostname) else {
            return;
        };
        running.phase.send_replace(Phase::Draining);
        for accept in running.accepting.values() {
            accept.abort();
        }
        let open = Arc::clone(&self.open);
        let board = self.board.clone();
        let hostname = hostname.to_owned();
        self.retiring.spawn(async move {
            let Running { device, phase, .. } = running;
            if tokio::time::timeout(deadline, open.drained(&hostname))
                .await
                .is_err()
            {
                tracing::warn!(device = %hostname, "drain deadline passed; cutting open connections");
                phase.send_replace(Phase::Stopped);
                let _ = tokio::time::timeout(STOP_GRACE, open.drained(&hostname)).await;
            }
            if let Err(e) = device.node.clone().close().await {
                tracing::warn!(device = %hostname, "close: {e}");
            }
            board.remove(&hostname);
            tracing::info!(device = %hostname, "device removed");
        });
    }

    /// Waits (up to `limit`) until `hostname`, retired by an earlier reload,
    /// has closed its node, so a device of the same name can take its state
    /// directory. Returns at once if it is not retiring.
    pub(super) async fn wait_retired(&self, hostname: &str, limit: Duration) {
        let began = Instant::now();
        while !self.running.contains_key(hostname)
            && self.board.contains(hostname)
            && began.elapsed() < limit
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The figures of every device, shared with the metrics endpoint.
#[derive(Clone, Default)]
pub struct StatusBoard {
    devices: Arc<std::sync::Mutex<BTreeMap<String, BoardEntry>>>,
    open: Arc<Registry>,
}

struct BoardEntry {
    kind: DeviceKind,
    phase: watch::Receiver<Phase>,
    device: Arc<Device>,
}

impl StatusBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BoardEntry>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, running: &Running) {
        self.lock().insert(
            running.info.hostname.clone(),
            BoardEntry {
                kind: running.info.kind,
                phase: running.phase.subscribe(),
                device: Arc::clone(&running.device),
            },
        );
    }

    fn remove(&self, hostname: &str) {
        self.lock().remove(hostname);
    }

    fn contains(&self, hostname: &str) -> bool {
        self.lock().contains_key(hostname)
    }

    /// Figures of every device (draining ones included), by hostname.
    pub fn snapshot(&self) -> Vec<DeviceStatus> {
        self.lock()
            .iter()
            .map(|(hostname, e)| DeviceStatus {
                hostname: hostname.clone(),
                kind: e.kind,
                accepting: *e.phase.borrow() == Phase::Running,
                open: self.open.count_on(hostname),
                accepted: e.device.accepted.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Connector {
    /// Re-checks every open connection against the policy in force and
    /// closes, with a `connection_revoked` record, those it no longer
    /// allows. Connections of devices being drained are left to the drain.
    /// Returns how many were closed.
    pub fn recheck(&self) -> usize {
        let policy = self.policy.load();
        let mut closed = 0;
        for open in self.open.snapshot() {
            let Some(running) = self.running.get(&open.hostname) else {
                continue;
            };
            let decision = match &open.endpoint {
                Some(endpoint) => Some(policy::decide(
                    &policy,
                    &open.caller,
                    &Action::Connect {
                        endpoint,
                        port: open.port,
                    },
                )),
                None => match &**running.device.handler.load() {
                    Handler::Service(service) => service.recheck(&open.caller, open.port),
                    _ => None,
                },
            };
            if let Some(decision) = decision.filter(|d| !d.permit)
                && Registry::revoke(&open, decision)
            {
                closed += 1;
            }
        }
        closed
    }
}

pub(super) fn info_of(endpoint: &Endpoint, node: &Node) -> DeviceInfo {
    info_of_parts(endpoint, node.ips().unwrap_or_default())
}

fn info_of_parts(endpoint: &Endpoint, ips: Vec<IpAddr>) -> DeviceInfo {
    DeviceInfo {
        hostname: endpoint.hostname.clone(),
        names: vec![endpoint.hostname.clone()],
        endpoint: Some(endpoint.name.clone()),
        kind: if endpoint.kind == Kind::Http {
            DeviceKind::Http
        } else {
            DeviceKind::Tcp
        },
        ips,
        ports: endpoint.ports.clone(),
        target: Some(endpoint.target.to_string()),
    }
}

pub(super) async fn close_nodes(nodes: impl IntoIterator<Item = Node>) {
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

/// Accepts until the listener closes or the loop is aborted. Every
/// connection the node hands over is taken at once (the node closes
/// connections nobody takes); one beyond the device's cap is refused at
/// once with an `overloaded` record rather than left waiting.
async fn accept_loop(
    listener: Listener,
    device: Arc<Device>,
    limit: Arc<Semaphore>,
    in_flight: mpsc::Sender<()>,
    active: Arc<AtomicUsize>,
) {
    let port = listener.port();
    loop {
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
        device.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            refuse_overloaded(&device, stream, peer, port);
            continue;
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

/// Refuses a connection beyond the device's cap: closed at once, recorded
/// (without asking WhoIs, which would add work to an overloaded device).
fn refuse_overloaded(device: &Device, stream: UnixStream, peer: SocketAddr, port: u16) {
    drop(stream);
    tracing::warn!(%peer, port, "refused: device at its connection limit");
    let mut record = Record::new(RecordKind::ConnectionDenied)
        .with_device(&device.hostname)
        .deny(
            "overloaded",
            "the device is at its limit of open connections",
        )
        .with_extra("peer", peer.to_string().into())
        .with_extra("port", port.into());
    record.endpoint.clone_from(&device.endpoint);
    record.status = Some("refused".to_owned());
    device.audit.record(record);
}

/// One accepted connection: identify, then hand over to the device's
/// handler until it ends or a reload revokes it.
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
    let registration =
        device
            .open
            .register(&device.hostname, device.endpoint.as_deref(), port, &caller);
    let handler = device.handler.load_full();
    let serve = async {
        match &*handler {
            Handler::Tcp(ctx) => serve_tcp(ctx, stream, caller.clone(), port).await,
            Handler::Http(ctx) => serve_http(ctx, stream, caller.clone(), port).await,
            Handler::Service(service) => {
                tokio::select! {
                    () = service.serve(stream, caller.clone(), port) => {}
                    () = reached(&device.phase, Phase::Stopped) => {
                        tracing::debug!("cut at the drain deadline");
                    }
                }
            }
        }
    };
    tokio::select! {
        () = serve => {}
        decision = registration.open().revoked() => {
            tracing::info!(reason = decision.reason.code(), "closed by reload: {}", decision.reason);
            let mut record = Record::new(RecordKind::ConnectionRevoked)
                .with_caller(&caller)
                .with_device(&device.hostname)
                .with_extra("port", port.into());
            record.endpoint.clone_from(&device.endpoint);
            set_reason(&mut record, &decision);
            record.status = Some("revoked".to_owned());
            device.audit.record(record);
        }
    }
}
