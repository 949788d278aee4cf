//! Generators shared by the property tests of the contract
//! (`crates/contract/tests/properties.rs`) and of the server over real
//! sockets (`crates/server/tests/properties.rs`, which includes this file by
//! path): one taxonomy with a property of every type in every scope, typed
//! values with the text they must come back as, arbitrary JSON, valid
//! bodies of every endpoint, and mutations that make them nearly valid.
#![allow(dead_code)]

use chrono::{DateTime, NaiveDate};
use fineport_contract::taxonomy::Taxonomy;
use fineport_contract::time::{date_to_days, days_to_date};
use fineport_contract::types::{PropertyType, Value};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{json, Map, Value as Json};

/// 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the instants a
/// canonical `yyyy-MM-ddTHH:mm:ss.SSSZ` can name (the wire date's years are
/// 0001 to 9999).
pub const FIRST_MS: i64 = -62_135_596_800_000;
pub const LAST_MS: i64 = 253_402_300_799_999;
/// The largest offset the wire accepts, in minutes (`±23:59`).
pub const MAX_OFFSET_MIN: i32 = 23 * 60 + 59;

/// Days since 1970-01-01 of 0001-01-01 and of 9999-12-31.
pub fn first_day() -> i32 {
    date_to_days(NaiveDate::from_ymd_opt(1, 1, 1).unwrap())
}
pub fn last_day() -> i32 {
    date_to_days(NaiveDate::from_ymd_opt(9999, 12, 31).unwrap())
}

// ---------------------------------------------------------------- taxonomy

/// The name part of a property of type `ty` (`ev_<suffix>`, `it_…`, `up_…`).
pub fn suffix(ty: PropertyType) -> &'static str {
    match ty {
        PropertyType::String => "string",
        PropertyType::Long => "long",
        PropertyType::Double => "double",
        PropertyType::Boolean => "boolean",
        PropertyType::Datetime => "datetime",
        PropertyType::Date => "date",
        PropertyType::StringArray => "strings",
        PropertyType::LongArray => "longs",
        PropertyType::DoubleArray => "doubles",
        PropertyType::Items => "items",
    }
}

pub fn event_prop(ty: PropertyType) -> String {
    format!("ev_{}", suffix(ty))
}
pub fn item_prop(ty: PropertyType) -> String {
    format!("it_{}", suffix(ty))
}
pub fn user_prop(ty: PropertyType) -> String {
    format!("up_{}", suffix(ty))
}

pub const CUSTOM_EVENT: &str = "custom_event";

/// The standard taxonomy plus one event, item and user property of every type.
pub fn taxonomy() -> Taxonomy {
    let mut t = Taxonomy::standard();
    t.events.insert(CUSTOM_EVENT.into());
    for ty in PropertyType::ALL {
        t.event_properties.insert(event_prop(ty), ty);
        t.item_properties.insert(item_prop(ty), ty);
        t.user_properties.insert(user_prop(ty), ty);
    }
    t
}

/// The additions of [`taxonomy`] as the admin API takes them.
pub fn taxonomy_doc() -> Json {
    let defs = |name: fn(PropertyType) -> String| {
        PropertyType::ALL
            .iter()
            .map(|&ty| json!({"name": name(ty), "type": ty.as_str()}))
            .collect::<Vec<_>>()
    };
    json!({"events": [CUSTOM_EVENT], "event_properties": defs(event_prop),
           "item_properties": defs(item_prop), "user_properties": defs(user_prop)})
}

fn event_names() -> Vec<String> {
    taxonomy().events.into_iter().collect()
}

/// Every name `properties` of the event export can select.
fn event_export_columns() -> Vec<String> {
    let t = taxonomy();
    t.event_properties
        .keys()
        .filter(|n| n.as_str() != "df_items")
        .cloned()
        .chain(t.item_properties.keys().map(|n| format!("df_items_{n}")))
        .chain(std::iter::once("df_items".to_string()))
        .collect()
}

fn user_property_names() -> Vec<String> {
    taxonomy().user_properties.into_keys().collect()
}

// ---------------------------------------------------------------- scalars

/// Characters that CSV, JSON and the stores treat specially, and any other.
pub fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => select(vec![
            ',', '"', '\r', '\n', '\t', ' ', '\\', '/', '\'', ';', '0', '7', 'a', 'Z', '한', '글', '😀',
            '\u{1}', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}', '\u{85}', '\u{a0}', '\u{feff}', '\u{2028}', '\u{fffd}',
        ]),
        1 => any::<char>(),
    ]
}

/// Strings with commas, quotes, CR/LF, control characters, Unicode,
/// leading zeros and the empty string; never NUL (refused at import).
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => "0[0-9]{0,6}",
        6 => prop::collection::vec(tricky_char(), 0..16)
            .prop_map(|c| c.into_iter().map(|c| if c == '\0' { '␀' } else { c }).collect()),
    ]
}

pub fn long() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => select(vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX, 9_007_199_254_740_993]),
        3 => any::<i64>(),
    ]
}

/// Any finite double: tiny, huge, subnormal, negative zero, whole, decimal.
pub fn finite_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64;
    prop_oneof![
        3 => f64::POSITIVE | f64::NEGATIVE | f64::NORMAL | f64::SUBNORMAL | f64::ZERO,
        1 => select(vec![
            0.0, -0.0, 0.1, 1.5, 15000.0, 1e15, 1e16, 1e17, 1e21, 1e22, 1e-7, 1.5e-7, 123_456_789.125,
            9_007_199_254_740_993.0, f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, -5e-324, f64::EPSILON,
        ]),
        1 => (-40i32..40, any::<bool>()).prop_map(|(e, neg)| if neg { -(10f64.powi(e)) } else { 10f64.powi(e) }),
        1 => any::<i64>().prop_map(|n| n as f64),
    ]
}

/// A wire datetime the import accepts and the UTC milliseconds it names:
/// as [`wire_datetime_any`], at offset 0 where the offset would take the
/// instant out of the years 0001 to 9999 in UTC.
pub fn wire_datetime() -> impl Strategy<Value = (String, i64)> {
    wire_datetime_parts().prop_map(|(local_ms, offset_min, spelling, frac_digits)| {
        let utc = local_ms - i64::from(offset_min) * 60_000;
        let offset_min = if (FIRST_MS..=LAST_MS).contains(&utc) {
            offset_min
        } else {
            0
        };
        wire_datetime_local(local_ms, offset_min, spelling, frac_digits)
    })
}

/// A wire datetime and the UTC milliseconds it names: any local time of the
/// years 0001 to 9999 at any offset the wire can spell (±23:59, as `Z`,
/// `+hh:mm` or `+hhmm`), with 0 to 3 fraction digits. Times near both ends
/// of that range are drawn often; with an offset, some of them fall
/// outside those years in UTC.
pub fn wire_datetime_any() -> impl Strategy<Value = (String, i64)> {
    wire_datetime_parts().prop_map(|(local_ms, offset_min, spelling, frac_digits)| {
        wire_datetime_local(local_ms, offset_min, spelling, frac_digits)
    })
}

/// (local time in ms as if UTC, offset in minutes, spelling, fraction digits).
fn wire_datetime_parts() -> impl Strategy<Value = (i64, i32, u8, u32)> {
    let day = 86_400_000;
    let local = prop_oneof![
        3 => FIRST_MS..=LAST_MS,
        1 => FIRST_MS..FIRST_MS + day,
        1 => LAST_MS - day..=LAST_MS,
        2 => 1_700_000_000_000i64..1_900_000_000_000,
    ];
    let offset = prop_oneof![
        2 => Just(0),
        1 => select(vec![540, -300, 330, 345, -570, 1439, -1439, 60, -60]),
        2 => -MAX_OFFSET_MIN..=MAX_OFFSET_MIN,
    ];
    (local, offset, 0u8..3, 0u32..=3)
}

/// The local time `local_ms` (ms since the epoch as if it were UTC, within
/// the years 0001 to 9999) at `offset_min`, with `frac_digits` fraction
/// digits (truncated), and the UTC ms the text names.
pub fn wire_datetime_local(local_ms: i64, offset_min: i32, spelling: u8, frac_digits: u32) -> (String, i64) {
    let unit = 10i64.pow(3 - frac_digits);
    let local_ms = local_ms - local_ms.rem_euclid(1000) % unit;
    wire_datetime_at(
        local_ms - i64::from(offset_min) * 60_000,
        offset_min,
        spelling,
        frac_digits,
    )
    .expect("a local time of the years 0001 to 9999")
}

/// `ms` written at `offset_min` with `frac_digits` fraction digits
/// (truncated: the returned ms is what the text names); `spelling` 0 is
/// `Z` at offset 0 and `+hh:mm` elsewhere, 1 is `+hh:mm`, 2 is `+hhmm`.
pub fn wire_datetime_at(ms: i64, offset_min: i32, spelling: u8, frac_digits: u32) -> Option<(String, i64)> {
    let unit = 10i64.pow(3 - frac_digits);
    let local_ms = ms + i64::from(offset_min) * 60_000;
    let local_ms = local_ms - local_ms.rem_euclid(1000) % unit;
    if !(FIRST_MS..=LAST_MS).contains(&local_ms) {
        return None;
    }
    let ms = local_ms - i64::from(offset_min) * 60_000;
    let local = DateTime::from_timestamp_millis(local_ms)?.naive_utc();
    let mut s = local.format("%Y-%m-%dT%H:%M:%S").to_string();
    if frac_digits > 0 {
        let frac = local_ms.rem_euclid(1000) / unit;
        s.push_str(&format!(".{frac:0width$}", width = frac_digits as usize));
    }
    let (sign, abs) = if offset_min < 0 {
        ('-', -offset_min)
    } else {
        ('+', offset_min)
    };
    match spelling {
        0 if offset_min == 0 => s.push('Z'),
        0 | 1 => s.push_str(&format!("{sign}{:02}:{:02}", abs / 60, abs % 60)),
        _ => s.push_str(&format!("{sign}{:02}{:02}", abs / 60, abs % 60)),
    }
    Some((s, ms))
}

/// A wire date (`yyyy-MM-dd`, years 0001 to 9999) and its days since 1970-01-01.
pub fn wire_date() -> impl Strategy<Value = (String, i32)> {
    prop_oneof![
        3 => first_day()..=last_day(),
        1 => first_day()..first_day() + 400,
        1 => last_day() - 400..=last_day(),
    ]
    .prop_map(|days| (days_to_date(days).unwrap().format("%Y-%m-%d").to_string(), days))
}

/// A JSON value of type `ty` that the import accepts, and the typed value
/// it must be stored as.
pub fn typed_value(ty: PropertyType) -> BoxedStrategy<(Json, Value)> {
    match ty {
        PropertyType::String => text().prop_map(|s| (json!(s), Value::String(s))).boxed(),
        PropertyType::Long => long().prop_map(|n| (json!(n), Value::Long(n))).boxed(),
        PropertyType::Double => double_json().prop_map(|(j, f)| (j, Value::Double(f))).boxed(),
        PropertyType::Boolean => any::<bool>().prop_map(|b| (json!(b), Value::Boolean(b))).boxed(),
        PropertyType::Datetime => wire_datetime()
            .prop_map(|(s, ms)| (json!(s), Value::Datetime(ms)))
            .boxed(),
        PropertyType::Date => wire_date().prop_map(|(s, d)| (json!(s), Value::Date(d))).boxed(),
        PropertyType::StringArray => prop::collection::vec(text(), 0..4)
            .prop_map(|v| (json!(v), Value::StringArray(v)))
            .boxed(),
        PropertyType::LongArray => prop::collection::vec(long(), 0..4)
            .prop_map(|v| (json!(v), Value::LongArray(v)))
            .boxed(),
        PropertyType::DoubleArray => prop::collection::vec(double_json(), 0..4)
            .prop_map(|v| {
                let (json, values): (Vec<Json>, Vec<f64>) = v.into_iter().unzip();
                (Json::Array(json), Value::DoubleArray(values))
            })
            .boxed(),
        PropertyType::Items => unreachable!("df_items is not a value type"),
    }
}

/// A JSON number a Double accepts (integers too) and the double it is.
fn double_json() -> impl Strategy<Value = (Json, f64)> {
    prop_oneof![
        4 => finite_f64().prop_map(|f| (Json::from(f), f)),
        1 => any::<i64>().prop_map(|n| (json!(n), n as f64)),
        1 => any::<u64>().prop_map(|n| (json!(n), n as f64)),
    ]
}

/// A property as sent (name, JSON) and the typed value it must be stored as.
pub type Typed = (String, Json, Value);

/// An object of some registered properties named by `name`, with typed values.
pub fn typed_properties(name: fn(PropertyType) -> String) -> impl Strategy<Value = Vec<Typed>> {
    let each: Vec<_> = PropertyType::ALL
        .iter()
        .map(|&ty| prop::option::weighted(0.7, typed_value(ty)).prop_map(move |v| v.map(|(j, v)| (name(ty), j, v))))
        .collect();
    each.prop_map(|v| v.into_iter().flatten().collect())
}

fn object(props: &[Typed]) -> Json {
    Json::Object(props.iter().map(|(n, j, _)| (n.clone(), j.clone())).collect())
}

// ---------------------------------------------------------------- arbitrary JSON

/// Every field name of every body, so that arbitrary JSON goes deep.
pub fn known_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "events",
        "events_condition_type",
        "properties",
        "properties_condition_type",
        "from_date",
        "to_date",
        "audience",
        "identities",
        "identities_condition_type",
        "common",
        "identity",
        "event_log_id",
        "event_name",
        "event_datetime",
        "items",
        "external_id",
        "email",
        "phone_no",
        "kakao_user_id",
        "line_user_id",
        "df_unified_id",
        "user_properties",
        "request_datetime",
        "df_items",
        "Event_Name",
        "newName",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t = taxonomy();
    keys.extend(t.event_properties.keys().cloned());
    keys.extend(t.item_properties.keys().cloned());
    keys.extend(t.user_properties.keys().cloned());
    keys
}

/// Strings that mean something somewhere: enum values, names, dates,
/// datetimes, UUIDs in several forms, and tricky text.
pub fn interesting_string() -> impl Strategy<Value = String> {
    let mut words: Vec<String> = [
        "all",
        "include",
        "exclude",
        "ALL",
        "df_external_id",
        "df_items",
        "df_items_",
        "2026-11-25",
        "2026-10-26",
        "2026-10-25",
        "2026-02-29",
        "0000-01-01",
        "9999-12-31",
        "2026-11-25T00:00:00Z",
        "2026-11-25T00:00:00.1234Z",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59.999-23:59",
        "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f",
        "0B4E6F0C1F3A4C339A535C8F1B2D3E4F",
        "{0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f}",
        "urn:uuid:0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f",
        "aud001",
        "nosuch",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    words.extend(known_keys());
    words.extend(event_names());
    prop_oneof![
        3 => select(words),
        1 => wire_datetime_any().prop_map(|(s, _)| s),
        1 => wire_date().prop_map(|(s, _)| s),
        1 => "[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,4})?(Z|[+-][0-9]{2}:?[0-9]{2})?)?",
        1 => "[a-zA-Z][a-zA-Z0-9_]{0,12}",
        3 => text(),
        1 => any::<String>(),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(known_keys()), 1 => interesting_string()]
}

/// Any JSON value, nested up to 4 levels.
pub fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        long().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        finite_f64().prop_map(Json::from),
        interesting_string().prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------- valid bodies

/// A date from 45 days before `today` to 5 days after it.
pub fn date_near(today: NaiveDate) -> impl Strategy<Value = String> {
    (-45i64..=5).prop_map(move |d| (today + chrono::Duration::days(d)).format("%Y-%m-%d").to_string())
}

/// `<list>_condition_type` with its list, drawn from `names`.
fn selection(list: &'static str, names: Vec<String>, optional: bool) -> impl Strategy<Value = Map<String, Json>> {
    let n = names.len();
    let condition = if optional {
        select(vec![None, Some("all"), Some("include"), Some("exclude")]).boxed()
    } else {
        select(vec![Some("all"), Some("include"), Some("exclude")]).boxed()
    };
    (condition, subsequence(names, 1..=n.min(4)), any::<bool>()).prop_map(move |(kind, chosen, list_with_all)| {
        let mut m = Map::new();
        if let Some(kind) = kind {
            m.insert(format!("{list}_condition_type"), json!(kind));
            if kind != "all" || list_with_all {
                m.insert(list.to_string(), json!(chosen));
            }
        }
        m
    })
}

/// A valid `/api/v1/export/event` body with dates near `today`.
pub fn event_export_body(today: NaiveDate) -> impl Strategy<Value = Json> {
    (
        selection("events", event_names(), false),
        selection("properties", event_export_columns(), true),
        date_near(today),
        date_near(today),
    )
        .prop_map(|(mut events, properties, a, b)| {
            events.extend(properties);
            let (from, to) = if a <= b { (a, b) } else { (b, a) };
            events.insert("from_date".into(), json!(from));
            events.insert("to_date".into(), json!(to));
            Json::Object(events)
        })
}

/// A valid `/api/v1/export/userprofile` body; `audiences` are ids that exist.
pub fn profile_export_body(audiences: Vec<String>) -> impl Strategy<Value = Json> {
    let audience = if audiences.is_empty() {
        Just(None).boxed()
    } else {
        prop::option::of(select(audiences)).boxed()
    };
    (
        selection("properties", user_property_names(), false),
        selection("identities", vec!["df_external_id".to_string()], true),
        audience,
    )
        .prop_map(|(mut body, identities, audience)| {
            body.extend(identities);
            if let Some(a) = audience {
                body.insert("audience".into(), json!(a));
            }
            Json::Object(body)
        })
}

/// A valid identity from small pools, so that requests meet the same users.
pub fn identity() -> impl Strategy<Value = Json> {
    let pool = |kind: &'static str| prop::option::of((0u8..4).prop_map(move |i| format!("{kind}-{i}")));
    (
        pool("ext"),
        pool("mail"),
        pool("phone"),
        prop::option::weighted(
            0.15,
            select(vec![
                "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f",
                "1b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f",
            ]),
        ),
    )
        .prop_map(|(ext, email, phone, uid)| {
            let mut m = Map::new();
            if let Some(uid) = uid {
                m.insert("df_unified_id".into(), json!(uid));
                m.insert("external_id".into(), json!(ext.unwrap_or_else(|| "ext-0".into())));
                return Json::Object(m);
            }
            for (k, v) in [("external_id", ext.clone()), ("email", email), ("phone_no", phone)] {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            }
            if m.is_empty() {
                m.insert("external_id".into(), json!("ext-0"));
            }
            Json::Object(m)
        })
}

/// One valid event on a day near `today`, with typed properties and items.
pub fn event(today: NaiveDate) -> impl Strategy<Value = Json> {
    let start = today.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
    (
        any::<u128>(),
        select(event_names()),
        (-40 * 86_400_000i64..3 * 86_400_000, -600i32..=600).prop_filter_map("in range", move |(d, off)| {
            wire_datetime_at(start + d, off, 1, 3).map(|(s, _)| s)
        }),
        typed_properties(event_prop),
        prop::collection::vec(typed_properties(item_prop), 0..3),
    )
        .prop_map(|(id, name, datetime, props, items)| {
            let mut e = json!({"event_log_id": fineport_contract::Uuid::from_u128(id).to_string(),
                               "event_name": name, "event_datetime": datetime, "properties": object(&props)});
            if !items.is_empty() {
                e["items"] = Json::Array(items.iter().map(|i| object(i)).collect());
            }
            e
        })
}

/// A valid `/api/v1/events` body.
pub fn events_body(today: NaiveDate) -> impl Strategy<Value = Json> {
    (identity(), prop::collection::vec(event(today), 1..4))
        .prop_map(|(identity, events)| json!({"common": {"identity": identity}, "events": events}))
}

fn request_datetime() -> impl Strategy<Value = String> {
    wire_datetime().prop_map(|(s, _)| s)
}

/// A valid `/api/v1/identities` body.
pub fn identities_body() -> impl Strategy<Value = Json> {
    (identity(), request_datetime()).prop_map(|(i, t)| json!({"identity": i, "request_datetime": t}))
}

/// A valid `/api/v1/identities/delete` body.
pub fn delete_body() -> impl Strategy<Value = Json> {
    ((0u8..4), request_datetime())
        .prop_map(|(i, t)| json!({"identity": {"external_id": format!("ext-{i}")}, "request_datetime": t}))
}

/// A valid `/api/v1/user-profile` body: one object or a list of 1 to 3.
pub fn profile_body() -> impl Strategy<Value = Json> {
    let one = || {
        (identity(), typed_properties(user_prop), request_datetime())
            .prop_map(|(i, p, t)| json!({"identity": i, "user_properties": object(&p), "request_datetime": t}))
    };
    prop_oneof![one(), prop::collection::vec(one(), 1..4).prop_map(Json::Array)]
}

// ---------------------------------------------------------------- mutations

/// One change to a JSON document, at the node with this pre-order index
/// (modulo the node count).
#[derive(Debug, Clone)]
pub enum Mutation {
    Remove(usize),
    Replace(usize, Json),
    Insert(usize, String, Json),
    /// An array grows to this many elements (copies of its first): the
    /// limits of 100 events, items and profiles.
    Grow(usize, usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => any::<usize>().prop_map(Mutation::Remove),
        4 => (any::<usize>(), any_json()).prop_map(|(i, j)| Mutation::Replace(i, j)),
        2 => (any::<usize>(), key(), any_json()).prop_map(|(i, k, j)| Mutation::Insert(i, k, j)),
        1 => (any::<usize>(), select(vec![99usize, 100, 101, 150])).prop_map(|(i, n)| Mutation::Grow(i, n)),
    ]
}

/// `body` with 1 to 3 mutations applied.
pub fn near_valid(body: impl Strategy<Value = Json>) -> impl Strategy<Value = Json> {
    (body, prop::collection::vec(mutation(), 1..4)).prop_map(|(mut body, mutations)| {
        for m in &mutations {
            apply(&mut body, m);
        }
        body
    })
}

fn count(json: &Json) -> usize {
    1 + match json {
        Json::Array(a) => a.iter().map(count).sum(),
        Json::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The node at pre-order index `i`, with its parent's key or index.
fn node_mut(json: &mut Json, mut i: usize) -> &mut Json {
    fn walk<'a>(json: &'a mut Json, i: &mut usize) -> Option<&'a mut Json> {
        if *i == 0 {
            return Some(json);
        }
        *i -= 1;
        let children: Vec<&mut Json> = match json {
            Json::Array(a) => a.iter_mut().collect(),
            Json::Object(o) => o.values_mut().collect(),
            _ => return None,
        };
        for child in children {
            let n = count(child);
            if *i < n {
                return walk(child, i);
            }
            *i -= n;
        }
        None
    }
    walk(json, &mut i).expect("index within the count")
}

pub fn apply(body: &mut Json, m: &Mutation) {
    let n = count(body);
    match m {
        Mutation::Replace(i, j) => *node_mut(body, i % n) = j.clone(),
        Mutation::Insert(i, k, j) => match node_mut(body, i % n) {
            Json::Object(o) => {
                o.insert(k.clone(), j.clone());
            }
            Json::Array(a) => a.push(j.clone()),
            other => *other = json!({ k.clone(): j.clone() }),
        },
        Mutation::Grow(i, len) => {
            // The (i mod k)-th of the k non-empty arrays, in pre-order.
            let arrays: Vec<usize> = (0..n)
                .filter(|&at| node_mut(body, at).as_array().is_some_and(|a| !a.is_empty()))
                .collect();
            if arrays.is_empty() {
                return;
            }
            if let Json::Array(a) = node_mut(body, arrays[i % arrays.len()]) {
                let first = a[0].clone();
                a.resize(*len, first);
            }
        }
        Mutation::Remove(i) => {
            // Remove a child of the node at `i`: its last key or element.
            match node_mut(body, i % n) {
                Json::Object(o) => {
                    let last = o.keys().next_back().cloned();
                    if let Some(k) = last {
                        o.remove(&k);
                    }
                }
                Json::Array(a) => {
                    a.pop();
                }
                other => *other = Json::Null,
            }
        }
    }
}

/// Bytes derived from a JSON text: cut short, or with one byte changed.
pub fn damaged(text: String) -> impl Strategy<Value = Vec<u8>> {
    let len = text.len();
    (any::<prop::sample::Index>(), any::<u8>(), any::<bool>()).prop_map(move |(at, byte, cut)| {
        let mut bytes = text.clone().into_bytes();
        if len == 0 {
            return bytes;
        }
        let at = at.index(len);
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
        bytes
    })
}
