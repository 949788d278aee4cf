//! Identity resolution on DuckDB: the committed identities of every service
//! in memory, resolved by the backend-neutral algorithm of
//! [`crate::identity`].
//!
//! The writer thread owns the index, so resolution needs no lock. Changes
//! made while resolving a group of requests are staged and only applied to
//! the index after their transaction commits; a rolled-back group leaves the
//! index as it was.

use std::collections::HashMap;

use duckdb::Connection;
use fineport_contract::import::Identity;

use crate::identity::{self, IdentityChange, IdentityLookup, IdentityMap};
use crate::StoreError;

/// The committed identity index: service → its identifiers and profiles.
#[derive(Default)]
pub(crate) struct Identities {
    services: HashMap<String, IdentityMap>,
}

/// Changes staged by one group, written in its transaction.
#[derive(Default)]
pub(crate) struct Staged {
    /// Per service: the resolutions' overlay and the rows still to write.
    services: HashMap<String, identity::Staged>,
    /// Identifiers `(service, kind, value)` and profiles `(service,
    /// unified id)` of deleted profiles.
    removed_identifiers: Vec<(String, String, String)>,
    removed_profiles: Vec<(String, String)>,
}

/// A service without identities yet.
static EMPTY: std::sync::LazyLock<IdentityMap> = std::sync::LazyLock::new(IdentityMap::default);

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
            ids.services.entry(service).or_default().insert_profile(uid, ext);
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
            if !ids
                .services
                .entry(service)
                .or_default()
                .insert_identifier(&kind, value, uid)
            {
                return Err(StoreError::internal(format!("unknown identifier kind {kind:?}")));
            }
        }
        Ok(ids)
    }

    fn service(&self, service: &str) -> &IdentityMap {
        self.services.get(service).unwrap_or(&EMPTY)
    }

    /// Resolves `identity` to a unified id (see
    /// [`identity::Staged::resolve`]), staging any profile or identifier it
    /// creates or changes; a conflict stages nothing.
    pub fn resolve(
        &self,
        staged: &mut Staged,
        service: &str,
        identity: &Identity,
    ) -> Result<String, identity::IdentityConflict> {
        staged
            .services
            .entry(service.to_owned())
            .or_default()
            .resolve(self.service(service), identity)
    }

    /// The profile an external_id belongs to, if any (committed state).
    pub fn by_external_id(&self, service: &str, external_id: &str) -> Option<String> {
        self.service(service)
            .lookup("external_id", external_id)
            .map(str::to_owned)
    }

    /// Stages the deletion of a profile with everything that points at it,
    /// and deletes its rows in the current transaction.
    pub fn delete(conn: &Connection, staged: &mut Staged, service: &str, uid: &str) -> Result<(), StoreError> {
        let mut stmt = conn.prepare("SELECT kind, value FROM identifiers WHERE service_id = ? AND unified_id = ?")?;
        for row in stmt.query_map([service, uid], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (kind, value) = row?;
            staged.removed_identifiers.push((service.to_owned(), kind, value));
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

    /// Writes the staged changes not written yet in the current transaction.
    pub fn write(conn: &Connection, staged: &mut Staged, now_ms: i64) -> Result<(), StoreError> {
        let mut new_profiles = Vec::new();
        let mut new_identifiers = Vec::new();
        let mut updates = Vec::new();
        for (service, staged) in &mut staged.services {
            for change in staged.take_changes() {
                match change {
                    IdentityChange::NewProfile {
                        unified_id,
                        external_id,
                    } => new_profiles.push((service.as_str(), unified_id, external_id)),
                    IdentityChange::NewIdentifier {
                        kind,
                        value,
                        unified_id,
                    } => new_identifiers.push((service.as_str(), kind, value, unified_id)),
                    other => updates.push((service.as_str(), other)),
                }
            }
        }
        if !new_profiles.is_empty() {
            let mut app = conn.appender("profiles")?;
            for (service, uid, ext) in &new_profiles {
                app.append_row(duckdb::params![service, uid, ext, now_ms])?;
            }
        }
        if !new_identifiers.is_empty() {
            let mut app = conn.appender("identifiers")?;
            for (service, kind, value, uid) in &new_identifiers {
                app.append_row(duckdb::params![service, kind, value, uid])?;
            }
        }
        for (service, change) in updates {
            match change {
                IdentityChange::MergedProfile {
                    unified_id,
                    external_id,
                } => conn.execute(
                    "UPDATE profiles SET external_id = ? WHERE service_id = ? AND unified_id = ?",
                    duckdb::params![external_id, service, unified_id],
                )?,
                IdentityChange::MovedIdentifier {
                    kind,
                    value,
                    unified_id,
                } => conn.execute(
                    "UPDATE identifiers SET unified_id = ? WHERE service_id = ? AND kind = ? AND value = ?",
                    duckdb::params![unified_id, service, kind, value],
                )?,
                IdentityChange::NewProfile { .. } | IdentityChange::NewIdentifier { .. } => 0,
            };
        }
        Ok(())
    }

    /// Applies staged changes once their transaction has committed.
    pub fn apply(&mut self, staged: Staged) {
        for (service, staged) in staged.services {
            self.services.entry(service).or_default().extend(staged.into_overlay());
        }
        for (service, kind, value) in staged.removed_identifiers {
            if let Some(map) = self.services.get_mut(&service) {
                map.remove_identifier(&kind, &value);
            }
        }
        for (service, uid) in staged.removed_profiles {
            if let Some(map) = self.services.get_mut(&service) {
                map.remove_profile(&uid);
            }
        }
    }
}
