//! Errors of the tailnet layer. Each carries the node it concerns and, for
//! failures inside the embedded node, the Go error text.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What went wrong talking to an embedded tailnet node.
#[derive(Debug, thiserror::Error)]
pub enum TailnetError {
    /// A builder value the node cannot accept (bad tag, NUL byte, ...).
    #[error("node {hostname}: invalid {what}: {reason}")]
    InvalidConfig {
        /// Node hostname.
        hostname: String,
        /// Which setting.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Another node (in this or another process) holds the state dir.
    #[error("state dir {dir} is already used by another node; every node needs its own state dir")]
    StateDirInUse {
        /// The contested directory.
        dir: PathBuf,
    },
    /// The state dir could not be created or locked.
    #[error("state dir {dir}: {source}")]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The node did not reach the Running state.
    #[error("node {hostname} did not join the tailnet: {message}")]
    Up {
        /// Node hostname.
        hostname: String,
        /// Go error text (includes the backend state on a timeout).
        message: String,
    },
    /// A call into the node failed.
    #[error("node {hostname}: {op}: {message}")]
    Call {
        /// Node hostname.
        hostname: String,
        /// The operation, e.g. `listen :80`.
        op: String,
        /// Go error text.
        message: String,
    },
    /// Receiving an accepted connection failed.
    #[error("node {hostname}: accept on port {port}: {source}")]
    Accept {
        /// Node hostname.
        hostname: String,
        /// Tailnet port.
        port: u16,
        /// The socket failure.
        source: std::io::Error,
    },
    /// The listener was closed (its node stopped).
    #[error("node {hostname}: listener on port {port} is closed")]
    ListenerClosed {
        /// Node hostname.
        hostname: String,
        /// Tailnet port.
        port: u16,
    },
    /// WhoIs gave no usable answer for a peer; the connection must be refused.
    #[error("node {hostname}: whois {addr}: {message}")]
    WhoIs {
        /// Node hostname.
        hostname: String,
        /// The peer address asked about.
        addr: SocketAddr,
        /// Go error text or parse failure.
        message: String,
    },
    /// A blocking call's worker thread failed (panicked or was cancelled).
    #[error("node {hostname}: {op}: worker failed: {message}")]
    Worker {
        /// Node hostname.
        hostname: String,
        /// The operation.
        op: String,
        /// Join error text.
        message: String,
    },
}
