//! Shared pieces of the device tests: fake callers, real loopback backends,
//! a real SQLite audit log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{DeviceCtx, SharedPolicy, shared_policy};
use crate::audit::{self, AuditLog, Filter, StoredRecord, WriterTask};
use crate::backend;
use crate::config::{self, Config};
use crate::identity::Caller;
use crate::policy::Policy;

/// A verified caller: a user's node, or a tagged node when `user` is None.
pub fn caller(user: Option<&str>, tags: &[&str]) -> Caller {
    Caller {
        addr: "100.64.0.9:50000".parse().expect("test address"),
        node_id: "nTEST".to_owned(),
        node: "agent-box.tail.example".to_owned(),
        user: user.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        capabilities: BTreeMap::new(),
    }
}

/// Parses an endpoint file whose `[tailnet]` section is filled in.
pub fn config(endpoints: &str) -> Config {
    let text = format!(
        r#"
[tailnet]
control_url = "http://127.0.0.1:9"
auth_key_env = "UNUSED_TEST_KEY"
state_dir = "/tmp/portcullis-test-state"

{endpoints}
"#
    );
    match config::parse(&text, "test.toml") {
        Ok(c) => c,
        Err(e) => panic!("test config invalid:\n{e}"),
    }
}

/// A loopback backend and how many connections it has accepted.
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl Backend {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A TCP echo server on 127.0.0.1.
pub async fn echo_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Backend { addr, connections }
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every request with JSON
/// naming the method, path and headers it received. A path starting with
/// `/slow` waits 5 s first.
pub async fn http_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                        if req.uri().path().starts_with("/slow") {
                            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                        }
                        let headers: BTreeMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned())
                            })
                            .collect();
                        let body = serde_json::json!({
                            "method": req.method().as_str(),
                            "path": req.uri().to_string(),
                            "headers": headers,
                        });
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body.to_string()),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { addr, connections }
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A real SQLite audit log in a temp dir, and the policy of one config.
pub struct Harness {
    _dir: tempfile::TempDir,
    pub url: String,
    pub audit: AuditLog,
    task: Option<WriterTask>,
    pub policy: SharedPolicy,
    pub config: Config,
}

impl Harness {
    pub async fn new(config: Config) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let (audit, task) = AuditLog::open(&url, "test-connector", 1024)
            .await
            .expect("audit open");
        audit.set_fingerprint(&config.fingerprint);
        Harness {
            _dir: dir,
            url,
            audit,
            task: Some(task),
            policy: shared_policy(Policy::from_config(&config)),
            config,
        }
    }

    /// The context of endpoint `name`'s device, its target pinned.
    pub async fn ctx(&self, name: &str) -> Arc<DeviceCtx> {
        let endpoint = self.config.endpoint(name).expect("endpoint").clone();
        let pinned = backend::pin(&endpoint.target).await.expect("pin");
        Arc::new(DeviceCtx::new(
            endpoint,
            pinned,
            Arc::clone(&self.policy),
            self.audit.clone(),
        ))
    }

    /// Shuts the log down and returns every record, in chain order, after
    /// checking that the chain verifies.
    pub async fn finish(mut self) -> Vec<StoredRecord> {
        self.audit.shutdown().await.expect("audit shutdown");
        if let Some(task) = self.task.take() {
            task.await.expect("writer join").expect("writer result");
        }
        let report = audit::verify(&self.url, None).await.expect("verify");
        assert!(report.ok, "audit chain broken: {:?}", report.first_bad);
        let mut records = audit::query(&self.url, &Filter::default())
            .await
            .expect("query");
        records.sort_by_key(|r| r.seq);
        records
    }
}

/// The records of `kind`.
pub fn of_kind(records: &[StoredRecord], kind: audit::Kind) -> Vec<&audit::Record> {
    records
        .iter()
        .map(|r| &r.record)
        .filter(|r| r.kind == kind)
        .collect()
}
