//! The Import API contract (SPEC §4): result codes and the exact response
//! JSON, identities, and the validation of an event import body against a
//! service's taxonomy.
//!
//! Validation is all-or-nothing: it reports every invalid event (index and
//! reason) so that a client can fix a whole batch at once, and it yields the
//! typed events only when all of them are valid.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::json::JsonRead;

use crate::taxonomy::{is_valid_custom_name, Taxonomy, TaxonomyDoc, ITEMS};
use crate::time::parse_datetime;
use crate::types::{json_kind, PropertyType, Value};

/// Most events one `/api/v1/events` request may carry (else 40402).
pub const MAX_EVENTS_PER_REQUEST: usize = 100;
/// Most items, over all events, one request may carry (else 40001).
pub const MAX_ITEMS_PER_REQUEST: usize = 100;
/// Longest identifier value accepted.
pub const MAX_IDENTIFIER_LEN: usize = 256;

/// The Import API result codes (SPEC §4), each answered with HTTP 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportCode {
    Ok,
    BadRequest,
    ValidationFailure,
    InvalidServiceId,
    InvalidToken,
    TooManyRequest,
    TooManyEvents,
    TooManyUserProfiles,
    InternalServerError,
}

impl ImportCode {
    pub const ALL: [ImportCode; 9] = [
        ImportCode::Ok,
        ImportCode::BadRequest,
        ImportCode::ValidationFailure,
        ImportCode::InvalidServiceId,
        ImportCode::InvalidToken,
        ImportCode::TooManyRequest,
        ImportCode::TooManyEvents,
        ImportCode::TooManyUserProfiles,
        ImportCode::InternalServerError,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ImportCode::Ok => "20000",
            ImportCode::BadRequest => "40000",
            ImportCode::ValidationFailure => "40001",
            ImportCode::InvalidServiceId => "40101",
            ImportCode::InvalidToken => "40201",
            ImportCode::TooManyRequest => "40401",
            ImportCode::TooManyEvents => "40402",
            ImportCode::TooManyUserProfiles => "40403",
            ImportCode::InternalServerError => "50000",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ImportCode::Ok => "OK",
            ImportCode::BadRequest => "BAD_REQUEST",
            ImportCode::ValidationFailure => "VALIDATION_FAILURE",
            ImportCode::InvalidServiceId => "INVALID_SERVICE_ID",
            ImportCode::InvalidToken => "INVALID_TOKEN",
            ImportCode::TooManyRequest => "TOO_MANY_REQUEST",
            ImportCode::TooManyEvents => "TOO_MANY_EVENTS",
            ImportCode::TooManyUserProfiles => "TOO_MANY_USER_PROFILES",
            ImportCode::InternalServerError => "INTERNAL_SERVER_ERROR",
        }
    }
}

/// One reason a request was refused: `index` is the event's position in
/// `events` (absent for request-level problems).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportProblem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub reason: String,
}

impl ImportProblem {
    pub fn request(reason: impl Into<String>) -> Self {
        ImportProblem {
            index: None,
            reason: reason.into(),
        }
    }

    fn event(index: usize, reason: impl Into<String>) -> Self {
        ImportProblem {
            index: Some(index),
            reason: reason.into(),
        }
    }
}

/// A refused import: its code and the problems that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRejection {
    pub code: ImportCode,
    pub problems: Vec<ImportProblem>,
}

impl ImportRejection {
    pub fn new(code: ImportCode, reason: impl Into<String>) -> Self {
        ImportRejection {
            code,
            problems: vec![ImportProblem::request(reason)],
        }
    }
}

/// The response body (SPEC §4): `{"status":…,"code":"NNNNN","message":"…","data":…}`,
/// keys in that order. `data` is the boolean `true` on success (DFINERY's
/// documented body, byte for byte: `{"status":true,"code":"20000","message":"OK","data":true}`),
/// the list of `{"index"?,"reason"}` problems on failure, or `null` when a
/// failure has none to give.
pub fn response_body(code: ImportCode, problems: &[ImportProblem]) -> Json {
    let mut body = Map::new();
    body.insert("status".into(), Json::Bool(code == ImportCode::Ok));
    body.insert("code".into(), code.code().into());
    body.insert("message".into(), code.message().into());
    let data = if code == ImportCode::Ok {
        Json::Bool(true)
    } else if problems.is_empty() {
        Json::Null
    } else {
        serde_json::to_value(problems).unwrap_or(Json::Null)
    };
    body.insert("data".into(), data);
    Json::Object(body)
}

/// The identifiers of a user (SPEC §1 "Unified profile"), and optionally
/// the `df_unified_id` of the profile itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    /// The profile's own id, given by the client (fineport decision: how an
    /// export, which names users only by `df_unified_id`, is imported again
    /// into the same profiles). Alone, or with [`Identity::external_id`]
    /// only ([`Identity::from_json`] enforces that). Serialized in canonical
    /// form (lowercase, hyphenated).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "canonical_uuid")]
    pub df_unified_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kakao_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_user_id: Option<String>,
}

fn canonical_uuid<S: serde::Serializer>(uuid: &Option<Uuid>, serializer: S) -> Result<S::Ok, S::Error> {
    match uuid {
        Some(uuid) => serializer.serialize_str(&uuid.to_string()),
        None => serializer.serialize_none(),
    }
}

/// The identity key naming a profile by its `df_unified_id` (a fineport
/// decision, not one of SPEC §1's identifiers).
pub const UNIFIED_ID_KEY: &str = "df_unified_id";

/// Identifier kinds in resolution order (external_id first, then lookups).
pub const IDENTIFIER_KINDS: [&str; 5] = ["external_id", "email", "phone_no", "kakao_user_id", "line_user_id"];

impl Identity {
    /// `(kind, value)` for each identifier present, in [`IDENTIFIER_KINDS`] order.
    pub fn identifiers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            &self.external_id,
            &self.email,
            &self.phone_no,
            &self.kakao_user_id,
            &self.line_user_id,
        ]
        .into_iter()
        .zip(IDENTIFIER_KINDS)
        .filter_map(|(v, k)| v.as_deref().map(|v| (k, v)))
    }

    /// The profile [`Identity::df_unified_id`] names, in the canonical form
    /// every store keeps and every export writes (lowercase, hyphenated).
    pub fn unified_id(&self) -> Option<String> {
        self.df_unified_id.map(|u| u.to_string())
    }

    /// Parses an identity object of the Import API (SPEC §4: `/events`
    /// `common.identity`, `/identities`, `/identities/delete`,
    /// `/user-profile`): `{"external_id"?,"email"?,"phone_no"?,
    /// "kakao_user_id"?,"line_user_id"?,"df_unified_id"?}`, `null` meaning
    /// absent. Identifiers are strings of 1 to [`MAX_IDENTIFIER_LEN`] bytes
    /// without NUL. `df_unified_id` is a UUID in any form [`Uuid::try_parse`]
    /// takes (hyphenated, simple, braced, URN; any letter case), and may be
    /// given alone or with `external_id` only (fineport decision "D").
    /// At least one key is required (`df_unified_id` counts).
    ///
    /// The error is the reason for the endpoint's 40001.
    pub fn from_json<J: JsonRead>(json: &J) -> Result<Identity, String> {
        let obj = json
            .entries()
            .ok_or_else(|| format!("identity must be an object, not {}", json_kind(json)))?;
        let mut id = Identity::default();
        for (key, value) in obj {
            if value.is_null() {
                continue;
            }
            if key == UNIFIED_ID_KEY {
                let s = value
                    .as_str()
                    .ok_or_else(|| format!("identity.{key} must be a string, not {}", json_kind(value)))?;
                let uuid = Uuid::try_parse(s).map_err(|_| format!("identity.{key} must be a UUID, got {s:?}"))?;
                id.df_unified_id = Some(uuid);
                continue;
            }
            let slot = match key {
                "external_id" => &mut id.external_id,
                "email" => &mut id.email,
                "phone_no" => &mut id.phone_no,
                "kakao_user_id" => &mut id.kakao_user_id,
                "line_user_id" => &mut id.line_user_id,
                other => return Err(format!("unknown identity field {other:?}")),
            };
            let s = value
                .as_str()
                .ok_or_else(|| format!("identity.{key} must be a string, not {}", json_kind(value)))?;
            if s.is_empty() || s.len() > MAX_IDENTIFIER_LEN {
                return Err(format!("identity.{key} must be 1 to {MAX_IDENTIFIER_LEN} bytes"));
            }
            *slot = Some(crate::types::text(s).map_err(|e| format!("identity.{key} {e}"))?);
        }
        if id.df_unified_id.is_some() && id.identifiers().any(|(kind, _)| kind != "external_id") {
            return Err(format!(
                "identity.{UNIFIED_ID_KEY} may be combined only with external_id"
            ));
        }
        if id.df_unified_id.is_none() && id.identifiers().next().is_none() {
            return Err("identity needs at least one identifier".into());
        }
        Ok(id)
    }
}

/// One event, validated and typed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    pub event_log_id: Uuid,
    pub event_name: String,
    /// The client's `event_datetime`, UTC ms.
    pub event_datetime_ms: i64,
    /// Event properties by name (never `df_items`).
    pub properties: BTreeMap<String, Value>,
    /// Items, each a map of item property → value. Empty = no items.
    pub items: Vec<BTreeMap<String, Value>>,
}

/// `df_api_version` of every event (SPEC §2.3, decided: the API path's
/// version).
pub const API_VERSION: &str = "v1";

/// `df_platform` of an event that came through the Import API (SPEC §2.3).
pub const PLATFORM_HTTP_API: &str = "HTTP_API";

impl EventInput {
    /// `df_correction_datetime` in UTC ms (SPEC §2.3): the client's
    /// `event_datetime`, or the server's receipt time when the client's time
    /// is later than that. Every store stores this value; none restates the rule.
    pub fn correction_ms(&self, received_at_ms: i64) -> i64 {
        self.event_datetime_ms.min(received_at_ms)
    }
}

/// A validated `/api/v1/events` request.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    pub identity: Identity,
    pub events: Vec<EventInput>,
    /// Names first seen in this request, to register before storing it
    /// (only with `auto_register`).
    pub registrations: TaxonomyDoc,
}

const EVENT_FIELDS: [&str; 5] = ["event_log_id", "event_name", "event_datetime", "properties", "items"];

/// Validates an `/api/v1/events` body against `taxonomy`: a
/// `serde_json::Value`, or the borrowed [`crate::json::Doc`] the server
/// parses request bodies into (the same rules either way).
pub fn validate_events<J: JsonRead>(
    body: &J,
    taxonomy: &Taxonomy,
    auto_register: bool,
) -> Result<EventBatch, ImportRejection> {
    let Some(mut keys) = body.entries() else {
        return Err(ImportRejection::new(
            ImportCode::BadRequest,
            format!("the body must be a JSON object, not {}", json_kind(body)),
        ));
    };
    let invalid = |reason: String| ImportRejection::new(ImportCode::ValidationFailure, reason);
    if let Some((unknown, _)) = keys.find(|(k, _)| !["common", "events"].contains(k)) {
        return Err(invalid(format!("unknown field {unknown:?}")));
    }
    let events = match body.get("events").map(|e| (e, e.as_array())) {
        Some((_, Some(events))) => events,
        Some((other, None)) => return Err(invalid(format!("events must be a list, not {}", json_kind(other)))),
        None => return Err(invalid("events is required".into())),
    };
    if events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ImportRejection::new(
            ImportCode::TooManyEvents,
            format!(
                "{} events in one request; at most {MAX_EVENTS_PER_REQUEST}",
                events.len()
            ),
        ));
    }
    if events.is_empty() {
        return Err(invalid("events must not be empty".into()));
    }
    let identity_json = body
        .get("common")
        .and_then(|c| c.get("identity"))
        .ok_or_else(|| invalid("common.identity is required".into()))?;
    let identity = Identity::from_json(identity_json).map_err(invalid)?;

    let mut validator = Validator {
        taxonomy,
        auto_register,
        registrations: Taxonomy::default(),
    };
    let mut problems = Vec::new();
    let mut typed = Vec::with_capacity(events.len());
    let mut item_count = 0;
    for (index, event) in events.iter().enumerate() {
        match validator.event(event) {
            Ok(e) => {
                item_count += e.items.len();
                typed.push(e);
            }
            Err(reasons) => problems.extend(reasons.into_iter().map(|r| ImportProblem::event(index, r))),
        }
    }
    if item_count > MAX_ITEMS_PER_REQUEST {
        problems.push(ImportProblem::request(format!(
            "{item_count} items in one request; at most {MAX_ITEMS_PER_REQUEST}"
        )));
    }
    if !problems.is_empty() {
        return Err(ImportRejection {
            code: ImportCode::ValidationFailure,
            problems,
        });
    }
    Ok(EventBatch {
        identity,
        events: typed,
        registrations: validator.registrations.to_doc(),
    })
}

struct Validator<'a> {
    taxonomy: &'a Taxonomy,
    auto_register: bool,
    /// Names this request registers (auto_register), with their inferred types.
    registrations: Taxonomy,
}

impl Validator<'_> {
    /// Validates one event, collecting every reason it is invalid.
    fn event<J: JsonRead>(&mut self, json: &J) -> Result<EventInput, Vec<String>> {
        let Some(keys) = json.entries() else {
            return Err(vec![format!("an event must be an object, not {}", json_kind(json))]);
        };
        let mut reasons = Vec::new();
        for (key, _) in keys.filter(|(k, _)| !EVENT_FIELDS.contains(k)) {
            reasons.push(format!("unknown field {key:?}"));
        }
        let string = |field: &str, reasons: &mut Vec<String>| match json.get(field) {
            Some(s) if s.as_str().is_some() => s.as_str(),
            Some(other) => {
                reasons.push(format!("{field} must be a string, not {}", json_kind(other)));
                None
            }
            None => {
                reasons.push(format!("{field} is required"));
                None
            }
        };
        let event_log_id = string("event_log_id", &mut reasons).and_then(|s| match Uuid::try_parse(s) {
            Ok(u) if s.len() == 36 => Some(u),
            _ => {
                reasons.push(format!(
                    "event_log_id must be a UUID like 8-4-4-4-12 hex digits, got {s:?}"
                ));
                None
            }
        });
        let event_name = string("event_name", &mut reasons).and_then(|name| {
            if self.taxonomy.events.contains(name) || self.registrations.events.contains(name) {
                Some(name.to_owned())
            } else if self.auto_register && is_valid_custom_name(name) {
                self.registrations.events.insert(name.to_owned());
                Some(name.to_owned())
            } else {
                reasons.push(format!("event_name {name:?} is not in the taxonomy"));
                None
            }
        });
        let event_datetime_ms = string("event_datetime", &mut reasons).and_then(|s| match parse_datetime(s) {
            Ok(ms) => Some(ms),
            Err(e) => {
                reasons.push(format!("event_datetime {e}: {s:?}"));
                None
            }
        });
        let properties = match json.get("properties") {
            None => BTreeMap::new(),
            Some(p) if p.is_null() => BTreeMap::new(),
            Some(p) => self.properties(p, false, "properties", &mut reasons),
        };
        let items = match json.get("items") {
            None => Vec::new(),
            Some(items) if items.is_null() => Vec::new(),
            Some(items) => match items.as_array() {
                Some(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.properties(item, true, &format!("items[{i}]"), &mut reasons))
                    .collect(),
                None => {
                    reasons.push(format!("items must be a list, not {}", json_kind(items)));
                    Vec::new()
                }
            },
        };
        match (event_log_id, event_name, event_datetime_ms) {
            (Some(event_log_id), Some(event_name), Some(event_datetime_ms)) if reasons.is_empty() => Ok(EventInput {
                event_log_id,
                event_name,
                event_datetime_ms,
                properties,
                items,
            }),
            _ => Err(reasons),
        }
    }

    /// Types an object of event properties (or of one item's properties).
    fn properties<J: JsonRead>(
        &mut self,
        json: &J,
        item: bool,
        what: &str,
        reasons: &mut Vec<String>,
    ) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let Some(obj) = json.entries() else {
            reasons.push(format!("{what} must be an object, not {}", json_kind(json)));
            return out;
        };
        let scope = if item { "item" } else { "event" };
        for (name, raw) in obj {
            if raw.is_null() {
                continue; // a null is a missing value
            }
            if !item && name == ITEMS {
                reasons.push(format!("{what}.{ITEMS}: send items as the event's \"items\" list"));
                continue;
            }
            let registered = if item {
                &self.taxonomy.item_properties
            } else {
                &self.taxonomy.event_properties
            };
            let pending = if item {
                &mut self.registrations.item_properties
            } else {
                &mut self.registrations.event_properties
            };
            let ty = match registered.get(name).or_else(|| pending.get(name)) {
                Some(ty) => *ty,
                None if self.auto_register && is_valid_custom_name(name) => match PropertyType::infer(raw) {
                    Some(ty) => {
                        pending.insert(name.to_owned(), ty);
                        ty
                    }
                    None => {
                        reasons.push(format!("{what}.{name}: cannot infer a type from {}", json_kind(raw)));
                        continue;
                    }
                },
                None => {
                    reasons.push(format!(
                        "{what}.{name}: {scope} property {name:?} is not in the taxonomy"
                    ));
                    continue;
                }
            };
            match Value::from_json(raw, ty) {
                Ok(v) => {
                    out.insert(name.to_owned(), v);
                }
                Err(e) => reasons.push(format!("{what}.{name}: {e}")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taxonomy::PropertyDef;
    use serde_json::json;

    fn taxonomy() -> Taxonomy {
        let mut t = Taxonomy::standard();
        t.event_properties.insert("tags".into(), PropertyType::StringArray);
        t.item_properties.insert("color".into(), PropertyType::String);
        t
    }

    fn event(id: &str) -> Json {
        json!({"event_log_id": id, "event_name": "df_purchase", "event_datetime": "2026-11-25T01:02:03.456+09:00",
               "properties": {"df_total_purchase_amount": 15000, "tags": ["a", "b"]},
               "items": [{"df_item_id": "sku-1", "df_price": 7500.0, "color": "빨강"}]})
    }

    fn body(events: Vec<Json>) -> Json {
        json!({"common": {"identity": {"external_id": "user-1"}}, "events": events})
    }

    const ID: &str = "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f";

    /// Validates `body` read as a `serde_json::Value` and as the server's
    /// borrowed `Doc`, which must agree in every detail.
    fn validate(body: &Json, taxonomy: &Taxonomy, auto: bool) -> Result<EventBatch, ImportRejection> {
        let from_value = validate_events(body, taxonomy, auto);
        let text = serde_json::to_vec(body).unwrap();
        let doc = crate::json::Doc::parse(&text).unwrap();
        assert_eq!(validate_events(&doc, taxonomy, auto), from_value, "{body}");
        from_value
    }

    #[test]
    fn correction_time_is_the_event_time_unless_it_is_later_than_receipt() {
        let e = validate(&body(vec![event(ID)]), &taxonomy(), false)
            .unwrap()
            .events
            .remove(0);
        let at = e.event_datetime_ms;
        assert_eq!(e.correction_ms(at + 1), at, "a past event keeps its time");
        assert_eq!(e.correction_ms(at), at);
        assert_eq!(
            e.correction_ms(at - 1),
            at - 1,
            "a future event is corrected to the receipt"
        );
    }

    #[test]
    fn response_json_is_exact() {
        assert_eq!(
            response_body(ImportCode::Ok, &[]).to_string(),
            r#"{"status":true,"code":"20000","message":"OK","data":true}"#
        );
        assert_eq!(
            response_body(ImportCode::ValidationFailure, &[ImportProblem::event(2, "x")]).to_string(),
            r#"{"status":false,"code":"40001","message":"VALIDATION_FAILURE","data":[{"index":2,"reason":"x"}]}"#
        );
        let codes: Vec<&str> = ImportCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            codes,
            ["20000", "40000", "40001", "40101", "40201", "40401", "40402", "40403", "50000"]
        );
    }

    #[test]
    fn validates_and_types_a_good_batch() {
        let batch = validate(&body(vec![event(ID)]), &taxonomy(), false).unwrap();
        let e = &batch.events[0];
        assert_eq!(e.event_log_id.to_string(), ID);
        assert_eq!(e.event_datetime_ms, 1_795_536_123_456);
        assert_eq!(e.properties["df_total_purchase_amount"], Value::Double(15000.0));
        assert_eq!(e.items[0]["color"], Value::String("빨강".into()));
        assert_eq!(batch.identity.external_id.as_deref(), Some("user-1"));
        assert!(batch.registrations.is_empty());
    }

    #[test]
    fn reports_every_invalid_event_with_its_index() {
        let mut bad_type = event(ID);
        bad_type["properties"]["df_total_purchase_amount"] = json!("lots");
        let mut unknown = event("1b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f");
        unknown["event_name"] = json!("not_registered");
        let err = validate(&body(vec![event(ID), bad_type, unknown]), &taxonomy(), false).unwrap_err();
        assert_eq!(err.code, ImportCode::ValidationFailure);
        let indexes: Vec<_> = err.problems.iter().map(|p| p.index).collect();
        assert_eq!(indexes, vec![Some(1), Some(2)]);
    }

    #[test]
    fn request_level_codes() {
        let t = taxonomy();
        assert_eq!(
            validate(&json!([1]), &t, false).unwrap_err().code,
            ImportCode::BadRequest
        );
        let many: Vec<Json> = (0..101).map(|_| event(ID)).collect();
        assert_eq!(
            validate(&body(many), &t, false).unwrap_err().code,
            ImportCode::TooManyEvents
        );
        let no_identity = json!({"events": [event(ID)]});
        assert_eq!(
            validate(&no_identity, &t, false).unwrap_err().code,
            ImportCode::ValidationFailure
        );
        let empty_identity = json!({"common": {"identity": {}}, "events": [event(ID)]});
        assert_eq!(
            validate(&empty_identity, &t, false).unwrap_err().code,
            ImportCode::ValidationFailure
        );
        let items: Vec<Json> = (0..101).map(|i| json!({"df_item_id": format!("{i}")})).collect();
        let mut heavy = event(ID);
        heavy["items"] = Json::Array(items);
        assert_eq!(
            validate(&body(vec![heavy]), &t, false).unwrap_err().code,
            ImportCode::ValidationFailure
        );
    }

    #[test]
    fn rejects_bad_ids_and_datetimes() {
        for (field, value) in [
            ("event_log_id", json!("not-a-uuid")),
            ("event_log_id", json!("0b4e6f0c1f3a4c339a535c8f1b2d3e4f")),
            ("event_datetime", json!("2026-11-25 01:02:03")),
            ("event_name", json!(5)),
        ] {
            let mut e = event(ID);
            e[field] = value;
            assert!(validate(&body(vec![e]), &taxonomy(), false).is_err(), "{field}");
        }
    }

    #[test]
    fn df_unified_id_is_a_uuid_alone_or_with_external_id_only() {
        const CANONICAL: &str = "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f";
        for form in [
            CANONICAL,
            "0B4E6F0C-1F3A-4C33-9A53-5C8F1B2D3E4F",
            "0b4e6f0c1f3a4c339a535c8f1b2d3e4f",
            "{0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f}",
            "urn:uuid:0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f",
        ] {
            let alone = Identity::from_json(&json!({"df_unified_id": form})).unwrap();
            assert_eq!(alone.unified_id().as_deref(), Some(CANONICAL), "{form}");
            assert_eq!(alone.identifiers().count(), 0, "it is not an identifier");
            assert_eq!(
                serde_json::to_value(&alone).unwrap(),
                json!({"df_unified_id": CANONICAL}),
                "serialized in canonical form"
            );
        }
        let with_ext = Identity::from_json(&json!({"df_unified_id": CANONICAL, "external_id": "kim"})).unwrap();
        assert_eq!(
            (with_ext.unified_id().as_deref(), with_ext.external_id.as_deref()),
            (Some(CANONICAL), Some("kim"))
        );
        // null means absent, as for every key.
        let null = Identity::from_json(&json!({"df_unified_id": null, "email": "a@x"})).unwrap();
        assert_eq!(null.df_unified_id, None);

        for (identity, why) in [
            (json!({"df_unified_id": "not-a-uuid"}), "must be a UUID"),
            (json!({"df_unified_id": ""}), "must be a UUID"),
            (json!({"df_unified_id": 5}), "must be a string"),
            (
                json!({"df_unified_id": CANONICAL, "email": "a@x"}),
                "may be combined only with external_id",
            ),
            (
                json!({"df_unified_id": CANONICAL, "external_id": "kim", "line_user_id": "l"}),
                "may be combined only with external_id",
            ),
        ] {
            let reason = Identity::from_json(&identity).unwrap_err();
            assert!(reason.contains(why), "{identity}: {reason}");
            let body = json!({"common": {"identity": identity}, "events": [event(ID)]});
            let err = validate(&body, &taxonomy(), false).unwrap_err();
            assert_eq!(err.code, ImportCode::ValidationFailure, "{identity}");
        }
    }

    #[test]
    fn auto_register_infers_types() {
        let mut e = event(ID);
        e["event_name"] = json!("brand_new");
        e["properties"]["score"] = json!(3);
        e["items"][0]["size"] = json!("L");
        let batch = validate(&body(vec![e.clone()]), &taxonomy(), true).unwrap();
        assert_eq!(batch.registrations.events, vec!["brand_new".to_string()]);
        assert_eq!(
            batch.registrations.event_properties,
            vec![PropertyDef {
                name: "score".into(),
                ty: PropertyType::Long
            }]
        );
        assert_eq!(
            batch.registrations.item_properties,
            vec![PropertyDef {
                name: "size".into(),
                ty: PropertyType::String
            }]
        );
        assert!(validate(&body(vec![e]), &taxonomy(), false).is_err());
    }
}
