//! Declarative conversions, in Rust: exact, fast, and never a script. Input and output are PostgreSQL text.

use crate::rules::Conversion;

/// The type a conversion produces, as DB2 should read it.
pub fn result_type(conversion: Conversion) -> &'static str {
    match conversion {
        Conversion::Int => "bigint",
        Conversion::Text | Conversion::JsonField => "text",
        Conversion::CentsToNumeric => "numeric",
        Conversion::NumericToCents => "bigint",
        Conversion::EpochToTimestamptz => "timestamp with time zone",
    }
}

/// Why a value cannot be converted. Never holds the value (row data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("not an integer")]
    NotInteger,
    #[error("not a number of seconds")]
    NotEpoch,
    #[error("epoch out of the range 0001-01-01 .. 9999-12-31")]
    EpochRange,
    #[error("not valid JSON")]
    NotJson,
    #[error("not a decimal number with at most two non-zero decimals")]
    NotCents,
}

/// Converts one non-NULL value; `Ok(None)` means SQL NULL (a JSON null or missing field).
pub fn convert(conversion: Conversion, value: &str, path: Option<&str>) -> Result<Option<String>, ConvertError> {
    match conversion {
        Conversion::Text => Ok(Some(value.to_owned())),
        Conversion::Int => {
            let trimmed = value.trim();
            trimmed.parse::<i64>().map_err(|_| ConvertError::NotInteger)?;
            Ok(Some(trimmed.to_owned()))
        }
        Conversion::CentsToNumeric => cents_to_numeric(value).map(Some),
        Conversion::NumericToCents => numeric_to_cents(value).map(Some),
        Conversion::EpochToTimestamptz => epoch_to_timestamptz(value).map(Some),
        Conversion::JsonField => json_field(value, path.unwrap_or("")),
    }
}

/// `-12345` → `-123.45`, by moving the decimal point in the text: exact for any number of digits.
fn cents_to_numeric(value: &str) -> Result<String, ConvertError> {
    let (sign, digits) = match value.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", value.strip_prefix('+').unwrap_or(value)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConvertError::NotInteger);
    }
    let padded = format!("{digits:0>3}");
    let (whole, cents) = padded.split_at(padded.len() - 2);
    let whole = whole.trim_start_matches('0');
    Ok(format!("{sign}{}.{cents}", if whole.is_empty() { "0" } else { whole }))
}

/// `-123.45` → `-12345`, `1.5` → `150`: the inverse of [`cents_to_numeric`], by moving the decimal point in the text.
/// A value with a non-zero third decimal is refused, never rounded.
fn numeric_to_cents(value: &str) -> Result<String, ConvertError> {
    let (sign, body) = match value.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", value.strip_prefix('+').unwrap_or(value)),
    };
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(ConvertError::NotCents);
    }
    let (cents, rest) = fraction.split_at(fraction.len().min(2));
    if rest.bytes().any(|b| b != b'0') {
        return Err(ConvertError::NotCents);
    }
    let joined = format!("{whole}{cents:0<2}");
    let trimmed = joined.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0".to_owned() } else { format!("{sign}{trimmed}") })
}

/// Seconds since the Unix epoch (fraction up to microseconds) → `YYYY-MM-DD HH:MM:SS[.ffffff]+00`.
fn epoch_to_timestamptz(value: &str) -> Result<String, ConvertError> {
    let value = value.trim();
    let (negative, body) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ConvertError::NotEpoch);
    }
    let seconds: i64 = int_part.parse().map_err(|_| ConvertError::EpochRange)?;
    let micros: i64 =
        format!("{:0<6}", &frac_part[..frac_part.len().min(6)]).parse().map_err(|_| ConvertError::NotEpoch)?;
    let mut total =
        seconds.checked_mul(1_000_000).and_then(|s| s.checked_add(micros)).ok_or(ConvertError::EpochRange)?;
    if negative {
        total = -total;
    }
    let (year, text) = pgm_common::pgtime::utc_timestamptz(total);
    if !(1..=9999).contains(&year) {
        return Err(ConvertError::EpochRange);
    }
    Ok(text)
}

fn json_field(value: &str, path: &str) -> Result<Option<String>, ConvertError> {
    let mut json: serde_json::Value = serde_json::from_str(value).map_err(|_| ConvertError::NotJson)?;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        json = match json {
            serde_json::Value::Object(mut map) => map.remove(part).unwrap_or(serde_json::Value::Null),
            serde_json::Value::Array(mut items) => match part.parse::<usize>() {
                Ok(i) if i < items.len() => items.swap_remove(i),
                _ => serde_json::Value::Null,
            },
            _ => serde_json::Value::Null,
        };
    }
    Ok(match json {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(text),
        other => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents() {
        assert_eq!(cents_to_numeric("12345").unwrap(), "123.45");
        assert_eq!(cents_to_numeric("-5").unwrap(), "-0.05");
        assert_eq!(cents_to_numeric("0").unwrap(), "0.00");
        assert_eq!(cents_to_numeric("123456789012345678901234567890").unwrap(), "1234567890123456789012345678.90");
        assert!(cents_to_numeric("1.5").is_err());
        assert!(cents_to_numeric("").is_err());
    }

    #[test]
    fn numeric_back_to_cents_is_the_exact_inverse() {
        assert_eq!(numeric_to_cents("123.45").unwrap(), "12345");
        assert_eq!(numeric_to_cents("-0.05").unwrap(), "-5");
        assert_eq!(numeric_to_cents("0.00").unwrap(), "0");
        assert_eq!(numeric_to_cents("-0.00").unwrap(), "0");
        assert_eq!(numeric_to_cents("1.5").unwrap(), "150");
        assert_eq!(numeric_to_cents("7").unwrap(), "700");
        assert_eq!(numeric_to_cents("1.230").unwrap(), "123");
        assert!(numeric_to_cents("1.234").is_err());
        assert!(numeric_to_cents("NaN").is_err());
        assert!(numeric_to_cents("").is_err());
        assert!(numeric_to_cents("1e5").is_err());
        for cents in ["12345", "-5", "0", "1", "-99", "123456789012345678901234567890"] {
            assert_eq!(numeric_to_cents(&cents_to_numeric(cents).unwrap()).unwrap(), cents);
        }
    }

    #[test]
    fn epochs() {
        assert_eq!(epoch_to_timestamptz("0").unwrap(), "1970-01-01 00:00:00+00");
        assert_eq!(epoch_to_timestamptz("1764106272").unwrap(), "2025-11-25 21:31:12+00");
        assert_eq!(epoch_to_timestamptz("951782400.5").unwrap(), "2000-02-29 00:00:00.5+00");
        assert_eq!(epoch_to_timestamptz("-1").unwrap(), "1969-12-31 23:59:59+00");
        assert!(epoch_to_timestamptz("abc").is_err());
        assert!(epoch_to_timestamptz("999999999999999").is_err());
    }

    #[test]
    fn json_fields() {
        let doc = r#"{"a": {"b": "x", "n": 1.50, "l": [1, {"c": null}]}}"#;
        assert_eq!(json_field(doc, "a.b").unwrap().as_deref(), Some("x"));
        assert_eq!(json_field(doc, "a.n").unwrap().as_deref(), Some("1.5"));
        assert_eq!(json_field(doc, "a.l.1.c").unwrap(), None);
        assert_eq!(json_field(doc, "a.missing").unwrap(), None);
        assert!(json_field("{", "a").is_err());
    }

    #[test]
    fn ints() {
        assert_eq!(convert(Conversion::Int, " 42 ", None).unwrap().as_deref(), Some("42"));
        assert_eq!(convert(Conversion::Int, "4x", None), Err(ConvertError::NotInteger));
    }
}
