//! A service's taxonomy: the event names and typed property names it accepts
//! (SPEC §1 "Taxonomy"), with the standard `df_` names every service starts with.
//!
//! Names are checked here before anything else sees them, which is what keeps
//! request-supplied names out of SQL: stores address property columns by
//! their own generated column names, never by the property name.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::PropertyType;

/// The event property that carries items; it is sent as an event's `items`
/// and exported as one `df_items_<prop>` column per item property.
pub const ITEMS: &str = "df_items";
/// Prefix of the exported item property columns.
pub const ITEMS_COLUMN_PREFIX: &str = "df_items_";

pub const STANDARD_EVENTS: &[&str] = &[
    "df_login",
    "df_logout",
    "df_sign_up",
    "df_purchase",
    "df_refund",
    "df_view_home",
    "df_view_product_details",
    "df_add_to_cart",
    "df_add_to_wishlist",
    "df_view_search_result",
    "df_share_product",
    "df_view_list",
    "df_view_cart",
    "df_remove_cart",
    "df_add_payment_info",
];

pub const STANDARD_EVENT_PROPERTIES: &[(&str, PropertyType)] = &[
    ("df_order_id", PropertyType::String),
    ("df_payment_method", PropertyType::String),
    ("df_total_purchase_amount", PropertyType::Double),
    ("df_delivery_charge", PropertyType::Double),
    ("df_discount", PropertyType::Double),
    ("df_total_refund_amount", PropertyType::Double),
    ("df_sharing_channel", PropertyType::String),
    ("df_sign_channel", PropertyType::String),
    ("df_keyword", PropertyType::String),
];

pub const STANDARD_ITEM_PROPERTIES: &[(&str, PropertyType)] = &[
    ("df_item_id", PropertyType::String),
    ("df_item_name", PropertyType::String),
    ("df_price", PropertyType::Double),
    ("df_quantity", PropertyType::Long),
    ("df_discount", PropertyType::Double),
    ("df_category1", PropertyType::String),
    ("df_category2", PropertyType::String),
    ("df_category3", PropertyType::String),
    ("df_category4", PropertyType::String),
    ("df_category5", PropertyType::String),
];

pub const STANDARD_USER_PROPERTIES: &[(&str, PropertyType)] = &[
    ("df_name", PropertyType::String),
    ("df_gender", PropertyType::String),
    ("df_birth", PropertyType::String),
    ("df_membership", PropertyType::String),
    ("df_push_optin", PropertyType::Boolean),
    ("df_push_ads_optin", PropertyType::Boolean),
    ("df_sms_ads_optin", PropertyType::Boolean),
    ("df_kakao_ads_optin", PropertyType::Boolean),
    ("df_push_night_ads_optin", PropertyType::Boolean),
];

/// Which list of the taxonomy a property belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropertyScope {
    Event,
    Item,
    User,
}

impl PropertyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyScope::Event => "event",
            PropertyScope::Item => "item",
            PropertyScope::User => "user",
        }
    }
}

/// A named, typed property on the wire (`{"name":…,"type":…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PropertyDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: PropertyType,
}

/// The taxonomy as the admin API shows and accepts it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxonomyDoc {
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub event_properties: Vec<PropertyDef>,
    #[serde(default)]
    pub item_properties: Vec<PropertyDef>,
    #[serde(default)]
    pub user_properties: Vec<PropertyDef>,
}

impl TaxonomyDoc {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.event_properties.is_empty()
            && self.item_properties.is_empty()
            && self.user_properties.is_empty()
    }

    /// Each property with its scope, in document order.
    pub fn properties(&self) -> impl Iterator<Item = (PropertyScope, &PropertyDef)> {
        self.event_properties
            .iter()
            .map(|p| (PropertyScope::Event, p))
            .chain(self.item_properties.iter().map(|p| (PropertyScope::Item, p)))
            .chain(self.user_properties.iter().map(|p| (PropertyScope::User, p)))
    }
}

/// A service's taxonomy, kept sorted so that listings are in byte order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taxonomy {
    pub events: BTreeSet<String>,
    pub event_properties: BTreeMap<String, PropertyType>,
    pub item_properties: BTreeMap<String, PropertyType>,
    pub user_properties: BTreeMap<String, PropertyType>,
}

/// Why a taxonomy addition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaxonomyError {
    #[error("invalid name {0:?}: names are 1-128 ASCII letters, digits or '_', starting with a letter; 'df_' is reserved for standard names")]
    InvalidName(String),
    #[error("{scope} property {name:?} is registered as {existing}, not {requested}")]
    TypeConflict {
        scope: &'static str,
        name: String,
        existing: PropertyType,
        requested: PropertyType,
    },
    #[error("{scope} property {name:?} would be exported as column {column:?}, which the export already writes as {existing:?} (column names must differ in more than letter case)")]
    ColumnCollision {
        scope: &'static str,
        name: String,
        column: String,
        existing: String,
    },
    #[error("{scope} property {name:?}: type Array of Item belongs to df_items alone")]
    ItemsType { scope: &'static str, name: String },
}

/// The CSV column a property of `scope` is exported as: the name itself,
/// or `df_items_<name>` for an item property.
pub fn column_name(scope: PropertyScope, name: &str) -> String {
    match scope {
        PropertyScope::Item => format!("{ITEMS_COLUMN_PREFIX}{name}"),
        PropertyScope::Event | PropertyScope::User => name.to_owned(),
    }
}

/// The columns an export always writes besides properties: the event
/// export's system columns (for event and item properties) or the profile
/// export's identity columns (for user properties).
fn fixed_columns(scope: PropertyScope) -> Vec<&'static str> {
    match scope {
        PropertyScope::Event | PropertyScope::Item => {
            crate::export::SystemColumn::ALL.iter().map(|c| c.header()).collect()
        }
        PropertyScope::User => vec![crate::profile::UNIFIED_ID_COLUMN, crate::profile::EXTERNAL_ID_COLUMN],
    }
}

/// Whether a custom name may be registered: ASCII letters, digits and `_`,
/// starting with a letter, at most 128 bytes, and not in the reserved `df_`
/// namespace.
pub fn is_valid_custom_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !name.starts_with("df_")
}

impl Taxonomy {
    /// The taxonomy every new service starts with.
    pub fn standard() -> Taxonomy {
        let map = |defs: &[(&str, PropertyType)]| defs.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        Taxonomy {
            events: STANDARD_EVENTS.iter().map(|s| s.to_string()).collect(),
            event_properties: map(STANDARD_EVENT_PROPERTIES),
            item_properties: map(STANDARD_ITEM_PROPERTIES),
            user_properties: map(STANDARD_USER_PROPERTIES),
        }
    }

    pub fn properties(&self, scope: PropertyScope) -> &BTreeMap<String, PropertyType> {
        match scope {
            PropertyScope::Event => &self.event_properties,
            PropertyScope::Item => &self.item_properties,
            PropertyScope::User => &self.user_properties,
        }
    }

    fn properties_mut(&mut self, scope: PropertyScope) -> &mut BTreeMap<String, PropertyType> {
        match scope {
            PropertyScope::Event => &mut self.event_properties,
            PropertyScope::Item => &mut self.item_properties,
            PropertyScope::User => &mut self.user_properties,
        }
    }

    /// The column of the export of `scope` that `column` would duplicate,
    /// compared without letter case, if any: a fixed column of that export,
    /// a registered property's column, or one of `pending` (names added by
    /// the same request). Case-insensitive because the places exports are
    /// loaded into (BigQuery, Snowflake, DuckDB, unquoted PostgreSQL, pandas
    /// after `str.lower`) would take `Price` and `price` as one column.
    fn colliding_column(
        &self,
        scope: PropertyScope,
        column: &str,
        pending: &BTreeMap<(PropertyScope, &str), PropertyType>,
    ) -> Option<String> {
        let export_scopes: &[PropertyScope] = match scope {
            PropertyScope::Event | PropertyScope::Item => &[PropertyScope::Event, PropertyScope::Item],
            PropertyScope::User => &[PropertyScope::User],
        };
        let registered = export_scopes
            .iter()
            .flat_map(|&s| self.properties(s).keys().map(move |n| column_name(s, n)));
        let added = pending
            .keys()
            .filter(|(s, _)| export_scopes.contains(s))
            .map(|&(s, n)| column_name(s, n));
        fixed_columns(scope)
            .into_iter()
            .map(str::to_owned)
            .chain(std::iter::once(ITEMS.to_owned()).filter(|_| scope != PropertyScope::User))
            .chain(registered)
            .chain(added)
            .find(|existing| existing.eq_ignore_ascii_case(column))
    }

    /// What of `doc` is new to this taxonomy, after checking every name and
    /// type. Names already registered with the same type are ignored (adding
    /// is idempotent, so a document read from `GET …/taxonomy` can be posted
    /// back whole, `df_items` included); the same name with another type is
    /// a conflict, and so is a name whose export column would duplicate one
    /// the export writes already, letter case aside (SPEC §1).
    pub fn additions(&self, doc: &TaxonomyDoc) -> Result<TaxonomyDoc, TaxonomyError> {
        let mut new = TaxonomyDoc::default();
        let mut seen_events = BTreeSet::new();
        for name in &doc.events {
            if self.events.contains(name) || !seen_events.insert(name.as_str()) {
                continue;
            }
            if !is_valid_custom_name(name) {
                return Err(TaxonomyError::InvalidName(name.clone()));
            }
            new.events.push(name.clone());
        }
        let mut seen: BTreeMap<(PropertyScope, &str), PropertyType> = BTreeMap::new();
        for (scope, def) in doc.properties() {
            if scope == PropertyScope::Event && def.name == ITEMS {
                if def.ty == PropertyType::Items {
                    continue;
                }
                return Err(TaxonomyError::TypeConflict {
                    scope: scope.as_str(),
                    name: def.name.clone(),
                    existing: PropertyType::Items,
                    requested: def.ty,
                });
            }
            let existing = self
                .properties(scope)
                .get(&def.name)
                .or_else(|| seen.get(&(scope, def.name.as_str())));
            match existing {
                Some(&t) if t == def.ty => continue,
                Some(&t) => {
                    return Err(TaxonomyError::TypeConflict {
                        scope: scope.as_str(),
                        name: def.name.clone(),
                        existing: t,
                        requested: def.ty,
                    })
                }
                None => {}
            }
            if !is_valid_custom_name(&def.name) {
                return Err(TaxonomyError::InvalidName(def.name.clone()));
            }
            if def.ty == PropertyType::Items {
                return Err(TaxonomyError::ItemsType {
                    scope: scope.as_str(),
                    name: def.name.clone(),
                });
            }
            let column = column_name(scope, &def.name);
            if let Some(existing) = self.colliding_column(scope, &column, &seen) {
                return Err(TaxonomyError::ColumnCollision {
                    scope: scope.as_str(),
                    name: def.name.clone(),
                    column,
                    existing,
                });
            }
            seen.insert((scope, def.name.as_str()), def.ty);
            let list = match scope {
                PropertyScope::Event => &mut new.event_properties,
                PropertyScope::Item => &mut new.item_properties,
                PropertyScope::User => &mut new.user_properties,
            };
            list.push(def.clone());
        }
        Ok(new)
    }

    /// Adds names already checked by [`Taxonomy::additions`].
    pub fn apply(&mut self, additions: &TaxonomyDoc) {
        self.events.extend(additions.events.iter().cloned());
        for (scope, def) in additions.properties() {
            self.properties_mut(scope).insert(def.name.clone(), def.ty);
        }
    }

    /// The registered names as a document (what stores persist and
    /// registrations carry).
    pub fn to_doc(&self) -> TaxonomyDoc {
        let defs = |m: &BTreeMap<String, PropertyType>| {
            m.iter()
                .map(|(name, ty)| PropertyDef {
                    name: name.clone(),
                    ty: *ty,
                })
                .collect()
        };
        TaxonomyDoc {
            events: self.events.iter().cloned().collect(),
            event_properties: defs(&self.event_properties),
            item_properties: defs(&self.item_properties),
            user_properties: defs(&self.user_properties),
        }
    }

    /// The taxonomy as the admin API lists it (SPEC §5.2): the registered
    /// names plus `df_items`, an event property of every service (SPEC §1)
    /// though not a column, with its own type `Array of Item`, in byte order.
    /// Posting it back is a no-op.
    pub fn to_listing(&self) -> TaxonomyDoc {
        let mut doc = self.to_doc();
        let at = doc
            .event_properties
            .partition_point(|d| d.name.as_bytes() < ITEMS.as_bytes());
        doc.event_properties.insert(
            at,
            PropertyDef {
                name: ITEMS.to_owned(),
                ty: PropertyType::Items,
            },
        );
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, ty: PropertyType) -> PropertyDef {
        PropertyDef { name: name.into(), ty }
    }

    #[test]
    fn standard_names_are_registered() {
        let t = Taxonomy::standard();
        assert_eq!(t.events.len(), 15);
        assert_eq!(t.item_properties.get("df_quantity"), Some(&PropertyType::Long));
        assert_eq!(t.user_properties.get("df_push_optin"), Some(&PropertyType::Boolean));
        assert!(
            !t.event_properties.contains_key(ITEMS),
            "df_items is carried as items, not a column (the listing shows it)"
        );
    }

    #[test]
    fn additions_are_idempotent_and_typed() {
        let mut t = Taxonomy::standard();
        let doc = TaxonomyDoc {
            events: vec!["custom_event".into(), "df_login".into(), "custom_event".into()],
            event_properties: vec![
                def("price", PropertyType::Long),
                def("df_discount", PropertyType::Double),
            ],
            ..Default::default()
        };
        let add = t.additions(&doc).unwrap();
        assert_eq!(add.events, vec!["custom_event".to_string()]);
        assert_eq!(add.event_properties, vec![def("price", PropertyType::Long)]);
        t.apply(&add);
        assert!(t.additions(&doc).unwrap().is_empty());
        let conflict = TaxonomyDoc {
            event_properties: vec![def("price", PropertyType::Double)],
            ..Default::default()
        };
        assert!(matches!(
            t.additions(&conflict),
            Err(TaxonomyError::TypeConflict { .. })
        ));
    }

    #[test]
    fn names_whose_column_repeats_an_export_column_are_refused() {
        let mut t = Taxonomy::standard();
        t.apply(&TaxonomyDoc {
            event_properties: vec![def("price", PropertyType::Long)],
            item_properties: vec![def("color", PropertyType::String)],
            user_properties: vec![def("tier", PropertyType::String)],
            ..Default::default()
        });
        let event = |n: &str| TaxonomyDoc {
            event_properties: vec![def(n, PropertyType::String)],
            ..Default::default()
        };
        let item = |n: &str| TaxonomyDoc {
            item_properties: vec![def(n, PropertyType::String)],
            ..Default::default()
        };
        let user = |n: &str| TaxonomyDoc {
            user_properties: vec![def(n, PropertyType::String)],
            ..Default::default()
        };
        // (document, the column it would repeat; None = accepted)
        let cases = [
            (event("event_name"), Some("event_name")),
            (event("EVENT_NAME"), Some("event_name")),
            (event("Price"), Some("price")),
            (event("color"), None),
            (item("Color"), Some("df_items_color")),
            (item("price"), None),
            (user("Tier"), Some("tier")),
            (user("price"), None),
            (user("event_name"), None),
            (
                TaxonomyDoc {
                    event_properties: vec![def("size", PropertyType::Long), def("SIZE", PropertyType::Long)],
                    ..Default::default()
                },
                Some("size"),
            ),
        ];
        for (doc, repeats) in cases {
            match (t.additions(&doc), repeats) {
                (Ok(add), None) => assert!(!add.is_empty(), "{doc:?}"),
                (Err(TaxonomyError::ColumnCollision { existing, .. }), Some(column)) => {
                    assert_eq!(existing, column, "{doc:?}")
                }
                (other, _) => panic!("{doc:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_listing_has_df_items_and_posts_back_as_nothing_new() {
        let t = Taxonomy::standard();
        let listing = t.to_listing();
        assert!(listing.event_properties.contains(&def(ITEMS, PropertyType::Items)));
        assert!(!t.to_doc().event_properties.iter().any(|d| d.name == ITEMS));
        assert!(t.additions(&listing).unwrap().is_empty());
        let retyped = TaxonomyDoc {
            event_properties: vec![def(ITEMS, PropertyType::String)],
            ..Default::default()
        };
        assert!(matches!(t.additions(&retyped), Err(TaxonomyError::TypeConflict { .. })));
        let borrowed = TaxonomyDoc {
            user_properties: vec![def("basket", PropertyType::Items)],
            ..Default::default()
        };
        assert!(matches!(t.additions(&borrowed), Err(TaxonomyError::ItemsType { .. })));
    }

    #[test]
    fn rejects_bad_or_reserved_names() {
        for bad in ["", "1abc", "a-b", "df_custom", "한글", "a b", &"a".repeat(129)] {
            assert!(!is_valid_custom_name(bad), "{bad:?}");
            let t = Taxonomy::standard();
            let doc = TaxonomyDoc {
                events: vec![bad.to_string()],
                ..Default::default()
            };
            assert!(t.additions(&doc).is_err(), "{bad:?}");
        }
        assert!(is_valid_custom_name("Purchase_v2"));
    }
}
