//! CSV input in the export format (SPEC §2.3 events, §2.4 profiles),
//! typed by the target service's taxonomy.
//!
//! Events: `df_unified_id` → identity `{"df_unified_id":…}`,
//! `df_event_log_id` → `event_log_id`, `event_name`, `df_event_datetime` →
//! `event_datetime` (`df_correction_datetime` when the file has no
//! `df_event_datetime`); `df_server_datetime`, `df_correction_datetime`,
//! `df_api_version` and `df_platform` are dropped (the server sets them).
//! Every other column is an event property, or `df_items_<prop>` an item
//! property: a JSON array with one element per item (`null` where an item
//! lacks it), from which `items` is rebuilt.
//!
//! Profiles: `df_unified_id` and/or `df_external_id` → identity, every other
//! column a user property; `request_datetime` is the time the row is read.
//!
//! Cells (SPEC §2.3 "Cells"): empty = absent; `Long` and `Double` become
//! JSON numbers, `Boolean` `true`/`false`, arrays their compact JSON text,
//! `Datetime`, `Date` and `String` strings. A cell that does not read as its
//! type rejects its row (without asking the server); a column the
//! taxonomy does not have stops the import before anything is sent.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use fineport_contract::profile::{EXTERNAL_ID_COLUMN, UNIFIED_ID_COLUMN};
use fineport_contract::taxonomy::{TaxonomyDoc, ITEMS_COLUMN_PREFIX};
use fineport_contract::types::PropertyType;
use serde_json::{Map, Number, Value as Json};

use super::{Kind, Origin, Parsed, Reject, Row, RowReader};

/// Why a record is no row: its `event_log_id` (when it had one) and the reason.
type Unreadable = (Option<String>, String);

/// What a column becomes.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    UnifiedId,
    ExternalId,
    EventLogId,
    EventName,
    EventDatetime,
    /// `df_correction_datetime`: the event time only without `df_event_datetime`.
    CorrectionDatetime,
    Dropped,
    Property(String, PropertyType),
    Item(String, PropertyType),
}

/// Reads export CSV from `R`.
pub struct CsvReader<R> {
    reader: csv::Reader<R>,
    name: Arc<str>,
    kind: Kind,
    columns: Vec<Column>,
    has_event_datetime: bool,
    record: csv::StringRecord,
}

impl<R: Read + Send> CsvReader<R> {
    /// Reads the header and plans every column.
    ///
    /// Errors: no header; a required column missing (events:
    /// `df_unified_id`, `df_event_log_id`, `event_name` and a datetime;
    /// profiles: `df_unified_id` or `df_external_id`); columns the taxonomy
    /// lacks (all named, with the `fineport admin taxonomy add` that
    /// registers them).
    pub fn new(input: R, name: Arc<str>, kind: Kind, taxonomy: &TaxonomyDoc) -> anyhow::Result<CsvReader<R>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(input);
        let headers = reader
            .headers()
            .with_context(|| format!("{name}: cannot read the CSV header"))?
            .clone();
        let types = |defs: &[fineport_contract::taxonomy::PropertyDef]| -> HashMap<String, PropertyType> {
            defs.iter().map(|d| (d.name.clone(), d.ty)).collect()
        };
        let (event_props, item_props, user_props) = (
            types(&taxonomy.event_properties),
            types(&taxonomy.item_properties),
            types(&taxonomy.user_properties),
        );
        let mut columns = Vec::with_capacity(headers.len());
        let mut unknown: Vec<(&'static str, String)> = Vec::new();
        for header in headers.iter() {
            let column = match (kind, header) {
                (_, UNIFIED_ID_COLUMN) => Column::UnifiedId,
                (Kind::Profiles, EXTERNAL_ID_COLUMN) => Column::ExternalId,
                (Kind::Profiles, name) => match user_props.get(name) {
                    Some(ty) => Column::Property(name.to_owned(), *ty),
                    None => {
                        unknown.push(("--user-property", name.to_owned()));
                        continue;
                    }
                },
                (Kind::Events, "df_event_log_id") => Column::EventLogId,
                (Kind::Events, "event_name") => Column::EventName,
                (Kind::Events, "df_event_datetime") => Column::EventDatetime,
                (Kind::Events, "df_correction_datetime") => Column::CorrectionDatetime,
                (Kind::Events, "df_server_datetime" | "df_api_version" | "df_platform") => Column::Dropped,
                (Kind::Events, name) => {
                    if let Some(ty) = event_props.get(name).filter(|t| **t != PropertyType::Items) {
                        Column::Property(name.to_owned(), *ty)
                    } else if let Some((item, ty)) = name
                        .strip_prefix(ITEMS_COLUMN_PREFIX)
                        .and_then(|item| item_props.get(item).map(|ty| (item, *ty)))
                    {
                        Column::Item(item.to_owned(), ty)
                    } else {
                        match name.strip_prefix(ITEMS_COLUMN_PREFIX) {
                            Some(item) => unknown.push(("--item-property", item.to_owned())),
                            None => unknown.push(("--event-property", name.to_owned())),
                        }
                        continue;
                    }
                }
            };
            columns.push(column);
        }
        if !unknown.is_empty() {
            let names: Vec<String> = unknown
                .iter()
                .map(|(flag, n)| {
                    if *flag == "--item-property" {
                        format!("{ITEMS_COLUMN_PREFIX}{n}")
                    } else {
                        n.clone()
                    }
                })
                .collect();
            let flags: Vec<String> = unknown.iter().map(|(flag, n)| format!("{flag} '{n}:TYPE'")).collect();
            anyhow::bail!(
                "{name}: {} column(s) not in the target service's taxonomy: {}. Nothing was sent.\n\
                 hint: register the source's taxonomy in the target:\n  \
                 fineport admin taxonomy show <source service> > taxonomy.json   (against the source)\n  \
                 fineport admin taxonomy add <service> --from-file taxonomy.json\n\
                 or only these columns, with the types they have in the source:\n  \
                 fineport admin taxonomy add <service> {}",
                names.len(),
                names.join(", "),
                flags.join(" ")
            );
        }
        let has = |c: &Column| columns.contains(c);
        match kind {
            Kind::Events => {
                for (column, header) in [
                    (Column::UnifiedId, UNIFIED_ID_COLUMN),
                    (Column::EventLogId, "df_event_log_id"),
                    (Column::EventName, "event_name"),
                ] {
                    if !has(&column) {
                        anyhow::bail!("{name}: the CSV has no {header} column, which an event import needs (is it an event export?)");
                    }
                }
                if !has(&Column::EventDatetime) && !has(&Column::CorrectionDatetime) {
                    anyhow::bail!("{name}: the CSV has neither df_event_datetime nor df_correction_datetime");
                }
            }
            Kind::Profiles => {
                if !has(&Column::UnifiedId) && !has(&Column::ExternalId) {
                    anyhow::bail!(
                        "{name}: the CSV has neither df_unified_id nor df_external_id (is it a user-profile export?)"
                    );
                }
            }
        }
        Ok(CsvReader {
            has_event_datetime: has(&Column::EventDatetime),
            reader,
            name,
            kind,
            columns,
            record: csv::StringRecord::new(),
        })
    }

    /// One record → a row, or the reason it cannot be one.
    fn row(&self, origin: &Origin) -> Result<(Map<String, Json>, Row), Unreadable> {
        let mut unified_id = None;
        let mut external_id = None;
        let mut event_log_id = None;
        let mut body = Map::new();
        let mut properties = Map::new();
        let mut item_columns: Vec<(&str, Vec<Json>)> = Vec::new();
        let mut reasons = Vec::new();
        for (column, cell) in self.columns.iter().zip(self.record.iter()) {
            if cell.is_empty() {
                continue;
            }
            match column {
                Column::UnifiedId => unified_id = Some(cell),
                Column::ExternalId => external_id = Some(cell),
                Column::EventLogId => {
                    event_log_id = Some(cell.to_owned());
                    body.insert("event_log_id".into(), cell.into());
                }
                Column::EventName => {
                    body.insert("event_name".into(), cell.into());
                }
                Column::EventDatetime => {
                    body.insert("event_datetime".into(), cell.into());
                }
                Column::CorrectionDatetime if !self.has_event_datetime => {
                    body.insert("event_datetime".into(), cell.into());
                }
                Column::CorrectionDatetime | Column::Dropped => {}
                Column::Property(name, ty) => match typed(cell, *ty) {
                    Ok(v) => {
                        properties.insert(name.clone(), v);
                    }
                    Err(e) => reasons.push(format!("column {name}: {e}")),
                },
                Column::Item(name, _) => match serde_json::from_str::<Json>(cell) {
                    Ok(Json::Array(values)) => item_columns.push((name, values)),
                    _ => reasons.push(format!(
                        "column {ITEMS_COLUMN_PREFIX}{name}: expected a JSON array (one element per item), got {cell:?}"
                    )),
                },
            }
        }
        let identity = match (self.kind, unified_id) {
            (_, Some(uid)) => super::jsonl::unified_identity(uid, external_id),
            (Kind::Profiles, None) => match external_id {
                Some(ext) => {
                    let mut m = Map::new();
                    m.insert("external_id".into(), ext.into());
                    m
                }
                None => {
                    reasons.push("neither df_unified_id nor df_external_id is set".into());
                    Map::new()
                }
            },
            (Kind::Events, None) => {
                reasons.push("df_unified_id is empty".into());
                Map::new()
            }
        };
        let mut items_count = 0;
        match self.kind {
            Kind::Events => {
                if !properties.is_empty() {
                    body.insert("properties".into(), Json::Object(properties));
                }
                items_count = item_columns.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
                if items_count > 0 {
                    let mut items = vec![Map::new(); items_count];
                    for (name, values) in item_columns {
                        for (item, value) in items.iter_mut().zip(values) {
                            if !value.is_null() {
                                item.insert(name.to_owned(), value);
                            }
                        }
                    }
                    body.insert(
                        "items".into(),
                        Json::Array(items.into_iter().map(Json::Object).collect()),
                    );
                }
            }
            Kind::Profiles => {
                body.insert("identity".into(), Json::Object(identity.clone()));
                body.insert("user_properties".into(), Json::Object(properties));
                body.insert("request_datetime".into(), super::now_datetime().into());
            }
        }
        if !reasons.is_empty() {
            return Err((event_log_id, reasons.join("; ")));
        }
        let row = Row {
            origin: origin.clone(),
            event_log_id,
            items: items_count,
            body,
        };
        Ok((identity, row))
    }
}

/// A cell as the JSON value of `ty` (SPEC §2.3 "Cells" read back).
fn typed(cell: &str, ty: PropertyType) -> Result<Json, String> {
    let wrong = || format!("expected {ty}, got {cell:?}");
    Ok(match ty {
        PropertyType::String | PropertyType::Datetime | PropertyType::Date => Json::String(cell.to_owned()),
        PropertyType::Long => Json::from(cell.parse::<i64>().map_err(|_| wrong())?),
        PropertyType::Double => Json::Number(cell.parse::<f64>().ok().and_then(Number::from_f64).ok_or_else(wrong)?),
        PropertyType::Boolean => match cell {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => return Err(wrong()),
        },
        PropertyType::StringArray | PropertyType::LongArray | PropertyType::DoubleArray => {
            match serde_json::from_str::<Json>(cell) {
                Ok(array @ Json::Array(_)) => array,
                _ => return Err(wrong()),
            }
        }
        PropertyType::Items => return Err(wrong()),
    })
}

impl<R: Read + Send> RowReader for CsvReader<R> {
    fn next_row(&mut self) -> Option<anyhow::Result<Parsed>> {
        let mut record = std::mem::take(&mut self.record);
        let more = self.reader.read_record(&mut record);
        self.record = record;
        match more {
            Ok(false) => None,
            Ok(true) => {
                let origin = Origin {
                    file: self.name.clone(),
                    line: self.record.position().map_or(0, |p| p.line()),
                };
                Some(Ok(match self.row(&origin) {
                    Ok((identity, row)) => Parsed::Row { identity, row },
                    Err((event_log_id, reason)) => Parsed::Unreadable(Reject::new(&origin, event_log_id, None, reason)),
                }))
            }
            Err(e) => match e.kind() {
                // A row with another number of fields: reject it, read on.
                csv::ErrorKind::UnequalLengths { pos, .. } => {
                    let origin = Origin {
                        file: self.name.clone(),
                        line: pos.as_ref().map_or(0, |p| p.line()),
                    };
                    Some(Ok(Parsed::Unreadable(Reject::new(&origin, None, None, e.to_string()))))
                }
                _ => Some(Err(anyhow::anyhow!("{}: {e}", self.name))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fineport_contract::taxonomy::Taxonomy;
    use serde_json::json;

    fn taxonomy() -> TaxonomyDoc {
        let mut doc = Taxonomy::standard().to_listing();
        doc.event_properties.push(fineport_contract::taxonomy::PropertyDef {
            name: "code".into(),
            ty: PropertyType::String,
        });
        doc.event_properties.push(fineport_contract::taxonomy::PropertyDef {
            name: "tags".into(),
            ty: PropertyType::StringArray,
        });
        doc
    }

    fn read(csv: &str, kind: Kind) -> anyhow::Result<Vec<Parsed>> {
        let mut r = CsvReader::new(csv.as_bytes(), "in.csv".into(), kind, &taxonomy())?;
        Ok(std::iter::from_fn(|| r.next_row()).map(|p| p.unwrap()).collect())
    }

    const HEADER: &str = "code,df_api_version,df_correction_datetime,df_event_datetime,df_event_log_id,\
df_items_df_item_id,df_items_df_price,df_platform,df_server_datetime,df_total_purchase_amount,df_unified_id,event_name,tags\n";

    #[test]
    fn an_exported_row_becomes_the_event_it_was() {
        let csv = format!(
            "{HEADER}0123,v1,2026-01-01T00:00:00.000Z,2026-01-01T00:00:00.000Z,0b8f3c1e-0000-4000-8000-000000000001,\
\"[\"\"a\"\",\"\"b\"\"]\",\"[1.5,null]\",HTTP_API,2026-01-02T00:00:00.000Z,15000.0,6f1c2a4e-0b6d-4d3e-9a51-2c8e5f1b3a70,df_purchase,\"[\"\"x\"\"]\"\n\
,v1,2026-01-01T00:00:00.000Z,2026-01-01T00:00:00.000Z,0b8f3c1e-0000-4000-8000-000000000002,,,HTTP_API,x,lots,6f1c2a4e-0b6d-4d3e-9a51-2c8e5f1b3a70,df_login,\n"
        );
        let rows = read(&csv, Kind::Events).unwrap();
        let Parsed::Row { identity, row } = &rows[0] else {
            panic!("{rows:?}")
        };
        assert_eq!(
            Json::Object(identity.clone()),
            json!({"df_unified_id": "6f1c2a4e-0b6d-4d3e-9a51-2c8e5f1b3a70"})
        );
        assert_eq!(
            Json::Object(row.body.clone()),
            json!({"event_datetime": "2026-01-01T00:00:00.000Z", "event_log_id": "0b8f3c1e-0000-4000-8000-000000000001",
                   "event_name": "df_purchase",
                   "properties": {"code": "0123", "df_total_purchase_amount": 15000.0, "tags": ["x"]},
                   "items": [{"df_item_id": "a", "df_price": 1.5}, {"df_item_id": "b"}]})
        );
        assert_eq!(row.items, 2);
        assert_eq!(row.origin.line, 2);
        let Parsed::Unreadable(reject) = &rows[1] else {
            panic!("{rows:?}")
        };
        assert!(reject.reason.contains("df_total_purchase_amount"), "{reject:?}");
        assert_eq!(
            reject.event_log_id.as_deref(),
            Some("0b8f3c1e-0000-4000-8000-000000000002")
        );
        assert_eq!(reject.line, 3);
    }

    #[test]
    fn unknown_columns_stop_before_anything_is_read() {
        let err = read(
            "df_unified_id,event_name,df_event_log_id,df_event_datetime,color,df_items_size\n",
            Kind::Events,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("color, df_items_size"), "{err}");
        assert!(
            err.contains("--event-property 'color:TYPE' --item-property 'size:TYPE'"),
            "{err}"
        );
        let err = read("df_unified_id,event_name\n", Kind::Events)
            .unwrap_err()
            .to_string();
        assert!(err.contains("df_event_log_id"), "{err}");
    }

    #[test]
    fn profile_rows_carry_their_identity_in_the_body() {
        let rows = read(
            "df_external_id,df_membership,df_push_optin,df_unified_id\nkim,gold,true,6f1c2a4e-0b6d-4d3e-9a51-2c8e5f1b3a70\n",
            Kind::Profiles,
        )
        .unwrap();
        let Parsed::Row { row, .. } = &rows[0] else {
            panic!("{rows:?}")
        };
        assert_eq!(
            row.body["identity"],
            json!({"df_unified_id": "6f1c2a4e-0b6d-4d3e-9a51-2c8e5f1b3a70", "external_id": "kim"})
        );
        assert_eq!(
            row.body["user_properties"],
            json!({"df_membership": "gold", "df_push_optin": true})
        );
    }
}
