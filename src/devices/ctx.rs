//! What a connection handler needs to know about its device, and the small
//! pieces shared by the TCP and HTTP handlers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::audit::{self, AuditGuard, AuditLog, Record};
use crate::backend::Pinned;
use crate::config::Endpoint;
use crate::identity::Caller;
use crate::policy::{self, Action, Decision};

pub use crate::policy::{SharedPolicy, shared_policy};

/// Where the connector is in its life; handlers watch it to wind down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// No new connections; open ones finish their work (HTTP connections
    /// close once their current request is answered).
    Draining,
    /// The drain deadline passed: handlers stop now.
    Stopped,
}

/// One device's fixed settings plus the shared policy, audit log and
/// shutdown signal. Built once per device; every connection borrows it.
#[derive(Debug, Clone)]
pub struct DeviceCtx {
    pub(super) endpoint: Endpoint,
    pub(super) backend: Pinned,
    pub(super) policy: SharedPolicy,
    pub(super) audit: AuditLog,
    phase: watch::Receiver<Phase>,
}

impl DeviceCtx {
    /// A context for `endpoint`'s device, reaching `backend` (pinned from the
    /// endpoint's target). It never sees a shutdown until
    /// [`with_phase`](Self::with_phase) connects it to one.
    pub fn new(endpoint: Endpoint, backend: Pinned, policy: SharedPolicy, audit: AuditLog) -> Self {
        // A receiver whose sender is gone reads as "running forever".
        let (_, phase) = watch::channel(Phase::Running);
        DeviceCtx {
            endpoint,
            backend,
            policy,
            audit,
            phase,
        }
    }

    /// Follows the connector's phase instead of running forever.
    pub fn with_phase(mut self, phase: watch::Receiver<Phase>) -> Self {
        self.phase = phase;
        self
    }

    /// The endpoint this device serves.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The device's tailnet hostname.
    pub fn hostname(&self) -> &str {
        &self.endpoint.hostname
    }

    /// Decides `action` for `caller` under the policy in force right now.
    pub(super) fn decide(&self, caller: &Caller, action: &Action<'_>) -> Decision {
        policy::decide(&self.policy.load(), caller, action)
    }

    /// The endpoint's connect timeout.
    pub(super) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.endpoint.connect_timeout_ms)
    }

    /// Resolves once the connector has reached `phase` (never, if the
    /// connector is gone without reaching it).
    pub(super) async fn reached(&self, phase: Phase) {
        reached(&self.phase, phase).await;
    }

    /// The guard of one connection from `caller` on `port`, written when the
    /// connection ends. It starts as a close record; a denial turns it into
    /// a `connection_denied` record instead.
    pub(super) fn connection_guard(&self, caller: &Caller, port: u16) -> AuditGuard {
        let record = Record::connection_open(caller, self.hostname(), &self.endpoint.name)
            .with_extra("port", port.into())
            .into_close();
        AuditGuard::new(&self.audit, record)
    }

    /// Writes the `connection_open` record of a permitted connection.
    pub(super) fn record_open(&self, caller: &Caller, port: u16, decision: &Decision) {
        let mut record = Record::connection_open(caller, self.hostname(), &self.endpoint.name)
            .with_extra("port", port.into());
        set_reason(&mut record, decision);
        self.audit.record(record);
    }
}

/// Resolves once `rx` shows `phase` or a later one; never if its sender is
/// dropped first.
pub(super) async fn reached(rx: &watch::Receiver<Phase>, phase: Phase) {
    let mut rx = rx.clone();
    loop {
        if *rx.borrow_and_update() >= phase {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Copies a decision's reason into a record.
pub(super) fn set_reason(record: &mut Record, decision: &Decision) {
    record.decision = Some(if decision.permit {
        audit::Decision::Permit
    } else {
        audit::Decision::Deny
    });
    record.reason = Some(decision.reason.code().to_owned());
    record.detail = Some(decision.reason.to_string());
}

/// The audit gate for the connection or request whose record `guard`
/// holds: if the audit log cannot take new work, marks the record refused
/// with `audit_unavailable` and says why. Nothing may start on `Err`.
pub(super) fn audit_gate(guard: &mut AuditGuard) -> Result<(), audit::Unavailable> {
    guard.admit().inspect_err(|why| {
        tracing::debug!(reason = audit::Unavailable::CODE, "refused: {why}");
        if guard.kind == audit::Kind::ConnectionClose {
            guard.kind = audit::Kind::ConnectionDenied;
        }
        guard.decision = Some(audit::Decision::Deny);
        guard.reason = Some(audit::Unavailable::CODE.to_owned());
        guard.detail = Some(why.to_string());
        guard.status = Some("refused".to_owned());
    })
}

/// Turns a connection guard into a `connection_denied` record.
pub(super) fn mark_denied(guard: &mut AuditGuard, decision: &Decision) {
    guard.kind = audit::Kind::ConnectionDenied;
    guard.status = Some("denied".to_owned());
    set_reason(guard, decision);
}

/// Byte counters of one caller connection, readable while the stream is
/// owned elsewhere (hyper owns it for HTTP).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Bytes read from the caller (towards the backend).
    pub(super) up: AtomicU64,
    /// Bytes written to the caller (from the backend).
    pub(super) down: AtomicU64,
}

impl Counters {
    /// Stores the totals in the connection's record.
    pub(super) fn store_in(&self, record: &mut Record) {
        record.bytes_up = Some(self.up.load(Ordering::Relaxed));
        record.bytes_down = Some(self.down.load(Ordering::Relaxed));
    }
}

/// A stream that counts the bytes passing through it.
pub(super) struct Counted<IO> {
    inner: IO,
    counters: Arc<Counters>,
}

impl<IO> Counted<IO> {
    pub(super) fn new(inner: IO, counters: Arc<Counters>) -> Self {
        Counted { inner, counters }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.counters.up.fetch_add(n as u64, Ordering::Relaxed);
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether an I/O error is an ordinary hang-up rather than a fault.
pub(super) fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}
