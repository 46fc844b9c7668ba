//! Running `portcullis run` for months: hot reload without dropping
//! untouched connections, revocation of connections a new file refuses,
//! `/metrics`, SIGTERM and `kill -9` under load, and several connectors
//! sharing one PostgreSQL audit log.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::connector::{self, Connector};
use common::net::{counting_backend, echo_http_backend, http, tcp_echo_backend};
use common::postgres::Postgres;
use common::{Headscale, node, python};
use portcullis::tailnet::Node;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Replaces `path` atomically, as an editor or a ConfigMap update does.
fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn fingerprint(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn header(hs: &Headscale, state: &Path, prefix: &str) -> String {
    format!(
        r#"[tailnet]
control_url = "{url}"
auth_key_env = "PORTCULLIS_AUTH_KEY"
state_dir = "{state}"
hostname_prefix = "{prefix}"
"#,
        url = hs.url,
        state = state.display(),
    )
}

fn tcp_endpoint(name: &str, port: u16, tailnet_port: u16, allow: &str) -> String {
    format!(
        r#"
[[endpoint]]
name = "{name}"
kind = "tcp"
target = "127.0.0.1:{port}"
ports = [{tailnet_port}]
allow = [{allow}]
"#
    )
}

fn http_endpoint(name: &str, port: u16, allow: &str) -> String {
    format!(
        r#"
[[endpoint]]
name = "{name}"
kind = "http"
target = "127.0.0.1:{port}"
allow = [{allow}]
[endpoint.http]
methods = ["GET"]
paths = ["/echo/**"]
"#
    )
}

/// Streams deterministic bytes through an echo device until `stop`, then
/// half-closes and reads the rest; returns (sent, received, hashes equal).
async fn transfer(
    agent: Node,
    target: &'static str,
    moved: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (u64, u64, bool) {
    let stream = agent
        .dial(target, Duration::from_secs(30))
        .await
        .expect("dial bulk");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut sent = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = (n.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8;
            }
            n += 1;
            wr.write_all(&chunk)
                .await
                .expect("send: the transfer was cut");
            hash.update(&chunk);
            sent += chunk.len() as u64;
            // ~12 MB/s: long enough to span a reload, light on 2 cores.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wr.shutdown().await.expect("half-close");
        (sent, hash.finalize())
    });
    let mut hash = Sha256::new();
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .expect("receive: the transfer was cut");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n as u64;
        moved.store(received, Ordering::Relaxed);
    }
    let (sent, sent_hash) = writer.await.expect("writer");
    (sent, received, sent_hash == hash.finalize())
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_online(hs: &Headscale, name: &str) -> Option<bool> {
    let nodes = hs.cli(&["nodes", "list"]);
    nodes.as_array()?.iter().find_map(|n| {
        let given = n["given_name"].as_str().or(n["name"].as_str())?;
        (given == name).then(|| n["online"].as_bool().unwrap_or(false))
    })
}

/// Parses Prometheus text with the official Python client's parser and
/// returns `{"name{label=value,...}": value}` for every sample.
fn parse_metrics(text: &str) -> serde_json::Map<String, Value> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("json") {
        Value::Object(map) => map,
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_changes_revokes_access_and_keeps_untouched_transfers() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let ops_key = hs.auth_key(admin, &["tag:ops"]);
    let sre_key = hs.auth_key(admin, &["tag:sre"]);
    let echo = tcp_echo_backend().await;
    let (legacy, _) = counting_backend().await;
    let (web, _) = echo_http_backend().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    let mcp = "\n[mcp]\nallow = [\"tag:agent\"]\nmetrics_allow = [\"tag:sre\"]\n";
    let base = format!("{}{mcp}", header(&hs, &dir.path().join("state"), ""));
    let v1 = format!(
        "{base}{}{}{}",
        tcp_endpoint("bulk", echo, 9000, r#""tag:agent""#),
        tcp_endpoint("shared", echo, 9100, r#""tag:agent", "tag:ops""#),
        tcp_endpoint("legacy", legacy, 7000, r#""tag:agent""#),
    );
    // v2: `legacy` removed, `fresh` added, `tag:ops` loses `shared`; `bulk`
    // is untouched.
    let v2 = format!(
        "{base}{}{}{}",
        tcp_endpoint("bulk", echo, 9000, r#""tag:agent""#),
        tcp_endpoint("shared", echo, 9100, r#""tag:agent""#),
        http_endpoint("fresh", web, r#""tag:agent""#),
    );
    std::fs::write(&file, &v1).expect("write v1");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let mut conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    let (agent, ops, sre) = tokio::join!(
        node(&hs, "agent", &agent_key),
        node(&hs, "ops", &ops_key),
        node(&hs, "sre", &sre_key)
    );

    // A long transfer on `bulk`, and an open `ops` connection on `shared`.
    let moved = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bulk = tokio::spawn(transfer(
        agent.clone(),
        "bulk:9000",
        moved.clone(),
        stop.clone(),
    ));
    let mut held = ops
        .dial("shared:9100", Duration::from_secs(30))
        .await
        .expect("ops dials shared");
    held.write_all(b"ping").await.expect("ping");
    let mut pong = [0u8; 4];
    held.read_exact(&mut pong).await.expect("pong");
    assert_eq!(&pong, b"ping");
    wait_until("1 MiB through bulk", Duration::from_secs(30), || {
        moved.load(Ordering::Relaxed) > 1 << 20
    })
    .await;
    let before_reload = moved.load(Ordering::Relaxed);

    // Reload by editing the file (the connector polls it every second).
    write_file(&file, &v2);
    let c = tokio::task::spawn_blocking(move || {
        conn.wait_for("reloaded ", Duration::from_secs(120));
        conn
    });
    let mut conn = c.await.expect("reloaded");

    // The caller that lost access is cut off.
    let mut buf = [0u8; 16];
    let cut = tokio::time::timeout(Duration::from_secs(10), held.read(&mut buf))
        .await
        .expect("revoked connection closed within 10 s");
    assert!(
        matches!(cut, Ok(0) | Err(_)),
        "revoked connection still delivers data: {cut:?}"
    );
    // The added device serves; the removed one leaves the tailnet.
    let (status, body) = http(&agent, "fresh", "GET", "/echo/added", "").await;
    assert_eq!(status, 200, "{body}");
    let hs_ref = &hs;
    wait_until("legacy offline", Duration::from_secs(60), || {
        node_online(hs_ref, "legacy") == Some(false)
    })
    .await;
    assert_eq!(node_online(&hs, "bulk"), Some(true));

    // A broken file changes nothing and says why.
    write_file(&file, "[tailnet\nthis is not toml\n");
    let c = tokio::task::spawn_blocking(move || {
        conn.wait_for("reload rejected", Duration::from_secs(30));
        conn
    });
    let mut conn = c.await.expect("rejected");
    assert!(
        conn.output().contains("endpoints.toml:1:"),
        "the rejection names the file position:\n{}",
        conn.output()
    );
    let (status, _) = http(&agent, "fresh", "GET", "/echo/after-broken", "").await;
    assert_eq!(status, 200, "v2 still in force");
    let mut again = ops
        .dial("shared:9100", Duration::from_secs(30))
        .await
        .expect("dial");
    let _ = again.write_all(b"ping").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), again.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "ops reached shared after the broken reload");

    // /metrics: for tag:sre only, parsed by prometheus_client.
    let (status, body) = http(&agent, "mcp", "GET", "/metrics", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("metrics_not_allowed"), "{body}");
    let (status, text) = http(&sre, "mcp", "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{text}");
    let m = parse_metrics(&text);
    let get = |k: &str| m.get(k).and_then(Value::as_f64);
    assert_eq!(
        get(&format!(
            "portcullis_config_info{{fingerprint={}}}",
            fingerprint(&v2)
        )),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get("portcullis_device_up{device=fresh,kind=http}"),
        Some(1.0)
    );
    assert_eq!(get("portcullis_device_up{device=bulk,kind=tcp}"), Some(1.0));
    assert!(!text.contains("device=\"legacy\""), "{text}");
    assert!(get("portcullis_connections_open{device=bulk}") >= Some(1.0));
    assert!(
        get(
            "portcullis_decisions_total{decision=deny,kind=connection_denied,reason=not_in_allow_list}"
        ) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        get("portcullis_audit_records_total{kind=reload}"),
        Some(1.0)
    );
    assert_eq!(
        get("portcullis_audit_records_total{kind=reload_rejected}"),
        Some(1.0)
    );
    assert_eq!(get("portcullis_audit_records_dropped_total{}"), Some(0.0));
    assert_eq!(
        get("portcullis_http_request_duration_seconds_count{endpoint=fresh}"),
        Some(2.0),
        "{text}"
    );

    // A removed device can come back: same state dir, same node.
    let v3 = format!(
        "{v2}{}",
        tcp_endpoint("legacy", legacy, 7000, r#""tag:agent""#)
    );
    write_file(&file, &v3);
    let c = tokio::task::spawn_blocking(move || {
        conn.wait_for_count("reloaded ", 2, Duration::from_secs(120));
        conn
    });
    let conn = c.await.expect("reloaded again");
    let mut back = agent
        .dial("legacy:7000", Duration::from_secs(30))
        .await
        .expect("legacy is back");
    let mut hello = String::new();
    back.read_to_string(&mut hello).await.expect("read");
    assert_eq!(hello, "hello from backend\n");

    // The transfer on the untouched device ran through all of it intact.
    stop.store(true, Ordering::Relaxed);
    let (sent, received, same) = bulk.await.expect("transfer");
    assert!(
        sent > before_reload + (1 << 20),
        "the transfer went on after the reload"
    );
    assert_eq!(sent, received);
    assert!(same, "bytes differ end to end");

    let (status, output) = conn.stopped().await;
    assert!(status.success(), "{status:?}\n{output}");
    connector::assert_verifies(&audit_url, &[]);

    let records = connector::records(&audit_url);
    let of = |kind: &str| -> Vec<&Value> { records.iter().filter(|r| r["kind"] == kind).collect() };
    let reloads = of("reload");
    assert_eq!(reloads.len(), 2, "{records:#?}");
    assert_eq!(reloads[1]["extra"]["added"], serde_json::json!(["legacy"]));
    let extra = &reloads[0]["extra"];
    assert_eq!(extra["old_fingerprint"], fingerprint(&v1));
    assert_eq!(extra["new_fingerprint"], fingerprint(&v2));
    assert_eq!(extra["added"], serde_json::json!(["fresh"]));
    assert_eq!(extra["removed"], serde_json::json!(["legacy"]));
    assert_eq!(extra["connections_revoked"], 1);
    let rejected = of("reload_rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reason"], "invalid_file");
    assert!(
        rejected[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("endpoints.toml:1:")),
        "{:#?}",
        rejected[0]
    );
    assert_eq!(rejected[0]["extra"]["old_fingerprint"], fingerprint(&v2));
    let revoked = of("connection_revoked");
    assert_eq!(revoked.len(), 1, "{records:#?}");
    assert_eq!(revoked[0]["device"], "shared");
    assert_eq!(revoked[0]["reason"], "not_in_allow_list");
    assert_eq!(revoked[0]["fingerprint"], fingerprint(&v2));
    assert!(
        revoked[0]["caller"]["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "tag:ops")),
        "{:#?}",
        revoked[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_changes_that_need_a_restart_are_refused() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let (web, _) = echo_http_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    let state = dir.path().join("state");
    let v1 = format!(
        "{}{}",
        header(&hs, &state, ""),
        http_endpoint("web", web, r#""tag:agent""#)
    );
    std::fs::write(&file, &v1).expect("write");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    // No file watch: only SIGHUP reloads.
    let conn = tokio::task::spawn_blocking(move || {
        Connector::start_with(&f, &k, &a, "test-connector", &["--watch-interval", "0"])
    })
    .await
    .expect("connector");
    let agent = node(&hs, "agent", &agent_key).await;

    // A changed [tailnet] section cannot be applied while running.
    let moved = format!(
        "{}{}",
        header(&hs, &dir.path().join("elsewhere"), ""),
        http_endpoint("web", web, r#""tag:agent""#)
    );
    write_file(&file, &moved);
    conn.signal(nix::sys::signal::Signal::SIGHUP);
    let mut conn = tokio::task::spawn_blocking(move || {
        let mut conn = conn;
        conn.wait_for("reload rejected", Duration::from_secs(30));
        conn
    })
    .await
    .expect("rejected");
    assert!(
        conn.output().contains("restart_required")
            && conn.output().contains("the [tailnet] section changed"),
        "{}",
        conn.output()
    );

    // A valid change waits for SIGHUP.
    let v2 = format!("{v1}{}", http_endpoint("api", web, r#""tag:agent""#));
    write_file(&file, &v2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !conn.output().contains("reloaded "),
        "reloaded without SIGHUP:\n{}",
        conn.output()
    );
    conn.signal(nix::sys::signal::Signal::SIGHUP);
    let conn = tokio::task::spawn_blocking(move || {
        conn.wait_for("reloaded ", Duration::from_secs(120));
        conn
    })
    .await
    .expect("reloaded");
    let (status, body) = http(&agent, "api", "GET", "/echo/hup", "").await;
    assert_eq!(status, 200, "{body}");

    let (status, output) = conn.stopped().await;
    assert!(status.success(), "{status:?}\n{output}");
    connector::assert_verifies(&audit_url, &[]);
    let records = connector::records(&audit_url);
    let rejected: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "reload_rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{records:#?}");
    assert_eq!(rejected[0]["reason"], "restart_required");
    assert_eq!(rejected[0]["extra"]["trigger"], "sighup");
    assert_eq!(rejected[0]["extra"]["new_fingerprint"], fingerprint(&moved));
    let reload: Vec<&Value> = records.iter().filter(|r| r["kind"] == "reload").collect();
    assert_eq!(reload.len(), 1, "{records:#?}");
    assert_eq!(reload[0]["extra"]["trigger"], "sighup");
    assert_eq!(reload[0]["extra"]["added"], serde_json::json!(["api"]));
}

/// Sends GETs with unique paths from `workers` loops until `stop`, counting
/// answers in `ok`; returns the paths that got a 200.
async fn load(
    agent: &Node,
    workers: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (agent, stop, ok) = (agent.clone(), stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let path = format!("/echo/w{w}-{i}");
                let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut s = agent.dial("web:80", Duration::from_secs(2)).await.ok()?;
                    let req =
                        format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
                    s.write_all(req.as_bytes()).await.ok()?;
                    let mut resp = String::new();
                    s.read_to_string(&mut resp).await.ok()?;
                    Some(resp)
                })
                .await;
                match attempt {
                    Ok(Some(resp)) if resp.starts_with("HTTP/1.1 200") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        done.push(path);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            done
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all
}

/// Starts four load loops and waits until 20 calls were answered; set the
/// flag to stop them, then await the handle for the answered paths.
async fn start_load(agent: &Node) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let loader = {
        let (agent, stop, ok) = (agent.clone(), stop.clone(), ok.clone());
        tokio::spawn(async move { load(&agent, 4, stop, ok).await })
    };
    wait_until("20 calls answered", Duration::from_secs(60), || {
        ok.load(Ordering::Relaxed) >= 20
    })
    .await;
    (stop, loader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_records_every_completed_call_and_kill_9_leaves_a_valid_chain() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let (web, _) = echo_http_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    let text = format!(
        "{}{}",
        header(&hs, &dir.path().join("state"), ""),
        http_endpoint("web", web, r#""tag:agent""#)
    );
    std::fs::write(&file, &text).expect("write");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let start = || {
        let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
        tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
    };
    let conn = start().await.expect("connector");
    let agent = node(&hs, "agent", &agent_key).await;

    // SIGTERM in the middle of load.
    let (stop, loader) = start_load(&agent).await;
    let (status, output) = conn.stopped().await;
    stop.store(true, Ordering::Relaxed);
    let completed = loader.await.expect("load");
    assert!(status.success(), "{status:?}\n{output}");
    assert!(
        completed.len() >= 10,
        "too little load: {}",
        completed.len()
    );
    let records = connector::records(&audit_url);
    let recorded: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "http_request" && r["status"] == "200")
        .filter_map(|r| r["path"].as_str())
        .collect();
    let missing: Vec<&String> = completed
        .iter()
        .filter(|p| !recorded.contains(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed calls have no record, e.g. {:?}",
        missing.len(),
        completed.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        records.last().map(|r| r["kind"].clone()),
        Some(Value::from("shutdown"))
    );

    // kill -9 under load: the chain still verifies, and a restart resumes it.
    let conn = start().await.expect("restart");
    let (stop, loader) = start_load(&agent).await;
    conn.signal(nix::sys::signal::Signal::SIGKILL);
    let conn = tokio::task::spawn_blocking(move || {
        let mut conn = conn;
        conn.wait(Duration::from_secs(30));
        conn
    })
    .await
    .expect("killed");
    drop(conn);
    stop.store(true, Ordering::Relaxed);
    let killed_load = loader.await.expect("load");
    assert!(!killed_load.is_empty(), "no load before the kill");
    connector::assert_verifies(&audit_url, &[]);
    let conn = start().await.expect("restart after kill");
    let (status, _) = http(&agent, "web", "GET", "/echo/after-restart", "").await;
    assert_eq!(status, 200);
    assert!(conn.stopped().await.0.success());
    connector::assert_verifies(&audit_url, &[]);
    let records = connector::records(&audit_url);
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "startup").count(),
        3,
        "three runs in one chain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connectors_share_one_postgresql_audit_log_with_a_chain_each() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("postgres");
    let (web, _) = echo_http_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_url = format!("postgres://portcullis@127.0.0.1:{}/postgres", pg.port);
    let mut started = Vec::new();
    for name in ["a", "b"] {
        let file = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "{}{}",
            header(
                &hs,
                &dir.path().join(format!("state-{name}")),
                &format!("{name}-")
            ),
            http_endpoint("web", web, r#""tag:agent""#)
        );
        std::fs::write(&file, text).expect("write");
        let (k, a) = (device_key.clone(), audit_url.clone());
        started.push(tokio::task::spawn_blocking(move || {
            Connector::start_named(&file, &k, &a, &format!("connector-{name}"))
        }));
    }
    let mut conns = Vec::new();
    for s in started {
        conns.push(s.await.expect("connector"));
    }
    let agent = node(&hs, "agent", &agent_key).await;
    for i in 0..5 {
        for device in ["a-web", "b-web"] {
            let (status, body) = http(&agent, device, "GET", &format!("/echo/{i}"), "").await;
            assert_eq!(status, 200, "{device}: {body}");
        }
    }
    for c in conns {
        assert!(c.stopped().await.0.success());
    }
    let out = connector::assert_verifies(&audit_url, &[]);
    assert!(out.contains("2 chains"), "{out}");
    let records = connector::records(&audit_url);
    for name in ["connector-a", "connector-b"] {
        let mine: Vec<&Value> = records.iter().filter(|r| r["connector"] == name).collect();
        let requests = mine.iter().filter(|r| r["kind"] == "http_request").count();
        assert_eq!(requests, 5, "{name}: {mine:#?}");
        connector::assert_verifies(&audit_url, &["--connector", name]);
    }
}
