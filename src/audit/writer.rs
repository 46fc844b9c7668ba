//! The write side: a cheap handle for the data path, the gate that admits
//! work only while it can be recorded, and a guard that writes its record
//! when dropped.
//!
//! # The audit trail gates the work
//!
//! Every [`AuditGuard`] reserves one place in the bounded queue when it is
//! created, so the record it writes when dropped can never be turned away
//! for lack of room. [`AuditGuard::admit`] is the gate: it refuses new
//! work while the store cannot be written (the writer keeps retrying and
//! reopens the gate on its own once a commit succeeds), when no place was
//! left in the queue, and after shutdown. Under
//! [`OnFailure::Serve`] the gate always admits and records that do not fit
//! are dropped and counted, a documented exception that `review` warns
//! about.
//!
//! Records written with [`AuditLog::record`] (outside a guard) take a place
//! only if one is free; when the queue is full the record is dropped and
//! counted, and the writer puts a [`Kind::RecordsDropped`] record into the
//! chain at its next commit, so a gap in coverage is itself audited.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::AuditError;
use super::checkpoint::Checkpointer;
use super::record::{Kind, Record};
use super::store::{Access, Store};
use super::task::Writer;
use super::time_fmt;

/// The writer task; resolves when the writer stops.
pub type WriterTask = JoinHandle<Result<(), AuditError>>;

/// Default size of the queue between the data path and the writer.
pub const DEFAULT_QUEUE: usize = 65_536;

pub(super) enum Msg {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
}

/// What the connector does while records cannot be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Refuse new work until records can be written again (the default).
    #[default]
    Refuse,
    /// Keep serving; records that do not fit the queue are dropped and
    /// counted. A reviewed exception.
    Serve,
}

/// Why the gate refuses new work. Every variant reaches callers as the
/// reason code [`Unavailable::CODE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The store refused the last commit; the writer is retrying.
    #[error("the audit store cannot be written; new work is refused until it can")]
    StoreDown,
    /// Every place in the audit queue is taken.
    #[error("the audit queue is full; new work is refused until records are written")]
    QueueFull,
    /// The audit log has shut down.
    #[error("the audit log is closed")]
    Closed,
}

impl Unavailable {
    /// The reason code in records, HTTP bodies and tool errors.
    pub const CODE: &'static str = "audit_unavailable";
}

/// Settings of an [`AuditLog`].
#[derive(Debug, Default)]
pub struct Options {
    /// Places in the queue between the data path and the writer (at least
    /// 1; [`DEFAULT_QUEUE`] when 0).
    pub queue: usize,
    /// What to do while records cannot be committed.
    pub on_failure: OnFailure,
    /// Signs checkpoints of the chain head, if set.
    pub checkpoints: Option<Checkpointer>,
}

/// State shared by the handles and the writer.
pub(super) struct Shared {
    pub(super) connector: String,
    fingerprint: RwLock<String>,
    pub(super) on_failure: OnFailure,
    pub(super) capacity: usize,
    /// False from the first failed commit until the next one succeeds.
    pub(super) store_up: AtomicBool,
    /// The last store error, while it is failing.
    pub(super) last_error: Mutex<Option<String>>,
    /// Records in the queue or in the writer's hands, not yet committed.
    pub(super) queued: AtomicU64,
    /// Drops not yet written as a `RecordsDropped` record.
    pub(super) pending_drops: AtomicU64,
    pub(super) dropped_total: AtomicU64,
    pub(super) committed_total: AtomicU64,
    /// Wakes an idle writer so that drops are recorded without waiting for
    /// the next record.
    pub(super) drop_notify: Notify,
    /// Metrics derived from every record enqueued.
    stats: crate::metrics::RecordStats,
}

impl Shared {
    pub(super) fn fingerprint(&self) -> String {
        // A poisoned lock only means a writer of this String panicked; the
        // value is still a whole String, so keep using it.
        self.fingerprint
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn count_drop(&self) {
        self.pending_drops.fetch_add(1, Ordering::Relaxed);
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
        self.drop_notify.notify_one();
    }
}

/// A handle to the audit log of one connector. Clone it freely: every clone
/// feeds the same queue and writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    stop: mpsc::UnboundedSender<oneshot::Sender<Result<(), AuditError>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("connector", &self.shared.connector)
            .field("queue_depth", &self.queue_depth())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the store at `url` (see [`Store::open`]), resumes `connector`'s
    /// chain from its last row and starts the writer task with a queue of
    /// `queue_capacity` records (at least 1), refusing work while the store
    /// fails, without checkpoints. Must be called inside a Tokio runtime.
    pub async fn open(
        url: &str,
        connector: &str,
        queue_capacity: usize,
    ) -> Result<(AuditLog, WriterTask), AuditError> {
        let options = Options {
            queue: queue_capacity.max(1),
            ..Options::default()
        };
        AuditLog::open_with(url, connector, options).await
    }

    /// Like [`open`](Self::open), with every setting given.
    pub async fn open_with(
        url: &str,
        connector: &str,
        options: Options,
    ) -> Result<(AuditLog, WriterTask), AuditError> {
        if connector.is_empty() || connector.len() > 128 || connector.chars().any(char::is_control)
        {
            return Err(AuditError::BadConnector {
                name: connector.to_owned(),
            });
        }
        let store = Store::open(url, Access::ReadWrite).await?;
        let head = store.head(connector).await?;
        tracing::debug!(connector, seq = head.seq, "audit chain resumed");
        let capacity = match options.queue {
            0 => DEFAULT_QUEUE,
            n => n,
        };
        let (tx, rx) = mpsc::channel(capacity);
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            connector: connector.to_owned(),
            fingerprint: RwLock::new(String::new()),
            on_failure: options.on_failure,
            capacity,
            store_up: AtomicBool::new(true),
            last_error: Mutex::new(None),
            queued: AtomicU64::new(0),
            pending_drops: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            committed_total: AtomicU64::new(0),
            drop_notify: Notify::new(),
            stats: crate::metrics::RecordStats::default(),
        });
        let writer = Writer::new(
            store,
            head,
            rx,
            stop_rx,
            Arc::clone(&shared),
            options.checkpoints,
        );
        let task = tokio::spawn(writer.run());
        Ok((AuditLog { tx, stop, shared }, task))
    }

    /// The connector this log writes for.
    pub fn connector(&self) -> &str {
        &self.shared.connector
    }

    /// Sets the endpoint file fingerprint stamped on records that carry
    /// none (call it at start-up and on every accepted reload).
    pub fn set_fingerprint(&self, fingerprint: &str) {
        let mut guard = self
            .shared
            .fingerprint
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = fingerprint.to_owned();
    }

    /// Fills in time, connector and fingerprint, and counts the record for
    /// metrics.
    fn stamp(&self, record: &mut Record) {
        if record.time.is_none() {
            record.time = Some(time_fmt::now());
        }
        record.connector.clone_from(&self.shared.connector);
        if record.fingerprint.is_empty() {
            record.fingerprint = self.shared.fingerprint();
        }
        self.shared.stats.observe(record);
    }

    /// Enqueues `record` without waiting. Fills in time, connector and
    /// fingerprint. If the queue is full (or the writer has stopped) the
    /// record is dropped and counted; the count is written to the chain.
    pub fn record(&self, mut record: Record) {
        self.stamp(&mut record);
        // Counted before sending, so the writer never sees a record it
        // has not been told about.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Msg::Record(Box::new(record))).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.count_drop();
        }
    }

    /// Enqueues `record` in the place `slot` reserved for it.
    fn record_reserved(&self, mut record: Record, slot: OwnedPermit<Msg>) {
        if self.tx.is_closed() {
            self.stamp(&mut record);
            self.shared.count_drop();
            return;
        }
        self.stamp(&mut record);
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        slot.send(Msg::Record(Box::new(record)));
    }

    /// Whether new work may start now: the store is being written, the
    /// queue has room and the log is open. Always `Ok` under
    /// [`OnFailure::Serve`]. Work that holds an [`AuditGuard`] asks
    /// [`AuditGuard::admit`] instead, which also checks that the guard's own
    /// record has its place.
    pub fn admit(&self) -> Result<(), Unavailable> {
        self.gate(self.tx.capacity() > 0)
    }

    fn gate(&self, has_room: bool) -> Result<(), Unavailable> {
        if self.shared.on_failure == OnFailure::Serve {
            return Ok(());
        }
        if self.tx.is_closed() {
            Err(Unavailable::Closed)
        } else if !self.shared.store_up.load(Ordering::Relaxed) {
            Err(Unavailable::StoreDown)
        } else if !has_room {
            Err(Unavailable::QueueFull)
        } else {
            Ok(())
        }
    }

    /// Waits until every record enqueued before this call is committed.
    /// `Err(Closed)` if the writer has stopped.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .await
            .map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)
    }

    /// Writes everything enqueued, then a final [`Kind::Shutdown`] record
    /// (durably), signs a last checkpoint if checkpoints are on, and closes
    /// the store. A store that still cannot be written gets a bounded time,
    /// then the records left are reported as [`AuditError::Lost`]. Records
    /// offered afterwards are counted as dropped. `Err(Closed)` if already
    /// shut down.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.stop.send(done).map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    /// Counters derived from every record enqueued, for metrics.
    pub fn stats(&self) -> &crate::metrics::RecordStats {
        &self.shared.stats
    }

    /// The fingerprint stamped on records that carry none.
    pub fn fingerprint(&self) -> String {
        self.shared.fingerprint()
    }

    /// What the connector does while records cannot be committed.
    pub fn on_failure(&self) -> OnFailure {
        self.shared.on_failure
    }

    /// Places in the queue.
    pub fn queue_capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Records accepted and not yet committed: waiting in the queue or in
    /// the writer's hands (a batch being retried).
    pub fn queue_depth(&self) -> usize {
        usize::try_from(self.shared.queued.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Whether the last commit succeeded (false while the store fails).
    pub fn store_up(&self) -> bool {
        self.shared.store_up.load(Ordering::Relaxed)
    }

    /// Records dropped because the queue was full or the writer had stopped.
    pub fn dropped_total(&self) -> u64 {
        self.shared.dropped_total.load(Ordering::Relaxed)
    }

    /// Records committed to the store (including the writer's own
    /// `RecordsDropped`, `Checkpoint` and `Shutdown` records).
    pub fn written_total(&self) -> u64 {
        self.shared.committed_total.load(Ordering::Relaxed)
    }
}

/// Holds the record of one connection or call and writes it when dropped,
/// so a denial, an early return, a timeout (the future is dropped) or a
/// panic still leaves a record. Derefs to the [`Record`] so fields can be
/// set along the way.
///
/// Creating a guard reserves the record's place in the queue; ask
/// [`admit`](Self::admit) before starting the work it records.
#[derive(Debug)]
pub struct AuditGuard {
    log: AuditLog,
    record: Record,
    armed: bool,
    started: Instant,
    slot: Option<OwnedPermit<Msg>>,
}

impl AuditGuard {
    /// Starts guarding `record`; its `duration_ms` is measured from now
    /// unless set explicitly.
    pub fn new(log: &AuditLog, record: Record) -> Self {
        AuditGuard {
            log: log.clone(),
            record,
            armed: true,
            started: Instant::now(),
            slot: log.tx.clone().try_reserve_owned().ok(),
        }
    }

    /// The gate: `Ok` if the work this guard records may start. Refused
    /// while the store cannot be written, when no place in the queue was
    /// left for this record, or after shutdown (never under
    /// [`OnFailure::Serve`]).
    pub fn admit(&self) -> Result<(), Unavailable> {
        self.log.gate(self.slot.is_some())
    }

    /// Drops the record without writing it (for a record that another path
    /// has already written).
    pub fn disarm(mut self) {
        self.armed = false;
    }

    /// Writes the record now instead of at the end of the scope.
    pub fn finish(self) {
        drop(self);
    }
}

impl std::ops::Deref for AuditGuard {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.record
    }
}

impl std::ops::DerefMut for AuditGuard {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut record = std::mem::replace(&mut self.record, Record::new(Kind::Metrics));
        if record.duration_ms.is_none() {
            record.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        }
        if std::thread::panicking() && record.status.is_none() {
            record.status = Some("panic".to_owned());
        }
        match self.slot.take() {
            Some(slot) => self.log.record_reserved(record, slot),
            None => self.log.record(record),
        }
    }
}
