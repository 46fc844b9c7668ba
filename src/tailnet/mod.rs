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
pub use node::{Listener, Node, NodeBuilder};

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
