//! Users: the identity and user-profile Import API bodies (SPEC §4), the
//! user-profile export request and its column plan (§2.1, §2.4), and
//! audience definitions (§1, §5.2).
//!
//! User property values are kept as their CSV cell text (the encoder's
//! spelling), so that an export copies them as they are and an audience
//! rule compares cells, never differently spelled numbers.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::export::{Body, ExportFailure, Selection};
use crate::import::{Identity, ImportCode, ImportProblem, ImportRejection};
use crate::taxonomy::{is_valid_custom_name, Taxonomy, TaxonomyDoc};
use crate::time::{parse_date, parse_datetime};
use crate::types::{json_kind, PropertyType, Value};

/// Most profiles one `/api/v1/user-profile` request may carry (else 40403).
pub const MAX_PROFILES_PER_REQUEST: usize = 100;

/// The one identity column the user-profile export knows (SPEC §2.4).
pub const EXTERNAL_ID_COLUMN: &str = "df_external_id";
pub const UNIFIED_ID_COLUMN: &str = "df_unified_id";

/// A user property value as stored: its CSV cell text.
pub fn cell_text(value: &Value) -> String {
    let mut out = Vec::new();
    push_cell_text(&mut out, value);
    // Built from UTF-8 strings and ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends [`cell_text`] of `value`: a string as it is, a scalar as the
/// CSV encoder writes it (never quoted), an array as its JSON text.
pub fn push_cell_text(out: &mut Vec<u8>, value: &Value) {
    use crate::csv;
    match value {
        Value::String(s) => out.extend_from_slice(s.as_bytes()),
        Value::Long(n) => csv::push_i64(out, *n),
        Value::Double(f) => csv::push_f64(out, *f),
        Value::Boolean(b) => csv::push_bool(out, *b),
        Value::Datetime(ms) => csv::push_datetime_ms(out, *ms),
        Value::Date(d) => csv::push_date_days(out, *d),
        Value::StringArray(_) | Value::LongArray(_) | Value::DoubleArray(_) => csv::push_json_array(out, value),
    }
}

fn invalid(reason: impl Into<String>) -> ImportRejection {
    ImportRejection::new(ImportCode::ValidationFailure, reason)
}

fn object(body: &Json) -> Result<&serde_json::Map<String, Json>, ImportRejection> {
    body.as_object().ok_or_else(|| {
        ImportRejection::new(
            ImportCode::BadRequest,
            format!("the body must be a JSON object, not {}", json_kind(body)),
        )
    })
}

fn check_fields(obj: &serde_json::Map<String, Json>, known: &[&str]) -> Result<(), ImportRejection> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(invalid(format!("unknown field {k:?}"))),
        None => Ok(()),
    }
}

fn request_datetime(obj: &serde_json::Map<String, Json>) -> Result<i64, ImportRejection> {
    match obj.get("request_datetime") {
        Some(Json::String(s)) => parse_datetime(s).map_err(|e| invalid(format!("request_datetime {e}: {s:?}"))),
        Some(other) => Err(invalid(format!(
            "request_datetime must be a string, not {}",
            json_kind(other)
        ))),
        None => Err(invalid("request_datetime is required")),
    }
}

fn identity(obj: &serde_json::Map<String, Json>) -> Result<Identity, ImportRejection> {
    let json = obj.get("identity").ok_or_else(|| invalid("identity is required"))?;
    Identity::from_json(json).map_err(invalid)
}

/// `/api/v1/identities`: `{"identity":{…},"request_datetime":"…"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRequest {
    pub identity: Identity,
    pub request_ms: i64,
}

pub fn validate_identity(body: &Json) -> Result<IdentityRequest, ImportRejection> {
    let obj = object(body)?;
    check_fields(obj, &["identity", "request_datetime"])?;
    Ok(IdentityRequest {
        identity: identity(obj)?,
        request_ms: request_datetime(obj)?,
    })
}

/// `/api/v1/identities/delete` (SPEC §4): the external_id whose profile
/// goes. `identity.external_id` is required (else 40001); a
/// `df_unified_id` is refused with 40001 (fineport decision: a profile is
/// deleted by its external_id only, never by an id that might name
/// another profile than the external_id's).
pub fn validate_delete(body: &Json) -> Result<String, ImportRejection> {
    let obj = object(body)?;
    check_fields(obj, &["identity", "request_datetime"])?;
    let id = identity(obj)?;
    request_datetime(obj)?;
    if id.df_unified_id.is_some() {
        return Err(invalid(format!(
            "identity.{} is not accepted here: a profile is deleted by its external_id",
            crate::import::UNIFIED_ID_KEY
        )));
    }
    id.external_id
        .ok_or_else(|| invalid("identity.external_id is required to delete a profile"))
}

/// One profile update: typed user properties, as cell text, with the time
/// that orders updates.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileUpdate {
    pub identity: Identity,
    /// (property name, cell text)
    pub properties: Vec<(String, String)>,
    pub request_ms: i64,
}

/// One user property value to store: `(unified id, property name)` →
/// `(cell text, request time in UTC ms)`.
pub type NewestValue<'a> = ((&'a str, &'a str), (&'a str, i64));

/// The newest value of each (profile, property) in a batch of updates
/// (SPEC §4 `/user-profile`: a value older by `request_datetime` than the
/// stored one does not overwrite it; within a batch, on a tie, the later
/// update wins, as it would against a stored value). `unified_ids[i]` is
/// the profile `updates[i]` resolved to. Sorted by (profile, property): the
/// order in which a store locks the rows, so concurrent batches cannot
/// deadlock.
pub fn newest_values<'a>(updates: &'a [ProfileUpdate], unified_ids: &'a [String]) -> Vec<NewestValue<'a>> {
    let mut latest: std::collections::HashMap<(&str, &str), (&str, i64)> = std::collections::HashMap::new();
    for (update, uid) in updates.iter().zip(unified_ids) {
        for (name, cell) in &update.properties {
            let slot = latest
                .entry((uid.as_str(), name.as_str()))
                .or_insert((cell.as_str(), update.request_ms));
            if update.request_ms >= slot.1 {
                *slot = (cell.as_str(), update.request_ms);
            }
        }
    }
    let mut rows: Vec<NewestValue<'a>> = latest.into_iter().collect();
    rows.sort_unstable();
    rows
}

/// A validated `/api/v1/user-profile` request (one object, or a list of up
/// to [`MAX_PROFILES_PER_REQUEST`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileBatch {
    pub updates: Vec<ProfileUpdate>,
    pub registrations: TaxonomyDoc,
}

pub fn validate_profiles(
    body: &Json,
    taxonomy: &Taxonomy,
    auto_register: bool,
) -> Result<ProfileBatch, ImportRejection> {
    let items: Vec<&Json> = match body {
        Json::Array(list) => list.iter().collect(),
        Json::Object(_) => vec![body],
        other => {
            return Err(ImportRejection::new(
                ImportCode::BadRequest,
                format!(
                    "the body must be a JSON object or a list of them, not {}",
                    json_kind(other)
                ),
            ))
        }
    };
    if items.len() > MAX_PROFILES_PER_REQUEST {
        return Err(ImportRejection::new(
            ImportCode::TooManyUserProfiles,
            format!(
                "{} profiles in one request; at most {MAX_PROFILES_PER_REQUEST}",
                items.len()
            ),
        ));
    }
    if items.is_empty() {
        return Err(invalid("no profile in the request"));
    }
    let mut learned: Taxonomy = Taxonomy::default();
    let mut problems = Vec::new();
    let mut updates = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let problem = |reason: String| ImportProblem {
            index: Some(index),
            reason,
        };
        let one = (|| {
            let obj = item
                .as_object()
                .ok_or_else(|| format!("a profile must be an object, not {}", json_kind(item)))?;
            if let Some(k) = obj
                .keys()
                .find(|k| !["identity", "user_properties", "request_datetime"].contains(&k.as_str()))
            {
                return Err(format!("unknown field {k:?}"));
            }
            let identity = identity(obj).map_err(|r| r.problems[0].reason.clone())?;
            let request_ms = request_datetime(obj).map_err(|r| r.problems[0].reason.clone())?;
            let props = match obj.get("user_properties") {
                Some(Json::Object(p)) => p,
                Some(other) => return Err(format!("user_properties must be an object, not {}", json_kind(other))),
                None => return Err("user_properties is required".into()),
            };
            let mut properties = Vec::new();
            for (name, raw) in props {
                if raw.is_null() {
                    continue;
                }
                let ty = match taxonomy
                    .user_properties
                    .get(name)
                    .or_else(|| learned.user_properties.get(name))
                {
                    Some(ty) => *ty,
                    None if auto_register && is_valid_custom_name(name) => {
                        let ty = PropertyType::infer(raw)
                            .ok_or_else(|| format!("user_properties.{name}: cannot infer a type"))?;
                        learned.user_properties.insert(name.clone(), ty);
                        ty
                    }
                    None => return Err(format!("user property {name:?} is not in the taxonomy")),
                };
                let value = Value::from_json(raw, ty).map_err(|e| format!("user_properties.{name}: {e}"))?;
                properties.push((name.clone(), cell_text(&value)));
            }
            Ok(ProfileUpdate {
                identity,
                properties,
                request_ms,
            })
        })();
        match one {
            Ok(u) => updates.push(u),
            Err(reason) => problems.push(problem(reason)),
        }
    }
    if !problems.is_empty() {
        return Err(ImportRejection {
            code: ImportCode::ValidationFailure,
            problems,
        });
    }
    Ok(ProfileBatch {
        updates,
        registrations: learned.to_doc(),
    })
}

/// A validated user-profile export: which columns, which users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileExportPlan {
    pub with_external_id: bool,
    /// The user properties exported, in byte order of their names.
    pub properties: Vec<(String, PropertyType)>,
    pub audience: Option<String>,
}

impl ProfileExportPlan {
    /// The CSV columns in byte order of their names.
    pub fn headers(&self) -> Vec<String> {
        let mut h: Vec<String> = std::iter::once(UNIFIED_ID_COLUMN.to_string())
            .chain(self.with_external_id.then(|| EXTERNAL_ID_COLUMN.to_string()))
            .chain(self.properties.iter().map(|(n, _)| n.clone()))
            .collect();
        h.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        h
    }
}

const PROFILE_EXPORT_FIELDS: &[&str] = &[
    "properties",
    "properties_condition_type",
    "audience",
    "identities",
    "identities_condition_type",
];

/// Validates a user-profile export body against the user taxonomy. The
/// audience id is checked by the caller, who knows the audiences.
pub fn plan_profile_export(raw: &Json, taxonomy: &Taxonomy) -> Result<ProfileExportPlan, ExportFailure> {
    let body = Body::parse(raw, PROFILE_EXPORT_FIELDS)?;
    let properties = body
        .selection("properties", "properties_condition_type", true)?
        .unwrap_or(Selection::All);
    let identities = body
        .selection("identities", "identities_condition_type", false)?
        .unwrap_or(Selection::Exclude(vec![EXTERNAL_ID_COLUMN.to_string()]));
    let audience = body.string("audience", false)?.map(str::to_owned);

    let check = |names: &[String], known: &dyn Fn(&str) -> bool, what: &str| match names.iter().find(|n| !known(n)) {
        Some(unknown) => Err(ExportFailure::invalid(format!("{what} {unknown:?} is not exported"))),
        None => Ok(()),
    };
    let with_external_id = match &identities {
        Selection::All => true,
        Selection::Include(names) | Selection::Exclude(names) => {
            check(names, &|n| n == EXTERNAL_ID_COLUMN, "identity")?;
            matches!(identities, Selection::Include(_))
        }
    };
    let all = &taxonomy.user_properties;
    let properties = match &properties {
        Selection::All => all.iter().map(|(n, t)| (n.clone(), *t)).collect(),
        Selection::Include(names) | Selection::Exclude(names) => {
            check(names, &|n| all.contains_key(n), "user property")?;
            let include = matches!(properties, Selection::Include(_));
            all.iter()
                .filter(|(n, _)| names.contains(n) == include)
                .map(|(n, t)| (n.clone(), *t))
                .collect()
        }
    };
    Ok(ProfileExportPlan {
        with_external_id,
        properties,
        audience,
    })
}

/// An audience (SPEC §1): a static list of external_ids or a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]{6}$")]
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
}

/// Every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub all: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum Condition {
    /// Performed `event` at least `min_count` times between the two
    /// dates (inclusive, service timezone).
    Event {
        event: String,
        #[schema(minimum = 1)]
        min_count: u32,
        #[schema(format = Date)]
        from_date: String,
        #[schema(format = Date)]
        to_date: String,
    },
    /// User property `property` equals `equals`.
    Property {
        property: String,
        #[schema(schema_with = property_value_schema)]
        equals: Json,
    },
}

/// In the OpenAPI document: a user property's value, as the Import API
/// takes it (a string, number or boolean, or an array of them); the
/// taxonomy's type of `property` decides which is valid.
fn property_value_schema() -> utoipa::openapi::OneOfBuilder {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let scalar = || {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
    };
    scalar().item(ArrayBuilder::new().items(scalar()))
}

/// A condition checked against the taxonomy, ready for a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedCondition {
    Event {
        event: String,
        min_count: u32,
        from_date: NaiveDate,
        to_date: NaiveDate,
    },
    /// The property and the cell text it must equal.
    Property { property: String, cell: String },
}

/// Who a user-profile export is restricted to, as a store evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudienceFilter {
    ExternalIds(Vec<String>),
    All(Vec<CheckedCondition>),
}

/// Whether `id` is a valid audience id: 6 lowercase letters or digits.
pub fn is_valid_audience_id(id: &str) -> bool {
    id.len() == 6 && id.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

impl Audience {
    /// The filter a store evaluates at export time.
    pub fn filter(&self, taxonomy: &Taxonomy) -> Result<AudienceFilter, String> {
        let conditions = self.check(taxonomy)?;
        Ok(match &self.external_ids {
            Some(ids) => AudienceFilter::ExternalIds(ids.clone()),
            None => AudienceFilter::All(conditions),
        })
    }

    /// Checks the definition; returns the rule's conditions checked and typed.
    pub fn check(&self, taxonomy: &Taxonomy) -> Result<Vec<CheckedCondition>, String> {
        if !self.id.is_empty() && !is_valid_audience_id(&self.id) {
            return Err(format!(
                "audience id {:?} must be 6 lowercase letters or digits",
                self.id
            ));
        }
        if self.name.trim().is_empty() {
            return Err("an audience needs a name".into());
        }
        match (&self.external_ids, &self.rule) {
            (Some(_), None) => Ok(Vec::new()),
            (None, Some(rule)) if !rule.all.is_empty() => rule.all.iter().map(|c| c.check(taxonomy)).collect(),
            (None, Some(_)) => Err("rule.all needs at least one condition".into()),
            _ => Err("an audience has either external_ids or a rule".into()),
        }
    }
}

impl Condition {
    fn check(&self, taxonomy: &Taxonomy) -> Result<CheckedCondition, String> {
        match self {
            Condition::Event {
                event,
                min_count,
                from_date,
                to_date,
            } => {
                if !taxonomy.events.contains(event) {
                    return Err(format!("event {event:?} is not in the taxonomy"));
                }
                let from =
                    parse_date(from_date).ok_or_else(|| format!("from_date {from_date:?} is not a yyyy-MM-dd date"))?;
                let to = parse_date(to_date).ok_or_else(|| format!("to_date {to_date:?} is not a yyyy-MM-dd date"))?;
                if from > to || *min_count == 0 {
                    return Err("an event condition needs from_date <= to_date and min_count >= 1".into());
                }
                Ok(CheckedCondition::Event {
                    event: event.clone(),
                    min_count: *min_count,
                    from_date: from,
                    to_date: to,
                })
            }
            Condition::Property { property, equals } => {
                let ty = taxonomy
                    .user_properties
                    .get(property)
                    .ok_or_else(|| format!("user property {property:?} is not in the taxonomy"))?;
                let value = Value::from_json(equals, *ty).map_err(|e| format!("{property}: {e}"))?;
                Ok(CheckedCondition::Property {
                    property: property.clone(),
                    cell: cell_text(&value),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_newest_value_of_each_property_wins_and_a_tie_goes_to_the_later() {
        let update = |ext: &str, props: &[(&str, &str)], ms| ProfileUpdate {
            identity: Identity {
                external_id: Some(ext.into()),
                ..Identity::default()
            },
            properties: props.iter().map(|(n, c)| (n.to_string(), c.to_string())).collect(),
            request_ms: ms,
        };
        let updates = [
            update("a", &[("tier", "gold"), ("visits", "3")], 20),
            update("a", &[("tier", "silver")], 10),
            update("b", &[("tier", "bronze")], 5),
            update("a", &[("visits", "4")], 20),
        ];
        let uids = ["u2".to_string(), "u2".to_string(), "u1".to_string(), "u2".to_string()];
        assert_eq!(
            newest_values(&updates, &uids),
            vec![
                (("u1", "tier"), ("bronze", 5)),
                (("u2", "tier"), ("gold", 20)),
                (("u2", "visits"), ("4", 20)),
            ]
        );
    }

    fn taxonomy() -> Taxonomy {
        let mut t = Taxonomy::standard();
        t.user_properties.insert("score".into(), PropertyType::Double);
        t.user_properties.insert("tags".into(), PropertyType::StringArray);
        t
    }

    #[test]
    fn cells_are_stored_unquoted() {
        assert_eq!(cell_text(&Value::String("a,\"b\"".into())), "a,\"b\"");
        assert_eq!(cell_text(&Value::Double(3.0)), "3.0");
        assert_eq!(
            cell_text(&Value::StringArray(vec!["x".into(), "y".into()])),
            r#"["x","y"]"#
        );
        assert_eq!(cell_text(&Value::Boolean(true)), "true");
    }

    #[test]
    fn profile_bodies_are_typed_and_counted() {
        let one = json!({"identity": {"external_id": "u1"}, "user_properties": {"score": 3, "df_push_optin": true},
                         "request_datetime": "2026-11-25T00:00:00Z"});
        let batch = validate_profiles(&one, &taxonomy(), false).unwrap();
        assert_eq!(
            batch.updates[0].properties,
            vec![("score".into(), "3.0".into()), ("df_push_optin".into(), "true".into())]
        );
        let many = Json::Array(vec![one.clone(); 101]);
        assert_eq!(
            validate_profiles(&many, &taxonomy(), false).unwrap_err().code,
            ImportCode::TooManyUserProfiles
        );
        let mut bad = one.clone();
        bad["user_properties"]["score"] = json!("high");
        let err = validate_profiles(&json!([one, bad]), &taxonomy(), false).unwrap_err();
        assert_eq!(
            (err.code, err.problems[0].index),
            (ImportCode::ValidationFailure, Some(1))
        );
        assert_eq!(
            validate_profiles(&json!("x"), &taxonomy(), false).unwrap_err().code,
            ImportCode::BadRequest
        );
    }

    #[test]
    fn identity_and_delete_bodies() {
        let ok =
            json!({"identity": {"external_id": "u1", "email": "a@b.c"}, "request_datetime": "2026-11-25T00:00:00Z"});
        assert!(validate_identity(&ok).is_ok());
        assert!(validate_identity(&json!({"identity": {"email": "a@b.c"}})).is_err());
        assert_eq!(validate_delete(&ok).unwrap(), "u1");
        let no_ext = json!({"identity": {"email": "a@b.c"}, "request_datetime": "2026-11-25T00:00:00Z"});
        assert_eq!(
            validate_delete(&no_ext).unwrap_err().code,
            ImportCode::ValidationFailure
        );
        // df_unified_id: accepted by /identities, refused by the delete.
        let by_uid = json!({"identity": {"external_id": "u1", "df_unified_id": "0B4E6F0C1F3A4C339A535C8F1B2D3E4F"},
                            "request_datetime": "2026-11-25T00:00:00Z"});
        let request = validate_identity(&by_uid).unwrap();
        assert_eq!(
            request.identity.unified_id().as_deref(),
            Some("0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f")
        );
        let err = validate_delete(&by_uid).unwrap_err();
        assert_eq!(err.code, ImportCode::ValidationFailure);
        assert!(err.problems[0].reason.contains("df_unified_id"), "{err:?}");
    }

    #[test]
    fn profile_export_plans_columns_in_byte_order() {
        let body = json!({"properties_condition_type": "include", "properties": ["score", "df_name"],
                          "identities_condition_type": "all"});
        let plan = plan_profile_export(&body, &taxonomy()).unwrap();
        assert_eq!(
            plan.headers(),
            vec!["df_external_id", "df_name", "df_unified_id", "score"]
        );
        let no_ids = plan_profile_export(&json!({"properties_condition_type": "all"}), &taxonomy()).unwrap();
        assert!(!no_ids.with_external_id);
        for bad in [
            json!({}),
            json!({"properties_condition_type": "include", "properties": ["nope"]}),
            json!({"properties_condition_type": "all", "identities_condition_type": "include", "identities": ["email"]}),
            json!({"properties_condition_type": "all", "audience": 5}),
        ] {
            assert!(plan_profile_export(&bad, &taxonomy()).is_err(), "{bad}");
        }
    }

    #[test]
    fn audiences_check_their_rules() {
        let t = taxonomy();
        let rule: Audience = serde_json::from_value(json!({"name": "buyers", "rule": {"all": [
            {"event": "df_purchase", "min_count": 2, "from_date": "2026-11-01", "to_date": "2026-11-30"},
            {"property": "score", "equals": 3}]}}))
        .unwrap();
        let checked = rule.check(&t).unwrap();
        assert_eq!(
            checked[1],
            CheckedCondition::Property {
                property: "score".into(),
                cell: "3.0".into()
            }
        );
        let list: Audience = serde_json::from_value(json!({"name": "vip", "external_ids": ["a"]})).unwrap();
        assert!(list.check(&t).unwrap().is_empty());
        let both: Audience =
            serde_json::from_value(json!({"name": "x", "external_ids": [], "rule": {"all": []}})).unwrap();
        assert!(both.check(&t).is_err());
        let bad_id: Audience =
            serde_json::from_value(json!({"id": "TOO-LONG", "name": "x", "external_ids": []})).unwrap();
        assert!(bad_id.check(&t).is_err());
    }
}
