//! Benchmark of operating a connector, in one run on a local headscale:
//!
//! - applying a changed endpoint file by hot reload (policy-only change;
//!   one device added and one removed) vs the restart a reload replaces
//!   (SIGTERM, then `portcullis run` until it serves again), with 10
//!   devices and the MCP device;
//! - a `/metrics` scrape over the tailnet vs a plain HTTP request through an
//!   `http` device on the same connector;
//! - in-process: the cost per record of deriving metrics
//!   (`RecordStats::observe`) vs the whole `AuditLog::record` enqueue it is
//!   part of, and the cost of rendering the page.
//!
//! Run: `cargo bench --bench operations` (prints figures, not asserts).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::connector::Connector;
use common::net::{echo_http_backend, http, tcp_echo_backend};
use portcullis::audit::{AuditLog, Decision, Kind, Record};
use portcullis::metrics::{self, RecordStats};

/// Endpoint devices besides the MCP device.
const DEVICES: usize = 10;
/// Reloads of each kind measured.
const RELOADS: usize = 5;
/// Requests per latency row.
const REQUESTS: usize = 200;

fn config(
    hs: &common::Headscale,
    state: &Path,
    echo: u16,
    web: u16,
    names: &[String],
    extra_allow: &str,
) -> String {
    let mut text = format!(
        r#"[tailnet]
control_url = "{url}"
auth_key_env = "PORTCULLIS_AUTH_KEY"
state_dir = "{state}"

[mcp]
allow = ["tag:agent"]
metrics_allow = ["tag:agent"]

[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:{web}"
allow = ["tag:agent"]
[endpoint.http]
methods = ["GET"]
paths = ["/echo/**"]
"#,
        url = hs.url,
        state = state.display(),
    );
    for name in names {
        text.push_str(&format!(
            "\n[[endpoint]]\nname = \"{name}\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{echo}\"\n\
             ports = [7000]\nallow = [\"tag:agent\"{extra_allow}]\n"
        ));
    }
    text
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Writes `text` and waits until the connector has reported one more
/// reload; returns the time taken.
fn reload(conn: &Connector, file: &Path, text: &str) -> Duration {
    let before = conn.output().matches("reloaded ").count();
    let began = Instant::now();
    write(file, text);
    conn.signal(nix::sys::signal::Signal::SIGHUP);
    while conn.output().matches("reloaded ").count() == before {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "no reload:\n{}",
            conn.output()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    began.elapsed()
}

/// One `GET` on a new connection; the body of a 200, else why not.
async fn get(
    agent: &portcullis::tailnet::Node,
    device: &str,
    path: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = agent
        .dial(&format!("{device}:80"), Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: {device}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .await
        .map_err(|e| e.to_string())?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!(
            "answer: {}",
            resp.lines().next().unwrap_or_default()
        )),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let hs = common::Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let echo = tcp_echo_backend().await;
    let (web, _) = echo_http_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    let state = dir.path().join("state");
    let names: Vec<String> = (0..DEVICES).map(|i| format!("dev-{i}")).collect();
    let base = config(&hs, &state, echo, web, &names, "");
    write(&file, &base);
    let audit = format!("sqlite://{}", dir.path().join("audit.db").display());

    // Cold start, then a restart with warm state (the peer of a reload).
    let began = Instant::now();
    let (f, k, a) = (file.clone(), device_key.clone(), audit.clone());
    let conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("start");
    let cold = began.elapsed();
    let began = Instant::now();
    let (f, k, a) = (file.clone(), device_key.clone(), audit.clone());
    let mut conn = tokio::task::spawn_blocking(move || {
        let mut conn = conn;
        assert!(conn.stop().success());
        Connector::start(&f, &k, &a)
    })
    .await
    .expect("restart");
    let restart = began.elapsed();

    let agent = common::node(&hs, "agent", &agent_key).await;
    let (status, _) = http(&agent, "web", "GET", "/echo/before", "").await;
    assert_eq!(status, 200);

    // Hot reloads.
    let changed = config(&hs, &state, echo, web, &names, ", \"tag:ops\"");
    let mut policy_only = Vec::new();
    for i in 0..RELOADS {
        let text = if i % 2 == 0 { &changed } else { &base };
        policy_only.push(reload(&conn, &file, text));
    }
    let mut add_remove = Vec::new();
    for i in 0..RELOADS {
        let mut swapped = names.clone();
        swapped[0] = format!("swap-{i}");
        add_remove.push(reload(
            &conn,
            &file,
            &config(&hs, &state, echo, web, &swapped, ""),
        ));
    }

    // /metrics vs a plain request through the http device.
    let mut scrape = Vec::new();
    let mut plain = Vec::new();
    let mut page = 0;
    let mut failed = Vec::new();
    for i in 0..REQUESTS {
        let t = Instant::now();
        match get(&agent, "mcp", "/metrics").await {
            Ok(body) => {
                scrape.push(t.elapsed().as_secs_f64() * 1e6);
                page = body.len();
            }
            Err(e) => failed.push(format!("{i} /metrics after {:?}: {e}", t.elapsed())),
        }
        let t = Instant::now();
        match get(&agent, "web", "/echo/x").await {
            Ok(_) => plain.push(t.elapsed().as_secs_f64() * 1e6),
            Err(e) => failed.push(format!("{i} web after {:?}: {e}", t.elapsed())),
        }
    }
    let conn = tokio::task::spawn_blocking(move || {
        assert!(conn.stop().success());
        conn
    })
    .await
    .expect("stop");
    drop(conn);

    // In process: metrics derivation per record vs the enqueue it is part of.
    let (log, writer) = AuditLog::open("sqlite::memory:", "bench", 1 << 20)
        .await
        .expect("audit");
    let sample = |i: usize| {
        let mut r = Record::new(Kind::McpToolCall);
        r.tool = Some(format!("tool_{}", i % 50));
        r.decision = Some(if i.is_multiple_of(7) {
            Decision::Deny
        } else {
            Decision::Permit
        });
        r.reason = Some("allowed_by_identity".to_owned());
        r.status = Some("ok".to_owned());
        r.latency_us = Some((i % 5000) as u64);
        r
    };
    const N: usize = 200_000;
    let records: Vec<Record> = (0..N).map(sample).collect();
    let stats = RecordStats::default();
    let t = Instant::now();
    for r in &records {
        stats.observe(r);
    }
    let observe_ns = t.elapsed().as_nanos() as f64 / N as f64;
    let t = Instant::now();
    for r in records {
        log.record(r);
    }
    let record_ns = t.elapsed().as_nanos() as f64 / N as f64;
    let devices: Vec<portcullis::devices::DeviceStatus> = Vec::new();
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..100 {
        bytes = metrics::render(&metrics::Snapshot {
            audit: &log,
            devices: &devices,
            upstreams: &[],
            fingerprint: "f",
        })
        .len();
    }
    let render_us = t.elapsed().as_secs_f64() * 1e6 / 100.0;
    log.shutdown().await.expect("flush");
    let _ = writer.await;

    println!(
        "\n== applying a changed file ({DEVICES} tcp devices + web + mcp; median of {RELOADS}) =="
    );
    println!("{:<44} {:>10}", "path", "ms");
    println!("{:<44} {:>10.0}", "cold start (spawn -> serving)", ms(cold));
    println!(
        "{:<44} {:>10.0}",
        "restart (SIGTERM -> serving again)",
        ms(restart)
    );
    let p = median(policy_only);
    let s = median(add_remove);
    println!(
        "{:<44} {:>10.1}",
        "hot reload, policy only (write -> reloaded)",
        ms(p)
    );
    println!("{:<44} {:>10.1}", "hot reload, +1 device -1 device", ms(s));
    println!(
        "reload/restart: policy only {:.3}x, add+remove {:.3}x; a restart also cuts every open connection, a reload none it still allows",
        ms(p) / ms(restart),
        ms(s) / ms(restart)
    );
    println!("\n== /metrics over the tailnet ({REQUESTS} requests, new connection each) ==");
    println!("{:<44} {:>10} {:>10}", "request", "p50 us", "p99 us");
    let (sp50, pp50) = (pct(scrape.clone(), 0.5), pct(plain.clone(), 0.5));
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        format!("GET /metrics ({page} bytes)"),
        sp50,
        pct(scrape, 0.99)
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "GET through the http device",
        pp50,
        pct(plain, 0.99)
    );
    println!("scrape/plain p50: {:.2}x", sp50 / pp50);
    if !failed.is_empty() {
        println!(
            "{} requests failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }
    println!("\n== in process ==");
    println!(
        "metrics derivation per record: {observe_ns:.0} ns; whole AuditLog::record: {record_ns:.0} ns ({:.0}% of it)",
        100.0 * observe_ns / record_ns
    );
    println!("render /metrics (50 tool series, {bytes} bytes): {render_us:.0} us");
}
