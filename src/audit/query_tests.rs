//! Read-side tests: tampering with a real SQLite file, queries, tail,
//! export and the table.

use sqlx::sqlite::SqlitePool;

use super::chain::{self, GENESIS, Problem};
use super::query::{Filter, Tail, export_jsonl, query, render_table, verify};
use super::record::{Decision, Kind, Record};
use super::test_support::{caller, sample, sqlite_url};
use super::time_fmt;
use super::writer::AuditLog;

/// Writes `n` sample records and a shutdown; returns the URL.
async fn filled(dir: &tempfile::TempDir, n: usize) -> String {
    let url = sqlite_url(dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 4096).await.unwrap();
    for i in 0..n {
        log.record(sample(i));
    }
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    url
}

async fn tamper(url: &str, sql: &str) {
    let pool = SqlitePool::connect(url).await.unwrap();
    let done = sqlx::query(sql).execute(&pool).await.unwrap();
    assert!(done.rows_affected() > 0, "{sql}");
    pool.close().await;
}

async fn first_bad(url: &str) -> (u64, Problem) {
    let report = verify(url, None).await.unwrap();
    assert!(!report.ok);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.connector, "edge-1");
    (bad.seq, bad.problem)
}

#[tokio::test]
async fn edited_body_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = filled(&dir, 50).await;
    tamper(
        &url,
        "UPDATE audit_records SET body = replace(body, 'create_issue', 'delete_repo') WHERE seq = 22",
    )
    .await;
    assert_eq!(first_bad(&url).await, (22, Problem::HashMismatch));
}

#[tokio::test]
async fn edited_indexed_column_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = filled(&dir, 50).await;
    tamper(
        &url,
        "UPDATE audit_records SET decision = 'permit' WHERE seq = 31",
    )
    .await;
    assert_eq!(
        first_bad(&url).await,
        (
            31,
            Problem::ColumnMismatch {
                column: "decision".to_owned()
            }
        )
    );
}

#[tokio::test]
async fn deleted_middle_row_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = filled(&dir, 50).await;
    tamper(&url, "DELETE FROM audit_records WHERE seq = 17").await;
    assert_eq!(first_bad(&url).await, (17, Problem::Missing { found: 18 }));
    let report = verify(&url, None).await.unwrap();
    assert_eq!(report.records, 16);
    assert_eq!(report.connectors[0].head_seq, 16);
}

#[tokio::test]
async fn swapped_rows_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = filled(&dir, 20).await;
    tamper(&url, "UPDATE audit_records SET seq = -1 WHERE seq = 5").await;
    tamper(&url, "UPDATE audit_records SET seq = 5 WHERE seq = 6").await;
    tamper(&url, "UPDATE audit_records SET seq = 6 WHERE seq = -1").await;
    let (seq, problem) = first_bad(&url).await;
    assert_eq!(seq, 5);
    assert_eq!(problem, Problem::PrevHashMismatch);
}

/// Truncating the tail leaves a valid, shorter chain that a restarted
/// writer extends: the chain alone cannot see it (see `chain` docs). What
/// remains visible is the head, which no longer matches the head logged at
/// the last shutdown, and a chain that, mid-way, lacks its `Shutdown`.
#[tokio::test]
async fn truncated_tail_then_append_is_not_detected_by_the_chain_alone() {
    let dir = tempfile::tempdir().unwrap();
    let url = filled(&dir, 10).await;
    let before = verify(&url, None).await.unwrap();
    assert_eq!(before.connectors[0].head_seq, 11);
    assert!(before.connectors[0].ends_with_shutdown);
    tamper(&url, "DELETE FROM audit_records WHERE seq >= 9").await;
    let truncated = verify(&url, None).await.unwrap();
    assert!(truncated.ok);
    assert!(!truncated.connectors[0].ends_with_shutdown);
    assert_ne!(
        truncated.connectors[0].head_hash,
        before.connectors[0].head_hash
    );

    let (log, task) = AuditLog::open(&url, "edge-1", 16).await.unwrap();
    log.record(Record::startup("fp"));
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let after = verify(&url, None).await.unwrap();
    assert!(after.ok);
    assert_eq!(after.connectors[0].head_seq, 10);
}

#[tokio::test]
async fn verify_checks_each_connector_and_names_the_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    for name in ["b-edge", "a-edge"] {
        let (log, task) = AuditLog::open(&url, name, 64).await.unwrap();
        for i in 0..5 {
            log.record(sample(i));
        }
        log.shutdown().await.unwrap();
        task.await.unwrap().unwrap();
    }
    let report = verify(&url, None).await.unwrap();
    assert!(report.ok);
    assert_eq!(report.records, 12);
    let names: Vec<&str> = report
        .connectors
        .iter()
        .map(|c| c.connector.as_str())
        .collect();
    assert_eq!(names, ["a-edge", "b-edge"]);
    tamper(
        &url,
        "UPDATE audit_records SET endpoint = 'x' WHERE connector = 'b-edge' AND seq = 1",
    )
    .await;
    let report = verify(&url, None).await.unwrap();
    let bad = report.first_bad.unwrap();
    assert_eq!((bad.connector.as_str(), bad.seq), ("b-edge", 1));
    assert!(verify(&url, Some("a-edge")).await.unwrap().ok);
    // An unknown connector is an empty, intact chain.
    assert_eq!(verify(&url, Some("zzz")).await.unwrap().records, 0);
}

#[tokio::test]
async fn query_filters() {
    let dir = tempfile::tempdir().unwrap();
    let url = filled(&dir, 40).await;
    let q = |filter: Filter| {
        let url = url.clone();
        async move { query(&url, &filter).await.unwrap() }
    };
    let all = q(Filter::default()).await;
    assert_eq!(all.len(), 41);

    let denied = q(Filter {
        decision: Some(Decision::Deny),
        ..Filter::default()
    })
    .await;
    assert_eq!(denied.len(), 10);
    assert!(
        denied
            .iter()
            .all(|r| r.record.kind == Kind::ConnectionDenied)
    );

    let by_tag = q(Filter {
        caller: Some("TAG:CI".to_owned()),
        ..Filter::default()
    })
    .await;
    assert_eq!(by_tag.len(), 20);
    let by_user = q(Filter {
        caller: Some("alice@".to_owned()),
        ..Filter::default()
    })
    .await;
    assert_eq!(by_user.len(), 20);
    let wildcard = q(Filter {
        caller: Some("%".to_owned()),
        ..Filter::default()
    })
    .await;
    assert!(wildcard.is_empty());

    let wiki = q(Filter {
        endpoint: Some("wiki".to_owned()),
        ..Filter::default()
    })
    .await;
    assert_eq!(wiki.len(), 10);
    let calls = q(Filter {
        kind: Some(Kind::McpToolCall),
        limit: Some(3),
        ..Filter::default()
    })
    .await;
    // The three most recent, oldest first.
    assert_eq!(
        calls.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [30, 34, 38]
    );

    let future = time_fmt::parse("2999-01-01T00:00:00Z").unwrap();
    assert!(
        q(Filter {
            since: Some(future),
            ..Filter::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        q(Filter {
            until: Some(future),
            ..Filter::default()
        })
        .await
        .len(),
        41
    );
    let other = q(Filter {
        connector: Some("other".to_owned()),
        ..Filter::default()
    })
    .await;
    assert!(other.is_empty());
}

#[tokio::test]
async fn tail_returns_backlog_then_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 64).await.unwrap();
    for i in 0..10 {
        log.record(sample(i));
    }
    log.flush().await.unwrap();
    let mut tail = Tail::open(&url, None, 3).await.unwrap();
    let first = tail.poll().await.unwrap();
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [8, 9, 10]);
    assert!(tail.poll().await.unwrap().is_empty());
    log.record(sample(10));
    log.flush().await.unwrap();
    let next = tail.poll().await.unwrap();
    assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), [11]);
    // A connector that starts later is picked up from its start.
    let (other, other_task) = AuditLog::open(&url, "edge-2", 64).await.unwrap();
    other.record(sample(0));
    other.flush().await.unwrap();
    let next = tail.poll().await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].record.connector, "edge-2");
    tail.close().await;
    for (log, task) in [(log, task), (other, other_task)] {
        log.shutdown().await.unwrap();
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn export_lines_can_be_reverified_by_a_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let url = filled(&dir, 25).await;
    let mut out = Vec::new();
    let lines = export_jsonl(&url, &mut out).await.unwrap();
    assert_eq!(lines, 26);
    let text = String::from_utf8(out).unwrap();
    let mut prev = GENESIS.to_owned();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["connector"], "edge-1");
        assert_eq!(v["prev_hash"], prev.as_str());
        let body = v["body"].as_str().unwrap();
        assert_eq!(v["hash"], chain::link_hash(&prev, body).as_str());
        assert_eq!(
            v["record"]["kind"],
            serde_json::from_str::<serde_json::Value>(body).unwrap()["kind"]
        );
        prev = v["hash"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn reading_a_missing_database_is_an_error_not_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    assert!(verify(&url, None).await.is_err());
    assert!(!dir.path().join("audit.db").exists());
}

#[test]
fn table_has_fixed_columns() {
    let mut close = Record::connection_open(
        &caller(Some("alice@example.com"), "l", &[]),
        "db",
        "postgres-prod",
    )
    .into_close();
    close.time = Some(time_fmt::parse("2025-03-04T05:06:07.000008Z").unwrap());
    close.bytes_up = Some(120);
    close.bytes_down = Some(4096);
    let mut denied = Record::connection_denied(
        &caller(None, "runner", &["tag:agent"]),
        "db",
        "a-very-long-endpoint-name-indeed",
        "no_matching_rule",
        "x",
    );
    denied.time = close.time;
    let mut call = Record::tool_call(&caller(None, "r", &["tag:ci"]), "gh", "x").permit();
    call.time = close.time;
    call.latency_us = Some(25_000);
    let stored: Vec<super::StoredRecord> = [close, denied, call]
        .into_iter()
        .enumerate()
        .map(|(i, record)| super::StoredRecord {
            seq: i as u64 + 1,
            prev_hash: String::new(),
            hash: String::new(),
            record,
        })
        .collect();
    let table = render_table(&stored);
    let expected = "\
TIME                        KIND              CALLER                   ENDPOINT         DECISION REASON               BYTES/LATENCY
2025-03-04T05:06:07.000008Z connection_close  alice@example.com        postgres-prod    permit   -                    120/4096B
2025-03-04T05:06:07.000008Z connection_denied tag:agent                a-very-long-end~ deny     no_matching_rule
2025-03-04T05:06:07.000008Z mcp_tool_call     tag:ci                   gh               permit   -                    25ms
";
    assert_eq!(table, expected);
}
