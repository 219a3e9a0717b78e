//! Durations as Istio configuration writes them (`timeout: 10s`,
//! `perTryTimeout: 250ms`, `ttl: 1h30m`), in one grammar for validation
//! and translation.
//!
//! Istio's duration fields are `google.protobuf.Duration`s, which Istio
//! reads from YAML with Go's `time.ParseDuration` (its JSON decoder for
//! Duration does, and the CRDs' `duration()` rules are Go durations too).
//! So the grammar is Go's: an optional sign, then one or more numbers, each
//! with a unit: `ns`, `us` (or `µs`, `μs`), `ms`, `s`, `m`, `h`; a number
//! may have a fraction (`1.5s`, `.5s`, `1.s`). `0` alone needs no unit.
//! No spaces, no exponents, no unit-less numbers: `10` is not a duration.
//! The protobuf JSON form (`"0.001s"`) is one of these.
//!
//! Negative durations parse in Go but no field means anything by them, and
//! Envoy refuses them: [`parse`] returns [`DurationError::Negative`], and
//! each reader decides (validation rejects timeouts under 1ms; translation
//! leaves the field unset). Durations beyond Go's limit (about 292 years)
//! do not parse, in Go or here.

use std::time::Duration;

/// Why a string is not a usable duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("not a duration: write a number with a unit (ns, us, ms, s, m or h), e.g. \"5s\"")]
    Invalid,
    #[error("negative")]
    Negative,
    #[error("longer than Go's limit of about 292 years")]
    TooLong,
}

/// Nanoseconds in one of each unit.
fn unit(name: &str) -> Option<u128> {
    Some(match name {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses an Istio duration by the grammar in this module's documentation.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Invalid);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            fraction = &after_dot[..len];
            rest = &after_dot[len..];
        }
        if int_part.is_empty() && fraction.is_empty() {
            return Err(DurationError::Invalid);
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = unit(&rest[..unit_len]).ok_or(DurationError::Invalid)?;
        rest = &rest[unit_len..];
        // More than 20 digits overflow Go's int64 before the unit applies.
        if int_part.len() > 20 {
            return Err(DurationError::TooLong);
        }
        let whole: u128 =
            if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| DurationError::Invalid)? };
        let mut value = whole * scale;
        if !fraction.is_empty() {
            // Digits past the 18th are below a nanosecond for every unit.
            let digits = &fraction[..fraction.len().min(18)];
            let numerator: u128 = digits.parse().map_err(|_| DurationError::Invalid)?;
            value += numerator * scale / 10u128.pow(digits.len() as u32);
        }
        total += value;
        if total > i64::MAX as u128 {
            return Err(DurationError::TooLong);
        }
    }
    if negative && total > 0 {
        return Err(DurationError::Negative);
    }
    let seconds = (total / 1_000_000_000) as u64;
    Ok(Duration::new(seconds, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(text: &str) -> Result<u128, DurationError> {
        parse(text).map(|d| d.as_nanos())
    }

    #[test]
    fn durations_parse_like_go() {
        let cases: [(&str, u128); 16] = [
            ("10s", 10_000_000_000),
            ("1h", 3_600_000_000_000),
            ("1m30s", 90_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5m", 90_000_000_000),
            ("0.5s", 500_000_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("0.001s", 1_000_000),
            ("100ms", 100_000_000),
            ("2us", 2_000),
            ("2µs", 2_000),
            ("2μs", 2_000),
            ("7ns", 7),
            ("+1s", 1_000_000_000),
            ("0", 0),
        ];
        for (text, expected) in cases {
            assert_eq!(nanos(text), Ok(expected), "{text}");
        }
        assert_eq!(nanos("-0s"), Ok(0));
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in
            ["10", "", "s", ".s", "1x", "1.s.", "1 s", " 10s", "10s ", "5 minutes", "1e3s", "1.2.3s", "-"]
        {
            assert_eq!(parse(bad), Err(DurationError::Invalid), "{bad:?}");
        }
        assert_eq!(parse("-1s"), Err(DurationError::Negative));
        assert_eq!(parse("2562048h"), Err(DurationError::TooLong));
        assert_eq!(parse("100000000000000000000000s"), Err(DurationError::TooLong));
        // Go's limit: 2562047h47m16.854775807s.
        assert!(parse("2562047h").is_ok());
    }
}
