//! `[tailnet] go_gc` and `go_memory_limit`: garbage-collector settings of
//! the embedded Go runtime that every device's node shares. The same
//! parsers read `portcullis run --go-gc` and `--go-memory-limit`.

use serde::Serialize;

/// GOGC of the embedded Go runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoGc {
    /// No collection until the memory limit is reached.
    Off,
    /// Collect when the heap has grown by this many percent since the last
    /// collection (Go's default is 100).
    Percent(u32),
}

impl std::fmt::Display for GoGc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GoGc::Off => f.write_str("off"),
            GoGc::Percent(p) => write!(f, "{p}"),
        }
    }
}

/// Largest accepted GOGC: beyond it the collector is as good as off.
const MAX_GC_PERCENT: u32 = 100_000;

/// Parses a GOGC value: `off` or a percentage from 1 to 100000.
pub fn parse_go_gc(text: &str) -> Result<GoGc, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(GoGc::Off);
    }
    match text.parse::<u32>() {
        Ok(p) if (1..=MAX_GC_PERCENT).contains(&p) => Ok(GoGc::Percent(p)),
        _ => Err(format!(
            "invalid Go GC setting {text:?}: use \"off\" or a percentage from 1 to {MAX_GC_PERCENT}"
        )),
    }
}

/// Parses a byte size as GOMEMLIMIT writes it: digits with an optional
/// `B`, `KiB`, `MiB`, `GiB` or `TiB` suffix. Zero is refused.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {text:?}: use a whole number of bytes with an optional B, KiB, MiB, GiB or TiB suffix (e.g. \"1536MiB\")"
        )
    };
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = trimmed.split_at(digits);
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(format!("invalid size {text:?}: must be more than 0 bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_settings_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_go_gc("off"), Ok(GoGc::Off));
        assert_eq!(parse_go_gc(" OFF "), Ok(GoGc::Off));
        assert_eq!(parse_go_gc("50"), Ok(GoGc::Percent(50)));
        assert_eq!(parse_go_gc("100000"), Ok(GoGc::Percent(100_000)));
        for bad in [
            "0",
            "-1",
            "100001",
            "",
            "50%",
            "5O",
            "ｏｆｆ",
            "off\u{200b}",
            "1e3",
        ] {
            let err = parse_go_gc(bad).expect_err(bad);
            assert!(err.contains("invalid Go GC setting"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_parse_in_gomemlimit_units() {
        assert_eq!(parse_bytes("1536MiB"), Ok(1536 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4096B"), Ok(4096));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
        for bad in [
            "",
            "0",
            "0GiB",
            "1.5GiB",
            "1 GiB",
            "1gib",
            "1GB",
            "1MB",
            "-1",
            "GiB",
            "18446744073709551615KiB",
            "1\u{ff27}iB",
            "１GiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} parsed");
        }
    }
}
