//! Inspection of tool-call traffic: leaked secrets in arguments and results,
//! prompt-injection markers in results.
//!
//! Detectors are a fixed rule table of specific, low-noise patterns (vendor
//! token prefixes, PEM blocks, JWTs with a real header, credentials in URLs,
//! secret-named keys). A generic high-entropy rule is deliberately absent:
//! hashes, UUIDs and base64 blobs are everywhere in ordinary results.
//! Each family runs one `RegexSet` pre-pass per string and only then the
//! individual patterns that hit, so cost stays linear in the input size.
//!
//! Findings carry a kind, a JSON Pointer and a byte range, never the secret:
//! they go to the audit log. Pointers show secret-bearing member keys in
//! their redacted form, so not even a key leaks.
//!
//! ```
//! use portcullis::inspect::{apply, SecretAction};
//! let mut v = serde_json::json!({"url": "postgres://app:s3cr3t-pw@db/x"});
//! let out = apply(&mut v, SecretAction::Redact);
//! assert_eq!(out.findings[0].location, "/url");
//! assert_eq!(v["url"], "postgres://app:[REDACTED:url_credentials]@db/x");
//! ```
//!
//! This module imports nothing else from the crate.

mod injection;
mod json;
mod secrets;

#[cfg(test)]
mod perf_tests;
#[cfg(test)]
mod tests;

use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use injection::{InjectionKind, InjectionMatch, scan_injection_text};
pub use json::marker;
pub use secrets::{Match, SecretKind, is_placeholder, scan_text};

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A leaked secret.
    Secret(SecretKind),
    /// A prompt-injection marker.
    Injection(InjectionKind),
}

impl FindingKind {
    /// Stable code of the underlying kind, e.g. `jwt` or `role_tag`.
    pub fn code(self) -> &'static str {
        match self {
            FindingKind::Secret(k) => k.code(),
            FindingKind::Injection(k) => k.code(),
        }
    }
}

/// One thing found in a JSON document or text body. Holds no part of the
/// matched text, so it is safe to log and to store in the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was found.
    pub kind: FindingKind,
    /// JSON Pointer (RFC 6901) of the string holding it; `""` for the root
    /// and for plain text bodies. Secret-bearing keys appear redacted.
    pub location: String,
    /// Byte range within that string (within the key when `in_key`), in
    /// the text as it was before any redaction.
    pub range: Range<usize>,
    /// The finding is in the member key named by the last pointer token,
    /// not in its value.
    pub in_key: bool,
}

/// What to do with secrets found in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretAction {
    /// Replace each secret substring by `[REDACTED:<code>]`, keeping the rest.
    Redact,
    /// Leave the payload alone and report `blocked`; the caller turns that
    /// into a tool error.
    Block,
    /// Only report.
    Log,
}

/// What to do with prompt-injection markers found in a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectionAction {
    /// Pass the result on and record the findings.
    Flag,
    /// Report `blocked` when anything was found.
    Block,
}

/// Result of applying an action to a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Everything found, in document order.
    pub findings: Vec<Finding>,
    /// The caller must not pass the payload on.
    pub blocked: bool,
}

/// Collects secret findings during a walk.
struct SecretCollector(Vec<Finding>);

impl json::Visitor for SecretCollector {
    fn string(&mut self, pointer: &str, key: Option<&str>, in_gcp_key: bool, value: &str) {
        for m in json::value_matches(key, in_gcp_key, value) {
            self.0.push(finding(
                FindingKind::Secret(m.kind),
                pointer,
                m.range,
                false,
            ));
        }
    }

    fn key(&mut self, pointer: &str, _key: &str, secret_matches: &[Match]) {
        for m in secret_matches {
            let kind = FindingKind::Secret(m.kind);
            self.0.push(finding(kind, pointer, m.range.clone(), true));
        }
    }
}

/// Collects injection findings during a walk.
struct InjectionCollector(Vec<Finding>);

impl json::Visitor for InjectionCollector {
    fn string(&mut self, pointer: &str, _key: Option<&str>, _gcp: bool, value: &str) {
        for m in scan_injection_text(value) {
            let kind = FindingKind::Injection(m.kind);
            self.0.push(finding(kind, pointer, m.range, false));
        }
    }

    fn key(&mut self, pointer: &str, key: &str, _secret_matches: &[Match]) {
        for m in scan_injection_text(key) {
            let kind = FindingKind::Injection(m.kind);
            self.0.push(finding(kind, pointer, m.range, true));
        }
    }
}

fn finding(kind: FindingKind, location: &str, range: Range<usize>, in_key: bool) -> Finding {
    Finding {
        kind,
        location: location.to_owned(),
        range,
        in_key,
    }
}

/// Finds secrets in every string value and member key of `value`.
///
/// A member whose key names a secret (`password`, `api_key`, `token`,
/// `Authorization`, `SecretAccessKey` ...) makes its non-placeholder string
/// value a secret even when no text rule matches it.
pub fn scan_json(value: &Value) -> Vec<Finding> {
    let mut collector = SecretCollector(Vec::new());
    json::walk(value, &mut collector);
    collector.0
}

/// Finds prompt-injection markers in every string value and member key.
pub fn scan_injection_json(value: &Value) -> Vec<Finding> {
    let mut collector = InjectionCollector(Vec::new());
    json::walk(value, &mut collector);
    collector.0
}

/// Scans `value` for secrets and applies `action` (see [`SecretAction`]).
pub fn apply(value: &mut Value, action: SecretAction) -> Outcome {
    let findings = scan_json(value);
    let blocked = action == SecretAction::Block && !findings.is_empty();
    if action == SecretAction::Redact && !findings.is_empty() {
        json::redact_value(value);
    }
    Outcome { findings, blocked }
}

/// [`apply`] for a plain text body (not JSON); findings have location `""`.
pub fn apply_text(text: &mut String, action: SecretAction) -> Outcome {
    let matches = scan_text(text);
    let blocked = action == SecretAction::Block && !matches.is_empty();
    let matches = if action == SecretAction::Redact && !matches.is_empty() {
        json::redact_in_place(text, matches, scan_text)
    } else {
        matches
    };
    let findings = matches
        .into_iter()
        .map(|m| finding(FindingKind::Secret(m.kind), "", m.range, false))
        .collect();
    Outcome { findings, blocked }
}

/// Scans a result for injection markers and applies `action`.
pub fn check_injection(value: &Value, action: InjectionAction) -> Outcome {
    let findings = scan_injection_json(value);
    let blocked = action == InjectionAction::Block && !findings.is_empty();
    Outcome { findings, blocked }
}

/// [`check_injection`] for a plain text body.
pub fn check_injection_text(text: &str, action: InjectionAction) -> Outcome {
    let findings: Vec<Finding> = scan_injection_text(text)
        .into_iter()
        .map(|m| finding(FindingKind::Injection(m.kind), "", m.range, false))
        .collect();
    let blocked = action == InjectionAction::Block && !findings.is_empty();
    Outcome { findings, blocked }
}

/// Entry point for a cargo-fuzz target: runs every scanner and action on
/// arbitrary input and panics if an invariant breaks.
///
/// Invariants: ranges are in bounds and on character boundaries; `Log` and
/// `Block` never modify; after `Redact` nothing is found any more, in the
/// text, in the input parsed as JSON, and in the input used as a JSON key and
/// as the value of a secret-named key.
pub fn fuzz_entry(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    for m in scan_text(&text) {
        assert!(m.range.start < m.range.end, "empty secret range");
        assert!(text.get(m.range.clone()).is_some(), "bad secret range");
    }
    for m in scan_injection_text(&text) {
        assert!(text.get(m.range.clone()).is_some(), "bad injection range");
    }

    for action in [SecretAction::Log, SecretAction::Block] {
        let mut same = text.clone();
        let out = apply_text(&mut same, action);
        assert_eq!(same, text, "{action:?} modified the text");
        assert_eq!(
            out.blocked,
            action == SecretAction::Block && !out.findings.is_empty()
        );
    }
    let mut redacted = text.clone();
    apply_text(&mut redacted, SecretAction::Redact);
    let left: Vec<SecretKind> = scan_text(&redacted).into_iter().map(|m| m.kind).collect();
    assert!(left.is_empty(), "text still has {left:?} after redaction");

    let mut docs = vec![
        serde_json::json!({ text.clone(): text.clone(), "password": text.clone(), "list": [text.clone()] }),
        serde_json::json!({ "type": "service_account", "private_key": text.clone(), "Authorization": text.clone() }),
    ];
    if let Ok(parsed) = serde_json::from_str::<Value>(&text) {
        docs.push(parsed);
    }
    for mut doc in docs {
        let _ = scan_injection_json(&doc);
        let before = doc.clone();
        apply(&mut doc, SecretAction::Log);
        assert_eq!(doc, before, "Log modified the document");
        apply(&mut doc, SecretAction::Redact);
        let left: Vec<FindingKind> = scan_json(&doc).into_iter().map(|f| f.kind).collect();
        assert!(
            left.is_empty(),
            "document still has {left:?} after redaction"
        );
    }
}
