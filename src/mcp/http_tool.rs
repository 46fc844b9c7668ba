//! The `http_request` tool: one HTTP/1.1 request to an `http` endpoint's
//! pinned target.
//!
//! - The request goes only to the endpoint's pinned addresses, with the
//!   target as written in the file as `Host`.
//! - Redirects are never followed: a 3xx comes back to the caller as it is,
//!   so nothing leaves the target.
//! - Caller-supplied identity, forwarding, method- and URL-override and
//!   hop-by-hop headers are removed and the connector's own `Forwarded` /
//!   `X-Forwarded-*` (and, with `identity_headers = true`, the verified
//!   identity) are set, as for http devices: see
//!   [`crate::backend::headers`].
//! - The whole exchange (connect, send, read) is capped by `timeout_ms`;
//!   running out is a tool error.
//! - The response body is capped by `max_response_bytes`: the body is cut at
//!   the cap (at a character boundary for text) and the result says
//!   `"truncated": true`. Truncating rather than failing gives the agent
//!   the beginning of a large page, which is usually what it needs, and the
//!   flag tells it the rest is missing.
//! - The body comes back as text when it is UTF-8, else as base64 with
//!   `"body_encoding": "base64"`.
//! - Connections to a target are kept for reuse ([`Pool`]), keyed by the
//!   endpoint and its pinned addresses, so a reload that re-pins a target
//!   never reuses a connection to the old addresses. A request that finds a
//!   reused connection closed by the backend before it was sent is retried
//!   once on a new connection; one that may have reached the backend is
//!   not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::{Pinned, headers};
use crate::config::{Endpoint, HttpRules};
use crate::identity::Caller;

use super::error::McpError;

/// Idle connections kept per target.
const POOL_PER_TARGET: usize = 32;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Idle HTTP/1.1 connections to pinned targets, for reuse by later calls.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Sender>>>,
}

impl Pool {
    fn key(endpoint: &str, pinned: &Pinned) -> String {
        format!("{endpoint} {} {:?}", pinned.target, pinned.addrs)
    }

    /// An idle connection to the target that is still open.
    fn take(&self, key: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse if it can take another request.
    fn give(&self, key: String, sender: Sender) {
        if !sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < POOL_PER_TARGET {
            list.push(sender);
        }
    }

    /// Drops every idle connection (after a reload).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Headers the tool sets itself; the caller's are ignored.
const SET_BY_TOOL: [&str; 3] = ["host", "content-length", "expect"];

/// Arguments of `http_request`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpArgs {
    /// Endpoint name.
    pub endpoint: String,
    /// HTTP method, upper-case.
    pub method: String,
    /// Path, starting with `/`; may carry a query string.
    pub path: String,
    /// Query parameters appended to the path.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body, as text.
    #[serde(default)]
    pub body: Option<String>,
}

impl HttpArgs {
    /// Parses the tool arguments.
    pub fn parse(args: &Value) -> Result<HttpArgs, McpError> {
        let parsed: HttpArgs =
            serde_json::from_value(args.clone()).map_err(|e| McpError::InvalidArguments {
                tool: super::HTTP_REQUEST_TOOL.to_owned(),
                why: e.to_string(),
            })?;
        if !parsed.path.starts_with('/') {
            return Err(McpError::InvalidArguments {
                tool: super::HTTP_REQUEST_TOOL.to_owned(),
                why: format!("path {:?} must start with '/'", parsed.path),
            });
        }
        Ok(parsed)
    }

    /// Path plus the query string built from `query`, as sent on the wire
    /// and as policy sees it.
    pub fn target(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let pairs: Vec<String> = self
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}{}", self.path, pairs.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// JSON schema of the tool's arguments.
pub fn input_schema() -> serde_json::Map<String, Value> {
    let schema = json!({
        "type": "object",
        "properties": {
            "endpoint": {"type": "string", "description": "Endpoint name, from list_endpoints (kind http)."},
            "method": {"type": "string", "description": "HTTP method, e.g. GET."},
            "path": {"type": "string", "description": "Path starting with '/', optionally with a query string."},
            "query": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Query parameters to append."},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Request headers."},
            "body": {"type": "string", "description": "Request body as text."}
        },
        "required": ["endpoint", "method", "path"],
        "additionalProperties": false
    });
    match schema {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

fn build_headers(
    args: &HttpArgs,
    caller: &Caller,
    rules: &HttpRules,
) -> Result<HeaderMap, McpError> {
    let invalid = |why: String| McpError::InvalidArguments {
        tool: super::HTTP_REQUEST_TOOL.to_owned(),
        why,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("invalid header name {name:?}")))?;
        if SET_BY_TOOL.contains(&name.as_str()) {
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| invalid(format!("invalid value for header {name}")))?;
        headers.append(name, value);
    }
    headers::strip(&mut headers, &rules.strip_headers);
    headers::set_forwarded(&mut headers, caller, rules.identity_headers);
    Ok(headers)
}

/// Sends the request and returns `{status, headers, body, body_encoding,
/// truncated}`.
pub async fn send(
    endpoint: &Endpoint,
    pinned: &Pinned,
    args: &HttpArgs,
    caller: &Caller,
    pool: &Pool,
) -> Result<Value, McpError> {
    let name = endpoint.name.clone();
    let rules = endpoint.http.as_ref().ok_or_else(|| McpError::Http {
        endpoint: name.clone(),
        why: "endpoint has no HTTP settings".to_owned(),
    })?;
    if rules.tls {
        return Err(McpError::TlsUnsupported { endpoint: name });
    }
    let method =
        Method::from_bytes(args.method.as_bytes()).map_err(|_| McpError::InvalidArguments {
            tool: super::HTTP_REQUEST_TOOL.to_owned(),
            why: format!("invalid method {:?}", args.method),
        })?;
    let mut headers = build_headers(args, caller, rules)?;
    let host = HeaderValue::from_str(&pinned.target.to_string()).map_err(|_| McpError::Http {
        endpoint: name.clone(),
        why: "target is not a valid Host header".to_owned(),
    })?;
    headers.insert(header::HOST, host);
    let body = Bytes::from(args.body.clone().unwrap_or_default());
    let target = args.target();
    let build = || {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(target.as_str())
            .body(Full::new(body.clone()))
            .map_err(|e| McpError::InvalidArguments {
                tool: super::HTTP_REQUEST_TOOL.to_owned(),
                why: e.to_string(),
            })?;
        *request.headers_mut() = headers.clone();
        Ok::<_, McpError>(request)
    };
    let request = build()?;

    let total = Duration::from_millis(rules.timeout_ms);
    let connect = Duration::from_millis(endpoint.connect_timeout_ms);
    let cap = usize::try_from(rules.max_response_bytes).unwrap_or(usize::MAX);
    let key = Pool::key(&name, pinned);
    let http_error = |e: hyper::Error| McpError::Http {
        endpoint: name.clone(),
        why: e.to_string(),
    };
    let fresh = || async {
        let stream = pinned
            .connect(connect)
            .await
            .map_err(|source| McpError::Backend {
                endpoint: name.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // Runs the connection until the sender is dropped or the backend
        // closes it.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok::<_, McpError>(sender)
    };
    let exchange = async {
        let (mut sender, reused) = match pool.take(&key) {
            Some(sender) => (sender, true),
            None => (fresh().await?, false),
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            // Closed by the backend before the request was written: it
            // never arrived, so sending it again is safe.
            Err(mut e) if reused && e.message().is_some() => {
                let request = e.take_message().unwrap_or(build()?);
                sender = fresh().await?;
                sender.send_request(request).await.map_err(http_error)?
            }
            Err(e) => return Err(http_error(e.into_error())),
        };
        let (parts, mut body) = response.into_parts();
        let mut buf = BytesMut::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http_error)?;
            if let Ok(data) = frame.into_data() {
                let room = cap.saturating_sub(buf.len());
                if data.len() > room {
                    buf.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&data);
            }
        }
        // A truncated body was not read to its end: that connection is
        // not reusable, and dropping it closes it.
        drop(body);
        if !truncated {
            pool.give(key, sender);
        }
        Ok::<_, McpError>((parts, buf.freeze(), truncated))
    };
    let (parts, body, truncated) =
        tokio::time::timeout(total, exchange)
            .await
            .map_err(|_| McpError::Timeout {
                endpoint: name.clone(),
                after: total,
            })??;

    let mut out_headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out_headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                out_headers.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let (body, encoding) = body_text(&body, truncated);
    Ok(json!({
        "status": parts.status.as_u16(),
        "headers": out_headers,
        "body": body,
        "body_encoding": encoding,
        "truncated": truncated,
    }))
}

/// The body as text when it is UTF-8 (a character cut by truncation is
/// dropped), else as base64.
fn body_text(body: &[u8], truncated: bool) -> (String, &'static str) {
    match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), "text"),
        Err(e) if truncated && e.error_len().is_none() => {
            let valid = body.get(..e.valid_up_to()).unwrap_or_default();
            (String::from_utf8_lossy(valid).into_owned(), "text")
        }
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_encoded_and_appended() {
        let args = HttpArgs::parse(&json!({
            "endpoint": "web", "method": "GET", "path": "/a?x=1",
            "query": {"q": "a b&c", "z": "é"}
        }))
        .unwrap();
        assert_eq!(args.target(), "/a?x=1&q=a%20b%26c&z=%C3%A9");
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            json!({"endpoint": "web", "method": "GET"}),
            json!({"endpoint": "web", "method": "GET", "path": "a"}),
            json!({"endpoint": "web", "method": "GET", "path": "/", "extra": 1}),
        ] {
            let err = HttpArgs::parse(&args).unwrap_err();
            assert_eq!(err.code(), "invalid_arguments", "{args}");
        }
    }

    #[test]
    fn forged_identity_and_overrides_never_leave_and_the_connector_forwards_its_own() {
        let config = crate::config::parse(
            "[tailnet]\ncontrol_url = \"http://127.0.0.1:9\"\nauth_key_env = \"K\"\n\
             state_dir = \"/tmp/x\"\n[[endpoint]]\nname = \"web\"\nkind = \"http\"\n\
             target = \"127.0.0.1:80\"\nallow = [\"*\"]\n[endpoint.http]\n\
             strip_headers = [\"X-Api-Role\"]\n",
            "t.toml",
        )
        .unwrap();
        let rules = config.endpoint("web").unwrap().http.clone().unwrap();
        let args = HttpArgs::parse(&json!({
            "endpoint": "web", "method": "GET", "path": "/",
            "headers": {
                "X-Forwarded-For": "10.0.0.1", "x_forwarded_user": "admin", "Forwarded": "for=x",
                "X-Real-IP": "10.0.0.2", "Remote-User": "admin", "X-HTTP-Method-Override": "DELETE",
                "X-Auth-Request-Email": "a@b", "X-Api-Role": "root", "Accept": "text/plain"
            }
        }))
        .unwrap();
        let caller = super::super::tests::caller("n1", None, &["tag:agent"]);
        let headers = build_headers(&args, &caller, &rules).unwrap();
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        let ip = caller.addr.ip().to_string();
        assert_eq!(headers["x-forwarded-for"], ip.as_str());
    }

    #[test]
    fn truncated_text_drops_a_cut_character_and_binary_is_base64() {
        let text = "héllo".as_bytes();
        assert_eq!(body_text(&text[..2], true), ("h".to_owned(), "text"));
        assert_eq!(body_text(&[0xff, 0x00], false).1, "base64");
    }

    /// A loopback HTTP/1.1 backend: answers every request with `ok`,
    /// closing the connection after the request whose path is `/close`;
    /// counts connections.
    async fn backend() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let close = head.starts_with("GET /close ");
                            let extra = if close { "connection: close\r\n" } else { "" };
                            let resp =
                                format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{extra}\r\nok");
                            if s.write_all(resp.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, conns)
    }

    #[tokio::test]
    async fn connections_are_reused_and_a_closed_one_is_replaced() {
        use std::sync::atomic::Ordering;
        let (port, conns) = backend().await;
        let config = crate::config::parse(
            &format!(
                "[tailnet]\ncontrol_url = \"http://127.0.0.1:9\"\nauth_key_env = \"K\"\n\
                 state_dir = \"/tmp/x\"\n[[endpoint]]\nname = \"web\"\nkind = \"http\"\n\
                 target = \"127.0.0.1:{port}\"\nallow = [\"*\"]\n"
            ),
            "t.toml",
        )
        .unwrap();
        let endpoint = config.endpoint("web").unwrap();
        let pinned = crate::backend::pin(&endpoint.target).await.unwrap();
        let caller = super::super::tests::caller("n1", None, &["tag:agent"]);
        let pool = Pool::default();
        let get = |path: &str| {
            HttpArgs::parse(&json!({"endpoint": "web", "method": "GET", "path": path})).unwrap()
        };
        for _ in 0..3 {
            let out = send(endpoint, &pinned, &get("/a"), &caller, &pool)
                .await
                .unwrap();
            assert_eq!(out["body"], "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one kept-alive connection");
        // The backend closes this one: the next call opens another.
        let out = send(endpoint, &pinned, &get("/close"), &caller, &pool)
            .await
            .unwrap();
        assert_eq!(out["body"], "ok");
        let out = send(endpoint, &pinned, &get("/a"), &caller, &pool)
            .await
            .unwrap();
        assert_eq!(out["body"], "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // After a reload the pool starts empty.
        pool.clear();
        send(endpoint, &pinned, &get("/a"), &caller, &pool)
            .await
            .unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }
}
