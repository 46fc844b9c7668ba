//! Review against history: which recorded decisions a proposed file would
//! make differently.
//!
//! A [`Replayer`] takes stored audit records one at a time (a long log is
//! never held in memory), rebuilds the caller and the action of every
//! decision record, decides the action again with [`policy::decide`] under
//! the proposed file's [`Policy`], and keeps counts per (change, caller,
//! endpoint) with a few examples each. [`Replayer::finish`] returns the
//! [`Replay`] the renderers print.
//!
//! Which records are replayed, and as which actions, in the order the data
//! path decides them (the first denial is the outcome):
//!
//! | record | actions |
//! | --- | --- |
//! | `connection_open`, `connection_denied` of a device (`extra.port`) | `Connect` |
//! | `connection_denied` of the MCP device (`extra.http_method`) | `McpAccess`, or `Metrics` for `/metrics` |
//! | `http_request` | `Connect` (if `extra.port` is recorded), `Http` |
//! | `mcp_initialize`, `mcp_list_tools` | `McpAccess` |
//! | `mcp_tool_call` | `McpAccess`; `CallTool` (upstream tools, `http_request`); `Http` (`http_request`) |
//!
//! `connection_close` repeats its `connection_open` and
//! `connection_revoked` follows from a reload, not from a caller's action:
//! neither is replayed; other kinds carry no decision. A decision record is not replayed when it
//! has no caller (the peer could not be identified), no decision, or a
//! denial that did not come from the policy (rate limits, unknown tools,
//! invalid arguments): those are counted by cause in
//! [`Replay::not_replayed`].
//!
//! The log does not keep the callers' tailnet app capabilities
//! ([`CallerInfo`] leaves them out), so callers are rebuilt holding none.
//! Grants only ever add access, so a replayed permit is exact; a replayed
//! denial for want of access is marked inexact when a capability permitted
//! the recorded call, or when the record does not say what permitted it and
//! the proposed file grants through a capability.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::audit::{self, CallerInfo, Kind, Record, StoredRecord};
use crate::config::Config;
use crate::identity::Caller;
use crate::mcp::{LIST_ENDPOINTS_TOOL, METRICS_PATH, NAMESPACE_SEPARATOR, WHOAMI_TOOL};
use crate::policy::{self, Action, HTTP_REQUEST_TOOL, Policy};

/// Examples kept per group of changes.
pub const EXAMPLES_PER_GROUP: usize = 5;
/// Examples kept per cause of records not replayed.
pub const EXAMPLES_PER_CAUSE: usize = 3;

/// Every reason code [`policy::decide`] can give. A recorded denial with
/// another code was made by something else (rate limit, unknown tool,
/// argument checks).
const POLICY_CODES: [&str; 14] = crate::policy::Reason::CODES;

fn is_policy_code(code: &str) -> bool {
    POLICY_CODES.contains(&code)
}

/// The result of replaying an audit log under a proposed file.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    /// The proposed file's name as loaded.
    pub file: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Where the records came from.
    pub source: ReplaySource,
    /// Whether the log records the callers' app capabilities (it does not).
    pub capabilities_recorded: bool,
    /// The app capability the proposed file grants through, if any.
    pub capability: Option<String>,
    /// Counts.
    pub totals: ReplayTotals,
    /// Records whose decision would change, grouped by change, caller and
    /// endpoint; permit -> deny first.
    pub changes: Vec<ChangeGroup>,
    /// Decision records that could not be replayed, by cause.
    pub not_replayed: Vec<NotReplayed>,
    /// Fingerprints of the files that made the recorded decisions.
    pub recorded_under: Vec<RecordedUnder>,
}

impl Replay {
    /// True if any recorded decision would change.
    pub fn has_changes(&self) -> bool {
        self.totals.changed > 0
    }
}

/// Which records were read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySource {
    /// The audit store, password hidden.
    pub store: String,
    /// Only records at or after this time (audit time format).
    pub since: Option<String>,
    /// Only this connector's chain.
    pub connector: Option<String>,
}

/// How many records went where. `decisions = replayed + not_replayed` and
/// `replayed = unchanged + changed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayTotals {
    /// Records read (every kind).
    pub records: u64,
    /// Records of a kind that carries a decision.
    pub decisions: u64,
    /// Decision records decided again.
    pub replayed: u64,
    /// Replayed with the same decision.
    pub unchanged: u64,
    /// Of `unchanged`, those whose policy reason code differs.
    pub reason_changed: u64,
    /// Replayed with the other decision.
    pub changed: u64,
    /// Of `changed`, permitted then, denied now.
    pub permit_to_deny: u64,
    /// Of `changed`, denied then, permitted now.
    pub deny_to_permit: u64,
    /// Of `changed`, those that cannot be replayed exactly (capabilities).
    pub inexact: u64,
    /// Decision records that could not be replayed.
    pub not_replayed: u64,
}

/// The direction of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Permitted when recorded, denied under the proposed file.
    PermitToDeny,
    /// Denied when recorded, permitted under the proposed file.
    DenyToPermit,
}

/// Changed records of one caller on one endpoint, in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeGroup {
    /// Direction.
    pub change: Change,
    /// Caller label: user login, else the node's tags, else the node name.
    pub caller: String,
    /// Endpoint name (the MCP device's name for MCP access).
    pub endpoint: String,
    /// Records in the group.
    pub count: u64,
    /// Of `count`, records that cannot be replayed exactly.
    pub inexact: u64,
    /// The first records of the group, in reading order.
    pub examples: Vec<ChangedRecord>,
}

/// One record whose decision would change.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedRecord {
    /// Connector whose chain holds it.
    pub connector: String,
    /// Its seq in that chain.
    pub seq: u64,
    /// When it was recorded.
    pub time: Option<String>,
    /// Record kind.
    pub kind: Kind,
    /// Caller label.
    pub caller: String,
    /// Caller node name.
    pub node: String,
    /// What the caller did, e.g. `connect :5432`, `GET /api/v1/items`,
    /// `tools/call tickets__search`.
    pub action: String,
    /// The recorded decision.
    pub old: Outcome,
    /// The decision under the proposed file.
    pub new: Outcome,
    /// Why this row cannot be replayed exactly, if so.
    pub inexact: Option<String>,
}

/// A decision with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `permit` or `deny`.
    pub decision: audit::Decision,
    /// Reason code, if recorded.
    pub reason: Option<String>,
    /// Explanation, if recorded.
    pub detail: Option<String>,
}

/// Decision records not replayed for one cause.
#[derive(Debug, Clone, Serialize)]
pub struct NotReplayed {
    /// Stable cause code.
    pub cause: String,
    /// The cause for people.
    pub why: String,
    /// Records.
    pub count: u64,
    /// The first records, in reading order.
    pub examples: Vec<RecordRef>,
}

/// Where a record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordRef {
    /// Connector.
    pub connector: String,
    /// Seq in its chain.
    pub seq: u64,
    /// Record kind.
    pub kind: Kind,
}

/// How many decision records a file version made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedUnder {
    /// File fingerprint stamped on the records.
    pub fingerprint: String,
    /// Decision records stamped with it.
    pub decisions: u64,
}

/// Why a decision record is not replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Skip {
    NoCaller,
    NoDecision,
    NotByPolicy(String),
    UnknownConnection,
    NoEndpoint,
    UnknownTool,
    NoRequest,
}

impl Skip {
    fn cause(&self) -> String {
        match self {
            Skip::NoCaller => "no_caller".into(),
            Skip::NoDecision => "no_decision".into(),
            Skip::NotByPolicy(code) => format!("not_by_policy:{code}"),
            Skip::UnknownConnection => "unknown_connection".into(),
            Skip::NoEndpoint => "no_endpoint".into(),
            Skip::UnknownTool => "unknown_tool_name".into(),
            Skip::NoRequest => "no_request".into(),
        }
    }

    fn why(&self) -> String {
        match self {
            Skip::NoCaller => {
                "no caller identity recorded (the peer could not be identified)".into()
            }
            Skip::NoDecision => {
                "no decision recorded (the call ended before it was decided)".into()
            }
            Skip::NotByPolicy(code) => format!("denied by `{code}`, not by the endpoint policy"),
            Skip::UnknownConnection => {
                "connection record with neither a device port nor an MCP request".into()
            }
            Skip::NoEndpoint => "no endpoint recorded".into(),
            Skip::UnknownTool => "tool name does not name its endpoint".into(),
            Skip::NoRequest => "`http_request` call whose method and path are not recorded \
                 (the call was denied before they were kept)"
                .into(),
        }
    }
}

/// One policy check of a recorded action.
#[derive(Debug, Clone, Copy)]
enum Step<'r> {
    McpAccess,
    Metrics,
    Connect {
        endpoint: &'r str,
        port: u16,
    },
    Http {
        endpoint: &'r str,
        method: Option<&'r str>,
        path: Option<&'r str>,
    },
    CallTool {
        endpoint: &'r str,
        tool: &'r str,
    },
}

/// The checks of one record, which of them gave the recorded permit's
/// reason, and how the record is labelled.
struct Plan<'r> {
    steps: Vec<Step<'r>>,
    reason_step: usize,
    endpoint: String,
    action: String,
}

fn port_of(record: &Record) -> Option<u16> {
    record
        .extra
        .get("port")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
}

fn endpoint_of(record: &Record) -> Result<&str, Skip> {
    record.endpoint.as_deref().ok_or(Skip::NoEndpoint)
}

fn mcp_device(record: &Record) -> String {
    record
        .endpoint
        .clone()
        .or_else(|| record.device.clone())
        .unwrap_or_else(|| "mcp".to_owned())
}

/// The plan of a decision record; `None` for kinds that carry no decision.
fn plan(record: &Record) -> Option<Result<Plan<'_>, Skip>> {
    let single = |step, endpoint: String, action: String| Plan {
        steps: vec![step],
        reason_step: 0,
        endpoint,
        action,
    };
    let plan = match record.kind {
        Kind::ConnectionOpen | Kind::ConnectionDenied => {
            if let Some(port) = port_of(record) {
                endpoint_of(record).map(|endpoint| {
                    single(
                        Step::Connect { endpoint, port },
                        endpoint.to_owned(),
                        format!("connect :{port}"),
                    )
                })
            } else if let Some(method) = record.extra.get("http_method") {
                let method = method.as_str().unwrap_or("?");
                // Records written before the path was kept say `/metrics`
                // through their reason only.
                let metrics = match record.path.as_deref() {
                    Some(path) => path == METRICS_PATH,
                    None => record.reason.as_deref() == Some("metrics_not_allowed"),
                };
                Ok(if metrics {
                    single(
                        Step::Metrics,
                        mcp_device(record),
                        format!("{method} {METRICS_PATH}"),
                    )
                } else {
                    single(
                        Step::McpAccess,
                        mcp_device(record),
                        format!("MCP request ({method})"),
                    )
                })
            } else {
                Err(Skip::UnknownConnection)
            }
        }
        Kind::HttpRequest => endpoint_of(record).map(|endpoint| {
            let method = record.method.as_deref();
            let path = record.path.as_deref();
            let http = Step::Http {
                endpoint,
                method,
                path,
            };
            let steps = match port_of(record) {
                Some(port) => vec![Step::Connect { endpoint, port }, http],
                None => vec![http],
            };
            Plan {
                reason_step: steps.len() - 1,
                steps,
                endpoint: endpoint.to_owned(),
                action: format!("{} {}", method.unwrap_or("?"), path.unwrap_or("?")),
            }
        }),
        Kind::McpInitialize => Ok(single(
            Step::McpAccess,
            mcp_device(record),
            "MCP initialize".into(),
        )),
        Kind::McpListTools => Ok(single(
            Step::McpAccess,
            mcp_device(record),
            "MCP tools/list".into(),
        )),
        Kind::McpToolCall => tool_call_plan(record),
        _ => return None,
    };
    Some(plan)
}

fn tool_call_plan(record: &Record) -> Result<Plan<'_>, Skip> {
    let name = record.tool.as_deref().ok_or(Skip::UnknownTool)?;
    let action = format!("tools/call {name}");
    if name == WHOAMI_TOOL || name == LIST_ENDPOINTS_TOOL {
        return Ok(Plan {
            steps: vec![Step::McpAccess],
            reason_step: 0,
            endpoint: mcp_device(record),
            action,
        });
    }
    let endpoint = endpoint_of(record)?;
    if name == HTTP_REQUEST_TOOL {
        let method = record.method.as_deref();
        let path = record.path.as_deref();
        let action = match (method, path) {
            (Some(m), Some(p)) => format!("{action} {m} {p}"),
            _ => action,
        };
        return Ok(Plan {
            steps: vec![
                Step::McpAccess,
                Step::CallTool {
                    endpoint,
                    tool: HTTP_REQUEST_TOOL,
                },
                Step::Http {
                    endpoint,
                    method,
                    path,
                },
            ],
            reason_step: 1,
            endpoint: endpoint.to_owned(),
            action,
        });
    }
    let tool = name
        .strip_prefix(endpoint)
        .and_then(|rest| rest.strip_prefix(NAMESPACE_SEPARATOR))
        .filter(|tool| !tool.is_empty())
        .ok_or(Skip::UnknownTool)?;
    Ok(Plan {
        steps: vec![Step::McpAccess, Step::CallTool { endpoint, tool }],
        reason_step: 1,
        endpoint: endpoint.to_owned(),
        action,
    })
}

/// The caller as the policy sees it, rebuilt from the record. The log keeps
/// no app capabilities, so the caller holds none.
fn caller_of(info: &CallerInfo) -> Caller {
    Caller {
        addr: info.addr,
        node_id: info.node_id.clone(),
        node: info.node.clone(),
        user: info.user.clone(),
        tags: info.tags.clone(),
        capabilities: BTreeMap::new(),
    }
}

/// Runs the checks of `plan` for `caller`: the first denial, else the
/// permit of the step that gives the reason.
fn decide_plan(
    policy: &Policy,
    caller: &Caller,
    plan: &Plan<'_>,
) -> Result<policy::Decision, Skip> {
    let mut reason = None;
    for (i, step) in plan.steps.iter().enumerate() {
        let decision = match *step {
            Step::McpAccess => policy::decide(policy, caller, &Action::McpAccess),
            Step::Metrics => policy::decide(policy, caller, &Action::Metrics),
            Step::Connect { endpoint, port } => {
                policy::decide(policy, caller, &Action::Connect { endpoint, port })
            }
            Step::Http {
                endpoint,
                method,
                path,
            } => {
                let (Some(method), Some(path)) = (method, path) else {
                    return Err(Skip::NoRequest);
                };
                policy::decide(
                    policy,
                    caller,
                    &Action::Http {
                        endpoint,
                        method,
                        path,
                    },
                )
            }
            Step::CallTool { endpoint, tool } => {
                policy::decide(policy, caller, &Action::CallTool { endpoint, tool })
            }
        };
        if !decision.permit {
            return Ok(decision);
        }
        if i == plan.reason_step || reason.is_none() {
            reason = Some(decision);
        }
    }
    // A plan has at least one step, so a reason was set.
    reason.ok_or(Skip::NoRequest)
}

struct GroupAcc {
    count: u64,
    inexact: u64,
    examples: Vec<ChangedRecord>,
}

struct SkipAcc {
    why: String,
    count: u64,
    examples: Vec<RecordRef>,
}

/// Replays records one at a time under a proposed file.
pub struct Replayer {
    policy: Policy,
    file: String,
    capability: Option<String>,
    totals: ReplayTotals,
    groups: BTreeMap<(Change, String, String), GroupAcc>,
    skipped: BTreeMap<String, SkipAcc>,
    fingerprints: BTreeMap<String, u64>,
}

impl Replayer {
    /// A replayer deciding under `config` (the proposed file).
    pub fn new(config: &Config) -> Replayer {
        Replayer {
            policy: Policy::from_config(config),
            file: config.file_name.clone(),
            capability: config.mcp.as_ref().and_then(|m| m.capability.clone()),
            totals: ReplayTotals::default(),
            groups: BTreeMap::new(),
            skipped: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    /// Replays one stored record (any kind; only decision records count).
    pub fn add(&mut self, stored: &StoredRecord) {
        self.totals.records += 1;
        let record = &stored.record;
        let Some(plan) = plan(record) else { return };
        self.totals.decisions += 1;
        *self
            .fingerprints
            .entry(record.fingerprint.clone())
            .or_default() += 1;
        match self.judge(record, plan) {
            Err(skip) => self.skip(stored, &skip),
            Ok((plan, info, old, new)) => self.compare(stored, &plan, info, old, &new),
        }
    }

    /// The recorded and the replayed decision of a decision record, or why
    /// it cannot be replayed. A record that lacks what every replay needs
    /// (caller, decision, a policy denial) is reported for that before any
    /// problem with its action.
    fn judge<'r>(
        &self,
        record: &'r Record,
        plan: Result<Plan<'r>, Skip>,
    ) -> Result<(Plan<'r>, &'r CallerInfo, audit::Decision, policy::Decision), Skip> {
        let info = record.caller.as_ref().ok_or(Skip::NoCaller)?;
        let old = record.decision.ok_or(Skip::NoDecision)?;
        let old_code = record.reason.as_deref().unwrap_or_default();
        if old == audit::Decision::Deny && !is_policy_code(old_code) {
            let code = if old_code.is_empty() {
                "(none)"
            } else {
                old_code
            };
            return Err(Skip::NotByPolicy(code.to_owned()));
        }
        let plan = plan?;
        let new = decide_plan(&self.policy, &caller_of(info), &plan)?;
        Ok((plan, info, old, new))
    }

    fn skip(&mut self, stored: &StoredRecord, skip: &Skip) {
        self.totals.not_replayed += 1;
        let acc = self.skipped.entry(skip.cause()).or_insert_with(|| SkipAcc {
            why: skip.why(),
            count: 0,
            examples: Vec::new(),
        });
        acc.count += 1;
        if acc.examples.len() < EXAMPLES_PER_CAUSE {
            acc.examples.push(RecordRef {
                connector: stored.record.connector.clone(),
                seq: stored.seq,
                kind: stored.record.kind,
            });
        }
    }

    fn compare(
        &mut self,
        stored: &StoredRecord,
        plan: &Plan<'_>,
        info: &CallerInfo,
        old: audit::Decision,
        new: &policy::Decision,
    ) {
        self.totals.replayed += 1;
        let record = &stored.record;
        let old_permit = old == audit::Decision::Permit;
        let old_code = record.reason.as_deref().unwrap_or_default();
        if old_permit == new.permit {
            self.totals.unchanged += 1;
            if is_policy_code(old_code) && old_code != new.reason.code() {
                self.totals.reason_changed += 1;
            }
            return;
        }
        self.totals.changed += 1;
        let change = if old_permit {
            self.totals.permit_to_deny += 1;
            Change::PermitToDeny
        } else {
            self.totals.deny_to_permit += 1;
            Change::DenyToPermit
        };
        let inexact = self.inexact(change, old_code, new.reason.code());
        if inexact.is_some() {
            self.totals.inexact += 1;
        }
        let caller = info.label();
        let acc = self
            .groups
            .entry((change, caller.clone(), plan.endpoint.clone()))
            .or_insert_with(|| GroupAcc {
                count: 0,
                inexact: 0,
                examples: Vec::new(),
            });
        acc.count += 1;
        if inexact.is_some() {
            acc.inexact += 1;
        }
        if acc.examples.len() < EXAMPLES_PER_GROUP {
            acc.examples.push(ChangedRecord {
                connector: record.connector.clone(),
                seq: stored.seq,
                time: record.time.map(audit::time_fmt::format),
                kind: record.kind,
                caller,
                node: info.node.clone(),
                action: plan.action.clone(),
                old: Outcome {
                    decision: old,
                    reason: record.reason.clone(),
                    detail: record.detail.clone(),
                },
                new: Outcome {
                    decision: if new.permit {
                        audit::Decision::Permit
                    } else {
                        audit::Decision::Deny
                    },
                    reason: Some(new.reason.code().to_owned()),
                    detail: Some(new.reason.to_string()),
                },
                inexact,
            });
        }
    }

    /// Why a change cannot be replayed exactly. Grants only add access, so
    /// only a replayed denial for want of access (`new_code`) can be wrong:
    /// when a capability permitted the recorded call, or when the recorded
    /// permit does not say what granted it and the proposed file grants
    /// through a capability. A denial for a method, path, port or
    /// `tools_deny` stands whatever the caller's grants.
    fn inexact(&self, change: Change, old_code: &str, new_code: &str) -> Option<String> {
        let for_want_of_access = matches!(
            new_code,
            "not_in_allow_list" | "tool_not_allowed" | "mcp_not_allowed"
        );
        if change != Change::PermitToDeny || !for_want_of_access {
            return None;
        }
        if old_code == "allowed_by_capability" {
            return Some(
                "permitted by a tailnet app capability when recorded; the log keeps no \
                 capabilities"
                    .to_owned(),
            );
        }
        match &self.capability {
            Some(cap) if !is_policy_code(old_code) => Some(format!(
                "the record does not say what permitted it, and the proposed file grants \
                 through capability {cap}"
            )),
            _ => None,
        }
    }

    /// The replay so far, with `source` naming where the records came from.
    pub fn finish(self, source: ReplaySource) -> Replay {
        let changes = self
            .groups
            .into_iter()
            .map(|((change, caller, endpoint), acc)| ChangeGroup {
                change,
                caller,
                endpoint,
                count: acc.count,
                inexact: acc.inexact,
                examples: acc.examples,
            })
            .collect();
        let not_replayed = self
            .skipped
            .into_iter()
            .map(|(cause, acc)| NotReplayed {
                cause,
                why: acc.why,
                count: acc.count,
                examples: acc.examples,
            })
            .collect();
        let recorded_under = self
            .fingerprints
            .into_iter()
            .map(|(fingerprint, decisions)| RecordedUnder {
                fingerprint,
                decisions,
            })
            .collect();
        Replay {
            file: self.file,
            fingerprint: self.policy.fingerprint().to_owned(),
            source,
            capabilities_recorded: false,
            capability: self.capability,
            totals: self.totals,
            changes,
            not_replayed,
            recorded_under,
        }
    }
}

/// Replays `records` under `config` in one call.
pub fn replay<'a>(
    config: &Config,
    records: impl IntoIterator<Item = &'a StoredRecord>,
    source: ReplaySource,
) -> Replay {
    let mut replayer = Replayer::new(config);
    for stored in records {
        replayer.add(stored);
    }
    replayer.finish(source)
}

/// Whether `reason`'s code is in [`POLICY_CODES`].
#[cfg(test)]
pub(super) fn listed(reason: &crate::policy::Reason) -> bool {
    use crate::policy::Reason;
    // No wildcard: a new reason fails to compile here until it is listed.
    match reason {
        Reason::AllowedByIdentity { .. }
        | Reason::AllowedByCapability { .. }
        | Reason::UnknownEndpoint { .. }
        | Reason::WrongKind { .. }
        | Reason::NotInAllowList { .. }
        | Reason::PortNotAllowed { .. }
        | Reason::MethodNotAllowed { .. }
        | Reason::PathNotAllowed { .. }
        | Reason::MalformedPath { .. }
        | Reason::ToolDenied { .. }
        | Reason::ToolNotAllowed { .. }
        | Reason::McpNotAllowed
        | Reason::McpNotConfigured
        | Reason::MetricsNotAllowed => is_policy_code(reason.code()),
    }
}
