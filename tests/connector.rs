//! `portcullis run` on a real headscale tailnet: one device per endpoint,
//! identity-checked connections, HTTP method/path lists, a real PostgreSQL
//! behind a `tcp` device, and an audit trail that verifies.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::connector::{self, Connector};
use common::net::{counting_backend, echo_http_backend, forward, http};
use common::postgres::Postgres;
use common::{Headscale, node};
use tokio::io::AsyncReadExt;

fn config(hs: &Headscale, dir: &std::path::Path, web: u16, db: u16, counted: u16) -> String {
    format!(
        r#"# test connector
[tailnet]
control_url = "{url}"
auth_key_env = "PORTCULLIS_AUTH_KEY"
state_dir = "{state}"

[groups]
agents = ["tag:agent"]

[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:{web}"
allow = ["group:agents"]
description = "echo service"
[endpoint.http]
methods = ["GET"]
paths = ["/echo", "/public/**"]
identity_headers = true

[[endpoint]]
name = "db"
kind = "tcp"
target = "127.0.0.1:{db}"
ports = [5432]
allow = ["tag:agent"]

[[endpoint]]
name = "counted"
kind = "tcp"
target = "127.0.0.1:{counted}"
ports = [7000]
allow = ["tag:agent"]
"#,
        url = hs.url,
        state = dir.join("state").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_serves_allowed_agents_refuses_others_and_audits_everything() {
    common::trace();
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let intruder_key = hs.auth_key(admin, &["tag:intruder"]);
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("postgres");
    let (web_port, web_conns) = echo_http_backend().await;
    let (counted_port, counted_conns) = counting_backend().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.toml");
    std::fs::write(
        &file,
        config(&hs, dir.path(), web_port, pg.port, counted_port),
    )
    .expect("write config");
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (f, k, a) = (file.clone(), device_key.clone(), audit_url.clone());
    let conn = tokio::task::spawn_blocking(move || Connector::start(&f, &k, &a))
        .await
        .expect("connector");
    let (agent, intruder) = tokio::join!(
        node(&hs, "agent", &agent_key),
        node(&hs, "intruder", &intruder_key)
    );

    // Allowed: HTTP through the web device, with the verified identity and
    // without the identity header the agent tried to forge.
    let (status, body) = http(
        &agent,
        "web",
        "GET",
        "/echo?x=1",
        "x-portcullis-user: admin@corp\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let lower = body.to_lowercase();
    assert!(
        lower.contains("x-portcullis-tags: tag:agent"),
        "identity passed on: {body}"
    );
    assert!(
        !lower.contains("admin@corp"),
        "spoofed identity header reached the backend: {body}"
    );

    // Off the method and path lists: 403 with the reason, backend untouched.
    let before = web_conns.load(Ordering::SeqCst);
    let (status, body) = http(&agent, "web", "POST", "/echo", "content-length: 0\r\n").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("method_not_allowed"), "{body}");
    let (status, body) = http(&agent, "web", "GET", "/admin", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("path_not_allowed"), "{body}");
    assert_eq!(
        web_conns.load(Ordering::SeqCst),
        before,
        "refused requests reached the backend"
    );

    // A real PostgreSQL query through the db device.
    let fwd = forward(agent.clone(), "db:5432".into()).await;
    let url = format!("postgres://portcullis@127.0.0.1:{fwd}/postgres");
    let mut pgc = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("postgres over tailnet");
    let answer: i32 = sqlx::query_scalar("SELECT 41 + 1")
        .fetch_one(&mut pgc)
        .await
        .expect("query");
    assert_eq!(answer, 42);
    drop(pgc);

    // A peer that is not allowed: refused, and the backend sees nothing.
    for _ in 0..3 {
        if let Ok(mut s) = intruder.dial("counted:7000", Duration::from_secs(30)).await {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            assert!(
                buf.is_empty(),
                "intruder got data: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
    assert_eq!(
        counted_conns.load(Ordering::SeqCst),
        0,
        "a denied connection reached the backend"
    );
    let before = web_conns.load(Ordering::SeqCst);
    let (status, body) = http(&intruder, "web", "GET", "/echo", "").await;
    assert_eq!(
        status, 403,
        "an HTTP caller not on the allow list is told why: {body}"
    );
    assert!(body.contains("not_in_allow_list"), "{body}");
    assert_eq!(
        web_conns.load(Ordering::SeqCst),
        before,
        "a denied HTTP caller reached the backend"
    );

    // The allowed agent does reach it.
    let mut s = agent
        .dial("counted:7000", Duration::from_secs(30))
        .await
        .expect("dial counted");
    let mut line = String::new();
    s.read_to_string(&mut line).await.expect("read");
    assert_eq!(line, "hello from backend\n");
    assert_eq!(counted_conns.load(Ordering::SeqCst), 1);

    // Whatever is not in the file does not exist on the tailnet: the control
    // server knows exactly the file's devices and the two agents. (Names are
    // not dialed here: an unknown name would fall through to the host's
    // resolver, off loopback.)
    let nodes = hs.cli(&["nodes", "list"]);
    let mut names: Vec<String> = nodes
        .as_array()
        .expect("node list")
        .iter()
        .filter_map(|n| {
            n["given_name"]
                .as_str()
                .or(n["name"].as_str())
                .map(str::to_string)
        })
        .collect();
    names.sort();
    assert_eq!(names, ["agent", "counted", "db", "intruder", "web"]);

    // SIGTERM: clean exit, and every request above is in a chain that verifies.
    let (status, output) = conn.stopped().await;
    assert!(status.success(), "exit status {status:?}:\n{output}");
    connector::assert_verifies(&audit_url, &[]);

    let json = connector::run(&["audit", "query", "--audit", &audit_url, "--json"]);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let find =
        |pred: &dyn Fn(&serde_json::Value) -> bool| records.iter().filter(|r| pred(r)).count();
    let rec = |r: &serde_json::Value| r.get("record").cloned().unwrap_or_else(|| r.clone());
    assert_eq!(
        find(&|r| rec(r)["kind"] == "http_request"),
        4,
        "one record per HTTP request:\n{records:#?}"
    );
    assert!(find(&|r| rec(r)["reason"] == "method_not_allowed") >= 1);
    assert!(find(&|r| rec(r)["reason"] == "path_not_allowed") >= 1);
    assert!(
        find(&|r| rec(r)["kind"] == "connection_denied") >= 3,
        "intruder refusals recorded"
    );
    assert_eq!(find(&|r| rec(r)["kind"] == "startup"), 1);
    assert_eq!(find(&|r| rec(r)["kind"] == "shutdown"), 1);

    // Tampering is found and named: an edited row, and (on a copy) a deleted one.
    let db = dir.path().join("audit.db");
    let copy = dir.path().join("audit-copy.db");
    std::fs::copy(&db, &copy).expect("copy audit db");
    for (path, sql, expect) in [
        (
            &db,
            "UPDATE audit_records SET body = body || ' ' WHERE seq = 3",
            "seq 3: hash does not match",
        ),
        (
            &copy,
            "DELETE FROM audit_records WHERE seq = 4",
            "seq 4: record missing",
        ),
    ] {
        let url = format!("sqlite://{}", path.display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("open db");
        sqlx::query(sql).execute(&pool).await.expect("tamper");
        pool.close().await;
        let verify = connector::run(&["audit", "verify", "--audit", &url]);
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert_eq!(verify.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    }
}
