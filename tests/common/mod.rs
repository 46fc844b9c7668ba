//! Shared harness for integration tests: a real local tailnet on loopback.
#![allow(dead_code, unused_imports)]

pub mod connector;
pub mod headscale;
pub mod net;
pub mod postgres;
pub mod tailscaled;
pub mod tools;

use std::sync::Once;
use std::time::Duration;

pub use headscale::{APP_CAP, Headscale};
use portcullis::tailnet::{Node, NodeBuilder};
pub use tailscaled::{Tailscaled, socks5_connect};

/// Applies the test tailnet's client knobs to this process's embedded nodes.
pub fn knobs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in headscale::CLIENT_KNOBS {
            portcullis::tailnet::set_knob(k, v).expect("set knob");
        }
    });
}

/// A builder for an in-process node on `hs`, state under the tailnet's dir.
pub fn node_builder(hs: &Headscale, hostname: &str, key: &str) -> NodeBuilder {
    knobs();
    NodeBuilder::new(hostname, hs.dir().join("nodes").join(hostname))
        .control_url(&hs.url)
        .auth_key(key)
        .up_timeout(Duration::from_secs(60))
}

/// Starts an in-process node on `hs`.
pub async fn node(hs: &Headscale, hostname: &str, key: &str) -> Node {
    node_builder(hs, hostname, key)
        .start()
        .await
        .unwrap_or_else(|e| panic!("node {hostname}: {e}\nheadscale log:\n{}", hs.log()))
}

/// Installs a tracing subscriber once (RUST_LOG controls it).
pub fn trace() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// The Python interpreter with the test clients (`.venv`, made by
/// `scripts/setup`), or `$PORTCULLIS_PYTHON`.
pub fn python() -> String {
    std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| {
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        assert!(
            venv.exists(),
            "no Python test clients: run scripts/setup (or set PORTCULLIS_PYTHON)"
        );
        venv.display().to_string()
    })
}
