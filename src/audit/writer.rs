//! The write side: a cheap handle for the data path, one writer task that
//! owns the chain head, and a guard that writes its record when dropped.
//!
//! The data path must never wait for the disk, so [`AuditLog::record`] only
//! tries to enqueue. When the queue is full the record is dropped and
//! counted; the writer then writes a [`Kind::RecordsDropped`] record into
//! the chain at its next batch, so a gap in coverage is itself audited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::AuditError;
use super::chain::{ChainHead, Row};
use super::record::{Kind, Record};
use super::store::{Access, Store};
use super::time_fmt;

/// Most records written in one transaction.
const MAX_BATCH: usize = 512;
/// Longest pause between retries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts at the last batches once shutdown has begun; after that the
/// remaining records are reported lost rather than hanging the stop.
const SHUTDOWN_ATTEMPTS: u32 = 3;

/// The writer task; resolves when the writer stops.
pub type WriterTask = JoinHandle<Result<(), AuditError>>;

enum Msg {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<Result<(), AuditError>>),
}

/// State shared by the handles and the writer. The queue's sender lives
/// only in the handles, so the queue closes when the last handle goes.
struct Shared {
    connector: String,
    fingerprint: RwLock<String>,
    /// Drops not yet written as a `RecordsDropped` record.
    pending_drops: AtomicU64,
    dropped_total: AtomicU64,
    written_total: AtomicU64,
    /// Wakes an idle writer so that drops are recorded without waiting for
    /// the next record.
    drop_notify: Notify,
    /// Metrics derived from every record enqueued.
    stats: crate::metrics::RecordStats,
}

/// A handle to the audit log of one connector. Clone it freely: every clone
/// feeds the same queue and writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
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
    /// `queue_capacity` records (at least 1). Must be called inside a Tokio
    /// runtime.
    pub async fn open(
        url: &str,
        connector: &str,
        queue_capacity: usize,
    ) -> Result<(AuditLog, WriterTask), AuditError> {
        if connector.is_empty() || connector.len() > 128 {
            return Err(AuditError::BadConnector {
                name: connector.to_owned(),
            });
        }
        let store = Store::open(url, Access::ReadWrite).await?;
        let head = store.head(connector).await?;
        tracing::debug!(connector, seq = head.seq, "audit chain resumed");
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let shared = Arc::new(Shared {
            connector: connector.to_owned(),
            fingerprint: RwLock::new(String::new()),
            pending_drops: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            written_total: AtomicU64::new(0),
            drop_notify: Notify::new(),
            stats: crate::metrics::RecordStats::default(),
        });
        let writer = Writer {
            store,
            head,
            rx,
            shared: Arc::clone(&shared),
        };
        let task = tokio::spawn(writer.run());
        Ok((AuditLog { tx, shared }, task))
    }

    /// The connector this log writes for.
    pub fn connector(&self) -> &str {
        &self.shared.connector
    }

    /// Sets the endpoint file fingerprint stamped on records that carry
    /// none (call it at start-up and on every accepted reload).
    pub fn set_fingerprint(&self, fingerprint: &str) {
        // A poisoned lock only means a writer of this String panicked; the
        // value is still a whole String, so keep using it.
        let mut guard = self
            .shared
            .fingerprint
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = fingerprint.to_owned();
    }

    /// Enqueues `record` without waiting. Fills in time, connector and
    /// fingerprint. If the queue is full (or the writer has stopped) the
    /// record is dropped and counted; the count is written to the chain.
    pub fn record(&self, mut record: Record) {
        if record.time.is_none() {
            record.time = Some(time_fmt::now());
        }
        record.connector.clone_from(&self.shared.connector);
        if record.fingerprint.is_empty() {
            let current = self
                .shared
                .fingerprint
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            record.fingerprint.clone_from(&current);
        }
        self.shared.stats.observe(&record);
        if self.tx.try_send(Msg::Record(Box::new(record))).is_err() {
            self.shared.pending_drops.fetch_add(1, Ordering::Relaxed);
            self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            self.shared.drop_notify.notify_one();
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
    /// (durably), logs the chain head and closes the store. Records offered
    /// afterwards are counted as dropped. `Err(Closed)` if already shut
    /// down.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Shutdown(done))
            .await
            .map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    /// Counters derived from every record enqueued, for metrics.
    pub fn stats(&self) -> &crate::metrics::RecordStats {
        &self.shared.stats
    }

    /// The fingerprint stamped on records that carry none.
    pub fn fingerprint(&self) -> String {
        self.shared
            .fingerprint
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Records dropped because the queue was full or the writer had stopped.
    pub fn dropped_total(&self) -> u64 {
        self.shared.dropped_total.load(Ordering::Relaxed)
    }

    /// Records committed to the store (including `RecordsDropped` and
    /// `Shutdown` records).
    pub fn written_total(&self) -> u64 {
        self.shared.written_total.load(Ordering::Relaxed)
    }
}

/// The single owner of a connector's chain head.
struct Writer {
    store: Store,
    head: ChainHead,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(mut self) -> Result<(), AuditError> {
        let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
        loop {
            let open = tokio::select! {
                // Messages first: drops are recorded after what was queued.
                biased;
                received = self.rx.recv_many(&mut batch, MAX_BATCH) => received > 0,
                () = self.shared.drop_notify.notified() => true,
            };
            if !open {
                // Every handle is gone without a shutdown: write what is
                // left (the queue is empty here) and stop.
                let result = self.write_batch(Vec::new(), false, false).await;
                self.store.close().await;
                return result;
            }
            let mut records = Vec::with_capacity(batch.len());
            let mut flushes = Vec::new();
            let mut shutdown = None;
            for msg in batch.drain(..) {
                match msg {
                    Msg::Record(record) => records.push(*record),
                    Msg::Flush(done) => flushes.push(done),
                    Msg::Shutdown(done) if shutdown.is_none() => shutdown = Some(done),
                    // A second shutdown while the first runs: it finds the
                    // writer gone, like any later one.
                    Msg::Shutdown(_) => {}
                }
            }
            if let Some(done) = shutdown {
                let result = self.finish(records, flushes).await;
                // The caller may have stopped waiting; nothing else to tell.
                let _ = done.send(result);
                return Ok(());
            }
            // A failed batch is retried until it commits: records are
            // never skipped, and meanwhile the queue absorbs or drops.
            self.write_batch(records, false, true).await?;
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// Writes the rest of the queue, then the `Shutdown` record.
    async fn finish(
        &mut self,
        mut records: Vec<Record>,
        flushes: Vec<oneshot::Sender<()>>,
    ) -> Result<(), AuditError> {
        // No new messages after this; those already queued are still taken.
        self.rx.close();
        let mut late_flushes = Vec::new();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Record(record) => records.push(*record),
                Msg::Flush(done) => late_flushes.push(done),
                Msg::Shutdown(_) => {}
            }
        }
        let mut shutdown = Record::new(Kind::Shutdown);
        shutdown.time = Some(time_fmt::now());
        shutdown.connector.clone_from(&self.shared.connector);
        shutdown.fingerprint = self
            .shared
            .fingerprint
            .read()
            .map(|f| f.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        let result = async {
            for chunk in records.chunks(MAX_BATCH) {
                self.write_batch(chunk.to_vec(), false, false).await?;
            }
            // Drops after this point cannot be recorded: report the total.
            let written = self.shared.written_total.load(Ordering::Relaxed);
            let dropped = self.shared.dropped_total.load(Ordering::Relaxed);
            shutdown.set_extra("written_before", written.into());
            shutdown.set_extra("dropped_total", dropped.into());
            self.write_batch(vec![shutdown], true, false).await
        }
        .await;
        for done in flushes.into_iter().chain(late_flushes) {
            let _ = done.send(());
        }
        match &result {
            Ok(()) => tracing::info!(
                connector = %self.shared.connector,
                seq = self.head.seq,
                hash = %self.head.hash,
                "audit log closed; keep this head to detect a truncated chain"
            ),
            Err(error) => tracing::error!(
                connector = %self.shared.connector,
                %error,
                "audit log could not be closed cleanly"
            ),
        }
        self.store.close().await;
        result
    }

    /// Commits `records` (plus a `RecordsDropped` record if drops are
    /// pending) in one transaction and advances the head. With `forever`,
    /// a failure is retried with backoff until it succeeds; otherwise
    /// after [`SHUTDOWN_ATTEMPTS`] the records are reported lost.
    async fn write_batch(
        &mut self,
        mut records: Vec<Record>,
        durable: bool,
        forever: bool,
    ) -> Result<(), AuditError> {
        let drops = self.shared.pending_drops.swap(0, Ordering::Relaxed);
        if drops > 0 {
            tracing::warn!(
                connector = %self.shared.connector,
                dropped = drops,
                "audit queue full: records dropped"
            );
            let mut record = Record::records_dropped(drops);
            record.time = Some(time_fmt::now());
            record.connector.clone_from(&self.shared.connector);
            records.push(record);
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = Instant::now();
            let mut head = self.head.clone();
            let rows = records
                .iter()
                .map(|r| head.append(r))
                .collect::<Result<Vec<Row>, AuditError>>()?;
            match self.store.append(&rows, durable).await {
                Ok(()) => {
                    self.head = head;
                    self.shared
                        .written_total
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    tracing::trace!(
                        rows = rows.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "audit batch committed"
                    );
                    return Ok(());
                }
                Err(error) => {
                    // The commit may have succeeded with the reply lost:
                    // if the store's head is our last row, it did.
                    if let Ok(stored) = self.store.head(&self.shared.connector).await
                        && stored == head
                    {
                        self.head = head;
                        self.shared
                            .written_total
                            .fetch_add(rows.len() as u64, Ordering::Relaxed);
                        return Ok(());
                    }
                    tracing::error!(
                        connector = %self.shared.connector,
                        %error,
                        attempt,
                        rows = rows.len(),
                        "audit batch failed; retrying"
                    );
                    if !forever && attempt >= SHUTDOWN_ATTEMPTS {
                        return Err(AuditError::Lost {
                            lost: rows.len() as u64,
                            reason: error.to_string(),
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Holds the record of one connection or call and writes it when dropped,
/// so a denial, an early return, a timeout (the future is dropped) or a
/// panic still leaves a record. Derefs to the [`Record`] so fields can be
/// set along the way.
#[derive(Debug)]
pub struct AuditGuard {
    log: AuditLog,
    record: Record,
    armed: bool,
    started: Instant,
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
        }
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
        self.log.record(record);
    }
}
