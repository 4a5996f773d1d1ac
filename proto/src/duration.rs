//! Durations as regatta spells them, in manifests and on the command line:
//! `90s`, `30m`, `4h`, `1h30m`, `500ms`.
//!
//! A duration is one or more `<whole number><unit>` parts written without spaces, with
//! units `d`, `h`, `m`, `s`, `ms`, `us` and `ns`. The grammar is deliberately narrower
//! than humantime's (no spaces, no `hours`), so that `timeout: 4 hours` is refused
//! instead of silently meaning something else, and so that [`format()`] and [`parse`]
//! round-trip exactly: a manifest serialised to JSON reads back to the same value.
//!
//! It lives in the contract so that the binaries' flags (`--lease-ttl 30s`) and the
//! manifest (`timeout: 30s`) accept the same strings; [`parse`] is their clap
//! `value_parser`, whose error names the flag and, through [`DurationError`], the forms
//! accepted.

use std::time::Duration;

/// Explains why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("a duration cannot be empty")]
    Empty,
    #[error("a duration cannot be negative")]
    Negative,
    #[error("'{number}' needs a unit, e.g. '{number}s' or '{number}m'")]
    MissingUnit { number: String },
    #[error("unknown unit '{unit}' (use ms, s, m, h or d, without spaces, e.g. '1h30m')")]
    UnknownUnit { unit: String },
    #[error("expected a whole number followed by a unit (ms, s, m, h or d), e.g. '90s', '1h30m'")]
    Malformed,
    #[error("the duration is too long")]
    Overflow,
}

/// Parses a manifest duration such as `1h30m`; see the module documentation for the grammar.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let bytes = text.as_bytes();
    let mut total = Duration::ZERO;
    let mut at = 0;
    while at < bytes.len() {
        let digits_start = at;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        if at == digits_start {
            return Err(DurationError::Malformed);
        }
        let number = &text[digits_start..at];
        let unit_start = at;
        while at < bytes.len() && bytes[at].is_ascii_alphabetic() {
            at += 1;
        }
        let unit = &text[unit_start..at];
        if unit.is_empty() {
            return Err(if at == bytes.len() {
                DurationError::MissingUnit {
                    number: number.to_owned(),
                }
            } else {
                DurationError::Malformed
            });
        }
        let count: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
        let part = match unit {
            "d" => seconds(count, 86_400)?,
            "h" => seconds(count, 3_600)?,
            "m" => seconds(count, 60)?,
            "s" => seconds(count, 1)?,
            "ms" => Duration::from_millis(count),
            "us" => Duration::from_micros(count),
            "ns" => Duration::from_nanos(count),
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                })
            }
        };
        total = total.checked_add(part).ok_or(DurationError::Overflow)?;
    }
    Ok(total)
}

fn seconds(count: u64, unit_seconds: u64) -> Result<Duration, DurationError> {
    count
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or(DurationError::Overflow)
}

/// Formats a duration in the compact form [`parse`] reads back exactly (`1h30m`, `500ms`, `0s`).
pub fn format(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let parts = [
        (secs / 3_600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let mut out = String::new();
    for (count, unit) in parts {
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(unit);
        }
    }
    out
}

/// Serialises an optional duration as its compact string; reads the string back, or a whole
/// number of seconds, so that scripts may send `"timeout": 90`.
pub mod serde_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => s.serialize_str(&super::format(*duration)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelling {
            Text(String),
            Seconds(u64),
        }
        match Option::<Spelling>::deserialize(d)? {
            None => Ok(None),
            Some(Spelling::Seconds(secs)) => Ok(Some(Duration::from_secs(secs))),
            Some(Spelling::Text(text)) => super::parse(&text)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration '{text}': {e}"))),
        }
    }
}

/// Serialises a duration as its compact string (used for plan figures).
pub mod serde_required {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse("4h"), Ok(Duration::from_secs(14_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("1m500ms"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_other_spellings() {
        assert!(matches!(parse("4 hours"), Err(DurationError::Malformed)));
        assert_eq!(parse("-1s"), Err(DurationError::Negative));
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(
            parse("90"),
            Err(DurationError::MissingUnit {
                number: "90".into()
            })
        );
        assert_eq!(
            parse("3hours"),
            Err(DurationError::UnknownUnit {
                unit: "hours".into()
            })
        );
        assert!(matches!(parse("1.5h"), Err(DurationError::Malformed)));
        assert!(matches!(parse("h"), Err(DurationError::Malformed)));
        assert_eq!(parse("99999999999999999999s"), Err(DurationError::Overflow));
    }

    #[test]
    fn format_round_trips() {
        for text in ["0s", "90s", "1h30m", "500ms", "26h1m1s1ms1us1ns", "1ns"] {
            let duration = parse(text).unwrap();
            assert_eq!(parse(&format(duration)), Ok(duration), "{text}");
        }
        assert_eq!(format(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(500)), "500ms");
    }
}
