//! PostgreSQL's text output of a `timestamptz` in UTC, for the decoders (pgoutput's commit times) and the rules'
//! epoch conversion: `2026-11-25 21:24:32.2514+00` (trailing zeros of the fraction dropped, as PostgreSQL does).

/// The text of `unix_micros` (microseconds since 1970-01-01 UTC) and its year, for callers that bound the range.
pub fn utc_timestamptz(unix_micros: i64) -> (i64, String) {
    let days = unix_micros.div_euclid(86_400_000_000);
    let rest = unix_micros.rem_euclid(86_400_000_000);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, us) = (rest / 3_600_000_000, rest / 60_000_000 % 60, rest / 1_000_000 % 60, rest % 1_000_000);
    let mut out = format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}");
    if us != 0 {
        let fraction = format!("{us:06}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str("+00");
    (year, out)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_postgres_does_in_utc() {
        assert_eq!(utc_timestamptz(0), (1970, "1970-01-01 00:00:00+00".to_owned()));
        assert_eq!(utc_timestamptz(-1).1, "1969-12-31 23:59:59.999999+00");
        assert_eq!(utc_timestamptz(951_782_400_000_000).1, "2000-02-29 00:00:00+00");
        assert_eq!(utc_timestamptz(1_795_000_000_250_000).1, "2026-11-18 11:06:40.25+00");
    }
}
