//! The HTTP front: host, path, access, body, JSON and session checks.

use serde_json::{Value, json};

use super::support::{initialize_body, raw};
use super::*;
use crate::audit::Kind;

fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"].clone()
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let h = start("").await;

    let (status, _, body) = raw(
        h.alice,
        "POST",
        "/mcp",
        &[],
        b"{\"jsonrpc\": \"2.0\", ".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&body)["code"], -32700);

    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
    let (status, _, body) = raw(h.alice, "POST", "/mcp", &[], big.into_bytes()).await;
    assert_eq!(status, 413);
    let error = error_of(&body);
    assert_eq!(error["code"], -32600);
    assert_eq!(
        error["message"],
        "request body exceeds the limit of 4096 bytes"
    );

    let (status, _, _) = raw(h.alice, "POST", "/other", &[], initialize_body()).await;
    assert_eq!(status, 404);
    // Nobody is in `metrics_allow` here.
    let (status, _, body) = raw(h.alice, "GET", "/metrics", &[], Vec::new()).await;
    assert_eq!(status, 403);
    assert_eq!(error_of(&body)["data"]["reason"], "metrics_not_allowed");

    let (status, _, body) = raw(
        h.alice,
        "POST",
        "/mcp",
        &[("host", "evil.example")],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(error_of(&body)["data"]["reason"], "host_not_allowed");
    let (status, _, _) = raw(
        h.alice,
        "POST",
        "/mcp",
        &[("host", "mcp.tail.example")],
        initialize_body(),
    )
    .await;
    assert_eq!(status, 200);

    // Unknown tool: a JSON-RPC invalid-params error.
    let alice = client(h.alice).await;
    let err = call(&alice, "no_such_tool", json!({})).await.unwrap_err();
    match err {
        ServiceError::McpError(e) => {
            assert_eq!(e.code.0, -32602);
            assert_eq!(e.message, "unknown tool: no_such_tool");
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = call(&alice, "http_request", json!({"endpoint": "web"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::McpError(ref e) if e.code.0 == -32602),
        "{err:?}"
    );

    // The refused metrics read is recorded with its path.
    let records = h.records().await;
    let metrics = records
        .iter()
        .find(|r| r.record.reason.as_deref() == Some("metrics_not_allowed"))
        .expect("metrics refusal record");
    assert_eq!(metrics.record.kind, Kind::ConnectionDenied);
    assert_eq!(metrics.record.path.as_deref(), Some("/metrics"));
    h.finish().await;
}

#[tokio::test]
async fn callers_outside_the_mcp_allow_list_are_refused_and_audited() {
    let h = start("").await;
    let (status, _, body) = raw(h.eve, "POST", "/mcp", &[], initialize_body()).await;
    assert_eq!(status, 403);
    let error = error_of(&body);
    assert_eq!(error["code"], -32001);
    assert_eq!(error["data"]["reason"], "mcp_not_allowed");
    assert!(try_client(h.eve).await.is_err());

    let records = h.records().await;
    let denied = records
        .iter()
        .find(|r| r.record.kind == Kind::ConnectionDenied)
        .expect("denied record");
    assert_eq!(denied.record.reason.as_deref(), Some("mcp_not_allowed"));
    assert_eq!(denied.record.path.as_deref(), Some("/mcp"));
    assert_eq!(
        denied.record.caller.as_ref().map(|c| c.node_id.as_str()),
        Some("n-eve")
    );
    h.finish().await;
}

#[tokio::test]
async fn a_session_is_bound_to_the_caller_that_created_it() {
    let h = start("").await;
    let (status, headers, _) = raw(h.alice, "POST", "/mcp", &[], initialize_body()).await;
    assert_eq!(status, 200);
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let with_session = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];

    let (status, _, _) = raw(
        h.alice,
        "POST",
        "/mcp",
        &with_session,
        initialized.into_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, body) = raw(
        h.alice,
        "POST",
        "/mcp",
        &with_session,
        list.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("up__echo"), "{body}");

    // The same session from another caller's connection does not exist.
    let (status, _, body) = raw(
        h.bot,
        "POST",
        "/mcp",
        &with_session,
        list.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body)["code"], -32002);
    let (status, _, _) = raw(h.bot, "DELETE", "/mcp", &with_session, Vec::new()).await;
    assert_eq!(status, 404);
    // Alice's session is untouched by that attempt.
    let (status, _, _) = raw(h.alice, "POST", "/mcp", &with_session, list.into_bytes()).await;
    assert_eq!(status, 200);

    let records = h.records().await;
    let mismatches = records
        .iter()
        .filter(|r| r.record.reason.as_deref() == Some("session_caller_mismatch"))
        .count();
    assert_eq!(mismatches, 2);
    h.finish().await;
}
