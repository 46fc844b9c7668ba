//! `tcp` endpoints: authorize once per connection, then splice bytes.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::DeviceError;
use super::ctx::{
    Counted, Counters, DeviceCtx, Phase, audit_gate, is_hangup, mark_denied, set_reason,
};
use crate::identity::Caller;
use crate::policy::Action;

/// Copy buffer per direction. tokio's default (8 KiB) turns each 64 KiB
/// the node writes into the socketpair into eight reads and eight writes;
/// one buffer of the node's own copy size moves it in one.
const COPY_BUF: usize = 64 << 10;

/// Serves one connection from `caller` to tailnet `port` of a `tcp` device.
///
/// Linear path: authorize (`Connect`) -> connect to the pinned backend ->
/// copy both ways with half-close -> audit. A denied caller never causes a
/// backend connection. The connection's audit record is written however
/// this ends, including when the future is dropped.
pub async fn serve_tcp<IO>(ctx: &DeviceCtx, io: IO, caller: Caller, port: u16)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut guard = ctx.connection_guard(&caller, port);
    // No connection that cannot be recorded; dropping `io` refuses it.
    if audit_gate(&mut guard).is_err() {
        return;
    }

    // Authorize before anything reaches the backend.
    let action = Action::Connect {
        endpoint: &ctx.endpoint.name,
        port,
    };
    let decision = ctx.decide(&caller, &action);
    if !decision.permit {
        tracing::info!(
            reason = decision.reason.code(),
            "denied: {}",
            decision.reason
        );
        mark_denied(&mut guard, &decision);
        return;
    }
    set_reason(&mut guard, &decision);
    ctx.record_open(&caller, port, &decision);

    // Backend: the pinned target only, within the endpoint's connect timeout.
    let mut backend = match ctx.backend.connect(ctx.connect_timeout()).await {
        Ok(stream) => stream,
        Err(cause) => {
            let err = DeviceError::Backend {
                endpoint: ctx.endpoint.name.clone(),
                cause,
            };
            err.log();
            guard.status = Some("error".to_owned());
            guard.reason = Some(err.code().to_owned());
            guard.detail = Some(err.to_string());
            // Dropping `io` closes the caller's connection.
            return;
        }
    };

    let counters = Arc::new(Counters::default());
    let mut caller_io = Counted::new(io, Arc::clone(&counters));
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut caller_io, &mut backend, COPY_BUF, COPY_BUF) => Some(r),
        () = ctx.reached(Phase::Stopped) => None,
    };
    counters.store_in(&mut guard);
    match result {
        Some(Ok((up, down))) => {
            tracing::debug!(up, down, "closed");
            guard.status = Some("ok".to_owned());
        }
        Some(Err(e)) if is_hangup(&e) => {
            tracing::debug!("closed by a peer: {e}");
            guard.status = Some("ok".to_owned());
        }
        Some(Err(cause)) => {
            let err = DeviceError::CallerIo { cause };
            err.log();
            guard.status = Some("error".to_owned());
            guard.detail = Some(err.to_string());
        }
        None => {
            tracing::debug!("cut at the drain deadline");
            guard.status = Some("shutdown".to_owned());
        }
    }
}
