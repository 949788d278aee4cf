//! Property types of the DFINERY taxonomy and typed property values.
//!
//! Every value that enters fineport is checked against the type its name was
//! registered with (SPEC §1 "Taxonomy") and converted into a [`Value`]; the
//! stores keep values typed, and the CSV encoder turns them back into text.

use serde::{Deserialize, Serialize};

use crate::json::JsonRead;
use crate::time;

/// A taxonomy type, spelled on the wire exactly as DFINERY spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PropertyType {
    String,
    Long,
    Double,
    Boolean,
    Datetime,
    Date,
    #[serde(rename = "Array of String")]
    StringArray,
    #[serde(rename = "Array of Long")]
    LongArray,
    #[serde(rename = "Array of Double")]
    DoubleArray,
    /// The type of `df_items` alone (SPEC §1): a list of items, each an
    /// object of item properties. Never a value type of any other name, never
    /// a column (each item property is a `df_items_<prop>` column).
    #[serde(rename = "Array of Item")]
    Items,
}

impl PropertyType {
    /// The types a registered name can have (every type but [`PropertyType::Items`]).
    pub const ALL: [PropertyType; 9] = [
        PropertyType::String,
        PropertyType::Long,
        PropertyType::Double,
        PropertyType::Boolean,
        PropertyType::Datetime,
        PropertyType::Date,
        PropertyType::StringArray,
        PropertyType::LongArray,
        PropertyType::DoubleArray,
    ];

    /// The wire name (`"Array of Long"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyType::String => "String",
            PropertyType::Long => "Long",
            PropertyType::Double => "Double",
            PropertyType::Boolean => "Boolean",
            PropertyType::Datetime => "Datetime",
            PropertyType::Date => "Date",
            PropertyType::StringArray => "Array of String",
            PropertyType::LongArray => "Array of Long",
            PropertyType::DoubleArray => "Array of Double",
            PropertyType::Items => "Array of Item",
        }
    }

    pub fn parse(name: &str) -> Option<PropertyType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The type `auto_register` gives a name first seen with this JSON value.
    /// Strings stay `String` (a date-looking string is not guessed to be a date).
    pub fn infer<J: JsonRead>(json: &J) -> Option<PropertyType> {
        if json.as_str().is_some() {
            Some(PropertyType::String)
        } else if json.as_bool().is_some() {
            Some(PropertyType::Boolean)
        } else if json.as_i64().is_some() {
            Some(PropertyType::Long)
        } else if json.is_number() {
            Some(PropertyType::Double)
        } else if let Some(items) = json.as_array() {
            if items.iter().all(|v| v.as_str().is_some()) {
                Some(PropertyType::StringArray)
            } else if items.iter().all(|v| v.as_i64().is_some()) {
                Some(PropertyType::LongArray)
            } else if items.iter().all(|v| v.is_number()) {
                Some(PropertyType::DoubleArray)
            } else {
                None
            }
        } else {
            None // null, an object
        }
    }
}

impl std::fmt::Display for PropertyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed value. Datetimes are UTC milliseconds since the Unix epoch, dates
/// are days since 1970-01-01.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Long(i64),
    Double(f64),
    Boolean(bool),
    Datetime(i64),
    Date(i32),
    StringArray(Vec<String>),
    LongArray(Vec<i64>),
    DoubleArray(Vec<f64>),
}

/// A string value as stored: refused when it holds U+0000 (NUL), which
/// PostgreSQL's text type and `COPY` cannot hold and many CSV readers cut at,
/// so a file with it could not be loaded where data engineers load exports.
/// Every other character, control characters included, is kept byte for
/// byte (CR and LF are quoted in the CSV, RFC 4180).
pub fn text(s: &str) -> Result<String, String> {
    if s.contains('\0') {
        return Err(format!(
            "contains a NUL character (U+0000), which no export target can load: {s:?}"
        ));
    }
    Ok(s.to_owned())
}

impl Value {
    /// Converts a JSON value to `ty`, or says why it cannot be one.
    pub fn from_json<J: JsonRead>(json: &J, ty: PropertyType) -> Result<Value, String> {
        let wrong = || format!("expected {ty}, got {}", json_kind(json));
        Ok(match ty {
            PropertyType::String => Value::String(text(json.as_str().ok_or_else(wrong)?)?),
            PropertyType::Long => Value::Long(json.as_i64().ok_or_else(wrong)?),
            PropertyType::Double => Value::Double(json_f64(json).ok_or_else(wrong)?),
            PropertyType::Boolean => Value::Boolean(json.as_bool().ok_or_else(wrong)?),
            PropertyType::Datetime => {
                let s = json.as_str().ok_or_else(wrong)?;
                Value::Datetime(time::parse_datetime(s).map_err(|e| format!("{e}: {s:?}"))?)
            }
            PropertyType::Date => {
                let s = json.as_str().ok_or_else(wrong)?;
                Value::Date(time::parse_date_days(s).ok_or_else(|| format!("not a yyyy-MM-dd date: {s:?}"))?)
            }
            PropertyType::StringArray => {
                let strings = array_of(json, ty, |v| v.as_str().map(str::to_owned))?;
                strings.iter().try_for_each(|s| text(s).map(drop))?;
                Value::StringArray(strings)
            }
            PropertyType::LongArray => Value::LongArray(array_of(json, ty, J::as_i64)?),
            PropertyType::DoubleArray => Value::DoubleArray(array_of(json, ty, json_f64)?),
            PropertyType::Items => return Err("df_items is sent as the event's \"items\", not as a property".into()),
        })
    }

    pub fn property_type(&self) -> PropertyType {
        match self {
            Value::String(_) => PropertyType::String,
            Value::Long(_) => PropertyType::Long,
            Value::Double(_) => PropertyType::Double,
            Value::Boolean(_) => PropertyType::Boolean,
            Value::Datetime(_) => PropertyType::Datetime,
            Value::Date(_) => PropertyType::Date,
            Value::StringArray(_) => PropertyType::StringArray,
            Value::LongArray(_) => PropertyType::LongArray,
            Value::DoubleArray(_) => PropertyType::DoubleArray,
        }
    }
}

/// Any finite JSON number as a double (integers included: `15000` is a valid Double).
fn json_f64<J: JsonRead>(json: &J) -> Option<f64> {
    json.as_f64().filter(|f| f.is_finite())
}

fn array_of<J: JsonRead, T>(json: &J, ty: PropertyType, item: impl Fn(&J) -> Option<T>) -> Result<Vec<T>, String> {
    let items = json
        .as_array()
        .ok_or_else(|| format!("expected {ty}, got {}", json_kind(json)))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| item(v).ok_or_else(|| format!("expected {ty}, element {i} is {}", json_kind(v))))
        .collect()
}

/// A short name for a JSON value's kind, for error messages.
pub fn json_kind<J: JsonRead>(json: &J) -> &'static str {
    json.kind()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as Json};

    #[test]
    fn converts_each_type_or_explains_why_not() {
        let cases: Vec<(Json, PropertyType, Result<Value, ()>)> = vec![
            (json!("a"), PropertyType::String, Ok(Value::String("a".into()))),
            (json!(1), PropertyType::String, Err(())),
            (json!("a\u{0}b"), PropertyType::String, Err(())),
            (
                json!("\t\r\n\u{7}\u{7f}"),
                PropertyType::String,
                Ok(Value::String("\t\r\n\u{7}\u{7f}".into())),
            ),
            (json!(["ok", "\u{0}"]), PropertyType::StringArray, Err(())),
            (json!([]), PropertyType::Items, Err(())),
            (json!(42), PropertyType::Long, Ok(Value::Long(42))),
            (json!(1.5), PropertyType::Long, Err(())),
            (json!("42"), PropertyType::Long, Err(())),
            (json!(15000), PropertyType::Double, Ok(Value::Double(15000.0))),
            (json!(0.1), PropertyType::Double, Ok(Value::Double(0.1))),
            (json!(true), PropertyType::Boolean, Ok(Value::Boolean(true))),
            (json!("true"), PropertyType::Boolean, Err(())),
            (json!("1970-01-01T00:00:01.5000Z"), PropertyType::Datetime, Err(())),
            (
                json!("1970-01-01T00:00:01.500Z"),
                PropertyType::Datetime,
                Ok(Value::Datetime(1500)),
            ),
            (json!("1970-01-02"), PropertyType::Date, Ok(Value::Date(1))),
            (json!("1970-02-30"), PropertyType::Date, Err(())),
            (
                json!(["a", "b"]),
                PropertyType::StringArray,
                Ok(Value::StringArray(vec!["a".into(), "b".into()])),
            ),
            (json!(["a", 1]), PropertyType::StringArray, Err(())),
            (json!([1, 2]), PropertyType::LongArray, Ok(Value::LongArray(vec![1, 2]))),
            (
                json!([1, 2.5]),
                PropertyType::DoubleArray,
                Ok(Value::DoubleArray(vec![1.0, 2.5])),
            ),
            (json!([]), PropertyType::LongArray, Ok(Value::LongArray(vec![]))),
        ];
        for (json, ty, expected) in cases {
            let got = Value::from_json(&json, ty);
            match expected {
                Ok(v) => assert_eq!(got, Ok(v), "{json} as {ty}"),
                Err(()) => assert!(got.is_err(), "{json} as {ty} should fail, got {got:?}"),
            }
        }
    }

    /// Found by the property tests: without serde_json's `float_roundtrip`
    /// a body's number could be read one ULP off, so the value stored (and
    /// exported) was not the one sent; and a long positional decimal of an
    /// exported array cell was read back as another double.
    #[test]
    fn doubles_are_read_from_json_text_exactly() {
        for text in [
            "9.131390548646525e17",
            "3.871555796927232e146",
            "3.6287105548205473e-214",
            "1.4788397910186015e-165",
        ] {
            let sent: f64 = text.parse().unwrap();
            let json: Json = serde_json::from_str(text).unwrap();
            assert_eq!(
                Value::from_json(&json, PropertyType::Double),
                Ok(Value::Double(sent)),
                "{text}"
            );
            // The export's spelling of it, inside an array cell.
            let mut cell = Vec::new();
            crate::csv::push_json_array(&mut cell, &Value::DoubleArray(vec![sent]));
            let back: Json = serde_json::from_slice(&cell).unwrap();
            assert_eq!(back[0].as_f64(), Some(sent), "{}", String::from_utf8_lossy(&cell));
        }
    }

    #[test]
    fn type_names_round_trip() {
        for ty in PropertyType::ALL {
            assert_eq!(PropertyType::parse(ty.as_str()), Some(ty));
            let json = serde_json::to_string(&ty).unwrap();
            assert_eq!(json, format!("\"{}\"", ty.as_str()));
        }
        assert_eq!(PropertyType::parse("array of string"), None);
    }

    #[test]
    fn infers_types_for_auto_register() {
        assert_eq!(PropertyType::infer(&json!("x")), Some(PropertyType::String));
        assert_eq!(PropertyType::infer(&json!(3)), Some(PropertyType::Long));
        assert_eq!(PropertyType::infer(&json!(3.5)), Some(PropertyType::Double));
        assert_eq!(PropertyType::infer(&json!([1, 2.5])), Some(PropertyType::DoubleArray));
        assert_eq!(PropertyType::infer(&json!([])), Some(PropertyType::StringArray));
        assert_eq!(PropertyType::infer(&json!({"a": 1})), None);
        assert_eq!(PropertyType::infer(&json!(null)), None);
    }
}
