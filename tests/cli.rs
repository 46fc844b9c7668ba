//! The `portcullis` binary as a user runs it: exit codes, output formats and
//! error messages of `check`, `review`, `audit` and `version`. No tailnet
//! node is started.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use portcullis::audit::{AuditLog, Record};
use portcullis::identity::Caller;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary from the crate root, so relative paths in arguments are
/// also the file names in its messages.
fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(root())
        .env_remove("PORTCULLIS_LOG")
        .output()
        .expect("run portcullis")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `dir/*.toml` relative to the crate root, sorted.
fn tomls(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join(dir))
        .expect("fixture dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no .toml files in {dir}");
    names
}

// ---- check and review ----------------------------------------------------

#[test]
fn examples_pass_check_and_strict_review() {
    for file in tomls("examples") {
        let out = portcullis(&["check", &file]);
        assert_eq!(code(&out), 0, "{file}: {}", stderr(&out));
        let config = portcullis::config::load(&root().join(&file)).expect("valid example");
        assert_eq!(stdout(&out), format!("{}  {file}\n", config.fingerprint));

        let out = portcullis(&["review", "--strict", &file]);
        assert_eq!(code(&out), 0, "{file}: {}", stderr(&out));
    }
}

#[test]
fn invalid_files_exit_2_with_every_diagnostic() {
    for file in tomls("tests/fixtures/config") {
        let expected = std::fs::read_to_string(root().join(&file).with_extension("err"))
            .expect("fixture has a .err file");
        for command in ["check", "review", "run"] {
            let out = portcullis(&[command, &file]);
            assert_eq!(code(&out), 2, "{command} {file}");
            let err = stderr(&out);
            assert!(err.contains(&format!("{file} is not valid")), "{err}");
            for line in expected.lines() {
                assert!(
                    err.contains(line),
                    "{command} {file}: missing {line:?} in\n{err}"
                );
            }
            assert!(stdout(&out).is_empty(), "{command} {file}");
        }
    }
}

#[test]
fn check_reports_every_file_and_fails_if_any_is_invalid() {
    let out = portcullis(&[
        "check",
        "examples/minimal.toml",
        "tests/fixtures/config/bad-kind.toml",
    ]);
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).contains("examples/minimal.toml"));
    assert!(stderr(&out).contains("bad-kind.toml:8:8"));

    let out = portcullis(&["check", "no/such/file.toml"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("no/such/file.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn warnings_fail_review_only_under_strict() {
    let file = "tests/fixtures/review/warn.toml";
    let out = portcullis(&["review", file]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("allow_everyone"));

    let out = portcullis(&["review", "--strict", file]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("allow_everyone"),
        "report still printed"
    );
    assert!(stderr(&out).contains("--strict"), "{}", stderr(&out));
}

#[test]
fn review_markdown_is_the_library_report() {
    let file = "examples/endpoints.toml";
    let out = portcullis(&["review", file]);
    assert_eq!(code(&out), 0);
    let config = portcullis::config::load(Path::new(file)).expect("valid");
    let expected = portcullis::review::render_markdown(&portcullis::review::report(&config));
    assert_eq!(stdout(&out), expected);
}

#[test]
fn review_json_is_one_object_with_report_and_diff() {
    let out = portcullis(&[
        "review",
        "--format",
        "json",
        "tests/fixtures/review/warn.toml",
    ]);
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["report"]["warnings"][0]["code"], "allow_everyone");
    assert!(v["diff"].is_null());
}

fn with_extra_endpoint(dir: &tempfile::TempDir) -> PathBuf {
    let base = std::fs::read_to_string(root().join("examples/minimal.toml")).expect("example");
    let proposed = format!(
        "{base}\n[[endpoint]]\nname = \"grafana\"\nkind = \"tcp\"\ntarget = \"10.0.0.9:3000\"\n\
         allow = [\"user:alice@example.com\"]\n"
    );
    let path = dir.path().join("proposed.toml");
    std::fs::write(&path, proposed).expect("write proposed");
    path
}

#[test]
fn review_against_shows_added_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proposed = with_extra_endpoint(&dir);
    let proposed = proposed.to_str().expect("utf-8 path");
    let old = "examples/minimal.toml";

    let out = portcullis(&["review", proposed, "--against", old]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let diff = &text[text
        .find("# Portcullis exposure changes")
        .expect("diff after report")..];
    assert!(diff.contains("## Added devices"), "{diff}");
    assert!(diff.contains("`grafana`"), "{diff}");

    let out = portcullis(&["review", "--format", "json", proposed, "--against", old]);
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["diff"]["added"][0]["endpoint"], "grafana");
    assert_eq!(v["report"]["devices"].as_array().map(Vec::len), Some(2));

    let bad = "tests/fixtures/config/bad-kind.toml";
    let out = portcullis(&["review", proposed, "--against", bad]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains(&format!("old endpoint file {bad} is not valid")),
        "{}",
        stderr(&out)
    );
}

// ---- review --replay ------------------------------------------------------

const REPLAY_OLD: &str = r#"
[tailnet]
control_url = "https://headscale.example.com"
auth_key_env = "PORTCULLIS_AUTH_KEY"
state_dir = "/var/lib/portcullis"

[[endpoint]]
name = "db"
kind = "tcp"
target = "10.0.0.5:5432"
allow = ["tag:agent", "user:alice@example.com"]

[[endpoint]]
name = "web"
kind = "http"
target = "10.0.0.6:8080"
ports = [80]
allow = ["tag:agent"]

[endpoint.http]
methods = ["GET", "POST"]
paths = ["/api/**"]
"#;

/// The proposed file: the agent tag loses `db`, bob gains it, `web` drops
/// `POST`.
fn replay_new() -> String {
    let new = REPLAY_OLD
        .replace(
            "allow = [\"tag:agent\", \"user:alice@example.com\"]",
            "allow = [\"user:alice@example.com\", \"user:bob@example.com\"]",
        )
        .replace("methods = [\"GET\", \"POST\"]", "methods = [\"GET\"]");
    assert_ne!(new, REPLAY_OLD);
    new
}

/// Copies a policy decision into a record, as the data path does.
fn decided(mut record: Record, d: &portcullis::policy::Decision) -> Record {
    use portcullis::audit::{Decision, Kind};
    if !d.permit && record.kind == Kind::ConnectionOpen {
        record.kind = Kind::ConnectionDenied;
    }
    record.decision = Some(if d.permit {
        Decision::Permit
    } else {
        Decision::Deny
    });
    record.reason = Some(d.reason.code().to_owned());
    record.detail = Some(d.reason.to_string());
    record
}

/// The records a connector running `old` writes for a few connections and
/// requests, every decision made by the policy of `old`. Seqs 1 and 2 are
/// the agent's connections to `db`, 6 its `POST` on `web`, 7 bob's refused
/// connection.
fn replay_history(old: &portcullis::config::Config) -> Vec<Record> {
    use portcullis::policy::{Action, Policy, decide};
    let policy = Policy::from_config(old);
    let agent = caller(None, "agent-1", &["tag:agent"]);
    let alice = caller(Some("alice@example.com"), "alice-laptop", &[]);
    let bob = caller(Some("bob@example.com"), "bob-laptop", &[]);
    let connect = |c: &Caller, endpoint: &str, port: u16| {
        let d = decide(&policy, c, &Action::Connect { endpoint, port });
        decided(
            Record::connection_open(c, endpoint, endpoint).with_extra("port", port.into()),
            &d,
        )
    };
    let request = |c: &Caller, method: &str, path: &str| {
        let d = decide(
            &policy,
            c,
            &Action::Http {
                endpoint: "web",
                method,
                path,
            },
        );
        decided(
            Record::http_request(c, "web", method, path)
                .with_device("web")
                .with_extra("port", 80.into()),
            &d,
        )
    };
    let alice_open = connect(&alice, "db", 5432);
    let records = vec![
        connect(&agent, "db", 5432),
        connect(&agent, "db", 5432),
        alice_open.clone(),
        alice_open.into_close(),
        request(&agent, "GET", "/api/items"),
        request(&agent, "POST", "/api/items?token=x"),
        connect(&bob, "db", 5432),
    ];
    let permits = records
        .iter()
        .filter(|r| r.decision == Some(portcullis::audit::Decision::Permit))
        .count();
    assert_eq!(permits, 6, "the old file permits all but bob");
    records
}

#[tokio::test]
async fn review_replay_lists_recorded_decisions_that_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_path = dir.path().join("old.toml");
    let new_path = dir.path().join("new.toml");
    std::fs::write(&old_path, REPLAY_OLD).expect("write old");
    std::fs::write(&new_path, replay_new()).expect("write new");
    let old = portcullis::config::load(&old_path).expect("valid old file");
    let db = dir.path().join("audit.db");
    let url = format!("sqlite://{}", db.display());
    write_audit(&url, "edge-1", replay_history(&old)).await;
    let new_arg = new_path.to_str().expect("utf-8 path");
    let old_arg = old_path.to_str().expect("utf-8 path");
    let db_arg = db.to_str().expect("utf-8 path");

    // Markdown, store given as a plain path.
    let out = portcullis(&["review", new_arg, "--replay", db_arg]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    let replay = &text[text
        .find("# Portcullis replay")
        .expect("replay after report")..];
    assert!(replay.contains("## Would be denied (3)"), "{replay}");
    assert!(replay.contains("## Would be permitted (1)"), "{replay}");
    assert!(
        replay.contains("### `tag:agent` on `db`: 2 records"),
        "{replay}"
    );
    assert!(replay.contains("method_not_allowed"), "{replay}");
    assert!(
        replay.contains("### `bob@example.com` on `db`: 1 record"),
        "{replay}"
    );
    assert!(
        stderr(&out).contains("error: 4 recorded decisions would change"),
        "{}",
        stderr(&out)
    );

    // JSON, store given as a sqlite URL.
    let out = portcullis(&["review", "--format", "json", new_arg, "--replay", &url]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v["diff"].is_null());
    let r = &v["replay"];
    assert_eq!(r["totals"]["records"], 8, "seven records and the shutdown");
    assert_eq!(r["totals"]["decisions"], 6, "the close is not a decision");
    assert_eq!(r["totals"]["permit_to_deny"], 3);
    assert_eq!(r["totals"]["deny_to_permit"], 1);
    assert_eq!(r["totals"]["unchanged"], 2);
    let groups = r["changes"].as_array().expect("changes");
    let find = |caller: &str, endpoint: &str| {
        groups
            .iter()
            .find(|g| g["caller"] == caller && g["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no group {caller} {endpoint}: {r}"))
    };
    let agent_db = find("tag:agent", "db");
    assert_eq!(agent_db["change"], "permit_to_deny");
    let seqs: Vec<u64> = agent_db["examples"]
        .as_array()
        .expect("examples")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(
        agent_db["examples"][0]["new"]["reason"],
        "not_in_allow_list"
    );
    let agent_web = find("tag:agent", "web");
    assert_eq!(agent_web["count"], 1);
    assert_eq!(agent_web["examples"][0]["seq"], 6);
    assert_eq!(agent_web["examples"][0]["action"], "POST /api/items");
    assert_eq!(
        agent_web["examples"][0]["new"]["reason"],
        "method_not_allowed"
    );
    let bob_db = find("bob@example.com", "db");
    assert_eq!(bob_db["change"], "deny_to_permit");
    assert_eq!(bob_db["examples"][0]["seq"], 7);
    assert_eq!(bob_db["examples"][0]["old"]["reason"], "not_in_allow_list");
    assert_eq!(r["recorded_under"][0]["fingerprint"], "f00d");

    // The file the records were made under changes nothing: exit 0.
    let out = portcullis(&["review", old_arg, "--replay", &url]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("No recorded decision would change."));

    // Filters: nothing recorded after a future time or by another connector.
    for extra in [
        &["--since", "2999-01-01T00:00:00Z"][..],
        &["--connector", "edge-9"][..],
    ] {
        let mut args = vec!["review", new_arg, "--replay", &url];
        args.extend_from_slice(extra);
        let out = portcullis(&args);
        assert_eq!(code(&out), 0, "{extra:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("Records read: 0"), "{extra:?}");
    }
    let out = portcullis(&["review", new_arg, "--replay", &url, "--since", "1h"]);
    assert_eq!(code(&out), 1, "records of the last hour change");

    // Bad input: exit 2.
    let missing = dir.path().join("missing.db");
    let out = portcullis(&[
        "review",
        new_arg,
        "--replay",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("cannot read audit store"),
        "{}",
        stderr(&out)
    );
    assert!(!missing.exists(), "a replay never creates a store");
    let out = portcullis(&[
        "review",
        "tests/fixtures/config/bad-kind.toml",
        "--replay",
        &url,
    ]);
    assert_eq!(code(&out), 2);
    let out = portcullis(&["review", new_arg, "--since", "1h"]);
    assert_eq!(code(&out), 2, "--since needs --replay");
}

// ---- version ---------------------------------------------------------------

#[test]
fn version_names_the_tailscale_build() {
    let out = portcullis(&["version"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(text.starts_with(&format!("portcullis {}\n", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains("tailscale.com v1."), "{text}");

    let out = portcullis(&["version", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        v["tailscale"]
            .as_str()
            .is_some_and(|t| t.starts_with("v1.")),
        "{v}"
    );
    assert!(
        v["go"].as_str().is_some_and(|g| g.starts_with("go1.")),
        "{v}"
    );
}

// ---- audit -----------------------------------------------------------------

fn caller(user: Option<&str>, node: &str, tags: &[&str]) -> Caller {
    Caller {
        addr: "100.64.0.7:41234".parse().expect("address"),
        node_id: format!("id-{node}"),
        node: node.to_owned(),
        user: user.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        capabilities: BTreeMap::new(),
    }
}

/// Record `i` of a varied set: alice opens `db` and sends HTTP to `wiki`,
/// a tagged bot calls a tool on `github` and is denied on `db`.
fn sample(i: usize) -> Record {
    let alice = caller(Some("alice@example.com"), "alice-laptop", &[]);
    let bot = caller(None, "ci-runner", &["tag:agent"]);
    match i % 4 {
        0 => Record::connection_open(&alice, "db", "db"),
        1 => Record::tool_call(&bot, "github", "create_issue").permit(),
        2 => Record::connection_denied(&bot, "db", "db", "no_matching_rule", "no rule"),
        _ => Record::http_request(&alice, "wiki", "GET", "/").permit(),
    }
}

/// Writes `records` to `connector`'s chain at `url`, then the shutdown
/// record.
async fn write_audit(url: &str, connector: &str, records: impl IntoIterator<Item = Record>) {
    let (log, task) = AuditLog::open(url, connector, 1024)
        .await
        .expect("open log");
    log.set_fingerprint("f00d");
    for record in records {
        log.record(record);
    }
    log.shutdown().await.expect("shutdown");
    task.await.expect("writer task").expect("writer result");
}

/// A store with 20 sample records plus the shutdown record of `edge-1`.
async fn audit_db(dir: &tempfile::TempDir) -> String {
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    write_audit(&url, "edge-1", (0..20).map(sample)).await;
    url
}

fn lines(out: &Output) -> usize {
    stdout(out).lines().count()
}

#[tokio::test]
async fn audit_verify_detects_tampering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = audit_db(&dir).await;

    let out = portcullis(&["audit", "verify", "--audit", &url]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("edge-1: 21 records, head seq 21"), "{text}");
    assert!(text.contains("ends with shutdown"), "{text}");
    assert!(
        text.ends_with("OK: 21 records in 1 chain verified\n"),
        "{text}"
    );

    let out = portcullis(&["audit", "verify", "--audit", &url, "--connector", "edge-9"]);
    assert_eq!(code(&out), 1, "a named chain without records is not OK");

    let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
    sqlx::query(
        "UPDATE audit_records SET body = replace(body, 'alice', 'mallory') \
         WHERE connector = 'edge-1' AND seq = 5",
    )
    .execute(&pool)
    .await
    .expect("tamper");
    pool.close().await;

    let out = portcullis(&["audit", "verify", "--audit", &url]);
    assert_eq!(code(&out), 1);
    assert!(!stdout(&out).contains("OK"), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("connector edge-1, seq 5:"), "{err}");

    let out = portcullis(&["audit", "verify", "--json", "--audit", &url]);
    assert_eq!(code(&out), 1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad"]["seq"], 5);
}

#[tokio::test]
async fn audit_query_filters_and_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = audit_db(&dir).await;
    let query = |extra: &[&str]| {
        let mut args = vec!["audit", "query", "--audit", url.as_str(), "--json"];
        args.extend_from_slice(extra);
        portcullis(&args)
    };
    let table = [
        (&[][..], 21),
        (&["--decision", "deny"][..], 5),
        (&["--decision", "permit"][..], 15),
        (&["--endpoint", "db"][..], 10),
        (&["--caller", "ALICE"][..], 10),
        (&["--caller", "tag:agent", "--endpoint", "github"][..], 5),
        (&["--kind", "mcp_tool_call"][..], 5),
        (&["--kind", "shutdown"][..], 1),
        (&["--since", "1h"][..], 21),
        (&["--since", "2999-01-01T00:00:00Z"][..], 0),
        (&["--until", "1h"][..], 0),
        (&["--limit", "3"][..], 3),
    ];
    for (extra, expected) in table {
        let out = query(extra);
        assert_eq!(code(&out), 0, "{extra:?}: {}", stderr(&out));
        assert_eq!(lines(&out), expected, "{extra:?}");
    }

    let out = query(&["--decision", "deny", "--limit", "1"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON line");
    assert_eq!(v["seq"], 19, "the most recent match");
    assert_eq!(v["record"]["reason"], "no_matching_rule");

    let out = portcullis(&["audit", "query", "--audit", &url, "--endpoint", "github"]);
    let text = stdout(&out);
    assert!(text.starts_with("TIME"), "{text}");
    assert_eq!(text.lines().count(), 6, "header and five rows:\n{text}");

    for (flag, value) in [("--since", "15x"), ("--until", "soon"), ("--kind", "nope")] {
        let out = query(&[flag, value]);
        assert_eq!(code(&out), 2);
        let err = stderr(&out);
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }

    let out = portcullis(&["audit", "query"]);
    assert_eq!(code(&out), 2, "a store is required");
    let missing = dir.path().join("missing.db");
    let out = portcullis(&[
        "audit",
        "query",
        "--audit",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(code(&out), 2, "a read-only open never creates a store");
    assert!(!missing.exists());
}

#[tokio::test]
async fn audit_store_defaults_from_the_endpoint_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = audit_db(&dir).await;
    let base = std::fs::read_to_string(root().join("examples/minimal.toml")).expect("example");
    let config = base.replace(
        "state_dir = \"/var/lib/portcullis\"",
        &format!("state_dir = {:?}", dir.path().display().to_string()),
    );
    assert_ne!(config, base);
    let config_path = dir.path().join("endpoints.toml");
    std::fs::write(&config_path, config).expect("write config");
    let config_path = config_path.to_str().expect("utf-8");

    let out = portcullis(&["audit", "verify", "--config", config_path]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("OK: 21 records"));

    let out = portcullis(&["audit", "verify", "--config", config_path, "--audit", &url]);
    assert_eq!(code(&out), 2, "--config and --audit exclude each other");
}

#[tokio::test]
async fn audit_export_writes_one_line_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = audit_db(&dir).await;

    let out = portcullis(&["audit", "export", "--jsonl", "--audit", &url]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(lines(&out), 21);
    for line in stdout(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["connector"], "edge-1");
    }

    let file = dir.path().join("export.jsonl");
    let file_arg = file.to_str().expect("utf-8");
    let out = portcullis(&[
        "audit", "export", "--jsonl", "--audit", &url, "-o", file_arg,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&file).expect("export file");
    assert_eq!(
        written,
        stdout(&portcullis(&[
            "audit", "export", "--jsonl", "--audit", &url
        ]))
    );

    let out = portcullis(&["audit", "export", "--audit", &url]);
    assert_eq!(code(&out), 2, "--jsonl is required");
}

#[tokio::test]
async fn audit_tail_prints_the_last_records_and_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = audit_db(&dir).await;

    let out = portcullis(&["audit", "tail", "--audit", &url, "--json", "-n", "4"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(lines(&out), 4);
    assert!(
        stdout(&out)
            .lines()
            .last()
            .is_some_and(|l| l.contains("\"seq\":21"))
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "tail", "-f", "--json", "--audit", &url])
        .args(["-n", "2", "--endpoint", "db"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail -f");
    let (tx, rx) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(15))
            .expect("a line from tail -f")
    };
    for expected in [17, 19] {
        assert!(
            next().contains(&format!("\"seq\":{expected},")),
            "backlog of -n 2"
        );
    }

    // One matching and one other record; the shutdown record does not
    // match --endpoint db either.
    let alice = caller(Some("alice@example.com"), "alice-laptop", &[]);
    write_audit(
        &url,
        "edge-1",
        [
            Record::http_request(&alice, "wiki", "GET", "/late"),
            Record::connection_open(&alice, "db", "db").with_extra("late", serde_json::json!(true)),
        ],
    )
    .await;
    let line = next();
    assert!(
        line.contains("\"seq\":23,") && line.contains("\"late\":true"),
        "{line}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("tail -f exits");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "nothing else printed"
    );
}
