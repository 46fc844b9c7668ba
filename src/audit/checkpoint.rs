//! Signed checkpoints of a chain head, so that a chain cut short or
//! recomputed after an edit is detected.
//!
//! The hash chain alone cannot tell a shorter chain from a whole one, nor a
//! chain rewritten from some row on. A checkpoint is the connector's
//! signature over its head `(seq, hash, time)`, kept where whoever edits the
//! database cannot follow: in a witness file in the state directory, in the
//! process log (shipped elsewhere, e.g. to a SIEM), and as a `checkpoint`
//! record inside the chain. The same idea as Certificate Transparency's
//! signed tree heads and Sigstore Rekor's checkpoints.
//!
//! # Format
//!
//! A checkpoint is a [C2SP signed note] whose text follows the
//! [C2SP tlog-checkpoint] layout, so the Go `sumdb/note` package and other
//! signed-note tools read and verify it:
//!
//! ```text
//! portcullis-audit/<connector>        origin: which chain
//! <seq>                               the head's seq ("tree size")
//! <base64 of the 32-byte head hash>   the chain head hash (not a Merkle root)
//! time <YYYY-MM-DDTHH:MM:SS.ffffffZ>  extension line: when it was signed
//!
//! — <key name> <base64(key id || Ed25519 signature)>
//! ```
//!
//! The signing key is an Ed25519 key in Go's `note` private key format in
//! `<state_dir>/audit.key` (mode 0600, created at first start); its verifier
//! key (`<name>+<id>+<base64>`) is written beside it as `audit.pub`. Neither
//! is in the audit database. The witness `<state_dir>/audit.checkpoint`
//! holds the latest checkpoint, replaced atomically.
//!
//! # When
//!
//! After a commit, once at least [`DEFAULT_INTERVAL`] has passed since the
//! previous checkpoint and records were added since: the checkpoint record
//! goes into the same transaction as the head it names, and the witness is
//! written once that transaction has committed. After the `shutdown` record
//! a last checkpoint goes to the witness and the log. Records written after
//! the latest checkpoint (at most one interval's worth, after a crash) are
//! not covered by it.
//!
//! [C2SP signed note]: https://c2sp.org/signed-note
//! [C2SP tlog-checkpoint]: https://c2sp.org/tlog-checkpoint

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

use super::AuditError;
use super::chain::ChainHead;
use super::record::{Kind, Record};
use super::time_fmt;

/// Time between checkpoints while records are being added.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Origin line prefix; the connector name follows.
pub const ORIGIN_PREFIX: &str = "portcullis-audit/";
/// Signing key file in the state directory.
pub const KEY_FILE: &str = "audit.key";
/// Verifier key file in the state directory.
pub const PUBLIC_KEY_FILE: &str = "audit.pub";
/// Witness file in the state directory: the latest checkpoint.
pub const WITNESS_FILE: &str = "audit.checkpoint";

/// A checkpoint as read back: what it claims and who signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// The connector whose chain it names.
    pub connector: String,
    /// The head's seq.
    pub seq: u64,
    /// The head's hash, lowercase hex.
    pub hash: String,
    /// When it was signed (audit time format), if the note says.
    pub time: Option<String>,
    /// The signing key, `name+id` (hex).
    pub key: String,
    /// Whether the signature was checked against a known verifier key.
    pub signature_checked: bool,
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} seq {} hash {}",
            ORIGIN_PREFIX, self.connector, self.seq, self.hash
        )?;
        if let Some(time) = &self.time {
            write!(f, " signed {time}")?;
        }
        write!(f, " by {}", self.key)
    }
}

/// Why a checkpoint could not be read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a signed note, or not a checkpoint of an audit chain.
    #[error("not a portcullis audit checkpoint: {0}")]
    Format(String),
    /// The signature does not verify with the given key, or no signature
    /// is by that key.
    #[error("checkpoint signature does not verify with key {key}: {why}")]
    Signature {
        /// The verifier key's `name+id`.
        key: String,
        /// What the verifier said.
        why: String,
    },
    /// The verifier key itself is malformed.
    #[error("invalid verifier key: {0}")]
    BadKey(String),
}

/// The note text of a checkpoint of `connector`'s `head` signed at `time`.
pub fn checkpoint_text(
    connector: &str,
    head: &ChainHead,
    time: &str,
) -> Result<String, AuditError> {
    let hash = hex::decode(&head.hash).map_err(|_| AuditError::Corrupt {
        connector: connector.to_owned(),
        seq: i64::try_from(head.seq).unwrap_or(i64::MAX),
        reason: "head hash is not hex".to_owned(),
    })?;
    Ok(format!(
        "{ORIGIN_PREFIX}{connector}\n{}\n{}\ntime {time}\n",
        head.seq,
        BASE64.encode(hash)
    ))
}

/// Parses a signed checkpoint. With `key` (a verifier key in note format),
/// a valid signature by that key is required; without, the signature is
/// not checked and [`Checkpoint::signature_checked`] is false.
pub fn parse(text: &str, key: Option<&str>) -> Result<Checkpoint, CheckpointError> {
    let bad = |why: &str| CheckpointError::Format(why.to_owned());
    // The quoted form the log prints (`note="portcullis-audit/...\n..."`).
    let unquoted;
    let text = match text.trim() {
        quoted if quoted.starts_with('"') => {
            unquoted = serde_json::from_str::<String>(quoted).map_err(|e| bad(&e.to_string()))?;
            unquoted.as_str()
        }
        _ => text,
    };
    let note = Note::from_bytes(text.as_bytes()).map_err(|e| bad(&e.to_string()))?;
    let body = std::str::from_utf8(note.text()).map_err(|_| bad("text is not UTF-8"))?;
    let mut lines = body.lines();
    let origin = lines.next().ok_or_else(|| bad("no origin line"))?;
    let connector = origin
        .strip_prefix(ORIGIN_PREFIX)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("origin is not portcullis-audit/<connector>"))?;
    let seq: u64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("second line is not a seq"))?;
    let hash = lines
        .next()
        .and_then(|l| BASE64.decode(l).ok())
        .filter(|h| h.len() == 32)
        .ok_or_else(|| bad("third line is not a base64 SHA-256 hash"))?;
    let time = lines
        .find_map(|l| l.strip_prefix("time "))
        .map(str::to_owned);
    let signed_by = |name: &str, id: u32| format!("{name}+{id:08x}");
    let (signature_checked, key_name) = match key {
        Some(vkey) => {
            let verifier = StandardVerifier::new(vkey.trim())
                .map_err(|e| CheckpointError::BadKey(e.to_string()))?;
            let name = vkey
                .trim()
                .rsplit_once('+')
                .map_or("", |(n, _)| n)
                .to_owned();
            let list = VerifierList::new(vec![Box::new(verifier)]);
            let (verified, _) = note.verify(&list).map_err(|e| CheckpointError::Signature {
                key: name.clone(),
                why: e.to_string(),
            })?;
            let first = verified.first().map(|s| signed_by(s.name(), s.id()));
            (true, first.unwrap_or(name))
        }
        None => (false, signature_names(text).unwrap_or_default()),
    };
    Ok(Checkpoint {
        connector: connector.to_owned(),
        seq,
        hash: hex::encode(hash),
        time,
        key: key_name,
        signature_checked,
    })
}

/// `name+id` of the first signature line of a note, read without checking.
fn signature_names(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("— "))?;
    let mut parts = line.trim_start_matches("— ").split(' ');
    let name = parts.next()?;
    let sig = BASE64.decode(parts.next()?).ok()?;
    let id = u32::from_be_bytes(sig.get(..4)?.try_into().ok()?);
    Some(format!("{name}+{id:08x}"))
}

/// A checkpoint just signed by this connector.
#[derive(Debug, Clone)]
pub(super) struct Signed {
    seq: u64,
    hash: String,
    note: String,
    key: String,
}

impl Signed {
    /// The `checkpoint` record that carries it in the chain.
    pub(super) fn record(&self, connector: &str) -> Record {
        let mut record = Record::new(Kind::Checkpoint);
        record.time = Some(time_fmt::now());
        record.connector = connector.to_owned();
        record
            .with_extra("checkpoint_seq", self.seq.into())
            .with_extra("checkpoint_hash", self.hash.clone().into())
            .with_extra("key", self.key.clone().into())
            .with_extra("note", self.note.clone().into())
    }
}

/// Signs checkpoints with the connector's key and publishes them.
pub struct Checkpointer {
    signer: StandardSigner,
    key: String,
    witness: PathBuf,
    interval: Duration,
    /// Seq the latest checkpoint named, and whether a checkpoint record
    /// followed it in the chain.
    covered: u64,
    as_record: bool,
    last: Option<Instant>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("key", &self.key)
            .field("witness", &self.witness)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Loads the signing key from `<state_dir>/audit.key`, creating it (and
    /// `audit.pub`) if missing; the key is named after `connector`. The
    /// witness is `<state_dir>/audit.checkpoint`.
    pub fn load_or_create(state_dir: &Path, connector: &str) -> Result<Checkpointer, AuditError> {
        let key_path = state_dir.join(KEY_FILE);
        let skey = match std::fs::read_to_string(&key_path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (skey, vkey) =
                    signed_note::generate_key(&mut rand_core::OsRng, &key_name(connector));
                write_file(&key_path, skey.as_bytes(), 0o600, false)?;
                write_file(
                    &state_dir.join(PUBLIC_KEY_FILE),
                    format!("{vkey}\n").as_bytes(),
                    0o644,
                    true,
                )?;
                tracing::info!(key = %vkey, file = %key_path.display(), "audit checkpoint key created");
                skey
            }
            Err(e) => {
                return Err(AuditError::Checkpoint(format!(
                    "reading {}: {e}",
                    key_path.display()
                )));
            }
        };
        let signer = StandardSigner::new(&skey).map_err(|e| {
            AuditError::Checkpoint(format!("{}: not a signing key: {e}", key_path.display()))
        })?;
        let key = {
            use signed_note::Signer;
            format!("{}+{:08x}", signer.name(), signer.key_id())
        };
        Ok(Checkpointer {
            signer,
            key,
            witness: state_dir.join(WITNESS_FILE),
            interval: DEFAULT_INTERVAL,
            covered: 0,
            as_record: false,
            last: None,
        })
    }

    /// Checkpoints at most this often (tests and benchmarks shorten it).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The signing key's `name+id`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The witness file.
    pub fn witness(&self) -> &Path {
        &self.witness
    }

    /// Starts counting from a chain whose head is `seq` (as reopened).
    pub(super) fn resume_at(&mut self, seq: u64) {
        self.covered = seq;
        self.as_record = false;
    }

    /// How long until a checkpoint of a chain whose head is `head_seq` is
    /// due: `None` if nothing was added since the latest one.
    pub(super) fn due_in(&self, head_seq: u64) -> Option<Duration> {
        let settled = self.covered + u64::from(self.as_record);
        if head_seq <= settled {
            return None;
        }
        Some(match self.last {
            None => Duration::ZERO,
            Some(last) => self.interval.saturating_sub(last.elapsed()),
        })
    }

    /// A signed checkpoint (the note text) of `head` of `connector`'s
    /// chain, made now; nothing is written anywhere.
    pub fn sign_note(&self, connector: &str, head: &ChainHead) -> Result<String, AuditError> {
        Ok(self.sign(connector, head)?.note)
    }

    /// Signs `head` of `connector`'s chain now.
    pub(super) fn sign(&self, connector: &str, head: &ChainHead) -> Result<Signed, AuditError> {
        let text = checkpoint_text(connector, head, &time_fmt::format(time_fmt::now()))?;
        let mut note = Note::new(text.as_bytes(), &[])
            .map_err(|e| AuditError::Checkpoint(format!("checkpoint text: {e}")))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| AuditError::Checkpoint(format!("signing: {e}")))?;
        let note = String::from_utf8(note.to_bytes())
            .map_err(|_| AuditError::Checkpoint("signed note is not UTF-8".to_owned()))?;
        Ok(Signed {
            seq: head.seq,
            hash: head.hash.clone(),
            note,
            key: self.key.clone(),
        })
    }

    /// Publishes a committed checkpoint: to the witness file and the log.
    /// A witness that cannot be written is logged, not fatal: the
    /// checkpoint is still in the log (and in the chain, if a record).
    pub(super) fn published(&mut self, signed: &Signed, as_record: bool) {
        self.covered = signed.seq;
        self.as_record = as_record;
        self.last = Some(Instant::now());
        if let Err(e) = write_file(&self.witness, signed.note.as_bytes(), 0o644, true) {
            tracing::error!(witness = %self.witness.display(), "audit witness not written: {e}");
        }
        tracing::info!(
            seq = signed.seq,
            hash = %signed.hash,
            key = %signed.key,
            // Quoted and escaped: one log line; `audit verify --checkpoint`
            // reads this form as well as the note itself.
            note = ?signed.note,
            "audit checkpoint"
        );
    }
}

/// A key name from a connector name: characters a note key name cannot
/// hold (spaces, `+`) become `_`.
fn key_name(connector: &str) -> String {
    let safe: String = connector
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '+' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("portcullis-audit-{safe}")
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it),
/// synced, with `mode`; `replace` allows an existing file to be replaced.
fn write_file(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), AuditError> {
    let fail =
        |e: std::io::Error| AuditError::Checkpoint(format!("writing {}: {e}", path.display()));
    if !replace && path.exists() {
        return Err(fail(std::io::Error::from(
            std::io::ErrorKind::AlreadyExists,
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)
}
