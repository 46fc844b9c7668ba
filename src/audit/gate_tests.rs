//! The audit gate: a store that cannot be written closes it, recovery
//! reopens it, guards keep their place, shutdown names what it lost.
//!
//! The store is broken with a trigger that fails every insert the way a
//! full disk does: `RAISE(ROLLBACK)` rolls the whole transaction back
//! inside SQLite, as SQLite does itself on `SQLITE_FULL`, so the driver's
//! idea of an open transaction and SQLite's disagree afterwards.

use std::time::Duration;

use super::checkpoint::{self, Checkpointer};
use super::query::{Filter, query, verify};
use super::record::{Kind, Record};
use super::test_support::{caller, sample, sqlite_url};
use super::writer::{AuditGuard, AuditLog, OnFailure, Options, Unavailable};
use super::{AuditError, StoredRecord};

async fn all(url: &str) -> Vec<StoredRecord> {
    let mut records = query(url, &Filter::default()).await.unwrap();
    records.sort_by_key(|r| r.seq);
    records
}

/// Runs `sql` on the database at `url` from a connection of its own.
async fn exec(url: &str, sql: &str) {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .unwrap()
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

async fn break_store(url: &str) {
    exec(
        url,
        "CREATE TRIGGER full_disk BEFORE INSERT ON audit_records \
         BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END",
    )
    .await;
}

async fn mend_store(url: &str) {
    exec(url, "DROP TRIGGER full_disk").await;
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_failing_store_closes_the_gate_and_recovery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 1000).await.unwrap();
    for i in 0..5 {
        log.record(sample(i));
    }
    log.flush().await.unwrap();
    assert!(log.store_up());
    let alice = caller(Some("alice@example.com"), "laptop", &[]);
    // Admitted before the failure: its record must survive it.
    let early = AuditGuard::new(&log, Record::tool_call(&alice, "gh", "early"));
    assert_eq!(early.admit(), Ok(()));

    break_store(&url).await;
    for i in 5..20 {
        log.record(sample(i));
    }
    wait_for("the writer notices", || !log.store_up()).await;
    let refused = AuditGuard::new(&log, Record::tool_call(&alice, "gh", "refused"));
    assert_eq!(refused.admit(), Err(Unavailable::StoreDown));
    assert_eq!(log.admit(), Err(Unavailable::StoreDown));
    assert!(
        log.queue_depth() >= 15,
        "held, not lost: {}",
        log.queue_depth()
    );
    drop(refused);
    drop(early);

    mend_store(&url).await;
    wait_for("the writer recovers", || log.store_up()).await;
    log.flush().await.unwrap();
    assert_eq!(log.admit(), Ok(()));
    assert_eq!(log.queue_depth(), 0);
    assert_eq!(log.dropped_total(), 0);
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    let records = all(&url).await;
    assert_eq!(records.len(), 5 + 15 + 2 + 1, "every record, in one chain");
    let tools: Vec<_> = records
        .iter()
        .filter_map(|r| r.record.tool.as_deref())
        .collect();
    assert!(
        tools.contains(&"early") && tools.contains(&"refused"),
        "{tools:?}"
    );
    assert_eq!(log.written_total(), records.len() as u64);
    assert!(verify(&url, None).await.unwrap().ok);
}

#[tokio::test]
async fn a_guard_keeps_its_place_and_a_full_queue_refuses_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 3).await.unwrap();
    let bob = caller(None, "ci", &["tag:agent"]);
    // On this single-threaded runtime the writer cannot run until we await.
    let guards: Vec<AuditGuard> = (0..3)
        .map(|i| AuditGuard::new(&log, Record::tool_call(&bob, "gh", &format!("t{i}"))))
        .collect();
    assert!(guards.iter().all(|g| g.admit().is_ok()));
    let fourth = AuditGuard::new(&log, Record::tool_call(&bob, "gh", "t3"));
    assert_eq!(fourth.admit(), Err(Unavailable::QueueFull));
    assert_eq!(log.admit(), Err(Unavailable::QueueFull));
    // A plain record finds no room: dropped and counted.
    log.record(sample(0));
    assert_eq!(log.dropped_total(), 1);
    drop(fourth);
    assert_eq!(
        log.dropped_total(),
        2,
        "a guard without a place is counted too"
    );
    drop(guards);
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let records = all(&url).await;
    let tools: Vec<_> = records
        .iter()
        .filter_map(|r| r.record.tool.as_deref())
        .collect();
    assert_eq!(tools, ["t0", "t1", "t2"], "reserved places are never lost");
    let dropped = records
        .iter()
        .find(|r| r.record.kind == Kind::RecordsDropped);
    assert_eq!(
        dropped.map(|r| r.record.extra["count"].clone()),
        Some(2.into())
    );
}

#[tokio::test]
async fn serve_mode_keeps_admitting_while_the_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let options = Options {
        queue: 8,
        on_failure: OnFailure::Serve,
        checkpoints: None,
    };
    let (log, task) = AuditLog::open_with(&url, "edge-1", options).await.unwrap();
    log.record(sample(0));
    log.flush().await.unwrap();
    break_store(&url).await;
    log.record(sample(1));
    wait_for("the writer notices", || !log.store_up()).await;
    for i in 0..20 {
        log.record(sample(i));
    }
    let guard = AuditGuard::new(&log, Record::new(Kind::HttpRequest));
    assert_eq!(guard.admit(), Ok(()), "serve: admitted though unrecordable");
    assert!(log.dropped_total() > 0);
    drop(guard);
    mend_store(&url).await;
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let records = all(&url).await;
    let recorded_drops: u64 = records
        .iter()
        .filter(|r| r.record.kind == Kind::RecordsDropped)
        .map(|r| r.record.extra["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        recorded_drops,
        log.dropped_total(),
        "every drop is in the chain"
    );
    assert!(verify(&url, None).await.unwrap().ok);
}

#[tokio::test]
async fn shutdown_on_an_unwritable_store_names_the_records_lost() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 100).await.unwrap();
    log.record(sample(0));
    log.flush().await.unwrap();
    break_store(&url).await;
    for i in 1..=12 {
        log.record(sample(i));
    }
    wait_for("the writer notices", || !log.store_up()).await;
    let err = log.shutdown().await.unwrap_err();
    match &err {
        AuditError::Lost { lost, reason, .. } => {
            assert_eq!(*lost, 12, "{err}");
            assert!(reason.contains("disk is full"), "{reason}");
            assert!(
                !reason.contains("Safety level"),
                "the shutdown path must not trip over a half-open transaction: {reason}"
            );
        }
        other => panic!("expected Lost, got {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("12 audit records could not be written"),
        "{err}"
    );
    task.await.unwrap().unwrap();
    mend_store(&url).await;
    let records = all(&url).await;
    assert_eq!(records.len(), 1);
    assert!(verify(&url, None).await.unwrap().ok);
}

#[tokio::test]
async fn a_failed_durable_commit_is_retried_on_a_fresh_connection() {
    // The store fails only for the shutdown batch, then recovers within the
    // shutdown's time: the shutdown record must still be written.
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (log, task) = AuditLog::open(&url, "edge-1", 100).await.unwrap();
    log.record(sample(0));
    log.flush().await.unwrap();
    break_store(&url).await;
    log.record(sample(1));
    wait_for("the writer notices", || !log.store_up()).await;
    let mend = {
        let url = url.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            mend_store(&url).await;
        })
    };
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    mend.await.unwrap();
    let records = all(&url).await;
    let kinds: Vec<Kind> = records.iter().map(|r| r.record.kind).collect();
    assert_eq!(kinds.last(), Some(&Kind::Shutdown), "{kinds:?}");
    assert_eq!(records.len(), 3);
}

#[tokio::test]
async fn checkpoints_are_signed_witnessed_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let checkpoints = Checkpointer::load_or_create(dir.path(), "edge 1")
        .unwrap()
        .with_interval(Duration::ZERO);
    let key = checkpoints.key().to_owned();
    assert!(key.starts_with("portcullis-audit-edge_1+"), "{key}");
    let options = Options {
        queue: 100,
        on_failure: OnFailure::Refuse,
        checkpoints: Some(checkpoints),
    };
    let (log, task) = AuditLog::open_with(&url, "edge 1", options).await.unwrap();
    for i in 0..3 {
        log.record(sample(i));
        log.flush().await.unwrap();
    }
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    let records = all(&url).await;
    let vkey = std::fs::read_to_string(dir.path().join(checkpoint::PUBLIC_KEY_FILE)).unwrap();
    let in_chain: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| r.record.kind == Kind::Checkpoint)
        .collect();
    assert_eq!(in_chain.len(), 3, "one per commit at interval 0");
    for r in &in_chain {
        let note = r.record.extra["note"].as_str().unwrap();
        let cp = checkpoint::parse(note, Some(&vkey)).unwrap();
        assert!(cp.signature_checked);
        assert_eq!(cp.seq, r.seq - 1, "names the row before it");
        assert_eq!(cp.hash, r.prev_hash);
        assert_eq!(cp.connector, "edge 1");
    }
    // The witness names the final head: the shutdown record.
    let witness = std::fs::read_to_string(dir.path().join(checkpoint::WITNESS_FILE)).unwrap();
    let last = records.last().unwrap();
    assert_eq!(last.record.kind, Kind::Shutdown);
    let cp = checkpoint::parse(&witness, Some(&vkey)).unwrap();
    assert_eq!((cp.seq, cp.hash.as_str()), (last.seq, last.hash.as_str()));
    // The quoted, escaped form the log line carries reads the same.
    assert_eq!(
        checkpoint::parse(&format!("{witness:?}"), Some(&vkey)).unwrap(),
        cp
    );
    // A forged signature or another key is refused.
    let tampered = witness.replacen(
        &format!("\n{}\n", last.seq),
        &format!("\n{}\n", last.seq + 5),
        1,
    );
    assert!(checkpoint::parse(&tampered, Some(&vkey)).is_err());
    let other = tempfile::tempdir().unwrap();
    Checkpointer::load_or_create(other.path(), "edge 1").unwrap();
    let other_key =
        std::fs::read_to_string(other.path().join(checkpoint::PUBLIC_KEY_FILE)).unwrap();
    assert!(checkpoint::parse(&witness, Some(&other_key)).is_err());
    // Reopening the key gives the same signer.
    let again = Checkpointer::load_or_create(dir.path(), "renamed").unwrap();
    assert_eq!(again.key(), key);
}
