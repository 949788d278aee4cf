//! Dates, datetimes and the service-timezone calendar.
//!
//! Wire datetimes are `yyyy-MM-dd'T'HH:mm:ss(.SSS)` followed by `Z` or a
//! numeric offset (`+09:00`, `+0900`); they are stored as UTC milliseconds.
//! Export ranges are calendar days in the service's timezone (SPEC §2.3), so
//! this module also turns a service day into its UTC instant bounds.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Parses a strict `yyyy-MM-dd` date (exactly ten characters, a real date).
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if year == 0 {
        return None;
    }
    NaiveDate::from_ymd_opt(year as i32, month, day)
}

/// Days since 1970-01-01 of a strict `yyyy-MM-dd` date.
pub fn parse_date_days(s: &str) -> Option<i32> {
    parse_date(s).map(date_to_days)
}

pub fn date_to_days(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - EPOCH_DAYS_FROM_CE
}

pub fn days_to_date(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(days.checked_add(EPOCH_DAYS_FROM_CE)?)
}

/// `NaiveDate::from_ymd(1970, 1, 1).num_days_from_ce()`.
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// The first and last instants a datetime may name, in UTC ms:
/// 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, the range of the
/// canonical `yyyy-MM-ddTHH:mm:ss.SSSZ` that exports write.
pub const FIRST_DATETIME_MS: i64 = -62_135_596_800_000;
pub const LAST_DATETIME_MS: i64 = 253_402_300_799_999;

/// Parses a wire datetime into UTC milliseconds since the epoch.
///
/// The instant must fall within [`FIRST_DATETIME_MS`]..=[`LAST_DATETIME_MS`]
/// in UTC, whatever its offset: `0001-01-01T00:00:00+09:00` (in the year 0
/// in UTC) and `9999-12-31T23:00:00-05:00` (in the year 10000) are refused,
/// as an export could write them only as text no import reads back.
pub fn parse_datetime(s: &str) -> Result<i64, &'static str> {
    const BAD: &str = "not a yyyy-MM-dd'T'HH:mm:ss(.SSS)Z datetime";
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return Err(BAD);
    }
    let date = parse_date(&s[..10]).ok_or(BAD)?;
    let (h, m, sec) = (
        digits(&b[11..13]).ok_or(BAD)?,
        digits(&b[14..16]).ok_or(BAD)?,
        digits(&b[17..19]).ok_or(BAD)?,
    );
    let time = NaiveTime::from_hms_opt(h, m, sec).ok_or(BAD)?;
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if rest.first() == Some(&b'.') {
        let frac_len = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=3).contains(&frac_len) {
            return Err("fractional seconds must have 1 to 3 digits (milliseconds)");
        }
        let frac = digits(&rest[1..1 + frac_len]).ok_or(BAD)? as i64;
        millis = frac * 10i64.pow(3 - frac_len as u32);
        rest = &rest[1 + frac_len..];
    }
    let offset_secs: i64 = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2] | [sign @ (b'+' | b'-'), hh1, hh2, mm1, mm2] => {
            let hh = digits(&[*hh1, *hh2]).ok_or(BAD)? as i64;
            let mm = digits(&[*mm1, *mm2]).ok_or(BAD)? as i64;
            if hh > 23 || mm > 59 {
                return Err(BAD);
            }
            let secs = hh * 3600 + mm * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return Err(BAD),
    };
    let local = NaiveDateTime::new(date, time).and_utc().timestamp_millis() + millis;
    let utc = local - offset_secs * 1000;
    if !(FIRST_DATETIME_MS..=LAST_DATETIME_MS).contains(&utc) {
        return Err("outside 0001-01-01T00:00:00.000Z to 9999-12-31T23:59:59.999Z in UTC");
    }
    Ok(utc)
}

/// Today's date in `tz` at the instant `now`.
pub fn today_in(tz: Tz, now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&tz).date_naive()
}

/// The first instant (UTC ms) of `date` in `tz`. Where a DST gap swallows
/// midnight, the day starts at the first local time that exists.
pub fn day_start_ms(date: NaiveDate, tz: Tz) -> i64 {
    let mut local = date.and_time(NaiveTime::MIN);
    for _ in 0..48 {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => return t.timestamp_millis(),
            LocalResult::Ambiguous(early, _) => return early.timestamp_millis(),
            LocalResult::None => local += Duration::minutes(30),
        }
    }
    // Unreachable for real zones; fall back to UTC midnight.
    date.and_time(NaiveTime::MIN).and_utc().timestamp_millis()
}

/// `[start, end)` in UTC ms of the service day `date`.
pub fn day_bounds_ms(date: NaiveDate, tz: Tz) -> (i64, i64) {
    let next = date.succ_opt().unwrap_or(date);
    (day_start_ms(date, tz), day_start_ms(next, tz))
}

/// Parses an IANA timezone name (`UTC`, `Asia/Seoul`).
pub fn parse_timezone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

/// Every name [`parse_timezone`] accepts (the IANA database's zones and
/// links, as chrono-tz compiles them), sorted by byte order.
pub fn timezone_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezone_names_are_exactly_the_accepted_ones() {
        let names = timezone_names();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        for name in ["UTC", "Asia/Seoul", "America/New_York", "Asia/Kathmandu"] {
            assert!(names.contains(&name), "{name}");
        }
        assert!(names.iter().all(|n| parse_timezone(n).is_some()));
        assert!(!names.contains(&"Mars/Olympus_Mons") && parse_timezone("Mars/Olympus_Mons").is_none());
    }

    #[test]
    fn parses_strict_dates_only() {
        assert_eq!(parse_date("2026-02-28"), NaiveDate::from_ymd_opt(2026, 2, 28));
        for bad in [
            "2026-02-29",
            "2026-2-28",
            "2026-02-28 ",
            "20260228",
            "2026/02/28",
            "0000-01-01",
            "2026-13-01",
            "２０２６-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(parse_date_days("1970-01-01"), Some(0));
        assert_eq!(parse_date_days("1969-12-31"), Some(-1));
        assert_eq!(days_to_date(19_000).map(date_to_days), Some(19_000));
    }

    #[test]
    fn parses_datetimes_with_zone_or_offset() {
        let cases = [
            ("2026-11-25T00:00:00Z", Ok(1_795_564_800_000)),
            ("2026-11-25T00:00:00.123Z", Ok(1_795_564_800_123)),
            ("2026-11-25T00:00:00.1Z", Ok(1_795_564_800_100)),
            ("2026-11-25T09:00:00+09:00", Ok(1_795_564_800_000)),
            ("2026-11-25T09:00:00.000+0900", Ok(1_795_564_800_000)),
            ("2026-11-24T19:00:00-05:00", Ok(1_795_564_800_000)),
        ];
        for (s, expected) in cases {
            assert_eq!(parse_datetime(s), expected, "{s}");
        }
        for bad in [
            "2026-11-25T00:00:00",
            "2026-11-25 00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T00:00:00.1234Z",
            "2026-11-25T00:00:00+9:00",
            "2026-11-31T00:00:00Z",
            "2026-11-25T00:00:00z",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }

    /// Found by the property tests: an offset took the instant out of the
    /// years 0001..9999 in UTC, and the export's canonical text of it
    /// (`0000-12-31T00:01:00.000Z`, `10000-01-01T00:00:00.000Z`) was no
    /// datetime the import accepts.
    #[test]
    fn refuses_instants_outside_the_years_1_to_9999_in_utc() {
        assert_eq!(parse_datetime("0001-01-01T00:00:00Z"), Ok(FIRST_DATETIME_MS));
        assert_eq!(parse_datetime("0001-01-01T09:00:00+09:00"), Ok(FIRST_DATETIME_MS));
        assert_eq!(parse_datetime("9999-12-31T23:59:59.999Z"), Ok(LAST_DATETIME_MS));
        assert_eq!(parse_datetime("9999-12-31T14:29:59.999-09:30"), Ok(LAST_DATETIME_MS));
        for bad in [
            "0001-01-01T00:00:00+23:59",
            "0001-01-01T08:59:59.999+09:00",
            "9999-12-31T14:30:00-09:30",
            "9999-12-31T23:59:59.999-00:01",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_days_follow_the_timezone() {
        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let (start, end) = day_bounds_ms(date, seoul);
        assert_eq!(start, parse_datetime("2026-11-24T15:00:00Z").unwrap());
        assert_eq!(end - start, 86_400_000);
        // A DST day in New York is 23 hours long.
        let ny: Tz = "America/New_York".parse().unwrap();
        let (s, e) = day_bounds_ms(NaiveDate::from_ymd_opt(2026, 3, 8).unwrap(), ny);
        assert_eq!(e - s, 23 * 3_600_000);
        let now = DateTime::parse_from_rfc3339("2026-11-24T16:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(today_in(seoul, now), date);
        assert_eq!(today_in(Tz::UTC, now), date.pred_opt().unwrap());
    }
}
