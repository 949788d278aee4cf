//! The catalog: services, token hashes and taxonomies, kept in memory and
//! written through to the store.
//!
//! Every request reads it (authentication, taxonomy checks) and none of
//! those reads touch the store. Changes are serialised by one async lock and
//! reach memory only after the store has them, so memory never shows what a
//! restart would lose.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use fineport_contract::profile::Audience;
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc, TaxonomyError};
use fineport_contract::{ServiceId, Tz};
use fineport_store::{Service, Store, StoreError, StoreErrorKind, TokenKind, TokenRecord};
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

pub struct Catalog {
    store: Arc<dyn Store>,
    entries: RwLock<HashMap<ServiceId, Entry>>,
    changes: tokio::sync::Mutex<()>,
    policy: TokenPolicy,
}

impl Catalog {
    pub async fn load(store: Arc<dyn Store>, policy: TokenPolicy) -> Result<Catalog, StoreError> {
        let mut snapshot = store.load_catalog().await?;
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
        Ok(Catalog {
            store,
            entries: RwLock::new(entries),
            changes: tokio::sync::Mutex::new(()),
            policy,
        })
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

    pub fn services(&self) -> Vec<Service> {
        let mut list: Vec<Service> = self.read().values().map(|e| e.view.service.clone()).collect();
        list.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        list
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
        };
        (token, record)
    }

    /// Creates a service with fresh tokens and the standard taxonomy.
    /// Returns the import and export tokens, shown once.
    pub async fn create_service(&self, service: Service) -> Result<(String, String), CatalogError> {
        let _guard = self.changes.lock().await;
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

    /// Applies `change` to a service's settings.
    pub async fn update_service(
        &self,
        service_id: &ServiceId,
        change: impl FnOnce(&mut Service) -> Result<(), String>,
    ) -> Result<Service, CatalogError> {
        let _guard = self.changes.lock().await;
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
    /// grace period. Refused within the cool-down of the previous reissue.
    pub async fn reissue(
        &self,
        service_id: &ServiceId,
        kind: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<Reissued, CatalogError> {
        let _guard = self.changes.lock().await;
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
        let (token, record) = Self::new_token(service_id, kind, now, true);
        changed.push(record);
        self.store.save_tokens(&changed).await?;
        self.replace_tokens(service_id, changed);
        Ok(Reissued {
            token,
            previous_valid_until,
        })
    }

    /// Revokes every token of `kind` at once. Returns how many were valid.
    pub async fn revoke(
        &self,
        service_id: &ServiceId,
        kind: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<usize, CatalogError> {
        let _guard = self.changes.lock().await;
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

    /// Adds names to a service's taxonomy (idempotent). Returns what was new.
    pub async fn register(&self, service_id: &ServiceId, doc: &TaxonomyDoc) -> Result<TaxonomyDoc, CatalogError> {
        let _guard = self.changes.lock().await;
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
    /// when the id is taken.
    pub async fn create_audience(
        &self,
        service_id: &ServiceId,
        mut audience: Audience,
    ) -> Result<Audience, CatalogError> {
        let _guard = self.changes.lock().await;
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

    pub async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<(), CatalogError> {
        let _guard = self.changes.lock().await;
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
