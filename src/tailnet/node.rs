//! Embedded tailnet nodes: building, starting, listening, dialing, WhoIs.

use std::ffi::c_int;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::io::AsyncBufReadExt;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;

use super::error::TailnetError;
use super::sys::{self, Setting};
use super::whois;
use crate::identity::Caller;

/// Tracing target of the embedded nodes' own log lines (debug level).
const LOG_TARGET: &str = "portcullis::tailnet::node";

/// Name of the lock file that keeps two nodes out of one state dir.
const LOCK_FILE: &str = "portcullis-node.lock";

/// Configuration of one embedded node; [`NodeBuilder::start`] brings it up.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    hostname: String,
    state_dir: PathBuf,
    auth_key: Option<String>,
    control_url: Option<String>,
    ephemeral: bool,
    tags: Vec<String>,
    up_timeout: Duration,
}

impl NodeBuilder {
    /// A node named `hostname` keeping its keys in `state_dir`, which no other
    /// node may use.
    pub fn new(hostname: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        NodeBuilder {
            hostname: hostname.into(),
            state_dir: state_dir.into(),
            auth_key: None,
            control_url: None,
            ephemeral: false,
            tags: Vec::new(),
            up_timeout: Duration::from_secs(60),
        }
    }

    /// Pre-auth key; only needed the first time (the state dir keeps the node key).
    pub fn auth_key(mut self, key: impl Into<String>) -> Self {
        self.auth_key = Some(key.into());
        self
    }

    /// Control server URL (default: Tailscale's).
    pub fn control_url(mut self, url: impl Into<String>) -> Self {
        self.control_url = Some(url.into());
        self
    }

    /// Remove the node from the tailnet when it goes offline.
    pub fn ephemeral(mut self, ephemeral: bool) -> Self {
        self.ephemeral = ephemeral;
        self
    }

    /// ACL tags to advertise (each `tag:...`).
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// How long [`start`](Self::start) waits for the node to be running.
    pub fn up_timeout(mut self, timeout: Duration) -> Self {
        self.up_timeout = timeout;
        self
    }

    /// Starts the node and waits until it runs on the tailnet, at most the
    /// up timeout. Dropping the returned future stops the node.
    pub async fn start(self) -> Result<Node, TailnetError> {
        let invalid = |what, reason: String| TailnetError::InvalidConfig {
            hostname: self.hostname.clone(),
            what,
            reason,
        };
        if self.hostname.is_empty() {
            return Err(invalid("hostname", "empty".into()));
        }
        if let Some(bad) = self
            .tags
            .iter()
            .find(|t| !t.starts_with("tag:") || t.contains(','))
        {
            return Err(invalid(
                "tag",
                format!("{bad:?} must look like \"tag:name\""),
            ));
        }
        let lock = lock_state_dir(&self.state_dir)?;
        let node = Node {
            inner: Arc::new(Inner {
                sd: sys::new_node(),
                hostname: self.hostname.clone(),
                closed: AtomicBool::new(false),
                lock: Mutex::new(Some(lock)),
            }),
        };
        // Dropping this future before `up` returns closes the node, which
        // also cancels the blocked `up`.
        let mut guard = CloseOnDrop(Some(node.clone()));
        self.configure(&node)?;
        let timeout_ms = c_int::try_from(self.up_timeout.as_millis()).unwrap_or(c_int::MAX);
        let sd = node.inner.sd;
        let hostname = self.hostname.clone();
        node.blocking("up", move || sys::up(sd, timeout_ms))
            .await?
            .map_err(|message| TailnetError::Up { hostname, message })?;
        guard.0 = None;
        Ok(node)
    }

    fn configure(&self, node: &Node) -> Result<(), TailnetError> {
        let sd = node.inner.sd;
        let call = |op: &str, result: Result<(), String>| {
            result.map_err(|message| node.call_error(op, message))
        };
        let dir = self
            .state_dir
            .to_str()
            .ok_or_else(|| TailnetError::InvalidConfig {
                hostname: self.hostname.clone(),
                what: "state dir",
                reason: "not valid UTF-8".into(),
            })?;
        call("set state dir", sys::set(sd, Setting::Dir, dir))?;
        call(
            "set hostname",
            sys::set(sd, Setting::Hostname, &self.hostname),
        )?;
        if let Some(key) = &self.auth_key {
            call("set auth key", sys::set(sd, Setting::AuthKey, key))?;
        }
        if let Some(url) = &self.control_url {
            call("set control URL", sys::set(sd, Setting::ControlUrl, url))?;
        }
        call("set ephemeral", sys::set_ephemeral(sd, self.ephemeral))?;
        call(
            "set tags",
            sys::set(sd, Setting::Tags, &self.tags.join(",")),
        )?;
        // Formatting and piping every line of every node costs CPU that
        // only someone reading debug logs gets anything for.
        if !tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG) {
            return call("set log fd", sys::set_log_fd(sd, None));
        }
        let log_fd = spawn_log_reader(&self.hostname)
            .map_err(|e| node.call_error("log pipe", e.to_string()))?;
        call("set log fd", sys::set_log_fd(sd, Some(log_fd)))
    }
}

/// Takes an exclusive lock on `dir` (created if missing) for the node's life.
fn lock_state_dir(dir: &Path) -> Result<Flock<File>, TailnetError> {
    let io_err = |source| TailnetError::StateDir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io_err)?;
    // flock locks belong to the open file description, so a second node in
    // this process conflicts just like one in another process.
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            TailnetError::StateDirInUse {
                dir: dir.to_path_buf(),
            }
        } else {
            io_err(errno.into())
        }
    })
}

/// Creates a pipe whose write end becomes the node's log, and forwards each
/// line to `tracing` at debug level.
fn spawn_log_reader(hostname: &str) -> std::io::Result<OwnedFd> {
    let (reader, writer) = std::io::pipe()?;
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let hostname = hostname.to_string();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(receiver).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: LOG_TARGET, node = %hostname, "{line}");
        }
    });
    Ok(OwnedFd::from(writer))
}

/// A peer in a node's network map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Peer {
    /// Its MagicDNS name.
    pub name: String,
    /// Its tailnet addresses.
    pub ips: Vec<IpAddr>,
    /// Its ACL tags.
    pub tags: Vec<String>,
    /// Whether the control server sees it connected.
    pub online: bool,
    /// Its UDP address when packets go straight to it.
    pub direct: Option<String>,
    /// The DERP region relaying packets when they do not.
    pub relay: Option<String>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// A running embedded node. Clones share it; it closes when the last clone
/// and the last of its listeners are dropped, or on [`Node::close`].
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    sd: c_int,
    hostname: String,
    closed: AtomicBool,
    /// Held until the Go node has closed, so a successor cannot reuse the
    /// state dir while this node still writes to it.
    lock: Mutex<Option<Flock<File>>>,
}

/// How long a node close may take before it is reported.
const SLOW_CLOSE: std::time::Duration = std::time::Duration::from_secs(10);

impl Inner {
    fn close(&self) -> Result<(), String> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result = sys::close(self.sd);
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Closing a node can block on network teardown: never on the
        // caller's (possibly async) thread. The state dir stays locked
        // until the close is done.
        let sd = self.sd;
        let lock = self.lock.lock().ok().and_then(|mut l| l.take());
        let hostname = self.hostname.clone();
        let spawned = std::thread::Builder::new()
            .name("tailnet-close".into())
            .spawn(move || {
                if let Err(e) = sys::close(sd) {
                    tracing::debug!(node = %hostname, "close: {e}");
                }
                drop(lock);
            });
        if let Err(e) = spawned {
            tracing::warn!("could not spawn a thread to close a tailnet node: {e}");
        }
    }
}

struct CloseOnDrop(Option<Node>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            let inner = node.inner.clone();
            drop(node);
            let _ = std::thread::Builder::new()
                .name("tailnet-close".into())
                .spawn(move || inner.close());
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("hostname", &self.inner.hostname)
            .finish()
    }
}

impl Node {
    /// The hostname the node registered with.
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    /// The node's tailnet addresses (IPv4 first).
    pub fn ips(&self) -> Result<Vec<IpAddr>, TailnetError> {
        let text = sys::get_ips(self.inner.sd).map_err(|m| self.call_error("get ips", m))?;
        text.split(',')
            .map(|ip| {
                ip.parse()
                    .map_err(|e| self.call_error("get ips", format!("{ip:?}: {e}")))
            })
            .collect()
    }

    /// The node's full MagicDNS name (e.g. `web.tailnet.example`), as the
    /// control server assigned it.
    pub async fn dns_name(&self) -> Result<String, TailnetError> {
        let ip = *self
            .ips()?
            .first()
            .ok_or_else(|| self.call_error("dns name", "no address".into()))?;
        Ok(self.whois(SocketAddr::new(ip, 0)).await?.node)
    }

    /// Listens on a tailnet TCP port of this node.
    pub async fn listen(&self, port: u16) -> Result<Listener, TailnetError> {
        let sd = self.inner.sd;
        let op = format!("listen :{port}");
        let fd = self
            .blocking(&op, move || sys::listen(sd, "tcp", &format!(":{port}")))
            .await?
            .map_err(|m| self.call_error(&op, m))?;
        let fd = sys::register(fd).map_err(|e| self.call_error(&op, e.to_string()))?;
        Ok(Listener {
            fd,
            node: self.clone(),
            port,
        })
    }

    /// Opens a TCP connection to `addr` ("100.64.0.3:80" or "name:80") over
    /// the tailnet.
    pub async fn dial(&self, addr: &str, timeout: Duration) -> Result<UnixStream, TailnetError> {
        let sd = self.inner.sd;
        let op = format!("dial {addr}");
        let target = addr.to_string();
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        let fd = self
            .blocking(&op, move || sys::dial(sd, "tcp", &target, ms))
            .await?
            .map_err(|m| self.call_error(&op, m))?;
        stream(fd).map_err(|e| self.call_error(&op, e.to_string()))
    }

    /// Who is behind a tailnet address, as this node's control server says.
    pub async fn whois(&self, addr: SocketAddr) -> Result<Caller, TailnetError> {
        let sd = self.inner.sd;
        let err = |message| TailnetError::WhoIs {
            hostname: self.inner.hostname.clone(),
            addr,
            message,
        };
        let json = self
            .blocking("whois", move || sys::whois(sd, &addr.to_string()))
            .await?
            .map_err(err)?;
        whois::parse(addr, &json).map_err(|e| err(format!("malformed answer: {e}")))
    }

    /// The peers this node sees in its network map and how packets reach
    /// each: directly over UDP, or through a DERP relay.
    pub async fn peers(&self) -> Result<Vec<Peer>, TailnetError> {
        let sd = self.inner.sd;
        let json = self
            .blocking("peers", move || sys::peers(sd))
            .await?
            .map_err(|m| self.call_error("peers", m))?;
        serde_json::from_str(&json)
            .map_err(|e| self.call_error("peers", format!("malformed answer: {e}")))
    }

    /// Stops the node, its listeners and its connections, and waits for it.
    /// A close still running after [`SLOW_CLOSE`] is logged as a warning
    /// with the embedded runtime's goroutine stacks.
    pub async fn close(self) -> Result<(), TailnetError> {
        let inner = self.inner.clone();
        let close = self.blocking("close", move || inner.close());
        let mut close = std::pin::pin!(close);
        let result = tokio::select! {
            r = &mut close => r,
            () = tokio::time::sleep(SLOW_CLOSE) => {
                let stacks = tokio::task::spawn_blocking(sys::stacks).await.unwrap_or_default();
                tracing::warn!(device = %self.inner.hostname, "node close is taking more than {SLOW_CLOSE:?}; goroutines:\n{stacks}");
                close.await
            }
        };
        result?.map_err(|m| self.call_error("close", m))
    }

    /// Runs a blocking tsffi call on the blocking pool, never on an async worker.
    async fn blocking<T, F>(&self, op: &str, f: F) -> Result<T, TailnetError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| TailnetError::Worker {
                hostname: self.inner.hostname.clone(),
                op: op.to_string(),
                message: e.to_string(),
            })
    }

    fn call_error(&self, op: &str, message: String) -> TailnetError {
        TailnetError::Call {
            hostname: self.inner.hostname.clone(),
            op: op.to_string(),
            message,
        }
    }
}

fn stream(fd: OwnedFd) -> std::io::Result<UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    UnixStream::from_std(std_stream)
}

/// A tailnet TCP listener. Each accepted connection comes with the peer's
/// tailnet address, delivered in the same message as the connection itself.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    node: Node,
    port: u16,
}

impl Listener {
    /// The tailnet port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node this listener belongs to.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Waits for the next connection and its peer's tailnet address.
    pub async fn accept(&self) -> Result<(UnixStream, SocketAddr), TailnetError> {
        let accept_err = |source| TailnetError::Accept {
            hostname: self.node.inner.hostname.clone(),
            port: self.port,
            source,
        };
        loop {
            let mut ready = self.fd.readable().await.map_err(accept_err)?;
            match ready.try_io(|fd| receive(fd.get_ref())) {
                Ok(Ok(Some((fd, addr)))) => return Ok((stream(fd).map_err(accept_err)?, addr)),
                Ok(Ok(None)) => {
                    return Err(TailnetError::ListenerClosed {
                        hostname: self.node.inner.hostname.clone(),
                        port: self.port,
                    });
                }
                Ok(Err(e)) => return Err(accept_err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Receives one connection message; `None` when the node closed the listener.
fn receive(fd: &OwnedFd) -> std::io::Result<Option<(OwnedFd, SocketAddr)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 128];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (len, mut fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                fds.extend(received.into_iter().map(sys::owned_received));
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if fds.len() != 1 {
        return Err(bad("connection message without exactly one fd"));
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| bad("peer address is not UTF-8"))?;
    let addr = text
        .parse()
        .map_err(|_| bad("peer address is not ip:port"))?;
    Ok(fds.pop().map(|fd| (fd, addr)))
}
