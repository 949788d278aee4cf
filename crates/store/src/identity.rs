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
//! request names (and their profiles) and the profiles it names by
//! `df_unified_id` into an [`IdentityMap`] under a lock, then resolves
//! against that ([`IdentityMap::needed`] says what to read).
//!
//! An identity may name its profile by `df_unified_id` (fineport's
//! decision "D", alone or with an external_id only): that profile is used,
//! created with exactly that id when it does not exist. Combined with an
//! external_id that contradicts what is stored, resolution answers an
//! [`IdentityConflict`] and stages nothing; the backend fails the whole
//! request (its transaction rolls back) and the server answers 40001.

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

/// An identity that contradicts the stored identities: a `df_unified_id`
/// whose profile holds another external_id, or with an external_id that
/// another profile holds. Nothing was staged for it. Its text is the
/// reason the Import API gives with 40001.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConflict(pub String);

impl std::fmt::Display for IdentityConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<IdentityConflict> for crate::StoreError {
    fn from(conflict: IdentityConflict) -> Self {
        crate::StoreError::new(crate::StoreErrorKind::Invalid, conflict.0)
    }
}

/// Whether resolving `identity` can answer an [`IdentityConflict`]: only a
/// `df_unified_id` together with an external_id can. Every other identity
/// resolves whatever is stored, which a backend that resolves only after
/// acknowledging (DuckDB's import log) relies on.
pub fn may_conflict(identity: &Identity) -> bool {
    identity.df_unified_id.is_some() && identity.external_id.is_some()
}

/// What a backend without an index in memory reads before resolving
/// (see [`IdentityMap::needed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needed<'a> {
    /// Identifiers `(kind, value)`, each once, with the profiles they lead to.
    pub identifiers: Vec<(&'static str, &'a str)>,
    /// Profiles named by `df_unified_id` (canonical form), each once.
    pub unified_ids: Vec<String>,
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

    /// What resolving `identities` reads: the identifiers it looks up as
    /// `(kind, value)` and the profiles it names by `df_unified_id`, each
    /// once. A backend without an index in memory reads these into an
    /// [`IdentityMap`] first: each identifier with the profile it leads
    /// to, and each named profile whether or not any identifier leads to
    /// it (a profile created by `df_unified_id` alone has none).
    pub fn needed<'a>(identities: impl IntoIterator<Item = &'a Identity>) -> Needed<'a> {
        let mut needed = Needed::default();
        let mut seen = HashSet::new();
        let mut seen_uids = HashSet::new();
        for identity in identities {
            needed
                .identifiers
                .extend(identity.identifiers().filter(|id| seen.insert(*id)));
            if let Some(uid) = identity.unified_id().filter(|u| seen_uids.insert(u.clone())) {
                needed.unified_ids.push(uid);
            }
        }
        needed
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

    /// `Some(external_id)` of profile `unified_id` as this transaction
    /// sees it, `None` when there is no such profile.
    fn profile(&self, committed: &impl IdentityLookup, unified_id: &str) -> Option<Option<String>> {
        self.overlay
            .external_of(unified_id)
            .or_else(|| committed.external_of(unified_id))
            .map(|ext| ext.map(str::to_owned))
    }

    fn is_anonymous(&self, committed: &impl IdentityLookup, unified_id: &str) -> bool {
        matches!(self.profile(committed, unified_id), Some(None))
    }

    /// Stages a new profile.
    fn create(&mut self, unified_id: &str, external_id: Option<&str>) {
        let external_id = external_id.map(str::to_owned);
        self.overlay.insert_profile(unified_id.to_owned(), external_id.clone());
        self.changes.push(IdentityChange::NewProfile {
            unified_id: unified_id.to_owned(),
            external_id,
        });
    }

    /// Stages `external_id` as a new identifier of `unified_id`.
    fn add_external_id(&mut self, unified_id: &str, external_id: &str) {
        self.overlay
            .insert_identifier("external_id", external_id.to_owned(), unified_id.to_owned());
        self.changes.push(IdentityChange::NewIdentifier {
            kind: "external_id",
            value: external_id.to_owned(),
            unified_id: unified_id.to_owned(),
        });
    }

    /// Resolution of an identity with `df_unified_id` `uid` (and at most an
    /// external_id, which [`Identity::from_json`] ensures): see
    /// [`Staged::resolve`]. Checks everything before staging anything.
    fn resolve_unified(
        &mut self,
        committed: &impl IdentityLookup,
        uid: String,
        external_id: Option<&str>,
    ) -> Result<String, IdentityConflict> {
        let profile = self.profile(committed, &uid);
        let Some(ext) = external_id else {
            if profile.is_none() {
                self.create(&uid, None);
            }
            return Ok(uid);
        };
        let owner = self.lookup(committed, "external_id", ext);
        if let Some(owner) = owner.as_deref().filter(|owner| *owner != uid) {
            return Err(IdentityConflict(format!(
                "external_id {ext:?} belongs to another profile than df_unified_id {uid} (it is {owner})"
            )));
        }
        match profile {
            None => {
                self.create(&uid, Some(ext));
                self.add_external_id(&uid, ext);
            }
            Some(None) => {
                self.overlay.insert_profile(uid.clone(), Some(ext.to_owned()));
                self.changes.push(IdentityChange::MergedProfile {
                    unified_id: uid.clone(),
                    external_id: ext.to_owned(),
                });
                if owner.is_none() {
                    self.add_external_id(&uid, ext);
                }
            }
            Some(Some(held)) if held == ext => {
                if owner.is_none() {
                    self.add_external_id(&uid, ext);
                }
            }
            Some(Some(held)) => {
                return Err(IdentityConflict(format!(
                    "df_unified_id {uid} holds another external_id ({held:?}) than {ext:?}"
                )))
            }
        }
        Ok(uid)
    }

    /// Resolves `identity` to a `df_unified_id` against `committed` plus
    /// what this transaction staged, staging what it creates or changes.
    ///
    /// With a `df_unified_id` U (fineport decision "D"; alone or with an
    /// external_id only): the profile is U, created with exactly that id
    /// (anonymous, or holding the external_id) when it does not exist. With
    /// an external_id too: an anonymous U takes it when nobody holds it (a
    /// merge), a U that holds it already is fine; a U holding another
    /// external_id, or an external_id held by another profile, is an
    /// [`IdentityConflict`] and nothing is staged. Unified ids are per
    /// service, as everything `committed` holds.
    ///
    /// Without a `df_unified_id`, `external_id` is authoritative: its profile if it has one; else an
    /// anonymous profile (no external_id) that another identifier leads to
    /// takes it (a merge, first such identifier in SPEC order); else a new
    /// profile. Without external_id, the identifiers are looked up in SPEC
    /// order (email, phone_no, kakao_user_id, line_user_id) and the first
    /// match wins; no match creates a profile. Then identifiers the profile
    /// does not hold join it, and, when an external_id was given, ones held
    /// by another profile move to it. These never conflict.
    pub fn resolve(
        &mut self,
        committed: &impl IdentityLookup,
        identity: &Identity,
    ) -> Result<String, IdentityConflict> {
        if let Some(uid) = identity.unified_id() {
            return self.resolve_unified(committed, uid, identity.external_id.as_deref());
        }
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
        Ok(uid)
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
        let uid = staged.resolve(committed, identity).unwrap();
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
        let first = staged
            .resolve(&map, &id(&[("external_id", "new"), ("line_user_id", "l")]))
            .unwrap();
        let second = staged.resolve(&map, &id(&[("line_user_id", "l")])).unwrap();
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
        let u = Identity {
            df_unified_id: Some(Uuid::from_u128(7)),
            ..id(&[("external_id", "kim")])
        };
        assert_eq!(
            IdentityMap::needed([&a, &b, &u, &u]),
            Needed {
                identifiers: vec![("external_id", "kim"), ("email", "k@x"), ("phone_no", "1")],
                unified_ids: vec![Uuid::from_u128(7).to_string()],
            }
        );
    }

    const U: &str = "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f";
    const V: &str = "7d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

    fn by_uid(uid: &str, external_id: Option<&str>) -> Identity {
        Identity {
            df_unified_id: Some(Uuid::try_parse(uid).unwrap()),
            external_id: external_id.map(str::to_owned),
            ..Identity::default()
        }
    }

    fn conflict(map: &IdentityMap, identity: &Identity) -> String {
        let mut staged = Staged::default();
        let err = staged.resolve(map, identity).unwrap_err();
        assert!(staged.take_changes().is_empty(), "a conflict stages nothing");
        assert!(staged.into_overlay().profiles.is_empty());
        err.0
    }

    #[test]
    fn a_unified_id_alone_is_used_or_created_with_exactly_that_id() {
        let mut map = IdentityMap::default();
        let (uid, changes) = run(&mut map, &by_uid(U, None));
        assert_eq!(uid, U);
        assert_eq!(
            changes,
            vec![IdentityChange::NewProfile {
                unified_id: U.into(),
                external_id: None
            }]
        );
        assert_eq!(map.external_of(U), Some(None));
        // Again: the same profile, nothing to write.
        assert_eq!(run(&mut map, &by_uid(U, None)), (U.to_owned(), vec![]));
        // Any form of the UUID names the same profile (canonical form).
        let upper = Identity {
            df_unified_id: Some(Uuid::try_parse(&U.to_uppercase()).unwrap()),
            ..Identity::default()
        };
        assert_eq!(run(&mut map, &upper), (U.to_owned(), vec![]));
        // A profile with an external_id, named by its unified id alone.
        let (kim, _) = run(&mut map, &id(&[("external_id", "kim")]));
        assert_eq!(run(&mut map, &by_uid(&kim, None)), (kim.clone(), vec![]));
    }

    #[test]
    fn a_unified_id_with_an_external_id_creates_takes_or_keeps_it() {
        let mut map = IdentityMap::default();
        // New U with a free external_id: created holding it.
        let (uid, changes) = run(&mut map, &by_uid(U, Some("kim")));
        assert_eq!(uid, U);
        assert_eq!(
            changes,
            vec![
                IdentityChange::NewProfile {
                    unified_id: U.into(),
                    external_id: Some("kim".into())
                },
                IdentityChange::NewIdentifier {
                    kind: "external_id",
                    value: "kim".into(),
                    unified_id: U.into()
                },
            ]
        );
        assert_eq!(map.lookup("external_id", "kim"), Some(U));
        // The same pair again, and the external_id alone: U.
        assert_eq!(run(&mut map, &by_uid(U, Some("kim"))), (U.to_owned(), vec![]));
        assert_eq!(run(&mut map, &id(&[("external_id", "kim")])).0, U);

        // An anonymous V takes a free external_id (a merge).
        run(&mut map, &by_uid(V, None));
        let (uid, changes) = run(&mut map, &by_uid(V, Some("lee")));
        assert_eq!(uid, V);
        assert_eq!(
            changes,
            vec![
                IdentityChange::MergedProfile {
                    unified_id: V.into(),
                    external_id: "lee".into()
                },
                IdentityChange::NewIdentifier {
                    kind: "external_id",
                    value: "lee".into(),
                    unified_id: V.into()
                },
            ]
        );
        assert_eq!(map.external_of(V), Some(Some("lee")));
    }

    #[test]
    fn a_unified_id_that_contradicts_the_stored_external_ids_conflicts() {
        let mut map = IdentityMap::default();
        run(&mut map, &by_uid(U, Some("kim")));
        run(&mut map, &by_uid(V, None));
        // U holds another external_id.
        let why = conflict(&map, &by_uid(U, Some("lee")));
        assert!(why.contains("holds another external_id"), "{why}");
        // The external_id belongs to another profile: an existing anonymous
        // V, and a V that does not exist yet.
        for uid in [V, "11111111-2222-4333-8444-555555555555"] {
            let why = conflict(&map, &by_uid(uid, Some("kim")));
            assert!(why.contains("belongs to another profile"), "{why}");
        }
        // Within one transaction, what was staged counts.
        let mut staged = Staged::default();
        staged.resolve(&map, &id(&[("external_id", "park")])).unwrap();
        assert!(staged.resolve(&map, &by_uid(V, Some("park"))).is_err());
        assert_eq!(staged.resolve(&map, &by_uid(V, Some("choi"))), Ok(V.to_owned()));
        assert!(staged.resolve(&map, &by_uid(V, Some("park"))).is_err());
        // Only a unified id with an external_id can conflict.
        assert!(may_conflict(&by_uid(U, Some("kim"))));
        assert!(!may_conflict(&by_uid(U, None)));
        assert!(!may_conflict(&id(&[("external_id", "kim"), ("email", "e")])));
    }
}
