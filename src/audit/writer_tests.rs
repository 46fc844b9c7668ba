//! Writer tests against real SQLite files.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::query::{Filter, query, verify};
use super::record::{Kind, Record};
use super::test_support::{caller, sample, sqlite_url};
use super::writer::{AuditGuard, AuditLog};
use super::{AuditError, StoredRecord};

async fn all(url: &str) -> Vec<StoredRecord> {
    let mut records = query(url, &Filter::default()).await.unwrap();
    records.sort_by_key(|r| r.seq);
    records
}

fn count(records: &[StoredRecord], kind: Kind) -> usize {
    records.iter().filter(|r| r.record.kind == kind).count()
}

#[tokio::test]
async fn thousand_records_across_batches_and_a_reopen_verify() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 4096).await.unwrap();
    log.set_fingerprint("fp-1");
    for i in 0..600 {
        log.record(sample(i));
        if i % 150 == 0 {
            log.flush().await.unwrap();
        }
    }
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(log.written_total(), 601);

    // A restart resumes the chain where it ended.
    let (log, task) = AuditLog::open(&url, "edge-1", 4096).await.unwrap();
    for i in 0..400 {
        log.record(sample(i));
    }
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    let report = verify(&url, None).await.unwrap();
    assert!(report.ok, "{:?}", report.first_bad);
    assert_eq!(report.records, 1002);
    assert_eq!(report.connectors.len(), 1);
    assert_eq!(report.connectors[0].head_seq, 1002);
    assert!(report.connectors[0].ends_with_shutdown);

    let records = all(&url).await;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=1002).collect::<Vec<_>>());
    assert_eq!(records[600].record.kind, Kind::Shutdown);
    assert_eq!(records[1].record.fingerprint, "fp-1");
    // The second run never set a fingerprint.
    assert_eq!(records[700].record.fingerprint, "");
    assert_eq!(records[0].record.connector, "edge-1");
}

#[tokio::test]
async fn shutdown_loses_no_enqueued_record() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 10_000).await.unwrap();
    let mut producers = Vec::new();
    for p in 0..4 {
        let log = log.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..2000 {
                log.record(sample(p * 2000 + i));
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(log.dropped_total(), 0);
    let records = all(&url).await;
    assert_eq!(records.len(), 8001);
    assert_eq!(records.last().map(|r| r.record.kind), Some(Kind::Shutdown));
    assert!(verify(&url, Some("edge-1")).await.unwrap().ok);
}

#[tokio::test]
async fn a_small_queue_drops_counts_and_records_the_drops() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 4).await.unwrap();
    // On this single-threaded runtime the writer cannot run until we
    // await, so the queue takes exactly 4 and drops 6.
    for i in 0..10 {
        log.record(sample(i));
    }
    assert_eq!(log.queue_depth(), 4);
    assert_eq!(log.dropped_total(), 6);
    log.flush().await.unwrap();
    assert_eq!(log.queue_depth(), 0);
    assert_eq!(log.written_total(), 5);

    // Under sustained pressure every record is either written or counted.
    for i in 0..5000 {
        log.record(sample(i));
        if i % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let records = all(&url).await;
    let dropped_recorded: u64 = records
        .iter()
        .filter(|r| r.record.kind == Kind::RecordsDropped)
        .map(|r| r.record.extra["count"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped_recorded, log.dropped_total());
    let kept =
        records.len() - count(&records, Kind::RecordsDropped) - count(&records, Kind::Shutdown);
    assert_eq!(kept as u64 + log.dropped_total(), 5010);
    let dropped = &records[4].record;
    assert_eq!(dropped.kind, Kind::RecordsDropped);
    assert_eq!(dropped.extra["count"], 6);
    assert_eq!(dropped.reason.as_deref(), Some("audit_queue_full"));
    let shutdown = &records.last().unwrap().record;
    assert_eq!(
        shutdown.extra["dropped_total"].as_u64(),
        Some(log.dropped_total())
    );
    assert!(verify(&url, None).await.unwrap().ok);
}

#[tokio::test]
async fn drops_are_recorded_even_when_nothing_else_follows() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 1).await.unwrap();
    log.record(sample(0));
    log.record(sample(1));
    // No flush and no further record: the drop notification alone must
    // get the RecordsDropped record written.
    for _ in 0..200 {
        if log.written_total() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(log.written_total(), 2);
    drop(log);
    task.await.unwrap().unwrap();
    let records = all(&url).await;
    assert_eq!(records[1].record.kind, Kind::RecordsDropped);
}

#[tokio::test]
async fn after_shutdown_records_are_dropped_and_calls_fail() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 16).await.unwrap();
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    log.record(sample(0));
    assert_eq!(log.dropped_total(), 1);
    assert!(matches!(log.flush().await, Err(AuditError::Closed)));
    assert!(matches!(log.shutdown().await, Err(AuditError::Closed)));
    assert_eq!(all(&url).await.len(), 1);
}

#[tokio::test]
async fn guard_writes_on_drop_even_during_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 16).await.unwrap();
    let alice = caller(Some("alice@example.com"), "laptop", &[]);

    {
        let mut guard = AuditGuard::new(&log, Record::connection_open(&alice, "db", "pg"));
        guard.kind = Kind::ConnectionClose;
        guard.bytes_up = Some(12);
        guard.bytes_down = Some(34);
    }
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let mut guard = AuditGuard::new(&log, Record::tool_call(&alice, "gh", "merge"));
        guard.decision = Some(super::Decision::Permit);
        panic!("handler bug");
    }));
    assert!(panicked.is_err());
    AuditGuard::new(&log, Record::tool_call(&alice, "gh", "ignored")).disarm();
    let mut guard = AuditGuard::new(&log, Record::tool_call(&alice, "gh", "explicit"));
    guard.duration_ms = Some(7);
    guard.finish();

    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let records = all(&url).await;
    assert_eq!(records.len(), 4);
    let close = &records[0].record;
    assert_eq!(close.kind, Kind::ConnectionClose);
    assert_eq!((close.bytes_up, close.bytes_down), (Some(12), Some(34)));
    assert!(close.duration_ms.is_some());
    let call = &records[1].record;
    assert_eq!(call.tool.as_deref(), Some("merge"));
    assert_eq!(call.status.as_deref(), Some("panic"));
    assert_eq!(records[2].record.tool.as_deref(), Some("explicit"));
    assert_eq!(records[2].record.duration_ms, Some(7));
}

#[tokio::test]
async fn explicit_time_and_fingerprint_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 16).await.unwrap();
    log.set_fingerprint("current");
    let t = super::time_fmt::parse("2020-01-01T00:00:00Z").unwrap();
    let mut r = Record::startup("explicit");
    r.time = Some(t);
    r.connector = "spoofed".to_owned();
    log.record(r);
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let records = all(&url).await;
    let first = &records[0].record;
    assert_eq!(first.time, Some(t));
    assert_eq!(first.fingerprint, "explicit");
    assert_eq!(first.connector, "edge-1");
    assert_eq!(records[1].record.fingerprint, "current");
}

#[tokio::test]
async fn bad_connector_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", "edge\n1", "edge\u{0}"] {
        let err = AuditLog::open(&sqlite_url(&dir), name, 16)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "audit_bad_connector", "{name:?}");
    }
}
