//! The writer task: the single owner of a connector's chain head.
//!
//! It takes records off the queue in batches and commits each batch in one
//! transaction. A batch that fails is retried with backoff until it
//! commits, never skipped; meanwhile the gate is closed (see
//! [`super::writer`]) and the queue holds what was already admitted. The
//! first failure and the recovery are logged as errors and info lines, and
//! [`AuditLog::store_up`](super::AuditLog::store_up) reports the state for
//! metrics. A shutdown is heard even in the middle of retrying: the writer
//! then gets a bounded time for what is left and reports the rest lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::AuditError;
use super::chain::{ChainHead, Row};
use super::checkpoint::Checkpointer;
use super::record::{Kind, Record};
use super::store::Store;
use super::time_fmt;
use super::writer::{Msg, OnFailure, Shared};

/// Most records written in one transaction.
const MAX_BATCH: usize = 512;
/// First pause after a failed commit; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between retries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a store that keeps failing is reported again.
const REPEAT_ERROR: Duration = Duration::from_secs(30);
/// How long commits may keep failing once shutdown has begun; after that
/// the records left are reported lost rather than hanging the stop.
#[cfg(not(test))]
const SHUTDOWN_WRITE_TIME: Duration = Duration::from_secs(10);
#[cfg(test)]
const SHUTDOWN_WRITE_TIME: Duration = Duration::from_secs(1);
/// Longest one commit attempt may take during shutdown.
const SHUTDOWN_ATTEMPT: Duration = Duration::from_secs(4);

type StopReply = oneshot::Sender<Result<(), AuditError>>;

/// How a commit that retries until it succeeds ended.
enum Committed {
    Yes,
    /// Shutdown arrived first; the records are handed back.
    Interrupted(StopReply, Vec<Record>),
}

/// The single owner of a connector's chain head.
pub(super) struct Writer {
    store: Store,
    head: ChainHead,
    rx: mpsc::Receiver<Msg>,
    stop: mpsc::UnboundedReceiver<StopReply>,
    shared: Arc<Shared>,
    checkpoints: Option<Checkpointer>,
    /// When the store started failing, and when that was last logged.
    failing: Option<(Instant, Instant)>,
}

impl Writer {
    pub(super) fn new(
        store: Store,
        head: ChainHead,
        rx: mpsc::Receiver<Msg>,
        stop: mpsc::UnboundedReceiver<StopReply>,
        shared: Arc<Shared>,
        mut checkpoints: Option<Checkpointer>,
    ) -> Self {
        if let Some(c) = &mut checkpoints {
            c.resume_at(head.seq);
        }
        Writer {
            store,
            head,
            rx,
            stop,
            shared,
            checkpoints,
            failing: None,
        }
    }

    pub(super) async fn run(mut self) -> Result<(), AuditError> {
        let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
        let mut stop_open = true;
        loop {
            let checkpoint_due = self.checkpoint_due_in();
            let open = tokio::select! {
                // Shutdown first, then messages: drops are recorded after
                // what was queued.
                biased;
                reply = self.stop.recv(), if stop_open => match reply {
                    Some(reply) => {
                        let result = self.finish(Vec::new(), Vec::new()).await;
                        // The caller may have stopped waiting.
                        let _ = reply.send(result);
                        return Ok(());
                    }
                    None => {
                        stop_open = false;
                        true
                    }
                },
                received = self.rx.recv_many(&mut batch, MAX_BATCH) => received > 0,
                () = self.shared.drop_notify.notified() => true,
                () = sleep_for(checkpoint_due) => true,
            };
            if !open {
                // Every handle is gone without a shutdown: write what is
                // left (only pending drops) briefly, and stop.
                let result = self.commit_bounded(Vec::new(), false).await;
                self.store.close().await;
                return result;
            }
            let (records, flushes) = split(&mut batch);
            let taken = records.len() as u64;
            match self.commit_until_done(records).await? {
                Committed::Yes => {
                    self.shared.queued.fetch_sub(taken, Ordering::Relaxed);
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
                Committed::Interrupted(reply, records) => {
                    self.shared.queued.fetch_sub(taken, Ordering::Relaxed);
                    let result = self.finish(records, flushes).await;
                    let _ = reply.send(result);
                    return Ok(());
                }
            }
        }
    }

    /// How long until the next checkpoint is due, if one will be.
    fn checkpoint_due_in(&self) -> Option<Duration> {
        self.checkpoints.as_ref()?.due_in(self.head.seq)
    }

    /// Commits `records` (plus what the writer adds), retrying with backoff
    /// until it succeeds or a shutdown arrives.
    async fn commit_until_done(
        &mut self,
        mut records: Vec<Record>,
    ) -> Result<Committed, AuditError> {
        self.add_drops(&mut records);
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.commit(&records, false).await {
                Ok(()) => {
                    self.recovered(records.len());
                    return Ok(Committed::Yes);
                }
                Err(AuditError::Json(e)) => return Err(AuditError::Json(e)),
                Err(error) => self.failed(&error),
            }
            tokio::select! {
                biased;
                reply = self.stop.recv() => match reply {
                    Some(reply) => return Ok(Committed::Interrupted(reply, records)),
                    // Every handle is gone: the queue closes too; keep
                    // trying until it is empty.
                    None => tokio::time::sleep(backoff).await,
                },
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Writes the rest of the queue, then the `Shutdown` record, within
    /// [`SHUTDOWN_WRITE_TIME`]; then signs the last checkpoint.
    async fn finish(
        &mut self,
        mut records: Vec<Record>,
        mut flushes: Vec<oneshot::Sender<()>>,
    ) -> Result<(), AuditError> {
        // No new messages after this; those already queued are still taken.
        self.rx.close();
        let from_queue_before = records.len();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Record(record) => records.push(*record),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        let from_queue = (records.len() - from_queue_before) as u64;
        self.shared.queued.fetch_sub(from_queue, Ordering::Relaxed);
        let mut result = Ok(());
        let mut lost = 0u64;
        let mut left = records.into_iter().peekable();
        let mut reason = String::new();
        while left.peek().is_some() {
            let chunk: Vec<Record> = left.by_ref().take(MAX_BATCH).collect();
            if let Err(e) = self.commit_bounded(chunk.clone(), false).await {
                lost += chunk.len() as u64 + left.len() as u64;
                reason = e.to_string();
                left = Vec::new().into_iter().peekable();
            }
        }
        if lost == 0 {
            let mut shutdown = Record::new(Kind::Shutdown);
            shutdown.time = Some(time_fmt::now());
            shutdown.connector.clone_from(&self.shared.connector);
            shutdown.fingerprint = self.shared.fingerprint();
            let written = self.shared.committed_total.load(Ordering::Relaxed);
            let dropped = self.shared.dropped_total.load(Ordering::Relaxed);
            shutdown.set_extra("written_before", written.into());
            shutdown.set_extra("dropped_total", dropped.into());
            if let Err(e) = self.commit_bounded(vec![shutdown], true).await {
                lost += 1;
                reason = e.to_string();
            }
        }
        // Drops not yet in the chain cannot be written any more.
        let unrecorded_drops = self.shared.pending_drops.swap(0, Ordering::Relaxed);
        if lost > 0 {
            result = Err(AuditError::Lost {
                lost,
                dropped: unrecorded_drops,
                reason,
            });
        }
        for done in flushes {
            let _ = done.send(());
        }
        match &result {
            Ok(()) => {
                self.final_checkpoint();
                tracing::info!(
                    connector = %self.shared.connector,
                    seq = self.head.seq,
                    hash = %self.head.hash,
                    "audit log closed"
                );
            }
            Err(error) => tracing::error!(
                connector = %self.shared.connector,
                %error,
                "audit log could not be closed cleanly"
            ),
        }
        self.store.close().await;
        result
    }

    /// One commit attempt after another while they fail for less than
    /// [`SHUTDOWN_WRITE_TIME`] (a store that answers keeps being written,
    /// however long the queue); then the error.
    async fn commit_bounded(
        &mut self,
        mut records: Vec<Record>,
        durable: bool,
    ) -> Result<(), AuditError> {
        let drops = self.add_drops(&mut records);
        let mut backoff = FIRST_BACKOFF;
        let mut deadline = None;
        loop {
            let attempt = tokio::time::timeout(SHUTDOWN_ATTEMPT, async {
                self.commit(&records, durable).await
            })
            .await;
            let error = match attempt {
                Ok(Ok(())) => {
                    self.recovered(records.len());
                    return Ok(());
                }
                Ok(Err(error)) => error,
                Err(_elapsed) => AuditError::StoreTimeout(SHUTDOWN_ATTEMPT),
            };
            self.failed(&error);
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + SHUTDOWN_WRITE_TIME);
            if Instant::now() + backoff >= deadline {
                // Still unrecorded: counted again for the final report.
                self.shared
                    .pending_drops
                    .fetch_add(drops, Ordering::Relaxed);
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Adds a `RecordsDropped` record for drops not yet recorded; returns
    /// their count.
    fn add_drops(&self, records: &mut Vec<Record>) -> u64 {
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
        drops
    }

    /// One attempt at committing `records` in one transaction (plus a
    /// checkpoint record when one is due); advances the head on success.
    async fn commit(&mut self, records: &[Record], durable: bool) -> Result<(), AuditError> {
        if records.is_empty() && self.checkpoint_due_in() != Some(Duration::ZERO) {
            return Ok(());
        }
        let started = Instant::now();
        let mut head = self.head.clone();
        let mut rows = records
            .iter()
            .map(|r| head.append(r))
            .collect::<Result<Vec<Row>, AuditError>>()?;
        // A checkpoint of the head this batch reaches, committed in the same
        // transaction: the witness never names a head the store lacks.
        let checkpoint = match &self.checkpoints {
            Some(c) if !durable && c.due_in(head.seq) == Some(Duration::ZERO) => {
                let signed = c.sign(&self.shared.connector, &head)?;
                rows.push(head.append(&signed.record(&self.shared.connector))?);
                Some(signed)
            }
            _ => None,
        };
        let appended = self.store.append(&rows, durable).await;
        let committed = match appended {
            Ok(()) => true,
            // The commit may have succeeded with the reply lost: if the
            // store's head is our last row, it did.
            Err(_) => {
                matches!(self.store.head(&self.shared.connector).await, Ok(stored) if stored == head)
            }
        };
        if !committed {
            return Err(appended.err().unwrap_or(AuditError::Closed));
        }
        self.head = head;
        self.shared
            .committed_total
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        if let (Some(c), Some(signed)) = (&mut self.checkpoints, checkpoint) {
            c.published(&signed, true);
        }
        tracing::trace!(
            rows = rows.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "audit batch committed"
        );
        Ok(())
    }

    /// Signs and publishes a checkpoint of the final head (not a record:
    /// the chain is closed).
    fn final_checkpoint(&mut self) {
        let Some(c) = &mut self.checkpoints else {
            return;
        };
        match c.sign(&self.shared.connector, &self.head) {
            Ok(signed) => c.published(&signed, false),
            Err(error) => tracing::error!(%error, "final audit checkpoint could not be signed"),
        }
    }

    /// Notes a failed commit: closes the gate and says so, loudly the first
    /// time and every [`REPEAT_ERROR`] after.
    fn failed(&mut self, error: &AuditError) {
        let now = Instant::now();
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        self.shared.store_up.store(false, Ordering::Relaxed);
        let consequence = match self.shared.on_failure {
            OnFailure::Refuse => {
                "new connections, requests and tool calls are refused until it can"
            }
            OnFailure::Serve => {
                "on_failure = \"serve\": still serving; records that do not fit the queue are dropped"
            }
        };
        match &mut self.failing {
            None => {
                self.failing = Some((now, now));
                tracing::error!(
                    connector = %self.shared.connector,
                    %error,
                    queued = self.shared.queued.load(Ordering::Relaxed),
                    "AUDIT STORE FAILING: records cannot be committed; {consequence}"
                );
            }
            Some((since, logged)) if now.duration_since(*logged) >= REPEAT_ERROR => {
                *logged = now;
                tracing::error!(
                    connector = %self.shared.connector,
                    %error,
                    failing_for_s = now.duration_since(*since).as_secs(),
                    queued = self.shared.queued.load(Ordering::Relaxed),
                    dropped_total = self.shared.dropped_total.load(Ordering::Relaxed),
                    "audit store still failing; {consequence}"
                );
            }
            Some(_) => {}
        }
    }

    /// Notes a successful commit: reopens the gate if it was closed.
    fn recovered(&mut self, rows: usize) {
        if let Some((since, _)) = self.failing.take() {
            tracing::info!(
                connector = %self.shared.connector,
                after_s = since.elapsed().as_secs(),
                rows,
                "audit store writable again; the chain continues and new work is admitted"
            );
            *self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.shared.store_up.store(true, Ordering::Relaxed);
    }
}

/// Splits received messages into records and flush requests.
fn split(batch: &mut Vec<Msg>) -> (Vec<Record>, Vec<oneshot::Sender<()>>) {
    let mut records = Vec::with_capacity(batch.len());
    let mut flushes = Vec::new();
    for msg in batch.drain(..) {
        match msg {
            Msg::Record(record) => records.push(*record),
            Msg::Flush(done) => flushes.push(done),
        }
    }
    (records, flushes)
}

/// Sleeps for `d`, or forever when `None`.
async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
