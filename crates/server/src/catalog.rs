//! The catalog: services (settings and limits), token hashes, taxonomies
//! and audiences, kept in memory and written through to the store.
//!
//! Every request reads it (authentication, taxonomy checks) and none of
//! those reads touch the store. Changes are serialised by one async lock
//! (`changes`) and reach memory only after the store has them, so memory
//! never shows what a restart would lose.
//!
//! Several processes (replicas) may share one store (cluster mode). Then:
//! - a change takes the store's lock on its service
//!   ([`Store::lock_catalog`]) and, under it, first reads the service again
//!   from the store, so its checks (a reissue's cool-down, a name's type,
//!   an audience id taken) see every change any replica committed, and two
//!   replicas never both pass a check only one should;
//! - changes other replicas commit reach this memory through
//!   [`crate::sync`]: [`Catalog::reload_services`] on each announced
//!   change, [`Catalog::reload`] when the announcements may have been
//!   missed and periodically. Reloads hold `changes` too, so a reload
//!   never puts back a state older than a change this replica committed,
//!   and they read only committed state, so the invariant above holds;
//!   a failed reload leaves memory as it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use fineport_contract::profile::Audience;
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc, TaxonomyError};
use fineport_contract::{ServiceId, Tz};
use fineport_store::{
    CatalogLock, CatalogSnapshot, Service, Store, StoreError, StoreErrorKind, TokenKind, TokenRecord,
};
use rand::Rng;

use crate::tokens;

/// A service as requests see it.
#[derive(Clone)]
pub struct ServiceView {
    pub service: Service,
    pub timezone: Tz,
    pub taxonomy: Arc<Taxonomy>,
}

struct Entry {
    view: ServiceView,
    tokens: Vec<TokenRecord>,
    audiences: BTreeMap<String, Audience>,
}

/// Why a catalog change was refused.
#[derive(Debug)]
pub enum CatalogError {
    /// What does not exist, in words (`no such service: "shop"`).
    NotFound(String),
    Conflict(String),
    Invalid(String),
    Store(StoreError),
}

impl CatalogError {
    pub fn no_service(service_id: &str) -> CatalogError {
        CatalogError::NotFound(format!("no such service: {service_id:?}"))
    }

    pub fn no_audience(service_id: &str, audience_id: &str) -> CatalogError {
        CatalogError::NotFound(format!("no audience {audience_id:?} in service {service_id:?}"))
    }
}

impl From<StoreError> for CatalogError {
    fn from(e: StoreError) -> Self {
        match e.kind {
            StoreErrorKind::Conflict => CatalogError::Conflict(e.message),
            StoreErrorKind::NotFound => CatalogError::NotFound(e.message),
            _ => CatalogError::Store(e),
        }
    }
}

impl From<TaxonomyError> for CatalogError {
    fn from(e: TaxonomyError) -> Self {
        match e {
            TaxonomyError::InvalidName(_) | TaxonomyError::ItemsType { .. } => CatalogError::Invalid(e.to_string()),
            TaxonomyError::TypeConflict { .. } | TaxonomyError::ColumnCollision { .. } => {
                CatalogError::Conflict(e.to_string())
            }
        }
    }
}

/// Token lifetimes (SPEC §1 "Tokens").
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// How long a replaced token keeps working.
    pub grace: Duration,
    /// How soon after a reissue the same kind may be reissued again.
    pub cooldown: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            grace: Duration::days(14),
            cooldown: Duration::days(1),
        }
    }
}

/// The answer to a reissue: the new token, shown once.
pub struct Reissued {
    pub token: String,
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// The catalog in memory (see the module docs): reads never wait on the
/// store; changes write through it, one at a time per process and, on a
/// shared store, one at a time per service across processes.
pub struct Catalog {
    store: Arc<dyn Store>,
    entries: RwLock<HashMap<ServiceId, Entry>>,
    /// Held by every change and every reload, from reading the store to
    /// updating memory.
    changes: tokio::sync::Mutex<()>,
    policy: TokenPolicy,
}

/// The entries of a snapshot. Errors on corrupt stored data.
fn entries_from(mut snapshot: CatalogSnapshot) -> Result<HashMap<ServiceId, Entry>, StoreError> {
    let mut entries = HashMap::new();
    for service in snapshot.services {
        let taxonomy = snapshot.taxonomies.remove(&service.service_id).unwrap_or_default();
        let tokens = snapshot
            .tokens
            .iter()
            .filter(|t| t.service_id == service.service_id)
            .cloned()
            .collect();
        // A stored timezone that does not parse is corrupt data: stop
        // rather than export this service's days in another zone.
        let timezone = fineport_contract::time::parse_timezone(&service.timezone).ok_or_else(|| {
            StoreError::internal(format!(
                "corrupt stored data: service {} has the unknown timezone {:?}",
                service.service_id, service.timezone
            ))
        })?;
        let id = service.service_id.clone();
        let audiences = snapshot
            .audiences
            .iter()
            .filter(|(s, _)| *s == id)
            .map(|(_, a)| (a.id.clone(), a.clone()))
            .collect();
        let view = ServiceView {
            service,
            timezone,
            taxonomy: Arc::new(taxonomy),
        };
        entries.insert(
            id,
            Entry {
                view,
                tokens,
                audiences,
            },
        );
    }
    Ok(entries)
}

/// A catalog change in progress: this process's `changes` guard and, on a
/// store other processes share, the store's lock on the service.
struct Changing<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    shared: Option<CatalogLock>,
}

impl Changing<'_> {
    /// Ends the change: gives the store's lock back, then this process's.
    async fn end(self) {
        if let Some(lock) = self.shared {
            lock.release().await;
        }
    }
}

impl Catalog {
    /// The catalog as the store holds it. Errors: the store's, or
    /// `Internal` for corrupt stored data (an unknown timezone).
    pub async fn load(store: Arc<dyn Store>, policy: TokenPolicy) -> Result<Catalog, StoreError> {
        let entries = entries_from(store.load_catalog().await?)?;
        Ok(Catalog {
            store,
            entries: RwLock::new(entries),
            changes: tokio::sync::Mutex::new(()),
            policy,
        })
    }

    /// Reads the whole catalog from the store again and replaces memory
    /// with it (services gone from the store are gone from memory). On an
    /// error (the store's, or corrupt stored data) memory stays as it was.
    /// Waits for a change of this process in progress, and holds the next
    /// one back until memory is replaced.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _guard = self.changes.lock().await;
        let entries = entries_from(self.store.load_catalog().await?)?;
        *self.write() = entries;
        Ok(())
    }

    /// Reads these services from the store again, one after the other,
    /// and replaces each in memory (or removes it when the store no longer
    /// has it). On an error, the services before it are replaced, the
    /// others stay as they were. Serialised with changes as
    /// [`Catalog::reload`] is.
    pub async fn reload_services<'a>(
        &self,
        service_ids: impl IntoIterator<Item = &'a ServiceId>,
    ) -> Result<(), StoreError> {
        let _guard = self.changes.lock().await;
        for service_id in service_ids {
            self.refresh(service_id).await?;
        }
        Ok(())
    }

    /// Replaces one service in memory with what the store holds. The
    /// caller holds `changes`.
    async fn refresh(&self, service_id: &ServiceId) -> Result<(), StoreError> {
        let mut loaded = entries_from(self.store.load_service(service_id).await?)?;
        let mut entries = self.write();
        match loaded.remove(service_id) {
            Some(entry) => entries.insert(service_id.clone(), entry),
            None => entries.remove(service_id),
        };
        Ok(())
    }

    /// Starts a change of `service_id`: waits for this process's previous
    /// change, takes the store's lock on the service when other processes
    /// share the store, and then brings the service up to date from it.
    async fn begin(&self, service_id: &ServiceId) -> Result<Changing<'_>, CatalogError> {
        let local = self.changes.lock().await;
        let shared = self.store.lock_catalog(service_id).await?;
        let changing = Changing { _local: local, shared };
        if changing.shared.is_some() {
            if let Err(e) = self.refresh(service_id).await {
                changing.end().await;
                return Err(e.into());
            }
        }
        Ok(changing)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ServiceId, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ServiceId, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn service(&self, service_id: &str) -> Option<ServiceView> {
        self.read().get(service_id).map(|e| e.view.clone())
    }

    /// Whether `service_id` is a service (one the admin created).
    pub fn contains(&self, service_id: &str) -> bool {
        self.read().contains_key(service_id)
    }

    pub fn services(&self) -> Vec<Service> {
        let mut list: Vec<Service> = self.read().values().map(|e| e.view.service.clone()).collect();
        list.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        list
    }

    /// Every token record of `service_id` (hashes included: never to be
    /// shown), newest first; `None` when the service does not exist.
    pub fn tokens(&self, service_id: &str) -> Option<Vec<TokenRecord>> {
        let mut tokens = self.read().get(service_id)?.tokens.clone();
        tokens.sort_by(|a, b| (b.created_at, &b.token_id).cmp(&(a.created_at, &a.token_id)));
        Some(tokens)
    }

    /// The id of the valid `kind` token of `service_id` that `presented`
    /// is, if any. Every candidate is compared in constant time.
    pub fn authenticate(
        &self,
        service_id: &str,
        kind: TokenKind,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let entries = self.read();
        let entry = entries.get(service_id)?;
        let mut found = None;
        for t in entry.tokens.iter().filter(|t| t.kind == kind && t.is_valid_at(now)) {
            if tokens::matches(presented, &t.hash) && found.is_none() {
                found = Some(t.token_id.clone());
            }
        }
        found
    }

    fn new_token(
        service_id: &ServiceId,
        kind: TokenKind,
        now: DateTime<Utc>,
        by_reissue: bool,
    ) -> (String, TokenRecord) {
        let token = tokens::generate();
        let record = TokenRecord {
            token_id: tokens::short_id("tok_"),
            service_id: service_id.clone(),
            kind,
            hash: tokens::hash(&token),
            created_at: now,
            by_reissue,
            valid_until: None,
            revoked: false,
            reason: None,
        };
        (token, record)
    }

    /// Creates a service with fresh tokens and the standard taxonomy.
    /// Returns the import and export tokens, shown once. `Conflict` when
    /// the id exists (created through any replica).
    pub async fn create_service(&self, service: Service) -> Result<(String, String), CatalogError> {
        let changing = self.begin(&service.service_id).await?;
        let done = self.create_service_now(service).await;
        changing.end().await;
        done
    }

    async fn create_service_now(&self, service: Service) -> Result<(String, String), CatalogError> {
        if self.read().contains_key(&service.service_id) {
            return Err(CatalogError::Conflict(format!(
                "service {:?} exists",
                service.service_id
            )));
        }
        let timezone = fineport_contract::time::parse_timezone(&service.timezone)
            .ok_or_else(|| CatalogError::Invalid(format!("unknown timezone {:?}", service.timezone)))?;
        let now = service.created_at;
        let (import_token, import) = Self::new_token(&service.service_id, TokenKind::Import, now, false);
        let (export_token, export) = Self::new_token(&service.service_id, TokenKind::Export, now, false);
        let taxonomy = Taxonomy::standard();
        let tokens = vec![import, export];
        self.store.create_service(&service, &tokens, &taxonomy).await?;
        let view = ServiceView {
            service: service.clone(),
            timezone,
            taxonomy: Arc::new(taxonomy),
        };
        self.write().insert(
            service.service_id,
            Entry {
                view,
                tokens,
                audiences: BTreeMap::new(),
            },
        );
        Ok((import_token, export_token))
    }

    /// Applies `change` to a service's settings, as the store holds them
    /// when the change starts. `NotFound`, or `Invalid` with what `change`
    /// refused or an unknown timezone.
    pub async fn update_service(
        &self,
        service_id: &ServiceId,
        change: impl FnOnce(&mut Service) -> Result<(), String>,
    ) -> Result<Service, CatalogError> {
        let changing = self.begin(service_id).await?;
        let done = self.update_service_now(service_id, change).await;
        changing.end().await;
        done
    }

    async fn update_service_now(
        &self,
        service_id: &ServiceId,
        change: impl FnOnce(&mut Service) -> Result<(), String>,
    ) -> Result<Service, CatalogError> {
        let mut service = self
            .service(service_id)
            .ok_or_else(|| CatalogError::no_service(service_id))?
            .service;
        change(&mut service).map_err(CatalogError::Invalid)?;
        let timezone = fineport_contract::time::parse_timezone(&service.timezone)
            .ok_or_else(|| CatalogError::Invalid(format!("unknown timezone {:?}", service.timezone)))?;
        self.store.update_service(&service).await?;
        if let Some(e) = self.write().get_mut(service_id) {
            e.view.service = service.clone();
            e.view.timezone = timezone;
        }
        Ok(service)
    }

    /// Issues a new token of `kind`; the current one keeps working for the
    /// grace period. Refused (`Conflict`) within the cool-down of the
    /// previous reissue, made through any replica. `reason` is kept with
    /// the new token (the caller checks its length).
    pub async fn reissue(
        &self,
        service_id: &ServiceId,
        kind: TokenKind,
        now: DateTime<Utc>,
        reason: Option<String>,
    ) -> Result<Reissued, CatalogError> {
        let changing = self.begin(service_id).await?;
        let done = self.reissue_now(service_id, kind, now, reason).await;
        changing.end().await;
        done
    }

    async fn reissue_now(
        &self,
        service_id: &ServiceId,
        kind: TokenKind,
        now: DateTime<Utc>,
        reason: Option<String>,
    ) -> Result<Reissued, CatalogError> {
        let current: Vec<TokenRecord> = {
            let entries = self.read();
            let entry = entries
                .get(service_id)
                .ok_or_else(|| CatalogError::no_service(service_id))?;
            entry.tokens.iter().filter(|t| t.kind == kind).cloned().collect()
        };
        if let Some(last) = current.iter().filter(|t| t.by_reissue).map(|t| t.created_at).max() {
            // A cool-down past the end of the calendar never ends.
            let allowed_from = last.checked_add_signed(self.policy.cooldown);
            if allowed_from.is_none_or(|from| now < from) {
                return Err(CatalogError::Conflict(format!(
                    "the {} token was reissued at {}; the next reissue is allowed from {}",
                    kind.as_str(),
                    last.to_rfc3339(),
                    allowed_from.map_or("never".into(), |from| from.to_rfc3339())
                )));
            }
        }
        let until = now
            .checked_add_signed(self.policy.grace)
            .ok_or_else(|| CatalogError::Invalid("the token grace period ends past the calendar".into()))?;
        let mut changed: Vec<TokenRecord> = current
            .into_iter()
            .filter(|t| t.valid_until.is_none() && !t.revoked)
            .map(|mut t| {
                t.valid_until = Some(until);
                t
            })
            .collect();
        let previous_valid_until = (!changed.is_empty()).then_some(until);
        let (token, mut record) = Self::new_token(service_id, kind, now, true);
        record.reason = reason;
        changed.push(record);
        self.store.save_tokens(&changed).await?;
        self.replace_tokens(service_id, changed);
        Ok(Reissued {
            token,
            previous_valid_until,
        })
    }

    /// Revokes every token of `kind` at once (those issued through other
    /// replicas too). Returns how many were valid.
    pub async fn revoke(
        &self,
        service_id: &ServiceId,
        kind: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<usize, CatalogError> {
        let changing = self.begin(service_id).await?;
        let done = self.revoke_now(service_id, kind, now).await;
        changing.end().await;
        done
    }

    async fn revoke_now(
        &self,
        service_id: &ServiceId,
        kind: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<usize, CatalogError> {
        let changed: Vec<TokenRecord> = {
            let entries = self.read();
            let entry = entries
                .get(service_id)
                .ok_or_else(|| CatalogError::no_service(service_id))?;
            entry
                .tokens
                .iter()
                .filter(|t| t.kind == kind && !t.revoked)
                .cloned()
                .map(|mut t| {
                    t.revoked = true;
                    t
                })
                .collect()
        };
        let valid = changed.iter().filter(|t| t.valid_until.is_none_or(|u| now < u)).count();
        self.store.save_tokens(&changed).await?;
        self.replace_tokens(service_id, changed);
        Ok(valid)
    }

    fn replace_tokens(&self, service_id: &ServiceId, changed: Vec<TokenRecord>) {
        if let Some(e) = self.write().get_mut(service_id) {
            for t in changed {
                match e.tokens.iter_mut().find(|x| x.token_id == t.token_id) {
                    Some(slot) => *slot = t,
                    None => e.tokens.push(t),
                }
            }
        }
    }

    /// Adds names to a service's taxonomy (idempotent). Returns what was
    /// new. `Conflict` for a name registered (through any replica) with
    /// another type or whose export column another name has.
    pub async fn register(&self, service_id: &ServiceId, doc: &TaxonomyDoc) -> Result<TaxonomyDoc, CatalogError> {
        // Names are never removed nor retyped, so what memory already has
        // with the same types is in the store too: no change to make (the
        // usual case of an import with auto-registration), and a conflict
        // here is one in the store too. A service memory does not know yet
        // may have been created through another replica: the change finds
        // out.
        if let Some(view) = self.service(service_id) {
            if view.taxonomy.additions(doc)?.is_empty() {
                return Ok(TaxonomyDoc::default());
            }
        }
        let changing = self.begin(service_id).await?;
        let done = self.register_now(service_id, doc).await;
        changing.end().await;
        done
    }

    async fn register_now(&self, service_id: &ServiceId, doc: &TaxonomyDoc) -> Result<TaxonomyDoc, CatalogError> {
        let view = self
            .service(service_id)
            .ok_or_else(|| CatalogError::no_service(service_id))?;
        let additions = view.taxonomy.additions(doc)?;
        if additions.is_empty() {
            return Ok(additions);
        }
        self.store.register(service_id, &additions).await?;
        if let Some(e) = self.write().get_mut(service_id) {
            let mut taxonomy = (*e.view.taxonomy).clone();
            taxonomy.apply(&additions);
            e.view.taxonomy = Arc::new(taxonomy);
        }
        Ok(additions)
    }
}

impl Catalog {
    pub fn audiences(&self, service_id: &str) -> Option<Vec<Audience>> {
        self.read()
            .get(service_id)
            .map(|e| e.audiences.values().cloned().collect())
    }

    pub fn audience(&self, service_id: &str, audience_id: &str) -> Option<Audience> {
        self.read().get(service_id)?.audiences.get(audience_id).cloned()
    }

    /// Checks and saves an audience, generating its id when absent. `Conflict`
    /// when the id is taken (through any replica).
    pub async fn create_audience(&self, service_id: &ServiceId, audience: Audience) -> Result<Audience, CatalogError> {
        let changing = self.begin(service_id).await?;
        let done = self.create_audience_now(service_id, audience).await;
        changing.end().await;
        done
    }

    async fn create_audience_now(
        &self,
        service_id: &ServiceId,
        mut audience: Audience,
    ) -> Result<Audience, CatalogError> {
        let view = self
            .service(service_id)
            .ok_or_else(|| CatalogError::no_service(service_id))?;
        audience.check(&view.taxonomy).map_err(CatalogError::Invalid)?;
        let taken = |id: &str| {
            self.read()
                .get(service_id)
                .is_some_and(|e| e.audiences.contains_key(id))
        };
        if audience.id.is_empty() {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            loop {
                let mut rng = rand::rng();
                let id: String = (0..6)
                    .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                    .collect();
                if !taken(&id) {
                    audience.id = id;
                    break;
                }
            }
        } else if taken(&audience.id) {
            return Err(CatalogError::Conflict(format!("audience {:?} exists", audience.id)));
        }
        self.store.save_audience(service_id, &audience).await?;
        if let Some(e) = self.write().get_mut(service_id) {
            e.audiences.insert(audience.id.clone(), audience.clone());
        }
        Ok(audience)
    }

    /// Deletes an audience. `NotFound` when the service or the audience
    /// does not exist.
    pub async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<(), CatalogError> {
        let changing = self.begin(service_id).await?;
        let done = self.delete_audience_now(service_id, audience_id).await;
        changing.end().await;
        done
    }

    async fn delete_audience_now(&self, service_id: &ServiceId, audience_id: &str) -> Result<(), CatalogError> {
        if self.service(service_id).is_none() {
            return Err(CatalogError::no_service(service_id));
        }
        if self.audience(service_id, audience_id).is_none() {
            return Err(CatalogError::no_audience(service_id, audience_id));
        }
        self.store.delete_audience(service_id, audience_id).await?;
        if let Some(e) = self.write().get_mut(service_id) {
            e.audiences.remove(audience_id);
        }
        Ok(())
    }
}
