//! One virtual tailnet device per endpoint: accept, identify, authorize,
//! proxy, audit.
//!
//! [`Connector`] starts one embedded tailnet node per `tcp` / `http`
//! endpoint (in parallel), listens on the endpoint's ports and hands every
//! accepted connection, with the caller that WhoIs named, to a handler:
//!
//! ```text
//! Listener::accept -> (stream, peer)          connector.rs
//!   -> identify   Node::whois(peer)           no answer: refuse, `unknown_caller`
//!   -> handler    serve_tcp / serve_http / a plugged-in Service
//!        -> authorize  policy::decide         deny: never touches the backend
//!        -> backend    pinned target, connect timeout from the endpoint
//!        -> copy       bytes both ways / one hyper request at a time
//!        -> audit      AuditGuard written when the connection ends
//! ```
//!
//! The handlers ([`serve_tcp`], [`serve_http`]) are generic over the stream,
//! so they run the same over a tailnet Unix stream and over an in-memory
//! duplex in tests.
//!
//! `mcp` endpoints get no device here: they are reached only through the
//! governed MCP device, which plugs in as a [`ServiceDevice`] started with
//! the endpoint devices ([`Connector::start_with`]). A raw device would
//! bypass the per-tool rules.
//!
//! The policy lives in a [`SharedPolicy`] so a reload can swap it; every
//! connection and request reads the current one when it decides. Pinned
//! targets and endpoint settings are fixed for a device's life.

mod connector;
mod ctx;
mod http;
mod registry;
mod reload;
mod startup;
mod tcp;

#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod test_support;

use std::future::Future;
use std::pin::Pin;

pub use connector::{
    Connector, DEFAULT_START_CONCURRENCY, DeviceInfo, DeviceKind, DeviceStatus, Options, Plan,
    ShutdownReport, StatusBoard,
};
pub use ctx::{DeviceCtx, Phase, SharedPolicy, shared_policy};
pub use http::serve_http;
pub use reload::ReloadReport;
pub use startup::{MakeService, ServiceDevice};
pub use tcp::serve_tcp;

use crate::backend::BackendError;
use crate::identity::Caller;
use crate::tailnet::TailnetError;

/// A boxed, sendable future, as returned by [`Service::serve`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Another kind of device (for example the MCP endpoint) plugged into the
/// connector with [`Connector::add_service`]. The connector has already
/// identified the caller; the service authorizes, serves and audits.
pub trait Service: Send + Sync + 'static {
    /// Serves one accepted connection from `caller` on tailnet `port`. The
    /// future is dropped if the connector's drain deadline passes.
    fn serve(&self, io: tokio::net::UnixStream, caller: Caller, port: u16) -> BoxFuture<()>;

    /// Whether an open connection from `caller` on `port` may stay open
    /// under the policy in force, asked after a reload. `None` (the
    /// default) keeps it; a denying decision closes it.
    fn recheck(&self, _caller: &Caller, _port: u16) -> Option<crate::policy::Decision> {
        None
    }
}

/// Whose fault an error is; decides the log level and what the caller is
/// told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller sent something wrong or is not who it must be.
    Caller,
    /// The backend is down, slow or answered badly.
    Backend,
    /// Our own configuration or runtime failed.
    Internal,
}

/// What can go wrong on a device's data path or while starting devices.
///
/// Each message already includes the underlying error's text (audit details
/// are built from `to_string()`), so the wrapped error is kept as a plain
/// field, not as `source()`: a `{:#}` chain would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The backend could not be reached (or its name resolved).
    #[error("endpoint {endpoint}: {cause}")]
    Backend {
        /// Endpoint name.
        endpoint: String,
        /// What the backend layer saw.
        cause: BackendError,
    },
    /// The backend broke the HTTP exchange.
    #[error("endpoint {endpoint}: backend HTTP error: {cause}")]
    BackendHttp {
        /// Endpoint name.
        endpoint: String,
        /// The client-side protocol failure.
        cause: hyper::Error,
    },
    /// The backend did not answer within the endpoint's request timeout.
    #[error("endpoint {endpoint}: no response within {after_ms} ms")]
    BackendTimeout {
        /// Endpoint name.
        endpoint: String,
        /// The timeout that passed.
        after_ms: u64,
    },
    /// WhoIs could not name the peer; the connection is refused.
    #[error("device {hostname}: unknown caller: {cause}")]
    UnknownCaller {
        /// Device hostname.
        hostname: String,
        /// The WhoIs failure.
        cause: TailnetError,
    },
    /// A device's node did not start or could not listen.
    #[error("device {hostname} did not start: {cause}")]
    Start {
        /// Device hostname.
        hostname: String,
        /// The tailnet failure.
        cause: TailnetError,
    },
    /// The endpoint asks for something this connector cannot do yet.
    #[error("endpoint {endpoint}: {what} is not supported by this connector")]
    Unsupported {
        /// Endpoint name.
        endpoint: String,
        /// The unsupported feature.
        what: &'static str,
    },
    /// Two devices would share a hostname.
    #[error("device {hostname} is defined twice")]
    DuplicateDevice {
        /// The contested hostname.
        hostname: String,
    },
    /// A reload asked for a change that needs a restart.
    #[error("{what}; restart the connector to apply it")]
    RestartRequired {
        /// What changed.
        what: String,
    },
    /// A plugged-in service could not be built for its started device.
    #[error("device {hostname}: {message}")]
    ServiceSetup {
        /// The device.
        hostname: String,
        /// Why.
        message: String,
    },
    /// The connection to the caller failed mid-stream.
    #[error("caller connection: {cause}")]
    CallerIo {
        /// The I/O failure.
        cause: std::io::Error,
    },
    /// The caller's HTTP connection failed (malformed request, reset, ...).
    #[error("caller HTTP connection: {cause}")]
    CallerHttp {
        /// The server-side protocol failure.
        cause: hyper::Error,
    },
}

impl DeviceError {
    /// Stable reason code for audit and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DeviceError::Backend { cause, .. } => cause.code(),
            DeviceError::BackendHttp { .. } => "backend_protocol_error",
            DeviceError::BackendTimeout { .. } => "backend_timeout",
            DeviceError::UnknownCaller { .. } => "unknown_caller",
            DeviceError::Start { .. } => "device_start_failed",
            DeviceError::Unsupported { .. } => "unsupported",
            DeviceError::DuplicateDevice { .. } => "duplicate_device",
            DeviceError::ServiceSetup { .. } => "service_setup_failed",
            DeviceError::RestartRequired { .. } => "restart_required",
            DeviceError::CallerIo { .. } => "caller_io_error",
            DeviceError::CallerHttp { .. } => "caller_protocol_error",
        }
    }

    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            DeviceError::Backend { .. }
            | DeviceError::BackendHttp { .. }
            | DeviceError::BackendTimeout { .. } => Fault::Backend,
            DeviceError::UnknownCaller { .. }
            | DeviceError::CallerIo { .. }
            | DeviceError::CallerHttp { .. } => Fault::Caller,
            DeviceError::Start { .. }
            | DeviceError::Unsupported { .. }
            | DeviceError::DuplicateDevice { .. }
            | DeviceError::ServiceSetup { .. }
            | DeviceError::RestartRequired { .. } => Fault::Internal,
        }
    }

    /// Logs the error at the level its fault calls for: a caller's mistake
    /// or hang-up is routine (debug), a backend failure needs an operator
    /// (warn), our own failure is an error.
    pub(crate) fn log(&self) {
        match self.fault() {
            Fault::Caller => tracing::debug!(reason = self.code(), "{self}"),
            Fault::Backend => tracing::warn!(reason = self.code(), "{self}"),
            Fault::Internal => tracing::error!(reason = self.code(), "{self}"),
        }
    }
}
