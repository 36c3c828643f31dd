//! RFC 3339 timestamps to and from epoch milliseconds, without allocation.

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Parses an RFC 3339 timestamp (`2026-11-27T08:15:00.123Z`, `…+01:00`; a space instead of
/// `T`, a lower-case `t`/`z` and an offset without its colon, `+0100`, as tools such as
/// polars write them, are accepted) into epoch milliseconds. Fractions beyond milliseconds
/// are truncated.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let bad = || format!("not an RFC 3339 timestamp: {:?}", crate::error::snippet(s));
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let year = digits(&b[0..4]).ok_or_else(bad)?;
    let month = digits(&b[5..7]).ok_or_else(bad)?;
    let day = digits(&b[8..10]).ok_or_else(bad)?;
    let hour = digits(&b[11..13]).ok_or_else(bad)?;
    let min = digits(&b[14..16]).ok_or_else(bad)?;
    let sec = digits(&b[17..19]).ok_or_else(bad)?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(i64::from(year), month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return Err(format!(
            "timestamp out of range: {:?}",
            crate::error::snippet(s)
        ));
    }
    let mut i = 19;
    let mut ms = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                ms = ms * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err(bad());
        }
        for _ in n..3 {
            ms *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-'))
            if (i + 6 == b.len() && b[i + 3] == b':') || i + 5 == b.len() =>
        {
            let m = b.len() - 2;
            let oh = digits(&b[i + 1..i + 3]).ok_or_else(bad)?;
            let om = digits(&b[m..]).ok_or_else(bad)?;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = i64::from(oh * 3600 + om * 60);
            if sign == b'+' { o } else { -o }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec.min(59)) - offset_secs;
    Ok(secs * 1000 + i64::from(ms))
}

/// The earliest event time accepted: 0001-01-01T00:00:00Z (epoch milliseconds).
pub const MIN_TS_MS: i64 = -62_135_596_800_000;
/// The latest event time accepted: 9999-12-31T23:59:59.999Z (epoch milliseconds). With
/// timestamps in this range, no time arithmetic of the engine can overflow.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// Formats epoch milliseconds as RFC 3339 in UTC with millisecond precision
/// (`2026-11-27T08:15:00.123Z`).
pub fn format_rfc3339_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(ms, &mut out);
    out
}

/// Appends the RFC 3339 form of `ms` to `out`.
pub fn write_rfc3339_ms(ms: i64, out: &mut String) {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        return;
    }
    let y = y as u32;
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, v: u32, n: usize| {
        let mut v = v;
        for i in (0..n).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, sod / 3600, 2);
    put(14, (sod / 60) % 60, 2);
    put(17, sod % 60, 2);
    put(20, frac, 3);
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T00:00:00Z"),
            Ok(951_868_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T09:15:00.123+01:00"),
            parse_rfc3339_ms("2026-11-27T08:15:00.123Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T07:45:00.123-0030"),
            parse_rfc3339_ms("2026-11-27T08:15:00.123Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-27 08:15:00.123456789z"),
            parse_rfc3339_ms("2026-11-27T08:15:00.123Z")
        );
    }

    #[test]
    fn rejects_bad_timestamps() {
        for s in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-27T25:00:00Z",
            "2026-11-27T08:15:00",
            "2026-11-27T08:15:00.Z",
            "2026-11-27T08:15:00+01",
            "2026-11-27T08:15:00+01:0",
            "2026-11-27T08:15:00Zjunk",
            "２０２６-11-27T08:15:00Z",
        ] {
            assert!(parse_rfc3339_ms(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [
            0,
            1,
            999,
            1_764_230_400_123,
            -1,
            -86_400_001,
            253_402_300_799_999,
        ] {
            let s = format_rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_ms(&s), Ok(ms), "{s}");
        }
    }
}
