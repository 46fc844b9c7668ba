//! Tamper-evident audit log.
//!
//! Every connection, request and tool call ends as one [`Record`]. The data
//! path hands records to an [`AuditLog`] without ever waiting: the log puts
//! them on a bounded queue and one writer task per connector drains it in
//! batches, one transaction per batch. Each stored row carries the hash of
//! the row before it (see [`chain`]), so `portcullis audit verify` can name
//! the first record that was edited, deleted or moved.
//!
//! ```text
//!  data path ──record()──▶ bounded queue ──▶ writer task ──▶ Store
//!  (AuditGuard: place       full? count drop    │ ChainHead      SQLite (WAL) │ PostgreSQL
//!   reserved, admit())                          ├ RecordsDropped
//!                          store failing ◀──────┤ retry; gate closed until a commit succeeds
//!                                               └ checkpoints ──▶ witness file, log, chain
//!  CLI: verify / query / tail / export_jsonl ◀── Store (read-only)
//! ```
//!
//! Parts: [`record`] (what a record says), [`chain`] (hashing and checking,
//! pure), [`checkpoint`] (signed checkpoints of the head, the witness),
//! [`store`] (SQL, one enum per backend), [`writer`] (queue, the gate that
//! admits work only while it can be recorded, guard, shutdown), `task`
//! (the writer task: batching, retry, health), [`query`] (reading,
//! verifying against checkpoints, exporting, rendering).
//!
//! This module depends only on [`crate::identity`].

pub mod chain;
pub mod checkpoint;
pub mod query;
pub mod record;
pub mod store;
mod task;
pub mod time_fmt;
pub mod writer;

#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod pg_tests;
#[cfg(test)]
mod query_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod writer_tests;

pub use chain::{BadRecord, ChainHead, GENESIS, Problem, Row};
pub use checkpoint::{Checkpoint, CheckpointError, Checkpointer};
pub use query::{
    AnchorCheck, Anchors, ChainSummary, Filter, StoredRecord, Tail, VerifyReport, export_jsonl,
    query, render_table, verify, verify_anchored,
};
pub use record::{CallerInfo, Decision, Finding, FindingAction, Kind, Record, arg_digest};
pub use store::{Access, Store};
pub use writer::{
    AuditGuard, AuditLog, DEFAULT_QUEUE, OnFailure, Options, Unavailable, WriterTask,
};

/// Everything that can go wrong in the audit layer.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store URL is neither a SQLite URL / path nor a PostgreSQL URL.
    #[error(
        "unsupported audit store URL {url:?}: expected sqlite://PATH, a file path, or postgres://..."
    )]
    BadUrl {
        /// The URL as given.
        url: String,
    },
    /// The connector name is empty or too long.
    #[error("invalid connector name {name:?}: must be 1 to 128 characters")]
    BadConnector {
        /// The name as given.
        name: String,
    },
    /// A timestamp could not be parsed.
    #[error("invalid time {text:?}: {reason}")]
    BadTime {
        /// The text as given.
        text: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The database refused or failed an operation.
    #[error("audit store: {0}")]
    Db(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("audit store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A record could not be turned into JSON or read back.
    #[error("audit record JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored row holds a value that cannot be a valid row (for example a
    /// negative seq).
    #[error("audit store row {connector} seq {seq}: {reason}")]
    Corrupt {
        /// The connector of the row.
        connector: String,
        /// The seq of the row.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
    /// The writer task has stopped (after shutdown, or it failed).
    #[error("the audit writer has stopped")]
    Closed,
    /// Records that were accepted could not be written before shutdown.
    #[error(
        "{lost} audit records could not be written at shutdown ({dropped} more were dropped earlier and not yet recorded as dropped): {reason}"
    )]
    Lost {
        /// How many records.
        lost: u64,
        /// Drops counted but not yet written as a `records_dropped` record.
        dropped: u64,
        /// The last store error.
        reason: String,
    },
    /// A checkpoint key or witness could not be read, written or used.
    #[error("audit checkpoint: {0}")]
    Checkpoint(String),
    /// The store did not answer a commit in time.
    #[error("the audit store did not answer within {0:?}")]
    StoreTimeout(std::time::Duration),
    /// Writing an export failed.
    #[error("audit export: {0}")]
    Io(#[from] std::io::Error),
}

impl AuditError {
    /// A stable code for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuditError::BadUrl { .. } => "audit_bad_url",
            AuditError::BadConnector { .. } => "audit_bad_connector",
            AuditError::BadTime { .. } => "audit_bad_time",
            AuditError::Db(_) => "audit_store_error",
            AuditError::Migrate(_) => "audit_migration_error",
            AuditError::Json(_) => "audit_json_error",
            AuditError::Corrupt { .. } => "audit_corrupt_row",
            AuditError::Closed => "audit_closed",
            AuditError::Lost { .. } => "audit_records_lost",
            AuditError::Io(_) => "audit_io_error",
            AuditError::Checkpoint(_) => "audit_checkpoint_error",
            AuditError::StoreTimeout(_) => "audit_store_timeout",
        }
    }
}
