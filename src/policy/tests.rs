use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::config;

const CAP: &str = "example.com/cap/portcullis";

fn policy() -> Policy {
    let src = format!(
        r#"
[tailnet]
control_url = "https://hs.example.com"
auth_key_env = "TS_KEY"
state_dir = "/tmp/p"

[groups]
sre = ["user:Alice@Example.com", "node:ops-box"]
agents = ["tag:agent"]

[mcp]
allow = ["group:agents", "group:sre"]
metrics_allow = ["group:sre"]
capability = "{CAP}"

[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:8000"
allow = ["group:agents", "group:sre"]
[endpoint.http]
methods = ["GET", "POST"]
paths = ["/", "/api/v1/*", "/static/**"]

[[endpoint]]
name = "postgres"
kind = "tcp"
target = "127.0.0.1:5432"
allow = ["group:sre", "tag:agent"]

[[endpoint]]
name = "tickets"
kind = "mcp"
target = "127.0.0.1:8001"
allow = ["group:agents"]
[endpoint.mcp]
tools_allow = ["search_*", "get_ticket", "delete_draft"]
tools_deny = ["delete_*"]

[[endpoint]]
name = "secret"
kind = "http"
target = "127.0.0.1:9000"
"#
    );
    Policy::from_config(&config::parse(&src, "t.toml").expect("valid policy config"))
}

fn caller(user: Option<&str>, tags: &[&str], node: &str) -> Caller {
    Caller {
        addr: "100.64.0.9:41000".parse().expect("addr"),
        node_id: "nABC123CNTRL".into(),
        node: node.into(),
        user: user.map(Into::into),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        capabilities: BTreeMap::new(),
    }
}

fn alice() -> Caller {
    caller(Some("alice@example.com"), &[], "laptop.tail.ts.net")
}
fn agent() -> Caller {
    caller(None, &["tag:agent"], "agent-1.tail.ts.net")
}
fn intruder() -> Caller {
    caller(None, &["tag:intruder"], "evil.tail.ts.net")
}
fn ops_box() -> Caller {
    caller(Some("carol@example.com"), &[], "ops-box.tail.ts.net")
}

fn with_cap(mut c: Caller, values: Vec<serde_json::Value>) -> Caller {
    c.capabilities.insert(CAP.into(), values);
    c
}

fn http<'a>(endpoint: &'a str, method: &'a str, path: &'a str) -> Action<'a> {
    Action::Http {
        endpoint,
        method,
        path,
    }
}

fn tool<'a>(endpoint: &'a str, tool: &'a str) -> Action<'a> {
    Action::CallTool { endpoint, tool }
}

#[test]
fn decision_table() {
    let p = policy();
    let capped = with_cap(
        intruder(),
        vec![json!({"endpoints": ["sec*"], "tools": ["tickets/get_*", "tickets/delete_*"]})],
    );
    #[rustfmt::skip]
    let table: Vec<(&str, Caller, Action<'_>, bool, &str, &str)> = vec![
        ("user via group", alice(), Action::Connect { endpoint: "postgres", port: 5432 }, true, "allowed_by_identity", "allowed by group:sre (user:Alice@Example.com)"),
        ("tag directly", agent(), Action::Connect { endpoint: "postgres", port: 5432 }, true, "allowed_by_identity", "allowed by tag:agent"),
        ("node first label", ops_box(), Action::Connect { endpoint: "postgres", port: 5432 }, true, "allowed_by_identity", "allowed by group:sre (node:ops-box)"),
        ("wrong port", agent(), Action::Connect { endpoint: "postgres", port: 5433 }, false, "port_not_allowed", "endpoint \"postgres\" does not listen on port 5433"),
        ("unknown endpoint", alice(), Action::Connect { endpoint: "nope", port: 80 }, false, "unknown_endpoint", "no endpoint named \"nope\""),
        ("not listed", intruder(), Action::Connect { endpoint: "postgres", port: 5432 }, false, "not_in_allow_list", "caller is not in the allow list of endpoint \"postgres\""),
        ("empty allow is nobody", alice(), Action::Connect { endpoint: "secret", port: 80 }, false, "not_in_allow_list", "caller is not in the allow list of endpoint \"secret\""),
        ("http ok", agent(), http("web", "GET", "/api/v1/query?x=1"), true, "allowed_by_identity", "allowed by group:agents (tag:agent)"),
        ("http root", agent(), http("web", "GET", "/"), true, "allowed_by_identity", "allowed by group:agents (tag:agent)"),
        ("http deep static", agent(), http("web", "GET", "/static/css/a.css"), true, "allowed_by_identity", "allowed by group:agents (tag:agent)"),
        ("method", agent(), http("web", "DELETE", "/api/v1/x"), false, "method_not_allowed", "method \"DELETE\" is not allowed on endpoint \"web\""),
        ("method case", agent(), http("web", "get", "/"), false, "method_not_allowed", "method \"get\" is not allowed on endpoint \"web\""),
        ("star is one segment", agent(), http("web", "GET", "/api/v1/a/b"), false, "path_not_allowed", "path \"/api/v1/a/b\" is not allowed on endpoint \"web\""),
        ("traversal", agent(), http("web", "GET", "/api/v1/../../admin"), false, "malformed_path", "refused path \"/api/v1/../../admin\": '.' or '..' segment"),
        ("encoded traversal", agent(), http("web", "GET", "/api/v1/%2e%2e"), false, "malformed_path", "refused path \"/api/v1/%2e%2e\": '.' or '..' segment"),
        ("encoded slash", agent(), http("web", "GET", "/api/v1/a%2Fb"), false, "malformed_path", "refused path \"/api/v1/a%2Fb\": percent-encoded slash"),
        ("double slash", agent(), http("web", "GET", "//api/v1/x"), false, "malformed_path", "refused path \"//api/v1/x\": empty segment ('//')"),
        ("http on tcp", agent(), http("postgres", "GET", "/"), false, "wrong_kind", "endpoint \"postgres\" is kind tcp, which has no http access"),
        ("http not allowed", intruder(), http("web", "GET", "/"), false, "not_in_allow_list", "caller is not in the allow list of endpoint \"web\""),
        ("mcp access", agent(), Action::McpAccess, true, "allowed_by_identity", "allowed by group:agents (tag:agent)"),
        ("mcp denied", intruder(), Action::McpAccess, false, "mcp_not_allowed", "caller is not allowed to use the MCP endpoint"),
        ("metrics sre", alice(), Action::Metrics, true, "allowed_by_identity", "allowed by group:sre (user:Alice@Example.com)"),
        ("metrics agent", agent(), Action::Metrics, false, "metrics_not_allowed", "caller may not read metrics"),
        ("tool allowed", agent(), tool("tickets", "search_issues"), true, "allowed_by_identity", "allowed by group:agents (tag:agent)"),
        ("tool deny wins", agent(), tool("tickets", "delete_draft"), false, "tool_denied", "tool \"delete_draft\" on \"tickets\" is denied by \"delete_*\""),
        ("tool not listed", agent(), tool("tickets", "close_ticket"), false, "tool_not_allowed", "tool \"close_ticket\" on \"tickets\" is not allowed"),
        ("tool caller not allowed", alice(), tool("tickets", "search_issues"), false, "not_in_allow_list", "caller is not in the allow list of endpoint \"tickets\""),
        ("http_request tool", agent(), tool("web", "http_request"), true, "allowed_by_identity", "allowed by group:agents (tag:agent)"),
        ("other tool on http", agent(), tool("web", "rm"), false, "tool_not_allowed", "tool \"rm\" on \"web\" is not allowed"),
        ("tool on tcp", agent(), tool("postgres", "http_request"), false, "wrong_kind", "endpoint \"postgres\" is kind tcp, which has no tools access"),
        ("list tools", agent(), Action::ListTools { endpoint: "tickets" }, true, "allowed_by_identity", "allowed by group:agents (tag:agent)"),
        ("list tools denied", alice(), Action::ListTools { endpoint: "tickets" }, false, "not_in_allow_list", "caller is not in the allow list of endpoint \"tickets\""),
        ("cap endpoint", capped.clone(), Action::Connect { endpoint: "secret", port: 80 }, true, "allowed_by_capability", "allowed by capability example.com/cap/portcullis (endpoints: sec*)"),
        ("cap tool", capped.clone(), tool("tickets", "get_ticket"), true, "allowed_by_capability", "allowed by capability example.com/cap/portcullis (tools: tickets/get_*)"),
        ("cap tool still denied", capped.clone(), tool("tickets", "delete_draft"), false, "tool_denied", "tool \"delete_draft\" on \"tickets\" is denied by \"delete_*\""),
        ("cap tool only named", capped.clone(), tool("tickets", "search_x"), false, "not_in_allow_list", "caller is not in the allow list of endpoint \"tickets\""),
        ("cap list tools", capped.clone(), Action::ListTools { endpoint: "tickets" }, true, "allowed_by_capability", "allowed by capability example.com/cap/portcullis (tools: tickets/get_*)"),
        ("cap mcp access", capped.clone(), Action::McpAccess, true, "allowed_by_capability", "allowed by capability example.com/cap/portcullis (any grant)"),
        ("cap does not cover web", capped, http("web", "GET", "/"), false, "not_in_allow_list", "caller is not in the allow list of endpoint \"web\""),
    ];
    let mut failures = Vec::new();
    for (name, caller, action, permit, code, text) in &table {
        let d = decide(&p, caller, action);
        if d.permit != *permit || d.reason.code() != *code || d.reason.to_string() != *text {
            failures.push(format!(
                "{name}: got permit={} {} {:?}",
                d.permit,
                d.reason.code(),
                d.reason.to_string()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_reason_code_is_covered_and_distinct() {
    // Kept in step with the table above and the no-[mcp] test below.
    let codes = Reason::CODES;
    let unique: std::collections::BTreeSet<_> = codes.iter().collect();
    assert_eq!(unique.len(), codes.len());
}

#[test]
fn without_mcp_section_mcp_actions_are_denied() {
    let c = config::parse(
        "[tailnet]\ncontrol_url = \"https://h\"\nauth_key_env = \"K\"\nstate_dir = \"/s\"\n",
        "t.toml",
    )
    .expect("valid");
    let p = Policy::from_config(&c);
    for action in [Action::McpAccess, Action::Metrics] {
        let d = decide(&p, &alice(), &action);
        assert!(!d.permit);
        assert_eq!(d.reason.code(), "mcp_not_configured");
    }
    assert_eq!(p.fingerprint(), c.fingerprint);
}

#[test]
fn malformed_capability_values_grant_nothing() {
    let p = policy();
    let bad = [
        json!("secret"),
        json!(["secret"]),
        json!({"endpoint": ["secret"]}),
        json!({"endpoints": "secret"}),
        json!({"endpoints": ["secret", 3]}),
        json!({"endpoints": ["secret"], "extra": true}),
        json!({"endpoints": ["secret"], "tools": ["no_slash"]}),
        json!({"endpoints": ["sec***"]}),
        json!({"tools": ["tickets/"]}),
        json!(null),
    ];
    for value in bad {
        let c = with_cap(intruder(), vec![value.clone()]);
        let d = decide(
            &p,
            &c,
            &Action::Connect {
                endpoint: "secret",
                port: 80,
            },
        );
        assert!(!d.permit, "{value} must not grant access");
        assert!(!decide(&p, &c, &Action::McpAccess).permit, "{value}");
        assert!(visible_endpoints(&p, &c).is_empty(), "{value}");
    }
    // One bad value does not spoil a good one next to it.
    let c = with_cap(
        intruder(),
        vec![json!(42), json!({"endpoints": ["secret"]})],
    );
    assert!(
        decide(
            &p,
            &c,
            &Action::Connect {
                endpoint: "secret",
                port: 80
            }
        )
        .permit
    );
    // A grant under another capability name means nothing here.
    let mut other = intruder();
    other
        .capabilities
        .insert("other.com/cap/x".into(), vec![json!({"endpoints": ["*"]})]);
    assert!(
        !decide(
            &p,
            &other,
            &Action::Connect {
                endpoint: "secret",
                port: 80
            }
        )
        .permit
    );
}

#[test]
fn node_matches_fqdn_first_label_or_id_only() {
    let p = |id: &str| Identity::Node(id.into());
    let c = ops_box();
    assert!(matches(&p("ops-box"), &c));
    assert!(matches(&p("OPS-BOX.tail.ts.net"), &c));
    assert!(matches(&p("nABC123CNTRL"), &c));
    assert!(!matches(&p("ops"), &c));
    assert!(!matches(&p("tail.ts.net"), &c));
    assert!(!matches(&p("nabc123cntrl"), &c), "node IDs are exact");
}

#[test]
fn tagged_nodes_never_match_users() {
    let mut c = agent();
    c.user = None;
    assert!(!matches(&Identity::User("tagged-devices".into()), &c));
    assert!(matches(&Identity::Everyone, &c));
}

#[test]
fn visible_endpoints_follow_access() {
    let p = policy();
    let names = |c: &Caller| {
        visible_endpoints(&p, c)
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&agent()), ["web", "postgres", "tickets"]);
    assert_eq!(names(&alice()), ["web", "postgres"]);
    assert!(names(&intruder()).is_empty());
    let capped = with_cap(intruder(), vec![json!({"tools": ["tick*/get_*"]})]);
    assert_eq!(names(&capped), ["tickets"]);
}

#[test]
fn query_and_fragment_are_ignored_for_matching() {
    assert_eq!(path::normalise("/a/b?x=../..#f").as_deref(), Ok("/a/b"));
    assert_eq!(path::normalise("/a/%62").as_deref(), Ok("/a/b"));
    assert_eq!(path::normalise("/a/").as_deref(), Ok("/a/"));
    for bad in [
        "a", "", "/a/%2", "/a/%zz", "/a/%252e", "/a\\b", "/a/%00", "/a/./b",
    ] {
        assert!(path::normalise(bad).is_err(), "{bad:?} should be refused");
    }
}
