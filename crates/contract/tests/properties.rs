//! Property tests over the contract: every value the import accepts comes
//! back out of the CSV encoder as a cell that the `csv` crate reads as the
//! value's documented text (SPEC §2.3 "Cells"); wire datetimes round-trip;
//! the look-back rule is monotone; and any JSON or bytes given to the body
//! parsers of the Export and Import APIs get `Ok` or a documented failure
//! (SPEC §2.2, §4), never a panic.
//!
//! Oracles are independent of the encoder: doubles are checked against the
//! standard library's shortest round-trip `Display`, datetimes and dates
//! against chrono's formatting, arrays by parsing them as JSON.

mod strategies;

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate};
use fineport_contract::cells::StoredEvent;
use fineport_contract::csv::{push_datetime_ms, push_field, push_value};
use fineport_contract::export::{check_lookback, EventExportRequest, ExportFailure, ExportOutcome};
use fineport_contract::import::{response_body, validate_events, ImportCode, ImportRejection};
use fineport_contract::profile::{
    cell_text, plan_profile_export, validate_delete, validate_identity, validate_profiles,
};
use fineport_contract::time::{days_to_date, parse_date_days, parse_datetime};
use fineport_contract::types::{PropertyType, Value};
use fineport_contract::ServiceId;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value as Json};
use strategies::*;

/// `cases` unless `PROPTEST_CASES` says otherwise; failing seeds are kept
/// in `proptest-regressions/properties.txt` and replayed first.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..default
    }
}

// ---------------------------------------------------------------- oracles

/// A documented text of a double (SPEC §2.3): the shortest decimal that
/// reads back as the same double, never in exponent form, whole numbers
/// with `.0`. Rust's `Display` for `f64` is a shortest decimal, positional.
fn double_text(f: f64) -> String {
    let s = f.to_string();
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Checks that `text` is a documented spelling of `f`: a positional
/// decimal with a point (`-`, digits, `.`, digits) that reads back as `f`,
/// bit for bit, with no more significant digits than the shortest such
/// decimal (when two shortest decimals are equally near, either will do:
/// `1526511541136389.25` is `…389.2` or `…389.3`).
fn assert_double_text(text: &str, f: f64) -> Result<(), TestCaseError> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, frac) = unsigned
        .split_once('.')
        .ok_or_else(|| TestCaseError::fail(format!("{text:?} has no decimal point")))?;
    prop_assert!(
        !whole.is_empty() && !frac.is_empty() && whole.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()),
        "{:?} is not a positional decimal",
        text
    );
    let back: f64 = text.parse().expect("a decimal");
    prop_assert_eq!(
        back.to_bits(),
        f.to_bits(),
        "{:?} reads back as {} not {}",
        text,
        back,
        f
    );
    let significant = |t: &str| {
        let digits: String = t.chars().filter(char::is_ascii_digit).collect();
        digits.trim_start_matches('0').trim_end_matches('0').len()
    };
    prop_assert_eq!(
        significant(text),
        significant(&double_text(f)),
        "{:?} is not shortest for {}",
        text,
        f
    );
    Ok(())
}

/// UTC `yyyy-MM-ddTHH:mm:ss.SSSZ`, by chrono.
fn datetime_text(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .expect("in chrono's range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn date_text(days: i32) -> String {
    days_to_date(days).expect("a date").format("%Y-%m-%d").to_string()
}

/// A scalar's JSON (an array element): strings, dates and datetimes as
/// JSON strings of their text, numbers and booleans bare.
fn element_json(v: &Value) -> Json {
    match v {
        Value::String(s) => json!(s),
        Value::Long(n) => json!(n),
        Value::Double(f) => json!(f),
        Value::Boolean(b) => json!(b),
        Value::Datetime(ms) => json!(datetime_text(*ms)),
        Value::Date(d) => json!(date_text(*d)),
        Value::StringArray(a) => json!(a),
        Value::LongArray(a) => json!(a),
        Value::DoubleArray(a) => json!(a),
    }
}

/// `text` with the contents of every JSON string literal removed: what is
/// left of a compact JSON array of strings is `[`, `""`, `,` and `]` only.
fn skeleton(text: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                out.push('"');
            }
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// Checks that `cell` (as the `csv` crate read it) is the documented text of `v`.
fn assert_documented(cell: &str, v: &Value) -> Result<(), TestCaseError> {
    let exact = |expected: String| -> Result<(), TestCaseError> {
        prop_assert_eq!(cell, expected.as_str(), "value {:?}", v);
        Ok(())
    };
    match v {
        Value::String(s) => exact(s.clone()),
        Value::Long(n) => exact(n.to_string()),
        Value::Double(f) => assert_double_text(cell, *f),
        Value::Boolean(b) => exact(b.to_string()),
        Value::Datetime(ms) => exact(datetime_text(*ms)),
        Value::Date(d) => exact(date_text(*d)),
        Value::LongArray(a) => exact(format!(
            "[{}]",
            a.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
        )),
        Value::DoubleArray(a) => {
            let inner = cell
                .strip_prefix('[')
                .and_then(|c| c.strip_suffix(']'))
                .ok_or_else(|| TestCaseError::fail(format!("{cell:?} is not [..]")))?;
            let elements: Vec<&str> = if inner.is_empty() {
                vec![]
            } else {
                inner.split(',').collect()
            };
            prop_assert_eq!(elements.len(), a.len(), "{:?}", cell);
            for (text, f) in elements.iter().zip(a) {
                assert_double_text(text, *f)?;
            }
            Ok(())
        }
        Value::StringArray(a) => {
            let parsed: Vec<String> = serde_json::from_str(cell)
                .map_err(|e| TestCaseError::fail(format!("{cell:?} is not a JSON array of strings: {e}")))?;
            prop_assert_eq!(&parsed, a);
            let compact = format!("[{}]", vec!["\"\""; a.len()].join(","));
            prop_assert_eq!(skeleton(cell), compact, "compact JSON: {:?}", cell);
            Ok(())
        }
    }
}

/// Writes `cells` as one CSV line after a first cell `id` (as an export
/// row has), reads it back with the `csv` crate and returns the fields
/// after `id`.
fn csv_round_trip(line: &[u8]) -> Result<Vec<String>, TestCaseError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line);
    let mut records = reader.records();
    let record = records
        .next()
        .ok_or_else(|| TestCaseError::fail("no record"))?
        .map_err(|e| TestCaseError::fail(format!("csv: {e}")))?;
    prop_assert!(
        records.next().is_none(),
        "one line is one record: {:?}",
        String::from_utf8_lossy(line)
    );
    prop_assert_eq!(record.get(0), Some("id"));
    Ok(record.iter().skip(1).map(str::to_owned).collect())
}

/// An event with typed properties and items: (event, properties, items).
fn event_with_values() -> impl Strategy<Value = (Json, Vec<Typed>, Vec<Vec<Typed>>)> {
    let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
    (
        event(today),
        typed_properties(event_prop),
        prop::collection::vec(typed_properties(item_prop), 0..4),
    )
        .prop_map(|(mut e, props, items)| {
            e["properties"] = Json::Object(props.iter().map(|(n, j, _)| (n.clone(), j.clone())).collect());
            e["items"] = Json::Array(
                items
                    .iter()
                    .map(|i| Json::Object(i.iter().map(|(n, j, _)| (n.clone(), j.clone())).collect()))
                    .collect(),
            );
            (e, props, items)
        })
}

proptest! {
    #![proptest_config(config(4096))]

    /// Every event property value of every type that `validate_events`
    /// accepts is typed as sent, encoded by `push_value` into a cell the
    /// `csv` crate reads back as its documented text; the stored text of
    /// the text-cell backend (`cell_text`, `StoredEvent`) is that same
    /// text and writes the same bytes; each `df_items_<p>` cell is a JSON
    /// array with one element per item.
    #[test]
    fn accepted_event_values_come_back_as_their_documented_cells(
        (event, props, items) in event_with_values(),
    ) {
        let taxonomy = taxonomy();
        // As the server reads a body: JSON text through `serde_json::from_slice`.
        let body = json!({"common": {"identity": {"external_id": "u"}}, "events": [event]});
        let body: Json = serde_json::from_slice(body.to_string().as_bytes()).expect("JSON");
        let batch = validate_events(&body, &taxonomy, false)
            .map_err(|r| TestCaseError::fail(format!("refused: {r:?}")))?;
        let accepted = &batch.events[0];
        let expected: BTreeMap<&str, &Value> = props.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
        prop_assert_eq!(accepted.properties.len(), expected.len());

        // One export row: an id, then every value, then the event time.
        let mut line = b"id".to_vec();
        let mut scratch = Vec::new();
        for (name, value) in &accepted.properties {
            let sent = expected[name.as_str()];
            match (value, sent) {
                (Value::Double(a), Value::Double(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                (Value::DoubleArray(a), Value::DoubleArray(b)) => prop_assert_eq!(
                    a.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
                ),
                _ => prop_assert_eq!(value, sent),
            }
            line.push(b',');
            push_value(&mut line, &mut scratch, value);
        }
        line.push(b',');
        push_datetime_ms(&mut line, accepted.event_datetime_ms);
        line.push(b'\n');
        let cells = csv_round_trip(&line)?;
        prop_assert_eq!(cells.len(), accepted.properties.len() + 1);
        for ((_, value), cell) in accepted.properties.iter().zip(&cells) {
            assert_documented(cell, value)?;
            prop_assert_eq!(&cell_text(value), cell, "cell_text is the unquoted cell");
        }
        prop_assert_eq!(&cells[cells.len() - 1], &datetime_text(accepted.event_datetime_ms));

        // The text-cell backend stores `cell_text` and writes it with
        // `push_field`: the same bytes as `push_value`.
        let stored = StoredEvent::from_import(
            ServiceId::parse("svc").unwrap(),
            accepted,
            0,
            "u".into(),
            taxonomy.item_properties.keys().map(String::as_str),
        );
        let mut values = accepted.properties.values();
        for (key, text) in stored.prop_keys.iter().zip(&stored.prop_values) {
            let mut via_text = Vec::new();
            push_field(&mut via_text, text.as_bytes());
            if let Some(item_prop) = key.strip_prefix("df_items_") {
                let parsed: Vec<Json> = serde_json::from_str(text)
                    .map_err(|e| TestCaseError::fail(format!("{key} cell {text:?} is not a JSON array: {e}")))?;
                prop_assert_eq!(parsed.len(), items.len());
                for (element, item) in parsed.iter().zip(&items) {
                    match item.iter().find(|(n, _, _)| n == item_prop) {
                        Some((_, _, v)) => prop_assert_eq!(element, &element_json(v), "{} {:?}", key, v),
                        None => prop_assert_eq!(element, &Json::Null),
                    }
                }
            } else {
                let value = values.next().expect("a property per key");
                let mut direct = Vec::new();
                push_value(&mut direct, &mut Vec::new(), value);
                prop_assert_eq!(via_text, direct, "{}", key);
            }
        }
        prop_assert!(values.next().is_none());
    }

    /// The same for user properties through `validate_profiles`, which
    /// stores each value as its cell text.
    #[test]
    fn accepted_user_values_are_stored_as_their_documented_cells(
        props in typed_properties(user_prop),
    ) {
        let body = json!({"identity": {"external_id": "u"}, "request_datetime": "2026-11-25T00:00:00Z",
                          "user_properties": Json::Object(props.iter().map(|(n, j, _)| (n.clone(), j.clone())).collect())});
        let body: Json = serde_json::from_slice(body.to_string().as_bytes()).expect("JSON");
        let batch = validate_profiles(&body, &taxonomy(), false)
            .map_err(|r| TestCaseError::fail(format!("refused: {r:?}")))?;
        let stored = &batch.updates[0].properties;
        prop_assert_eq!(stored.len(), props.len());
        let mut line = b"id".to_vec();
        for (_, text) in stored {
            line.push(b',');
            push_field(&mut line, text.as_bytes());
        }
        line.push(b'\n');
        let cells = csv_round_trip(&line)?;
        for ((name, _, value), ((stored_name, _), cell)) in props.iter().zip(stored.iter().zip(&cells)) {
            prop_assert_eq!(name, stored_name);
            // The value sent, not a neighbour: its documented text.
            assert_documented(cell, value)?;
        }
    }

    // ------------------------------------------------------------ datetimes

    /// Any instant the canonical form can name: format then parse is the
    /// instant, and the text is chrono's `yyyy-MM-ddTHH:mm:ss.SSSZ`.
    #[test]
    fn canonical_datetimes_round_trip(ms in FIRST_MS..=LAST_MS) {
        let mut out = Vec::new();
        push_datetime_ms(&mut out, ms);
        let text = String::from_utf8(out).unwrap();
        prop_assert_eq!(&text, &datetime_text(ms));
        prop_assert_eq!(parse_datetime(&text), Ok(ms));
    }

    /// Every wire spelling of an instant (any offset to ±23:59 as `Z`,
    /// `+hh:mm` or `+hhmm`, 0 to 3 fraction digits) parses to it when the
    /// instant is within the years 0001..9999 in UTC and is refused
    /// otherwise; and what the import accepts, the export writes as text
    /// the import accepts again as the same instant.
    #[test]
    fn wire_datetimes_parse_and_come_back((wire, ms) in wire_datetime_any()) {
        match parse_datetime(&wire) {
            Ok(parsed) => {
                prop_assert_eq!(parsed, ms, "{}", wire);
                let mut out = Vec::new();
                push_datetime_ms(&mut out, parsed);
                let canonical = String::from_utf8(out).unwrap();
                prop_assert_eq!(parse_datetime(&canonical), Ok(parsed), "{} exported as {:?}", wire, canonical);
            }
            Err(_) => prop_assert!(!(FIRST_MS..=LAST_MS).contains(&ms), "{} refused", wire),
        }
    }

    /// Dates: parse(format(d)) == d over 0001-01-01..9999-12-31.
    #[test]
    fn dates_round_trip((text, days) in wire_date()) {
        prop_assert_eq!(parse_date_days(&text), Some(days));
        prop_assert_eq!(&date_text(days), &text);
        let mut out = Vec::new();
        push_value(&mut out, &mut Vec::new(), &Value::Date(days));
        prop_assert_eq!(String::from_utf8(out).unwrap(), text);
    }

    /// The datetime parser answers any string without panicking.
    #[test]
    fn datetime_parser_never_panics(s in prop_oneof![interesting_string(), any::<String>()]) {
        if let Ok(ms) = parse_datetime(&s) {
            prop_assert!((FIRST_MS..=LAST_MS).contains(&ms), "{:?} parsed to {}", s, ms);
        }
        let _ = parse_date_days(&s);
    }

    // ------------------------------------------------------------ look-back

    /// A from-date the look-back accepts stays accepted when it moves later
    /// (up to today) or the look-back grows (0 = unlimited, the longest); a
    /// refused one stays refused when it moves earlier or the look-back
    /// shrinks. The earliest date accepted is exactly today − days, and
    /// every refusal is `exceed_date_range_limit`. Any today chrono has.
    #[test]
    fn lookback_is_monotone(
        today in any_date(),
        back_a in 0u64..80_000,
        back_b in 0u64..80_000,
        days_a in lookback_days(),
        days_b in lookback_days(),
    ) {
        let back = |n: u64| today.checked_sub_days(Days::new(n)).unwrap_or(NaiveDate::MIN);
        let (earlier, later) = (back(back_a.max(back_b)), back(back_a.min(back_b)));
        let accepts = |from: NaiveDate, days: u32| -> Result<bool, TestCaseError> {
            match check_lookback(from, today, days) {
                Ok(()) => Ok(true),
                Err(f) => {
                    prop_assert_eq!(f.outcome, ExportOutcome::ExceedDateRangeLimit);
                    Ok(false)
                }
            }
        };
        let reach = |days: u32| if days == 0 { u64::MAX } else { u64::from(days) };
        let (short, long) = if reach(days_a) <= reach(days_b) { (days_a, days_b) } else { (days_b, days_a) };
        for days in [short, long] {
            if accepts(earlier, days)? {
                prop_assert!(accepts(later, days)?, "{} accepted, later {} refused (today {}, {} days)",
                    earlier, later, today, days);
            }
        }
        for from in [earlier, later] {
            if accepts(from, short)? {
                prop_assert!(accepts(from, long)?, "{} accepted with {} days, refused with {}", from, short, long);
            }
            for days in [short, long] {
                let edge = today.checked_sub_days(Days::new(u64::from(days)));
                let expected = days == 0 || edge.is_none_or(|edge| from >= edge);
                prop_assert_eq!(accepts(from, days)?, expected, "{} (today {}, {} days)", from, today, days);
            }
        }
    }

    /// The export's date range has no length limit (SPEC §2.2: only the
    /// look-back refuses old dates): any from ≤ to is valid, any from > to
    /// is `invalid_parameter`, whatever the length.
    #[test]
    fn date_range_validity_depends_only_on_order((from, _) in wire_date(), (to, _) in wire_date()) {
        let body = json!({"events_condition_type": "all", "from_date": from, "to_date": to});
        match EventExportRequest::parse(&body) {
            Ok(r) => prop_assert!(r.from_date <= r.to_date),
            Err(f) => {
                prop_assert!(from > to, "{} .. {} refused: {:?}", from, to, f);
                prop_assert_eq!(f.outcome, ExportOutcome::InvalidParameter);
            }
        }
    }
}

/// Any date chrono has, its first and last often.
fn any_date() -> impl Strategy<Value = NaiveDate> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let (min, max) = (
        NaiveDate::MIN.signed_duration_since(epoch).num_days(),
        NaiveDate::MAX.signed_duration_since(epoch).num_days(),
    );
    prop_oneof![
        3 => min..=max,
        1 => min..min + 400,
        1 => max - 400..=max,
        2 => i64::from(first_day())..=i64::from(last_day()),
    ]
    .prop_map(move |days| epoch + chrono::Duration::days(days))
}

fn lookback_days() -> impl Strategy<Value = u32> {
    prop_oneof![
        1 => Just(0u32),
        3 => 1u32..=400,
        1 => any::<u32>(),
    ]
}

// ---------------------------------------------------------------- parsers never panic

/// An export failure from body checking is `invalid_parameter` with a
/// detail, and its body is SPEC §2.2's.
fn assert_export_failure(f: &ExportFailure, allowed: &[ExportOutcome]) -> Result<(), TestCaseError> {
    prop_assert!(allowed.contains(&f.outcome), "{:?}", f);
    prop_assert!(f.detail.as_deref().is_some_and(|d| !d.is_empty()), "{:?}", f);
    let body = f.body();
    prop_assert_eq!(&body["result"], "fail");
    prop_assert_eq!(&body["message"], f.outcome.message());
    Ok(())
}

/// An import refusal has one of the codes `allowed`, at least one reason,
/// and SPEC §4's response body.
fn assert_import_rejection(r: &ImportRejection, allowed: &[ImportCode]) -> Result<(), TestCaseError> {
    prop_assert!(allowed.contains(&r.code), "{:?}", r);
    prop_assert!(!r.problems.is_empty(), "{:?}", r);
    prop_assert!(r.problems.iter().all(|p| !p.reason.is_empty()), "{:?}", r);
    let body = response_body(r.code, &r.problems);
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    prop_assert_eq!(keys, vec!["status", "code", "message", "data"]);
    prop_assert_eq!(&body["status"], false);
    prop_assert_eq!(&body["code"], r.code.code());
    prop_assert_eq!(&body["message"], r.code.message());
    Ok(())
}

/// Runs every body parser of both APIs on `json`.
fn every_parser_answers(json: &Json) -> Result<(), TestCaseError> {
    let taxonomy = taxonomy();
    let invalid = [ExportOutcome::InvalidParameter];
    match EventExportRequest::parse(json) {
        Ok(request) => {
            prop_assert!(request.from_date <= request.to_date);
            match request.plan(&taxonomy) {
                Ok(plan) => {
                    let headers: Vec<&str> = plan.columns.iter().map(|c| c.header.as_str()).collect();
                    let mut sorted = headers.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    prop_assert_eq!(headers, sorted, "columns unique and in byte order");
                }
                Err(f) => assert_export_failure(&f, &invalid)?,
            }
        }
        Err(f) => assert_export_failure(&f, &invalid)?,
    }
    match plan_profile_export(json, &taxonomy) {
        Ok(plan) => {
            let headers = plan.headers();
            let mut sorted = headers.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(headers, sorted);
        }
        Err(f) => assert_export_failure(&f, &invalid)?,
    }
    use ImportCode::{BadRequest, TooManyEvents, TooManyUserProfiles, ValidationFailure};
    for auto in [false, true] {
        match validate_events(json, &taxonomy, auto) {
            Ok(batch) => {
                prop_assert!((1..=100).contains(&batch.events.len()));
                prop_assert!(batch.events.iter().map(|e| e.items.len()).sum::<usize>() <= 100);
            }
            Err(r) => assert_import_rejection(&r, &[BadRequest, ValidationFailure, TooManyEvents])?,
        }
        match validate_profiles(json, &taxonomy, auto) {
            Ok(batch) => prop_assert!((1..=100).contains(&batch.updates.len())),
            Err(r) => assert_import_rejection(&r, &[BadRequest, ValidationFailure, TooManyUserProfiles])?,
        }
    }
    if let Err(r) = validate_identity(json) {
        assert_import_rejection(&r, &[BadRequest, ValidationFailure])?;
    }
    if let Err(r) = validate_delete(json) {
        assert_import_rejection(&r, &[BadRequest, ValidationFailure])?;
    }
    Ok(())
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
}

/// Any valid body of any endpoint, then mutated.
fn near_valid_body() -> impl Strategy<Value = Json> {
    near_valid(prop_oneof![
        event_export_body(today()).boxed(),
        profile_export_body(vec!["aud001".into()]).boxed(),
        events_body(today()).boxed(),
        identities_body().boxed(),
        delete_body().boxed(),
        profile_body().boxed(),
    ])
}

proptest! {
    #![proptest_config(config(2048))]

    /// Any JSON value: every parser gives `Ok` or a documented failure.
    #[test]
    fn body_parsers_answer_any_json(json in any_json()) {
        every_parser_answers(&json)?;
    }

    /// Valid bodies with 1 to 3 mutations (a field removed, replaced by any
    /// JSON, added; a list grown past 100).
    #[test]
    fn body_parsers_answer_near_valid_bodies(json in near_valid_body()) {
        every_parser_answers(&json)?;
    }

    /// Any bytes, and JSON texts cut short or with a byte changed, as the
    /// server reads them (`serde_json::from_slice`).
    #[test]
    fn body_parsers_answer_any_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            near_valid_body().prop_flat_map(|j| damaged(j.to_string())),
        ],
    ) {
        if let Ok(json) = serde_json::from_slice::<Json>(&bytes) {
            every_parser_answers(&json)?;
        }
    }

    /// Valid bodies are accepted (the generators are right, so the
    /// near-valid ones start from valid ground).
    #[test]
    fn valid_bodies_are_accepted(
        export in event_export_body(today()),
        profile_export in profile_export_body(vec!["aud001".into()]),
        events in events_body(today()),
        identities in identities_body(),
        delete in delete_body(),
        profiles in profile_body(),
    ) {
        let t = taxonomy();
        prop_assert!(EventExportRequest::parse(&export).and_then(|r| r.plan(&t)).is_ok(), "{}", export);
        prop_assert!(plan_profile_export(&profile_export, &t).is_ok(), "{}", profile_export);
        prop_assert!(validate_events(&events, &t, false).is_ok(), "{}", events);
        prop_assert!(validate_identity(&identities).is_ok(), "{}", identities);
        prop_assert!(validate_delete(&delete).is_ok(), "{}", delete);
        prop_assert!(validate_profiles(&profiles, &t, false).is_ok(), "{}", profiles);
    }
}

/// The generators' range of datetimes is the contract's, and chrono's.
#[test]
fn the_datetime_range_is_the_years_1_to_9999() {
    use fineport_contract::time::{FIRST_DATETIME_MS, LAST_DATETIME_MS};
    let first = NaiveDate::from_ymd_opt(1, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    let last = NaiveDate::from_ymd_opt(9999, 12, 31)
        .unwrap()
        .and_hms_milli_opt(23, 59, 59, 999)
        .unwrap();
    assert_eq!(
        (FIRST_MS, LAST_MS),
        (first.and_utc().timestamp_millis(), last.and_utc().timestamp_millis())
    );
    assert_eq!((FIRST_MS, LAST_MS), (FIRST_DATETIME_MS, LAST_DATETIME_MS));
}

/// The property type list the generators cover is the taxonomy's.
#[test]
fn the_generators_cover_every_property_type() {
    let t = taxonomy();
    for ty in PropertyType::ALL {
        assert_eq!(t.event_properties.get(&event_prop(ty)), Some(&ty));
        assert_eq!(t.item_properties.get(&item_prop(ty)), Some(&ty));
        assert_eq!(t.user_properties.get(&user_prop(ty)), Some(&ty));
    }
}
