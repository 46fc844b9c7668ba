//! Markdown and JSON renderings of reports and diffs.
//!
//! Markdown is for people signing off; JSON is for tooling and keeps the
//! same field names as the Rust types.

use std::fmt::Write;

use super::{Access, Change, Diff, Outcome, Replay, Report, SectionDiff};

// `write!` into a String cannot fail; the results are ignored on purpose.

fn json<T: serde::Serialize>(value: &T) -> String {
    // The review types hold only strings, numbers, bools and lists, which
    // always serialize; the fallback keeps this total without a panic.
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
}

/// The report as pretty-printed JSON.
pub fn render_json(report: &Report) -> String {
    json(report)
}

/// The diff as pretty-printed JSON.
pub fn render_diff_json(diff: &Diff) -> String {
    json(diff)
}

/// The replay as pretty-printed JSON.
pub fn render_replay_json(replay: &Replay) -> String {
    json(replay)
}

fn who(access: &[Access]) -> String {
    if access.is_empty() {
        return "nobody".into();
    }
    access
        .iter()
        .map(|a| {
            if a.members.is_empty() {
                format!("`{}`", a.identity)
            } else {
                format!("`{}` ({})", a.identity, a.members.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn code_list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as Markdown.
pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Portcullis review: {}\n", report.file);
    let _ = writeln!(
        out,
        "Fingerprint (SHA-256 of the file): `{}`\n",
        report.fingerprint
    );
    let t = &report.tailnet;
    let _ = writeln!(out, "## Tailnet\n");
    let _ = writeln!(out, "- Control server: {}", t.control_url);
    let _ = writeln!(out, "- Auth key from: {}", t.auth_key_source);
    let _ = writeln!(out, "- State directory: `{}`", t.state_dir);
    let prefix = if t.hostname_prefix.is_empty() {
        "none".to_owned()
    } else {
        format!("`{}`", t.hostname_prefix)
    };
    let _ = writeln!(out, "- Hostname prefix: {prefix}");
    let _ = writeln!(out, "- Device tags: {}", code_list(&t.tags));
    let _ = writeln!(out, "- Ephemeral: {}\n", t.ephemeral);

    let _ = writeln!(out, "## Devices ({})\n", report.devices.len());
    for d in &report.devices {
        let _ = writeln!(out, "### `{}` ({})\n", d.hostname, d.kind);
        if let Some(desc) = &d.description {
            let _ = writeln!(out, "{desc}\n");
        }
        let ports: Vec<String> = d.ports.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "- Target: `{}`", d.target);
        let _ = writeln!(out, "- Tailnet ports: {}", ports.join(", "));
        let _ = writeln!(out, "- Who may reach it: {}", who(&d.access));
        if let Some(h) = &d.http {
            let _ = writeln!(out, "- Methods: {}", code_list(&h.methods));
            let _ = writeln!(out, "- Paths: {}", code_list(&h.paths));
            let _ = writeln!(out, "- TLS to target: {}", h.tls);
            let _ = writeln!(out, "- Identity headers to backend: {}", h.identity_headers);
            if !h.strip_headers.is_empty() {
                let _ = writeln!(
                    out,
                    "- Caller headers also removed: {}",
                    h.strip_headers.join(", ")
                );
            }
        }
        if let Some(tools) = &d.tools {
            let _ = writeln!(out, "- Upstream MCP path: `{}`", tools.path);
            let _ = writeln!(out, "- Tools allowed: {}", code_list(&tools.allow));
            let _ = writeln!(out, "- Tools denied: {}", code_list(&tools.deny));
            let _ = writeln!(out, "- TLS to target: {}", tools.tls);
        }
        let _ = writeln!(
            out,
            "- Inspection: secrets {}, injection {}\n",
            d.inspect.secrets, d.inspect.injection
        );
    }

    let _ = writeln!(out, "## MCP device\n");
    match &report.mcp {
        None => {
            let _ = writeln!(out, "None configured.\n");
        }
        Some(m) => {
            let _ = writeln!(out, "- Hostname: `{}`, port {}", m.hostname, m.port);
            let _ = writeln!(out, "- Who may use it: {}", who(&m.allow));
            let _ = writeln!(out, "- Who may read metrics: {}", who(&m.metrics_allow));
            let cap = m
                .capability
                .as_deref()
                .map_or("none".into(), |c| format!("`{c}`"));
            let _ = writeln!(out, "- Capability grants: {cap}");
            let _ = writeln!(out, "- Max request body: {} bytes", m.max_body_bytes);
            let rate = |r: &Option<String>| r.clone().unwrap_or_else(|| "unlimited".into());
            let _ = writeln!(
                out,
                "- Rate limits: per caller {}, per tool {}\n",
                rate(&m.rate_per_caller),
                rate(&m.rate_per_tool)
            );
        }
    }

    let _ = writeln!(out, "## Groups\n");
    if report.groups.is_empty() {
        let _ = writeln!(out, "None defined.\n");
    }
    for g in &report.groups {
        let used = if g.used_by.is_empty() {
            "unused".into()
        } else {
            g.used_by.join(", ")
        };
        let _ = writeln!(
            out,
            "- `group:{}`: {} (used by: {used})",
            g.name,
            g.members.join(", ")
        );
    }
    if !report.groups.is_empty() {
        out.push('\n');
    }

    let _ = writeln!(out, "## Warnings ({})\n", report.warnings.len());
    if report.warnings.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for w in &report.warnings {
        let _ = writeln!(out, "- **{}** `{}`: {}", w.code, w.path, w.message);
    }
    out
}

fn section(out: &mut String, s: &SectionDiff) {
    for f in &s.fields {
        let _ = writeln!(out, "- {}: `{}` -> `{}`", f.field, f.old, f.new);
    }
    for l in &s.lists {
        if l.field == "access" || l.field == "metrics_access" {
            for id in &l.added {
                let _ = writeln!(out, "- {}: **gains** `{id}`", l.field);
            }
            for id in &l.removed {
                let _ = writeln!(out, "- {}: loses `{id}`", l.field);
            }
        } else {
            if !l.added.is_empty() {
                let _ = writeln!(out, "- {} added: {}", l.field, code_list(&l.added));
            }
            if !l.removed.is_empty() {
                let _ = writeln!(out, "- {} removed: {}", l.field, code_list(&l.removed));
            }
        }
    }
    out.push('\n');
}

/// The diff as Markdown.
pub fn render_diff_markdown(diff: &Diff) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Portcullis exposure changes\n");
    let _ = writeln!(out, "- Old: `{}`", diff.old_fingerprint);
    let _ = writeln!(out, "- New: `{}`\n", diff.new_fingerprint);
    if !diff.has_changes() {
        let _ = writeln!(out, "No changes in exposure.");
        return out;
    }
    for (title, list) in [
        ("Added devices", &diff.added),
        ("Removed devices", &diff.removed),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## {title}\n");
        for d in list {
            let ports: Vec<String> = d.ports.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "- `{}` ({}) -> `{}` on ports {}; access: {}",
                d.hostname,
                d.kind,
                d.target,
                ports.join(", "),
                code_list(&d.access)
            );
        }
        out.push('\n');
    }
    for s in &diff.changed {
        let _ = writeln!(out, "## Changed endpoint `{}`\n", s.name);
        section(&mut out, s);
    }
    if let Some(m) = &diff.mcp {
        let _ = writeln!(out, "## MCP device\n");
        section(&mut out, m);
    }
    if let Some(t) = &diff.tailnet {
        let _ = writeln!(out, "## Tailnet\n");
        section(&mut out, t);
    }
    out
}

/// `text` as an inline code span, fenced so a backtick inside stays text.
fn code(text: &str) -> String {
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// `text` made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

fn outcome(o: &Outcome) -> String {
    let mut text = o.decision.to_string();
    if let Some(reason) = &o.reason {
        let _ = write!(text, " ({reason})");
    }
    if let Some(detail) = &o.detail {
        let _ = write!(text, ": {detail}");
    }
    cell(&text)
}

/// The replay as Markdown.
pub fn render_replay_markdown(replay: &Replay) -> String {
    let mut out = String::new();
    let t = &replay.totals;
    let _ = writeln!(
        out,
        "# Portcullis replay: {} against recorded decisions\n",
        replay.file
    );
    let _ = writeln!(out, "- Proposed file: {}", code(&replay.fingerprint));
    let _ = writeln!(out, "- Audit store: {}", code(&replay.source.store));
    if let Some(since) = &replay.source.since {
        let _ = writeln!(out, "- Records since: {since}");
    }
    if let Some(connector) = &replay.source.connector {
        let _ = writeln!(out, "- Connector: {}", code(connector));
    }
    let _ = writeln!(
        out,
        "- Records read: {}, of which {} decisions",
        t.records, t.decisions
    );
    let _ = writeln!(
        out,
        "- Replayed: {}; unchanged: {} ({} with another reason); not replayed: {}",
        t.replayed, t.unchanged, t.reason_changed, t.not_replayed
    );
    let _ = writeln!(
        out,
        "- **Would change: {}** ({} permit -> deny, {} deny -> permit)\n",
        t.changed, t.permit_to_deny, t.deny_to_permit
    );

    if !replay.recorded_under.is_empty() {
        let _ = writeln!(out, "Recorded under:\n");
        for r in &replay.recorded_under {
            let this = if r.fingerprint == replay.fingerprint {
                " (the proposed file)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "- {}{this}: {} decisions",
                code(&r.fingerprint),
                r.decisions
            );
        }
        out.push('\n');
    }

    if !replay.capabilities_recorded {
        let _ = writeln!(
            out,
            "> The audit log does not record tailnet app capabilities, so callers are\n\
             > replayed holding none and decisions granted by a capability cannot be\n\
             > replayed exactly. Changed records that may be wrong for this reason are\n\
             > marked *inexact* ({} here).",
            t.inexact
        );
        if let Some(cap) = &replay.capability {
            let _ = writeln!(
                out,
                ">\n> The proposed file grants through capability {}: where this replay\n\
                 > says deny, a caller holding a grant may still be permitted.",
                code(cap)
            );
        }
        out.push('\n');
    }

    if !replay.has_changes() {
        let _ = writeln!(out, "No recorded decision would change.\n");
    }
    for (change, title, total) in [
        (Change::PermitToDeny, "Would be denied", t.permit_to_deny),
        (Change::DenyToPermit, "Would be permitted", t.deny_to_permit),
    ] {
        if total == 0 {
            continue;
        }
        let _ = writeln!(out, "## {title} ({total})\n");
        for g in replay.changes.iter().filter(|g| g.change == change) {
            let s = if g.count == 1 { "" } else { "s" };
            let inexact = if g.inexact > 0 {
                format!(" ({} inexact)", g.inexact)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "### {} on {}: {} record{s}{inexact}\n",
                code(&g.caller),
                code(&g.endpoint),
                g.count
            );
            let _ = writeln!(
                out,
                "| record | time | node | action | recorded | replayed |"
            );
            let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
            for e in &g.examples {
                let mut replayed = outcome(&e.new);
                if let Some(why) = &e.inexact {
                    let _ = write!(replayed, "<br>*inexact*: {}", cell(why));
                }
                let _ = writeln!(
                    out,
                    "| {} #{} | {} | {} | {} | {} | {replayed} |",
                    cell(&e.connector),
                    e.seq,
                    e.time.as_deref().unwrap_or("-"),
                    cell(&e.node),
                    cell(&e.action),
                    outcome(&e.old),
                );
            }
            let shown = g.examples.len() as u64;
            if g.count > shown {
                let _ = writeln!(out, "\n...and {} more.", g.count - shown);
            }
            out.push('\n');
        }
    }

    if !replay.not_replayed.is_empty() {
        let _ = writeln!(out, "## Not replayed ({})\n", t.not_replayed);
        for n in &replay.not_replayed {
            let examples: Vec<String> = n
                .examples
                .iter()
                .map(|r| format!("{} #{} ({})", r.connector, r.seq, r.kind))
                .collect();
            let _ = writeln!(
                out,
                "- {} {}: {}; e.g. {}",
                n.count,
                code(&n.cause),
                n.why,
                examples.join(", ")
            );
        }
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}
