//! The hash chain: how a record becomes a stored row, and how rows are
//! checked. Pure functions; the store only moves [`Row`]s.
//!
//! # Format
//!
//! Each connector has its own chain. Row `seq` (1, 2, 3, ...) stores
//!
//! * `body`: the canonical JSON of the record with its sequence number,
//!   `{"seq":N,"kind":...,...}`: serde_json output of [`Record`] with `seq`
//!   first and then the fields in the order they are declared in
//!   [`Record`]; no whitespace; `None` fields, an empty `findings` and an
//!   empty `extra` are omitted; times in the fixed audit format.
//! * `prev_hash`: the `hash` of row `seq - 1`, or [`GENESIS`] for row 1.
//! * `hash`: lowercase hex of `SHA-256(prev_hash || "\n" || body)`.
//!
//! A verifier hashes the stored `body` text as it is and never
//! re-serializes it, so the check does not depend on JSON library details
//! (key order inside `extra`, number formatting) on either side. The
//! indexed columns (`time`, `kind`, `caller`, ...) are copies of body fields
//! for querying; verification re-derives them from the body and compares.
//!
//! # What the chain proves, and what not
//!
//! Editing, deleting or reordering any row except the newest ones is
//! detected, and the first bad `seq` is named. Removing rows from the *end*
//! of a chain leaves a shorter valid chain, and a writer that reopens the
//! store resumes from the new end; the chain alone cannot tell. Neither can
//! it tell a wholesale rewrite of every row from some point on. Both need
//! the head `(seq, hash)` kept outside the database: signed checkpoints
//! (see [`super::checkpoint`]) in a witness file, the log and the chain
//! itself, which `verify` checks. A chain whose last record is not a
//! `Shutdown` is running, crashed, or lost its tail.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditError;
use super::record::Record;
use super::time_fmt;

/// `prev_hash` of the first row of every chain: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored row, exactly as in the `audit_records` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Connector (chain) name.
    pub connector: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Indexed copy of the record time (audit format).
    pub time: String,
    /// Indexed copy of the record kind.
    pub kind: String,
    /// Indexed caller search text (see [`super::CallerInfo::search_text`]).
    pub caller: Option<String>,
    /// Indexed copy of the endpoint.
    pub endpoint: Option<String>,
    /// Indexed copy of the decision.
    pub decision: Option<String>,
    /// Indexed copy of the reason code.
    pub reason: Option<String>,
    /// Canonical JSON of the record with its seq.
    pub body: String,
    /// Hash of the previous row.
    pub prev_hash: String,
    /// Hash of this row.
    pub hash: String,
}

/// The indexed columns of a row, as derived from a record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Columns {
    connector: String,
    time: String,
    kind: String,
    caller: Option<String>,
    endpoint: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
}

impl Columns {
    fn of(record: &Record) -> Columns {
        Columns {
            connector: record.connector.clone(),
            time: record.time.map(time_fmt::format).unwrap_or_default(),
            kind: record.kind.as_str().to_owned(),
            caller: record.caller.as_ref().map(|c| c.search_text()),
            endpoint: record.endpoint.clone(),
            decision: record.decision.map(|d| d.as_str().to_owned()),
            reason: record.reason.clone(),
        }
    }

    fn of_row(row: &Row) -> Columns {
        Columns {
            connector: row.connector.clone(),
            time: row.time.clone(),
            kind: row.kind.clone(),
            caller: row.caller.clone(),
            endpoint: row.endpoint.clone(),
            decision: row.decision.clone(),
            reason: row.reason.clone(),
        }
    }

    /// Name of the first column that differs.
    fn first_difference(&self, other: &Columns) -> Option<&'static str> {
        [
            ("connector", self.connector == other.connector),
            ("time", self.time == other.time),
            ("kind", self.kind == other.kind),
            ("caller", self.caller == other.caller),
            ("endpoint", self.endpoint == other.endpoint),
            ("decision", self.decision == other.decision),
            ("reason", self.reason == other.reason),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(name, _)| name)
    }
}

#[derive(Serialize)]
struct BodyRef<'a> {
    seq: u64,
    #[serde(flatten)]
    record: &'a Record,
}

#[derive(Deserialize)]
struct BodyOwned {
    seq: u64,
    #[serde(flatten)]
    record: Record,
}

/// The canonical JSON body of `record` at position `seq`.
pub fn canonical_body(seq: u64, record: &Record) -> Result<String, AuditError> {
    Ok(serde_json::to_string(&BodyRef { seq, record })?)
}

/// Parses a stored body back into its seq and record.
pub fn parse_body(body: &str) -> Result<(u64, Record), serde_json::Error> {
    let parsed: BodyOwned = serde_json::from_str(body)?;
    Ok((parsed.seq, parsed.record))
}

/// `hex(SHA-256(prev_hash || "\n" || body))`.
pub fn link_hash(prev_hash: &str, body: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(body.as_bytes());
    hex::encode(hasher.finalize())
}

/// The end of a chain: the last row's seq and hash (`0` and [`GENESIS`] for
/// an empty chain). Appending advances it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Seq of the last row, 0 if none.
    pub seq: u64,
    /// Hash of the last row, [`GENESIS`] if none.
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead::genesis()
    }
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }

    /// Makes the row that follows this head and advances the head to it.
    /// The record's `connector` and `time` must already be set.
    pub fn append(&mut self, record: &Record) -> Result<Row, AuditError> {
        let seq = self.seq + 1;
        let body = canonical_body(seq, record)?;
        let hash = link_hash(&self.hash, &body);
        let columns = Columns::of(record);
        let row = Row {
            connector: columns.connector,
            seq,
            time: columns.time,
            kind: columns.kind,
            caller: columns.caller,
            endpoint: columns.endpoint,
            decision: columns.decision,
            reason: columns.reason,
            body,
            prev_hash: std::mem::replace(&mut self.hash, hash.clone()),
            hash,
        };
        self.seq = seq;
        Ok(row)
    }
}

/// What is wrong with the first bad row of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "problem")]
pub enum Problem {
    /// Rows are missing: `seq` was expected but the next row has `found`.
    /// Rows were deleted (or the chain starts late).
    Missing {
        /// The seq of the row found instead.
        found: u64,
    },
    /// The stored hash does not match the body: the body or the hash was
    /// edited.
    HashMismatch,
    /// `prev_hash` is not the previous row's hash: a row before it was
    /// deleted, replaced or moved, or the link itself was edited.
    PrevHashMismatch,
    /// The body is not a valid record.
    BadBody {
        /// The parse error.
        error: String,
    },
    /// The seq inside the body differs from the row's seq: the row was moved.
    SeqMismatch {
        /// The seq in the body.
        body_seq: u64,
    },
    /// An indexed column differs from the body (edited column).
    ColumnMismatch {
        /// The column name.
        column: String,
    },
    /// A signed checkpoint names this seq, but the store ends before it:
    /// the tail of the chain was deleted.
    CutShort {
        /// The checkpoint (origin, seq, hash, time, key).
        checkpoint: String,
        /// Where it was found (witness file, `--checkpoint` file).
        source: String,
        /// The last seq in the store.
        store_seq: u64,
    },
    /// A signed checkpoint names a different hash for this seq: the chain
    /// was recomputed after an edit.
    Rewritten {
        /// The checkpoint (origin, seq, hash, time, key).
        checkpoint: String,
        /// Where it was found (witness file, `--checkpoint` file, or the
        /// checkpoint record in the chain).
        source: String,
        /// The hash the store holds for this seq.
        store_hash: String,
    },
    /// A checkpoint (in the chain or given) is not validly signed or does
    /// not name this chain where it must.
    BadCheckpoint {
        /// Where it was found.
        source: String,
        /// What is wrong.
        why: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { found } => {
                write!(
                    f,
                    "record missing (deleted?): next stored record is {found}"
                )
            }
            Problem::HashMismatch => f.write_str("hash does not match body (edited)"),
            Problem::PrevHashMismatch => f.write_str(
                "prev_hash does not match previous record (deleted, replaced or reordered)",
            ),
            Problem::BadBody { error } => write!(f, "body is not a valid record: {error}"),
            Problem::SeqMismatch { body_seq } => {
                write!(f, "body says seq {body_seq} (moved or reordered)")
            }
            Problem::ColumnMismatch { column } => {
                write!(f, "indexed column `{column}` does not match body (edited)")
            }
            Problem::CutShort {
                checkpoint,
                source,
                store_seq,
            } => write!(
                f,
                "chain cut short: the store ends at seq {store_seq}, but checkpoint {checkpoint} (from {source}) names this seq"
            ),
            Problem::Rewritten {
                checkpoint,
                source,
                store_hash,
            } => write!(
                f,
                "chain rewritten: the store's hash here is {store_hash}, but checkpoint {checkpoint} (from {source}) names another"
            ),
            Problem::BadCheckpoint { source, why } => {
                write!(f, "checkpoint from {source} cannot be trusted: {why}")
            }
        }
    }
}

/// The first bad record of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    /// The connector whose chain is broken.
    pub connector: String,
    /// The first seq at which the chain fails.
    pub seq: u64,
    /// What is wrong there.
    pub problem: Problem,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} seq {}: {}", self.connector, self.seq, self.problem)
    }
}

/// Checks one connector's rows, fed in ascending seq order.
#[derive(Debug, Clone)]
pub struct Verifier {
    connector: String,
    head: ChainHead,
}

impl Verifier {
    /// A verifier for `connector`, expecting seq 1 first.
    pub fn new(connector: &str) -> Self {
        Verifier {
            connector: connector.to_owned(),
            head: ChainHead::genesis(),
        }
    }

    /// The last good row so far.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// Checks the next row. On success the row becomes the new head.
    pub fn check(&mut self, row: &Row) -> Result<(), BadRecord> {
        let expected = self.head.seq + 1;
        let bad = |seq: u64, problem: Problem| BadRecord {
            connector: self.connector.clone(),
            seq,
            problem,
        };
        if row.connector != self.connector {
            return Err(bad(
                row.seq,
                Problem::ColumnMismatch {
                    column: "connector".to_owned(),
                },
            ));
        }
        if row.seq != expected {
            // Rows come sorted by seq, so a different seq means a gap.
            return Err(bad(expected, Problem::Missing { found: row.seq }));
        }
        if link_hash(&row.prev_hash, &row.body) != row.hash {
            return Err(bad(row.seq, Problem::HashMismatch));
        }
        if row.prev_hash != self.head.hash {
            return Err(bad(row.seq, Problem::PrevHashMismatch));
        }
        let (body_seq, record) = parse_body(&row.body).map_err(|e| {
            bad(
                row.seq,
                Problem::BadBody {
                    error: e.to_string(),
                },
            )
        })?;
        if body_seq != row.seq {
            return Err(bad(row.seq, Problem::SeqMismatch { body_seq }));
        }
        if let Some(column) = Columns::of(&record).first_difference(&Columns::of_row(row)) {
            return Err(bad(
                row.seq,
                Problem::ColumnMismatch {
                    column: column.to_owned(),
                },
            ));
        }
        self.head = ChainHead {
            seq: row.seq,
            hash: row.hash.clone(),
        };
        Ok(())
    }
}

/// Checks a whole chain of rows in seq order; `Ok(head)` or the first bad
/// record.
pub fn verify_rows<'a>(
    connector: &str,
    rows: impl IntoIterator<Item = &'a Row>,
) -> Result<ChainHead, BadRecord> {
    let mut verifier = Verifier::new(connector);
    for row in rows {
        verifier.check(row)?;
    }
    Ok(verifier.head)
}
