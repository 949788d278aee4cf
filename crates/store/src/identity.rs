//! Identity resolution (SPEC §1 "Unified profile"), the same for every
//! backend: which `df_unified_id` an identity belongs to, and what that
//! changes (a new profile, an anonymous profile taking an external_id,
//! identifiers joining or moving).
//!
//! The algorithm reads committed state only through [`IdentityLookup`]
//! (one service's identifiers and profiles) and never writes: it stages
//! what it decides in [`Staged`] — an overlay that later resolutions of the
//! same transaction read first — and lists the rows to write as
//! [`IdentityChange`]s. A backend writes those rows in its transaction and,
//! if it keeps an index in memory, applies the overlay after the commit.
//!
//! Two storages use it: DuckDB keeps the committed state of every service
//! in memory ([`IdentityMap`]); PostgreSQL first reads the identifiers a
//! request names (and their profiles) into an [`IdentityMap`] under a lock,
//! then resolves against that ([`IdentityMap::needed`] says what to read).

use std::collections::{HashMap, HashSet};

use fineport_contract::import::{Identity, IDENTIFIER_KINDS};
use fineport_contract::Uuid;

/// The committed identities of one service, as resolution reads them.
pub trait IdentityLookup {
    /// The `df_unified_id` holding identifier `(kind, value)`, if any.
    /// `kind` is one of [`IDENTIFIER_KINDS`].
    fn lookup(&self, kind: &str, value: &str) -> Option<&str>;

    /// `Some(external_id)` of an existing profile (`Some(None)`: anonymous),
    /// `None` if there is no profile `unified_id`.
    fn external_of(&self, unified_id: &str) -> Option<Option<&str>>;
}

/// A row-level change decided by resolution, for a backend to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityChange {
    /// A profile to create.
    NewProfile {
        unified_id: String,
        external_id: Option<String>,
    },
    /// An anonymous profile that takes `external_id` (a merge).
    MergedProfile { unified_id: String, external_id: String },
    /// An identifier no profile held, now held by `unified_id`.
    NewIdentifier {
        kind: &'static str,
        value: String,
        unified_id: String,
    },
    /// An identifier held by another profile that moves to `unified_id`.
    MovedIdentifier {
        kind: &'static str,
        value: String,
        unified_id: String,
    },
}

/// The position of `kind` in [`IDENTIFIER_KINDS`].
fn kind_index(kind: &str) -> Option<usize> {
    IDENTIFIER_KINDS.iter().position(|k| *k == kind)
}

/// `kind` as the `'static` name of [`IDENTIFIER_KINDS`], e.g. for a kind
/// read from a table; `None` for an unknown kind.
pub fn identifier_kind(kind: &str) -> Option<&'static str> {
    kind_index(kind).map(|i| IDENTIFIER_KINDS[i])
}

/// Identifiers and profiles of one service in memory: DuckDB's committed
/// index, PostgreSQL's snapshot of what a request needs, and the overlay
/// of staged changes.
#[derive(Debug, Clone, Default)]
pub struct IdentityMap {
    /// Per kind (in [`IDENTIFIER_KINDS`] order): value → unified id.
    by_identifier: [HashMap<String, String>; IDENTIFIER_KINDS.len()],
    /// Unified id → external id, for every profile.
    profiles: HashMap<String, Option<String>>,
}

impl IdentityLookup for IdentityMap {
    fn lookup(&self, kind: &str, value: &str) -> Option<&str> {
        self.by_identifier[kind_index(kind)?].get(value).map(String::as_str)
    }

    fn external_of(&self, unified_id: &str) -> Option<Option<&str>> {
        self.profiles.get(unified_id).map(Option::as_deref)
    }
}

impl IdentityMap {
    /// Records that `(kind, value)` belongs to `unified_id`. `false` (and
    /// nothing recorded) for a kind not in [`IDENTIFIER_KINDS`].
    pub fn insert_identifier(&mut self, kind: &str, value: String, unified_id: String) -> bool {
        match kind_index(kind) {
            Some(i) => {
                self.by_identifier[i].insert(value, unified_id);
                true
            }
            None => false,
        }
    }

    /// Records profile `unified_id` with its external id.
    pub fn insert_profile(&mut self, unified_id: String, external_id: Option<String>) {
        self.profiles.insert(unified_id, external_id);
    }

    /// Forgets identifier `(kind, value)`.
    pub fn remove_identifier(&mut self, kind: &str, value: &str) {
        if let Some(i) = kind_index(kind) {
            self.by_identifier[i].remove(value);
        }
    }

    /// Forgets profile `unified_id` (not its identifiers).
    pub fn remove_profile(&mut self, unified_id: &str) {
        self.profiles.remove(unified_id);
    }

    /// Takes over everything `other` records, replacing what it replaces:
    /// how a committed overlay becomes part of the committed index.
    pub fn extend(&mut self, other: IdentityMap) {
        for (mine, theirs) in self.by_identifier.iter_mut().zip(other.by_identifier) {
            mine.extend(theirs);
        }
        self.profiles.extend(other.profiles);
    }

    /// The identifiers resolving `identities` looks up, each once, as
    /// `(kind, value)`: what a backend without an index in memory reads
    /// into an [`IdentityMap`] (with the profiles they lead to) first.
    pub fn needed<'a>(identities: impl IntoIterator<Item = &'a Identity>) -> Vec<(&'static str, &'a str)> {
        let mut seen = HashSet::new();
        identities
            .into_iter()
            .flat_map(Identity::identifiers)
            .filter(|id| seen.insert(*id))
            .collect()
    }
}

/// What the resolutions of one transaction decided: the overlay later
/// resolutions read first, and the rows still to write.
#[derive(Debug, Default)]
pub struct Staged {
    overlay: IdentityMap,
    changes: Vec<IdentityChange>,
}

impl Staged {
    /// The changes not taken yet, in the order they were decided (a profile
    /// before the identifiers that point at it). The overlay stays: it is
    /// still what the rest of the transaction reads.
    pub fn take_changes(&mut self) -> Vec<IdentityChange> {
        std::mem::take(&mut self.changes)
    }

    /// The overlay, to apply to a committed index once the transaction has
    /// committed.
    pub fn into_overlay(self) -> IdentityMap {
        self.overlay
    }

    fn lookup(&self, committed: &impl IdentityLookup, kind: &str, value: &str) -> Option<String> {
        self.overlay
            .lookup(kind, value)
            .or_else(|| committed.lookup(kind, value))
            .map(str::to_owned)
    }

    fn is_anonymous(&self, committed: &impl IdentityLookup, unified_id: &str) -> bool {
        let external = match self.overlay.external_of(unified_id) {
            Some(ext) => Some(ext),
            None => committed.external_of(unified_id),
        };
        matches!(external, Some(None))
    }

    /// Resolves `identity` to a `df_unified_id` against `committed` plus
    /// what this transaction staged, staging what it creates or changes.
    ///
    /// `external_id` is authoritative: its profile if it has one; else an
    /// anonymous profile (no external_id) that another identifier leads to
    /// takes it (a merge, first such identifier in SPEC order); else a new
    /// profile. Without external_id, the identifiers are looked up in SPEC
    /// order (email, phone_no, kakao_user_id, line_user_id) and the first
    /// match wins; no match creates a profile. Then identifiers the profile
    /// does not hold join it, and, when an external_id was given, ones held
    /// by another profile move to it.
    pub fn resolve(&mut self, committed: &impl IdentityLookup, identity: &Identity) -> String {
        let found = match &identity.external_id {
            Some(ext) => self.lookup(committed, "external_id", ext).or_else(|| {
                let uid = identity
                    .identifiers()
                    .skip(1)
                    .filter_map(|(kind, value)| self.lookup(committed, kind, value))
                    .find(|uid| self.is_anonymous(committed, uid))?;
                self.overlay.insert_profile(uid.clone(), Some(ext.clone()));
                self.changes.push(IdentityChange::MergedProfile {
                    unified_id: uid.clone(),
                    external_id: ext.clone(),
                });
                Some(uid)
            }),
            None => identity
                .identifiers()
                .find_map(|(kind, value)| self.lookup(committed, kind, value)),
        };
        let uid = found.unwrap_or_else(|| {
            let uid = Uuid::new_v4().to_string();
            self.overlay.insert_profile(uid.clone(), identity.external_id.clone());
            self.changes.push(IdentityChange::NewProfile {
                unified_id: uid.clone(),
                external_id: identity.external_id.clone(),
            });
            uid
        });
        for (kind, value) in identity.identifiers() {
            let change = match self.lookup(committed, kind, value) {
                None => IdentityChange::NewIdentifier {
                    kind,
                    value: value.to_owned(),
                    unified_id: uid.clone(),
                },
                Some(owner) if owner != uid && identity.external_id.is_some() && kind != "external_id" => {
                    IdentityChange::MovedIdentifier {
                        kind,
                        value: value.to_owned(),
                        unified_id: uid.clone(),
                    }
                }
                Some(_) => continue,
            };
            self.overlay.insert_identifier(kind, value.to_owned(), uid.clone());
            self.changes.push(change);
        }
        uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pairs: &[(&str, &str)]) -> Identity {
        let mut identity = Identity::default();
        for (kind, value) in pairs {
            let slot = match *kind {
                "external_id" => &mut identity.external_id,
                "email" => &mut identity.email,
                "phone_no" => &mut identity.phone_no,
                "kakao_user_id" => &mut identity.kakao_user_id,
                _ => &mut identity.line_user_id,
            };
            *slot = Some((*value).to_owned());
        }
        identity
    }

    /// Resolves each identity in its own transaction, committing its
    /// overlay, as a backend does.
    fn run(committed: &mut IdentityMap, identity: &Identity) -> (String, Vec<IdentityChange>) {
        let mut staged = Staged::default();
        let uid = staged.resolve(committed, identity);
        let changes = staged.take_changes();
        committed.extend(staged.into_overlay());
        (uid, changes)
    }

    #[test]
    fn an_anonymous_profile_takes_the_external_id_then_the_email_moves() {
        let mut map = IdentityMap::default();
        let (anon, changes) = run(&mut map, &id(&[("email", "kim@x")]));
        assert_eq!(changes.len(), 2);
        let (kim, changes) = run(&mut map, &id(&[("external_id", "kim"), ("email", "kim@x")]));
        assert_eq!(kim, anon);
        assert_eq!(
            changes,
            vec![
                IdentityChange::MergedProfile {
                    unified_id: anon.clone(),
                    external_id: "kim".into()
                },
                IdentityChange::NewIdentifier {
                    kind: "external_id",
                    value: "kim".into(),
                    unified_id: anon.clone()
                },
            ]
        );
        let (lee, changes) = run(&mut map, &id(&[("external_id", "lee"), ("email", "kim@x")]));
        assert_ne!(lee, kim);
        assert!(changes.contains(&IdentityChange::MovedIdentifier {
            kind: "email",
            value: "kim@x".into(),
            unified_id: lee.clone()
        }));
        assert_eq!(map.lookup("email", "kim@x"), Some(lee.as_str()));
        // Without an external_id nothing moves: the email's owner answers.
        let (who, changes) = run(&mut map, &id(&[("email", "kim@x"), ("phone_no", "010")]));
        assert_eq!(who, lee);
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn lookups_follow_spec_order_and_staged_changes_are_seen_in_the_same_transaction() {
        let mut map = IdentityMap::default();
        let (by_phone, _) = run(&mut map, &id(&[("phone_no", "010")]));
        let (by_email, _) = run(&mut map, &id(&[("email", "a@x")]));
        let (uid, _) = run(&mut map, &id(&[("email", "a@x"), ("phone_no", "010")]));
        assert_eq!(uid, by_email);
        assert_ne!(uid, by_phone);

        let mut staged = Staged::default();
        let first = staged.resolve(&map, &id(&[("external_id", "new"), ("line_user_id", "l")]));
        let second = staged.resolve(&map, &id(&[("line_user_id", "l")]));
        assert_eq!(first, second);
        assert_eq!(staged.take_changes().len(), 3);
        assert!(staged.take_changes().is_empty());
    }

    #[test]
    fn a_profile_with_an_external_id_is_not_merged() {
        let mut map = IdentityMap::default();
        let (kim, _) = run(&mut map, &id(&[("external_id", "kim"), ("email", "kim@x")]));
        let (lee, changes) = run(&mut map, &id(&[("external_id", "lee"), ("email", "kim@x")]));
        assert_ne!(kim, lee);
        assert!(matches!(changes[0], IdentityChange::NewProfile { .. }));
    }

    #[test]
    fn needed_lists_each_identifier_once() {
        let a = id(&[("external_id", "kim"), ("email", "k@x")]);
        let b = id(&[("email", "k@x"), ("phone_no", "1")]);
        assert_eq!(
            IdentityMap::needed([&a, &b]),
            vec![("external_id", "kim"), ("email", "k@x"), ("phone_no", "1")]
        );
    }
}
