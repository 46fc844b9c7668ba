//! The read side: verify, query, tail, export and render. Everything here
//! opens the store read-only.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use time::OffsetDateTime;

use super::AuditError;
use super::chain::{self, BadRecord, Problem, Row, Verifier};
use super::checkpoint::{self, Checkpoint};
use super::record::{Decision, Kind, Record};
use super::store::{Access, Store};

/// Rows read per round trip when walking a chain.
const PAGE: u32 = 1000;

/// A record as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRecord {
    /// Position in the connector's chain.
    pub seq: u64,
    /// Hash of the previous row.
    pub prev_hash: String,
    /// Hash of this row.
    pub hash: String,
    /// The record (its `connector` names the chain).
    pub record: Record,
}

impl StoredRecord {
    /// Parses a stored row's body.
    pub fn from_row(row: &Row) -> Result<StoredRecord, AuditError> {
        let (_, record) = chain::parse_body(&row.body)?;
        Ok(StoredRecord {
            seq: row.seq,
            prev_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
            record,
        })
    }
}

fn parse_rows(rows: &[Row]) -> Result<Vec<StoredRecord>, AuditError> {
    rows.iter().map(StoredRecord::from_row).collect()
}

/// Which records a [`query`] returns. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// At or after this time.
    pub since: Option<OffsetDateTime>,
    /// Before this time.
    pub until: Option<OffsetDateTime>,
    /// Only this connector's chain.
    pub connector: Option<String>,
    /// Case-insensitive substring of the caller's user, node or tags.
    pub caller: Option<String>,
    /// Exactly this endpoint.
    pub endpoint: Option<String>,
    /// Exactly this decision.
    pub decision: Option<Decision>,
    /// Exactly this kind.
    pub kind: Option<Kind>,
    /// At most this many (the most recent ones); `None` for all.
    pub limit: Option<u32>,
}

/// One connector's chain as verify saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// Connector name.
    pub connector: String,
    /// Rows checked (up to the first bad one).
    pub records: u64,
    /// Seq of the last good row.
    pub head_seq: u64,
    /// Hash of the last good row: compare with the head logged at the last
    /// shutdown to detect a truncated or rewritten tail.
    pub head_hash: String,
    /// Whether the last row is a `Shutdown` record (an orderly stop).
    pub ends_with_shutdown: bool,
    /// Checkpoint records in the chain that were checked.
    pub checkpoints_in_chain: u64,
}

/// What [`verify_anchored`] checks a store against besides the chain itself.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    /// Verifier key (signed-note format, `name+id+base64`) of the
    /// connector's checkpoint key. Without it, signatures are not checked
    /// (hashes still are).
    pub key: Option<String>,
    /// Checkpoints kept outside the database: `(where from, signed note)`.
    pub checkpoints: Vec<(String, String)>,
}

/// One checkpoint from outside the database, and how the store compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorCheck {
    /// Where it came from.
    pub source: String,
    /// What it says, if it could be read.
    pub checkpoint: Option<Checkpoint>,
    /// True if the store holds exactly the head it names.
    pub ok: bool,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Per-connector results, sorted by name.
    pub connectors: Vec<ChainSummary>,
    /// Total rows checked.
    pub records: u64,
    /// True if every chain checked is intact.
    pub ok: bool,
    /// The first bad record found (connectors are checked in name order).
    pub first_bad: Option<BadRecord>,
    /// The outside checkpoints compared (see [`Anchors`]).
    pub anchors: Vec<AnchorCheck>,
}

/// Verifies the chain of `connector`, or of every connector in the store.
/// A chain problem is a report with `ok == false`, not an error; errors are
/// for an unreadable store.
pub async fn verify(url: &str, connector: Option<&str>) -> Result<VerifyReport, AuditError> {
    verify_anchored(url, connector, &Anchors::default()).await
}

/// Like [`verify`], and also checks each chain against signed
/// checkpoints: the checkpoint records inside it (signature, and that each
/// names the row before it) and those in `anchors` (the store must hold
/// the head each names, with the same hash). A chain cut short or
/// recomputed after an edit fails with the checkpoint named.
pub async fn verify_anchored(
    url: &str,
    connector: Option<&str>,
    anchors: &Anchors,
) -> Result<VerifyReport, AuditError> {
    let store = Store::open(url, Access::ReadOnly).await?;
    let result = verify_store(&store, connector, anchors).await;
    store.close().await;
    result
}

pub(crate) async fn verify_store(
    store: &Store,
    connector: Option<&str>,
    anchors: &Anchors,
) -> Result<VerifyReport, AuditError> {
    let mut names = match connector {
        Some(name) => vec![name.to_owned()],
        None => store.connectors().await?,
    };
    let key = anchors.key.as_deref();
    let mut outside = Vec::new();
    for (source, text) in &anchors.checkpoints {
        let parsed = checkpoint::parse(text, key);
        if let Ok(cp) = &parsed
            && connector.is_none()
            && !names.contains(&cp.connector)
        {
            // A chain the store no longer has at all was cut to nothing.
            names.push(cp.connector.clone());
        }
        outside.push((source.clone(), parsed));
    }
    names.sort();
    let mut report = VerifyReport {
        connectors: Vec::new(),
        records: 0,
        ok: true,
        first_bad: None,
        anchors: Vec::new(),
    };
    for (source, parsed) in &outside {
        if let Err(e) = parsed {
            report.ok = false;
            report.anchors.push(AnchorCheck {
                source: source.clone(),
                checkpoint: None,
                ok: false,
            });
            report.first_bad.get_or_insert(BadRecord {
                connector: connector.unwrap_or_default().to_owned(),
                seq: 0,
                problem: Problem::BadCheckpoint {
                    source: source.clone(),
                    why: e.to_string(),
                },
            });
        }
    }
    for name in names {
        let mut verifier = Verifier::new(&name);
        let mut records = 0u64;
        let mut in_chain = 0u64;
        let mut last_kind = String::new();
        let mut after = 0u64;
        let mut bad = None;
        'pages: loop {
            let rows = store.rows_after(&name, after, PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for row in &rows {
                let checked = verifier.check(row).and_then(|()| {
                    if row.kind == Kind::Checkpoint.as_str() {
                        in_chain += 1;
                        check_in_chain(&name, row, key)
                    } else {
                        Ok(())
                    }
                });
                if let Err(problem) = checked {
                    bad = Some(problem);
                    break 'pages;
                }
                records += 1;
                last_kind.clone_from(&row.kind);
            }
        }
        let head = verifier.head().clone();
        if bad.is_none() {
            for (source, parsed) in &outside {
                let Ok(cp) = parsed else { continue };
                if cp.connector != name {
                    continue;
                }
                let problem = check_anchor(store, &name, head.seq, cp, source).await?;
                report.anchors.push(AnchorCheck {
                    source: source.clone(),
                    checkpoint: Some(cp.clone()),
                    ok: problem.is_none(),
                });
                if bad.is_none() {
                    bad = problem;
                }
            }
        }
        report.records += records;
        report.connectors.push(ChainSummary {
            connector: name,
            records,
            head_seq: head.seq,
            head_hash: head.hash,
            ends_with_shutdown: bad.is_none() && last_kind == Kind::Shutdown.as_str(),
            checkpoints_in_chain: in_chain,
        });
        if let Some(bad) = bad {
            report.ok = false;
            report.first_bad.get_or_insert(bad);
        }
    }
    Ok(report)
}

/// A checkpoint record must be validly signed (when the key is known) and
/// name the row just before it, whose hash is the record's `prev_hash`: a
/// chain recomputed from an earlier row changes that hash, and the old
/// signature cannot be made to match.
fn check_in_chain(connector: &str, row: &Row, key: Option<&str>) -> Result<(), BadRecord> {
    let source = format!("the checkpoint record at seq {}", row.seq);
    let bad = |problem| BadRecord {
        connector: connector.to_owned(),
        seq: row.seq,
        problem,
    };
    let untrusted = |why: String| {
        bad(Problem::BadCheckpoint {
            source: source.clone(),
            why,
        })
    };
    let (_, record) = chain::parse_body(&row.body).map_err(|e| untrusted(e.to_string()))?;
    let note = record.extra["note"]
        .as_str()
        .ok_or_else(|| untrusted("no signed note".to_owned()))?;
    let cp = checkpoint::parse(note, key).map_err(|e| untrusted(e.to_string()))?;
    if cp.connector != connector || cp.seq + 1 != row.seq {
        return Err(untrusted(format!(
            "it names {}{} seq {} instead of the row before it",
            checkpoint::ORIGIN_PREFIX,
            cp.connector,
            cp.seq
        )));
    }
    if cp.hash != row.prev_hash {
        return Err(BadRecord {
            connector: connector.to_owned(),
            seq: cp.seq,
            problem: Problem::Rewritten {
                checkpoint: cp.to_string(),
                source,
                store_hash: row.prev_hash.clone(),
            },
        });
    }
    Ok(())
}

/// Compares a checkpoint from outside with the verified chain whose last
/// row is `head_seq`.
async fn check_anchor(
    store: &Store,
    connector: &str,
    head_seq: u64,
    cp: &Checkpoint,
    source: &str,
) -> Result<Option<BadRecord>, AuditError> {
    let bad = |problem| {
        Some(BadRecord {
            connector: connector.to_owned(),
            seq: cp.seq,
            problem,
        })
    };
    if cp.seq > head_seq {
        return Ok(bad(Problem::CutShort {
            checkpoint: cp.to_string(),
            source: source.to_owned(),
            store_seq: head_seq,
        }));
    }
    if cp.seq == 0 {
        return Ok(None);
    }
    let rows = store.rows_after(connector, cp.seq - 1, 1).await?;
    match rows.first() {
        Some(row) if row.seq == cp.seq && row.hash == cp.hash => Ok(None),
        Some(row) => Ok(bad(Problem::Rewritten {
            checkpoint: cp.to_string(),
            source: source.to_owned(),
            store_hash: row.hash.clone(),
        })),
        None => Ok(bad(Problem::CutShort {
            checkpoint: cp.to_string(),
            source: source.to_owned(),
            store_seq: head_seq,
        })),
    }
}

/// The most recent records matching `filter`, oldest first.
pub async fn query(url: &str, filter: &Filter) -> Result<Vec<StoredRecord>, AuditError> {
    let store = Store::open(url, Access::ReadOnly).await?;
    let rows = store.query(filter).await;
    store.close().await;
    parse_rows(&rows?)
}

/// Follows one or all chains: each [`Tail::poll`] returns the rows written
/// since the previous poll (for `audit tail -f`).
#[derive(Debug)]
pub struct Tail {
    store: Store,
    connector: Option<String>,
    /// Last seq returned, per connector.
    seen: BTreeMap<String, u64>,
}

impl Tail {
    /// Opens the store. The first [`Tail::poll`] returns the last `backlog`
    /// rows of each chain followed.
    pub async fn open(
        url: &str,
        connector: Option<&str>,
        backlog: u64,
    ) -> Result<Tail, AuditError> {
        let store = Store::open(url, Access::ReadOnly).await?;
        let mut tail = Tail {
            store,
            connector: connector.map(str::to_owned),
            seen: BTreeMap::new(),
        };
        for name in tail.names().await? {
            let head = tail.store.head(&name).await?;
            tail.seen.insert(name, head.seq.saturating_sub(backlog));
        }
        Ok(tail)
    }

    async fn names(&self) -> Result<Vec<String>, AuditError> {
        match &self.connector {
            Some(name) => Ok(vec![name.clone()]),
            None => self.store.connectors().await,
        }
    }

    /// New records since the last poll, per connector in seq order
    /// (connectors in name order). Call it on an interval.
    pub async fn poll(&mut self) -> Result<Vec<StoredRecord>, AuditError> {
        let mut out = Vec::new();
        for name in self.names().await? {
            // A connector that appears later is followed from its start.
            let after = self.seen.get(&name).copied().unwrap_or(0);
            let rows = self.store.rows_after(&name, after, PAGE).await?;
            if let Some(last) = rows.last() {
                self.seen.insert(name, last.seq);
            }
            out.extend(parse_rows(&rows)?);
        }
        Ok(out)
    }

    /// Closes the store.
    pub async fn close(self) {
        self.store.close().await;
    }
}

/// One line of the JSON lines export.
#[derive(Serialize)]
struct ExportLine<'a> {
    connector: &'a str,
    seq: u64,
    prev_hash: &'a str,
    hash: &'a str,
    /// The exact hashed text: `hash == hex(sha256(prev_hash + "\n" + body))`.
    body: &'a str,
    /// The same record parsed, for indexing.
    record: &'a Record,
}

/// Writes every row of every chain to `out` as JSON lines, in connector and
/// seq order. Each line has `connector`, `seq`, `prev_hash`, `hash`, the
/// exact hashed `body` text (so a SIEM can recompute
/// `sha256(prev_hash + "\n" + body)` and follow the links) and the parsed
/// `record`. Returns the number of lines written.
pub async fn export_jsonl(url: &str, out: &mut impl Write) -> Result<u64, AuditError> {
    let store = Store::open(url, Access::ReadOnly).await?;
    let result = export_store(&store, out).await;
    store.close().await;
    result
}

async fn export_store(store: &Store, out: &mut impl Write) -> Result<u64, AuditError> {
    let mut lines = 0u64;
    for name in store.connectors().await? {
        let mut after = 0u64;
        loop {
            let rows = store.rows_after(&name, after, PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for row in &rows {
                let (_, record) = chain::parse_body(&row.body)?;
                let line = ExportLine {
                    connector: &row.connector,
                    seq: row.seq,
                    prev_hash: &row.prev_hash,
                    hash: &row.hash,
                    body: &row.body,
                    record: &record,
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
                lines += 1;
            }
        }
    }
    out.flush()?;
    Ok(lines)
}

/// Column widths of [`render_table`].
const WIDTHS: [usize; 7] = [27, 17, 24, 16, 8, 20, 14];

/// Renders records as a fixed-width table for people: time, kind, caller,
/// endpoint, decision, reason, and bytes (up/down) or latency. Long values
/// are cut with `~`.
pub fn render_table(records: &[StoredRecord]) -> String {
    let mut out = String::new();
    push_line(
        &mut out,
        [
            "TIME",
            "KIND",
            "CALLER",
            "ENDPOINT",
            "DECISION",
            "REASON",
            "BYTES/LATENCY",
        ],
    );
    for stored in records {
        let r = &stored.record;
        let time = r.time.map(super::time_fmt::format).unwrap_or_default();
        let caller = r.caller.as_ref().map(|c| c.label()).unwrap_or_default();
        let traffic = match (r.bytes_up, r.bytes_down, r.latency_us) {
            (Some(up), Some(down), _) => format!("{up}/{down}B"),
            (Some(up), None, _) => format!("{up}/-B"),
            (None, Some(down), _) => format!("-/{down}B"),
            (None, None, Some(us)) if us >= 10_000 => format!("{}ms", us / 1000),
            (None, None, Some(us)) => format!("{us}us"),
            (None, None, None) => String::new(),
        };
        push_line(
            &mut out,
            [
                &time,
                r.kind.as_str(),
                &caller,
                r.endpoint.as_deref().unwrap_or("-"),
                r.decision.map(Decision::as_str).unwrap_or("-"),
                r.reason.as_deref().unwrap_or("-"),
                &traffic,
            ],
        );
    }
    out
}

fn push_line(out: &mut String, cells: [&str; 7]) {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(WIDTHS).enumerate() {
        let cell = clip(cell, width);
        if i + 1 == cells.len() {
            line.push_str(&cell);
        } else {
            line.push_str(&format!("{cell:<width$} "));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Cuts `text` to `width` characters, marking the cut with `~`.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('~');
    clipped
}
