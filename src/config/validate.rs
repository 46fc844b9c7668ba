//! The one validation pass: defaults, group resolution, every error at once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::endpoint::endpoint;
use super::error::{ConfigError, Diagnostic};
use super::locate::Locator;
use super::raw::{RawAudit, RawConfig, RawMcp, RawTailnet};
use super::{
    AuditSettings, AuthKeySource, Config, DEFAULT_AUDIT_QUEUE, Identity, McpDevice, OnAuditFailure,
    Rate, RateLimits, RatePeriod, Tailnet,
};

const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
const DEFAULT_MCP_DEVICE_NAME: &str = "mcp";

pub(super) struct Ctx<'s> {
    file: &'s str,
    locator: Locator<'s>,
    errors: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(super) fn error(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = self.locator.at(path);
        self.errors.push(Diagnostic::new(
            self.file,
            line,
            column,
            path,
            &message.into(),
        ));
    }

    pub(super) fn positive(&mut self, path: &str, value: Option<i64>, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) if v > 0 => v.unsigned_abs(),
            Some(v) => {
                self.error(path, format!("must be greater than 0, got {v}"));
                default
            }
        }
    }

    pub(super) fn port(&mut self, path: &str, value: i64) -> Option<u16> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.error(path, format!("port {value} is out of range 1..=65535"));
                None
            }
        }
    }
}

pub(super) fn validate(
    raw: RawConfig,
    source: &str,
    file: &str,
    fingerprint: String,
) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        file,
        locator: Locator::new(source),
        errors: Vec::new(),
    };
    let tailnet = match raw.tailnet {
        Some(t) => tailnet(&mut cx, t),
        None => {
            cx.error("tailnet", "missing required table [tailnet]");
            None
        }
    };
    let prefix = tailnet
        .as_ref()
        .map(|t: &Tailnet| t.hostname_prefix.clone())
        .unwrap_or_default();
    let groups = groups(&mut cx, &raw.groups);
    let mcp = raw.mcp.map(|m| mcp_device(&mut cx, m, &groups, &prefix));
    let audit = raw.audit.map(|a| audit(&mut cx, a)).unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in raw.endpoints.into_iter().enumerate() {
        if let Some(e) = endpoint(&mut cx, i, e, &groups, &prefix) {
            if let Some(first) = names.insert(e.hostname.clone(), i) {
                cx.error(
                    &format!("endpoint[{i}].name"),
                    format!(
                        "duplicate endpoint name {:?} (hostname {:?} is already used by endpoint[{first}])",
                        e.name, e.hostname
                    ),
                );
            }
            if let Some(m) = &mcp
                && m.hostname == e.hostname
            {
                cx.error(
                    &format!("endpoint[{i}].name"),
                    format!(
                        "endpoint name {:?} collides with the [mcp] device hostname {:?}",
                        e.name, m.hostname
                    ),
                );
            }
            endpoints.push(e);
        }
    }
    cx.errors.sort_by_key(|d| (d.line, d.column));
    match tailnet {
        Some(tailnet) if cx.errors.is_empty() => Ok(Config {
            file_name: file.to_owned(),
            fingerprint,
            tailnet,
            groups,
            mcp,
            audit,
            endpoints,
        }),
        _ => Err(ConfigError::Invalid(cx.errors)),
    }
}

fn audit(cx: &mut Ctx<'_>, a: RawAudit) -> AuditSettings {
    let on_failure = match a.on_failure.as_deref() {
        None | Some("refuse") => OnAuditFailure::Refuse,
        Some("serve") => OnAuditFailure::Serve,
        Some(other) => {
            cx.error(
                "audit.on_failure",
                format!("unknown value {other:?}: expected \"refuse\" or \"serve\""),
            );
            OnAuditFailure::Refuse
        }
    };
    let queue = cx.positive("audit.queue", a.queue, DEFAULT_AUDIT_QUEUE as u64);
    AuditSettings {
        on_failure,
        queue: usize::try_from(queue).unwrap_or(usize::MAX),
    }
}

fn tailnet(cx: &mut Ctx<'_>, t: RawTailnet) -> Option<Tailnet> {
    let control_url = match t.control_url {
        None => {
            cx.error("tailnet", "missing required field `control_url`");
            None
        }
        Some(url) => match check_url(&url) {
            Ok(()) => Some(url),
            Err(why) => {
                cx.error("tailnet.control_url", why);
                None
            }
        },
    };
    if t.auth_key.is_some() {
        cx.error(
            "tailnet.auth_key",
            "inline auth keys are not allowed: this file is reviewed and shared, so secrets \
             never go in it; use `auth_key_env` or `auth_key_file`",
        );
    }
    let auth_key = match (t.auth_key_env, t.auth_key_file) {
        (Some(_), Some(_)) => {
            cx.error(
                "tailnet.auth_key_file",
                "set only one of `auth_key_env` and `auth_key_file`",
            );
            None
        }
        (None, None) => {
            if t.auth_key.is_none() {
                cx.error(
                    "tailnet",
                    "one of `auth_key_env` or `auth_key_file` is required",
                );
            }
            None
        }
        (Some(env), None) => {
            let valid = env
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if valid {
                Some(AuthKeySource::Env(env))
            } else {
                cx.error(
                    "tailnet.auth_key_env",
                    format!("{env:?} is not a valid environment variable name"),
                );
                None
            }
        }
        (None, Some(file)) => {
            if file.trim().is_empty() {
                cx.error("tailnet.auth_key_file", "must not be empty");
                None
            } else {
                Some(AuthKeySource::File(PathBuf::from(file)))
            }
        }
    };
    let state_dir = match t.state_dir {
        Some(dir) if !dir.trim().is_empty() => Some(PathBuf::from(dir)),
        Some(_) => {
            cx.error("tailnet.state_dir", "must not be empty");
            None
        }
        None => {
            cx.error("tailnet", "missing required field `state_dir`");
            None
        }
    };
    let hostname_prefix = t.hostname_prefix.unwrap_or_default();
    if !hostname_prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || hostname_prefix.starts_with('-')
    {
        cx.error(
            "tailnet.hostname_prefix",
            format!(
                "invalid hostname prefix {hostname_prefix:?}: use lower-case letters, digits and '-', not starting with '-'"
            ),
        );
    }
    let tags = t.tags.unwrap_or_default();
    for (i, tag) in tags.iter().enumerate() {
        if let Err(why) = check_tag(tag) {
            cx.error(&format!("tailnet.tags[{i}]"), why);
        }
    }
    let go_gc = t.go_gc.and_then(|v| {
        super::parse_go_gc(&v.text())
            .map_err(|why| cx.error("tailnet.go_gc", why))
            .ok()
    });
    let go_memory_limit = t.go_memory_limit.and_then(|v| {
        super::parse_bytes(&v.text())
            .map_err(|why| cx.error("tailnet.go_memory_limit", why))
            .ok()
    });
    if go_gc == Some(super::GoGc::Off) && go_memory_limit.is_none() {
        cx.error(
            "tailnet.go_gc",
            "go_gc = \"off\" without `go_memory_limit` lets the heap grow without bound",
        );
    }
    Some(Tailnet {
        control_url: control_url?,
        auth_key: auth_key?,
        state_dir: state_dir?,
        hostname_prefix,
        tags,
        ephemeral: t.ephemeral.unwrap_or(false),
        go_gc,
        go_memory_limit,
    })
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("invalid URL {url:?}: must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid URL {url:?}: missing host or contains whitespace"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    match tag.strip_prefix("tag:") {
        Some(name)
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(())
        }
        Some(_) => Err(format!(
            "invalid tag {tag:?}: the name after \"tag:\" must be letters, digits, '-' or '_'"
        )),
        None => Err(format!(
            "invalid tag {tag:?}: tags must start with \"tag:\""
        )),
    }
}

fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

pub(super) fn check_hostname(
    cx: &mut Ctx<'_>,
    path: &str,
    prefix: &str,
    name: &str,
) -> Option<String> {
    if let Err(why) = check_dns_label(name) {
        cx.error(path, why);
        return None;
    }
    let hostname = format!("{prefix}{name}");
    if hostname.len() > 63 {
        cx.error(
            path,
            format!("hostname {hostname:?} (prefix + name) is longer than 63 characters"),
        );
        return None;
    }
    Some(hostname)
}

/// Parses one identity outside `[groups]`; group references are resolved.
fn identity(
    cx: &mut Ctx<'_>,
    path: &str,
    text: &str,
    groups: &BTreeMap<String, Vec<Identity>>,
) -> Option<Identity> {
    if let Some(name) = text.strip_prefix("group:") {
        return match groups.get(name) {
            Some(members) => Some(Identity::Group {
                name: name.to_owned(),
                members: members.clone(),
            }),
            None => {
                cx.error(path, format!("group {name:?} is not defined in [groups]"));
                None
            }
        };
    }
    match member(text) {
        Ok(id) => Some(id),
        Err(why) => {
            cx.error(path, why);
            None
        }
    }
}

/// Parses an identity that is not a group reference.
fn member(text: &str) -> Result<Identity, String> {
    let bad = |what: &str| format!("invalid identity {text:?}: {what}");
    let no_space =
        |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if text == "*" {
        return Ok(Identity::Everyone);
    }
    if let Some(login) = text.strip_prefix("user:") {
        return if no_space(login) {
            Ok(Identity::User(login.to_owned()))
        } else {
            Err(bad("empty login or whitespace after \"user:\""))
        };
    }
    if text.starts_with("tag:") {
        return check_tag(text).map(|()| Identity::Tag(text.to_owned()));
    }
    if let Some(node) = text.strip_prefix("node:") {
        return if no_space(node) {
            Ok(Identity::Node(node.trim_end_matches('.').to_owned()))
        } else {
            Err(bad("empty name or whitespace after \"node:\""))
        };
    }
    Err(bad(
        "expected \"user:<login>\", \"group:<name>\", \"tag:<name>\", \"node:<name>\" or \"*\"",
    ))
}

fn groups(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<Identity>> {
    let mut out = BTreeMap::new();
    for (name, members) in raw {
        let group_path = format!("groups.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            cx.error(
                &group_path,
                format!("invalid group name {name:?}: use letters, digits, '-' and '_'"),
            );
        }
        let mut resolved = Vec::new();
        for (i, text) in members.iter().enumerate() {
            let path = format!("{group_path}[{i}]");
            if text.starts_with("group:") {
                cx.error(
                    &path,
                    format!("groups may not contain groups ({text:?}); list its members instead"),
                );
                continue;
            }
            match member(text) {
                Ok(id) => resolved.push(id),
                Err(why) => cx.error(&path, why),
            }
        }
        out.insert(name.clone(), resolved);
    }
    out
}

pub(super) fn identities(
    cx: &mut Ctx<'_>,
    path: &str,
    list: Option<Vec<String>>,
    groups: &BTreeMap<String, Vec<Identity>>,
) -> Vec<Identity> {
    let mut out: Vec<Identity> = Vec::new();
    for (i, text) in list.unwrap_or_default().iter().enumerate() {
        let item = format!("{path}[{i}]");
        if let Some(id) = identity(cx, &item, text, groups) {
            if out.contains(&id) {
                cx.error(&item, format!("duplicate identity {text:?}"));
            } else {
                out.push(id);
            }
        }
    }
    out
}

fn mcp_device(
    cx: &mut Ctx<'_>,
    m: RawMcp,
    groups: &BTreeMap<String, Vec<Identity>>,
    prefix: &str,
) -> McpDevice {
    let name = m.name.unwrap_or_else(|| DEFAULT_MCP_DEVICE_NAME.to_owned());
    let hostname = check_hostname(cx, "mcp.name", prefix, &name).unwrap_or_default();
    let port = match m.port {
        None => 80,
        Some(p) => cx.port("mcp.port", p).unwrap_or(80),
    };
    let allow = identities(cx, "mcp.allow", m.allow, groups);
    let metrics_allow = identities(cx, "mcp.metrics_allow", m.metrics_allow, groups);
    if let Some(cap) = &m.capability
        && (cap.is_empty() || cap.chars().any(char::is_whitespace))
    {
        cx.error("mcp.capability", format!("invalid capability name {cap:?}"));
    }
    let max_body_bytes = cx.positive(
        "mcp.max_body_bytes",
        m.max_body_bytes,
        DEFAULT_MAX_BODY_BYTES,
    );
    let mut rate_limit = RateLimits::default();
    if let Some(r) = m.rate_limit {
        rate_limit.per_caller = rate(cx, "mcp.rate_limit.per_caller", r.per_caller);
        rate_limit.per_tool = rate(cx, "mcp.rate_limit.per_tool", r.per_tool);
    }
    McpDevice {
        name,
        hostname,
        port,
        allow,
        metrics_allow,
        capability: m.capability,
        max_body_bytes,
        rate_limit,
    }
}

fn rate(cx: &mut Ctx<'_>, path: &str, text: Option<String>) -> Option<Rate> {
    let text = text?;
    let parsed = text.split_once('/').and_then(|(n, unit)| {
        let count: u32 = n.parse().ok().filter(|c| *c > 0)?;
        let period = match unit {
            "s" => RatePeriod::Second,
            "m" => RatePeriod::Minute,
            "h" => RatePeriod::Hour,
            _ => return None,
        };
        Some(Rate { count, period })
    });
    if parsed.is_none() {
        cx.error(
            path,
            format!("invalid rate {text:?}: expected \"N/s\", \"N/m\" or \"N/h\" with N >= 1"),
        );
    }
    parsed
}
