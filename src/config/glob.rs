//! The one glob dialect used in `endpoints.toml`: for HTTP paths, upstream
//! tool names and capability grants.
//!
//! `*` matches any run of characters within one `/`-separated segment and
//! `**` matches any run of characters including `/`. Nothing else is special:
//! no `?`, no character classes, no escapes, so a reviewer can read every
//! pattern literally.

use std::fmt;

use serde::{Serialize, Serializer};

/// A validated glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Token {
    Byte(u8),
    Star,
    DoubleStar,
}

impl Glob {
    /// A pattern over HTTP paths: must start with `/`, and may not contain
    /// `//`, `.`/`..` segments, `?`, `#`, `%`, `\` or whitespace, since
    /// requests are normalised before matching and could never match those.
    pub fn path(pattern: &str) -> Result<Glob, String> {
        if !pattern.starts_with('/') {
            return Err("must start with '/'".into());
        }
        if pattern.contains("//") {
            return Err("may not contain '//'".into());
        }
        if pattern.split('/').any(|s| s == "." || s == "..") {
            return Err("may not contain '.' or '..' segments".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| matches!(c, '?' | '#' | '%' | '\\'))
        {
            return Err(format!("may not contain {c:?}"));
        }
        Self::parse(pattern)
    }

    /// A pattern over names (tool names, endpoint names, `endpoint/tool`).
    pub fn name(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("must not be empty".into());
        }
        Self::parse(pattern)
    }

    fn parse(pattern: &str) -> Result<Glob, String> {
        if pattern.contains("***") {
            return Err("'***' is not a valid wildcard (use '*' or '**')".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "may not contain whitespace or control characters ({c:?})"
            ));
        }
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                if bytes.get(i + 1) == Some(&b'*') {
                    tokens.push(Token::DoubleStar);
                    i += 2;
                } else {
                    tokens.push(Token::Star);
                    i += 1;
                }
            } else {
                tokens.push(Token::Byte(bytes[i]));
                i += 1;
            }
        }
        Ok(Glob {
            pattern: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True if the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Byte(_)))
    }

    /// True if `*` alone: matches every name without a `/`.
    pub fn is_match_all(&self) -> bool {
        matches!(self.tokens.as_slice(), [Token::Star] | [Token::DoubleStar])
    }

    /// Whether `input` matches the whole pattern.
    ///
    /// Dynamic programming over (token, byte) keeps this O(pattern × input),
    /// so a caller-chosen path cannot make matching backtrack exponentially.
    pub fn matches(&self, input: &str) -> bool {
        let s = input.as_bytes();
        let n = s.len();
        // next[j]: do tokens[i+1..] match s[j..]?
        let mut next = vec![false; n + 1];
        next[n] = true;
        let mut cur = vec![false; n + 1];
        for token in self.tokens.iter().rev() {
            for j in (0..=n).rev() {
                cur[j] = match token {
                    Token::Byte(b) => j < n && s[j] == *b && next[j + 1],
                    Token::Star => next[j] || (j < n && s[j] != b'/' && cur[j + 1]),
                    Token::DoubleStar => next[j] || (j < n && cur[j + 1]),
                };
            }
            std::mem::swap(&mut next, &mut cur);
        }
        next[0]
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.pattern)
    }
}
