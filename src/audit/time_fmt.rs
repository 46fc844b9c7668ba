//! The one timestamp format of the audit log.
//!
//! Always UTC with exactly six fractional digits and a `Z`, so stored times
//! have a fixed width and sort correctly as plain text (the `time` column
//! is TEXT in both SQLite and PostgreSQL, and `since` filters compare
//! strings).

use time::format_description::FormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use super::AuditError;

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Formats `t` in the audit format (converted to UTC).
pub fn format(t: OffsetDateTime) -> String {
    let utc = t.to_offset(UtcOffset::UTC);
    // Formatting a valid date with a fixed description only fails for years
    // beyond four digits; fall back to RFC 3339 rather than panic.
    utc.format(FORMAT)
        .or_else(|_| utc.format(&Rfc3339))
        .unwrap_or_default()
}

/// Parses any RFC 3339 timestamp (the audit format is one).
pub fn parse(text: &str) -> Result<OffsetDateTime, AuditError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| AuditError::BadTime {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// The current time, truncated to microseconds so that a parsed-back value
/// equals the original.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    let micros = t.microsecond();
    t.replace_microsecond(micros).unwrap_or(t)
}

/// serde helpers for `Option<OffsetDateTime>` in the audit format.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    /// Serializes `Some(t)` as the audit format string, `None` as null.
    pub fn serialize<S: Serializer>(
        value: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => serializer.serialize_str(&super::format(*t)),
            None => serializer.serialize_none(),
        }
    }

    /// Accepts an RFC 3339 string or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        match text {
            Some(text) => super::parse(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_fixed_width_utc_micros() {
        let t = parse("2024-05-06T07:08:09.5+02:00").unwrap();
        assert_eq!(format(t), "2024-05-06T05:08:09.500000Z");
        let n = now();
        assert_eq!(parse(&format(n)).unwrap(), n);
        assert_eq!(format(n).len(), 27);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(matches!(
            parse("yesterday"),
            Err(AuditError::BadTime { .. })
        ));
    }
}
