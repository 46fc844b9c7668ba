use std::path::PathBuf;

use super::*;
use crate::config;

fn example(name: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let source = std::fs::read_to_string(&path).expect("example file");
    config::parse(&source, &format!("examples/{name}")).expect("valid example")
}

fn example_names() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("examples dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    names
}

#[test]
fn report_snapshots_for_every_example() {
    for name in example_names() {
        let r = report(&example(&name));
        let stem = name.trim_end_matches(".toml");
        insta::assert_snapshot!(format!("{stem}.md"), render_markdown(&r));
        insta::assert_snapshot!(format!("{stem}.json"), render_json(&r));
    }
}

#[test]
fn diff_snapshot() {
    let old = example("endpoints.toml");
    let source = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/endpoints.toml"),
    )
    .expect("example");
    let changed = source
        .replace(
            "allow = [\"group:sre\", \"tag:agent\"]",
            "allow = [\"group:sre\", \"tag:agent\", \"user:eve@example.com\"]",
        )
        .replace("agents = [\"tag:agent\"]", "agents = [\"tag:agent\", \"tag:ci\"]")
        .replace("tools_deny = [\"delete_*\"]", "tools_deny = []")
        .replace("methods = [\"GET\", \"HEAD\", \"POST\"]", "methods = [\"GET\", \"HEAD\"]")
        .replace(
            "# The application database, as raw TCP.",
            "[[endpoint]]\nname = \"redis\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:6379\"\nallow = [\"group:sre\"]\n\n# The application database, as raw TCP.",
        );
    let new = config::parse(&changed, "examples/endpoints.toml (proposed)").expect("valid");
    let d = diff(&old, &new);
    assert!(d.has_changes());
    insta::assert_snapshot!("diff.md", render_diff_markdown(&d));
    insta::assert_snapshot!("diff.json", render_diff_json(&d));
    assert!(!diff(&old, &old).has_changes());
}

fn warning_codes(extra: &str) -> Vec<&'static str> {
    let src = format!(
        "[tailnet]\ncontrol_url = \"https://h\"\nauth_key_env = \"K\"\nstate_dir = \"/s\"\n{extra}"
    );
    let c = config::parse(&src, "t.toml").expect("valid");
    report(&c).warnings.iter().map(|w| w.code).collect()
}

#[test]
fn every_warning_fires() {
    let cases = [
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"*\"]\n",
            "allow_everyone",
        ),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"tcp\"\ntarget=\"8.8.8.8:53\"\nallow=[\"tag:x\"]\n",
            "public_target",
        ),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"http\"\ntarget=\"8.8.8.8:80\"\nallow=[\"tag:x\"]\n",
            "plaintext_http",
        ),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"tcp\"\ntarget=\"db.internal:5432\"\nallow=[\"tag:x\"]\n",
            "dns_target",
        ),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"tag:x\"]\n[[endpoint]]\nname=\"b\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"tag:x\"]\n",
            "duplicate_target",
        ),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"tag:x\"]\n[[endpoint]]\nname=\"a-1\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:2\"\nallow=[\"tag:x\"]\n",
            "name_collision",
        ),
        ("[groups]\ng=[\"tag:x\"]\n", "unused_group"),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\n",
            "unreachable_endpoint",
        ),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"mcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"tag:x\"]\n",
            "wildcard_tools",
        ),
        (
            "[[endpoint]]\nname=\"a\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"tag:x\"]\n[endpoint.inspect]\nsecrets=\"log\"\n",
            "secrets_logged",
        ),
        ("[mcp]\nmetrics_allow=[\"*\"]\n", "metrics_open"),
    ];
    for (extra, code) in cases {
        let codes = warning_codes(extra);
        assert!(
            codes.contains(&code),
            "{code} not raised for:\n{extra}\ngot {codes:?}"
        );
    }
    assert!(warning_codes("").is_empty());
}

#[test]
fn diff_compares_resolved_identities() {
    let base = "[tailnet]\ncontrol_url = \"https://h\"\nauth_key_env = \"K\"\nstate_dir = \"/s\"\n";
    let old = config::parse(
        &format!("{base}[groups]\ng=[\"user:a@x\"]\n[[endpoint]]\nname=\"e\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"group:g\"]\n"),
        "old",
    )
    .expect("valid");
    let same = config::parse(
        &format!("{base}[[endpoint]]\nname=\"e\"\nkind=\"tcp\"\ntarget=\"127.0.0.1:1\"\nallow=[\"user:A@x\"]\n"),
        "new",
    )
    .expect("valid");
    let d = diff(&old, &same);
    assert!(d.changed.is_empty(), "{d:?}");
}
