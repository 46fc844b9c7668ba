//! `http` endpoints: an HTTP/1.1 reverse proxy that authorizes every
//! request by method and path against the caller's tailnet identity.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use super::DeviceError;
use super::ctx::{Counted, Counters, DeviceCtx, Phase, audit_gate, mark_denied, set_reason};
use crate::audit::{AuditGuard, Record};
use crate::backend::headers;
use crate::identity::Caller;
use crate::policy::{Action, Decision};

/// Body of a response to the caller: the backend's, streamed, or our own.
type Body = Either<Incoming, Full<Bytes>>;

/// Serves one HTTP/1.1 connection (keep-alive) from `caller` on tailnet
/// `port` of an `http` device.
///
/// The connection is authorized once (`Connect`, which decides its audit
/// record); every request is then authorized on its own (`Http` with method
/// and path) and answered 403 without touching the backend when denied.
/// Permitted requests go to the pinned target over one upstream connection,
/// opened at the first permitted request. Each request gets one
/// `http_request` audit record; the connection gets its open and close.
pub async fn serve_http<IO>(ctx: &DeviceCtx, io: IO, caller: Caller, port: u16)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut guard = ctx.connection_guard(&caller, port);
    let decision = ctx.decide(
        &caller,
        &Action::Connect {
            endpoint: &ctx.endpoint.name,
            port,
        },
    );
    // A denied connection still gets an HTTP answer that says why, then is
    // closed; it never reaches the backend.
    let refused = if decision.permit {
        set_reason(&mut guard, &decision);
        ctx.record_open(&caller, port, &decision);
        None
    } else {
        tracing::info!(
            reason = decision.reason.code(),
            "denied: {}",
            decision.reason
        );
        mark_denied(&mut guard, &decision);
        Some(decision)
    };

    let counters = Arc::new(Counters::default());
    let proxy = Proxy {
        ctx,
        caller: &caller,
        port,
        refused: refused.as_ref(),
        upstream: Mutex::new(None),
    };
    let service = hyper::service::service_fn(|req| proxy.handle(req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(refused.is_none())
        .serve_connection(
            TokioIo::new(Counted::new(io, Arc::clone(&counters))),
            service,
        );
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = ctx.reached(Phase::Draining) => {
            // Finish the request in flight, then close instead of waiting
            // for the next one.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => Some(r),
                () = ctx.reached(Phase::Stopped) => None,
            }
        }
    };
    counters.store_in(&mut guard);
    match result {
        Some(Ok(())) => {
            tracing::debug!("closed");
            if guard.status.is_none() {
                guard.status = Some("ok".to_owned());
            }
        }
        Some(Err(cause)) => {
            let err = DeviceError::CallerHttp { cause };
            err.log();
            if guard.status.is_none() {
                guard.status = Some("error".to_owned());
            }
            guard.detail = Some(err.to_string());
        }
        None => {
            tracing::debug!("cut at the drain deadline");
            guard.status = Some("shutdown".to_owned());
        }
    }
}

/// The per-connection state shared by the requests of one connection.
struct Proxy<'a> {
    ctx: &'a DeviceCtx,
    caller: &'a Caller,
    /// Tailnet port the connection came in on (recorded with each request,
    /// so the request's decision can be replayed with its connection's).
    port: u16,
    /// Set when the connection itself was denied.
    refused: Option<&'a Decision>,
    /// The upstream connection, opened at the first permitted request.
    /// HTTP/1 serves one request at a time, so the lock is never contended.
    upstream: Mutex<Option<SendRequest<Incoming>>>,
}

impl Proxy<'_> {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let ctx = self.ctx;
        let method = req.method().as_str().to_owned();
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        let mut record = AuditGuard::new(
            &ctx.audit,
            Record::http_request(self.caller, &ctx.endpoint.name, &method, &target)
                .with_device(ctx.hostname())
                .with_extra("port", self.port.into()),
        );
        // No request that cannot be recorded reaches the backend.
        if let Err(why) = audit_gate(&mut record) {
            let response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                crate::audit::Unavailable::CODE,
                &why.to_string(),
            );
            record.status = Some(response.status().as_u16().to_string());
            record.latency_us =
                Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            return Ok(response);
        }

        // Authorize: the connection's denial wins; otherwise this request.
        let decision = match self.refused {
            Some(refused) => refused.clone(),
            None => ctx.decide(
                self.caller,
                &Action::Http {
                    endpoint: &ctx.endpoint.name,
                    method: &method,
                    path: &target,
                },
            ),
        };
        set_reason(&mut record, &decision);
        let response = if decision.permit {
            match self.forward(req, &target).await {
                Ok(response) => response,
                Err(err) => {
                    err.log();
                    record.reason = Some(err.code().to_owned());
                    record.detail = Some(err.to_string());
                    let status = match err {
                        DeviceError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    error_response(status, err.code(), &err.to_string())
                }
            }
        } else {
            tracing::info!(
                reason = decision.reason.code(),
                %method,
                "request denied: {}",
                decision.reason
            );
            error_response(
                StatusCode::FORBIDDEN,
                decision.reason.code(),
                &decision.reason.to_string(),
            )
        };
        record.status = Some(response.status().as_u16().to_string());
        record.latency_us = Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        tracing::debug!(%method, status = response.status().as_u16(), "request");
        Ok(response)
    }

    /// Sends a permitted request to the pinned backend and returns its
    /// response head, the body streaming behind it.
    async fn forward(
        &self,
        req: Request<Incoming>,
        target: &str,
    ) -> Result<Response<Body>, DeviceError> {
        let ctx = self.ctx;
        let rules = ctx.endpoint.http.as_ref();
        let (mut parts, body) = req.into_parts();
        // Only the connector says who is calling, from where, and what
        // method and URL were allowed.
        let strip = rules.map_or(&[][..], |r| r.strip_headers.as_slice());
        headers::strip(&mut parts.headers, strip);
        // Origin form: the backend is reached directly, never as a proxy.
        parts.uri = Uri::builder()
            .path_and_query(target)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_11;
        if let Ok(host) = HeaderValue::from_str(&ctx.backend.target.to_string()) {
            parts.headers.insert(header::HOST, host);
        }
        headers::set_forwarded(
            &mut parts.headers,
            self.caller,
            rules.is_some_and(|r| r.identity_headers),
        );
        let request = Request::from_parts(parts, body);

        let timeout_ms = rules.map_or(30_000, |r| r.timeout_ms);
        let mut slot = self.upstream.lock().await;
        let reusable = match slot.take() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match reusable {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let sent = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            sender.send_request(request),
        )
        .await;
        // A failed or abandoned exchange leaves the upstream connection
        // unusable, so it is kept only after a response.
        let response = match sent {
            Ok(Ok(response)) => {
                *slot = Some(sender);
                response
            }
            Ok(Err(cause)) => {
                return Err(DeviceError::BackendHttp {
                    endpoint: ctx.endpoint.name.clone(),
                    cause,
                });
            }
            Err(_elapsed) => {
                return Err(DeviceError::BackendTimeout {
                    endpoint: ctx.endpoint.name.clone(),
                    after_ms: timeout_ms,
                });
            }
        };
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Either::Left(body)))
    }

    /// Opens the upstream connection to the pinned target.
    async fn connect(&self) -> Result<SendRequest<Incoming>, DeviceError> {
        let ctx = self.ctx;
        let stream = ctx
            .backend
            .connect(ctx.connect_timeout())
            .await
            .map_err(|cause| DeviceError::Backend {
                endpoint: ctx.endpoint.name.clone(),
                cause,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|cause| DeviceError::BackendHttp {
                endpoint: ctx.endpoint.name.clone(),
                cause,
            })?;
        // The connection task ends when the sender is dropped with the
        // caller's connection, or when the backend closes.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection closed: {e}");
            }
        });
        Ok(sender)
    }
}

/// A short JSON error naming the reason code.
fn error_response(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": status.canonical_reason().unwrap_or("error"),
        "reason": reason,
        "message": message,
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
