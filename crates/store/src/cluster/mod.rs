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
mod mover;
pub mod postgres;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use fineport_contract::export::EventExportPlan;
use fineport_contract::import::{EventBatch, Identity};
use fineport_contract::profile::{Audience, AudienceFilter, CheckedCondition, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc};
use fineport_contract::time::day_bounds_ms;
use fineport_contract::{ServiceId, Tz};

pub use self::mover::ImportLogOptions;

use self::clickhouse::{Backing, ClickHouse, ClickHouseOptions, ImportRows};
use self::mover::{ImportLogSide, Targets};
use self::postgres::Postgres;
use crate::import_log::LoggedBatch;
use crate::{
    Backlog, CatalogLock, CatalogSnapshot, CatalogWatch, ExportStream, InsertSummary, RequestLogEntry, Service, Store,
    StoreError, TokenRecord,
};

/// Where the cluster is.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub clickhouse: ClickHouseOptions,
    /// `postgres://user@host:port/database`; the database must exist.
    pub postgres_url: String,
    /// This replica's import log (`--cluster-import-log`): imports are then
    /// answered once synced to it and stored in ClickHouse behind the
    /// answers (`mover.rs`). `None` (the default): each import waits for
    /// its synchronous INSERT.
    pub import_log: Option<ImportLogOptions>,
    /// How long a read waits for other replicas to store the events they
    /// acknowledged from their logs before it fails (default 30 s).
    pub flush_wait: Duration,
}

impl ClusterOptions {
    /// Options for these shards and this PostgreSQL database, without an
    /// import log.
    pub fn new(clickhouse: ClickHouseOptions, postgres_url: String) -> ClusterOptions {
        ClusterOptions {
            clickhouse,
            postgres_url,
            import_log: None,
            flush_wait: Duration::from_secs(30),
        }
    }
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
    item_properties: Arc<RwLock<HashMap<ServiceId, Vec<String>>>>,
    /// This replica's import log, when it has one.
    log: Option<ImportLogSide>,
    flush_wait: Duration,
    /// Whether the last look at `import_logs` found any replica with a log.
    import_logs_seen: std::sync::atomic::AtomicBool,
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
        let item_properties = Arc::new(RwLock::new(HashMap::new()));
        let log = match &options.import_log {
            Some(log) => {
                // The mover renders items as the catalog has them: load it first.
                for (service_id, taxonomy) in &meta.load_catalog().await?.taxonomies {
                    let names = taxonomy.item_properties.keys().cloned().collect();
                    if let Ok(mut map) = item_properties.write() {
                        map.insert(service_id.clone(), names);
                    }
                }
                let targets = Targets {
                    clickhouse: options.clickhouse.clone(),
                    postgres_url: options.postgres_url.clone(),
                    items: item_properties.clone(),
                };
                Some(ImportLogSide::open(log, targets).await?)
            }
            None => None,
        };
        let import_logs_seen = meta.any_import_log().await?;
        Ok(ClusterStore {
            events,
            meta,
            item_properties,
            log,
            flush_wait: options.flush_wait,
            import_logs_seen: std::sync::atomic::AtomicBool::new(import_logs_seen),
        })
    }

    /// What a read (and a profile write, which must follow the imports
    /// before it) does first: every event acknowledged before it, by this
    /// replica or any other with an import log, is stored in ClickHouse
    /// (and its identity in PostgreSQL) when this returns. Errors: `Query`
    /// when this replica's batches of `service_id` cannot be stored yet, or
    /// another replica that holds some did not store them within
    /// [`ClusterOptions::flush_wait`] (it is down, or cannot reach the
    /// cluster): a read then fails rather than answer without them.
    async fn flush(&self, service_id: &ServiceId) -> Result<(), StoreError> {
        let me = match &self.log {
            Some(log) => {
                log.sync(service_id).await?;
                log.replica_id.as_str()
            }
            None => "",
        };
        let request = match self.meta.request_flush(me).await {
            Ok((any, request)) => {
                self.import_logs_seen.store(any, std::sync::atomic::Ordering::Relaxed);
                request
            }
            // PostgreSQL is out of reach: a deployment that has never had an
            // import log has nothing to wait for, so its event exports go
            // on; with logs, what they hold cannot be known, and the read fails.
            Err(e) if self.log.is_none() && !self.import_logs_seen.load(std::sync::atomic::Ordering::Relaxed) => {
                tracing::debug!(error = %e, "no import logs known: reading without asking PostgreSQL");
                None
            }
            Err(e) => return Err(e),
        };
        let Some(request) = request else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.flush_wait;
        loop {
            let waiting = self.meta.unflushed(request, me).await?;
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::query(format!(
                    "replica {} holds acknowledged events not stored in ClickHouse yet and did not store \
                     them within {} s (a replica that is down stores them when it starts again)",
                    waiting.join(", "),
                    self.flush_wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

    /// With an import log: answered once synced to it (`mover.rs`), unless
    /// the identity may conflict (a `df_unified_id` with an external_id),
    /// which must be refused before anything is acknowledged. Otherwise,
    /// or then: [`store_batches`] of this one batch, answered once its
    /// synchronous INSERT returned — after every import acknowledged
    /// before it is stored ([`ClusterStore::flush`]: a conflict depends on
    /// the profiles earlier imports made, as on DuckDB, which moves its
    /// log before such a batch).
    async fn insert_events(
        &self,
        service_id: &ServiceId,
        batch: EventBatch,
        received_at_ms: i64,
    ) -> Result<InsertSummary, StoreError> {
        if crate::identity::may_conflict(&batch.identity) {
            self.flush(service_id).await?;
        } else if let Some(log) = &self.log {
            return log.insert(service_id, batch, received_at_ms).await;
        }
        let acknowledged = batch.events.len();
        let items = HashMap::from([(service_id.clone(), self.items_of(service_id))]);
        let batch = LoggedBatch {
            service_id: service_id.clone(),
            received_at_ms,
            batch,
        };
        store_batches(&self.events, &self.meta, &items, std::slice::from_ref(&batch)).await?;
        Ok(InsertSummary { events: acknowledged })
    }

    async fn export_events(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
    ) -> Result<ExportStream, StoreError> {
        self.flush(service_id).await?;
        self.events.export(service_id, timezone, plan).await
    }

    async fn upsert_identity(&self, service_id: &ServiceId, identity: Identity) -> Result<String, StoreError> {
        self.flush(service_id).await?;
        self.meta.upsert_identity(service_id, identity).await
    }

    async fn delete_profile(&self, service_id: &ServiceId, external_id: &str) -> Result<bool, StoreError> {
        self.flush(service_id).await?;
        self.meta.delete_profile(service_id, external_id).await
    }

    async fn update_profiles(&self, service_id: &ServiceId, updates: Vec<ProfileUpdate>) -> Result<(), StoreError> {
        self.flush(service_id).await?;
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
        self.flush(service_id).await?;
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

    fn backlog(&self) -> Option<Backlog> {
        self.log.as_ref().map(ImportLogSide::backlog)
    }
}

/// Stores validated batches (in receipt order): each service's identities
/// resolved in one PostgreSQL transaction, the first correction time of
/// future-dated events from PostgreSQL's memo, the rows rendered by the
/// contract's `cells.rs` (`items`: each service's registered item
/// properties), then one group-committed ClickHouse INSERT holding every
/// row, through the Distributed table so that a batch is stored whole or
/// not at all ([`Backing::Answer`]); done when that INSERT returned. A
/// repeated `event_log_id` within a batch is stored once (the first). The identities must not conflict
/// ([`crate::identity::may_conflict`] ones are resolved alone, by the
/// synchronous path, whose conflict is the request's 40001). A profile may
/// exist without its events if ClickHouse then fails, as after a client's
/// retry; storing a batch again is harmless.
pub(crate) async fn store_batches(
    events: &ClickHouse,
    meta: &Postgres,
    items: &HashMap<ServiceId, Vec<String>>,
    batches: &[LoggedBatch],
) -> Result<(), StoreError> {
    let rows = prepare_rows(events, meta, items, batches, Backing::Answer).await?;
    events.insert_import_rows(rows).await
}

/// The first half of [`store_batches`]: everything before the INSERT
/// (identities and first corrections are then durable in PostgreSQL),
/// answering the encoded rows, for the writer `backing` names.
pub(crate) async fn prepare_rows(
    events: &ClickHouse,
    meta: &Postgres,
    items: &HashMap<ServiceId, Vec<String>>,
    batches: &[LoggedBatch],
    backing: Backing,
) -> Result<ImportRows, StoreError> {
    let mut by_service: HashMap<&ServiceId, Vec<usize>> = HashMap::new();
    for (i, logged) in batches.iter().enumerate() {
        by_service.entry(&logged.service_id).or_default().push(i);
    }
    let mut unified_ids = vec![String::new(); batches.len()];
    for (service_id, indexes) in by_service {
        let identities: Vec<&Identity> = indexes.iter().map(|&i| &batches[i].batch.identity).collect();
        let resolved = meta.upsert_identities(service_id, &identities).await?;
        for (i, unified_id) in indexes.into_iter().zip(resolved) {
            unified_ids[i] = unified_id;
        }
    }
    let mut rows = events.import_rows(backing);
    for (logged, unified_id) in batches.iter().zip(unified_ids) {
        let (service_id, received_at_ms) = (&logged.service_id, logged.received_at_ms);
        // Future-dated events take the correction time of their first receipt.
        let future: Vec<_> = logged
            .batch
            .events
            .iter()
            .filter(|e| e.event_datetime_ms > received_at_ms)
            .map(|e| (e.event_log_id, e.correction_ms(received_at_ms), e.event_datetime_ms))
            .collect();
        let first = if future.is_empty() {
            HashMap::new()
        } else {
            meta.first_corrections(service_id, &future, received_at_ms).await?
        };
        let names = items.get(service_id).map(Vec::as_slice).unwrap_or_default();
        let mut seen = HashSet::new();
        // A repeat within the request: the first one is the event.
        let unique: Vec<_> = logged
            .batch
            .events
            .iter()
            .filter(|e| seen.insert(e.event_log_id))
            .collect();
        rows.push_request(service_id, &unique, received_at_ms, &unified_id, names, |event| {
            first
                .get(&event.event_log_id)
                .copied()
                .unwrap_or_else(|| event.correction_ms(received_at_ms))
        });
    }
    Ok(rows)
}
