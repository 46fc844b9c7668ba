//! Validation of one `[[endpoint]]` and its sub-tables.

use std::collections::{BTreeMap, BTreeSet};

use super::raw::{RawEndpoint, RawHttp, RawInspect, RawUpstream};
use super::validate::{Ctx, check_hostname, identities};
use super::{
    Endpoint, Glob, HttpRules, Identity, InjectionAction, Inspect, Kind, McpUpstream,
    SecretsAction, Target,
};

const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_HTTP_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

pub(super) fn endpoint(
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
        Some(t) => Target::parse(&t)
            .map_err(|why| cx.error(&at("target"), why))
            .ok(),
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
        strip_headers: None,
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
    let mut strip_headers: Vec<String> = Vec::new();
    for (j, entry) in h.strip_headers.unwrap_or_default().into_iter().enumerate() {
        let item = format!("{path}.strip_headers[{j}]");
        match strip_pattern(&entry) {
            Ok(p) if strip_headers.contains(&p) => {
                cx.error(&item, format!("duplicate header {entry:?}"));
            }
            Ok(p) => strip_headers.push(p),
            Err(why) => cx.error(&item, why),
        }
    }
    HttpRules {
        methods,
        paths,
        identity_headers: h.identity_headers.unwrap_or(false),
        strip_headers,
        tls: h.tls.unwrap_or(false),
        max_response_bytes: cx.positive(
            &format!("{path}.max_response_bytes"),
            h.max_response_bytes,
            DEFAULT_MAX_RESPONSE_BYTES,
        ),
        timeout_ms: cx.positive(
            &format!("{path}.timeout_ms"),
            h.timeout_ms,
            DEFAULT_HTTP_TIMEOUT_MS,
        ),
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
            format!(
                "invalid path {upstream_path:?}: must start with '/' and contain no whitespace"
            ),
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
        timeout_ms: cx.positive(
            &format!("{path}.timeout_ms"),
            m.timeout_ms,
            DEFAULT_HTTP_TIMEOUT_MS,
        ),
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
                format!(
                    "unknown secrets action {other:?}: expected \"redact\", \"block\" or \"log\""
                ),
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

/// Checks and normalizes one `strip_headers` entry: a header name, or a
/// prefix ending in `*`; lowercased, `_` read as `-` (as CGI-style backends
/// read it).
fn strip_pattern(entry: &str) -> Result<String, String> {
    let name = entry.strip_suffix('*').unwrap_or(entry);
    if name.is_empty() {
        return Err("must name a header or a prefix such as \"X-Internal-*\"".to_owned());
    }
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.contains('*') {
        return Err(format!(
            "{entry:?} is not a header name (letters, digits and !#$%&'+-.^_`|~; `*` only at the end)"
        ));
    }
    Ok(entry
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect())
}
