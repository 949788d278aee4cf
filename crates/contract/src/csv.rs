//! The CSV cell encoder (SPEC §2.3 "Cells").
//!
//! RFC 4180 with `\n` line ends: comma separator, a field is quoted only when
//! it holds `,` `"` CR or LF, and a quote inside is doubled. Typed values have
//! one spelling each: Long as decimal, Double as the shortest round-trip
//! decimal with `.0` on whole numbers, Datetime as UTC
//! `yyyy-MM-ddTHH:mm:ss.SSSZ`, Date as `yyyy-MM-dd`, arrays as compact JSON.
//! Every store backend encodes through these functions, so the bytes of an
//! export do not depend on the backend.

use crate::types::Value;

/// Appends `s` as one CSV field, quoted only when it must be.
pub fn push_field(out: &mut Vec<u8>, s: &[u8]) {
    if needs_quotes(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        for (n, part) in s.split(|&c| c == b'"').enumerate() {
            if n > 0 {
                out.extend_from_slice(b"\"\"");
            }
            out.extend_from_slice(part);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s);
    }
}

/// Whether `s` holds `,` `"` CR or LF. An export asks this of every
/// string cell, so it looks at 16 bytes at a time, each compared with the
/// four without a branch, which the compiler turns into vector compares
/// (with a byte loop, `push_field` was a third of the export encoder's
/// instructions).
fn needs_quotes(s: &[u8]) -> bool {
    let special = |c: u8| u8::from(c == b',') | u8::from(c == b'"') | u8::from(c == b'\r') | u8::from(c == b'\n');
    let mut blocks = s.chunks_exact(16);
    blocks.any(|block| block.iter().fold(0, |found, &c| found | special(c)) != 0)
        || blocks.remainder().iter().any(|&c| special(c) != 0)
}

/// Appends a whole CSV line of text fields, ending in `\n`.
pub fn push_line<S: AsRef<str>>(out: &mut Vec<u8>, fields: &[S]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_field(out, f.as_ref().as_bytes());
    }
    out.push(b'\n');
}

pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub fn push_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Shortest round-trip decimal, never in exponent form, whole numbers with `.0`.
/// Non-finite values cannot enter fineport; should one appear it is written
/// as an empty value rather than as text no reader expects.
pub fn push_f64(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        return;
    }
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(v);
    if s.contains('e') {
        // ryu switches to exponent form for very large/small magnitudes;
        // Rust's Display gives the same shortest digits in positional form.
        let s = v.to_string();
        out.extend_from_slice(s.as_bytes());
        if !s.contains('.') {
            out.extend_from_slice(b".0");
        }
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// UTC `yyyy-MM-ddTHH:mm:ss.SSSZ` from milliseconds since the epoch.
pub fn push_datetime_ms(out: &mut Vec<u8>, ms: i64) {
    const MS_PER_DAY: i64 = 86_400_000;
    let Ok(days) = i32::try_from(ms.div_euclid(MS_PER_DAY)) else {
        return;
    };
    if !push_ymd(out, days) {
        return;
    }
    // In 0..MS_PER_DAY, so it fits.
    let in_day = ms.rem_euclid(MS_PER_DAY) as u32;
    let mut time = *b"T00:00:00.000Z";
    put_digits(&mut time[1..3], in_day / 3_600_000);
    put_digits(&mut time[4..6], in_day / 60_000 % 60);
    put_digits(&mut time[7..9], in_day / 1000 % 60);
    put_digits(&mut time[10..13], in_day % 1000);
    out.extend_from_slice(&time);
}

/// `yyyy-MM-dd` from days since 1970-01-01.
pub fn push_date_days(out: &mut Vec<u8>, days: i32) {
    push_ymd(out, days);
}

/// Appends `yyyy-MM-dd` (a year past 9999 in full); `false`, appending
/// nothing, for a day before the year 0, which no wire date can reach.
fn push_ymd(out: &mut Vec<u8>, days: i32) -> bool {
    let Some((year, month, day)) = civil_from_days(days) else {
        return false;
    };
    if year > 9999 {
        push_i64(out, i64::from(year));
    } else {
        let mut yyyy = *b"0000";
        put_digits(&mut yyyy, year);
        out.extend_from_slice(&yyyy);
    }
    let mut md = *b"-00-00";
    put_digits(&mut md[1..3], month);
    put_digits(&mut md[4..6], day);
    out.extend_from_slice(&md);
    true
}

/// (year, month, day) of a day since 1970-01-01 in the proleptic Gregorian
/// calendar, for years from 0 on.
///
/// Exports spell millions of dates, so this is the conversion done
/// directly (H. Hinnant's `civil_from_days`) rather than through chrono;
/// the tests check it against chrono.
fn civil_from_days(days: i32) -> Option<(u32, u32, u32)> {
    // Days since -0400-03-01: a leap day ends its year, and every day from
    // the year 0 on counts up from a whole 400-year era.
    const ERA_DAYS: i64 = 146_097;
    let z = u32::try_from(i64::from(days) + 719_468 + ERA_DAYS).ok()?;
    let era = z / ERA_DAYS as u32;
    let day_of_era = z % ERA_DAYS as u32;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let (month, march_year) = if shifted_month < 10 {
        (shifted_month + 3, 0)
    } else {
        (shifted_month - 9, 1)
    };
    // The first era is the one before the year 0.
    let year = (era * 400 + year_of_era + march_year).checked_sub(400)?;
    Some((year, month, day))
}

/// Writes the low `slot.len()` decimal digits of `v` into `slot`, zero-padded.
fn put_digits(slot: &mut [u8], mut v: u32) {
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Appends `s`, UTF-8 text, as a JSON string literal (inside array cells).
pub fn push_json_string(out: &mut Vec<u8>, s: impl AsRef<[u8]>) {
    out.push(b'"');
    let mut start = 0;
    let bytes = s.as_ref();
    for (i, &c) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match c {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{:04x}", c).as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends a scalar value as JSON (an element of an array cell): strings,
/// dates and datetimes quoted, numbers and booleans bare.
pub fn push_json_scalar(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => push_json_string(out, s),
        Value::Long(n) => push_i64(out, *n),
        Value::Double(f) if f.is_finite() => push_f64(out, *f),
        Value::Double(_) => out.extend_from_slice(b"null"),
        Value::Boolean(b) => push_bool(out, *b),
        Value::Datetime(ms) => {
            out.push(b'"');
            push_datetime_ms(out, *ms);
            out.push(b'"');
        }
        Value::Date(d) => {
            out.push(b'"');
            push_date_days(out, *d);
            out.push(b'"');
        }
        Value::StringArray(_) | Value::LongArray(_) | Value::DoubleArray(_) => push_json_array(out, v),
    }
}

/// Appends an array value as compact JSON (`["a","b"]`, `[1,2]`, `[]`).
pub fn push_json_array(out: &mut Vec<u8>, v: &Value) {
    fn list<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
        out.push(b']');
    }
    match v {
        Value::StringArray(a) => list(out, a, |o, s| push_json_string(o, s)),
        Value::LongArray(a) => list(out, a, |o, n| push_i64(o, *n)),
        Value::DoubleArray(a) => list(out, a, |o, f| push_json_scalar(o, &Value::Double(*f))),
        scalar => push_json_scalar(out, scalar),
    }
}

/// Appends a value as one CSV cell. `scratch` is reused for array cells,
/// which are JSON first and then CSV-quoted.
pub fn push_value(out: &mut Vec<u8>, scratch: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => push_field(out, s.as_bytes()),
        Value::Long(n) => push_i64(out, *n),
        Value::Double(f) => push_f64(out, *f),
        Value::Boolean(b) => push_bool(out, *b),
        Value::Datetime(ms) => push_datetime_ms(out, *ms),
        Value::Date(d) => push_date_days(out, *d),
        Value::StringArray(_) | Value::LongArray(_) | Value::DoubleArray(_) => {
            scratch.clear();
            push_json_array(scratch, v);
            push_field(out, scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(v: &Value) -> String {
        let mut out = Vec::new();
        push_value(&mut out, &mut Vec::new(), v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn quotes_only_when_needed() {
        let cases = [
            ("plain", "plain"),
            ("한글 텍스트", "한글 텍스트"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("line\nbreak", "\"line\nbreak\""),
            ("cr\r", "\"cr\r\""),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(cell(&Value::String(input.into())), expected, "{input:?}");
        }
    }

    /// RFC 4180's rule, a byte at a time: what `push_field` must write.
    fn field_by_the_rule(s: &[u8]) -> Vec<u8> {
        if !s.iter().any(|c| b",\"\r\n".contains(c)) {
            return s.to_vec();
        }
        let mut out = vec![b'"'];
        for &c in s {
            if c == b'"' {
                out.push(b'"');
            }
            out.push(c);
        }
        out.push(b'"');
        out
    }

    proptest::proptest! {
        /// Any length around the 16-byte blocks, mostly plain bytes, a
        /// special one anywhere or nowhere.
        #[test]
        fn fields_are_quoted_and_doubled_by_the_rule(s in proptest::collection::vec(
            proptest::prop_oneof![
                30 => proptest::sample::select(b"ab\xea".to_vec()),
                1 => proptest::sample::select(b",\"\r\n".to_vec()),
            ], 0..80)
        ) {
            let mut out = Vec::new();
            push_field(&mut out, &s);
            proptest::prop_assert_eq!(out, field_by_the_rule(&s));
        }
    }

    #[test]
    fn doubles_are_shortest_decimal_with_point_zero() {
        let cases = [
            (1.5, "1.5"),
            (0.1, "0.1"),
            (15000.0, "15000.0"),
            (-2.0, "-2.0"),
            (0.0, "0.0"),
            (1e16, "10000000000000000.0"),
            (1.5e-7, "0.00000015"),
            (123456789.125, "123456789.125"),
        ];
        for (v, expected) in cases {
            assert_eq!(cell(&Value::Double(v)), expected, "{v}");
            let parsed: f64 = expected.parse().unwrap();
            assert_eq!(parsed, v, "round trip of {v}");
        }
    }

    #[test]
    fn datetimes_dates_and_scalars() {
        assert_eq!(cell(&Value::Datetime(1_795_564_800_123)), "2026-11-25T00:00:00.123Z");
        assert_eq!(cell(&Value::Datetime(-1)), "1969-12-31T23:59:59.999Z");
        assert_eq!(cell(&Value::Date(0)), "1970-01-01");
        assert_eq!(cell(&Value::Long(-42)), "-42");
        assert_eq!(cell(&Value::Boolean(false)), "false");
    }

    #[test]
    fn arrays_are_compact_json_then_csv_quoted() {
        assert_eq!(cell(&Value::StringArray(vec![])), "[]");
        assert_eq!(cell(&Value::LongArray(vec![1, -2])), "\"[1,-2]\"");
        assert_eq!(cell(&Value::DoubleArray(vec![1.0, 0.5])), "\"[1.0,0.5]\"");
        assert_eq!(
            cell(&Value::StringArray(vec!["a\"b".into(), "줄\n바꿈".into()])),
            r#""[""a\""b"",""줄\n바꿈""]""#
        );
        let mut out = Vec::new();
        push_json_string(&mut out, "\u{1}\t");
        assert_eq!(String::from_utf8(out).unwrap(), r#""\u0001\t""#);
    }

    #[test]
    fn calendar_matches_chrono_from_year_0_to_10000() {
        use chrono::Datelike;
        let first = crate::time::date_to_days(chrono::NaiveDate::from_ymd_opt(0, 1, 1).unwrap());
        let last = crate::time::date_to_days(chrono::NaiveDate::from_ymd_opt(10_000, 12, 31).unwrap());
        for days in first..=last {
            let date = crate::time::days_to_date(days).unwrap();
            let expected = (date.year() as u32, date.month(), date.day());
            assert_eq!(civil_from_days(days), Some(expected), "day {days}");
        }
        assert_eq!(civil_from_days(first - 1), None);
        assert_eq!(cell(&Value::Date(last)), "10000-12-31");
        assert_eq!(cell(&Value::Datetime(253_402_300_799_999)), "9999-12-31T23:59:59.999Z");
        assert_eq!(cell(&Value::Datetime(-62_167_219_200_000)), "0000-01-01T00:00:00.000Z");
        assert_eq!(cell(&Value::Datetime(-62_167_219_200_001)), "");
    }

    #[test]
    fn header_line() {
        let mut out = Vec::new();
        push_line(&mut out, &["a", "b,c"]);
        assert_eq!(out, b"a,\"b,c\"\n");
    }
}
