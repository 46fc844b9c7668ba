//! Reaching the backends named in the endpoint file.
//!
//! # How target names are resolved
//!
//! A target may be an IP literal or a DNS name. Names are resolved **once**,
//! when a configuration is applied (start-up or reload), and the addresses
//! found are pinned for the life of that configuration: every connection
//! uses them and nothing is looked up per connection. The pinned addresses
//! are logged and written to the audit log's start-up/reload record, so a
//! reviewer can see exactly where a name pointed. A DNS answer that changes
//! later moves nothing until the next reload, which is itself recorded.
//!
//! # Header hygiene
//!
//! [`headers`] is the one list of request headers that never reach a
//! backend from a caller (identity, client address, method and URL
//! overrides, hop-by-hop), and the one place that sets the connector's
//! own `Forwarded` / `X-Forwarded-*` and identity headers. The http
//! devices and the MCP `http_request` tool both go through it.

pub mod headers;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{Host, Target};

/// Failure to reach a backend; the caller is told the target, never more.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The target name did not resolve.
    #[error("resolving {target}: {source}")]
    Resolve {
        /// Target as written in the file.
        target: String,
        /// Resolver failure.
        source: std::io::Error,
    },
    /// The name resolved to no address.
    #[error("resolving {target}: no addresses")]
    NoAddress {
        /// Target as written in the file.
        target: String,
    },
    /// Every pinned address refused or failed.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// Target as written in the file.
        target: String,
        /// Last connect failure.
        source: std::io::Error,
    },
    /// No address answered within the connect timeout.
    #[error("connecting to {target}: timed out after {after:?}")]
    Timeout {
        /// Target as written in the file.
        target: String,
        /// The timeout that passed.
        after: Duration,
    },
}

impl BackendError {
    /// Stable reason code for audit and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            BackendError::Resolve { .. } | BackendError::NoAddress { .. } => "backend_unresolved",
            BackendError::Connect { .. } => "backend_unreachable",
            BackendError::Timeout { .. } => "backend_timeout",
        }
    }
}

/// A target with its addresses pinned at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The target as written in the file.
    pub target: Target,
    /// Addresses to connect to, in order.
    pub addrs: Vec<SocketAddr>,
}

/// Resolves `target` once (see the module docs).
pub async fn pin(target: &Target) -> Result<Pinned, BackendError> {
    let addrs = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|source| BackendError::Resolve {
                target: target.to_string(),
                source,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(BackendError::NoAddress {
            target: target.to_string(),
        });
    }
    Ok(Pinned {
        target: target.clone(),
        addrs,
    })
}

impl Pinned {
    /// Connects to the first pinned address that answers within `timeout`
    /// (the whole attempt, not per address).
    pub async fn connect(&self, timeout: Duration) -> Result<TcpStream, BackendError> {
        let attempt = async {
            let mut last = None;
            for addr in &self.addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(stream);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(BackendError::Connect {
                target: self.target.to_string(),
                source: last.unwrap_or_else(|| std::io::Error::other("no address")),
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| BackendError::Timeout {
                target: self.target.to_string(),
                after: timeout,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_targets_pin_without_lookup_and_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = Target::parse(&format!("127.0.0.1:{port}")).expect("target");
        let pinned = pin(&target).await.expect("pin");
        assert_eq!(pinned.addrs, vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        pinned
            .connect(Duration::from_secs(2))
            .await
            .expect("connect");
    }

    #[tokio::test]
    async fn names_resolve_once_to_loopback() {
        let target = Target::parse("localhost:9").expect("target");
        let pinned = pin(&target).await.expect("pin");
        assert!(
            pinned.addrs.iter().all(|a| a.ip().is_loopback()),
            "{:?}",
            pinned.addrs
        );
    }

    #[tokio::test]
    async fn refused_connection_names_the_target() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let target = Target::parse(&format!("127.0.0.1:{port}")).expect("target");
        let err = pin(&target)
            .await
            .expect("pin")
            .connect(Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "backend_unreachable");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
