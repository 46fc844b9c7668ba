//! The one validation pass: defaults, group resolution, every error at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::error::{ConfigError, Diagnostic};
use super::locate::Locator;
use super::raw::{RawConfig, RawEndpoint, RawHttp, RawInspect, RawMcp, RawTailnet, RawUpstream};
use super::{
    AuthKeySource, Config, Endpoint, Glob, HttpRules, Identity, InjectionAction, Inspect, Kind,
    McpDevice, McpUpstream, Rate, RateLimits, RatePeriod, SecretsAction, Tailnet, Target,
};

const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_HTTP_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
const DEFAULT_MCP_DEVICE_NAME: &str = "mcp";
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

struct Ctx<'s> {
    file: &'s str,
    locator: Locator<'s>,
    errors: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = self.locator.at(path);
        self.errors
            .push(Diagnostic::new(self.file, line, column, path, &message.into()));
    }

    fn positive(&mut self, path: &str, value: Option<i64>, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) if v > 0 => v.unsigned_abs(),
            Some(v) => {
                self.error(path, format!("must be greater than 0, got {v}"));
                default
            }
        }
    }

    fn port(&mut self, path: &str, value: i64) -> Option<u16> {
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
            endpoints,
        }),
        _ => Err(ConfigError::Invalid(cx.errors)),
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
                cx.error("tailnet", "one of `auth_key_env` or `auth_key_file` is required");
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
    Some(Tailnet {
        control_url: control_url?,
        auth_key: auth_key?,
        state_dir: state_dir?,
        hostname_prefix,
        tags,
        ephemeral: t.ephemeral.unwrap_or(false),
    })
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("invalid URL {url:?}: must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid URL {url:?}: missing host or contains whitespace"));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    match tag.strip_prefix("tag:") {
        Some(name)
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(())
        }
        Some(_) => Err(format!(
            "invalid tag {tag:?}: the name after \"tag:\" must be letters, digits, '-' or '_'"
        )),
        None => Err(format!("invalid tag {tag:?}: tags must start with \"tag:\"")),
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

fn check_hostname(cx: &mut Ctx<'_>, path: &str, prefix: &str, name: &str) -> Option<String> {
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
    let no_space = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
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

fn identities(
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
    let max_body_bytes = cx.positive("mcp.max_body_bytes", m.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
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

fn endpoint(
    cx: &mut Ctx<'_>,
    i: usize,
    e: RawEndpoint,
    groups: &BTreeMap<String, Vec<Identity>>,
    prefix: &str,
) -> Option<Endpoint> {
    let at = |field: &str| format!("endpoint[{i}].{field}");
    let base = format!("endpoint[{i}]");
    let (name, hostname) = match e.name {
        None => {
            cx.error(&base, "missing required field `name`");
            (None, None)
        }
        Some(name) => {
            let hostname = check_hostname(cx, &at("name"), prefix, &name);
            (Some(name), hostname)
        }
    };
    let kind = match e.kind.as_deref() {
        None => {
            cx.error(&base, "missing required field `kind`");
            None
        }
        Some("tcp") => Some(Kind::Tcp),
        Some("http") => Some(Kind::Http),
        Some("mcp") => Some(Kind::Mcp),
        Some(other) => {
            cx.error(
                &at("kind"),
                format!("unknown kind {other:?}: expected \"tcp\", \"http\" or \"mcp\""),
            );
            None
        }
    };
    let target = match e.target {
        None => {
            cx.error(&base, "missing required field `target`");
            None
        }
        Some(t) => Target::parse(&t).map_err(|why| cx.error(&at("target"), why)).ok(),
    };
    let ports = match e.ports {
        Some(list) if list.is_empty() => {
            cx.error(&at("ports"), "must list at least one port");
            Vec::new()
        }
        Some(list) => {
            let mut out = Vec::new();
            for (j, p) in list.into_iter().enumerate() {
                let path = format!("{}[{j}]", at("ports"));
                if let Some(port) = cx.port(&path, p) {
                    if out.contains(&port) {
                        cx.error(&path, format!("duplicate port {port}"));
                    } else {
                        out.push(port);
                    }
                }
            }
            out
        }
        None => match (kind, &target) {
            (Some(Kind::Tcp), Some(t)) => vec![t.port],
            _ => vec![80],
        },
    };
    let allow = identities(cx, &at("allow"), e.allow, groups);
    let connect_timeout_ms = cx.positive(
        &at("connect_timeout_ms"),
        e.connect_timeout_ms,
        DEFAULT_CONNECT_TIMEOUT_MS,
    );
    let kind_name = kind.map(|k| k.to_string()).unwrap_or_default();
    if e.http.is_some() && kind.is_some_and(|k| k != Kind::Http) {
        cx.error(
            &at("http"),
            format!("[endpoint.http] is only allowed on kind = \"http\" endpoints (this one is {kind_name:?})"),
        );
    }
    if e.mcp.is_some() && kind.is_some_and(|k| k != Kind::Mcp) {
        cx.error(
            &at("mcp"),
            format!("[endpoint.mcp] is only allowed on kind = \"mcp\" endpoints (this one is {kind_name:?})"),
        );
    }
    let http = (kind == Some(Kind::Http)).then(|| http(cx, &at("http"), e.http));
    let mcp = (kind == Some(Kind::Mcp)).then(|| upstream(cx, &at("mcp"), e.mcp));
    let inspect = inspect(cx, &at("inspect"), e.inspect);
    Some(Endpoint {
        name: name?,
        hostname: hostname?,
        kind: kind?,
        target: target?,
        ports,
        allow,
        description: e.description,
        connect_timeout_ms,
        http,
        mcp,
        inspect,
    })
}

fn http(cx: &mut Ctx<'_>, path: &str, h: Option<RawHttp>) -> HttpRules {
    let h = h.unwrap_or(RawHttp {
        methods: None,
        paths: None,
        identity_headers: None,
        tls: None,
        max_response_bytes: None,
        timeout_ms: None,
    });
    let mut methods: Vec<String> = Vec::new();
    let raw_methods = h
        .methods
        .unwrap_or_else(|| vec!["GET".to_owned(), "HEAD".to_owned()]);
    if raw_methods.is_empty() {
        cx.error(&format!("{path}.methods"), "must list at least one method");
    }
    for (j, m) in raw_methods.into_iter().enumerate() {
        let item = format!("{path}.methods[{j}]");
        if !METHODS.contains(&m.as_str()) {
            let hint = if METHODS.contains(&m.to_ascii_uppercase().as_str()) {
                " (methods are written in upper case)"
            } else {
                ""
            };
            cx.error(&item, format!("unknown HTTP method {m:?}{hint}"));
        } else if methods.contains(&m) {
            cx.error(&item, format!("duplicate method {m:?}"));
        } else {
            methods.push(m);
        }
    }
    let raw_paths = h.paths.unwrap_or_else(|| vec!["/**".to_owned()]);
    if raw_paths.is_empty() {
        cx.error(&format!("{path}.paths"), "must list at least one path");
    }
    let paths = globs(cx, &format!("{path}.paths"), raw_paths, Glob::path, "path");
    HttpRules {
        methods,
        paths,
        identity_headers: h.identity_headers.unwrap_or(false),
        tls: h.tls.unwrap_or(false),
        max_response_bytes: cx.positive(
            &format!("{path}.max_response_bytes"),
            h.max_response_bytes,
            DEFAULT_MAX_RESPONSE_BYTES,
        ),
        timeout_ms: cx.positive(&format!("{path}.timeout_ms"), h.timeout_ms, DEFAULT_HTTP_TIMEOUT_MS),
    }
}

fn globs(
    cx: &mut Ctx<'_>,
    path: &str,
    list: Vec<String>,
    parse: fn(&str) -> Result<Glob, String>,
    what: &str,
) -> Vec<Glob> {
    let mut out: Vec<Glob> = Vec::new();
    let mut seen = BTreeSet::new();
    for (j, text) in list.into_iter().enumerate() {
        let item = format!("{path}[{j}]");
        match parse(&text) {
            Ok(g) if !seen.insert(text.clone()) => {
                cx.error(&item, format!("duplicate {what} pattern {:?}", g.as_str()));
            }
            Ok(g) => out.push(g),
            Err(why) => cx.error(&item, format!("invalid {what} pattern {text:?}: {why}")),
        }
    }
    out
}

fn upstream(cx: &mut Ctx<'_>, path: &str, m: Option<RawUpstream>) -> McpUpstream {
    let m = m.unwrap_or(RawUpstream {
        path: None,
        tools_allow: None,
        tools_deny: None,
        tls: None,
        timeout_ms: None,
    });
    let upstream_path = m.path.unwrap_or_else(|| "/mcp".to_owned());
    if !upstream_path.starts_with('/') || upstream_path.chars().any(char::is_whitespace) {
        cx.error(
            &format!("{path}.path"),
            format!("invalid path {upstream_path:?}: must start with '/' and contain no whitespace"),
        );
    }
    let tool_glob = |s: &str| {
        if s.contains('/') {
            Err("tool names never contain '/'".to_owned())
        } else {
            Glob::name(s)
        }
    };
    let tools_allow = globs(
        cx,
        &format!("{path}.tools_allow"),
        m.tools_allow.unwrap_or_else(|| vec!["*".to_owned()]),
        tool_glob,
        "tool",
    );
    let tools_deny = globs(
        cx,
        &format!("{path}.tools_deny"),
        m.tools_deny.unwrap_or_default(),
        tool_glob,
        "tool",
    );
    McpUpstream {
        path: upstream_path,
        tools_allow,
        tools_deny,
        tls: m.tls.unwrap_or(false),
        timeout_ms: cx.positive(&format!("{path}.timeout_ms"), m.timeout_ms, DEFAULT_HTTP_TIMEOUT_MS),
    }
}

fn inspect(cx: &mut Ctx<'_>, path: &str, i: Option<RawInspect>) -> Inspect {
    let Some(i) = i else {
        return Inspect::default();
    };
    let secrets = match i.secrets.as_deref() {
        None | Some("redact") => SecretsAction::Redact,
        Some("block") => SecretsAction::Block,
        Some("log") => SecretsAction::Log,
        Some(other) => {
            cx.error(
                &format!("{path}.secrets"),
                format!("unknown secrets action {other:?}: expected \"redact\", \"block\" or \"log\""),
            );
            SecretsAction::Redact
        }
    };
    let injection = match i.injection.as_deref() {
        None | Some("flag") => InjectionAction::Flag,
        Some("block") => InjectionAction::Block,
        Some(other) => {
            cx.error(
                &format!("{path}.injection"),
                format!("unknown injection action {other:?}: expected \"flag\" or \"block\""),
            );
            InjectionAction::Flag
        }
    };
    Inspect { secrets, injection }
}
