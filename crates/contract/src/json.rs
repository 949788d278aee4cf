//! Reading request JSON: one set of validation rules over two trees.
//!
//! The Import API's rules (SPEC §4) read a body through [`JsonRead`], so the
//! same code checks a [`serde_json::Value`] and a [`Doc`]. A `Doc` is the
//! tree `POST /api/v1/events` parses into: strings and keys borrowed from
//! the request body where they hold no escape, objects as plain lists of
//! pairs. Profiles of heavy imports had `serde_json::Value` — a `String` for
//! every key and string, an ordered hash map (`preserve_order`, which the
//! byte-exact answers need) for every object — at 15 % of the server's CPU
//! and freeing it at 3 %; a `Doc` allocates once per array or object (and
//! per string or key that holds an escape).
//!
//! A `Doc` answers every question as `serde_json::Value` would, so a body
//! is valid or refused, with the same reasons, whichever tree reads it: an
//! integer is an `i64` or a `u64` as serde_json decides, and the parser
//! (serde_json's, with its nesting limit) is the same. One difference, on
//! purpose: an object that repeats a key is refused
//! ([`DocError::RepeatedKey`]), where `serde_json::Value` keeps the last
//! value and drops the others without a word. Which of two values a client
//! meant cannot be known, and fineport does not drop data silently; every
//! Import API body goes through [`Doc::parse`] for this (SPEC §4: 40001),
//! and every Export API body through [`parse_value`] (`invalid_parameter`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;

/// What the validation rules ask of a JSON value.
pub trait JsonRead: Sized {
    /// An object's entries, in order.
    type Entries<'s>: Iterator<Item = (&'s str, &'s Self)>
    where
        Self: 's;

    fn is_null(&self) -> bool;
    fn as_str(&self) -> Option<&str>;
    fn as_bool(&self) -> Option<bool>;
    /// An integer that fits in an `i64`.
    fn as_i64(&self) -> Option<i64>;
    /// Any number as an `f64`.
    fn as_f64(&self) -> Option<f64>;
    fn is_number(&self) -> bool;
    fn as_array(&self) -> Option<&[Self]>;
    fn entries(&self) -> Option<Self::Entries<'_>>;
    /// The value of `key` in an object (`None` for a missing key or a non-object).
    fn get(&self, key: &str) -> Option<&Self>;
    /// A short name of the value's kind, for error messages: "null",
    /// "a boolean", "an integer", "a fractional number", "a string",
    /// "an array", "an object".
    fn kind(&self) -> &'static str;
}

type JsonEntry<'s> = (&'s String, &'s Json);

impl JsonRead for Json {
    type Entries<'s> = std::iter::Map<serde_json::map::Iter<'s>, fn(JsonEntry<'s>) -> (&'s str, &'s Json)>;

    fn is_null(&self) -> bool {
        Json::is_null(self)
    }
    fn as_str(&self) -> Option<&str> {
        Json::as_str(self)
    }
    fn as_bool(&self) -> Option<bool> {
        Json::as_bool(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Json::as_i64(self)
    }
    fn as_f64(&self) -> Option<f64> {
        Json::as_f64(self)
    }
    fn is_number(&self) -> bool {
        Json::is_number(self)
    }
    fn as_array(&self) -> Option<&[Json]> {
        Json::as_array(self).map(Vec::as_slice)
    }
    fn entries<'s>(&'s self) -> Option<Self::Entries<'s>> {
        let entry: fn(JsonEntry<'s>) -> (&'s str, &'s Json) = |(k, v)| (k.as_str(), v);
        Json::as_object(self).map(|m| m.iter().map(entry))
    }
    fn get(&self, key: &str) -> Option<&Json> {
        Json::as_object(self).and_then(|m| m.get(key))
    }
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(n) if n.is_i64() || n.is_u64() => "an integer",
            Json::Number(_) => "a fractional number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// A JSON value whose strings borrow from the parsed text where they can.
/// Parse one with [`Doc::parse`].
#[derive(Debug, Clone, PartialEq)]
pub enum Doc<'a> {
    Null,
    Bool(bool),
    /// A negative integer (serde_json's `NegInt`).
    Int(i64),
    /// A non-negative integer (serde_json's `PosInt`).
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Doc<'a>>),
    /// Entries in order, each key once.
    Object(Vec<(Cow<'a, str>, Doc<'a>)>),
}

/// Why a body is not a [`Doc`].
#[derive(Debug)]
pub enum DocError {
    /// Not JSON: serde_json's own error, with its line and column.
    NotJson(serde_json::Error),
    /// An object repeats a key: `repeated key "name" at line L column C`.
    RepeatedKey(String),
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocError::NotJson(e) => write!(f, "the body is not JSON: {e}"),
            DocError::RepeatedKey(at) => write!(
                f,
                "the body has a {at}; which value was meant cannot be known, so send each key once"
            ),
        }
    }
}

/// Parses a request body into a `serde_json::Value`, refusing what
/// [`Doc::parse`] refuses: the same errors, so that every DFINERY request
/// body (the Export API's too) refuses an object that repeats a key.
pub fn parse_value(text: &[u8]) -> Result<Json, DocError> {
    Doc::parse(text)?;
    serde_json::from_slice(text).map_err(DocError::NotJson)
}

impl<'a> Doc<'a> {
    /// Parses `text` with serde_json's parser.
    ///
    /// Errors: [`DocError::NotJson`] for what serde_json refuses (syntax,
    /// nesting deeper than 128, a number out of range);
    /// [`DocError::RepeatedKey`] for an object that repeats a key.
    pub fn parse(text: &'a [u8]) -> Result<Doc<'a>, DocError> {
        serde_json::from_slice(text).map_err(|e| match e.classify() {
            // The only data error a `Doc` raises is its own.
            serde_json::error::Category::Data => DocError::RepeatedKey(e.to_string()),
            _ => DocError::NotJson(e),
        })
    }
}

type DocEntry<'s, 'a> = &'s (Cow<'a, str>, Doc<'a>);

impl<'a> JsonRead for Doc<'a> {
    type Entries<'s>
        = std::iter::Map<std::slice::Iter<'s, (Cow<'a, str>, Doc<'a>)>, fn(DocEntry<'s, 'a>) -> (&'s str, &'s Doc<'a>)>
    where
        Self: 's;

    fn is_null(&self) -> bool {
        matches!(self, Doc::Null)
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Doc::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            Doc::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn as_i64(&self) -> Option<i64> {
        match self {
            Doc::Int(i) => Some(*i),
            Doc::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            Doc::Int(i) => Some(*i as f64),
            Doc::UInt(u) => Some(*u as f64),
            Doc::Float(f) => Some(*f),
            _ => None,
        }
    }
    fn is_number(&self) -> bool {
        matches!(self, Doc::Int(_) | Doc::UInt(_) | Doc::Float(_))
    }
    fn as_array(&self) -> Option<&[Doc<'a>]> {
        match self {
            Doc::Array(items) => Some(items),
            _ => None,
        }
    }
    fn entries<'s>(&'s self) -> Option<Self::Entries<'s>> {
        let entry: fn(DocEntry<'s, 'a>) -> (&'s str, &'s Doc<'a>) = |(k, v)| (k, v);
        match self {
            Doc::Object(entries) => Some(entries.iter().map(entry)),
            _ => None,
        }
    }
    fn get(&self, key: &str) -> Option<&Doc<'a>> {
        match self {
            Doc::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Doc::Null => "null",
            Doc::Bool(_) => "a boolean",
            Doc::Int(_) | Doc::UInt(_) => "an integer",
            Doc::Float(_) => "a fractional number",
            Doc::Str(_) => "a string",
            Doc::Array(_) => "an array",
            Doc::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Doc<'de>, D::Error> {
        deserializer.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

/// Objects up to this many keys look for a repeated key by scanning;
/// larger ones index their keys, so no body costs quadratic time.
const SCAN_KEYS: usize = 16;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Doc<'de>, E> {
        Ok(Doc::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Doc<'de>, E> {
        Ok(Doc::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Doc<'de>, E> {
        // serde_json hands non-negative integers to `visit_u64`; keep its split.
        Ok(u64::try_from(i).map_or(Doc::Int(i), Doc::UInt))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Doc<'de>, E> {
        Ok(Doc::UInt(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Doc<'de>, E> {
        Ok(Doc::Float(f))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Doc<'de>, E> {
        Ok(Doc::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Doc<'de>, E> {
        Ok(Doc::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Doc<'de>, E> {
        Ok(Doc::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<'de>, A::Error> {
        let mut entries: Vec<(Cow<'de, str>, Doc<'de>)> = Vec::new();
        let mut index: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let repeated = match &mut index {
                Some(index) => !index.insert(key.clone()),
                None => entries.iter().any(|(k, _)| *k == key),
            };
            if repeated {
                return Err(serde::de::Error::custom(format_args!("repeated key {key:?}")));
            }
            let value: Doc<'de> = map.next_value()?;
            entries.push((key, value));
            if index.is_none() && entries.len() > SCAN_KEYS {
                index = Some(entries.iter().map(|(k, _)| k.clone()).collect());
            }
        }
        Ok(Doc::Object(entries))
    }
}

/// An object key, borrowed where the text allows.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every question the rules ask, answered by both trees.
    fn answers<J: JsonRead>(j: &J) -> String {
        let mut out = format!(
            "{}|{}|{:?}|{:?}|{:?}|{:?}|{}",
            j.kind(),
            j.is_null(),
            j.as_str(),
            j.as_bool(),
            j.as_i64(),
            j.as_f64().map(f64::to_bits),
            j.is_number()
        );
        if let Some(items) = j.as_array() {
            for item in items {
                out += &format!("[{}]", answers(item));
            }
        }
        if let Some(entries) = j.entries() {
            for (k, v) in entries {
                let got = j.get(k).map(answers);
                out += &format!("{{{k:?}:{}={:?}}}", answers(v), got);
            }
        }
        out + &format!("{:?}", j.get("a").map(answers))
    }

    fn same(text: &str) {
        let json: Json = serde_json::from_str(text).unwrap();
        let doc = Doc::parse(text.as_bytes()).unwrap();
        assert_eq!(answers(&doc), answers(&json), "{text}");
    }

    #[test]
    fn a_doc_answers_as_serde_json_does() {
        for text in [
            r#"{"a":1,"b":-1,"c":1.5,"d":18446744073709551615,"e":9223372036854775808,"f":-9223372036854775808}"#,
            r#"{"a":"x","b":"\u00e9\n","c":[1,"2",null,true,{"a":[]}]}"#,
            r#"[1e3, 1E-2, 0, -0, 0.0, 123456789012345678901234567890]"#,
            r#""just a string""#,
            r#"{"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k18":18,"a":null}"#,
        ] {
            same(text);
        }
    }

    #[test]
    fn a_repeated_key_is_refused_where_serde_json_would_keep_the_last() {
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        for (text, key) in [
            (r#"{"a":1,"a":2}"#.to_owned(), "a"),
            (
                r#"{"events":[{"properties":{"x":"first","y":0,"x":"second"}}]}"#.to_owned(),
                "x",
            ),
            // Escapes are decoded before keys are compared.
            (r#"{"caf\u00e9":1,"café":2}"#.to_owned(), "café"),
            // Past the scan, through the index.
            (format!("{{{many}\"k3\":0}}"), "k3"),
        ] {
            assert!(serde_json::from_str::<Json>(&text).is_ok(), "serde_json takes {text}");
            match Doc::parse(text.as_bytes()) {
                Err(DocError::RepeatedKey(at)) => {
                    assert!(
                        at.starts_with(&format!("repeated key {key:?} at line 1 column")),
                        "{at}"
                    )
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let e = Doc::parse(b"{\"a\":").unwrap_err();
        assert!(matches!(e, DocError::NotJson(_)), "{e:?}");
        assert!(e.to_string().starts_with("the body is not JSON: "), "{e}");
        assert!(matches!(
            parse_value(br#"{"a":1,"a":1}"#),
            Err(DocError::RepeatedKey(_))
        ));
        assert!(matches!(parse_value(b"[1,"), Err(DocError::NotJson(_))));
        assert_eq!(
            parse_value(br#"{"a":[1,{"b":null}]}"#).unwrap(),
            serde_json::json!({"a":[1,{"b":null}]})
        );
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let doc = Doc::parse(br#"{"plain":"text","esc\"aped":"a\nb"}"#).unwrap();
        let Doc::Object(entries) = doc else { panic!("an object") };
        assert!(matches!(entries[0].0, Cow::Borrowed(_)) && matches!(entries[0].1, Doc::Str(Cow::Borrowed(_))));
        assert!(matches!(entries[1].0, Cow::Owned(_)) && matches!(entries[1].1, Doc::Str(Cow::Owned(_))));
    }

    #[test]
    fn the_parser_refuses_what_serde_json_refuses() {
        for text in [
            "{",
            "[1,]",
            "{\"a\" 1}",
            "1e400",
            "nul",
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
        ] {
            assert!(serde_json::from_str::<Json>(text).is_err(), "{text}");
            assert!(Doc::parse(text.as_bytes()).is_err(), "{text}");
        }
    }

    fn arb_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Json::from),
            "[a-c\"\\\\é\n]{0,4}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                prop::collection::vec(("[a-c\"]{0,2}", inner), 0..24)
                    .prop_map(|kv| Json::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_text_reads_the_same_through_a_doc(json in arb_json()) {
            let text = serde_json::to_string(&json).unwrap();
            same(&text);
        }
    }
}
