use std::path::{Path, PathBuf};

use super::*;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const BASE: &str = r#"
[tailnet]
control_url = "https://hs.example.com"
auth_key_env = "TS_KEY"
state_dir = "/var/lib/portcullis"
"#;

fn parse_ok(extra: &str) -> Config {
    match parse(&format!("{BASE}{extra}"), "t.toml") {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got:\n{e}"),
    }
}

fn parse_err(extra: &str) -> String {
    match parse(&format!("{BASE}{extra}"), "t.toml") {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_example_validates() {
    let dir = manifest_dir().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = load(&path) {
                panic!("{} does not validate:\n{e}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected at least 3 examples, found {seen}");
}

/// Each `tests/fixtures/config/NAME.toml` must fail with exactly the text in
/// `NAME.err`. Set `PORTCULLIS_BLESS=1` to rewrite the `.err` files.
#[test]
fn malformed_fixtures_report_expected_errors() {
    let dir = manifest_dir().join("tests/fixtures/config");
    let bless = std::env::var_os("PORTCULLIS_BLESS").is_some();
    let mut count = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        count += 1;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let display = format!("tests/fixtures/config/{name}");
        let source = std::fs::read_to_string(&path).expect("fixture");
        let actual = match parse(&source, &display) {
            Ok(_) => "(no error)".to_owned(),
            Err(e) => e.to_string(),
        };
        let err_path = path.with_extension("err");
        if bless {
            std::fs::write(&err_path, format!("{actual}\n")).expect("write .err");
            continue;
        }
        let expected = std::fs::read_to_string(&err_path).unwrap_or_default();
        if expected.trim_end() != actual {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}--- actual\n{actual}\n"
            ));
        }
    }
    assert!(count >= 12, "expected at least 12 fixtures, found {count}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn defaults_are_filled() {
    let c = parse_ok(
        r#"
[mcp]
[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:8080"
[[endpoint]]
name = "db"
kind = "tcp"
target = "db.internal:5432"
[[endpoint]]
name = "t"
kind = "mcp"
target = "[::1]:8001"
"#,
    );
    let web = c.endpoint("web").expect("web");
    assert_eq!(web.ports, vec![80]);
    assert!(web.allow.is_empty(), "deny by default");
    assert_eq!(web.connect_timeout_ms, 5000);
    let http = web.http.as_ref().expect("http rules");
    assert_eq!(http.methods, vec!["GET", "HEAD"]);
    assert_eq!(http.paths[0].as_str(), "/**");
    assert!(!http.tls && !http.identity_headers);
    assert_eq!(http.max_response_bytes, 10 * 1024 * 1024);
    assert_eq!(http.timeout_ms, 30_000);
    assert!(web.mcp.is_none());
    assert_eq!(web.inspect, Inspect::default());

    let db = c.endpoint("db").expect("db");
    assert_eq!(db.ports, vec![5432]);
    assert_eq!(db.target.host, Host::Name("db.internal".into()));
    assert!(db.http.is_none());

    let t = c.endpoint("t").expect("t");
    assert_eq!(t.target.to_string(), "[::1]:8001");
    let up = t.mcp.as_ref().expect("mcp");
    assert_eq!(up.path, "/mcp");
    assert_eq!(up.tools_allow[0].as_str(), "*");
    assert!(up.tools_deny.is_empty());

    let mcp = c.mcp.as_ref().expect("mcp device");
    assert_eq!((mcp.name.as_str(), mcp.port), ("mcp", 80));
    assert_eq!(mcp.max_body_bytes, 1024 * 1024);
    assert!(mcp.allow.is_empty() && mcp.metrics_allow.is_empty());
    assert_eq!(mcp.rate_limit, RateLimits::default());
    assert!(!c.tailnet.ephemeral);
}

#[test]
fn groups_are_resolved_into_allow_lists() {
    let c = parse_ok(
        r#"
[groups]
sre = ["user:alice@example.com", "node:build-1"]
[[endpoint]]
name = "db"
kind = "tcp"
target = "127.0.0.1:5432"
allow = ["group:sre", "tag:agent", "*"]
"#,
    );
    let db = c.endpoint("db").expect("db");
    assert_eq!(
        db.allow[0],
        Identity::Group {
            name: "sre".into(),
            members: vec![
                Identity::User("alice@example.com".into()),
                Identity::Node("build-1".into())
            ],
        }
    );
    assert_eq!(db.allow[1], Identity::Tag("tag:agent".into()));
    assert_eq!(db.allow[2], Identity::Everyone);
}

#[test]
fn hostnames_use_the_prefix() {
    let c = parse(
        &format!(
            "{}\n[mcp]\n[[endpoint]]\nname = \"web\"\nkind = \"http\"\ntarget = \"127.0.0.1:1\"\n",
            BASE.replace("[tailnet]", "[tailnet]\nhostname_prefix = \"corp-\"")
        ),
        "t.toml",
    )
    .expect("valid");
    assert_eq!(c.endpoints[0].hostname, "corp-web");
    assert_eq!(
        c.mcp.as_ref().map(|m| m.hostname.as_str()),
        Some("corp-mcp")
    );
    assert_eq!(
        c.tailnet.device_state_dir("corp-web"),
        Path::new("/var/lib/portcullis/corp-web")
    );
}

#[test]
fn semantic_errors_name_file_line_column_and_path() {
    let err = parse_err(
        r#"
[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:8080"
[endpoint.http]
methods = ["GET", "FETCH"]
"#,
    );
    assert_eq!(
        err,
        r#"t.toml:12:19: endpoint[0].http.methods[1]: unknown HTTP method "FETCH""#
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = parse_err(
        r#"
[[endpoint]]
name = "-bad"
kind = "udp"
target = "127.0.0.1"
allow = ["group:nope"]
"#,
    );
    assert_eq!(err.lines().count(), 4, "{err}");
}

#[test]
fn fingerprint_is_sha256_of_exact_bytes() {
    let src = format!("{BASE}\n");
    let a = parse(&src, "a.toml").expect("valid");
    let b = parse(&format!("{src}# comment\n"), "a.toml").expect("valid");
    assert_eq!(a.fingerprint.len(), 64);
    assert_ne!(
        a.fingerprint, b.fingerprint,
        "comments are part of what was reviewed"
    );
    assert_eq!(
        parse("", "e.toml").err().map(|e| e.diagnostics().len()),
        Some(1),
        "an empty file lacks [tailnet]"
    );
    let empty = hex::encode(Sha256::digest(b""));
    assert_eq!(
        empty,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn load_reports_missing_file() {
    let err = load(Path::new("/nonexistent/endpoints.toml")).expect_err("missing");
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/endpoints.toml")
    );
}

#[test]
fn auth_key_from_file_is_trimmed_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    std::fs::write(&key, "  tskey-auth-abc \n").expect("write");
    let mut t = parse_ok("").tailnet;
    t.auth_key = AuthKeySource::File(key.clone());
    assert_eq!(t.auth_key().expect("key"), "tskey-auth-abc");
    std::fs::write(&key, " \n").expect("write");
    assert_eq!(
        t.auth_key().expect_err("empty").to_string(),
        format!("tailnet auth key: file {} is empty", key.display())
    );
    t.auth_key = AuthKeySource::File(dir.path().join("absent"));
    assert!(
        t.auth_key()
            .expect_err("absent")
            .to_string()
            .contains("cannot read file")
    );
    // A name no test environment sets.
    t.auth_key = AuthKeySource::Env("PORTCULLIS_TEST_UNSET_AUTH_KEY_7f3a".into());
    assert_eq!(
        t.auth_key().expect_err("unset").to_string(),
        "tailnet auth key: environment variable PORTCULLIS_TEST_UNSET_AUTH_KEY_7f3a is not set"
    );
}

#[test]
fn targets_parse_and_display() {
    for (input, shown) in [
        ("127.0.0.1:80", "127.0.0.1:80"),
        ("[::1]:8080", "[::1]:8080"),
        ("DB.Internal.:5432", "db.internal:5432"),
        ("localhost:1", "localhost:1"),
    ] {
        assert_eq!(
            Target::parse(input).map(|t| t.to_string()),
            Ok(shown.into())
        );
    }
    for bad in [
        "127.0.0.1",
        "h:0",
        "h:65536",
        ":80",
        "::1:80",
        "a..b:1",
        "1.2.3.999:1",
        "[::1]80",
    ] {
        assert!(Target::parse(bad).is_err(), "{bad} should be rejected");
    }
    assert!(Target::parse("10.1.2.3:1").is_ok_and(|t| t.host.is_private()));
    assert!(Target::parse("100.100.1.1:1").is_ok_and(|t| t.host.is_private()));
    assert!(Target::parse("[fd00::1]:1").is_ok_and(|t| t.host.is_private()));
    assert!(Target::parse("8.8.8.8:53").is_ok_and(|t| !t.host.is_private()));
    assert!(Target::parse("example.com:443").is_ok_and(|t| !t.host.is_private()));
}

#[test]
fn audit_section_and_strip_headers_validate_with_field_paths() {
    let c = parse_ok("");
    assert_eq!(c.audit, AuditSettings::default());
    let c = parse_ok("[audit]\non_failure = \"serve\"\nqueue = 128\n");
    assert_eq!(c.audit.on_failure, OnAuditFailure::Serve);
    assert_eq!(c.audit.queue, 128);
    let err = parse_err("[audit]\non_failure = \"ignore\"\nqueue = 0\n");
    assert!(
        err.contains("audit.on_failure: unknown value \"ignore\""),
        "{err}"
    );
    assert!(err.contains("audit.queue"), "{err}");
    assert!(parse_err("[audit]\nonfailure = \"serve\"\n").contains("unknown field"));

    let endpoint = |strip: &str| {
        format!(
            "[[endpoint]]\nname = \"web\"\nkind = \"http\"\ntarget = \"10.0.0.1:80\"\n\
             allow = [\"*\"]\n[endpoint.http]\nstrip_headers = [{strip}]\n"
        )
    };
    let c = parse_ok(&endpoint("\"X_Api_User\", \"X-Internal-*\""));
    let rules = c.endpoints[0].http.as_ref().unwrap();
    assert_eq!(rules.strip_headers, ["x-api-user", "x-internal-*"]);
    for bad in [
        "\"\"",
        "\"*\"",
        "\"X Api\"",
        "\"X-*-Y\"",
        "\"a:b\"",
        "\"X-Ä\"",
    ] {
        let err = parse_err(&endpoint(bad));
        assert!(
            err.contains("endpoint[0].http.strip_headers[0]"),
            "{bad}: {err}"
        );
    }
    let err = parse_err(&endpoint("\"X-A\", \"x_a\""));
    assert!(err.contains("strip_headers[1]: duplicate header"), "{err}");
}

#[test]
fn go_runtime_settings_parse_and_bad_ones_name_their_field() {
    let with = |lines: &str| BASE.replace("[tailnet]", &format!("[tailnet]\n{lines}"));
    let c = parse(&with("go_gc = 50\ngo_memory_limit = \"3GiB\""), "t.toml").expect("valid");
    assert_eq!(c.tailnet.go_gc, Some(GoGc::Percent(50)));
    assert_eq!(c.tailnet.go_memory_limit, Some(3 << 30));
    let c = parse(
        &with("go_gc = \"off\"\ngo_memory_limit = 1073741824"),
        "t.toml",
    )
    .expect("valid");
    assert_eq!(c.tailnet.go_gc, Some(GoGc::Off));
    assert_eq!(c.tailnet.go_memory_limit, Some(1 << 30));
    let c = parse_ok("");
    assert_eq!((c.tailnet.go_gc, c.tailnet.go_memory_limit), (None, None));

    for (lines, expect) in [
        (
            "go_gc = 0",
            "t.toml:3:9: tailnet.go_gc: invalid Go GC setting \"0\"",
        ),
        ("go_gc = -5", "tailnet.go_gc: invalid Go GC setting \"-5\""),
        (
            "go_gc = \"sometimes\"",
            "tailnet.go_gc: invalid Go GC setting",
        ),
        (
            "go_gc = \"off\"",
            "tailnet.go_gc: go_gc = \"off\" without `go_memory_limit`",
        ),
        (
            "go_memory_limit = \"2GB\"",
            "tailnet.go_memory_limit: invalid size \"2GB\"",
        ),
        (
            "go_memory_limit = 0",
            "tailnet.go_memory_limit: invalid size \"0\"",
        ),
        (
            "go_memory_limit = -1",
            "tailnet.go_memory_limit: invalid size \"-1\"",
        ),
        ("go_gc = true", "tailnet.go_gc"),
    ] {
        let err = parse(&with(lines), "t.toml").expect_err(lines).to_string();
        assert!(err.contains(expect), "{lines}: {err}");
    }
}
