//! The Export API contract: detailed responses (SPEC §2.2), the event export
//! request body and its validation (§2.1), the look-back rule, and the
//! column plan of the CSV (§2.3).
//!
//! Parsing is done by hand over `serde_json::Value` rather than by derive so
//! that every rule of §2.2 (unknown field, wrong type, exact enum spelling,
//! …) answers `invalid_parameter` with a precise `detail`.

use chrono::NaiveDate;
use serde_json::{Map, Value as Json};

use crate::taxonomy::{Taxonomy, ITEMS, ITEMS_COLUMN_PREFIX};
use crate::time::parse_date;
use crate::types::{json_kind, PropertyType};

/// The seven detailed responses of the Export API (SPEC §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportOutcome {
    ClientConnectionClosed,
    InvalidParameter,
    ExceedDateRangeLimit,
    UnauthorizedToken,
    TooManyApiRequests,
    QueryError,
    UnknownError,
}

impl ExportOutcome {
    pub const ALL: [ExportOutcome; 7] = [
        ExportOutcome::ClientConnectionClosed,
        ExportOutcome::InvalidParameter,
        ExportOutcome::ExceedDateRangeLimit,
        ExportOutcome::UnauthorizedToken,
        ExportOutcome::TooManyApiRequests,
        ExportOutcome::QueryError,
        ExportOutcome::UnknownError,
    ];

    /// The HTTP status DFINERY answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ExportOutcome::ClientConnectionClosed => 200,
            ExportOutcome::InvalidParameter | ExportOutcome::ExceedDateRangeLimit => 400,
            ExportOutcome::UnauthorizedToken => 401,
            ExportOutcome::TooManyApiRequests => 429,
            ExportOutcome::QueryError | ExportOutcome::UnknownError => 500,
        }
    }

    /// The `message` of the failure body.
    pub fn message(self) -> &'static str {
        match self {
            ExportOutcome::ClientConnectionClosed => "client_connection_closed",
            ExportOutcome::InvalidParameter => "invalid_parameter",
            ExportOutcome::ExceedDateRangeLimit => "exceed_date_range_limit",
            ExportOutcome::UnauthorizedToken => "unauthorized_token",
            ExportOutcome::TooManyApiRequests => "too_many_api_requests",
            ExportOutcome::QueryError => "query_error",
            ExportOutcome::UnknownError => "unknown_error",
        }
    }
}

/// An Export API failure: a detailed response plus an optional human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFailure {
    pub outcome: ExportOutcome,
    pub detail: Option<String>,
}

impl ExportFailure {
    pub fn new(outcome: ExportOutcome) -> Self {
        ExportFailure { outcome, detail: None }
    }

    pub fn with_detail(outcome: ExportOutcome, detail: impl Into<String>) -> Self {
        ExportFailure {
            outcome,
            detail: Some(detail.into()),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::with_detail(ExportOutcome::InvalidParameter, detail)
    }

    /// `{"result":"fail","message":"…"}` plus `"detail"` when there is one.
    pub fn body(&self) -> Json {
        let mut body = Map::new();
        body.insert("result".into(), "fail".into());
        body.insert("message".into(), self.outcome.message().into());
        if let Some(d) = &self.detail {
            body.insert("detail".into(), d.clone().into());
        }
        Json::Object(body)
    }
}

/// `all` | `include` | `exclude`, with the list that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Include(Vec<String>),
    Exclude(Vec<String>),
}

/// A validated event export request, before its names are checked against a
/// taxonomy (see [`EventExportRequest::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventExportRequest {
    pub events: Selection,
    pub properties: Selection,
    pub from_date: NaiveDate,
    pub to_date: NaiveDate,
}

/// A system column of the event export (SPEC §2.3), always present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemColumn {
    UnifiedId,
    EventName,
    ApiVersion,
    ServerDatetime,
    CorrectionDatetime,
    EventLogId,
    EventDatetime,
    Platform,
}

impl SystemColumn {
    pub const ALL: [SystemColumn; 8] = [
        SystemColumn::UnifiedId,
        SystemColumn::EventName,
        SystemColumn::ApiVersion,
        SystemColumn::ServerDatetime,
        SystemColumn::CorrectionDatetime,
        SystemColumn::EventLogId,
        SystemColumn::EventDatetime,
        SystemColumn::Platform,
    ];

    pub fn header(self) -> &'static str {
        match self {
            SystemColumn::UnifiedId => "df_unified_id",
            SystemColumn::EventName => "event_name",
            SystemColumn::ApiVersion => "df_api_version",
            SystemColumn::ServerDatetime => "df_server_datetime",
            SystemColumn::CorrectionDatetime => "df_correction_datetime",
            SystemColumn::EventLogId => "df_event_log_id",
            SystemColumn::EventDatetime => "df_event_datetime",
            SystemColumn::Platform => "df_platform",
        }
    }
}

/// What one CSV column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    System(SystemColumn),
    EventProperty {
        name: String,
        ty: PropertyType,
    },
    /// `df_items_<name>`: a JSON array with one element per item.
    ItemProperty {
        name: String,
        ty: PropertyType,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportColumn {
    pub header: String,
    pub source: ColumnSource,
}

/// Everything a store needs to run an event export: which events, which
/// columns in which order, which days. Every name in it is in the taxonomy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventExportPlan {
    /// `None` = all events; otherwise the event names to keep or drop.
    pub event_filter: Option<(EventFilterKind, Vec<String>)>,
    /// The CSV columns, in byte order of their headers.
    pub columns: Vec<ExportColumn>,
    pub from_date: NaiveDate,
    pub to_date: NaiveDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFilterKind {
    Include,
    Exclude,
}

impl EventExportPlan {
    pub fn header_line(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let headers: Vec<&str> = self.columns.iter().map(|c| c.header.as_str()).collect();
        crate::csv::push_line(&mut out, &headers);
        out
    }
}

const EVENT_FIELDS: &[&str] = &[
    "events",
    "events_condition_type",
    "properties",
    "properties_condition_type",
    "from_date",
    "to_date",
];

/// A JSON object body with its field rules, shared by both export endpoints.
pub(crate) struct Body<'a>(pub &'a Map<String, Json>);

impl<'a> Body<'a> {
    /// Parses the raw body: it must be a JSON object with only `known` fields.
    pub(crate) fn parse(raw: &'a Json, known: &[&str]) -> Result<Body<'a>, ExportFailure> {
        let obj = raw
            .as_object()
            .ok_or_else(|| ExportFailure::invalid(format!("the body must be a JSON object, not {}", json_kind(raw))))?;
        if let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ExportFailure::invalid(format!("unknown field {unknown:?}")));
        }
        Ok(Body(obj))
    }

    /// An optional field; `null` counts as absent.
    fn get(&self, field: &str) -> Option<&'a Json> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    pub(crate) fn string(&self, field: &str, required: bool) -> Result<Option<&'a str>, ExportFailure> {
        match self.get(field) {
            None if required => Err(ExportFailure::invalid(format!("{field} is required"))),
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(other) => Err(ExportFailure::invalid(format!(
                "{field} must be a string, not {}",
                json_kind(other)
            ))),
        }
    }

    pub(crate) fn string_list(&self, field: &str) -> Result<Option<Vec<String>>, ExportFailure> {
        let Some(v) = self.get(field) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| {
            ExportFailure::invalid(format!("{field} must be a list of strings, not {}", json_kind(v)))
        })?;
        items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_owned).ok_or_else(|| {
                    ExportFailure::invalid(format!("{field} must be a list of strings; found {}", json_kind(i)))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub(crate) fn date(&self, field: &str) -> Result<NaiveDate, ExportFailure> {
        let s = self.string(field, true)?.unwrap_or_default();
        parse_date(s)
            .ok_or_else(|| ExportFailure::invalid(format!("{field} must be a real yyyy-MM-dd date, got {s:?}")))
    }

    /// A `<list>` + `<list>_condition_type` pair.
    pub(crate) fn selection(
        &self,
        list: &str,
        condition: &str,
        required: bool,
    ) -> Result<Option<Selection>, ExportFailure> {
        let names = self.string_list(list)?;
        let Some(kind) = self.string(condition, required)? else {
            return Ok(None);
        };
        let non_empty = |names: Option<Vec<String>>| match names {
            Some(n) if !n.is_empty() => Ok(n),
            _ => Err(ExportFailure::invalid(format!(
                "{condition} {kind:?} needs a non-empty {list} list"
            ))),
        };
        Ok(Some(match kind {
            "all" => Selection::All,
            "include" => Selection::Include(non_empty(names)?),
            "exclude" => Selection::Exclude(non_empty(names)?),
            other => {
                return Err(ExportFailure::invalid(format!(
                    "{condition} must be exactly \"all\", \"include\" or \"exclude\", got {other:?}"
                )))
            }
        }))
    }
}

impl EventExportRequest {
    /// Validates the shape of a request body (SPEC §2.1, §2.2 `invalid_parameter`).
    pub fn parse(raw: &Json) -> Result<EventExportRequest, ExportFailure> {
        let body = Body::parse(raw, EVENT_FIELDS)?;
        let events = body
            .selection("events", "events_condition_type", true)?
            .unwrap_or(Selection::All);
        let properties = body
            .selection("properties", "properties_condition_type", false)?
            .unwrap_or(Selection::All);
        let from_date = body.date("from_date")?;
        let to_date = body.date("to_date")?;
        if from_date > to_date {
            return Err(ExportFailure::invalid(format!(
                "from_date {from_date} is after to_date {to_date}"
            )));
        }
        Ok(EventExportRequest {
            events,
            properties,
            from_date,
            to_date,
        })
    }

    /// Checks every name against `taxonomy` and lays out the columns.
    pub fn plan(&self, taxonomy: &Taxonomy) -> Result<EventExportPlan, ExportFailure> {
        let event_filter = match &self.events {
            Selection::All => None,
            Selection::Include(names) | Selection::Exclude(names) => {
                if let Some(unknown) = names.iter().find(|n| !taxonomy.events.contains(*n)) {
                    return Err(ExportFailure::invalid(format!(
                        "event {unknown:?} is not in the taxonomy"
                    )));
                }
                let kind = match self.events {
                    Selection::Include(_) => EventFilterKind::Include,
                    _ => EventFilterKind::Exclude,
                };
                let mut names = names.clone();
                names.sort();
                names.dedup();
                Some((kind, names))
            }
        };

        let all_properties = property_columns(taxonomy);
        let selected: Vec<ExportColumn> = match &self.properties {
            Selection::All => all_properties,
            Selection::Include(names) | Selection::Exclude(names) => {
                let mut chosen = vec![false; all_properties.len()];
                for name in names {
                    let mut matched = false;
                    for (i, col) in all_properties.iter().enumerate() {
                        let hit = col.header == *name
                            || (name == ITEMS && matches!(col.source, ColumnSource::ItemProperty { .. }));
                        if hit {
                            chosen[i] = true;
                            matched = true;
                        }
                    }
                    if !matched && name != ITEMS {
                        return Err(ExportFailure::invalid(format!(
                            "property {name:?} is not in the taxonomy"
                        )));
                    }
                }
                let include = matches!(self.properties, Selection::Include(_));
                all_properties
                    .into_iter()
                    .zip(chosen)
                    .filter(|(_, c)| *c == include)
                    .map(|(col, _)| col)
                    .collect()
            }
        };

        let mut columns: Vec<ExportColumn> = SystemColumn::ALL
            .iter()
            .map(|s| ExportColumn {
                header: s.header().to_string(),
                source: ColumnSource::System(*s),
            })
            .chain(selected)
            .collect();
        columns.sort_by(|a, b| a.header.as_bytes().cmp(b.header.as_bytes()));
        Ok(EventExportPlan {
            event_filter,
            columns,
            from_date: self.from_date,
            to_date: self.to_date,
        })
    }
}

/// Every property column of the taxonomy: event properties by name, item
/// properties as `df_items_<name>`.
fn property_columns(taxonomy: &Taxonomy) -> Vec<ExportColumn> {
    let events = taxonomy
        .event_properties
        .iter()
        .filter(|(name, _)| name.as_str() != ITEMS)
        .map(|(name, ty)| ExportColumn {
            header: name.clone(),
            source: ColumnSource::EventProperty {
                name: name.clone(),
                ty: *ty,
            },
        });
    let items = taxonomy.item_properties.iter().map(|(name, ty)| ExportColumn {
        header: format!("{ITEMS_COLUMN_PREFIX}{name}"),
        source: ColumnSource::ItemProperty {
            name: name.clone(),
            ty: *ty,
        },
    });
    events.chain(items).collect()
}

/// The largest `export_lookback_days` a service can be given (100 years);
/// the admin API refuses more (0 still means unlimited).
pub const MAX_LOOKBACK_DAYS: u32 = 36_500;

/// The look-back rule (SPEC §2.2): `from_date` may be at most `lookback_days`
/// before `today` (the service's today); 0 means unlimited. Never panics: a
/// look-back that reaches before the first representable date allows every
/// date (`exceed_date_range_limit` is the only error).
pub fn check_lookback(from_date: NaiveDate, today: NaiveDate, lookback_days: u32) -> Result<(), ExportFailure> {
    if lookback_days == 0 {
        return Ok(());
    }
    let Some(earliest) = today.checked_sub_days(chrono::Days::new(u64::from(lookback_days))) else {
        return Ok(());
    };
    if from_date < earliest {
        return Err(ExportFailure::with_detail(
            ExportOutcome::ExceedDateRangeLimit,
            format!("from_date {from_date} is earlier than {earliest} (today {today} minus {lookback_days} days)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Json) -> Result<EventExportRequest, ExportFailure> {
        EventExportRequest::parse(&v)
    }

    fn base() -> Json {
        json!({"events_condition_type": "all", "from_date": "2026-11-01", "to_date": "2026-11-02"})
    }

    fn with(field: &str, value: Json) -> Json {
        let mut b = base();
        b[field] = value;
        b
    }

    fn without(field: &str) -> Json {
        let mut b = base();
        b.as_object_mut().unwrap().remove(field);
        b
    }

    #[test]
    fn outcomes_match_the_seed_table() {
        let table: Vec<(u16, &str)> = ExportOutcome::ALL
            .iter()
            .map(|o| (o.http_status(), o.message()))
            .collect();
        assert_eq!(
            table,
            vec![
                (200, "client_connection_closed"),
                (400, "invalid_parameter"),
                (400, "exceed_date_range_limit"),
                (401, "unauthorized_token"),
                (429, "too_many_api_requests"),
                (500, "query_error"),
                (500, "unknown_error"),
            ]
        );
        assert_eq!(
            ExportFailure::new(ExportOutcome::QueryError).body().to_string(),
            r#"{"result":"fail","message":"query_error"}"#
        );
    }

    #[test]
    fn accepts_a_minimal_body() {
        let r = parse(base()).unwrap();
        assert_eq!(r.events, Selection::All);
        assert_eq!(r.properties, Selection::All);
        // `all` with a list: the list is ignored.
        assert!(parse(with("events", json!(["df_login"]))).is_ok());
        // null counts as absent.
        assert!(parse(with("properties", Json::Null)).is_ok());
        // the same day twice is a one-day range
        assert!(parse(with("to_date", json!("2026-11-01"))).is_ok());
    }

    #[test]
    fn rejects_every_invalid_shape() {
        let cases = vec![
            json!([]),
            json!("x"),
            with("extra", json!(1)),
            without("events_condition_type"),
            without("from_date"),
            without("to_date"),
            with("events_condition_type", json!("ALL")),
            with("events_condition_type", json!("include")),
            with("events_condition_type", json!(1)),
            with("events", json!("df_login")),
            with("events", json!([1])),
            with("properties_condition_type", json!("exclude")),
            with("properties_condition_type", json!("any")),
            with("from_date", json!("2026-11-1")),
            with("from_date", json!("2026-02-30")),
            with("from_date", json!(20261101)),
            with("from_date", json!("2026-11-03")),
        ];
        for body in cases {
            let err = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(err.outcome, ExportOutcome::InvalidParameter, "{body}");
            assert!(err.detail.is_some());
        }
        let mut include_empty = with("events_condition_type", json!("include"));
        include_empty["events"] = json!([]);
        assert!(parse(include_empty).is_err());
    }

    fn plan(body: Json) -> Result<EventExportPlan, ExportFailure> {
        let mut t = Taxonomy::standard();
        t.events.insert("custom".into());
        t.event_properties.insert("amount".into(), PropertyType::Long);
        t.event_properties.insert("Zeta".into(), PropertyType::String);
        t.item_properties.insert("color".into(), PropertyType::String);
        parse(body)?.plan(&t)
    }

    fn headers(p: &EventExportPlan) -> Vec<&str> {
        p.columns.iter().map(|c| c.header.as_str()).collect()
    }

    #[test]
    fn columns_are_in_byte_order() {
        let mut body = with("properties_condition_type", json!("include"));
        body["properties"] = json!(["amount", "Zeta", "df_items_color"]);
        let p = plan(body).unwrap();
        assert_eq!(
            headers(&p),
            vec![
                "Zeta",
                "amount",
                "df_api_version",
                "df_correction_datetime",
                "df_event_datetime",
                "df_event_log_id",
                "df_items_color",
                "df_platform",
                "df_server_datetime",
                "df_unified_id",
                "event_name",
            ]
        );
    }

    #[test]
    fn all_properties_include_every_item_column_but_not_df_items() {
        let p = plan(base()).unwrap();
        let h = headers(&p);
        assert!(h.contains(&"df_items_df_price"));
        assert!(h.contains(&"df_items_color"));
        assert!(h.contains(&"df_total_purchase_amount"));
        assert!(!h.contains(&"df_items"));
        assert_eq!(h.len(), 8 + 9 + 2 + 10 + 1);
        let mut sorted = h.clone();
        sorted.sort();
        assert_eq!(h, sorted);
    }

    #[test]
    fn df_items_selects_every_item_column_both_ways() {
        let mut inc = with("properties_condition_type", json!("include"));
        inc["properties"] = json!(["df_items"]);
        let p = plan(inc).unwrap();
        assert_eq!(p.columns.len(), 8 + 11);
        let mut exc = with("properties_condition_type", json!("exclude"));
        exc["properties"] = json!(["df_items", "amount"]);
        let p = plan(exc).unwrap();
        assert!(headers(&p)
            .iter()
            .all(|h| !h.starts_with("df_items_") && *h != "amount"));
        assert!(headers(&p).contains(&"Zeta"));
    }

    #[test]
    fn unknown_names_are_invalid() {
        let mut ev = with("events_condition_type", json!("include"));
        ev["events"] = json!(["no_such_event"]);
        assert_eq!(plan(ev).unwrap_err().outcome, ExportOutcome::InvalidParameter);
        for name in ["no_such_prop", "df_items_nope", "event_name", "df_unified_id"] {
            let mut p = with("properties_condition_type", json!("exclude"));
            p["properties"] = json!([name]);
            assert_eq!(plan(p).unwrap_err().outcome, ExportOutcome::InvalidParameter, "{name}");
        }
        let mut ev = with("events_condition_type", json!("exclude"));
        ev["events"] = json!(["custom", "df_login", "custom"]);
        let p = plan(ev).unwrap();
        assert_eq!(
            p.event_filter,
            Some((EventFilterKind::Exclude, vec!["custom".into(), "df_login".into()]))
        );
    }

    #[test]
    fn lookback_allows_today_minus_n_and_refuses_one_more() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        assert!(check_lookback(today - chrono::Duration::days(30), today, 30).is_ok());
        let err = check_lookback(today - chrono::Duration::days(31), today, 30).unwrap_err();
        assert_eq!(err.outcome, ExportOutcome::ExceedDateRangeLimit);
        assert!(check_lookback(today - chrono::Duration::days(5000), today, 0).is_ok());
    }

    #[test]
    fn lookback_arithmetic_never_overflows() {
        let first = NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        for today in [first, last, NaiveDate::MIN, NaiveDate::MAX] {
            for days in [1, MAX_LOOKBACK_DAYS, u32::MAX / 2, u32::MAX] {
                for from in [NaiveDate::MIN, first, last] {
                    if let Err(e) = check_lookback(from, today, days) {
                        assert_eq!(e.outcome, ExportOutcome::ExceedDateRangeLimit);
                    }
                }
            }
            // A look-back longer than the calendar allows every date.
            assert!(check_lookback(NaiveDate::MIN, today, u32::MAX).is_ok());
        }
        assert!(check_lookback(first, last, MAX_LOOKBACK_DAYS).is_err());
    }
}
