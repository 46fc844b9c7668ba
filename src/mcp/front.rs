//! The HTTP front of the MCP device: hyper on one tailnet connection, the
//! checks every request passes before rmcp sees it, and session binding.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::SessionManager;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::audit::Record;
use crate::identity::Caller;
use crate::policy::{Action, decide};

use super::error::McpError;
use super::sessions::{Binding, Bindings};
use super::{McpState, Shared};

/// The one path the MCP endpoint answers on.
pub(crate) const MCP_PATH: &str = "/mcp";
/// Where Prometheus metrics are served, to `[mcp].metrics_allow` only.
pub(crate) const METRICS_PATH: &str = "/metrics";
/// Header carrying the MCP session ID.
const SESSION_HEADER: &str = "mcp-session-id";
/// Time allowed for a client to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, Infallible>;

/// Serves HTTP/1.1 on `io` until the peer closes or the state shuts down.
pub async fn serve<IO>(state: Arc<McpState>, io: IO, caller: Caller)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span = tracing::debug_span!("mcp_conn", peer = %caller.addr, caller = %caller.label());
    let shutdown = state.shared.shutdown.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, caller).await) }
    });
    async move {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "MCP connection ended with an error");
        }
    }
    .instrument(span)
    .await;
}

/// One HTTP request: the checks in order, then rmcp.
async fn handle(state: &McpState, req: Request<Incoming>, caller: Caller) -> Response<Body> {
    let shared = &state.shared;
    // Host first, so that nothing is answered to a rebinding page.
    if let Err(e) = check_host(shared, &req) {
        return error_response(&e, None);
    }
    let path = req.uri().path();
    if path == METRICS_PATH {
        return metrics(state, &req, &caller);
    }
    if path != MCP_PATH {
        let e = McpError::NotFound {
            path: path.to_owned(),
        };
        return error_response(&e, None);
    }
    // Access to the device is decided on every request, with the policy in
    // force now, so a reload takes effect on open sessions.
    let decision = decide(&shared.policy.load(), &caller, &Action::McpAccess);
    if !decision.permit {
        let e = McpError::Denied {
            reason: decision.reason,
        };
        deny_record(shared, &caller, &e, req.method(), MCP_PATH);
        return error_response(&e, None);
    }
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session {
        let binding = shared.sessions.check(id, &caller.node_id);
        if binding != Binding::Own {
            let e = McpError::SessionNotFound {
                other_caller: binding == Binding::Other,
            };
            if binding == Binding::Other {
                tracing::warn!(caller = %caller.label(), "MCP session presented by another caller");
                deny_record(shared, &caller, &e, req.method(), MCP_PATH);
            }
            return error_response(&e, None);
        }
    }
    let method = req.method().clone();
    let (mut parts, body) = req.into_parts();
    let body = if method == Method::POST {
        match read_body(body, shared.device.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(e) => return error_response(&e, None),
        }
    } else {
        Bytes::new()
    };
    if method == Method::POST
        && let Err(e) = serde_json::from_slice::<Value>(&body)
    {
        let e = McpError::Parse(format!(
            "request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ));
        return error_response(&e, None);
    }
    parts.extensions.insert(caller.clone());
    let req = Request::from_parts(parts, Full::new(body));
    let response = state.rmcp.handle(req).await;
    track_session(state, &method, session.as_deref(), &response, &caller).await;
    response
}

/// `GET /metrics`: Prometheus text for callers in `metrics_allow`; a
/// refusal is recorded like any other.
fn metrics<B>(state: &McpState, req: &Request<B>, caller: &Caller) -> Response<Body> {
    let shared = &state.shared;
    let decision = decide(&shared.policy.load(), caller, &Action::Metrics);
    if !decision.permit {
        let e = McpError::Denied {
            reason: decision.reason,
        };
        deny_record(shared, caller, &e, req.method(), METRICS_PATH);
        return error_response(&e, None);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = Response::new(Full::new(Bytes::from_static(b"use GET\n")).boxed());
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let text = match shared.metrics.get() {
        Some(render) => render(&shared.upstreams.status()),
        None => String::new(),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)).boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn check_host<B>(shared: &Shared, req: &Request<B>) -> Result<(), McpError> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let authority = host.to_ascii_lowercase();
    let bare = match http::uri::Authority::try_from(authority.as_str()) {
        Ok(a) => a.host().trim_matches(['[', ']']).to_owned(),
        Err(_) => authority.clone(),
    };
    let bare = bare.trim_end_matches('.');
    let allowed = shared
        .device
        .allowed_hosts
        .iter()
        .any(|h| h == &authority || h.trim_matches(['[', ']']) == bare);
    if allowed {
        Ok(())
    } else {
        Err(McpError::HostNotAllowed { host })
    }
}

async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, McpError> {
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(McpError::BodyTooLarge { limit })
        }
        Err(e) => Err(McpError::BodyRead(e.to_string())),
    }
}

/// Binds a session created by this request to the caller, and forgets one
/// this request closed.
async fn track_session(
    state: &McpState,
    method: &Method,
    sent: Option<&str>,
    response: &Response<Body>,
    caller: &Caller,
) {
    let sessions: &Bindings = &state.shared.sessions;
    if *method == Method::DELETE && response.status().is_success() {
        if let Some(id) = sent {
            sessions.unbind(id);
        }
        return;
    }
    if sent.is_some() || !response.status().is_success() {
        return;
    }
    let Some(id) = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let len = sessions.bind(id, &caller.node_id);
    if Bindings::sweep_due(len) {
        let mut live = Vec::new();
        for id in sessions.ids() {
            let sid: rmcp::transport::streamable_http_server::SessionId = id.clone().into();
            if state
                .session_manager
                .has_session(&sid)
                .await
                .unwrap_or(true)
            {
                live.push(id);
            }
        }
        sessions.retain(&live);
    }
}

/// Records a refused request to `path` (`/mcp` or `/metrics`) of the MCP
/// device.
fn deny_record(shared: &Shared, caller: &Caller, e: &McpError, method: &Method, path: &str) {
    let mut record = Record::connection_denied(
        caller,
        &shared.device.name,
        &shared.device.name,
        e.code(),
        &e.to_string(),
    )
    .with_extra("http_method", json!(method.as_str()));
    record.path = Some(path.to_owned());
    shared.audit.record(record);
}

/// An HTTP error response with a JSON-RPC error body.
pub fn error_response(e: &McpError, id: Option<Value>) -> Response<Body> {
    let status = match e.surface() {
        super::Surface::Http(code) => {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        _ => match e {
            McpError::Denied { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
    };
    let body = json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(Value::Null),
        "error": {
            "code": e.jsonrpc_code(),
            "message": e.to_string(),
            "data": { "reason": e.code() },
        },
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
