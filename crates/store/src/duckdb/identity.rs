//! Identity resolution (SPEC §1 "Unified profile"): which `df_unified_id`
//! an identity belongs to.
//!
//! The writer thread owns the index, so resolution needs no lock. Changes
//! made while resolving a group of requests are staged and only applied to
//! the index after their transaction commits; a rolled-back group leaves the
//! index as it was.

use std::collections::HashMap;

use duckdb::Connection;
use fineport_contract::import::Identity;
use fineport_contract::Uuid;

use crate::StoreError;

type Key = (String, &'static str, String);

fn kind_static(kind: &str) -> Option<&'static str> {
    fineport_contract::import::IDENTIFIER_KINDS
        .into_iter()
        .find(|k| *k == kind)
}

/// The committed identity index.
#[derive(Default)]
pub(crate) struct Identities {
    /// (service, kind, value) → unified id.
    by_identifier: HashMap<Key, String>,
    /// (service, unified id) → external id, for every profile.
    profiles: HashMap<(String, String), Option<String>>,
}

/// Changes staged by one group, written in its transaction.
#[derive(Default)]
pub(crate) struct Staged {
    by_identifier: HashMap<Key, String>,
    profiles: HashMap<(String, String), Option<String>>,
    new_profiles: Vec<(String, String, Option<String>)>,
    merged_profiles: Vec<(String, String, String)>,
    new_identifiers: Vec<(String, &'static str, String, String)>,
    /// Identifiers that now belong to another profile: (key, new unified id).
    moved_identifiers: Vec<(Key, String)>,
    /// Identifiers and profiles of deleted profiles.
    removed_identifiers: Vec<Key>,
    removed_profiles: Vec<(String, String)>,
}

impl Staged {
    /// This staging after its rows were written: the lookups stay for the
    /// rest of the transaction, the lists of rows to write are emptied.
    pub fn written(mut self) -> Staged {
        self.new_profiles.clear();
        self.merged_profiles.clear();
        self.new_identifiers.clear();
        self.moved_identifiers.clear();
        self
    }
}

impl Identities {
    pub fn load(conn: &Connection) -> Result<Identities, StoreError> {
        let mut ids = Identities::default();
        let mut stmt = conn.prepare("SELECT service_id, unified_id, external_id FROM profiles")?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })? {
            let (service, uid, ext) = row?;
            ids.profiles.insert((service, uid), ext);
        }
        let mut stmt = conn.prepare("SELECT service_id, kind, value, unified_id FROM identifiers")?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })? {
            let (service, kind, value, uid) = row?;
            let kind =
                kind_static(&kind).ok_or_else(|| StoreError::internal(format!("unknown identifier kind {kind:?}")))?;
            ids.by_identifier.insert((service, kind, value), uid);
        }
        Ok(ids)
    }

    fn lookup<'a>(&'a self, staged: &'a Staged, key: &Key) -> Option<&'a String> {
        staged.by_identifier.get(key).or_else(|| self.by_identifier.get(key))
    }

    fn external_of<'a>(&'a self, staged: &'a Staged, service: &str, uid: &str) -> Option<&'a Option<String>> {
        let key = (service.to_owned(), uid.to_owned());
        staged.profiles.get(&key).or_else(|| self.profiles.get(&key))
    }

    /// Resolves `identity` to a unified id, staging any profile or
    /// identifier it creates. `external_id` is authoritative; without it the
    /// identifiers are looked up in order; a profile without external_id
    /// that an identifier leads to takes the external_id (a merge).
    pub fn resolve(&self, staged: &mut Staged, service: &str, identity: &Identity) -> String {
        let key = |kind: &'static str, value: &str| (service.to_owned(), kind, value.to_owned());
        let found = match &identity.external_id {
            Some(ext) => self.lookup(staged, &key("external_id", ext)).cloned().or_else(|| {
                // An anonymous profile reached by another identifier takes this external_id.
                let uid = identity
                    .identifiers()
                    .skip(1)
                    .filter_map(|(k, v)| self.lookup(staged, &key(k, v)).cloned())
                    .find(|uid| matches!(self.external_of(staged, service, uid), Some(None)))?;
                staged
                    .profiles
                    .insert((service.to_owned(), uid.clone()), Some(ext.clone()));
                staged
                    .merged_profiles
                    .push((service.to_owned(), uid.clone(), ext.clone()));
                Some(uid)
            }),
            None => identity
                .identifiers()
                .find_map(|(k, v)| self.lookup(staged, &key(k, v)).cloned()),
        };
        let uid = found.unwrap_or_else(|| {
            let uid = Uuid::new_v4().to_string();
            let ext = identity.external_id.clone();
            staged.profiles.insert((service.to_owned(), uid.clone()), ext.clone());
            staged.new_profiles.push((service.to_owned(), uid.clone(), ext));
            uid
        });
        // Identifiers the profile does not hold yet join it; with an
        // external_id present, one held by another profile moves here.
        for (kind, value) in identity.identifiers() {
            let k = key(kind, value);
            match self.lookup(staged, &k).cloned() {
                None => {
                    staged.by_identifier.insert(k, uid.clone());
                    staged
                        .new_identifiers
                        .push((service.to_owned(), kind, value.to_owned(), uid.clone()));
                }
                Some(owner) if owner != uid && identity.external_id.is_some() && kind != "external_id" => {
                    staged.by_identifier.insert(k.clone(), uid.clone());
                    staged.moved_identifiers.push((k, uid.clone()));
                }
                Some(_) => {}
            }
        }
        uid
    }

    /// The profile an external_id belongs to, if any (committed state).
    pub fn by_external_id(&self, service: &str, external_id: &str) -> Option<String> {
        self.by_identifier
            .get(&(service.to_owned(), "external_id", external_id.to_owned()))
            .cloned()
    }

    /// Stages the deletion of a profile with everything that points at it,
    /// and deletes its rows in the current transaction.
    pub fn delete(conn: &Connection, staged: &mut Staged, service: &str, uid: &str) -> Result<(), StoreError> {
        let mut stmt = conn.prepare("SELECT kind, value FROM identifiers WHERE service_id = ? AND unified_id = ?")?;
        for row in stmt.query_map([service, uid], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (kind, value) = row?;
            if let Some(kind) = kind_static(&kind) {
                staged.removed_identifiers.push((service.to_owned(), kind, value));
            }
        }
        staged.removed_profiles.push((service.to_owned(), uid.to_owned()));
        for table in ["identifiers", "user_properties", "profiles"] {
            conn.execute(
                &format!("DELETE FROM {table} WHERE service_id = ? AND unified_id = ?"),
                [service, uid],
            )?;
        }
        Ok(())
    }

    /// Writes staged changes in the current transaction.
    pub fn write(conn: &Connection, staged: &Staged, now_ms: i64) -> Result<(), StoreError> {
        if !staged.new_profiles.is_empty() {
            let mut app = conn.appender("profiles")?;
            for (service, uid, ext) in &staged.new_profiles {
                app.append_row(duckdb::params![service, uid, ext, now_ms])?;
            }
        }
        for (service, uid, ext) in &staged.merged_profiles {
            conn.execute(
                "UPDATE profiles SET external_id = ? WHERE service_id = ? AND unified_id = ?",
                duckdb::params![ext, service, uid],
            )?;
        }
        if !staged.new_identifiers.is_empty() {
            let mut app = conn.appender("identifiers")?;
            for (service, kind, value, uid) in &staged.new_identifiers {
                app.append_row(duckdb::params![service, kind, value, uid])?;
            }
        }
        for ((service, kind, value), uid) in &staged.moved_identifiers {
            conn.execute(
                "UPDATE identifiers SET unified_id = ? WHERE service_id = ? AND kind = ? AND value = ?",
                duckdb::params![uid, service, kind, value],
            )?;
        }
        Ok(())
    }

    /// Applies staged changes once their transaction has committed.
    pub fn apply(&mut self, staged: Staged) {
        self.by_identifier.extend(staged.by_identifier);
        self.profiles.extend(staged.profiles);
        for key in staged.removed_identifiers {
            self.by_identifier.remove(&key);
        }
        for key in staged.removed_profiles {
            self.profiles.remove(&key);
        }
    }
}
