//! Storage for fineport: the [`Store`] trait every backend implements, the
//! records it keeps, and its closed error kinds.
//!
//! A store holds everything durable: services and their settings, token
//! hashes, taxonomies, events, profiles and identifiers, and the request log.
//! The server keeps the small, hot part (services, tokens, taxonomies,
//! audiences: the catalog) in memory and writes it through; when several
//! processes share the store, [`sync`] keeps their copies in step. Events go
//! in through [`Store::insert_events`]
//! and come out, already encoded as CSV, as the [`ExportStream`] of
//! [`Store::export_events`].
//!
//! Backends live in their own module: [`duckdb`] is the embedded default;
//! [`cluster`] holds cluster mode's parts ([`cluster::postgres`]: all but
//! events on PostgreSQL). [`failing`] wraps any of them to inject failures
//! in tests. Rules every backend applies the same way are backend-neutral
//! code: [`identity`] (identity resolution over a small storage interface)
//! and [`profile_export`] (the profile CSV, the audience merge-join).

mod channel;
pub mod cluster;
pub mod duckdb;
mod error;
pub mod failing;
pub mod identity;
mod import_log;
pub mod profile_export;
mod records;
pub mod sync;
pub mod testing;

pub use error::{StoreError, StoreErrorKind};
pub use records::*;
pub use sync::{CatalogChange, CatalogLock, CatalogLockGuard, CatalogWatch};

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use fineport_contract::export::EventExportPlan;
use fineport_contract::import::{EventBatch, Identity};
use fineport_contract::profile::{Audience, AudienceFilter, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc};
use fineport_contract::{ServiceId, Tz};
use futures::Stream;

/// One item of an [`ExportStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportPart {
    /// The next piece of the CSV (header first), roughly [`CHUNK_BYTES`].
    Chunk(Bytes),
    /// The export is complete: every row has been handed on. Always the
    /// last item of a complete export, and the only sign that it is.
    End(ExportSummary),
}

/// An export's CSV as it is produced (SPEC §2.3): zero or more
/// [`ExportPart::Chunk`]s, then [`ExportPart::End`] with the summary (rows,
/// bytes) for the request log. A failure is an `Err` item, after which the
/// stream ends. A stream that ends (`None`) without `End` did **not**
/// complete: its consumer must treat it as a failure, never as a short file.
///
/// Dropping the stream stops the export: the backend interrupts its
/// running query and frees what it holds. The stream owns everything it
/// needs (`'static`), so the consumer may keep it as long as it likes.
pub type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportPart, StoreError>> + Send>>;

/// The size a store fills before handing a chunk on.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Imports a store has acknowledged (they are durable) but not yet moved
/// into the tables exports read: DuckDB's import log ([`duckdb`]'s writer).
/// Reported by [`Store::backlog`], for monitoring: a backlog that keeps
/// growing means the tables cannot take the imports (a full disk, the
/// memory limit), and a restart would replay it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Import requests (event batches) not in the tables yet.
    pub batches: u64,
    /// Their events.
    pub events: u64,
    /// Their bytes in the import log: from the first record not known to
    /// be in the tables to the log's end.
    pub bytes: u64,
}

/// Storage operations. Every method documents what must hold when it returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Everything the server keeps in memory: services, tokens, taxonomies,
    /// audiences; one consistent snapshot.
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError>;

    /// One service's part of [`Store::load_catalog`] (its settings, tokens,
    /// taxonomy and audiences; nothing of other services), one consistent
    /// snapshot; an empty snapshot when the service does not exist. The
    /// default filters the whole catalog; a store shared by several
    /// processes reads only that service.
    async fn load_service(&self, service_id: &ServiceId) -> Result<CatalogSnapshot, StoreError> {
        let mut snapshot = self.load_catalog().await?;
        snapshot.services.retain(|s| &s.service_id == service_id);
        snapshot.tokens.retain(|t| &t.service_id == service_id);
        snapshot.taxonomies.retain(|id, _| id == service_id);
        snapshot.audiences.retain(|(id, _)| id == service_id);
        Ok(snapshot)
    }

    /// Starts watching the catalog changes that processes sharing this
    /// store commit ([`CatalogWatch`]: which services changed, and
    /// [`CatalogChange::Resync`] when the watch was (re-)established).
    /// `None` (the default) for a store only one process opens, whose
    /// catalog changes only through that process. An error when the watch
    /// cannot be started; a watch that breaks later reconnects by itself.
    async fn watch_catalog(&self) -> Result<Option<CatalogWatch>, StoreError> {
        Ok(None)
    }

    /// Takes the cross-process lock on catalog changes of `service_id`
    /// (which need not exist yet), waiting while another process holds it
    /// ([`CatalogLock`]). `None` (the default) for a store only one
    /// process opens, where that process's own serialisation suffices.
    /// Errors: `Internal` when the store cannot be reached, `Query` when
    /// the lock was not granted in time (a holder that hangs).
    async fn lock_catalog(&self, service_id: &ServiceId) -> Result<Option<CatalogLock>, StoreError> {
        let _ = service_id;
        Ok(None)
    }

    /// Creates a service with its tokens and taxonomy, atomically.
    /// `Conflict` if the id exists.
    async fn create_service(
        &self,
        service: &Service,
        tokens: &[TokenRecord],
        taxonomy: &Taxonomy,
    ) -> Result<(), StoreError>;

    /// Replaces a service's settings. `NotFound` if it does not exist.
    async fn update_service(&self, service: &Service) -> Result<(), StoreError>;

    /// Inserts new tokens and updates changed ones (matched by `token_id`), atomically.
    async fn save_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError>;

    /// Registers taxonomy additions (already checked against the current
    /// taxonomy) and makes room for their values.
    async fn register(&self, service_id: &ServiceId, additions: &TaxonomyDoc) -> Result<(), StoreError>;

    /// Stores a validated batch of events, resolving its identity to a
    /// `df_unified_id` ([`identity::Staged::resolve`], a given
    /// `df_unified_id` included). Atomic; idempotent by `event_log_id`
    /// within the service; returns only once the batch is durable. An
    /// identity that contradicts the stored ones is an `Invalid` error
    /// (the Import API's 40001) and nothing is stored.
    async fn insert_events(
        &self,
        service_id: &ServiceId,
        batch: EventBatch,
        received_at_ms: i64,
    ) -> Result<InsertSummary, StoreError>;

    /// Starts an event export (SPEC §2.1, §2.3) and returns its CSV as an
    /// [`ExportStream`] (header first, rows in `(correction_datetime,
    /// event_log_id)` order). Memory stays bounded whatever the range, and
    /// the stream holds back: a backend produces at most a few chunks ahead
    /// of its consumer. No chunk comes before the first slice's query has
    /// run, so a failure to query (a `Query` error, with why in its message;
    /// `NotFound` for a service without events table) comes before any
    /// byte — either as this method's error or as the stream's first item;
    /// consumers treat both alike. Every event acknowledged by
    /// [`Store::insert_events`] before the call is in the export; when the
    /// backend cannot make some of them readable yet, the export fails with
    /// `Query` instead of leaving them out.
    async fn export_events(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
    ) -> Result<ExportStream, StoreError>;

    /// Creates or updates the profile of `identity` (resolution with merge
    /// and moves, SPEC §1; a given `df_unified_id` names the profile).
    /// Returns its `df_unified_id`. Durable on return. `Invalid` (nothing
    /// stored) for an identity conflict.
    async fn upsert_identity(&self, service_id: &ServiceId, identity: Identity) -> Result<String, StoreError>;

    /// Deletes the profile with `external_id`, its identifiers and its
    /// properties, irreversibly; events stay. `false` if there was none.
    async fn delete_profile(&self, service_id: &ServiceId, external_id: &str) -> Result<bool, StoreError>;

    /// Applies profile updates atomically: a property older (by request
    /// time) than the stored one is not overwritten. Durable on return.
    /// `Invalid` when any update's identity conflicts; then nothing of
    /// the request is stored.
    async fn update_profiles(&self, service_id: &ServiceId, updates: Vec<ProfileUpdate>) -> Result<(), StoreError>;

    /// Starts a user-profile export (one row per profile, ordered by
    /// `df_unified_id`; restricted to `audience` if given) and returns its
    /// CSV as an [`ExportStream`], with the guarantees of
    /// [`Store::export_events`].
    async fn export_profiles(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
    ) -> Result<ExportStream, StoreError>;

    /// Saves (creates or replaces) an audience definition.
    async fn save_audience(&self, service_id: &ServiceId, audience: &Audience) -> Result<(), StoreError>;

    /// Deletes an audience. `false` if there was none.
    async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<bool, StoreError>;

    /// Appends entries to the request log.
    async fn append_request_log(&self, entries: Vec<RequestLogEntry>) -> Result<(), StoreError>;

    /// The newest `limit` log entries of a service, newest first; only
    /// those whose `message` is exactly `outcome` when given (filtered
    /// before the limit).
    async fn recent_requests(
        &self,
        service_id: &ServiceId,
        limit: usize,
        outcome: Option<&str>,
    ) -> Result<Vec<RequestLogEntry>, StoreError>;

    /// Sums over the request log of a service per time bucket
    /// ([`RequestSumsQuery`]), computed by the store (never by reading every
    /// entry into memory): one [`BucketSums`] per bucket, oldest first,
    /// zeros for a bucket without entries. `Invalid` when the bounds are
    /// not strictly ascending or fewer than two.
    async fn request_sums(
        &self,
        service_id: &ServiceId,
        query: &RequestSumsQuery,
    ) -> Result<Vec<BucketSums>, StoreError>;

    /// A server-wide setting (e.g. the admin token hash).
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// The imports acknowledged but not yet in the tables ([`Backlog`]),
    /// read without waiting. `None` (the default) for a store that has
    /// every import in its tables before it answers.
    fn backlog(&self) -> Option<Backlog> {
        None
    }

    /// The memory the embedded engine holds, by its own tags, in bytes:
    /// DuckDB's `duckdb_memory()` (`BASE_TABLE` = table blocks kept in its
    /// buffer pool, a cache bounded by `--duckdb-memory-limit`;
    /// `COLUMN_DATA` = materialised query results; …).
    /// Every tag, in use or not. Empty (the default) for a store whose
    /// engines run elsewhere.
    async fn engine_memory(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }
}
