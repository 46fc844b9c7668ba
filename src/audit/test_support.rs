//! Helpers shared by the audit tests.

use std::collections::BTreeMap;

use crate::identity::Caller;

use super::record::{Finding, FindingAction, Record};

/// A caller with the given user (None: tagged node), node and tags.
pub fn caller(user: Option<&str>, node: &str, tags: &[&str]) -> Caller {
    Caller {
        addr: "100.64.0.7:41234".parse().expect("valid test address"),
        node_id: format!("n{}", node.len()),
        node: node.to_owned(),
        user: user.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        capabilities: BTreeMap::new(),
    }
}

/// A `sqlite:///abs/path` URL for a fresh database in `dir`.
pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("audit.db").display())
}

/// A varied record: tool calls and denials by a few callers.
pub fn sample(i: usize) -> Record {
    let alice = caller(Some("alice@example.com"), "alice-laptop", &[]);
    let bot = caller(None, "ci-runner", &["tag:agent", "tag:ci"]);
    match i % 4 {
        0 => Record::connection_open(&alice, "db-prod", "postgres-prod"),
        1 => {
            let mut r = Record::tool_call(&bot, "github", "create_issue").permit();
            r.latency_us = Some(1200 + i as u64);
            r.status = Some("ok".to_owned());
            r.arg_digest = Some(super::arg_digest(format!("{{\"n\":{i}}}").as_bytes()));
            r.with_finding(Finding::new(
                "github_token",
                "/arguments/body",
                FindingAction::Redacted,
            ))
        }
        2 => Record::connection_denied(
            &bot,
            "db-prod",
            "postgres-prod",
            "no_matching_rule",
            "no rule admits tag:agent",
        ),
        _ => {
            let mut r = Record::connection_open(&alice, "wiki", "wiki").into_close();
            r.bytes_up = Some(10 * i as u64);
            r.bytes_down = Some(100 * i as u64);
            r.with_extra("i", serde_json::json!(i))
        }
    }
}
