//! PostgreSQL backend tests against a real server.
//!
//! Uses `PORTCULLIS_TEST_POSTGRES_URL` if set (a database the test may
//! write to); otherwise starts a throw-away PostgreSQL 15 from
//! `/usr/lib/postgresql/15/bin` in a temporary directory on a free
//! 127.0.0.1 port (as user `postgres` when running as root, since the
//! server refuses root). Without either, the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::chain::Problem;
use super::query::{Filter, Tail, export_jsonl, query, verify};
use super::record::Kind;
use super::test_support::sample;
use super::writer::AuditLog;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running throw-away server, stopped on drop.
struct TempPostgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    as_postgres: bool,
    url: String,
}

fn command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl TempPostgres {
    fn start() -> Option<TempPostgres> {
        let bin = Path::new(PG_BIN);
        if !bin.join("initdb").exists() {
            return None;
        }
        let as_postgres = id(&["-u"]) == Some(0);
        let dir = tempfile::tempdir().ok()?;
        if as_postgres {
            let uid = id(&["-u", "postgres"])?;
            let gid = id(&["-g", "postgres"])?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).ok()?;
        }
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let status = command(as_postgres, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "portcullis", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let options = format!("-p {port} -h 127.0.0.1 -k {}", dir.path().display());
        let status = command(as_postgres, &bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        Some(TempPostgres {
            url: format!("postgres://portcullis@127.0.0.1:{port}/postgres"),
            _dir: dir,
            data,
            as_postgres,
        })
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = command(self.as_postgres, &Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_shares_one_database_between_connectors() {
    let server;
    let url = match std::env::var("PORTCULLIS_TEST_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) => match TempPostgres::start() {
            Some(started) => {
                server = started;
                server.url.clone()
            }
            None => {
                eprintln!("skipped: no PostgreSQL server available");
                return;
            }
        },
    };

    // Two connectors write concurrently into the same table.
    let mut tasks = Vec::new();
    for name in ["edge-a", "edge-b"] {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (log, task) = AuditLog::open(&url, name, 4096).await.unwrap();
            for i in 0..500 {
                log.record(sample(i));
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            log.shutdown().await.unwrap();
            task.await.unwrap().unwrap();
            assert_eq!(log.dropped_total(), 0);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let report = verify(&url, None).await.unwrap();
    assert!(report.ok, "{:?}", report.first_bad);
    assert_eq!(report.records, 1002);
    assert!(
        report
            .connectors
            .iter()
            .all(|c| c.head_seq == 501 && c.ends_with_shutdown)
    );

    // A restart resumes its own chain only.
    let (log, task) = AuditLog::open(&url, "edge-a", 16).await.unwrap();
    log.record(sample(1));
    log.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let report = verify(&url, Some("edge-a")).await.unwrap();
    assert!(report.ok);
    assert_eq!(report.connectors[0].head_seq, 503);

    // Queries behave as on SQLite (case-insensitive caller match).
    let by_tag = query(
        &url,
        &Filter {
            caller: Some("TAG:CI".to_owned()),
            connector: Some("edge-b".to_owned()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_tag.len(), 250);
    let latest = query(
        &url,
        &Filter {
            kind: Some(Kind::Shutdown),
            limit: Some(1),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].record.connector, "edge-a");
    assert_eq!(latest[0].seq, 503);

    let mut tail = Tail::open(&url, Some("edge-b"), 2).await.unwrap();
    assert_eq!(
        tail.poll()
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [500, 501]
    );
    tail.close().await;

    let mut out = Vec::new();
    assert_eq!(export_jsonl(&url, &mut out).await.unwrap(), 1004);

    // Tampering is found on this backend too.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE audit_records SET body = body || ' ' WHERE connector = 'edge-b' AND seq = 10",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let report = verify(&url, None).await.unwrap();
    let bad = report.first_bad.unwrap();
    assert_eq!(
        (bad.connector.as_str(), bad.seq, bad.problem),
        ("edge-b", 10, Problem::HashMismatch)
    );
}
