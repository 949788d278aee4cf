//! The service id (SPEC §1 "Service"): a type that cannot hold an invalid
//! id, so that whatever holds one — a request that named a service, a
//! stored record, an import-log entry — was checked where it came in, and a
//! store may build table names from it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest service id, in bytes.
pub const MAX_SERVICE_ID_LEN: usize = 64;

/// A service id: 1 to 64 lowercase ASCII letters, digits or `_` (generated
/// ids are 10 of them). Safe to put in SQL identifiers as it is. Parsed,
/// never constructed unchecked; deserializing an invalid one fails.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceId(String);

/// Why a string is not a service id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service_id {0:?} must be 1-64 lowercase letters, digits or '_'")]
pub struct InvalidServiceId(pub String);

impl ServiceId {
    /// Checks `id`. Errors: [`InvalidServiceId`] for an empty, too long or
    /// otherwise malformed id.
    pub fn parse(id: &str) -> Result<ServiceId, InvalidServiceId> {
        let valid = !id.is_empty()
            && id.len() <= MAX_SERVICE_ID_LEN
            && id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if valid {
            Ok(ServiceId(id.to_owned()))
        } else {
            Err(InvalidServiceId(id.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceId {
    type Error = InvalidServiceId;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        ServiceId::parse(&id)
    }
}

impl From<ServiceId> for String {
    fn from(id: ServiceId) -> String {
        id.0
    }
}

impl std::ops::Deref for ServiceId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ServiceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ServiceId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ServiceId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// In the OpenAPI document: the string [`ServiceId::parse`] accepts.
impl utoipa::PartialSchema for ServiceId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_SERVICE_ID_LEN))
            .pattern(Some("^[a-z0-9_]+$"))
            .description(Some("1 to 64 lowercase ASCII letters, digits or `_`"))
            .into()
    }
}

impl utoipa::ToSchema for ServiceId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_letters_digits_and_underscore_up_to_64_bytes() {
        for ok in ["shop", "a", "demo_2", "0abc", &"a".repeat(64)] {
            assert_eq!(
                ServiceId::parse(ok).map(|s| s.to_string()),
                Ok(ok.to_string()),
                "{ok:?}"
            );
        }
        for bad in [
            "",
            "Shop",
            "a-b",
            "a b",
            "a\"; DROP TABLE x; --",
            "ä",
            "a.b",
            &"a".repeat(65),
        ] {
            assert!(ServiceId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_checks_the_id() {
        assert_eq!(serde_json::from_str::<ServiceId>("\"shop\"").unwrap().as_str(), "shop");
        assert!(serde_json::from_str::<ServiceId>("\"x y\"").is_err());
        assert_eq!(
            serde_json::to_string(&ServiceId::parse("shop").unwrap()).unwrap(),
            "\"shop\""
        );
    }
}
