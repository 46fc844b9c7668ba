//! Which request headers a caller may send on to a backend, and which the
//! connector sets itself. One list, used by the http devices and by the
//! MCP `http_request` tool alike.
//!
//! Identity comes from the tailnet, never from a header the caller sends.
//! Many internal applications sit behind a reverse proxy or an
//! authentication proxy and trust whatever that proxy puts in certain
//! headers: the client address, the signed-in user, the real method or
//! URL. The connector is that proxy now, so every such header the caller
//! sent is removed before the request leaves, and the connector adds its
//! own where it has something true to say:
//!
//! - `Forwarded: for="<caller's tailnet ip:port>";proto=http`,
//!   `X-Forwarded-For` and `X-Forwarded-Proto`, always;
//! - `X-Forwarded-User` (the caller's login; not sent for tagged nodes,
//!   which have none) and `X-Portcullis-User`, `-Node`, `-Tags`, only when
//!   the endpoint sets `identity_headers = true`.
//!
//! Names are compared case-insensitively and with `_` read as `-`: CGI,
//! PHP, WSGI and Rack all turn `X_Forwarded_For` and `X-Forwarded-For` into
//! the same variable, so the underscore spelling must not slip through.
//! An endpoint can remove more with `strip_headers` (names, or prefixes
//! ending in `*`).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::identity::Caller;

/// Headers removed from every forwarded request, by exact name (lowercase,
/// `-` separated), grouped by what a backend would believe from them.
pub const STRIPPED: &[&str] = &[
    // Client address, as reverse proxies and CDNs report it.
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "x-original-forwarded-for",
    // The signed-in user, as authentication proxies report it
    // (Apache, oauth2-proxy, Authelia, Grafana's auth proxy, Cloudflare
    // Access, Pomerium, Azure App Service).
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-remote-user",
    "x-remote-email",
    "x-remote-group",
    "x-remote-groups",
    "x-user",
    "x-email",
    "x-auth-user",
    "x-authenticated-user",
    "x-webauth-user",
    "cf-access-authenticated-user-email",
    "cf-access-jwt-assertion",
    "x-pomerium-jwt-assertion",
    "x-ms-client-principal",
    "x-ms-client-principal-id",
    "x-ms-client-principal-name",
    // Method overrides: a GET-only endpoint must not become a DELETE.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // URL overrides: the path the policy allowed must be the path served.
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
];

/// Header name prefixes removed from every forwarded request.
pub const STRIPPED_PREFIXES: &[&str] = &[
    // X-Forwarded-For/-Host/-Proto/-Port/-User/-Email/-Groups/...
    "x-forwarded-",
    // oauth2-proxy / nginx auth_request: X-Auth-Request-User/-Email/...
    "x-auth-request-",
    "x-goog-authenticated-user-",
    "x-amzn-oidc-",
    "x-pomerium-claim-",
    // The connector's own identity headers, and Tailscale serve's.
    "x-portcullis-",
    "tailscale-",
];

/// Headers that describe one hop and are never forwarded (RFC 9110 7.6.1,
/// plus the non-standard `Proxy-Connection`).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `name` lowercased, with `_` read as `-`.
fn normalize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether `pattern` (a name, or a prefix ending in `*`, already
/// normalized) matches the normalized `name`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether a caller's header `name` is removed before forwarding, given the
/// endpoint's own `strip_headers` (as validated by the config: lowercase,
/// `_` written as `-`, a prefix ending in `*`).
pub fn is_stripped(name: &str, extra: &[String]) -> bool {
    let name = normalize(name);
    HOP_BY_HOP.contains(&name.as_str())
        || STRIPPED.contains(&name.as_str())
        || STRIPPED_PREFIXES.iter().any(|p| name.starts_with(p))
        || extra.iter().any(|p| matches(p, &name))
}

/// Removes from `headers` every header a caller may not send on: hop-by-hop
/// headers (and those the `Connection` header names), the [`STRIPPED`]
/// names and [`STRIPPED_PREFIXES`], and the endpoint's `extra` patterns.
pub fn strip(headers: &mut HeaderMap, extra: &[String]) {
    let named = connection_named(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            is_stripped(name.as_str(), extra) || named.contains(&normalize(name.as_str()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Removes hop-by-hop headers (and those the `Connection` header names)
/// from a backend's response.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = connection_named(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = normalize(name.as_str());
            HOP_BY_HOP.contains(&name.as_str()) || named.contains(&name)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// The header names listed in `Connection`, normalized.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| normalize(name.trim()))
        .filter(|name| !name.is_empty())
        .collect()
}

/// Sets the connector's own forwarding headers for a request from `caller`
/// and, with `identity`, its identity headers (see the module docs). Call
/// after [`strip`]. A value that cannot be a header value (a control
/// character in a name) is left out rather than mangled.
pub fn set_forwarded(headers: &mut HeaderMap, caller: &Caller, identity: bool) {
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    let ip = caller.addr.ip();
    // RFC 7239: a node with a port, or an IPv6 address, is a quoted string;
    // IPv6 in brackets.
    let node = match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}", caller.addr.port()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", caller.addr.port()),
    };
    put("forwarded", &format!("for=\"{node}\";proto=http"));
    put("x-forwarded-for", &ip.to_string());
    put("x-forwarded-proto", "http");
    if !identity {
        return;
    }
    if let Some(user) = &caller.user {
        put("x-forwarded-user", user);
        put("x-portcullis-user", user);
    }
    put("x-portcullis-node", &caller.node);
    if !caller.tags.is_empty() {
        put("x-portcullis-tags", &caller.tags.join(","));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn caller(user: Option<&str>, addr: &str) -> Caller {
        Caller {
            addr: addr.parse().unwrap(),
            node_id: "n1".to_owned(),
            node: "agent-1.tail.example".to_owned(),
            user: user.map(str::to_owned),
            tags: vec!["tag:agent".to_owned()],
            capabilities: BTreeMap::new(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn every_listed_header_is_stripped_in_any_spelling() {
        let mut sent: Vec<String> = STRIPPED.iter().map(|s| (*s).to_owned()).collect();
        sent.extend(STRIPPED_PREFIXES.iter().map(|p| format!("{p}anything")));
        sent.extend(HOP_BY_HOP.iter().map(|s| (*s).to_owned()));
        for name in sent {
            let shouted = name.to_ascii_uppercase();
            let underscored = name.replace('-', "_");
            for spelling in [&name, &shouted, &underscored] {
                assert!(is_stripped(spelling, &[]), "{spelling}");
            }
        }
    }

    #[test]
    fn forged_identity_is_replaced_by_the_connectors_own() {
        let mut headers = map(&[
            ("X-Forwarded-User", "admin"),
            ("x-forwarded-for", "10.0.0.1"),
            ("X_Forwarded_For", "10.0.0.2"),
            ("Forwarded", "for=10.0.0.3"),
            ("X-Real-IP", "10.0.0.4"),
            ("Remote-User", "admin"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-Original-URL", "/admin"),
            ("x-portcullis-user", "admin"),
            ("Accept", "application/json"),
            ("Authorization", "Bearer caller-token"),
        ]);
        strip(&mut headers, &[]);
        set_forwarded(
            &mut headers,
            &caller(Some("alice@example.com"), "100.64.0.9:41000"),
            false,
        );
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "authorization",
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(headers["forwarded"], "for=\"100.64.0.9:41000\";proto=http");
        assert_eq!(headers["x-forwarded-for"], "100.64.0.9");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn identity_headers_only_when_asked_and_never_for_tagged_nodes() {
        let mut headers = HeaderMap::new();
        set_forwarded(
            &mut headers,
            &caller(Some("alice@example.com"), "[fd7a:115c::5]:8"),
            true,
        );
        assert_eq!(headers["x-forwarded-user"], "alice@example.com");
        assert_eq!(headers["x-portcullis-node"], "agent-1.tail.example");
        assert_eq!(headers["forwarded"], "for=\"[fd7a:115c::5]:8\";proto=http");
        let mut tagged = HeaderMap::new();
        set_forwarded(&mut tagged, &caller(None, "100.64.0.2:1"), true);
        assert!(tagged.get("x-forwarded-user").is_none());
        assert_eq!(tagged["x-portcullis-tags"], "tag:agent");
    }

    #[test]
    fn connection_named_and_endpoint_listed_headers_go_too() {
        let extra = vec!["x-api-user".to_owned(), "x-internal-*".to_owned()];
        let mut headers = map(&[
            ("Connection", "close, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("x_api_user", "root"),
            ("X-Internal-Role", "admin"),
            ("X-Internalx", "kept"),
        ]);
        strip(&mut headers, &extra);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-internalx"]);
    }
}
