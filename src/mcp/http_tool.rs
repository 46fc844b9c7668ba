//! The `http_request` tool: one HTTP/1.1 request to an `http` endpoint's
//! pinned target.
//!
//! - The request goes only to the endpoint's pinned addresses, with the
//!   target as written in the file as `Host`.
//! - Redirects are never followed: a 3xx comes back to the caller as it is,
//!   so nothing leaves the target.
//! - Caller-supplied identity headers (`X-Portcullis-*`, `Tailscale-*`) and
//!   hop-by-hop headers are removed; with `identity_headers = true` the
//!   verified identity is added as `X-Portcullis-User/-Node/-Tags`.
//! - The whole exchange (connect, send, read) is capped by `timeout_ms`;
//!   running out is a tool error.
//! - The response body is capped by `max_response_bytes`: the body is cut at
//!   the cap (at a character boundary for text) and the result says
//!   `"truncated": true`. Truncating rather than failing gives the agent
//!   the beginning of a large page, which is usually what it needs, and the
//!   flag tells it the rest is missing.
//! - The body comes back as text when it is UTF-8, else as base64 with
//!   `"body_encoding": "base64"`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::Pinned;
use crate::config::{Endpoint, HttpRules};
use crate::identity::Caller;

use super::error::McpError;

/// Header prefixes that carry identity; only the connector may send them.
const IDENTITY_PREFIXES: [&str; 2] = ["x-portcullis-", "tailscale-"];

/// Headers that describe one hop, or that the tool sets itself.
const DROPPED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

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
        if DROPPED.contains(&name.as_str())
            || IDENTITY_PREFIXES
                .iter()
                .any(|p| name.as_str().starts_with(p))
        {
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| invalid(format!("invalid value for header {name}")))?;
        headers.append(name, value);
    }
    if rules.identity_headers {
        let mut put = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        if let Some(user) = &caller.user {
            put("x-portcullis-user", user);
        }
        put("x-portcullis-node", &caller.node);
        if !caller.tags.is_empty() {
            put("x-portcullis-tags", &caller.tags.join(","));
        }
    }
    Ok(headers)
}

/// Sends the request and returns `{status, headers, body, body_encoding,
/// truncated}`.
pub async fn send(
    endpoint: &Endpoint,
    pinned: &Pinned,
    args: &HttpArgs,
    caller: &Caller,
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
    let mut request = Request::builder()
        .method(method)
        .uri(args.target())
        .body(Full::new(Bytes::from(
            args.body.clone().unwrap_or_default(),
        )))
        .map_err(|e| McpError::InvalidArguments {
            tool: super::HTTP_REQUEST_TOOL.to_owned(),
            why: e.to_string(),
        })?;
    *request.headers_mut() = headers;

    let total = Duration::from_millis(rules.timeout_ms);
    let connect = Duration::from_millis(endpoint.connect_timeout_ms);
    let cap = usize::try_from(rules.max_response_bytes).unwrap_or(usize::MAX);
    let exchange = async {
        let stream = pinned
            .connect(connect)
            .await
            .map_err(|source| McpError::Backend {
                endpoint: name.clone(),
                source,
            })?;
        let http_error = |e: hyper::Error| McpError::Http {
            endpoint: name.clone(),
            why: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let response = sender.send_request(request).await.map_err(http_error)?;
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
        // Dropping the body of a truncated response closes the connection.
        drop(body);
        driver.abort();
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
    fn truncated_text_drops_a_cut_character_and_binary_is_base64() {
        let text = "héllo".as_bytes();
        assert_eq!(body_text(&text[..2], true), ("h".to_owned(), "text"));
        assert_eq!(body_text(&[0xff, 0x00], false).1, "base64");
    }
}
