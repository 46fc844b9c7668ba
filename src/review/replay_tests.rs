//! Replay against records built in memory the way the data path builds
//! them: every recorded decision is made by `policy::decide` under an old
//! file, then replayed under a proposed one.

use std::collections::BTreeMap;

use time::macros::datetime;

use super::replay::listed;
use super::*;
use crate::audit::{self, Record, StoredRecord};
use crate::config::{self, Kind as EndpointKind};
use crate::identity::Caller;
use crate::policy::{self, Action, Policy, Reason};

const CAP: &str = "example.com/cap/portcullis";

const HEAD: &str = r#"
[tailnet]
control_url = "https://h"
auth_key_env = "K"
state_dir = "/s"
"#;

/// The file the records were made under.
fn old_file() -> String {
    format!(
        r#"{HEAD}
[groups]
sre = ["user:alice@example.com"]

[mcp]
allow = ["tag:agent", "group:sre"]
capability = "{CAP}"

[[endpoint]]
name = "web"
kind = "http"
target = "127.0.0.1:18000"
allow = ["tag:agent", "group:sre"]
[endpoint.http]
methods = ["GET", "POST"]
paths = ["/api/**"]

[[endpoint]]
name = "db"
kind = "tcp"
target = "127.0.0.1:5432"
ports = [5432, 5433]
allow = ["tag:agent", "group:sre"]

[[endpoint]]
name = "tickets"
kind = "mcp"
target = "127.0.0.1:18001"
allow = ["tag:agent", "group:sre"]
[endpoint.mcp]
tools_allow = ["search_*", "delete_ticket"]

[[endpoint]]
name = "legacy"
kind = "tcp"
target = "127.0.0.1:2222"
allow = ["group:sre"]
"#
    )
}

/// The proposed file: `tag:agent` loses `db`, `POST` goes from `web`,
/// `delete_*` is denied on `tickets`, bob joins `sre`, `sre` may read
/// metrics, port 5433 and the `legacy` endpoint go.
fn new_file() -> String {
    old_file()
        .replace(
            &format!("capability = \"{CAP}\""),
            &format!("capability = \"{CAP}\"\nmetrics_allow = [\"group:sre\"]"),
        )
        .replace(
            "sre = [\"user:alice@example.com\"]",
            "sre = [\"user:alice@example.com\", \"user:bob@example.com\"]",
        )
        .replace(
            "ports = [5432, 5433]\nallow = [\"tag:agent\", \"group:sre\"]",
            "ports = [5432]\nallow = [\"group:sre\"]",
        )
        .replace("methods = [\"GET\", \"POST\"]", "methods = [\"GET\"]")
        .replace(
            "tools_allow = [\"search_*\", \"delete_ticket\"]",
            "tools_allow = [\"search_*\", \"delete_ticket\"]\ntools_deny = [\"delete_*\"]",
        )
        .replace(
            "[[endpoint]]\nname = \"legacy\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:2222\"\nallow = [\"group:sre\"]\n",
            "",
        )
}

fn parse(source: &str, name: &str) -> Config {
    config::parse(source, name).expect("valid test file")
}

fn caller(user: Option<&str>, node: &str, tags: &[&str]) -> Caller {
    Caller {
        addr: "100.64.0.9:40000".parse().expect("address"),
        node_id: format!("id-{node}"),
        node: format!("{node}.tail.example"),
        user: user.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        capabilities: BTreeMap::new(),
    }
}

fn agent() -> Caller {
    caller(None, "agent-1", &["tag:agent"])
}

fn alice() -> Caller {
    caller(Some("alice@example.com"), "alice-laptop", &[])
}

fn bob() -> Caller {
    caller(Some("bob@example.com"), "bob-laptop", &[])
}

/// A caller outside every allow list who holds a capability grant for `db`.
fn carol() -> Caller {
    let mut c = caller(Some("carol@example.com"), "carol-laptop", &[]);
    c.capabilities.insert(
        CAP.to_owned(),
        vec![serde_json::json!({"endpoints": ["db"]})],
    );
    c
}

/// Copies a decision into a record, as the data path does.
fn stamp(mut record: Record, d: &policy::Decision) -> Record {
    record.decision = Some(if d.permit {
        audit::Decision::Permit
    } else {
        audit::Decision::Deny
    });
    record.reason = Some(d.reason.code().to_owned());
    record.detail = Some(d.reason.to_string());
    record
}

/// The record of one connection to a device.
fn connect(policy: &Policy, c: &Caller, endpoint: &str, port: u16) -> Record {
    let d = policy::decide(policy, c, &Action::Connect { endpoint, port });
    let kind = if d.permit {
        audit::Kind::ConnectionOpen
    } else {
        audit::Kind::ConnectionDenied
    };
    let mut r = Record::connection_open(c, endpoint, endpoint).with_extra("port", port.into());
    r.kind = kind;
    stamp(r, &d)
}

/// The record of one request on an `http` device (port 80): the
/// connection's denial wins, else the request's decision.
fn request(policy: &Policy, c: &Caller, endpoint: &str, method: &str, path: &str) -> Record {
    let port = 80;
    let conn = policy::decide(policy, c, &Action::Connect { endpoint, port });
    let d = if conn.permit {
        policy::decide(
            policy,
            c,
            &Action::Http {
                endpoint,
                method,
                path,
            },
        )
    } else {
        conn
    };
    let r = Record::http_request(c, endpoint, method, path)
        .with_device(endpoint)
        .with_extra("port", port.into());
    stamp(r, &d)
}

/// The record of one upstream tool call through the MCP device; a caller
/// the MCP device refuses gets the front's denial record instead.
fn tool_call(policy: &Policy, c: &Caller, endpoint: &str, tool: &str) -> Record {
    let access = policy::decide(policy, c, &Action::McpAccess);
    if !access.permit {
        let r = Record::connection_denied(
            c,
            "mcp",
            "mcp",
            access.reason.code(),
            &access.reason.to_string(),
        )
        .with_extra("http_method", "POST".into());
        let mut r = r;
        r.path = Some("/mcp".to_owned());
        return r;
    }
    let name = format!("{endpoint}__{tool}");
    let d = policy::decide(policy, c, &Action::CallTool { endpoint, tool });
    let mut r = Record::tool_call(c, "mcp", &name).with_device("mcp");
    r.endpoint = Some(endpoint.to_owned());
    let mut r = stamp(r, &d);
    if d.permit {
        // The data path records only the code of a permit.
        r.detail = None;
    }
    r
}

/// The `http_request` tool: access, `CallTool`, then the request.
fn http_tool(policy: &Policy, c: &Caller, endpoint: &str, method: &str, path: &str) -> Record {
    let mut r = Record::tool_call(c, "mcp", policy::HTTP_REQUEST_TOOL).with_device("mcp");
    r.endpoint = Some(endpoint.to_owned());
    r.method = Some(method.to_owned());
    r.path = Some(path.to_owned());
    let call = policy::decide(
        policy,
        c,
        &Action::CallTool {
            endpoint,
            tool: policy::HTTP_REQUEST_TOOL,
        },
    );
    let d = if call.permit {
        let http = policy::decide(
            policy,
            c,
            &Action::Http {
                endpoint,
                method,
                path,
            },
        );
        if http.permit { call } else { http }
    } else {
        call
    };
    stamp(r, &d)
}

/// The record of a refused `GET /metrics` on the MCP device.
fn metrics(policy: &Policy, c: &Caller) -> Record {
    let d = policy::decide(policy, c, &Action::Metrics);
    assert!(!d.permit, "only refused metrics reads are recorded");
    let mut r = Record::connection_denied(c, "mcp", "mcp", d.reason.code(), &d.reason.to_string())
        .with_extra("http_method", "GET".into());
    r.path = Some("/metrics".to_owned());
    r
}

fn initialize(policy: &Policy, c: &Caller) -> Record {
    let d = policy::decide(policy, c, &Action::McpAccess);
    assert!(d.permit, "only admitted callers initialize");
    let mut r = Record::new(audit::Kind::McpInitialize)
        .with_caller(c)
        .with_device("mcp");
    r.decision = Some(audit::Decision::Permit);
    r.reason = Some(d.reason.code().to_owned());
    r
}

/// Stores records as chain `edge-1`, one second apart.
fn stored(config: &Config, records: Vec<Record>) -> Vec<StoredRecord> {
    let start = datetime!(2025-03-01 10:00:00 UTC);
    records
        .into_iter()
        .enumerate()
        .map(|(i, mut record)| {
            record.connector = "edge-1".to_owned();
            record.fingerprint.clone_from(&config.fingerprint);
            record.time = Some(start + time::Duration::seconds(i as i64));
            StoredRecord {
                seq: i as u64 + 1,
                prev_hash: String::new(),
                hash: String::new(),
                record,
            }
        })
        .collect()
}

/// A varied history made under the old file.
fn history(old: &Config) -> Vec<StoredRecord> {
    let p = Policy::from_config(old);
    let (agent, alice, bob, carol) = (agent(), alice(), bob(), carol());
    let mut records = vec![
        Record::startup(old.fingerprint.clone()),
        initialize(&p, &agent),
    ];
    for _ in 0..3 {
        records.push(connect(&p, &agent, "db", 5432));
    }
    let open = connect(&p, &alice, "db", 5432);
    records.push(open.clone());
    records.push(open.into_close());
    records.push(connect(&p, &alice, "db", 5433));
    records.push(connect(&p, &bob, "db", 5432));
    records.push(connect(&p, &carol, "db", 5432));
    records.push(connect(&p, &alice, "legacy", 2222));
    records.push(request(&p, &agent, "web", "GET", "/api/items"));
    records.push(request(&p, &agent, "web", "POST", "/api/items"));
    records.push(http_tool(&p, &agent, "web", "POST", "/api/items"));
    records.push(tool_call(&p, &agent, "tickets", "search_open"));
    records.push(tool_call(&p, &agent, "tickets", "delete_ticket"));
    records.push(tool_call(&p, &bob, "tickets", "search_open"));
    records.push(metrics(&p, &alice));
    // Written before refusals kept their path: known by the reason only.
    let mut agent_metrics = metrics(&p, &agent);
    agent_metrics.path = None;
    records.push(agent_metrics);
    // A peer the tailnet could not identify.
    let mut unknown = Record::new(audit::Kind::ConnectionDenied)
        .with_device("db")
        .deny("unknown_caller", "whois failed")
        .with_extra("port", 5432.into());
    unknown.endpoint = Some("db".to_owned());
    records.push(unknown);
    // A call refused by the rate limiter, not by the policy.
    let mut limited = Record::tool_call(&agent, "mcp", "tickets__search_open")
        .deny("rate_limited", "per_caller limit 20/s");
    limited.endpoint = Some("mcp".to_owned());
    records.push(limited);
    stored(old, records)
}

fn group<'a>(r: &'a Replay, change: Change, caller: &str, endpoint: &str) -> &'a ChangeGroup {
    r.changes
        .iter()
        .find(|g| g.change == change && g.caller == caller && g.endpoint == endpoint)
        .unwrap_or_else(|| panic!("no {change:?} group for {caller} on {endpoint}: {r:#?}"))
}

fn source() -> ReplaySource {
    ReplaySource {
        store: "sqlite:///var/lib/portcullis/audit.db".to_owned(),
        since: None,
        connector: None,
    }
}

#[test]
fn history_replayed_under_its_own_file_changes_only_capability_grants() {
    let old = parse(&old_file(), "old.toml");
    let records = history(&old);
    let r = replay(&old, &records, source());
    assert_eq!(r.totals.reason_changed, 0, "{r:#?}");
    // Carol's grant is not in the log: replayed without it, her permit
    // turns into a denial, the one change, and it is marked inexact.
    assert_eq!(r.totals.changed, 1, "{r:#?}");
    assert_eq!(r.totals.inexact, 1);
    let g = group(&r, Change::PermitToDeny, "carol@example.com", "db");
    assert_eq!(
        g.examples[0].old.reason.as_deref(),
        Some("allowed_by_capability")
    );
}

#[test]
fn tag_losing_access_method_and_tool_denied_and_new_permit() {
    let old = parse(&old_file(), "old.toml");
    let new = parse(&new_file(), "new.toml");
    let records = history(&old);
    let r = replay(&new, &records, source());

    // The agent's three connections to db are now refused.
    let g = group(&r, Change::PermitToDeny, "tag:agent", "db");
    assert_eq!(g.count, 3);
    assert_eq!(g.examples.len(), 3);
    let e = &g.examples[0];
    assert_eq!(e.old.decision, audit::Decision::Permit);
    assert_eq!(e.new.decision, audit::Decision::Deny);
    assert_eq!(e.new.reason.as_deref(), Some("not_in_allow_list"));
    assert_eq!(e.action, "connect :5432");
    assert_eq!(e.node, "agent-1.tail.example");
    assert!(e.inexact.is_none());

    // POST is no longer allowed on web, on the device and through the tool.
    let g = group(&r, Change::PermitToDeny, "tag:agent", "web");
    assert_eq!(g.count, 2, "{g:#?}");
    for e in &g.examples {
        assert_eq!(
            e.new.reason.as_deref(),
            Some("method_not_allowed"),
            "{e:#?}"
        );
        assert!(e.action.contains("POST /api/items"), "{e:#?}");
    }

    // delete_ticket is now denied by a tools_deny pattern; search is not.
    let g = group(&r, Change::PermitToDeny, "tag:agent", "tickets");
    assert_eq!(g.count, 1);
    assert_eq!(g.examples[0].new.reason.as_deref(), Some("tool_denied"));
    assert_eq!(g.examples[0].action, "tools/call tickets__delete_ticket");

    // Alice keeps db on 5432, loses 5433 and the removed legacy endpoint.
    let g = group(&r, Change::PermitToDeny, "alice@example.com", "db");
    assert_eq!(g.count, 1);
    assert_eq!(
        g.examples[0].new.reason.as_deref(),
        Some("port_not_allowed")
    );
    let g = group(&r, Change::PermitToDeny, "alice@example.com", "legacy");
    assert_eq!(
        g.examples[0].new.reason.as_deref(),
        Some("unknown_endpoint")
    );

    // Bob joins sre: his refused connection and his refused MCP request
    // would now be permitted.
    let g = group(&r, Change::DenyToPermit, "bob@example.com", "db");
    assert_eq!(g.count, 1);
    assert_eq!(
        g.examples[0].old.reason.as_deref(),
        Some("not_in_allow_list")
    );
    assert_eq!(
        g.examples[0].new.reason.as_deref(),
        Some("allowed_by_identity")
    );
    let g = group(&r, Change::DenyToPermit, "bob@example.com", "mcp");
    assert_eq!(g.examples[0].action, "MCP request (POST)");

    // sre may now read metrics; the agent may use the MCP device but still
    // not read metrics, so its refusal is replayed as a metrics read.
    let g = group(&r, Change::DenyToPermit, "alice@example.com", "mcp");
    assert_eq!(g.count, 1);
    assert_eq!(g.examples[0].action, "GET /metrics");
    assert_eq!(
        g.examples[0].old.reason.as_deref(),
        Some("metrics_not_allowed")
    );
    assert!(
        !r.changes
            .iter()
            .any(|g| g.caller == "tag:agent" && g.endpoint == "mcp"),
        "{r:#?}"
    );

    // Carol was let in by her capability, which the log does not keep.
    // Nothing else is inexact: the agent's delete_ticket call is denied by
    // tools_deny, which no grant overrides.
    assert!(
        r.changes
            .iter()
            .filter(|g| g.caller != "carol@example.com")
            .all(|g| g.inexact == 0),
        "{r:#?}"
    );
    let g = group(&r, Change::PermitToDeny, "carol@example.com", "db");
    assert_eq!(g.inexact, 1);
    assert!(
        g.examples[0]
            .inexact
            .as_deref()
            .is_some_and(|w| w.contains("capability")),
        "{g:#?}"
    );

    // Permit -> deny groups come first.
    let first_permit = r
        .changes
        .iter()
        .position(|g| g.change == Change::DenyToPermit)
        .expect("deny -> permit groups");
    assert!(
        r.changes[..first_permit]
            .iter()
            .all(|g| g.change == Change::PermitToDeny)
    );
    assert!(
        r.changes[first_permit..]
            .iter()
            .all(|g| g.change == Change::DenyToPermit)
    );

    let t = &r.totals;
    assert_eq!(t.records, records.len() as u64);
    assert_eq!(t.permit_to_deny, 3 + 2 + 1 + 2 + 1);
    assert_eq!(t.deny_to_permit, 3);
    assert_eq!(t.changed, t.permit_to_deny + t.deny_to_permit);
    assert_eq!(t.inexact, 1);
    assert_eq!(t.replayed, t.unchanged + t.changed);
    assert_eq!(t.decisions, t.replayed + t.not_replayed);
    // startup and connection_close carry no decision to replay.
    assert_eq!(t.decisions, t.records - 2);

    let causes: Vec<(&str, u64)> = r
        .not_replayed
        .iter()
        .map(|n| (n.cause.as_str(), n.count))
        .collect();
    assert_eq!(
        causes,
        [("no_caller", 1), ("not_by_policy:rate_limited", 1)],
        "{r:#?}"
    );
    assert_eq!(r.recorded_under.len(), 1);
    assert_eq!(r.recorded_under[0].fingerprint, old.fingerprint);
    assert_eq!(r.capability.as_deref(), Some(CAP));
}

#[test]
fn reason_changes_are_counted_but_not_listed() {
    let old = parse(&old_file(), "old.toml");
    // The agent reaches db by its tag before and by a node entry after.
    let new = parse(
        &old_file().replace(
            "ports = [5432, 5433]\nallow = [\"tag:agent\", \"group:sre\"]",
            "ports = [5432, 5433]\nallow = [\"node:agent-1\", \"group:sre\"]",
        ),
        "new.toml",
    );
    let p = Policy::from_config(&old);
    let denied = connect(&p, &agent(), "legacy", 2222);
    assert_eq!(denied.reason.as_deref(), Some("not_in_allow_list"));
    let records = stored(&old, vec![connect(&p, &agent(), "db", 5432), denied]);
    let r = replay(&new, &records, source());
    assert!(!r.has_changes(), "{r:#?}");
    // Same code (allowed_by_identity, not_in_allow_list): nothing counted.
    assert_eq!(r.totals.reason_changed, 0);

    // Removing legacy turns not_in_allow_list into unknown_endpoint.
    let new = parse(&new_file(), "new.toml");
    let r = replay(&new, &records, source());
    assert_eq!(r.totals.reason_changed, 1, "{r:#?}");
}

#[test]
fn a_denied_http_tool_call_without_its_request_is_not_replayed() {
    let old = parse(&old_file(), "old.toml");
    let outsider = caller(Some("eve@example.com"), "eve", &[]);
    let open = parse(
        &old_file()
            .replace(
                "allow = [\"tag:agent\", \"group:sre\"]\n[endpoint.http]",
                "allow = [\"*\"]\n[endpoint.http]",
            )
            .replace(
                "allow = [\"tag:agent\", \"group:sre\"]\ncapability",
                "allow = [\"*\"]\ncapability",
            ),
        "open.toml",
    );
    assert_ne!(open.fingerprint, old.fingerprint);
    let p = Policy::from_config(&old);
    let mut r = http_tool(&p, &outsider, "web", "GET", "/api/items");
    assert_eq!(r.reason.as_deref(), Some("not_in_allow_list"));
    // Records written before denied calls kept their request.
    r.method = None;
    r.path = None;
    let records = stored(&old, vec![r]);
    let out = replay(&open, &records, source());
    assert_eq!(out.totals.not_replayed, 1, "{out:#?}");
    assert_eq!(out.not_replayed[0].cause, "no_request");
    assert!(!out.has_changes());
}

#[test]
fn every_policy_reason_is_known() {
    let reasons = [
        Reason::AllowedByIdentity { rule: "x".into() },
        Reason::AllowedByCapability {
            capability: "c".into(),
            grant: "g".into(),
        },
        Reason::UnknownEndpoint {
            endpoint: "e".into(),
        },
        Reason::WrongKind {
            endpoint: "e".into(),
            kind: EndpointKind::Tcp,
            action: "http",
        },
        Reason::NotInAllowList {
            endpoint: "e".into(),
        },
        Reason::PortNotAllowed {
            endpoint: "e".into(),
            port: 1,
        },
        Reason::MethodNotAllowed {
            endpoint: "e".into(),
            method: "PUT".into(),
        },
        Reason::PathNotAllowed {
            endpoint: "e".into(),
            path: "/".into(),
        },
        Reason::MalformedPath {
            path: "x".into(),
            why: "w",
        },
        Reason::ToolDenied {
            endpoint: "e".into(),
            tool: "t".into(),
            pattern: "p".into(),
        },
        Reason::ToolNotAllowed {
            endpoint: "e".into(),
            tool: "t".into(),
        },
        Reason::McpNotAllowed,
        Reason::McpNotConfigured,
        Reason::MetricsNotAllowed,
    ];
    for reason in &reasons {
        assert!(listed(reason), "{} is not listed", reason.code());
    }
}

#[test]
fn replay_snapshots() {
    let old = parse(&old_file(), "old.toml");
    let new = parse(&new_file(), "new.toml");
    let r = replay(&new, &history(&old), source());
    insta::assert_snapshot!("replay.md", render_replay_markdown(&r));
    insta::assert_snapshot!("replay.json", render_replay_json(&r));
}

#[test]
fn a_group_keeps_only_its_first_examples() {
    let old = parse(&old_file(), "old.toml");
    let new = parse(&new_file(), "new.toml");
    let p = Policy::from_config(&old);
    let n = EXAMPLES_PER_GROUP + 3;
    let records = stored(
        &old,
        (0..n).map(|_| connect(&p, &agent(), "db", 5432)).collect(),
    );
    let r = replay(&new, &records, source());
    let g = group(&r, Change::PermitToDeny, "tag:agent", "db");
    assert_eq!(g.count, n as u64);
    let seqs: Vec<u64> = g.examples.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=EXAMPLES_PER_GROUP as u64).collect::<Vec<_>>());
    let text = render_replay_markdown(&r);
    assert!(text.contains("...and 3 more."), "{text}");
}

#[test]
fn permits_of_unknown_origin_are_inexact_only_when_a_grant_could_matter() {
    let old = parse(&old_file(), "old.toml");
    let new = parse(&new_file(), "new.toml");
    let p = Policy::from_config(&old);
    // Permitted calls whose reason was replaced by the upstream's error.
    let mut db = connect(&p, &agent(), "db", 5432);
    db.reason = Some("backend_unreachable".to_owned());
    let mut delete = tool_call(&p, &agent(), "tickets", "delete_ticket");
    delete.reason = Some("upstream_error".to_owned());
    let records = stored(&old, vec![db, delete]);

    let r = replay(&new, &records, source());
    assert_eq!(r.totals.permit_to_deny, 2, "{r:#?}");
    let db = group(&r, Change::PermitToDeny, "tag:agent", "db");
    assert_eq!(db.inexact, 1, "a grant could admit the agent to db");
    let tickets = group(&r, Change::PermitToDeny, "tag:agent", "tickets");
    assert_eq!(tickets.inexact, 0, "no grant overrides tools_deny");

    // Without a capability in the proposed file no grant can matter.
    let no_cap = parse(
        &new_file().replace(&format!("capability = \"{CAP}\"\n"), ""),
        "no-cap.toml",
    );
    assert!(no_cap.mcp.as_ref().is_some_and(|m| m.capability.is_none()));
    let r = replay(&no_cap, &records, source());
    assert_eq!(r.totals.permit_to_deny, 2);
    assert_eq!(r.totals.inexact, 0, "{r:#?}");
}
