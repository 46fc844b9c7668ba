//! Tests of the MCP endpoint without a tailnet: the device is served on
//! loopback listeners created by the test, one listener per fake caller,
//! and driven with rmcp's client and with raw HTTP.

mod calls;
mod federation;
mod front;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService, ServiceError, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::audit::{AuditLog, Filter, StoredRecord, query, verify};
use crate::backend::pin;
use crate::identity::Caller;
use crate::policy::Policy;

use super::{McpState, UpstreamStatus, serve_connection};
use support::{Backend, free_port, spawn_upstream};

/// A caller with a user login (or none) and tags.
pub fn caller(node_id: &str, user: Option<&str>, tags: &[&str]) -> Caller {
    Caller {
        addr: "100.64.0.9:40000".parse().expect("valid address"),
        node_id: node_id.to_owned(),
        node: format!("{node_id}.tail.example"),
        user: user.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        capabilities: BTreeMap::new(),
    }
}

/// The MCP device under test with its backends.
pub struct Harness {
    pub state: Arc<McpState>,
    pub audit: AuditLog,
    pub audit_url: String,
    _dir: TempDir,
    /// Ports served as alice (user, sees everything), bot (tag:agent,
    /// fewer rights) and eve (not allowed on the MCP device).
    pub alice: u16,
    pub bot: u16,
    pub eve: u16,
    /// The `web` backend (secrets redacted).
    pub web: Backend,
    /// The `vault` backend (secrets blocked, alice only).
    pub vault: Backend,
    /// Port the `late` upstream will listen on once started.
    pub late_port: u16,
}

/// Extra `[mcp]` lines, e.g. rate limits.
pub async fn start(mcp_extra: &str) -> Harness {
    let web = Backend::spawn().await;
    let vault = Backend::spawn().await;
    let up_port = spawn_upstream(None).await;
    let down_port = free_port();
    let late_port = free_port();
    let source = format!(
        r#"
[tailnet]
control_url = "http://127.0.0.1:1"
auth_key_env = "PORTCULLIS_TEST_KEY"
state_dir = "/tmp/portcullis-mcp-test"

[mcp]
allow = ["user:alice@example.com", "tag:agent"]
max_body_bytes = 4096
{mcp_extra}

[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:{web}"
allow = ["user:alice@example.com", "tag:agent"]
description = "Web app"

[endpoint.http]
methods = ["GET", "POST"]
paths = ["/api/**"]
identity_headers = true
max_response_bytes = 1024
timeout_ms = 2000

[[endpoint]]
name = "vault"
kind = "http"
target = "127.0.0.1:{vault}"
allow = ["user:alice@example.com"]

[endpoint.http]
methods = ["POST"]

[endpoint.inspect]
secrets = "block"

[[endpoint]]
name = "up"
kind = "mcp"
target = "127.0.0.1:{up_port}"
allow = ["user:alice@example.com"]

[endpoint.mcp]
tools_allow = ["*"]
tools_deny = ["delete_*"]
timeout_ms = 500

[[endpoint]]
name = "down"
kind = "mcp"
target = "127.0.0.1:{down_port}"
allow = ["user:alice@example.com"]

[endpoint.mcp]
tools_allow = ["*"]
timeout_ms = 500

[[endpoint]]
name = "late"
kind = "mcp"
target = "127.0.0.1:{late_port}"
allow = ["user:alice@example.com"]

[endpoint.mcp]
tools_allow = ["echo"]
timeout_ms = 500
"#,
        web = web.port,
        vault = vault.port,
    );
    let config = crate::config::parse(&source, "test.toml").expect("test config is valid");
    let mut pinned = HashMap::new();
    for e in &config.endpoints {
        pinned.insert(e.name.clone(), pin(&e.target).await.expect("pin"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (audit, _task) = AuditLog::open(&audit_url, "mcp-test", 4096)
        .await
        .expect("audit log");
    audit.set_fingerprint(&config.fingerprint);
    let policy = Arc::new(ArcSwap::from_pointee(Policy::from_config(&config)));
    let state = McpState::new(
        &config,
        policy,
        pinned,
        audit.clone(),
        vec!["mcp".into(), "mcp.tail.example".into(), "127.0.0.1".into()],
    )
    .expect("state");
    state.start_federation();
    let alice = serve_as(&state, caller("n-alice", Some("alice@example.com"), &[])).await;
    let bot = serve_as(&state, caller("n-bot", None, &["tag:agent"])).await;
    let eve = serve_as(&state, caller("n-eve", Some("eve@example.com"), &[])).await;
    let harness = Harness {
        state,
        audit,
        audit_url,
        _dir: dir,
        alice,
        bot,
        eve,
        web,
        vault,
        late_port,
    };
    harness.wait_upstream("up").await;
    harness
}

/// Accepts loopback connections and serves each as `who`.
async fn serve_as(state: &Arc<McpState>, who: Caller) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::clone(state);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(Arc::clone(&state), stream, who.clone()));
        }
    });
    port
}

impl Harness {
    /// Waits (up to 10 s) until `endpoint`'s upstream is connected.
    pub async fn wait_upstream(&self, endpoint: &str) {
        for _ in 0..200 {
            let ready = self
                .state
                .upstream_status()
                .into_iter()
                .any(|(name, s)| name == endpoint && matches!(s, UpstreamStatus::Ready { .. }));
            if ready {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "upstream {endpoint} never connected: {:?}",
            self.state.upstream_status()
        );
    }

    /// Every record written so far, in chain order.
    pub async fn records(&self) -> Vec<StoredRecord> {
        self.audit.flush().await.expect("flush");
        let mut records = query(&self.audit_url, &Filter::default())
            .await
            .expect("query");
        records.sort_by_key(|r| r.seq);
        records
    }

    /// Stops the device, shuts the log down and checks the chain.
    pub async fn finish(self) {
        self.state.shutdown();
        self.audit.shutdown().await.expect("audit shutdown");
        let report = verify(&self.audit_url, None).await.expect("verify");
        assert!(report.ok, "audit chain broken: {:?}", report.first_bad);
        assert!(report.records > 1);
    }
}

/// An rmcp client connected to the device on `port`.
pub async fn client(port: u16) -> RunningService<RoleClient, ()> {
    try_client(port).await.expect("initialize")
}

/// An rmcp client, or the initialize error.
pub async fn try_client(port: u16) -> Result<RunningService<RoleClient, ()>, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client");
    let transport = StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(format!("http://127.0.0.1:{port}/mcp")),
    );
    ().serve(transport).await.map_err(|e| e.to_string())
}

/// Calls `name` with `args` (a JSON object).
pub async fn call(
    client: &RunningService<RoleClient, ()>,
    name: &str,
    args: Value,
) -> Result<CallToolResult, ServiceError> {
    let mut params = CallToolRequestParams::new(name.to_owned());
    if let Value::Object(map) = args {
        params = params.with_arguments(map);
    }
    client.call_tool(params).await
}

/// A tool result as JSON: `content`, `structuredContent`, `isError`.
pub fn as_json(result: &CallToolResult) -> Value {
    serde_json::to_value(result).expect("result serializes")
}

/// The text of the first content block.
pub fn first_text(result: &CallToolResult) -> String {
    as_json(result)["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Names of the tools `client` sees.
pub async fn tool_names(client: &RunningService<RoleClient, ()>) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.into_owned())
        .collect();
    names.sort();
    names
}
