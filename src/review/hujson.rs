//! HuJSON (JSON with `//` and `/* */` comments and trailing commas), the
//! format of Tailscale and headscale policy files, read as plain JSON.

/// Parses HuJSON text into a JSON value. Comments and trailing commas are
/// dropped outside strings only; everything else must be valid JSON.
pub fn parse(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(&standardize(text)?).map_err(|e| e.to_string())
}

/// Rewrites HuJSON as JSON of the same length per line (comments and
/// trailing commas become spaces), so JSON error positions still point into
/// the original text.
fn standardize(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    // Index of the last comma outside strings and comments not yet followed
    // by a value: blanked if the next significant byte closes a container.
    let mut pending_comma: Option<usize> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                pending_comma = None;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if i >= bytes.len() {
                    return Err("unterminated string".into());
                }
                i += 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                if i + 1 >= bytes.len() {
                    return Err(format!("unterminated /* comment at byte {start}"));
                }
                i += 2;
                for b in &mut out[start..i] {
                    if *b != b'\n' {
                        *b = b' ';
                    }
                }
            }
            b',' => {
                pending_comma = Some(i);
                i += 1;
            }
            b']' | b'}' => {
                if let Some(c) = pending_comma.take() {
                    out[c] = b' ';
                }
                i += 1;
            }
            b if b.is_ascii_whitespace() => i += 1,
            _ => {
                pending_comma = None;
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced (by spaces), so the text is still UTF-8.
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_trailing_commas_go_strings_stay() {
        let v = parse(
            r#"// head
            {
              "a": "// not a comment", /* block
              over lines */ "b": ["x", "y",],
              "c": "has , and ] and /* inside",
              "d": "escaped \" quote, // still a string",
            }"#,
        )
        .expect("valid HuJSON");
        assert_eq!(v["a"], "// not a comment");
        assert_eq!(v["b"], serde_json::json!(["x", "y"]));
        assert_eq!(v["c"], "has , and ] and /* inside");
        assert_eq!(v["d"], "escaped \" quote, // still a string");
    }

    #[test]
    fn broken_input_is_an_error_not_a_guess() {
        for bad in [
            r#"{"a": "open"#,
            r#"{"a": 1 /* never closed"#,
            r#"{"a": 1,, }"#,
            r#"{"a": [1 2]}"#,
            r#"{a: 1}"#,
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
