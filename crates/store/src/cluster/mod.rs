//! Cluster mode: events on sharded ClickHouse, everything else on
//! PostgreSQL, behind the same [`Store`] trait as the embedded DuckDB.
//!
//! [`ClusterStore`] only routes: events go to [`clickhouse`], which stores
//! one row per event in one table for all services and reads it back in
//! day-sized queries; services, tokens, taxonomies, identities, profiles,
//! audiences, the request log and settings go to [`postgres`], which gives
//! them transactions and unique constraints. The few operations that need
//! both are composed here:
//!
//! - an event import resolves its identity in PostgreSQL, keeps the first
//!   correction time of future-dated events there (so a resend lands on the
//!   same key and the export's adjacent dedupe drops it), renders the rows'
//!   cells with the contract's encoder and hands them to ClickHouse's group
//!   commit; it is acknowledged only once ClickHouse has written them;
//! - a user-profile export with event conditions streams each condition's
//!   users from ClickHouse (sorted) into PostgreSQL's profile stream, which
//!   keeps a profile only if every one of them holds it.
//!
//! No DFINERY rule is restated here or in the backends: correction time,
//! `df_api_version`/`df_platform`, cell spelling and identity resolution
//! come from `fineport_contract` and [`crate::identity`].

pub mod clickhouse;
pub mod postgres;

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use fineport_contract::export::EventExportPlan;
use fineport_contract::import::{EventBatch, Identity};
use fineport_contract::profile::{Audience, AudienceFilter, CheckedCondition, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc};
use fineport_contract::time::day_bounds_ms;
use fineport_contract::{ServiceId, Tz};

use self::clickhouse::{ClickHouse, ClickHouseOptions, EventRow};
use self::postgres::Postgres;
use crate::{
    CatalogLock, CatalogSnapshot, CatalogWatch, ExportStream, InsertSummary, RequestLogEntry, Service, Store,
    StoreError, TokenRecord,
};

/// Where the cluster is.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub clickhouse: ClickHouseOptions,
    /// `postgres://user@host:port/database`; the database must exist.
    pub postgres_url: String,
}

/// The cluster backend: [`ClickHouse`] for events, [`Postgres`] for the rest.
/// Several processes (replicas) may open the same databases: catalog
/// changes are announced and locked through PostgreSQL
/// ([`Store::watch_catalog`], [`Store::lock_catalog`]).
pub struct ClusterStore {
    events: ClickHouse,
    meta: Postgres,
    /// The registered item properties of each service, in name order: an
    /// event's `df_items_<p>` cells are rendered at import for exactly
    /// these, as the DuckDB backend stores a list per registered item
    /// property. Kept from every catalog load (whole or of one service, so
    /// also from other replicas' registrations) and every registration.
    item_properties: RwLock<HashMap<ServiceId, Vec<String>>>,
}

/// Drops the database `name` on PostgreSQL (the server of
/// `postgres_server_url`) and on every ClickHouse shard of `shards`: what
/// tests and `fineport bench` made with `postgres::create_database` and
/// [`ClusterStore::open`]. Every part is tried; the first error is returned.
pub async fn drop_databases(shards: &[String], postgres_server_url: &str, name: &str) -> Result<(), StoreError> {
    let postgres = postgres::drop_database(postgres_server_url, name).await;
    let clickhouse = clickhouse::drop_database(shards, name).await;
    postgres.and(clickhouse)
}

impl ClusterStore {
    /// Connects to both; creates their tables if missing (on every
    /// ClickHouse shard). Fails if any shard or PostgreSQL does not answer.
    pub async fn open(options: &ClusterOptions) -> Result<ClusterStore, StoreError> {
        let events = ClickHouse::open(&options.clickhouse).await?;
        let meta = Postgres::open(&options.postgres_url).await?;
        Ok(ClusterStore {
            events,
            meta,
            item_properties: RwLock::new(HashMap::new()),
        })
    }

    fn remember_items(&self, service_id: &ServiceId, taxonomy: &Taxonomy) {
        let names: Vec<String> = taxonomy.item_properties.keys().cloned().collect();
        if let Ok(mut map) = self.item_properties.write() {
            map.insert(service_id.clone(), names);
        }
    }

    fn items_of(&self, service_id: &ServiceId) -> Vec<String> {
        self.item_properties
            .read()
            .ok()
            .and_then(|map| map.get(service_id).cloned())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Store for ClusterStore {
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        let snapshot = self.meta.load_catalog().await?;
        for (service_id, taxonomy) in &snapshot.taxonomies {
            self.remember_items(service_id, taxonomy);
        }
        Ok(snapshot)
    }

    async fn load_service(&self, service_id: &ServiceId) -> Result<CatalogSnapshot, StoreError> {
        let snapshot = self.meta.load_service(service_id).await?;
        if let Some(taxonomy) = snapshot.taxonomies.get(service_id) {
            self.remember_items(service_id, taxonomy);
        }
        Ok(snapshot)
    }

    /// PostgreSQL's `LISTEN`/`NOTIFY` ([`Postgres::watch_catalog`]).
    async fn watch_catalog(&self) -> Result<Option<CatalogWatch>, StoreError> {
        self.meta.watch_catalog().await.map(Some)
    }

    /// PostgreSQL's advisory lock ([`Postgres::lock_catalog`]).
    async fn lock_catalog(&self, service_id: &ServiceId) -> Result<Option<CatalogLock>, StoreError> {
        self.meta.lock_catalog(service_id).await.map(Some)
    }

    async fn create_service(
        &self,
        service: &Service,
        tokens: &[TokenRecord],
        taxonomy: &Taxonomy,
    ) -> Result<(), StoreError> {
        self.meta.create_service(service, tokens, taxonomy).await?;
        self.remember_items(&service.service_id, taxonomy);
        Ok(())
    }

    async fn update_service(&self, service: &Service) -> Result<(), StoreError> {
        self.meta.update_service(service).await
    }

    async fn save_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        self.meta.save_tokens(tokens).await
    }

    async fn register(&self, service_id: &ServiceId, additions: &TaxonomyDoc) -> Result<(), StoreError> {
        self.meta.register(service_id, additions).await?;
        let mut names = self.items_of(service_id);
        names.extend(additions.item_properties.iter().map(|p| p.name.clone()));
        names.sort();
        names.dedup();
        if let Ok(mut map) = self.item_properties.write() {
            map.insert(service_id.clone(), names);
        }
        Ok(())
    }

    /// Identity in PostgreSQL first (a profile may so exist without the
    /// events if ClickHouse then fails, as after a client's retry), then
    /// one group-committed ClickHouse INSERT that holds every row.
    async fn insert_events(
        &self,
        service_id: &ServiceId,
        batch: EventBatch,
        received_at_ms: i64,
    ) -> Result<InsertSummary, StoreError> {
        let acknowledged = batch.events.len();
        let unified_id = self.meta.upsert_identity(service_id, batch.identity.clone()).await?;
        // Future-dated events take the correction time of their first receipt.
        let future: Vec<_> = batch
            .events
            .iter()
            .filter(|e| e.event_datetime_ms > received_at_ms)
            .map(|e| (e.event_log_id, e.correction_ms(received_at_ms), e.event_datetime_ms))
            .collect();
        let first = if future.is_empty() {
            HashMap::new()
        } else {
            self.meta.first_corrections(service_id, &future, received_at_ms).await?
        };
        let items = self.items_of(service_id);
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<EventRow> = batch
            .events
            .iter()
            // A repeat within the request: the first one is the event.
            .filter(|e| seen.insert(e.event_log_id))
            .map(|e| {
                let names = items.iter().map(String::as_str);
                let mut row = EventRow::from_import(service_id.clone(), e, received_at_ms, unified_id.clone(), names);
                if let Some(first) = first.get(&e.event_log_id) {
                    row.correction_ms = *first;
                }
                row
            })
            .collect();
        self.events.insert(rows).await?;
        Ok(InsertSummary { events: acknowledged })
    }

    async fn export_events(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
    ) -> Result<ExportStream, StoreError> {
        self.events.export(service_id, timezone, plan).await
    }

    async fn upsert_identity(&self, service_id: &ServiceId, identity: Identity) -> Result<String, StoreError> {
        self.meta.upsert_identity(service_id, identity).await
    }

    async fn delete_profile(&self, service_id: &ServiceId, external_id: &str) -> Result<bool, StoreError> {
        self.meta.delete_profile(service_id, external_id).await
    }

    async fn update_profiles(&self, service_id: &ServiceId, updates: Vec<ProfileUpdate>) -> Result<(), StoreError> {
        self.meta.update_profiles(service_id, updates).await
    }

    /// Each event condition of the audience becomes a sorted stream of
    /// users from ClickHouse, which PostgreSQL's profile stream intersects
    /// with as it goes: neither side is held in memory.
    async fn export_profiles(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
    ) -> Result<ExportStream, StoreError> {
        let mut event_users = Vec::new();
        if let Some(AudienceFilter::All(conditions)) = audience {
            for condition in conditions {
                if let CheckedCondition::Event {
                    event,
                    min_count,
                    from_date,
                    to_date,
                } = condition
                {
                    let (from_ms, _) = day_bounds_ms(*from_date, timezone);
                    let (_, to_ms) = day_bounds_ms(*to_date, timezone);
                    event_users.push(
                        self.events
                            .users_with_events(service_id, event, *min_count, from_ms, to_ms)
                            .await?,
                    );
                }
            }
        }
        self.meta
            .export_profiles(service_id, timezone, plan, audience, event_users)
            .await
    }

    async fn save_audience(&self, service_id: &ServiceId, audience: &Audience) -> Result<(), StoreError> {
        self.meta.save_audience(service_id, audience).await
    }

    async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<bool, StoreError> {
        self.meta.delete_audience(service_id, audience_id).await
    }

    async fn append_request_log(&self, entries: Vec<RequestLogEntry>) -> Result<(), StoreError> {
        self.meta.append_request_log(entries).await
    }

    async fn recent_requests(
        &self,
        service_id: &ServiceId,
        limit: usize,
        outcome: Option<&str>,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.meta.recent_requests(service_id, limit, outcome).await
    }

    async fn request_sums(
        &self,
        service_id: &ServiceId,
        query: &crate::RequestSumsQuery,
    ) -> Result<Vec<crate::BucketSums>, StoreError> {
        self.meta.request_sums(service_id, query).await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.meta.setting(key).await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.set_setting(key, value).await
    }
}
