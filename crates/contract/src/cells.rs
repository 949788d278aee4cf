//! An event as stored by a backend that keeps property values as text
//! (the ClickHouse cluster backend): every system value of the event
//! export (SPEC §2.3) plus its properties as canonical CSV cell text.
//!
//! The cells are rendered once, at import, by the same encoder the DuckDB
//! backend uses when it exports, so that an export which writes each cell
//! with [`crate::csv::push_field`] is byte-identical to DuckDB's:
//! - an event property is [`crate::profile::cell_text`] of its value (the
//!   unquoted CSV cell: `1.5`, `15000.0`, `true`, `2026-…Z`, `["a","b"]`);
//! - for an event with items, each registered item property `p` becomes a
//!   `df_items_<p>` entry holding a compact JSON array with one element per
//!   item, `null` where an item lacks it (DuckDB's list column rendered as
//!   a cell); an event without items has no such entries.
//!
//! A key an event lacks is exported as an empty cell, as DuckDB writes a
//! NULL. That covers properties registered after the event was stored too.

use crate::csv::push_json_scalar;
use crate::import::{EventInput, API_VERSION, PLATFORM_HTTP_API};
use crate::profile::push_cell_text;
use crate::taxonomy::ITEMS_COLUMN_PREFIX;
use crate::types::Value;
use crate::ServiceId;

/// One stored event of a text-cell backend. Times are UTC milliseconds
/// since the epoch; `prop_keys[i]` names `prop_values[i]` (same length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub service_id: ServiceId,
    /// `df_correction_datetime` ([`EventInput::correction_ms`]).
    pub correction_ms: i64,
    /// `df_event_log_id`: the canonical lowercase hyphenated UUID text, so
    /// that its byte order is the export's tie-break order.
    pub event_log_id: String,
    /// `df_server_datetime`: when the request was received.
    pub server_ms: i64,
    /// `df_event_datetime`: the client's time.
    pub event_ms: i64,
    pub unified_id: String,
    pub event_name: String,
    /// `df_api_version` ([`API_VERSION`]).
    pub api_version: String,
    /// `df_platform` ([`PLATFORM_HTTP_API`] for the Import API).
    pub platform: String,
    /// Event property names, then `df_items_<p>` names.
    pub prop_keys: Vec<String>,
    /// The unquoted CSV cell text of each key (see the module doc).
    pub prop_values: Vec<String>,
    /// Items the event carried (at most 100 per request).
    pub item_count: u16,
}

impl StoredEvent {
    /// Builds the stored form of a validated Import API event received at
    /// `received_at_ms` and resolved to `unified_id`. `item_properties` are
    /// the service's registered item property names after this request's
    /// registrations (every name the items can hold); each becomes one
    /// `df_items_<p>` entry when the event has items.
    pub fn from_import<'a>(
        service_id: ServiceId,
        event: &'a EventInput,
        received_at_ms: i64,
        unified_id: String,
        item_properties: impl IntoIterator<Item = &'a str>,
    ) -> StoredEvent {
        let (mut prop_keys, mut prop_values) = (Vec::new(), Vec::new());
        let mut text = Vec::new();
        for cell in import_cells(event, item_properties) {
            text.clear();
            cell.push_key(&mut text);
            prop_keys.push(String::from_utf8_lossy(&text).into_owned());
            text.clear();
            cell.push_text(&mut text);
            prop_values.push(String::from_utf8_lossy(&text).into_owned());
        }
        StoredEvent {
            service_id,
            correction_ms: event.correction_ms(received_at_ms),
            event_log_id: event.event_log_id.hyphenated().to_string(),
            server_ms: received_at_ms,
            event_ms: event.event_datetime_ms,
            unified_id,
            event_name: event.event_name.clone(),
            api_version: API_VERSION.to_string(),
            platform: PLATFORM_HTTP_API.to_string(),
            prop_keys,
            prop_values,
            item_count: u16::try_from(event.items.len()).unwrap_or(u16::MAX),
        }
    }
}

/// One property cell of an imported event, as [`import_cells`] lists them.
#[derive(Debug, Clone, Copy)]
pub enum ImportCell<'a> {
    /// An event property: its name and value.
    Property(&'a str, &'a Value),
    /// The `df_items_<name>` cell of item property `name` of this event.
    Items(&'a EventInput, &'a str),
}

impl ImportCell<'_> {
    /// Appends the key: the property's name, or `df_items_<name>`.
    pub fn push_key(&self, out: &mut Vec<u8>) {
        match self {
            ImportCell::Property(name, _) => out.extend_from_slice(name.as_bytes()),
            ImportCell::Items(_, name) => {
                out.extend_from_slice(ITEMS_COLUMN_PREFIX.as_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
    }

    /// The key's length in bytes, without rendering it.
    pub fn key_len(&self) -> usize {
        match self {
            ImportCell::Property(name, _) => name.len(),
            ImportCell::Items(_, name) => ITEMS_COLUMN_PREFIX.len() + name.len(),
        }
    }

    /// Appends the unquoted cell text (see the module doc).
    pub fn push_text(&self, out: &mut Vec<u8>) {
        match self {
            ImportCell::Property(_, value) => push_cell_text(out, value),
            ImportCell::Items(event, name) => push_item_cell(out, event, name),
        }
    }
}

/// The property cells of `event` in stored order: its event properties in
/// name order, then, when it has items, one `df_items_<p>` per name of
/// `item_properties` (see the module doc). What [`StoredEvent::from_import`]
/// stores as `prop_keys`/`prop_values`, for a backend that encodes them
/// without building a [`StoredEvent`].
pub fn import_cells<'a>(
    event: &'a EventInput,
    item_properties: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = ImportCell<'a>> {
    let items = item_properties.into_iter().filter(move |_| !event.items.is_empty());
    event
        .properties
        .iter()
        .map(|(name, value)| ImportCell::Property(name, value))
        .chain(items.map(move |name| ImportCell::Items(event, name)))
}

/// Appends the `df_items_<name>` cell: `[v1,null,…]`, one JSON element per item.
fn push_item_cell(out: &mut Vec<u8>, event: &EventInput, name: &str) {
    out.push(b'[');
    for (i, item) in event.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match item.get(name) {
            Some(value) => push_json_scalar(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::Value;
    use crate::Uuid;

    fn event() -> EventInput {
        let item = |pairs: &[(&str, Value)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        EventInput {
            event_log_id: Uuid::parse_str("0190A8F0-0000-7000-8000-00000000000A").unwrap(),
            event_name: "df_purchase".into(),
            event_datetime_ms: 2_000,
            properties: BTreeMap::from([
                ("price".to_string(), Value::Double(15000.0)),
                ("note".to_string(), Value::String("a,\"b\"".into())),
                ("tags".to_string(), Value::StringArray(vec!["x".into(), "y\"".into()])),
                ("when".to_string(), Value::Datetime(1_795_564_800_123)),
            ]),
            items: vec![
                item(&[
                    ("df_product_id", Value::String("p1".into())),
                    ("df_price", Value::Double(1.5)),
                ]),
                item(&[("df_product_id", Value::String("p,2".into()))]),
            ],
        }
    }

    #[test]
    fn system_values_follow_the_import_rules() {
        let e = event();
        let s = StoredEvent::from_import(ServiceId::parse("svc").unwrap(), &e, 1_000, "u1".into(), []);
        assert_eq!(s.correction_ms, e.correction_ms(1_000));
        assert_eq!(s.event_log_id, "0190a8f0-0000-7000-8000-00000000000a");
        assert_eq!((s.server_ms, s.event_ms, s.item_count), (1_000, 2_000, 2));
        assert_eq!(
            (s.api_version.as_str(), s.platform.as_str()),
            (API_VERSION, PLATFORM_HTTP_API)
        );
    }

    #[test]
    fn properties_are_unquoted_cells_and_items_json_arrays_per_registered_name() {
        let s = StoredEvent::from_import(
            ServiceId::parse("svc").unwrap(),
            &event(),
            5_000,
            "u1".into(),
            ["df_price", "df_product_id", "df_quantity"],
        );
        let cells: Vec<(&str, &str)> = s
            .prop_keys
            .iter()
            .zip(&s.prop_values)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            cells,
            vec![
                ("note", "a,\"b\""),
                ("price", "15000.0"),
                ("tags", r#"["x","y\""]"#),
                ("when", "2026-11-25T00:00:00.123Z"),
                ("df_items_df_price", "[1.5,null]"),
                ("df_items_df_product_id", r#"["p1","p,2"]"#),
                ("df_items_df_quantity", "[null,null]"),
            ]
        );
    }

    #[test]
    fn an_event_without_items_has_no_item_entries() {
        let mut e = event();
        e.items.clear();
        let s = StoredEvent::from_import(ServiceId::parse("svc").unwrap(), &e, 5_000, "u".into(), ["df_price"]);
        assert!(!s.prop_keys.iter().any(|k| k.starts_with(ITEMS_COLUMN_PREFIX)));
        assert_eq!(s.item_count, 0);
    }
}
