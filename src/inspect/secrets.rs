//! Secret detectors for plain text: a rule table of anchored, low-noise
//! patterns (no generic entropy rule), run behind one `RegexSet` pre-pass.
//!
//! Every rule reports the byte range of the *secret value only* (for example
//! the password in `password=...`, not the key name), so redaction can keep
//! the surrounding text readable.

use std::ops::Range;
use std::sync::LazyLock;

use base64::Engine as _;
use regex::{Captures, Regex, RegexSet};
use serde::Serialize;

/// What sort of secret a detector found. [`SecretKind::code`] is the stable
/// identifier used in audit records and redaction markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// AWS access key ID: `AKIA`/`ASIA` followed by 16 upper-case letters or digits.
    AwsAccessKeyId,
    /// AWS secret access key: 40 base64 characters, only next to a key name
    /// such as `aws_secret_access_key` or `SecretAccessKey`.
    AwsSecretAccessKey,
    /// The `private_key` of a Google Cloud service-account JSON key.
    GcpServiceAccountKey,
    /// A PEM `-----BEGIN ... PRIVATE KEY-----` block.
    PrivateKeyBlock,
    /// GitHub token (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// Slack API token (`xoxa-`, `xoxb-`, `xoxp-`, `xoxr-`, `xoxs-`).
    SlackToken,
    /// Slack incoming-webhook URL (the path is the secret).
    SlackWebhook,
    /// Stripe secret or restricted key (`sk_live_`, `rk_live_`, `sk_test_`, `rk_test_`).
    StripeKey,
    /// JSON Web Token: three base64url segments whose header is JSON with `alg`.
    Jwt,
    /// Password in a URL's user-info: `scheme://user:password@host`.
    UrlCredentials,
    /// Credential in an `Authorization` header or a `Bearer ...` string.
    AuthorizationHeader,
    /// A non-placeholder value assigned to a secret-named key
    /// (`password=`, `"api_key": "..."`, `token:` ...), in text or as a JSON member.
    PasswordAssignment,
}

impl SecretKind {
    /// Every kind, in rule-priority order.
    pub const ALL: [SecretKind; 12] = [
        SecretKind::GcpServiceAccountKey,
        SecretKind::PrivateKeyBlock,
        SecretKind::AwsAccessKeyId,
        SecretKind::AwsSecretAccessKey,
        SecretKind::GithubToken,
        SecretKind::SlackToken,
        SecretKind::SlackWebhook,
        SecretKind::StripeKey,
        SecretKind::Jwt,
        SecretKind::UrlCredentials,
        SecretKind::AuthorizationHeader,
        SecretKind::PasswordAssignment,
    ];

    /// Stable snake_case code, e.g. `aws_access_key_id`.
    pub fn code(self) -> &'static str {
        match self {
            SecretKind::AwsAccessKeyId => "aws_access_key_id",
            SecretKind::AwsSecretAccessKey => "aws_secret_access_key",
            SecretKind::GcpServiceAccountKey => "gcp_service_account_key",
            SecretKind::PrivateKeyBlock => "private_key_block",
            SecretKind::GithubToken => "github_token",
            SecretKind::SlackToken => "slack_token",
            SecretKind::SlackWebhook => "slack_webhook",
            SecretKind::StripeKey => "stripe_key",
            SecretKind::Jwt => "jwt",
            SecretKind::UrlCredentials => "url_credentials",
            SecretKind::AuthorizationHeader => "authorization_header",
            SecretKind::PasswordAssignment => "password_assignment",
        }
    }
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// One secret found in a string: its kind and the byte range of the secret
/// value. It never holds the value itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    /// What was found.
    pub kind: SecretKind,
    /// Byte range of the secret within the scanned string.
    pub range: Range<usize>,
}

/// A detector: the pattern names the secret's capture group(s) `s`, `s2`,
/// `s3` (first one that took part wins; none means the whole match), and
/// `check` rejects candidates the pattern alone cannot rule out.
struct Rule {
    kind: SecretKind,
    pattern: &'static str,
    check: fn(text: &str, caps: &Captures<'_>, secret: &str) -> bool,
}

fn always(_: &str, _: &Captures<'_>, _: &str) -> bool {
    true
}

/// Rule table. Order is priority when two rules report the same start.
/// Separators between a key name and its value: an optional closing quote
/// (possibly JSON-escaped), then `:` or `=`.
const RULES: &[Rule] = &[
    Rule {
        kind: SecretKind::GcpServiceAccountKey,
        pattern: r#""private_key"\s*:\s*"(?P<s>(?:[^"\\]|\\.)+)""#,
        check: gcp_check,
    },
    Rule {
        kind: SecretKind::PrivateKeyBlock,
        // Without an END line the rest of the text is treated as the key:
        // a truncated key is still a leaked key.
        pattern: r"(?s)-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\z)",
        check: always,
    },
    Rule {
        kind: SecretKind::AwsAccessKeyId,
        pattern: r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
        check: always,
    },
    Rule {
        kind: SecretKind::AwsSecretAccessKey,
        pattern: r#"(?i)(?:secret[_.-]?access[_.-]?key|aws[_.-]?secret(?:[_.-]?key)?)\\?["']?\s*[:=]\s*\\?["']?(?P<s>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"#,
        check: always,
    },
    Rule {
        kind: SecretKind::GithubToken,
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})(?-u:\b)",
        check: always,
    },
    Rule {
        kind: SecretKind::SlackToken,
        pattern: r"(?-u:\b)xox[abprs]-(?:[0-9A-Za-z]+-)+[0-9A-Za-z]{6,}(?-u:\b)",
        check: always,
    },
    Rule {
        kind: SecretKind::SlackWebhook,
        pattern: r"(?i)https://hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>[A-Za-z0-9_/-]{20,})",
        check: always,
    },
    Rule {
        kind: SecretKind::StripeKey,
        pattern: r"(?-u:\b)(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}(?-u:\b)",
        check: always,
    },
    Rule {
        kind: SecretKind::Jwt,
        // `{"` and `{ ` both encode to `ey`, `{\n` to `ew`.
        pattern: r"(?-u:\b)e[wy][A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
        check: jwt_check,
    },
    Rule {
        kind: SecretKind::UrlCredentials,
        pattern: r#"(?i)(?-u:\b)[a-z][a-z0-9+.-]*://[^\s:@/?#"'<>\\]+:(?P<s>[^\s@/?#"'<>\\]+)@[^\s@/?#"'<>\\]"#,
        check: url_check,
    },
    Rule {
        kind: SecretKind::AuthorizationHeader,
        pattern: r#"(?i)(?:(?:proxy-)?authorization\\?["']?\s*[:=]\s*\\?["']?(?:bearer|basic|token|digest|negotiate|apikey)\s+(?P<s>[A-Za-z0-9._~+/=-]{6,})|(?-u:\b)bearer\s+(?P<s2>[A-Za-z0-9._~+/-]{20,}=*))"#,
        check: authorization_check,
    },
    Rule {
        kind: SecretKind::PasswordAssignment,
        pattern: r#"(?i)(?:^|[^A-Za-z0-9])(?P<k>[A-Za-z0-9_.-]*?(?:password|passwd|passphrase|pwd|secret|api[_-]?key|token))\\?["']?\s*(?P<sep>[:=])\s*(?:"(?P<s>(?:[^"\\\r\n]|\\.)+)"|'(?P<s2>[^'\r\n]+)'|(?:\\")?(?P<s3>[^\s"'\\&,;<>]+))"#,
        check: assignment_check,
    },
];

static SET: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(RULES.iter().map(|r| r.pattern)).expect("secret rule patterns are valid")
});

static REGEXES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    RULES
        .iter()
        .map(|r| Regex::new(r.pattern).expect("secret rule pattern is valid"))
        .collect()
});

static GCP_TYPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""type"\s*:\s*"service_account""#).expect("gcp type pattern is valid")
});

#[cfg(test)]
/// Forces compilation of every pattern; used by tests to prove the constant
/// patterns are valid.
pub(crate) fn compile_all() {
    LazyLock::force(&SET);
    LazyLock::force(&REGEXES);
    LazyLock::force(&GCP_TYPE);
}

/// Finds every secret in `text`. Overlapping matches are merged (the union is
/// reported under the kind of the earliest, longest, highest-priority one),
/// so redacting every returned range removes every matched secret.
pub fn scan_text(text: &str) -> Vec<Match> {
    let mut found: Vec<(Match, usize)> = Vec::new();
    for idx in SET.matches(text).iter() {
        let (Some(rule), Some(re)) = (RULES.get(idx), REGEXES.get(idx)) else {
            continue;
        };
        for caps in re.captures_iter(text) {
            let group = ["s", "s2", "s3"]
                .iter()
                .find_map(|g| caps.name(g))
                .or_else(|| caps.get(0));
            let Some(m) = group else { continue };
            if m.is_empty() || !(rule.check)(text, &caps, m.as_str()) {
                continue;
            }
            found.push((
                Match {
                    kind: rule.kind,
                    range: m.range(),
                },
                idx,
            ));
        }
    }
    merge(found)
}

/// Sorts by start, longest first, then rule priority, and folds overlapping
/// ranges into one.
fn merge(mut found: Vec<(Match, usize)>) -> Vec<Match> {
    found.sort_by(|(a, ai), (b, bi)| {
        a.range
            .start
            .cmp(&b.range.start)
            .then(b.range.end.cmp(&a.range.end))
            .then(ai.cmp(bi))
    });
    let mut out: Vec<Match> = Vec::with_capacity(found.len());
    for (m, _) in found {
        match out.last_mut() {
            Some(last) if m.range.start < last.range.end => {
                last.range.end = last.range.end.max(m.range.end);
            }
            _ => out.push(m),
        }
    }
    out
}

fn gcp_check(text: &str, _: &Captures<'_>, key: &str) -> bool {
    !is_placeholder(key) && GCP_TYPE.is_match(text)
}

fn jwt_check(_: &str, _: &Captures<'_>, token: &str) -> bool {
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let header = header.trim_end_matches('=');
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    matches!(
        serde_json::from_slice::<serde_json::Value>(&bytes),
        Ok(serde_json::Value::Object(map)) if map.contains_key("alg")
    )
}

fn url_check(_: &str, _: &Captures<'_>, password: &str) -> bool {
    !is_placeholder(password)
}

fn authorization_check(_: &str, caps: &Captures<'_>, cred: &str) -> bool {
    if is_placeholder(cred) {
        return false;
    }
    // A bare "Bearer <word>" outside a header must look like a credential,
    // not prose such as "bearer authentication".
    caps.name("s2").is_none() || cred.bytes().any(|b| b.is_ascii_digit())
}

fn assignment_check(_: &str, caps: &Captures<'_>, value: &str) -> bool {
    let key = caps.name("k").map_or("", |k| k.as_str());
    if !is_secret_key_name(key) || is_placeholder(value) {
        return false;
    }
    if normalize_key(key).ends_with("pwd") && looks_like_path(value) {
        return false;
    }
    // Prose such as "password: must be 8 characters" uses `:` with a bare
    // word; require a digit or symbol there. `=` and quoted values need not.
    let bare_after_colon =
        caps.name("s3").is_some() && caps.name("sep").is_some_and(|s| s.as_str() == ":");
    !bare_after_colon || value.bytes().any(|b| !b.is_ascii_alphabetic())
}

/// Lower-cases a key and drops separators: `X-Api-Key` -> `xapikey`.
pub(crate) fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Secret-looking key suffixes (after [`normalize_key`]).
const SECRET_KEY_SUFFIXES: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "secretkey",
    "apikey",
    "token",
    "privatekey",
];

/// Token-named keys that carry pagination or sync cursors, not credentials.
const NOT_SECRET_KEY_SUFFIXES: &[&str] = &[
    "pagetoken",
    "nexttoken",
    "continuationtoken",
    "continuetoken",
    "synctoken",
    "resumetoken",
    "cursortoken",
];

/// Whether a key name (JSON member or `key=` in text) names a secret.
pub(crate) fn is_secret_key_name(key: &str) -> bool {
    let k = normalize_key(key);
    SECRET_KEY_SUFFIXES.iter().any(|s| k.ends_with(s))
        && !NOT_SECRET_KEY_SUFFIXES.iter().any(|s| k.ends_with(s))
}

fn looks_like_path(value: &str) -> bool {
    value.starts_with('/') || value.starts_with("~/") || value.starts_with("./")
}

/// Values that stand in for a secret rather than being one.
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change_me",
    "changeit",
    "password",
    "passwd",
    "secret",
    "token",
    "redacted",
    "hidden",
    "masked",
    "removed",
    "null",
    "none",
    "nil",
    "undefined",
    "true",
    "false",
    "example",
    "placeholder",
    "your_password",
    "yourpassword",
    "your_token",
    "your_api_key",
    "dummy",
    "test",
];

/// Whether a value is empty, trivial or a placeholder and so not a secret.
///
/// Decision: shorter than 4 bytes; one repeated character (`***`, `xxxx`);
/// a word from a fixed list (`changeme`, `redacted`, `null`, `true`, ...;
/// `changeme` is a published default, so reporting it reveals nothing);
/// template references (`<...>`, `${...}`, `$VAR`, `{{...}}`, `%s`); and
/// anything already holding a `[REDACTED:` marker, which keeps redaction
/// idempotent.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    if v.len() < 4 || v.contains("[REDACTED") {
        return true;
    }
    let mut chars = v.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return true;
    }
    if (v.starts_with('<') && v.ends_with('>'))
        || (v.starts_with("{{") && v.ends_with("}}"))
        || (v.starts_with("${") && v.ends_with('}'))
        || (v.starts_with('$')
            && v[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        || v.starts_with("%s")
        || v.starts_with("%(")
    {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    PLACEHOLDERS.contains(&lower.as_str())
}
