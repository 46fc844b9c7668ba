//! Points in time given on the command line: an age relative to now
//! (`90s`, `15m`, `2h`, `7d`, `1w`, or combined: `1h30m`) or an RFC 3339
//! time (`2024-05-06T07:08:09Z`).

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const EXPECTED: &str = "expected an age like 15m, 2h or 7d (units s, m, h, d, w) or an RFC 3339 time like 2024-05-06T07:08:09Z";

/// clap value parser for `--since` / `--until`: the time `text` names,
/// ages counted back from now. The error text is shown after clap's
/// "invalid value '...' for '--flag'".
pub fn parse_when(text: &str) -> Result<OffsetDateTime, String> {
    parse_when_at(text, OffsetDateTime::now_utc())
}

fn parse_when_at(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if text.contains('T') || text.contains('t') {
        return OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("{e}; {EXPECTED}"));
    }
    let age = parse_age(text)?;
    let age = time::Duration::try_from(age).map_err(|_| format!("age too large; {EXPECTED}"))?;
    now.checked_sub(age)
        .ok_or_else(|| format!("age too large; {EXPECTED}"))
}

/// Parses a sequence of `<number><unit>` pairs.
fn parse_age(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("empty value; {EXPECTED}"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}; {EXPECTED}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number too large; {EXPECTED}"))?;
        rest = &rest[digits..];
        let unit = rest
            .chars()
            .next()
            .ok_or_else(|| format!("missing unit after {number}; {EXPECTED}"))?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            other => return Err(format!("unknown unit {other:?}; {EXPECTED}")),
        };
        rest = &rest[unit.len_utf8()..];
        total = number
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("age too large; {EXPECTED}"))?;
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-01-10 12:00:00 UTC);

    #[test]
    fn ages_count_back_from_now() {
        let table = [
            ("90s", datetime!(2025-01-10 11:58:30 UTC)),
            ("15m", datetime!(2025-01-10 11:45:00 UTC)),
            ("2h", datetime!(2025-01-10 10:00:00 UTC)),
            ("7d", datetime!(2025-01-03 12:00:00 UTC)),
            ("1w", datetime!(2025-01-03 12:00:00 UTC)),
            ("1h30m", datetime!(2025-01-10 10:30:00 UTC)),
            ("0s", NOW),
        ];
        for (text, expected) in table {
            assert_eq!(parse_when_at(text, NOW), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rfc3339_times_are_taken_as_written() {
        assert_eq!(
            parse_when_at("2024-05-06T07:08:09+02:00", NOW),
            Ok(datetime!(2024-05-06 05:08:09 UTC))
        );
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        for text in [
            "",
            "15",
            "m",
            "15x",
            "1.5h",
            "-2h",
            "yesterday",
            "2024-05-06T07",
            "99999999999999999999d",
            "999999999999w",
        ] {
            let err = parse_when_at(text, NOW).expect_err(text);
            assert!(err.contains("expected"), "{text}: {err}");
        }
    }
}
