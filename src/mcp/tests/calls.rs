//! Built-in tools, `http_request`, inspection and rate limits.

use serde_json::{Value, json};

use super::support::fake_token;
use super::*;
use crate::audit::{FindingAction, Kind};

#[tokio::test]
async fn tools_and_identity_differ_per_caller() {
    let h = start("").await;
    let alice = client(h.alice).await;
    let bot = client(h.bot).await;

    let alice_tools = tool_names(&alice).await;
    assert_eq!(
        alice_tools,
        [
            "http_request",
            "list_endpoints",
            "up__echo",
            "up__inject",
            "up__leak",
            "up__slow",
            "whoami"
        ]
    );
    // delete_all matches tools_deny: hidden. The bot may not use `up`.
    assert_eq!(
        bot_tools(&bot).await,
        ["http_request", "list_endpoints", "whoami"]
    );

    let who = call(&bot, "whoami", json!({})).await.expect("whoami");
    let who = as_json(&who)["structuredContent"].clone();
    assert_eq!(who["node_id"], "n-bot");
    assert_eq!(who["tags"], json!(["tag:agent"]));
    assert_eq!(who["user"], Value::Null);
    assert_eq!(who["endpoints"], json!(["web"]));

    let listed = call(&alice, "list_endpoints", json!({}))
        .await
        .expect("list");
    let listed = as_json(&listed)["structuredContent"]["endpoints"].clone();
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["web", "vault", "up", "down", "late"]);
    assert_eq!(listed[0]["kind"], "http");
    assert_eq!(listed[0]["hostname"], "web");
    assert_eq!(listed[0]["description"], "Web app");
    assert_eq!(listed[2]["upstream"], "ready");
    assert_eq!(listed[3]["upstream"], "unavailable");

    let records = h.records().await;
    let kinds: Vec<Kind> = records.iter().map(|r| r.record.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == Kind::McpInitialize).count(),
        2
    );
    assert!(kinds.contains(&Kind::McpListTools));
    let whoami = records
        .iter()
        .find(|r| r.record.tool.as_deref() == Some("whoami"))
        .expect("whoami record");
    assert_eq!(
        whoami.record.caller.as_ref().map(|c| c.node_id.as_str()),
        Some("n-bot")
    );
    assert!(
        whoami
            .record
            .arg_digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert_eq!(whoami.record.status.as_deref(), Some("ok"));
    // Records of admitted MCP requests say what admitted the caller.
    assert_eq!(whoami.record.reason.as_deref(), Some("allowed_by_identity"));
    for r in records
        .iter()
        .filter(|r| matches!(r.record.kind, Kind::McpInitialize | Kind::McpListTools))
    {
        assert_eq!(
            r.record.reason.as_deref(),
            Some("allowed_by_identity"),
            "{r:?}"
        );
    }
    h.finish().await;
}

async fn bot_tools(bot: &RunningService<RoleClient, ()>) -> Vec<String> {
    tool_names(bot).await
}

#[tokio::test]
async fn http_request_reaches_the_pinned_backend_with_verified_identity() {
    let h = start("").await;
    let alice = client(h.alice).await;
    let result = call(
        &alice,
        "http_request",
        json!({
            "endpoint": "web", "method": "GET", "path": "/api/items",
            "query": {"q": "a b"},
            "headers": {"X-Portcullis-User": "mallory@example.com", "Tailscale-User-Login": "x", "Accept": "text/plain"}
        }),
    )
    .await
    .expect("call");
    assert_ne!(result.is_error, Some(true), "{}", first_text(&result));
    let out = as_json(&result)["structuredContent"].clone();
    assert_eq!(out["status"], 200);
    assert_eq!(out["truncated"], false);
    assert_eq!(out["body_encoding"], "text");
    let body: Value = serde_json::from_str(out["body"].as_str().unwrap_or("")).expect("json body");
    assert_eq!(body["path"], "/api/items");

    let seen = h.web.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].uri, "/api/items?q=a%20b");
    assert_eq!(seen[0].headers["x-portcullis-user"], "alice@example.com");
    assert_eq!(seen[0].headers["x-portcullis-node"], "n-alice.tail.example");
    assert!(seen[0].headers.get("tailscale-user-login").is_none());
    assert_eq!(seen[0].headers["accept"], "text/plain");
    assert_eq!(seen[0].headers["host"], format!("127.0.0.1:{}", h.web.port));

    // A redirect comes back as it is; nothing follows it.
    let result = call(
        &alice,
        "http_request",
        json!({"endpoint": "web", "method": "GET", "path": "/api/redirect"}),
    )
    .await
    .expect("call");
    let out = as_json(&result)["structuredContent"].clone();
    assert_eq!(out["status"], 302);
    assert_eq!(out["headers"]["location"], "http://elsewhere.invalid/");
    assert_eq!(h.web.seen().len(), 2);

    // Large bodies are cut at max_response_bytes and flagged.
    let result = call(
        &alice,
        "http_request",
        json!({"endpoint": "web", "method": "GET", "path": "/api/big"}),
    )
    .await
    .expect("call");
    let out = as_json(&result)["structuredContent"].clone();
    assert_eq!(out["truncated"], true);
    assert_eq!(out["body"].as_str().map(str::len), Some(1024));

    let result = call(
        &alice,
        "http_request",
        json!({"endpoint": "web", "method": "GET", "path": "/api/binary"}),
    )
    .await
    .expect("call");
    assert_eq!(
        as_json(&result)["structuredContent"]["body_encoding"],
        "base64"
    );

    let records = h.records().await;
    let record = records
        .iter()
        .find(|r| {
            r.record.kind == Kind::McpToolCall && r.record.tool.as_deref() == Some("http_request")
        })
        .expect("record");
    assert_eq!(record.record.endpoint.as_deref(), Some("web"));
    assert_eq!(record.record.method.as_deref(), Some("GET"));
    assert_eq!(record.record.path.as_deref(), Some("/api/items"));
    assert_eq!(record.record.status.as_deref(), Some("ok"));
    assert!(record.record.latency_us.is_some());
    h.finish().await;
}

#[tokio::test]
async fn denied_requests_never_reach_the_backend() {
    let h = start("").await;
    let alice = client(h.alice).await;
    let bot = client(h.bot).await;
    let cases = [
        (
            &alice,
            json!({"endpoint": "web", "method": "DELETE", "path": "/api/items"}),
            "method_not_allowed",
        ),
        (
            &alice,
            json!({"endpoint": "web", "method": "GET", "path": "/admin"}),
            "path_not_allowed",
        ),
        (
            &alice,
            json!({"endpoint": "web", "method": "GET", "path": "/api/../admin"}),
            "malformed_path",
        ),
        (
            &bot,
            json!({"endpoint": "vault", "method": "POST", "path": "/x"}),
            "not_in_allow_list",
        ),
        (
            &alice,
            json!({"endpoint": "nope", "method": "GET", "path": "/"}),
            "unknown_endpoint",
        ),
        (
            &alice,
            json!({"endpoint": "up", "method": "GET", "path": "/"}),
            "wrong_kind",
        ),
    ];
    for (who, args, code) in cases {
        let result = call(who, "http_request", args.clone()).await.expect("call");
        assert_eq!(result.is_error, Some(true), "{args}");
        let text = first_text(&result);
        assert!(
            text.starts_with("denied: ") && text.contains(code),
            "{args}: {text}"
        );
    }
    assert!(h.web.seen().is_empty());
    assert!(h.vault.seen().is_empty());

    let records = h.records().await;
    let denied: Vec<&str> = records
        .iter()
        .filter(|r| r.record.kind == Kind::McpToolCall)
        .filter(|r| r.record.decision == Some(crate::audit::Decision::Deny))
        .filter_map(|r| r.record.reason.as_deref())
        .collect();
    assert_eq!(denied.len(), 6, "{denied:?}");
    assert!(denied.contains(&"method_not_allowed"));
    // A call refused before its request is decided still records it.
    let refused = records
        .iter()
        .find(|r| r.record.reason.as_deref() == Some("not_in_allow_list"))
        .expect("not_in_allow_list record");
    assert_eq!(refused.record.method.as_deref(), Some("POST"));
    assert_eq!(refused.record.path.as_deref(), Some("/x"));
    h.finish().await;
}

#[tokio::test]
async fn secrets_in_arguments_are_redacted_or_blocked_and_never_logged() {
    let h = start("").await;
    let alice = client(h.alice).await;
    let token = fake_token();
    let body = format!("deploy with {token}");

    let result = call(
        &alice,
        "http_request",
        json!({"endpoint": "web", "method": "POST", "path": "/api/deploy", "body": body}),
    )
    .await
    .expect("call");
    assert_ne!(result.is_error, Some(true), "{}", first_text(&result));
    let seen = h.web.seen();
    assert_eq!(seen[0].body, "deploy with [REDACTED:github_token]");

    let result = call(
        &alice,
        "http_request",
        json!({"endpoint": "vault", "method": "POST", "path": "/store", "body": body}),
    )
    .await
    .expect("call");
    assert_eq!(result.is_error, Some(true));
    let text = first_text(&result);
    assert!(
        text.starts_with("blocked: secret of type github_token in arguments at \"/body\""),
        "{text}"
    );
    assert!(!text.contains(&token));
    assert!(h.vault.seen().is_empty());

    let records = h.records().await;
    let calls: Vec<_> = records
        .iter()
        .filter(|r| r.record.kind == Kind::McpToolCall)
        .collect();
    assert_eq!(calls.len(), 2);
    let redacted = &calls[0].record.findings;
    assert_eq!(redacted.len(), 1);
    assert_eq!(redacted[0].kind, "github_token");
    assert_eq!(redacted[0].location, "/arguments/body");
    assert_eq!(redacted[0].action, FindingAction::Redacted);
    assert_eq!(calls[1].record.findings[0].action, FindingAction::Blocked);
    assert_eq!(calls[1].record.status.as_deref(), Some("blocked"));
    // The digest is of the arguments as sent; the value itself is nowhere.
    for r in &records {
        let text = serde_json::to_string(&r.record).expect("json");
        assert!(!text.contains(&token), "secret in audit record {}", r.seq);
    }
    h.finish().await;
}

#[tokio::test]
async fn rate_limits_refuse_with_a_tool_error_and_an_audit_record() {
    let h = start("[mcp.rate_limit]\nper_caller = \"5/h\"\nper_tool = \"3/h\"").await;
    let bot = client(h.bot).await;
    for _ in 0..3 {
        let r = call(&bot, "whoami", json!({})).await.expect("call");
        assert_ne!(r.is_error, Some(true));
    }
    let r = call(&bot, "whoami", json!({})).await.expect("call");
    assert_eq!(r.is_error, Some(true));
    let text = first_text(&r);
    assert!(
        text.starts_with("rate limited: per_tool limit 3/h exceeded"),
        "{text}"
    );
    // Another tool still has per-caller tokens left (2 of 5).
    for _ in 0..2 {
        let r = call(&bot, "list_endpoints", json!({})).await.expect("call");
        assert_ne!(r.is_error, Some(true));
    }
    let r = call(&bot, "list_endpoints", json!({})).await.expect("call");
    assert!(first_text(&r).starts_with("rate limited: per_caller limit 5/h"));
    // `per_tool` is shared by every caller: `whoami` is spent for alice
    // too, while her own per-caller budget is untouched.
    let alice = client(h.alice).await;
    let r = call(&alice, "whoami", json!({})).await.expect("call");
    assert!(first_text(&r).starts_with("rate limited: per_tool limit 3/h"));
    let r = call(&alice, "list_endpoints", json!({}))
        .await
        .expect("call");
    assert_ne!(r.is_error, Some(true));

    let records = h.records().await;
    let limited: Vec<_> = records
        .iter()
        .filter(|r| r.record.kind == Kind::RateLimited)
        .collect();
    assert_eq!(limited.len(), 3);
    assert_eq!(limited[0].record.tool.as_deref(), Some("whoami"));
    assert_eq!(
        limited[0].record.detail.as_deref(),
        Some("per_tool limit 3/h")
    );
    h.finish().await;
}
