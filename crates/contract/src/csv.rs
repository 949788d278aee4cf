//! The CSV cell encoder (SPEC §2.3 "Cells").
//!
//! RFC 4180 with `\n` line ends: comma separator, a field is quoted only when
//! it holds `,` `"` CR or LF, and a quote inside is doubled. Typed values have
//! one spelling each: Long as decimal, Double as the shortest round-trip
//! decimal with `.0` on whole numbers, Datetime as UTC
//! `yyyy-MM-ddTHH:mm:ss.SSSZ`, Date as `yyyy-MM-dd`, arrays as compact JSON.
//! Every store backend encodes through these functions, so the bytes of an
//! export do not depend on the backend.

use crate::time::days_to_date;
use crate::types::Value;
use chrono::Datelike;

/// Appends `s` as one CSV field, quoted only when it must be.
pub fn push_field(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().any(|&c| matches!(c, b',' | b'"' | b'\r' | b'\n')) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        for &c in s {
            if c == b'"' {
                out.push(b'"');
            }
            out.push(c);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s);
    }
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
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let Some(date) = i32::try_from(days).ok().and_then(days_to_date) else {
        return;
    };
    push_ymd(out, date);
    let (h, rem) = (in_day / 3_600_000, in_day % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, milli) = (rem / 1000, rem % 1000);
    out.push(b'T');
    push_padded(out, h as u32, 2);
    out.push(b':');
    push_padded(out, m as u32, 2);
    out.push(b':');
    push_padded(out, s as u32, 2);
    out.push(b'.');
    push_padded(out, milli as u32, 3);
    out.push(b'Z');
}

/// `yyyy-MM-dd` from days since 1970-01-01.
pub fn push_date_days(out: &mut Vec<u8>, days: i32) {
    if let Some(date) = days_to_date(days) {
        push_ymd(out, date);
    }
}

fn push_ymd(out: &mut Vec<u8>, date: chrono::NaiveDate) {
    push_padded(out, date.year() as u32, 4);
    out.push(b'-');
    push_padded(out, date.month(), 2);
    out.push(b'-');
    push_padded(out, date.day(), 2);
}

fn push_padded(out: &mut Vec<u8>, v: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(v);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
    out.extend_from_slice(s.as_bytes());
}

/// Appends `s` as a JSON string literal (inside array cells).
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut start = 0;
    let bytes = s.as_bytes();
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
    fn header_line() {
        let mut out = Vec::new();
        push_line(&mut out, &["a", "b,c"]);
        assert_eq!(out, b"a,\"b,c\"\n");
    }
}
