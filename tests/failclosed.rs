//! Fail closed, against the real binary on a headscale tailnet: no work
//! without an audit record (a full disk), no accepted connection lost
//! without a trace (bursts of 1,000), no forged identity at a backend, and
//! no chain cut short or recomputed unnoticed.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::connector::{self, Connector, records};
use common::net::{echo_http_backend, http, tcp_echo_backend};
use common::{Headscale, Tailscaled, node, socks5_connect};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header(hs: &Headscale, state: &Path) -> String {
    format!(
        "[tailnet]\ncontrol_url = \"{}\"\nauth_key_env = \"PORTCULLIS_AUTH_KEY\"\nstate_dir = \"{}\"\n",
        hs.url,
        state.display()
    )
}

/// A tmpfs of `size` mounted at a new directory, unmounted on drop: a disk
/// that can really fill up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (the test runs as root in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a ballast file until the kernel says it is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("ballast");
        let mut file = std::fs::File::create(&path).expect("ballast");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                return path;
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `portcullis` with `args`; returns (success, stdout + stderr).
fn portcullis(args: &[&str]) -> (bool, String) {
    let out = connector::run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Responses by status, and bodies of every non-200 one.
#[derive(Default)]
struct Tally {
    by_status: HashMap<u16, u64>,
    refusals: Vec<String>,
}

type Client = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// One GET to the `web` device on a kept-alive connection (opened on first
/// use, and again after the device closed it); returns (status, body), or
/// status 0 if the exchange failed.
async fn get(
    agent: &portcullis::tailnet::Node,
    client: &mut Option<Client>,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = agent
            .dial("web:80", Duration::from_secs(30))
            .await
            .expect("dial web");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        *client = Some(sender);
    }
    let sender = client.as_mut().expect("connected");
    if sender.ready().await.is_err() {
        *client = None;
        return Box::pin(get(agent, client, path)).await;
    }
    let request = http::Request::get(path)
        .header("host", "web")
        .body(http_body_util::Empty::new())
        .expect("request");
    match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(e) => {
            *client = None;
            (0, e.to_string())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_work_with_503_and_resumes_losing_no_record() {
    common::trace();
    let disk = SmallDisk::mount("16m");
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let (web, _) = echo_http_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    let text = format!(
        "{}\n[[endpoint]]\nname = \"web\"\nkind = \"http\"\ntarget = \"127.0.0.1:{web}\"\nallow = [\"tag:agent\"]\n",
        header(&hs, &dir.path().join("state"))
    );
    std::fs::write(&file, text).expect("write");
    let audit_url = format!("sqlite://{}", disk.path().join("audit.db").display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    let agent = node(&hs, "agent", &agent_key).await;

    // Load from two callers, each on a kept-alive connection (as agents
    // do; a new connection per request would mostly measure TIME_WAIT),
    // until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let refused_seen = Arc::new(AtomicU64::new(0));
    let served_seen = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..2 {
        let (agent, stop) = (agent.clone(), stop.clone());
        let (refused_seen, served_seen) = (refused_seen.clone(), served_seen.clone());
        load.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut client = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (status, body) = get(&agent, &mut client, &format!("/w{worker}/{i}")).await;
                *tally.by_status.entry(status).or_default() += 1;
                match status {
                    200 => served_seen.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        tally.refusals.push(body);
                        refused_seen.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            tally
        }));
    }
    wait_until("some requests served", Duration::from_secs(60), || {
        served_seen.load(Ordering::Relaxed) >= 20
    })
    .await;

    // The disk fills: new requests are refused, not served unrecorded.
    let ballast = disk.fill();
    wait_until("requests refused", Duration::from_secs(120), || {
        refused_seen.load(Ordering::Relaxed) >= 20
    })
    .await;
    let served_while_full = served_seen.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        served_seen.load(Ordering::Relaxed) <= served_while_full + 2,
        "requests kept being served while the disk was full"
    );

    // Space returns: service resumes by itself.
    std::fs::remove_file(&ballast).expect("free the disk");
    let resumed_from = served_seen.load(Ordering::Relaxed);
    wait_until("service resumes", Duration::from_secs(60), || {
        served_seen.load(Ordering::Relaxed) >= resumed_from + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for worker in load {
        let t = worker.await.expect("load");
        for (status, n) in t.by_status {
            *tally.by_status.entry(status).or_default() += n;
        }
        tally.refusals.extend(t.refusals);
    }
    let (status, output) = conn.stopped().await;
    assert!(status.success(), "orderly stop after recovery: {output}");
    assert!(output.contains("AUDIT STORE FAILING"), "{output}");
    assert!(output.contains("audit store writable again"), "{output}");

    // Every request was served with a record or refused with 503.
    let served = tally.by_status.get(&200).copied().unwrap_or(0);
    let refused = tally.by_status.get(&503).copied().unwrap_or(0);
    assert_eq!(
        served + refused,
        tally.by_status.values().sum::<u64>(),
        "only 200 and 503: {:?}",
        tally.by_status
    );
    assert!(refused >= 20, "{:?}", tally.by_status);
    for body in &tally.refusals {
        assert!(body.contains("\"reason\":\"audit_unavailable\""), "{body}");
    }
    let state = dir.path().join("state");
    let (ok, text) = portcullis(&[
        "audit",
        "verify",
        "--audit",
        &audit_url,
        "--checkpoint",
        &state.join("audit.checkpoint").display().to_string(),
        "--key",
        &state.join("audit.pub").display().to_string(),
    ]);
    assert!(ok && text.contains("signature verified"), "{text}");
    let all = records(&audit_url);
    let recorded_served = all
        .iter()
        .filter(|r| r["kind"] == "http_request" && r["status"] == "200")
        .count() as u64;
    assert_eq!(recorded_served, served, "one record per served request");
    let recorded_refused = all
        .iter()
        .filter(|r| r["kind"] == "http_request" && r["reason"] == "audit_unavailable")
        .count() as u64;
    assert_eq!(
        recorded_refused, refused,
        "refusals are recorded once space returns"
    );
    assert!(!all.iter().any(|r| r["kind"] == "records_dropped"));
    println!(
        "disk full: {served} requests served (each recorded), {refused} refused with 503 audit_unavailable"
    );

    // A stop while the disk is still full exits non-zero and names the
    // records it could not write.
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector again");
    let ballast = disk.fill();
    let mut refused = 0;
    let mut client = None;
    for i in 0..2000 {
        let (status, _) = get(&agent, &mut client, &format!("/again/{i}")).await;
        if status == 503 {
            refused += 1;
            if refused >= 5 {
                break;
            }
        }
    }
    assert!(refused >= 5, "the full disk refused nothing");
    let (status, output) = conn.stopped().await;
    std::fs::remove_file(&ballast).expect("free the disk");
    assert!(
        !status.success(),
        "a stop that lost records must fail: {output}"
    );
    assert!(
        output.contains("audit records could not be written at shutdown"),
        "{output}"
    );
    assert!(!output.contains("Safety level"), "{output}");
    let (ok, text) = portcullis(&["audit", "verify", "--audit", &audit_url]);
    assert!(ok, "the chain stays valid: {text}");
}

/// The tailnet IPv4 address of the node `name`, from headscale.
fn node_ip(hs: &Headscale, name: &str) -> IpAddr {
    let nodes = hs.cli(&["nodes", "list"]);
    let node = nodes
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|n| n["given_name"].as_str().or(n["name"].as_str()) == Some(name))
        })
        .unwrap_or_else(|| panic!("no node {name}: {nodes}"));
    node["ip_addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str()?.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)
        .unwrap_or_else(|| panic!("no IPv4 for {name}: {node}"))
}

/// Resident set size of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident MiB of `pid` by where it lives: (Go heap, other anonymous
/// memory: the Rust allocator's arenas and thread stacks, mapped files:
/// the binary's code and libraries). The Go runtime maps its heap arenas
/// below the 0x7f... range where glibc puts its arenas and stacks.
fn rss_split(pid: u32) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut go, mut anon, mut files) = (0, 0, 0);
    let mut class = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, _)) = first.split_once('-')
            && let Ok(start) = u64::from_str_radix(start, 16)
        {
            let file = fields.nth(4).is_some_and(|p| p.starts_with('/'));
            class = if file {
                2
            } else if start < 0x5000_0000_0000 {
                0
            } else {
                1
            };
        } else if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|k| k.parse().ok()).unwrap_or(0);
            match class {
                0 => go += kib,
                1 => anon += kib,
                _ => files += kib,
            }
        }
    }
    (go / 1024, anon / 1024, files / 1024)
}

/// What happened to one connection of a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    Echoed,
    /// Closed after connect without an echo.
    Closed,
    /// The SOCKS connect itself failed (the caller never saw it accepted).
    NotAccepted,
}

async fn one_connection(proxy: SocketAddr, target: SocketAddr, i: usize) -> Fate {
    let Ok(mut s) = socks5_connect(proxy, target).await else {
        return Fate::NotAccepted;
    };
    let msg = format!("burst-{i:05}\n");
    if s.write_all(msg.as_bytes()).await.is_err() {
        return Fate::Closed;
    }
    let mut back = vec![0u8; msg.len()];
    match tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut back)).await {
        Ok(Ok(_)) if back == msg.as_bytes() => Fate::Echoed,
        _ => Fate::Closed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_1000_connections_are_each_echoed_or_refused_with_a_record() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    let text = format!(
        "{}\n[[endpoint]]\nname = \"echo\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{echo}\"\nports = [7000]\nallow = [\"tag:agent\"]\n",
        header(&hs, &dir.path().join("state"))
    );
    std::fs::write(&file, text).expect("write");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    let pid = conn.pid();
    let url = hs.url.clone();
    let tsd = tokio::task::spawn_blocking(move || Tailscaled::start(&url, &agent_key, "agent"))
        .await
        .expect("tailscaled");
    let target = SocketAddr::new(node_ip(&hs, "echo"), 7000);
    // Warm the path (peer discovery) before measuring.
    let mut warm = 0;
    while one_connection(tsd.socks5, target, 0).await != Fate::Echoed {
        warm += 1;
        assert!(warm < 60, "the echo device never answered");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = rss_kib(pid);
    println!(
        "idle: RSS {} MiB (Go heap, other anonymous, files MiB: {:?})",
        idle / 1024,
        rss_split(pid)
    );
    let count = |all: &[Value], kind: &str, status: Option<&str>| {
        all.iter()
            .filter(|r| r["kind"] == kind && r["endpoint"] == "echo")
            .filter(|r| status.is_none_or(|s| r["status"] == s))
            .count() as u64
    };
    let before = records(&audit_url);
    let opened_before = count(&before, "connection_open", None);
    let closed_before = count(&before, "connection_close", Some("ok"));
    let denied_before = count(&before, "connection_denied", None);

    let peak = Arc::new(AtomicU64::new(idle));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut fates: HashMap<Fate, u64> = HashMap::new();
    for burst in 0..5 {
        let barrier = Arc::new(tokio::sync::Barrier::new(1000));
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let barrier = barrier.clone();
                let proxy = tsd.socks5;
                tokio::spawn(async move {
                    barrier.wait().await;
                    one_connection(proxy, target, burst * 1000 + i).await
                })
            })
            .collect();
        for t in tasks {
            *fates.entry(t.await.expect("connection task")).or_default() += 1;
        }
        println!("burst {burst}: {fates:?}");
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "right after the bursts: RSS {} MiB (Go heap, other anonymous, files MiB: {:?})",
        rss_kib(pid) / 1024,
        rss_split(pid)
    );
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        println!(
            "  RSS {} MiB (Go heap, other anonymous, files MiB: {:?})",
            rss_kib(pid) / 1024,
            rss_split(pid)
        );
    }
    let after = rss_kib(pid);
    println!(
        "connector RSS: idle {} MiB, peak {} MiB, 60 s after the bursts {} MiB",
        idle / 1024,
        peak / 1024,
        after / 1024
    );

    let (status, output) = conn.stopped().await;
    assert!(status.success(), "{output}");
    let all = records(&audit_url);
    let echoed = fates.get(&Fate::Echoed).copied().unwrap_or(0);
    let closed = fates.get(&Fate::Closed).copied().unwrap_or(0);
    let denied = count(&all, "connection_denied", None) - denied_before;
    // Every connection the caller saw accepted has its record: served
    // (open + close) or refused (denied).
    assert_eq!(count(&all, "connection_open", None) - opened_before, echoed);
    assert_eq!(
        count(&all, "connection_close", Some("ok")) - closed_before,
        echoed
    );
    assert_eq!(
        closed, denied,
        "each refused connection has a record: {fates:?}"
    );
    assert_eq!(
        fates.get(&Fate::NotAccepted).copied().unwrap_or(0),
        0,
        "the tailnet accepted every connection: {fates:?}"
    );
    assert_eq!(echoed + closed, 5000, "{fates:?}");
    assert!(!all.iter().any(|r| r["kind"] == "records_dropped"));
    let _ = tsd;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_never_reach_a_backend() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let (web, _) = echo_http_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    let text = format!(
        "{}\n[[endpoint]]\nname = \"web\"\nkind = \"http\"\ntarget = \"127.0.0.1:{web}\"\nallow = [\"tag:agent\"]\n\
         [endpoint.http]\nmethods = [\"GET\"]\nstrip_headers = [\"X-Api-Role\", \"X-Internal-*\"]\n",
        header(&hs, &dir.path().join("state"))
    );
    std::fs::write(&file, text).expect("write");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    let agent = node(&hs, "agent", &agent_key).await;
    let agent_ip = agent.ips().expect("ips")[0];

    let forged = [
        "Forwarded: for=10.0.0.1;by=trusted",
        "X-Forwarded-For: 10.0.0.1",
        "X_Forwarded_For: 10.0.0.2",
        "X-Forwarded-User: admin",
        "X-Forwarded-Email: admin@example.com",
        "X-Forwarded-Host: admin.internal",
        "X-Real-IP: 10.0.0.3",
        "X-Client-IP: 10.0.0.4",
        "True-Client-IP: 10.0.0.5",
        "Remote-User: admin",
        "X-Remote-User: admin",
        "X-User: admin",
        "X-Auth-Request-User: admin",
        "X-Auth-Request-Email: admin@example.com",
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "X-Original-URL: /admin",
        "X-Portcullis-User: admin",
        "Tailscale-User-Login: admin",
        "X-Api-Role: root",
        "X-Internal-Token: t",
    ];
    let headers: String = forged.iter().map(|h| format!("{h}\r\n")).collect();
    let (status, seen) = http(&agent, "web", "GET", "/page", &headers).await;
    assert_eq!(status, 200, "{seen}");
    let seen_lower = seen.to_ascii_lowercase();
    for h in forged {
        let name = h.split(':').next().unwrap_or_default().to_ascii_lowercase();
        let value = h.split_once(": ").map(|(_, v)| v).unwrap_or_default();
        if matches!(name.as_str(), "forwarded" | "x-forwarded-for") {
            assert!(!seen.contains(value), "{h} reached the backend:\n{seen}");
        } else {
            assert!(
                !seen_lower.contains(&format!("{name}:")),
                "{h} reached the backend:\n{seen}"
            );
        }
    }
    assert!(seen.starts_with("GET /page "), "{seen}");
    // The connector's own forwarding headers, naming the real caller.
    assert!(
        seen_lower.contains(&format!("forwarded: for=\"{agent_ip}:")),
        "{seen}"
    );
    assert!(
        seen_lower.contains(&format!("x-forwarded-for: {agent_ip}\r\n")),
        "{seen}"
    );
    assert!(
        !seen_lower.contains("x-forwarded-user"),
        "not asked for identity headers"
    );
    let (status, output) = conn.stopped().await;
    assert!(status.success(), "{output}");
}

/// Replaces row `seq`'s body with `body` and recomputes the hash chain from
/// there on, as someone with write access to the database would.
async fn rewrite_from(db: &Path, seq: i64, edit: impl Fn(&str) -> String) {
    use sha2::{Digest, Sha256};
    use sqlx::{ConnectOptions, Row};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .expect("open copy");
    let rows =
        sqlx::query("SELECT seq, body, prev_hash FROM audit_records WHERE seq >= $1 ORDER BY seq")
            .bind(seq)
            .fetch_all(&mut conn)
            .await
            .expect("rows");
    let mut prev: Option<String> = None;
    for row in rows {
        let s: i64 = row.get(0);
        let mut body: String = row.get(1);
        if s == seq {
            body = edit(&body);
        }
        let prev_hash = prev.clone().unwrap_or_else(|| row.get(2));
        let hash = hex::encode(Sha256::digest(format!("{prev_hash}\n{body}").as_bytes()));
        sqlx::query("UPDATE audit_records SET body = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&body)
            .bind(&prev_hash)
            .bind(&hash)
            .bind(s)
            .execute(&mut conn)
            .await
            .expect("update");
        prev = Some(hash);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tail_and_a_recomputed_chain_are_detected_with_the_witness() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let file = dir.path().join("endpoints.toml");
    let text = format!(
        "{}\n[[endpoint]]\nname = \"echo\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{echo}\"\nports = [7000]\nallow = [\"tag:agent\"]\n",
        header(&hs, &state)
    );
    std::fs::write(&file, text).expect("write");
    let db = state.join("audit.db");
    let audit_url = format!("sqlite://{}", db.display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    let agent = node(&hs, "agent", &agent_key).await;
    for round in 0..3 {
        let mut s = agent
            .dial("echo:7000", Duration::from_secs(30))
            .await
            .expect("dial");
        s.write_all(b"ping").await.expect("ping");
        let mut pong = [0u8; 4];
        s.read_exact(&mut pong).await.expect("pong");
        drop(s);
        // Past the checkpoint interval, so checkpoint records land in the chain.
        if round < 2 {
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
    }
    let (status, output) = conn.stopped().await;
    assert!(status.success(), "{output}");
    assert!(
        output.contains("audit checkpoint"),
        "checkpoints are logged: {output}"
    );
    let config = file.display().to_string();
    let witness = state.join("audit.checkpoint");
    let (ok, text) = portcullis(&["audit", "verify", "--config", &config]);
    assert!(ok, "{text}");
    assert!(
        text.contains("matches") && text.contains("signature verified"),
        "{text}"
    );
    let all = records(&audit_url);
    let last_seq = all
        .iter()
        .filter_map(|r| r["seq"].as_i64())
        .max()
        .expect("rows");
    let first_checkpoint = all
        .iter()
        .find(|r| r["kind"] == "checkpoint")
        .and_then(|r| r["seq"].as_i64())
        .expect("a checkpoint record in the chain");

    // Each attack on its own copy of the database, verified against the
    // witness with the state dir's key.
    let attack = |name: &str| {
        let copy = dir.path().join(format!("{name}.db"));
        std::fs::copy(&db, &copy).expect("copy");
        copy
    };
    let verify = |copy: &Path| {
        portcullis(&[
            "audit",
            "verify",
            "--audit",
            &format!("sqlite://{}", copy.display()),
            "--checkpoint",
            &witness.display().to_string(),
            "--key",
            &state.join("audit.pub").display().to_string(),
        ])
    };
    let (ok, _) = verify(&attack("intact"));
    assert!(ok, "the untouched copy verifies");

    // 1. The last row deleted.
    let cut = attack("cut");
    {
        use sqlx::ConnectOptions;
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&cut)
            .connect()
            .await
            .expect("open");
        sqlx::query("DELETE FROM audit_records WHERE seq = $1")
            .bind(last_seq)
            .execute(&mut c)
            .await
            .expect("delete");
    }
    let (ok, text) = verify(&cut);
    assert!(!ok, "a cut tail passed: {text}");
    assert!(text.contains("chain cut short"), "{text}");
    assert!(text.contains(&format!("seq {last_seq}")), "{text}");
    assert!(
        text.contains(&witness.display().to_string()),
        "names the checkpoint: {text}"
    );

    // 2. The last row edited and its hash recomputed: only the witness knows.
    let edited = attack("edited");
    rewrite_from(&edited, last_seq, |b| {
        b.replace(
            "\"kind\":\"shutdown\"",
            "\"kind\":\"shutdown\",\"detail\":\"x\"",
        )
    })
    .await;
    let (ok, text) = verify(&edited);
    assert!(!ok, "a recomputed tail passed: {text}");
    assert!(text.contains("chain rewritten"), "{text}");
    assert!(text.contains(&witness.display().to_string()), "{text}");

    // 3. An early row edited and every later hash recomputed: the first
    // checkpoint record after it no longer matches its own signature.
    let early = attack("early");
    rewrite_from(&early, 1, |b| {
        b.replacen("\"kind\":", "\"detail\":\"edited\",\"kind\":", 1)
    })
    .await;
    let (ok, text) = verify(&early);
    assert!(!ok, "a recomputed chain passed: {text}");
    assert!(text.contains("chain rewritten"), "{text}");
    assert!(
        text.contains(&format!("checkpoint record at seq {first_checkpoint}")),
        "names the checkpoint at seq {first_checkpoint}: {text}"
    );
}
