//! `serve_http` over an in-memory duplex against a real loopback HTTP
//! backend (which echoes what it received) and a real SQLite audit log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use super::test_support::{Backend, Harness, caller, config, dead_addr, http_backend, of_kind};
use super::{DeviceCtx, serve_http};
use crate::audit::{Decision, Kind};
use crate::identity::Caller;

fn web_config(addr: std::net::SocketAddr, identity_headers: bool) -> crate::config::Config {
    config(&format!(
        r#"
[[endpoint]]
name = "web"
kind = "http"
target = "{addr}"
ports = [80]
allow = ["user:alice@example.com", "tag:agent"]
connect_timeout_ms = 2000

[endpoint.http]
methods = ["GET", "HEAD"]
paths = ["/api/**", "/slow"]
identity_headers = {identity_headers}
timeout_ms = 300
"#
    ))
}

fn alice() -> Caller {
    caller(Some("alice@example.com"), &[])
}

/// A client connection to a device serving `caller`.
async fn connect(
    ctx: &Arc<DeviceCtx>,
    caller: Caller,
) -> (SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let ctx = Arc::clone(ctx);
    let served = tokio::spawn(async move { serve_http(&ctx, server_io, caller, 80).await });
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, served)
}

/// Sends one request; returns the status and the JSON body.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new())).expect("request");
    sender.ready().await.expect("ready");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

async fn close(sender: SendRequest<Full<Bytes>>, served: JoinHandle<()>) {
    drop(sender);
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("handler ends when the caller hangs up")
        .expect("handler");
}

async fn setup(identity_headers: bool) -> (Backend, Harness, Arc<DeviceCtx>) {
    let backend = http_backend().await;
    let h = Harness::new(web_config(backend.addr, identity_headers)).await;
    let ctx = h.ctx("web").await;
    (backend, h, ctx)
}

#[tokio::test]
async fn allowed_get_passes_with_verified_identity_and_spoofs_stripped() {
    let (backend, h, ctx) = setup(true).await;
    let (mut sender, served) = connect(&ctx, alice()).await;
    let spoofs = [
        ("x-portcullis-user", "admin"),
        ("X-Portcullis-Tags", "tag:admin"),
        ("tailscale-user-login", "admin@example.com"),
    ];
    let (status, echo) = send(&mut sender, "GET", "/api/items?token=secret", &spoofs).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/api/items?token=secret");
    let headers = &echo["headers"];
    assert_eq!(headers["x-portcullis-user"], "alice@example.com");
    assert_eq!(headers["x-portcullis-node"], "agent-box.tail.example");
    // Alice's node has no tags, so none are asserted, spoofed or not.
    assert!(headers.get("x-portcullis-tags").is_none(), "{headers}");
    assert!(headers.get("tailscale-user-login").is_none(), "{headers}");
    assert_eq!(headers["host"], backend.addr.to_string());

    // Keep-alive: a second request reuses both connections.
    let (status, _) = send(&mut sender, "HEAD", "/api/items", &[]).await;
    assert_eq!(status, StatusCode::OK);
    close(sender, served).await;
    assert_eq!(backend.connections(), 1);

    let records = h.finish().await;
    let requests = of_kind(&records, Kind::HttpRequest);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method.as_deref(), Some("GET"));
    // The query string never reaches the audit log.
    assert_eq!(requests[0].path.as_deref(), Some("/api/items"));
    assert_eq!(requests[0].status.as_deref(), Some("200"));
    assert_eq!(requests[0].decision, Some(Decision::Permit));
    assert_eq!(requests[0].device.as_deref(), Some("web"));
    assert!(requests[0].latency_us.is_some());
    // The connection's port, so the request can be replayed with it.
    assert_eq!(requests[0].extra["port"], 80);
    assert_eq!(of_kind(&records, Kind::ConnectionOpen).len(), 1);
    let close = of_kind(&records, Kind::ConnectionClose);
    assert_eq!(close.len(), 1);
    assert!(close[0].bytes_up.is_some_and(|b| b > 0));
    assert!(close[0].bytes_down.is_some_and(|b| b > 0));
    assert_eq!(close[0].status.as_deref(), Some("ok"));
}

#[tokio::test]
async fn spoofed_identity_never_reaches_a_backend_without_identity_headers() {
    let (_backend, h, ctx) = setup(false).await;
    let (mut sender, served) = connect(&ctx, caller(None, &["tag:agent"])).await;
    let (status, echo) = send(
        &mut sender,
        "GET",
        "/api/x",
        &[("X-Portcullis-User", "admin"), ("Tailscale-Node", "root")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let headers = echo["headers"].as_object().expect("headers");
    assert!(
        headers
            .keys()
            .all(|k| !k.starts_with("x-portcullis-") && !k.starts_with("tailscale-")),
        "{headers:?}"
    );
    close(sender, served).await;
    h.finish().await;
}

#[tokio::test]
async fn methods_and_paths_off_the_lists_get_403_and_never_reach_the_backend() {
    let (backend, h, ctx) = setup(true).await;
    let (mut sender, served) = connect(&ctx, alice()).await;
    let (status, body) = send(&mut sender, "POST", "/api/items", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "method_not_allowed");
    let (status, body) = send(&mut sender, "GET", "/admin/users", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "path_not_allowed");
    let (status, body) = send(&mut sender, "GET", "/api/../admin", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "malformed_path");
    close(sender, served).await;
    assert_eq!(backend.connections(), 0);

    let records = h.finish().await;
    let reasons: Vec<_> = of_kind(&records, Kind::HttpRequest)
        .iter()
        .map(|r| (r.decision, r.reason.clone(), r.status.clone()))
        .collect();
    let deny = |reason: &str| {
        (
            Some(Decision::Deny),
            Some(reason.to_owned()),
            Some("403".to_owned()),
        )
    };
    assert_eq!(
        reasons,
        vec![
            deny("method_not_allowed"),
            deny("path_not_allowed"),
            deny("malformed_path")
        ]
    );
}

#[tokio::test]
async fn caller_off_the_allow_list_is_refused_on_the_connection() {
    let (backend, h, ctx) = setup(true).await;
    let (mut sender, served) = connect(&ctx, caller(Some("mallory@example.com"), &[])).await;
    let (status, body) = send(&mut sender, "GET", "/api/items", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "not_in_allow_list");
    close(sender, served).await;
    assert_eq!(backend.connections(), 0);

    let records = h.finish().await;
    assert!(of_kind(&records, Kind::ConnectionOpen).is_empty());
    let denied = of_kind(&records, Kind::ConnectionDenied);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].reason.as_deref(), Some("not_in_allow_list"));
    let requests = of_kind(&records, Kind::HttpRequest);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status.as_deref(), Some("403"));
}

#[tokio::test]
async fn backend_down_is_a_502_naming_the_reason() {
    let h = Harness::new(web_config(dead_addr(), true)).await;
    let ctx = h.ctx("web").await;
    let (mut sender, served) = connect(&ctx, alice()).await;
    let (status, body) = send(&mut sender, "GET", "/api/items", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["reason"], "backend_unreachable");
    close(sender, served).await;

    let records = h.finish().await;
    let requests = of_kind(&records, Kind::HttpRequest);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].reason.as_deref(), Some("backend_unreachable"));
    assert_eq!(requests[0].status.as_deref(), Some("502"));
    assert_eq!(requests[0].decision, Some(Decision::Permit));
}

#[tokio::test]
async fn slow_backend_is_a_504_and_the_next_request_still_works() {
    let (backend, h, ctx) = setup(true).await;
    let (mut sender, served) = connect(&ctx, alice()).await;
    let (status, body) = send(&mut sender, "GET", "/slow", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["reason"], "backend_timeout");
    // The abandoned upstream connection is replaced.
    let (status, _) = send(&mut sender, "GET", "/api/after", &[]).await;
    assert_eq!(status, StatusCode::OK);
    close(sender, served).await;
    assert_eq!(backend.connections(), 2);

    let records = h.finish().await;
    let statuses: Vec<_> = of_kind(&records, Kind::HttpRequest)
        .iter()
        .map(|r| r.status.clone().unwrap_or_default())
        .collect();
    assert_eq!(statuses, vec!["504", "200"]);
}

#[tokio::test]
async fn draining_closes_an_idle_keep_alive_connection_at_once() {
    let (_backend, h, ctx) = setup(true).await;
    let (phase, phase_rx) = tokio::sync::watch::channel(super::Phase::Running);
    let ctx = Arc::new(Arc::unwrap_or_clone(ctx).with_phase(phase_rx));
    let (mut sender, served) = connect(&ctx, alice()).await;
    let (status, _) = send(&mut sender, "GET", "/api/items", &[]).await;
    assert_eq!(status, StatusCode::OK);

    // The caller keeps the connection open; draining must not wait for it.
    phase.send_replace(super::Phase::Draining);
    tokio::time::timeout(Duration::from_secs(2), served)
        .await
        .expect("idle connection closed on drain")
        .expect("handler");
    drop(sender);

    let records = h.finish().await;
    let close = of_kind(&records, Kind::ConnectionClose);
    assert_eq!(close.len(), 1);
    assert_eq!(close[0].status.as_deref(), Some("ok"));
}

#[tokio::test]
async fn plan_pins_every_target_makes_no_device_for_mcp_and_refuses_tls() {
    let plan = super::Plan::prepare(&config(
        r#"
[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:8080"

[[endpoint]]
name = "tickets"
kind = "mcp"
target = "127.0.0.1:8001"
"#,
    ))
    .await
    .expect("plan");
    assert_eq!(plan.hostnames(), vec!["web"]);
    assert_eq!(
        plan.pinned_json(),
        serde_json::json!({
            "tickets": {"target": "127.0.0.1:8001", "addrs": ["127.0.0.1:8001"]},
            "web": {"target": "127.0.0.1:8080", "addrs": ["127.0.0.1:8080"]},
        })
    );

    let err = super::Plan::prepare(&config(
        r#"
[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:8443"

[endpoint.http]
tls = true
"#,
    ))
    .await
    .expect_err("tls refused");
    assert_eq!(err.code(), "unsupported");
    assert!(err.to_string().contains("endpoint web"), "{err}");
}
