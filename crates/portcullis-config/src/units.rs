//! Human-readable durations (`5s`, `1h30m`, `250ms`, `30d`) and sizes (`64KiB`, `1MB`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use crate::error::ValueError;

/// Parses `90`, `90s`, `1m30s`, `250ms`, `200us`, `2h`, `30d`. A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ValueError::Duration("empty duration".into()));
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let invalid = |why: &str| ValueError::Duration(format!("invalid duration `{text}`: {why}"));
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid(
                "expected a number followed by us, ms, s, m, h or d",
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => {
                return Err(invalid(
                    "a unit (us, ms, s, m, h, d) must follow every number",
                ));
            }
            other => {
                return Err(invalid(&format!(
                    "unknown unit `{other}` (use us, ms, s, m, h or d)"
                )));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Parses `65536`, `64KiB`, `64KB`, `1MiB`, `2GB`. A bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let text = text.trim();
    let invalid = |why: &str| ValueError::Size(format!("invalid size `{text}`: {why}"));
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid(
            "expected a number of bytes, optionally followed by KB, KiB, MB, MiB, GB or GiB",
        ));
    }
    let n: u64 = text[..digits]
        .parse()
        .map_err(|_| invalid("number too large"))?;
    let factor: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KB" | "kB" | "k" | "K" => 1_000,
        "KiB" => 1 << 10,
        "MB" | "M" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" | "G" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(invalid(&format!(
                "unknown unit `{other}` (use B, KB, KiB, MB, MiB, GB or GiB)"
            )));
        }
    };
    n.checked_mul(factor).ok_or_else(|| invalid("too large"))
}

/// Serde helper: a duration written as a number of seconds or a string such as `5s`.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as `5s`, `250ms` or `1h30m`")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Duration::from_secs(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(|v| Some(Duration::from_secs(v)))
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_duration(v).map(Some).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Serde helper: a size written as a number of bytes or a string such as `64KiB`.
pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as `65536`, `64KiB` or `1MB`")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("a size cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_size(v).map(Some).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("1ms500us"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5").is_ok());
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .to_string()
                .contains("unknown unit `x`")
        );
        assert!(parse_duration("").unwrap_err().is_duration());
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("1 parsec").unwrap_err().is_size());
    }
}
