//! Benchmark of governed MCP tool calls on one local headscale tailnet, in
//! one run: latency (p50/p99) and throughput of `tools/call http_request`
//! (GET of a small JSON body from a loopback HTTP backend) at concurrency 1
//! and 16, against the same request sent straight through the `web` HTTP
//! device, with the audit log on a SQLite file vs on in-memory SQLite.
//!
//! Rows:
//!
//! - `direct`: an embedded agent node (`common::node`) sends
//!   `GET /api/data` to the `web` device of `portcullis run` (release
//!   binary), kept-alive HTTP/1.1, one connection per worker. This path is
//!   itself governed (identity, method/path lists, audit to the same file).
//! - `MCP audited (file)`: the same agent node speaks MCP Streamable HTTP by
//!   hand to the `mcp` device of the same process: one kept-alive HTTP/1.1
//!   connection and one session per worker, then `tools/call http_request`
//!   in a loop. Audit store: `sqlite://<tmp>/audit.db` (WAL, NORMAL).
//! - `MCP in-memory audit`: the same, after restarting `portcullis run` on
//!   the same node keys with `--audit sqlite::memory:`. Every record is
//!   still built, hash-chained and written, but to an in-memory SQLite
//!   database: "off" means no disk I/O, not no auditing (there is no switch
//!   that disables auditing, on purpose).
//! - `in-process ...`: the MCP layer alone (`McpState` + `serve_connection`
//!   over loopback TCP in this process, no tailnet), once with an
//!   `AuditLog` on a SQLite file and once on `sqlite::memory:`.
//!
//! Run: `cargo bench --bench mcp` (prints a table; figures, not asserts).
//! `MCP_BENCH_INPROCESS_ONLY=1` runs only the in-process row at c = 1
//! (no tailnet), for profiling the MCP layer.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portcullis::audit::AuditLog;
use portcullis::identity::Caller;
use portcullis::mcp::{McpState, serve_connection};
use portcullis::policy::Policy;
use portcullis::tailnet::Node;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Barrier;

use common::connector::{self, Connector};
use common::{Headscale, node};

/// Measured calls per row (after warm-up), and the time cap per row.
const CALLS: usize = 2000;
const ROW_CAP: Duration = Duration::from_secs(60);
/// Warm-up calls per worker before the clock starts.
const WARMUP: usize = 10;
const CONCURRENCY: [usize; 2] = [1, 16];
const GOAL_ADDED_P50_US: f64 = 300.0;
const GOAL_RATIO: f64 = 0.9;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    if std::env::var_os("MCP_BENCH_INPROCESS_ONLY").is_some() {
        // For profiling the MCP layer alone: no tailnet, in-memory audit, c = 1.
        let web = backend().await;
        let (addr, audit) = in_process("http://127.0.0.1:9", web, "sqlite::memory:").await;
        let row = measure(
            "in-process MCP, audit memory",
            1,
            Transport::Tcp(addr),
            Proto::Mcp,
        )
        .await;
        println!(
            "{}: p50 {:.0} us, p99 {:.0} us, {:.0} calls/s ({} calls)",
            row.name, row.p50_us, row.p99_us, row.per_s, row.n
        );
        audit.shutdown().await.expect("audit shutdown");
        return;
    }
    let hs = tokio::task::spawn_blocking(Headscale::start)
        .await
        .expect("headscale");
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let web = backend().await;
    let file = hs.dir().join("endpoints.toml");
    std::fs::write(&file, config(&hs.url, &hs.dir().join("state"), web)).expect("config");
    let audit_file = format!("sqlite://{}", hs.dir().join("audit.db").display());

    let mut rows: Vec<Row> = Vec::new();

    // 1) `portcullis run` with the audit log on a SQLite file.
    let mut conn = start_connector(&file, &device_key, &audit_file).await;
    let agent = node(&hs, "bench-agent", &agent_key).await;
    wait_dialable(&agent, "web:80").await;
    wait_dialable(&agent, "mcp:80").await;
    for c in CONCURRENCY {
        let t = Transport::Tailnet(agent.clone(), "web:80".into());
        rows.push(measure("direct (web device)", c, t, Proto::Direct).await);
    }
    for c in CONCURRENCY {
        let t = Transport::Tailnet(agent.clone(), "mcp:80".into());
        rows.push(measure("MCP audited (file)", c, t, Proto::Mcp).await);
    }
    let status = tokio::task::spawn_blocking(move || conn.stop())
        .await
        .expect("stop");
    assert!(status.success(), "connector exit: {status}");
    let trail = audit_counts(&audit_file);

    // 2) The same process and node keys, audit log in memory.
    let mut conn = start_connector(&file, &device_key, "sqlite::memory:").await;
    wait_dialable(&agent, "mcp:80").await;
    for c in CONCURRENCY {
        let t = Transport::Tailnet(agent.clone(), "mcp:80".into());
        rows.push(measure("MCP in-memory audit", c, t, Proto::Mcp).await);
    }
    let status = tokio::task::spawn_blocking(move || conn.stop())
        .await
        .expect("stop");
    assert!(status.success(), "connector exit: {status}");
    agent.close().await.expect("close agent");

    // 3) The MCP layer alone, in this process over loopback TCP.
    let inproc_file = format!("sqlite://{}", hs.dir().join("inproc.db").display());
    let mut inproc = Vec::new();
    for (name, url) in [
        ("in-process MCP, audit file", inproc_file.as_str()),
        ("in-process MCP, audit memory", "sqlite::memory:"),
    ] {
        let (addr, audit) = in_process(&hs.url, web, url).await;
        for c in CONCURRENCY {
            rows.push(measure(name, c, Transport::Tcp(addr), Proto::Mcp).await);
        }
        audit.flush().await.expect("flush");
        inproc.push((name, audit.written_total(), audit.dropped_total()));
        audit.shutdown().await.expect("audit shutdown");
    }

    report(&rows, &trail, &inproc);
    drop(hs);
}

// ---------------------------------------------------------------- setup

fn config(control: &str, state: &Path, web: u16) -> String {
    format!(
        r#"# benchmark connector
[tailnet]
control_url = "{control}"
auth_key_env = "PORTCULLIS_AUTH_KEY"
state_dir = "{state}"

[groups]
agents = ["tag:agent"]

[mcp]
name = "mcp"
allow = ["group:agents"]

[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:{web}"
allow = ["group:agents"]
description = "small JSON API"
[endpoint.http]
methods = ["GET"]
paths = ["/api/**"]
identity_headers = true
"#,
        state = state.display(),
    )
}

async fn start_connector(file: &Path, key: &str, audit: &str) -> Connector {
    let (f, k, a) = (file.to_path_buf(), key.to_owned(), audit.to_owned());
    tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector")
}

/// Retries until `addr` accepts a tailnet connection (the devices may need
/// a moment to appear in the agent's netmap).
async fn wait_dialable(agent: &Node, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if agent.dial(addr, Duration::from_secs(5)).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} not dialable");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A loopback HTTP backend answering every request with a small JSON body.
async fn backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let body = Bytes::from(json!({"ok": true, "items": [1, 2, 3], "name": "bench"}).to_string());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            let service = hyper::service::service_fn(move |_req| {
                let mut resp = http::Response::new(Full::new(body.clone()));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// The MCP device built in this process (the public API `run` uses) and
/// served on a loopback listener as a `tag:agent` caller.
async fn in_process(control: &str, web: u16, audit_url: &str) -> (SocketAddr, AuditLog) {
    let source = config(control, Path::new("/tmp/portcullis-bench-unused"), web);
    let config = portcullis::config::parse(&source, "bench.toml").expect("config");
    let mut pinned = HashMap::new();
    for e in &config.endpoints {
        let p = portcullis::backend::pin(&e.target).await.expect("pin");
        pinned.insert(e.name.clone(), p);
    }
    let (audit, _writer) = AuditLog::open(audit_url, "bench-inproc", 65_536)
        .await
        .expect("audit log");
    audit.set_fingerprint(&config.fingerprint);
    let policy = Arc::new(ArcSwap::from_pointee(Policy::from_config(&config)));
    let state = McpState::new(
        &config,
        policy,
        pinned,
        audit.clone(),
        vec!["mcp".into(), "127.0.0.1".into()],
    )
    .expect("mcp state");
    let caller = Caller {
        addr: "100.64.0.9:40000".parse().expect("addr"),
        node_id: "n-bench".into(),
        node: "bench-agent.tailnet.test".into(),
        user: None,
        tags: vec!["tag:agent".into()],
        capabilities: BTreeMap::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(Arc::clone(&state), stream, caller.clone()));
        }
    });
    (addr, audit)
}

/// Counts tool-call and dropped-record entries in the connector's file
/// audit trail (so a cheap "audited" row cannot hide dropped records).
fn audit_counts(url: &str) -> String {
    let out = connector::run(&["audit", "export", "--jsonl", "--audit", url]);
    let text = String::from_utf8_lossy(&out.stdout);
    let calls = text.lines().filter(|l| l.contains("mcp_tool_call")).count();
    let dropped = text
        .lines()
        .filter(|l| l.contains("records_dropped"))
        .count();
    let verify = connector::run(&["audit", "verify", "--audit", url]);
    format!(
        "{} records, {calls} mcp_tool_call, {dropped} records_dropped, verify {}",
        text.lines().count(),
        if verify.status.success() {
            "ok"
        } else {
            "FAILED"
        }
    )
}

// ---------------------------------------------------------------- client

#[derive(Clone)]
enum Transport {
    Tailnet(Node, String),
    Tcp(SocketAddr),
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Direct,
    Mcp,
}

type Sender = SendRequest<Full<Bytes>>;

async fn handshake<IO>(io: IO) -> Sender
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("http1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

impl Transport {
    /// One kept-alive HTTP/1.1 connection.
    async fn connect(&self) -> Sender {
        match self {
            Transport::Tailnet(node, addr) => {
                let s = node
                    .dial(addr, Duration::from_secs(30))
                    .await
                    .expect("tailnet dial");
                handshake(s).await
            }
            Transport::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .expect("tcp connect");
                let _ = s.set_nodelay(true);
                handshake(s).await
            }
        }
    }

    fn host(&self) -> &'static str {
        match self {
            Transport::Tailnet(_, addr) if addr.starts_with("web") => "web",
            _ => "mcp",
        }
    }
}

/// One worker's connection and, for MCP, its session.
struct Worker {
    send: Sender,
    host: &'static str,
    proto: Proto,
    session: Option<String>,
    version: String,
    next_id: u64,
}

impl Worker {
    async fn new(t: &Transport, proto: Proto) -> Worker {
        let mut w = Worker {
            send: t.connect().await,
            host: t.host(),
            proto,
            session: None,
            version: String::new(),
            next_id: 1,
        };
        if proto == Proto::Mcp {
            w.initialize().await;
        }
        w
    }

    async fn post(&mut self, body: Value) -> (u16, http::HeaderMap, Bytes) {
        let mut req = http::Request::post("/mcp")
            .header("host", self.host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(s) = &self.session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", &self.version);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        self.send.ready().await.expect("connection ready");
        let resp = self.send.send_request(req).await.expect("send");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (parts.status.as_u16(), parts.headers, body)
    }

    async fn rpc(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let (status, _, body) = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert_eq!(status, 200, "{method}: {}", String::from_utf8_lossy(&body));
        jsonrpc_reply(&body, id)
    }

    async fn initialize(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (status, headers, body) = self
            .post(
                json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "portcullis-bench", "version": "0"},
                }}),
            )
            .await;
        assert_eq!(
            status,
            200,
            "initialize: {}",
            String::from_utf8_lossy(&body)
        );
        let reply = jsonrpc_reply(&body, id);
        self.version = reply["result"]["protocolVersion"]
            .as_str()
            .unwrap_or("2025-06-18")
            .to_owned();
        self.session = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert!(self.session.is_some(), "no mcp-session-id");
        let (status, _, body) = self
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert!(
            status == 202 || status == 200,
            "initialized: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// One measured operation; panics on anything but a successful call.
    async fn call(&mut self) {
        match self.proto {
            Proto::Direct => {
                let req = http::Request::get("/api/data")
                    .header("host", self.host)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                self.send.ready().await.expect("connection ready");
                let resp = self.send.send_request(req).await.expect("send");
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert!(
                    status == 200 && String::from_utf8_lossy(&body).contains("\"ok\":true"),
                    "direct: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Proto::Mcp => {
                let reply = self
                    .rpc(
                        "tools/call",
                        json!({"name": "http_request", "arguments": {
                            "endpoint": "web", "method": "GET", "path": "/api/data"}}),
                    )
                    .await;
                let result = &reply["result"];
                assert!(
                    result["isError"] != true && result["structuredContent"]["status"] == 200,
                    "tools/call: {reply}"
                );
            }
        }
    }
}

/// The JSON-RPC reply with `id` in a JSON or SSE (`data:` lines) body.
fn jsonrpc_reply(body: &[u8], id: u64) -> Value {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no reply {id} in: {text}"))
}

// ---------------------------------------------------------------- load

struct Row {
    name: &'static str,
    c: usize,
    p50_us: f64,
    p99_us: f64,
    per_s: f64,
    n: usize,
}

/// `c` workers, each with its own connection (and session), share
/// `CALLS` measured calls after `WARMUP` calls each; capped at `ROW_CAP`.
async fn measure(name: &'static str, c: usize, t: Transport, proto: Proto) -> Row {
    let barrier = Arc::new(Barrier::new(c + 1));
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (t, barrier, issued) = (t.clone(), barrier.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut w = Worker::new(&t, proto).await;
            for _ in 0..WARMUP {
                w.call().await;
            }
            barrier.wait().await;
            let start = Instant::now();
            let mut lat = Vec::new();
            while start.elapsed() < ROW_CAP && issued.fetch_add(1, Ordering::Relaxed) < CALLS {
                let t0 = Instant::now();
                w.call().await;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            (lat, Instant::now())
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(CALLS);
    let mut end = start;
    for task in tasks {
        let (l, e) = task.await.expect("worker");
        lat.extend(l);
        end = end.max(e);
    }
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    let row = Row {
        name,
        c,
        p50_us: lat[n / 2],
        p99_us: lat[(n * 99 / 100).min(n - 1)],
        per_s: n as f64 / (end - start).as_secs_f64(),
        n,
    };
    eprintln!(
        "{name} c={c}: {n} calls, p50 {:.0} us, p99 {:.0} us, {:.0}/s",
        row.p50_us, row.p99_us, row.per_s
    );
    row
}

// ---------------------------------------------------------------- report

fn find<'a>(rows: &'a [Row], name: &str, c: usize) -> &'a Row {
    rows.iter()
        .find(|r| r.name == name && r.c == c)
        .expect("row")
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn report(rows: &[Row], trail: &str, inproc: &[(&str, u64, u64)]) {
    println!("\n== governed tool call vs direct request (one tailnet, loopback) ==");
    println!(
        "{:<30} {:>3} {:>7} {:>10} {:>10} {:>10}",
        "path", "c", "calls", "p50 us", "p99 us", "calls/s"
    );
    for r in rows {
        println!(
            "{:<30} {:>3} {:>7} {:>10.0} {:>10.0} {:>10.0}",
            r.name, r.c, r.n, r.p50_us, r.p99_us, r.per_s
        );
    }
    println!("\nfile audit trail of run 1: {trail}");
    for (name, written, dropped) in inproc {
        println!("{name}: {written} records written, {dropped} dropped");
    }
    println!(
        "\"in-memory audit\" = same code path, records hash-chained and committed to sqlite::memory: \
         instead of a WAL file; auditing is never switched off."
    );
    println!();
    for c in CONCURRENCY {
        let direct = find(rows, "direct (web device)", c);
        let audited = find(rows, "MCP audited (file)", c);
        let added = audited.p50_us - direct.p50_us;
        println!(
            "c={c:<2} added p50, MCP (file audit) vs direct over tailnet: {added:+.0} us \
             (goal <= {GOAL_ADDED_P50_US:.0} us): {}",
            met(added <= GOAL_ADDED_P50_US)
        );
    }
    for (audited, memory, label) in [
        ("MCP audited (file)", "MCP in-memory audit", "tailnet"),
        (
            "in-process MCP, audit file",
            "in-process MCP, audit memory",
            "in-process",
        ),
    ] {
        for c in CONCURRENCY {
            let ratio = find(rows, audited, c).per_s / find(rows, memory, c).per_s;
            println!(
                "c={c:<2} throughput file/in-memory audit ({label}): {ratio:.2} \
                 (goal >= {GOAL_RATIO}): {}",
                met(ratio >= GOAL_RATIO)
            );
        }
    }
}
