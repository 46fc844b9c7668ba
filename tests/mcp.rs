//! The governed MCP endpoint on a real headscale tailnet, driven by the
//! official Python `mcp` SDK through userspace `tailscaled` peers, with a
//! federated upstream MCP server (Python FastMCP) and an HTTP backend.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::connector::{self, Connector};
use common::headscale::free_port;
use common::{APP_CAP, Headscale, Tailscaled, python};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
        .display()
        .to_string()
}

/// The FastMCP upstream, killed on drop.
struct Upstream(Child);
impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_upstream(port: u16) -> Upstream {
    let child = Command::new(python())
        .arg(script("upstream.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start upstream MCP server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "upstream MCP server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Upstream(child)
}

/// An HTTP backend that answers with the request head it got and counts
/// requests by path.
async fn http_backend() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let reply = format!("{text}{}", String::from_utf8_lossy(&body));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, hits)
}

fn config(hs: &Headscale, dir: &Path, web: u16, upstream: u16, closed: u16) -> String {
    format!(
        r#"[tailnet]
control_url = "{url}"
auth_key_env = "PORTCULLIS_AUTH_KEY"
state_dir = "{state}"

[groups]
agents = ["tag:agent"]
ops = ["tag:ops"]

[mcp]
name = "mcp"
allow = ["group:agents", "group:ops"]
capability = "{APP_CAP}"
max_body_bytes = 65536

[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:{web}"
allow = ["group:agents"]
description = "echo API"
[endpoint.http]
methods = ["GET", "POST"]
paths = ["/api/**"]
identity_headers = true
[endpoint.inspect]
secrets = "redact"

[[endpoint]]
name = "tickets"
kind = "mcp"
target = "127.0.0.1:{upstream}"
allow = ["group:agents", "group:ops"]
description = "ticket system"
[endpoint.mcp]
tools_allow = ["*"]
tools_deny = ["delete_*"]
timeout_ms = 1500
[endpoint.inspect]
secrets = "redact"
injection = "flag"

[[endpoint]]
name = "granted"
kind = "http"
target = "127.0.0.1:{web}"
allow = []
description = "reachable only through the tailnet policy's app capability"

[[endpoint]]
name = "down"
kind = "mcp"
target = "127.0.0.1:{closed}"
allow = ["group:agents"]
"#,
        url = hs.url,
        state = dir.join("state").display(),
    )
}

fn run_agent(proxy: std::net::SocketAddr, url: &str, scenario: Value) -> Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(script("mcp_agent.py"))
        .arg(url)
        .arg(format!("http://{proxy}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python agent");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scenario.to_string().as_bytes())
        .expect("scenario");
    let out = child.wait_with_output().expect("python agent");
    assert!(
        out.status.success(),
        "python agent failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("agent report")
}

fn call(report: &Value, i: usize) -> &Value {
    &report["calls"][i]
}

/// TCP sockets in LISTEN state owned by `pid` (any address), from /proc.
fn listening_sockets(pid: u32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.display().to_string();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    assert!(
        !inodes.is_empty(),
        "the connector has sockets (its tailnet UDP at least)"
    );
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                listening.push(format!("{table} {}", f[1]));
            }
        }
    }
    listening
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_mcp_client_over_the_tailnet_is_governed_per_caller() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let ops_key = hs.auth_key(admin, &["tag:ops"]);
    let (web_port, web_hits) = http_backend().await;
    let upstream_port = free_port();
    let _upstream = start_upstream(upstream_port);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    std::fs::write(
        &file,
        config(&hs, dir.path(), web_port, upstream_port, free_port()),
    )
    .expect("config");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let mut conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    conn.wait_for("tickets", Duration::from_secs(60));

    let (url, key, key2) = (hs.url.clone(), agent_key.clone(), ops_key.clone());
    let (agent, ops) = tokio::task::spawn_blocking(move || {
        (
            Tailscaled::start(&url, &key, "agent"),
            Tailscaled::start(&url, &key2, "ops"),
        )
    })
    .await
    .expect("tailscaled peers");
    let mcp_url = "http://mcp/mcp".to_string();
    // The MCP device may need a moment to appear in the peers' netmaps.
    wait_reachable(&agent, "mcp").await;
    wait_reachable(&ops, "mcp").await;

    let secret = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
    let scenario = json!({
        "calls": [
            ["whoami", {}],
            ["list_endpoints", {}],
            ["http_request", {"endpoint": "web", "method": "GET", "path": "/api/items", "headers": {"x-portcullis-user": "root@corp"}}],
            ["http_request", {"endpoint": "web", "method": "DELETE", "path": "/api/items"}],
            ["http_request", {"endpoint": "web", "method": "POST", "path": "/api/notes", "body": format!("token={secret}")}],
            ["tickets__echo", {"text": "hello upstream"}],
            ["tickets__delete_all", {}],
            ["tickets__leak", {}],
            ["tickets__inject", {}],
            ["tickets__slow", {"seconds": 5}],
            ["tickets__echo", {"text": "still serving"}],
            ["down__anything", {}],
            ["no_such_tool", {}],
            ["http_request", {"endpoint": "granted", "method": "GET", "path": "/"}],
        ],
        "raw": [
            ["application/json", "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": "],
            ["application/json", format!("{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}", "x".repeat(200_000))],
        ],
    });
    let hits_before = web_hits.load(Ordering::SeqCst);
    let proxy = agent.http_proxy;
    let (u, s) = (mcp_url.clone(), scenario.clone());
    let report = tokio::task::spawn_blocking(move || run_agent(proxy, &u, s))
        .await
        .expect("agent");

    // Tools: built-ins, federated upstream tools minus the denied one.
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for t in [
        "whoami",
        "list_endpoints",
        "http_request",
        "tickets__echo",
        "tickets__slow",
        "tickets__leak",
    ] {
        assert!(tools.contains(&t), "{t} missing from {tools:?}");
    }
    assert!(
        !tools.contains(&"tickets__delete_all"),
        "denied tool listed: {tools:?}"
    );
    let who = call(&report, 0)["text"].as_str().unwrap_or_default();
    assert!(who.contains("tag:agent"), "whoami: {who}");
    let endpoints = call(&report, 1)["text"].as_str().unwrap_or_default();
    assert!(
        endpoints.contains("web") && endpoints.contains("tickets"),
        "{endpoints}"
    );
    assert!(
        endpoints.contains("granted"),
        "capability grant from the tailnet policy: {endpoints}"
    );

    let get = call(&report, 2);
    assert_eq!(get["is_error"], false, "{get}");
    let text = get["text"].as_str().unwrap_or_default().to_lowercase();
    assert!(text.contains("x-portcullis-tags: tag:agent"), "{text}");
    assert!(
        !text.contains("root@corp"),
        "spoofed identity reached the backend: {text}"
    );
    let delete = call(&report, 3);
    assert_eq!(delete["is_error"], true, "{delete}");
    assert!(
        delete["text"]
            .as_str()
            .unwrap_or_default()
            .contains("method_not_allowed"),
        "{delete}"
    );
    let post = call(&report, 4);
    assert_eq!(post["is_error"], false, "{post}");
    let posted = post["text"].as_str().unwrap_or_default();
    assert!(
        !posted.contains(secret) && posted.contains("[REDACTED:"),
        "secret redacted before the backend: {posted}"
    );

    assert_eq!(call(&report, 5)["text"], "hello upstream");
    let denied = call(&report, 6);
    assert!(
        denied["is_error"] == true || denied.get("exception").is_some(),
        "{denied}"
    );
    let leak = call(&report, 7)["text"].as_str().unwrap_or_default();
    assert!(
        !leak.contains("ghp_A1b2") && leak.contains("[REDACTED:github_token]"),
        "{leak}"
    );
    assert!(
        call(&report, 8)["text"]
            .as_str()
            .unwrap_or_default()
            .contains("Ticket 42")
    );
    let slow = call(&report, 9);
    assert_eq!(
        slow["is_error"], true,
        "slow upstream is a tool error: {slow}"
    );
    assert_eq!(
        call(&report, 10)["text"],
        "still serving",
        "connector keeps serving after a slow upstream"
    );
    let down = call(&report, 11);
    assert!(
        down["is_error"] == true || down.get("exception").is_some(),
        "{down}"
    );
    assert!(
        call(&report, 12).get("exception").is_some(),
        "unknown tool is a JSON-RPC error"
    );
    assert_eq!(
        call(&report, 13)["is_error"],
        false,
        "granted endpoint usable: {}",
        call(&report, 13)
    );

    let raw = report["raw"].as_array().expect("raw");
    assert_eq!(raw[0]["status"], 400, "malformed JSON: {}", raw[0]);
    assert!(
        raw[0]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("-32700"),
        "{}",
        raw[0]
    );
    assert_eq!(raw[1]["status"], 413, "oversized body: {}", raw[1]);
    // GET, POST(redacted) and the granted GET reached the web backend; the denied DELETE did not.
    assert_eq!(web_hits.load(Ordering::SeqCst) - hits_before, 3);

    // A caller with fewer rights sees fewer tools and is refused the others.
    let fewer = json!({"calls": [
        ["list_endpoints", {}],
        ["http_request", {"endpoint": "web", "method": "GET", "path": "/api/items"}],
        ["tickets__echo", {"text": "ops here"}],
    ]});
    let hits_before = web_hits.load(Ordering::SeqCst);
    let proxy = ops.http_proxy;
    let u = mcp_url.clone();
    let ops_report = tokio::task::spawn_blocking(move || run_agent(proxy, &u, fewer))
        .await
        .expect("ops agent");
    let ops_tools: Vec<&str> = ops_report["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(ops_tools.len() < tools.len(), "{ops_tools:?} vs {tools:?}");
    assert!(
        !ops_report["calls"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("\"web\"")
    );
    let refused = &ops_report["calls"][1];
    assert!(
        refused["is_error"] == true || refused.get("exception").is_some(),
        "{refused}"
    );
    assert_eq!(
        web_hits.load(Ordering::SeqCst),
        hits_before,
        "denied call reached the backend"
    );
    assert_eq!(ops_report["calls"][2]["text"], "ops here");

    // No TCP socket listens on any host interface.
    let pid = conn.pid();
    assert!(
        listening_sockets(pid).is_empty(),
        "host listeners: {:?}",
        listening_sockets(pid)
    );

    assert!(conn.stopped().await.0.success());
    connector::assert_verifies(&audit_url, &[]);
    let dump = connector::run(&["audit", "export", "--jsonl", "--audit", &audit_url]);
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        !dump.contains(secret) && !dump.contains("A1b2C3d4E5f6"),
        "a secret reached the audit log"
    );
    assert!(
        dump.contains("github_token"),
        "findings are recorded by type"
    );
    assert!(
        dump.contains("mcp_tool_call") && dump.contains("mcp_initialize"),
        "tool calls audited"
    );
}

async fn wait_reachable(peer: &Tailscaled, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = peer.cli(&["ping", "--c=1", "--timeout=2s", "--tsmp", host]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} unreachable from peer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
