//! Federation of upstream MCP servers.

use serde_json::json;

use super::support::{fake_token, spawn_upstream};
use super::*;
use crate::audit::{FindingAction, Kind};

#[tokio::test]
async fn upstream_tools_are_namespaced_filtered_and_isolated() {
    let h = start("").await;
    let alice = client(h.alice).await;
    let bot = client(h.bot).await;

    let r = call(&alice, "up__echo", json!({"text": "hi"}))
        .await
        .expect("call");
    assert_ne!(r.is_error, Some(true), "{}", first_text(&r));
    assert_eq!(first_text(&r), "echo: hi");

    // Denied by tools_deny: hidden from tools/list and refused.
    let r = call(&alice, "up__delete_all", json!({}))
        .await
        .expect("call");
    assert_eq!(r.is_error, Some(true));
    assert!(first_text(&r).contains("tool_denied"), "{}", first_text(&r));

    // Not in the endpoint's allow list.
    let r = call(&bot, "up__echo", json!({"text": "hi"}))
        .await
        .expect("call");
    assert_eq!(r.is_error, Some(true));
    assert!(first_text(&r).contains("not_in_allow_list"));

    // An upstream that is down: a tool error, not a hang.
    let r = call(&alice, "down__echo", json!({})).await.expect("call");
    assert_eq!(r.is_error, Some(true));
    assert!(
        first_text(&r).contains("upstream_unavailable"),
        "{}",
        first_text(&r)
    );

    // A slow upstream call hits the per-call timeout (500 ms).
    let started = std::time::Instant::now();
    let r = call(&alice, "up__slow", json!({})).await.expect("call");
    assert_eq!(r.is_error, Some(true));
    assert!(
        first_text(&r).contains("backend_timeout"),
        "{}",
        first_text(&r)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    // ... and the other tools keep working.
    let r = call(&alice, "up__echo", json!({"text": "still"}))
        .await
        .expect("call");
    assert_eq!(first_text(&r), "echo: still");

    // A tool the upstream does not have is unknown.
    let err = call(&alice, "up__nothing", json!({})).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::McpError(ref e) if e.code.0 == -32602),
        "{err:?}"
    );

    let records = h.records().await;
    let denied = records
        .iter()
        .find(|r| r.record.tool.as_deref() == Some("up__delete_all"))
        .expect("record");
    assert_eq!(denied.record.endpoint.as_deref(), Some("up"));
    assert_eq!(denied.record.reason.as_deref(), Some("tool_denied"));
    let timeout = records
        .iter()
        .find(|r| r.record.tool.as_deref() == Some("up__slow"))
        .expect("record");
    assert_eq!(timeout.record.status.as_deref(), Some("timeout"));
    h.finish().await;
}

#[tokio::test]
async fn upstream_results_are_inspected() {
    let h = start("").await;
    let alice = client(h.alice).await;

    let r = call(&alice, "up__leak", json!({})).await.expect("call");
    let text = first_text(&r);
    assert_eq!(text, "here is the deploy key [REDACTED:github_token]");

    let r = call(&alice, "up__inject", json!({})).await.expect("call");
    assert_ne!(r.is_error, Some(true));
    let content = as_json(&r)["content"].clone();
    let notice = content[0]["text"].as_str().unwrap_or_default();
    assert!(
        notice.contains("prompt injection (ignore_previous_instructions)"),
        "{notice}"
    );
    assert!(
        content[1]["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Ignore all previous")
    );

    let records = h.records().await;
    let leak = records
        .iter()
        .find(|r| r.record.tool.as_deref() == Some("up__leak"))
        .expect("record");
    assert_eq!(leak.record.findings[0].kind, "github_token");
    assert_eq!(leak.record.findings[0].location, "/result/content/0/text");
    assert_eq!(leak.record.findings[0].action, FindingAction::Redacted);
    let inject = records
        .iter()
        .find(|r| r.record.tool.as_deref() == Some("up__inject"))
        .expect("record");
    assert_eq!(inject.record.findings[0].action, FindingAction::Flagged);
    for r in &records {
        let json = serde_json::to_string(&r.record).expect("json");
        assert!(!json.contains(&fake_token()));
    }
    assert!(records.iter().any(|r| r.record.kind == Kind::McpToolCall));
    h.finish().await;
}

#[tokio::test]
async fn an_upstream_down_at_start_appears_once_reachable() {
    let h = start("").await;
    let alice = client(h.alice).await;
    assert!(!tool_names(&alice).await.contains(&"late__echo".to_owned()));
    let r = call(&alice, "late__echo", json!({"text": "x"}))
        .await
        .expect("call");
    assert!(first_text(&r).contains("upstream_unavailable"));

    spawn_upstream(Some(h.late_port)).await;
    h.wait_upstream("late").await;
    let names = tool_names(&alice).await;
    // tools_allow = ["echo"] on `late`.
    assert!(names.contains(&"late__echo".to_owned()), "{names:?}");
    assert!(!names.contains(&"late__slow".to_owned()), "{names:?}");
    let r = call(&alice, "late__echo", json!({"text": "x"}))
        .await
        .expect("call");
    assert_eq!(first_text(&r), "echo: x");
    h.finish().await;
}
