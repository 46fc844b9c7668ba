//! Walking JSON values: which string is a secret given the member key it sits
//! under, JSON Pointer locations, and in-place redaction.

use serde_json::{Map, Value};

use super::secrets::{self, Match, SecretKind, is_placeholder, normalize_key, scan_text};

/// Redaction passes per string. One pass removes every merged match; a later
/// pass only runs if removing one secret made a new one appear, which the
/// merge of overlapping matches should already prevent.
const MAX_PASSES: usize = 8;

/// Appends one RFC 6901 reference token to `pointer` (`~` -> `~0`, `/` -> `~1`).
pub(crate) fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            _ => pointer.push(c),
        }
    }
}

/// The marker that replaces a secret of `kind`.
pub fn marker(kind: SecretKind) -> String {
    format!("[REDACTED:{}]", kind.code())
}

/// `text` with every range in `matches` (sorted, disjoint) replaced by its marker.
pub(crate) fn redact_str(text: &str, matches: &[Match]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for m in matches {
        let (Some(keep), true) = (text.get(at..m.range.start), m.range.end <= text.len()) else {
            continue;
        };
        out.push_str(keep);
        out.push_str(&marker(m.kind));
        at = m.range.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// Redacts `text` until no secret is left (bounded by [`MAX_PASSES`]).
/// Returns the first pass's matches, whose ranges refer to the original text.
pub(crate) fn redact_in_place(
    text: &mut String,
    first: Vec<Match>,
    rescan: impl Fn(&str) -> Vec<Match>,
) -> Vec<Match> {
    let mut pending = first.clone();
    for _ in 0..MAX_PASSES {
        if pending.is_empty() {
            break;
        }
        *text = redact_str(text, &pending);
        pending = rescan(text);
    }
    first
}

/// Whether an object is a Google Cloud service-account key.
pub(crate) fn is_gcp_key(map: &Map<String, Value>) -> bool {
    map.get("type").and_then(Value::as_str) == Some("service_account")
}

/// Secrets in a JSON string value. `key` is the member name it sits under
/// (`None` in arrays and at the root); `in_gcp_key` says the enclosing object
/// is a service-account key.
///
/// Text rules come first because they name the secret precisely; only when
/// they find nothing does a secret-naming key (`"password"`,
/// `"Authorization"`, `"SecretAccessKey"` ...) make the whole value a secret.
pub(crate) fn value_matches(key: Option<&str>, in_gcp_key: bool, value: &str) -> Vec<Match> {
    let whole = |kind| {
        vec![Match {
            kind,
            range: 0..value.len(),
        }]
    };
    if in_gcp_key && key == Some("private_key") && !is_placeholder(value) {
        return whole(SecretKind::GcpServiceAccountKey);
    }
    let found = scan_text(value);
    let Some(key) = key else { return found };
    if !found.is_empty() || is_placeholder(value) {
        return found;
    }
    let nk = normalize_key(key);
    if nk == "authorization" || nk == "proxyauthorization" {
        // "Bearer abc": the scheme is not secret, the credential is.
        let start = match value.trim_start().split_once(char::is_whitespace) {
            Some((_, cred)) => value.len() - cred.trim_start().len(),
            None => 0,
        };
        return match value.get(start..) {
            Some(cred) if !is_placeholder(cred) => vec![Match {
                kind: SecretKind::AuthorizationHeader,
                range: start..value.len(),
            }],
            _ => found,
        };
    }
    if nk.ends_with("secretaccesskey")
        && value.len() == 40
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+')
    {
        return whole(SecretKind::AwsSecretAccessKey);
    }
    let path_under_pwd = nk.ends_with("pwd") && (value.starts_with('/') || value.starts_with('~'));
    if secrets::is_secret_key_name(key) && !path_under_pwd {
        return whole(SecretKind::PasswordAssignment);
    }
    found
}

/// A member key as it appears in locations: redacted if it holds a secret,
/// so a location never carries one.
pub(crate) fn display_key(key: &str) -> (String, Vec<Match>) {
    let found = scan_text(key);
    if found.is_empty() {
        (key.to_owned(), found)
    } else {
        let shown = redact_str(key, &found);
        (shown, found)
    }
}

/// Something that wants to see every string (and member key) in a document.
pub(crate) trait Visitor {
    /// A string value at `pointer`, under member `key`.
    fn string(&mut self, pointer: &str, key: Option<&str>, in_gcp_key: bool, value: &str);
    /// A member key whose location is `pointer` (already displayed safely).
    fn key(&mut self, pointer: &str, key: &str, secret_matches: &[Match]);
}

/// Depth-first walk in document order. Depth is bounded by the parser
/// (serde_json refuses nesting past 128 levels).
pub(crate) fn walk(value: &Value, visitor: &mut impl Visitor) {
    let mut pointer = String::new();
    walk_at(value, &mut pointer, None, false, visitor);
}

fn walk_at(
    value: &Value,
    pointer: &mut String,
    key: Option<&str>,
    in_gcp_key: bool,
    visitor: &mut impl Visitor,
) {
    match value {
        Value::String(s) => visitor.string(pointer, key, in_gcp_key, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                push_token(pointer, &i.to_string());
                walk_at(item, pointer, None, false, visitor);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            let gcp = is_gcp_key(map);
            for (k, v) in map {
                let len = pointer.len();
                let (shown, found) = display_key(k);
                push_token(pointer, &shown);
                visitor.key(pointer, k, &found);
                walk_at(v, pointer, Some(k), gcp, visitor);
                pointer.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Replaces every secret in `value` (strings and member keys) by its marker.
pub(crate) fn redact_value(value: &mut Value) {
    redact_at(value, None, false);
}

fn redact_at(value: &mut Value, key: Option<&str>, in_gcp_key: bool) {
    match value {
        Value::String(s) => {
            let first = value_matches(key, in_gcp_key, s);
            if !first.is_empty() {
                redact_in_place(s, first, |t| value_matches(key, in_gcp_key, t));
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_at(item, None, false);
            }
        }
        Value::Object(map) => {
            let gcp = is_gcp_key(map);
            for (k, v) in map.iter_mut() {
                redact_at(v, Some(k), gcp);
            }
            if map.keys().any(|k| !scan_text(k).is_empty()) {
                rename_secret_keys(map);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Rebuilds `map` with redacted key names. Two keys that redact to the same
/// name would collide; the later one gets a `#n` suffix so no member is lost.
fn rename_secret_keys(map: &mut Map<String, Value>) {
    let old = std::mem::take(map);
    for (k, v) in old {
        let mut name = k;
        let first = scan_text(&name);
        if !first.is_empty() {
            redact_in_place(&mut name, first, scan_text);
        }
        let mut unique = name.clone();
        let mut n = 2;
        while map.contains_key(&unique) {
            unique = format!("{name}#{n}");
            n += 1;
        }
        map.insert(unique, v);
    }
}
