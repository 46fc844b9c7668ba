//! The open connections of every device: what a reload re-checks and what a
//! device's drain waits for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::identity::Caller;
use crate::policy::Decision;

/// One open, identified connection.
pub(super) struct Open {
    /// Hostname of the device it arrived on.
    pub hostname: String,
    /// Endpoint of that device, if it is an endpoint's.
    pub endpoint: Option<String>,
    /// Tailnet port it arrived on.
    pub port: u16,
    /// Who the tailnet said the peer is.
    pub caller: Caller,
    /// Set once, by [`Registry::revoke`], with the decision that closed it.
    revoked: OnceLock<Decision>,
    cancel: CancellationToken,
}

impl Open {
    /// Resolves with the revoking decision once the connection is revoked.
    pub async fn revoked(&self) -> Decision {
        self.cancel.cancelled().await;
        self.revoked.get().cloned().unwrap_or_else(|| {
            unreachable!("the token is cancelled only after the decision is set")
        })
    }
}

/// Every open connection, by a process-unique id.
#[derive(Default)]
pub(super) struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Open>>>,
    changed: Notify,
}

impl Registry {
    /// Registers a connection; it stays registered until the returned
    /// handle is dropped.
    pub fn register(
        self: &Arc<Self>,
        hostname: &str,
        endpoint: Option<&str>,
        port: u16,
        caller: &Caller,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(Open {
            hostname: hostname.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            port,
            caller: caller.clone(),
            revoked: OnceLock::new(),
            cancel: CancellationToken::new(),
        });
        self.lock().insert(id, Arc::clone(&open));
        Registration {
            registry: Arc::clone(self),
            id,
            open,
        }
    }

    /// A snapshot of the open connections.
    pub fn snapshot(&self) -> Vec<Arc<Open>> {
        self.lock().values().cloned().collect()
    }

    /// Open connections on the device `hostname`.
    pub fn count_on(&self, hostname: &str) -> usize {
        self.lock()
            .values()
            .filter(|o| o.hostname == hostname)
            .count()
    }

    /// Closes `open` with `decision` as the reason. False if it was already
    /// revoked.
    pub fn revoke(open: &Open, decision: Decision) -> bool {
        let first = open.revoked.set(decision).is_ok();
        open.cancel.cancel();
        first
    }

    /// Resolves once no connection is open on `hostname`.
    pub async fn drained(&self, hostname: &str) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.count_on(hostname) == 0 {
                return;
            }
            changed.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Open>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps one connection registered while it lives.
pub(super) struct Registration {
    registry: Arc<Registry>,
    id: u64,
    open: Arc<Open>,
}

impl Registration {
    /// The registered connection.
    pub fn open(&self) -> &Open {
        &self.open
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.registry.changed.notify_waiters();
    }
}
