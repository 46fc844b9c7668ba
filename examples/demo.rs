//! The end-to-end demo behind `scripts/demo`: a local tailnet on loopback
//! (headscale), sample backends (a web API, PostgreSQL, a ticket MCP
//! server), the connector on `examples/endpoints.toml`, and two agents on
//! the tailnet: one allowed, one not. Ends by printing the audit trail.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::connector::{self, Connector};
use common::postgres::Postgres;
use portcullis::tailnet::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEMO_DIR: &str = "/tmp/portcullis-demo";

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(demo());
}

async fn demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("examples/endpoints.toml");
    let _ = std::fs::remove_dir_all(DEMO_DIR);
    std::fs::create_dir_all(DEMO_DIR).expect("demo dir");

    step("local tailnet: headscale on 127.0.0.1:18080 (embedded DERP, policy with tag owners)");
    let hs = common::Headscale::start_on(18080, &common::headscale::default_policy());
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let intruder_key = hs.auth_key(admin, &["tag:intruder"]);

    step("sample backends: web API :18000, PostgreSQL :15432, ticket MCP server :18001");
    let pg = tokio::task::spawn_blocking(|| Postgres::start_on(15432))
        .await
        .expect("postgres");
    seed_postgres(&pg.url).await;
    tokio::spawn(web_api(18000));
    let python = root.join(".venv/bin/python");
    let _tickets = Command::new(&python)
        .arg(root.join("tests/python/tickets.py"))
        .arg("18001")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("start the ticket MCP server (run scripts/setup first)");

    step(&format!("connector: portcullis run {}", file.display()));
    let audit_url = format!("sqlite://{DEMO_DIR}/audit.db");
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let mut conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    for line in conn.output().lines().filter(|l| !l.contains("DEBUG")) {
        println!("  | {line}");
    }

    step("agents join the tailnet: `agent` (tag:agent) and `intruder` (tag:intruder)");
    let (agent, intruder) = tokio::join!(
        common::node(&hs, "agent", &agent_key),
        common::node(&hs, "intruder", &intruder_key)
    );

    step("agent -> web: GET /api/v1/items (allowed)");
    show(http(&agent, "web", "GET", "/api/v1/items", "").await);
    step("agent -> web: DELETE /api/v1/items (method not on the list)");
    show(http(&agent, "web", "DELETE", "/api/v1/items", "").await);
    step("agent -> postgres: SELECT over the tailnet");
    let fwd = forward(agent.clone(), "postgres:5432").await;
    let url = format!("postgres://portcullis@127.0.0.1:{fwd}/postgres");
    let mut pgc = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("postgres via tailnet");
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT name, stock FROM inventory ORDER BY name")
            .fetch_all(&mut pgc)
            .await
            .expect("query");
    println!("  {rows:?}");
    drop(pgc);

    step("agent -> mcp: initialize, tools/list, tools/call (MCP Streamable HTTP over the tailnet)");
    let mut mcp = McpClient::new(agent.clone());
    let init = mcp.call("initialize", serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "demo-agent", "version": "1"}})).await;
    println!("  server: {}", init["result"]["serverInfo"]);
    mcp.notify("notifications/initialized").await;
    let tools = mcp.call("tools/list", serde_json::json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    println!("  tools: {names:?}");
    for (tool, args) in [
        (
            "tickets__search_tickets",
            serde_json::json!({"query": "printer"}),
        ),
        (
            "tickets__get_ticket",
            serde_json::json!({"ticket_id": "T-2"}),
        ),
        (
            "tickets__delete_ticket",
            serde_json::json!({"ticket_id": "T-1"}),
        ),
        (
            "http_request",
            serde_json::json!({"endpoint": "web", "method": "GET", "path": "/api/v1/items"}),
        ),
    ] {
        let r = mcp
            .call(
                "tools/call",
                serde_json::json!({"name": tool, "arguments": args}),
            )
            .await;
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| r["error"].to_string());
        println!(
            "  {tool}: {}",
            text.chars()
                .take(160)
                .collect::<String>()
                .replace('\n', " ")
        );
    }

    step("intruder -> web and postgres (not in any allow list): refused, backend never contacted");
    show(http(&intruder, "web", "GET", "/api/v1/items", "").await);
    match intruder
        .dial("postgres:5432", Duration::from_secs(10))
        .await
    {
        Ok(mut s) => {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            println!(
                "  postgres: connection closed by the connector ({} bytes)",
                buf.len()
            );
        }
        Err(e) => println!("  postgres: {e}"),
    }
    step("the tailnet's devices: exactly the file's, plus the two agents");
    let nodes = hs.cli(&["nodes", "list"]);
    let names: Vec<&str> = nodes
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["given_name"].as_str()).collect())
        .unwrap_or_default();
    println!("  {names:?}");

    step("stop the connector (SIGTERM), then the audit trail");
    let status = tokio::task::spawn_blocking(move || conn.stop())
        .await
        .expect("stop");
    println!("  connector exited: {status}");
    let query = connector::run(&["audit", "query", "--audit", &audit_url]);
    print!("{}", String::from_utf8_lossy(&query.stdout));
    let verify = connector::run(&["audit", "verify", "--audit", &audit_url]);
    print!("{}", String::from_utf8_lossy(&verify.stdout));
    eprint!("{}", String::from_utf8_lossy(&verify.stderr));
    println!(
        "\naudit log kept at {DEMO_DIR}/audit.db (try: portcullis audit query --audit {audit_url} --json)"
    );
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn show((status, body): (u16, String)) {
    let body = body.trim().chars().take(200).collect::<String>();
    if status == 0 {
        println!("  no HTTP answer: connection refused by the connector");
    } else {
        println!("  HTTP {status}: {body}");
    }
}

async fn seed_postgres(url: &str) {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .expect("postgres");
    for sql in [
        "CREATE TABLE inventory (name text PRIMARY KEY, stock int NOT NULL)",
        "INSERT INTO inventory VALUES ('bolts', 1200), ('nuts', 800), ('washers', 50)",
    ] {
        sqlx::query(sql).execute(&mut c).await.expect("seed");
    }
}

/// A tiny JSON API on 127.0.0.1:port.
async fn web_api(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind web API port 18000");
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let user = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("x-portcullis-tags:")
                        .map(|v| v.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".into());
            let body = format!(r#"{{"items":["bolts","nuts","washers"],"asked_by":"{user}"}}"#);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

async fn http(node: &Node, device: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    let Ok(mut s) = node
        .dial(&format!("{device}:80"), Duration::from_secs(30))
        .await
    else {
        return (0, String::new());
    };
    let req =
        format!("{method} {path} HTTP/1.1\r\nhost: {device}\r\n{headers}connection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp).await;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

async fn forward(node: Node, target: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut local, _)) = listener.accept().await {
            let node = node.clone();
            tokio::spawn(async move {
                if let Ok(mut remote) = node.dial(target, Duration::from_secs(30)).await {
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                }
            });
        }
    });
    port
}

/// A minimal MCP Streamable HTTP client over one tailnet connection per request.
struct McpClient {
    node: Node,
    session: Option<String>,
    next_id: u64,
}

impl McpClient {
    fn new(node: Node) -> Self {
        McpClient {
            node,
            session: None,
            next_id: 1,
        }
    }

    async fn post(&mut self, body: serde_json::Value) -> serde_json::Value {
        let body = body.to_string();
        let session = self
            .session
            .as_ref()
            .map(|s| format!("mcp-session-id: {s}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: mcp\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-06-18\r\n{session}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = self
            .node
            .dial("mcp:80", Duration::from_secs(30))
            .await
            .expect("dial mcp");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp).await;
        let resp = String::from_utf8_lossy(&resp).to_string();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        if let Some(id) = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("mcp-session-id:")
                .then(|| l[15..].trim().to_string())
        }) {
            self.session = Some(id);
        }
        // The answer is JSON or one SSE event (possibly chunked); take the JSON object in it.
        body.lines()
            .filter_map(|l| l.strip_prefix("data:").map(str::trim).or(Some(l.trim())))
            .find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .filter(|v| v.is_object())
            })
            .unwrap_or(serde_json::Value::Null)
    }

    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        self.post(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .await
    }

    async fn notify(&mut self, method: &str) {
        self.post(serde_json::json!({"jsonrpc": "2.0", "method": method}))
            .await;
    }
}
