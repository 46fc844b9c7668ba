//! Prometheus metrics, served as text at `/metrics` on the MCP device.
//!
//! Most figures are derived from the audit record stream: every decision,
//! connection, request and tool call already produces exactly one record,
//! so counting records as they are enqueued ([`RecordStats::observe`])
//! keeps metrics and audit trail in agreement by construction and adds no
//! counters to the data path. Gauges (open connections, device state,
//! upstreams, audit queue) are read when scraped.
//!
//! Label values come only from the endpoint file and from fixed code sets
//! (record kinds, reason codes, statuses); a tool name is a label only once
//! a call to it was permitted, so a caller cannot create series at will.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::audit::{AuditLog, Decision, Kind, Record};
use crate::devices::DeviceStatus;
use crate::mcp::UpstreamStatus;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per bucket of [`BUCKETS`].
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Counts {
    records: BTreeMap<&'static str, u64>,
    /// (record kind, decision, reason code)
    decisions: BTreeMap<(&'static str, &'static str, String), u64>,
    /// (tool, status)
    tool_calls: BTreeMap<(String, String), u64>,
    tool_latency: BTreeMap<String, Histogram>,
    /// (endpoint, status)
    http_requests: BTreeMap<(String, String), u64>,
    http_latency: BTreeMap<String, Histogram>,
}

/// Counters and histograms derived from audit records.
#[derive(Debug, Default)]
pub struct RecordStats {
    counts: Mutex<Counts>,
}

impl RecordStats {
    /// Counts one record.
    pub fn observe(&self, record: &Record) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c.records.entry(record.kind.as_str()).or_default() += 1;
        if let Some(decision) = record.decision {
            let reason = record.reason.clone().unwrap_or_default();
            *c.decisions
                .entry((record.kind.as_str(), decision.as_str(), reason))
                .or_default() += 1;
        }
        let status = record.status.clone().unwrap_or_else(|| "-".to_owned());
        let seconds = record.latency_us.map(|us| us as f64 / 1e6);
        match record.kind {
            Kind::McpToolCall => {
                let tool = match (&record.tool, record.decision) {
                    (Some(tool), Some(Decision::Permit)) => tool.clone(),
                    _ => "-".to_owned(),
                };
                *c.tool_calls.entry((tool.clone(), status)).or_default() += 1;
                if let Some(s) = seconds {
                    c.tool_latency.entry(tool).or_default().observe(s);
                }
            }
            Kind::HttpRequest => {
                let endpoint = record.endpoint.clone().unwrap_or_default();
                *c.http_requests
                    .entry((endpoint.clone(), status))
                    .or_default() += 1;
                if let Some(s) = seconds {
                    c.http_latency.entry(endpoint).or_default().observe(s);
                }
            }
            _ => {}
        }
    }
}

/// Everything a scrape shows, gathered at scrape time.
pub struct Snapshot<'a> {
    /// The audit log (its record stats, queue and totals).
    pub audit: &'a AuditLog,
    /// Every running device.
    pub devices: &'a [DeviceStatus],
    /// Upstream MCP servers by endpoint name.
    pub upstreams: &'a [(String, UpstreamStatus)],
    /// Fingerprint of the endpoint file in force.
    pub fingerprint: &'a str,
}

/// Renders `snapshot` in the Prometheus text exposition format (0.0.4).
pub fn render(snapshot: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(8192);
    let audit = snapshot.audit;
    let counts = audit
        .stats()
        .counts
        .lock()
        .unwrap_or_else(|p| p.into_inner());

    header(
        &mut out,
        "portcullis_config_info",
        "gauge",
        "Fingerprint of the endpoint file in force.",
    );
    line(
        &mut out,
        "portcullis_config_info",
        &[("fingerprint", snapshot.fingerprint)],
        1,
    );

    header(
        &mut out,
        "portcullis_device_up",
        "gauge",
        "1 while a device accepts connections, 0 while it drains.",
    );
    for d in snapshot.devices {
        let kind = d.kind.to_string();
        line(
            &mut out,
            "portcullis_device_up",
            &[("device", &d.hostname), ("kind", &kind)],
            u64::from(d.accepting),
        );
    }
    header(
        &mut out,
        "portcullis_connections_open",
        "gauge",
        "Connections open now, by device.",
    );
    for d in snapshot.devices {
        line(
            &mut out,
            "portcullis_connections_open",
            &[("device", &d.hostname)],
            d.open as u64,
        );
    }
    header(
        &mut out,
        "portcullis_connections_accepted_total",
        "counter",
        "Tailnet connections accepted, by device.",
    );
    for d in snapshot.devices {
        line(
            &mut out,
            "portcullis_connections_accepted_total",
            &[("device", &d.hostname)],
            d.accepted,
        );
    }

    header(
        &mut out,
        "portcullis_decisions_total",
        "counter",
        "Policy decisions, by record kind, decision and reason code.",
    );
    for ((kind, decision, reason), n) in &counts.decisions {
        line(
            &mut out,
            "portcullis_decisions_total",
            &[("kind", kind), ("decision", decision), ("reason", reason)],
            *n,
        );
    }
    header(
        &mut out,
        "portcullis_tool_calls_total",
        "counter",
        "MCP tool calls, by tool (\"-\" when not permitted) and status.",
    );
    for ((tool, status), n) in &counts.tool_calls {
        line(
            &mut out,
            "portcullis_tool_calls_total",
            &[("tool", tool), ("status", status)],
            *n,
        );
    }
    histograms(
        &mut out,
        "portcullis_tool_call_duration_seconds",
        "MCP tool call latency, by tool.",
        "tool",
        &counts.tool_latency,
    );
    header(
        &mut out,
        "portcullis_http_requests_total",
        "counter",
        "HTTP requests through http devices, by endpoint and status.",
    );
    for ((endpoint, status), n) in &counts.http_requests {
        line(
            &mut out,
            "portcullis_http_requests_total",
            &[("endpoint", endpoint), ("status", status)],
            *n,
        );
    }
    histograms(
        &mut out,
        "portcullis_http_request_duration_seconds",
        "HTTP request latency through http devices, by endpoint.",
        "endpoint",
        &counts.http_latency,
    );

    header(
        &mut out,
        "portcullis_upstream_up",
        "gauge",
        "1 while an upstream MCP server is connected.",
    );
    for (endpoint, status) in snapshot.upstreams {
        let up = matches!(status, UpstreamStatus::Ready { .. });
        line(
            &mut out,
            "portcullis_upstream_up",
            &[("endpoint", endpoint)],
            u64::from(up),
        );
    }

    header(
        &mut out,
        "portcullis_audit_records_total",
        "counter",
        "Audit records enqueued, by kind.",
    );
    for (kind, n) in &counts.records {
        line(
            &mut out,
            "portcullis_audit_records_total",
            &[("kind", kind)],
            *n,
        );
    }
    drop(counts);
    let gauges: [(&str, &str, &str, u64); 5] = [
        (
            "portcullis_audit_store_up",
            "gauge",
            "1 while audit records are being committed, 0 while the store fails (new work is refused unless on_failure = serve).",
            u64::from(audit.store_up()),
        ),
        (
            "portcullis_audit_queue_depth",
            "gauge",
            "Audit records accepted and not yet committed (queued, or in a batch being retried).",
            audit.queue_depth() as u64,
        ),
        (
            "portcullis_audit_queue_capacity",
            "gauge",
            "Places in the audit queue.",
            audit.queue_capacity() as u64,
        ),
        (
            "portcullis_audit_records_written_total",
            "counter",
            "Audit records committed to the store.",
            audit.written_total(),
        ),
        (
            "portcullis_audit_records_dropped_total",
            "counter",
            "Audit records dropped because the queue was full.",
            audit.dropped_total(),
        ),
    ];
    for (name, kind, help, value) in gauges {
        header(&mut out, name, kind, help);
        line(&mut out, name, &[], value);
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"");
        for ch in value.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn line(out: &mut String, name: &str, l: &[(&str, &str)], value: u64) {
    out.push_str(name);
    labels(out, l);
    let _ = writeln!(out, " {value}");
}

fn histograms(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    by: &BTreeMap<String, Histogram>,
) {
    header(out, name, "histogram", help);
    for (key, h) in by {
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let le = bound.to_string();
            line(
                out,
                &format!("{name}_bucket"),
                &[(label, key), ("le", &le)],
                count,
            );
        }
        line(
            out,
            &format!("{name}_bucket"),
            &[(label, key), ("le", "+Inf")],
            h.count,
        );
        out.push_str(&format!("{name}_sum"));
        labels(out, &[(label, key)]);
        let _ = writeln!(out, " {}", h.sum);
        line(out, &format!("{name}_count"), &[(label, key)], h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.0004);
        h.observe(0.003);
        h.observe(20.0);
        assert_eq!(h.counts[0], 1, "<= 0.5 ms");
        assert_eq!(h.counts[3], 2, "<= 5 ms");
        assert_eq!(h.counts[BUCKETS.len() - 1], 2, "<= 10 s");
        assert_eq!(h.count, 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        line(&mut out, "m", &[("a", "x\"y\\z\nw")], 1);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }

    #[test]
    fn denied_tool_calls_do_not_create_tool_series() {
        let stats = RecordStats::default();
        let mut denied = Record::new(Kind::McpToolCall);
        denied.tool = Some("made_up_name_1".to_owned());
        denied.decision = Some(Decision::Deny);
        denied.reason = Some("unknown_tool".to_owned());
        stats.observe(&denied);
        let mut ok = Record::new(Kind::McpToolCall);
        ok.tool = Some("whoami".to_owned());
        ok.decision = Some(Decision::Permit);
        ok.status = Some("ok".to_owned());
        ok.latency_us = Some(1500);
        stats.observe(&ok);
        let c = stats.counts.lock().unwrap();
        let tools: Vec<&str> = c.tool_calls.keys().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tools, ["-", "whoami"]);
        assert_eq!(c.tool_latency["whoami"].counts[2], 1, "1.5 ms <= 2.5 ms");
        assert_eq!(
            c.decisions[&("mcp_tool_call", "deny", "unknown_tool".to_owned())],
            1
        );
    }
}
