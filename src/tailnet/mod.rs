//! Embedded tailnet nodes over FFI: the only module with `unsafe` code.
//!
//! Each [`Node`] is a tsnet server running inside this process (Go, linked
//! as a C archive from `vendor/tsffi`). Connections reach Rust as Unix
//! stream sockets spliced to the tailnet TCP connection inside the node;
//! every accepted connection arrives together with its peer's tailnet
//! address, so [`Node::whois`] on it names the right caller.
//!
//! All blocking calls into Go run on tokio's blocking pool; accepting is
//! readiness-driven and costs no thread.

mod error;
mod node;
mod sys;
mod whois;

pub use error::TailnetError;
pub use node::{Listener, Node, NodeBuilder, Peer};

/// Versions compiled into the embedded tailnet node.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct BuildVersions {
    /// tailscale.com module version.
    pub tailscale: String,
    /// Go toolchain version.
    pub go: String,
}

/// The tailscale.com and Go versions linked into this binary.
pub fn build_versions() -> BuildVersions {
    serde_json::from_str(&sys::version()).unwrap_or(BuildVersions {
        tailscale: "unknown".into(),
        go: "unknown".into(),
    })
}

/// Sets a Tailscale environment knob (`TS_*`) for every node in this
/// process. The embedded Go runtime copied the environment when it loaded,
/// so `std::env::set_var` would not reach it. Call before starting nodes.
pub fn set_knob(name: &str, value: &str) -> Result<(), TailnetError> {
    sys::setenv(name, value).map_err(|message| TailnetError::Call {
        hostname: String::new(),
        op: format!("set {name}"),
        message,
    })
}

/// Garbage-collector settings of the embedded Go runtime, which every node
/// in the process shares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GoGc {
    /// GOGC: `Some(0)` turns the collector off (only sensible with a
    /// memory limit), `Some(n)` collects when the heap has grown by n %
    /// since the last collection, `None` keeps Go's default (100).
    pub percent: Option<u32>,
    /// GOMEMLIMIT in bytes. Go counts every allocated heap byte against
    /// it, resident or not; each node's WireGuard buffers alone are about
    /// 32 MiB of that (see docs/scale.md).
    pub memory_limit: Option<u64>,
}

/// Applies `gc` to the embedded Go runtime; fields that are `None` keep
/// their current value. Takes effect at once, for every node.
pub fn set_go_gc(gc: GoGc) -> Result<(), TailnetError> {
    let err = |message| TailnetError::Call {
        hostname: String::new(),
        op: "set Go GC".into(),
        message,
    };
    let percent = match gc.percent {
        None => 0,
        Some(0) => -1,
        Some(p) => {
            std::ffi::c_int::try_from(p).map_err(|_| err(format!("GOGC {p} is too large")))?
        }
    };
    let limit = match gc.memory_limit {
        None => 0,
        Some(0) => return Err(err("a memory limit of 0 bytes".into())),
        Some(l) => i64::try_from(l).map_err(|_| err(format!("memory limit {l} is too large")))?,
    };
    sys::set_gc(percent, limit).map_err(err)
}

/// Figures of the embedded Go runtime, shared by every node in the process.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct GoStats {
    /// Bytes of allocated heap objects (resident or not).
    pub heap_alloc: u64,
    /// Bytes in in-use heap spans.
    pub heap_inuse: u64,
    /// Heap bytes obtained from the OS.
    pub heap_sys: u64,
    /// Heap size at which the next collection starts.
    pub next_gc: u64,
    /// Bytes of goroutine stacks.
    pub stack_inuse: u64,
    /// Completed collections.
    pub num_gc: u32,
    /// Live goroutines.
    pub goroutines: u64,
    /// GOGC in force (-1: off).
    pub gc_percent: i64,
    /// GOMEMLIMIT in force in bytes (0: none).
    pub memory_limit: i64,
}

/// Reads the embedded Go runtime's figures.
pub fn go_stats() -> GoStats {
    serde_json::from_str(&sys::memstats()).unwrap_or_default()
}
