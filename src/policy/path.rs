//! Request-path normalisation before matching.
//!
//! The backend sees the decoded path, so matching the raw one would let
//! `/api/%2e%2e/admin` pass a `/api/*/admin`-shaped rule and reach
//! `/admin`. We decode percent-escapes once, refuse anything whose meaning
//! differs between us and a backend (encoded `/` or `\`, `.`/`..` segments,
//! empty segments, control characters, double encoding), and match the
//! decoded form.

/// The decoded path to match, or why the path is refused.
pub(super) fn normalise(raw: &str) -> Result<String, &'static str> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err("path must start with '/'");
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent-escape")?;
            let decoded = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-escape")?;
            match decoded {
                b'/' | b'\\' => return Err("percent-encoded slash"),
                b'%' => return Err("double percent-encoding"),
                _ => out.push(decoded),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| "path is not valid UTF-8 once decoded")?;
    if decoded.chars().any(|c| c.is_control() || c == '\\') {
        return Err("control character or backslash in path");
    }
    // skip(1): the empty text before the leading '/'.
    for segment in decoded.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err("'.' or '..' segment");
        }
    }
    if decoded.contains("//") {
        return Err("empty segment ('//')");
    }
    Ok(decoded)
}
