//! [`MeteredStore`]: times every call to a [`Store`] into
//! `fineport_store_operation_seconds{operation, result}`.
//!
//! A wrapper rather than timing code in each backend, as
//! [`FailingStore`](fineport_store::failing::FailingStore) injects failures:
//! [`build_state`](crate::build_state) puts it around whatever store the
//! server is given, so DuckDB and the cluster are measured alike, by the
//! same code, and a later backend is measured without a line of its own.
//! An export is timed from the call until its stream's first item (the
//! first slice's query: what a client waits for before the first byte);
//! its whole duration is the request's, in `fineport_request_duration_seconds`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use fineport_contract::export::EventExportPlan;
use fineport_contract::import::{EventBatch, Identity};
use fineport_contract::profile::{Audience, AudienceFilter, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc};
use fineport_contract::{ServiceId, Tz};
use fineport_store::{
    Backlog, CatalogLock, CatalogSnapshot, CatalogWatch, ExportPart, ExportStream, InsertSummary, RequestLogEntry,
    Service, Store, StoreError, TokenRecord,
};
use futures::{Future, Stream};

use super::Metrics;

/// A [`Store`] that delegates every call to `inner` and times it.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    /// Runs `call` and records how long it took under `operation`.
    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .store_operation(operation, result.is_ok(), started.elapsed());
        result
    }

    /// Starts an export and times it until its stream's first item.
    async fn export(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<ExportStream, StoreError>>,
    ) -> Result<ExportStream, StoreError> {
        let started = Instant::now();
        match call.await {
            Ok(inner) => Ok(Box::pin(FirstItem {
                inner,
                pending: Some((operation, started, self.metrics.clone())),
            })),
            Err(e) => {
                self.metrics.store_operation(operation, false, started.elapsed());
                Err(e)
            }
        }
    }
}

/// An export stream that records its time to the first item. A stream
/// dropped before one (the client left) records nothing.
struct FirstItem {
    inner: ExportStream,
    pending: Option<(&'static str, Instant, Arc<Metrics>)>,
}

impl Stream for FirstItem {
    type Item = Result<ExportPart, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(item) = &item {
            if let Some((operation, started, metrics)) = self.pending.take() {
                let ok = matches!(item, Some(Ok(_)));
                metrics.store_operation(operation, ok, started.elapsed());
            }
        }
        item
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        self.timed("load_catalog", self.inner.load_catalog()).await
    }

    async fn load_service(&self, service_id: &ServiceId) -> Result<CatalogSnapshot, StoreError> {
        self.timed("load_service", self.inner.load_service(service_id)).await
    }

    async fn watch_catalog(&self) -> Result<Option<CatalogWatch>, StoreError> {
        self.timed("watch_catalog", self.inner.watch_catalog()).await
    }

    async fn lock_catalog(&self, service_id: &ServiceId) -> Result<Option<CatalogLock>, StoreError> {
        self.timed("lock_catalog", self.inner.lock_catalog(service_id)).await
    }

    async fn create_service(
        &self,
        service: &Service,
        tokens: &[TokenRecord],
        taxonomy: &Taxonomy,
    ) -> Result<(), StoreError> {
        self.timed("create_service", self.inner.create_service(service, tokens, taxonomy))
            .await
    }

    async fn update_service(&self, service: &Service) -> Result<(), StoreError> {
        self.timed("update_service", self.inner.update_service(service)).await
    }

    async fn save_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        self.timed("save_tokens", self.inner.save_tokens(tokens)).await
    }

    async fn register(&self, service_id: &ServiceId, additions: &TaxonomyDoc) -> Result<(), StoreError> {
        self.timed("register", self.inner.register(service_id, additions)).await
    }

    async fn insert_events(
        &self,
        service_id: &ServiceId,
        batch: EventBatch,
        received_at_ms: i64,
    ) -> Result<InsertSummary, StoreError> {
        self.timed(
            "insert_events",
            self.inner.insert_events(service_id, batch, received_at_ms),
        )
        .await
    }

    async fn export_events(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
    ) -> Result<ExportStream, StoreError> {
        self.export("export_events", self.inner.export_events(service_id, timezone, plan))
            .await
    }

    async fn upsert_identity(&self, service_id: &ServiceId, identity: Identity) -> Result<String, StoreError> {
        self.timed("upsert_identity", self.inner.upsert_identity(service_id, identity))
            .await
    }

    async fn delete_profile(&self, service_id: &ServiceId, external_id: &str) -> Result<bool, StoreError> {
        self.timed("delete_profile", self.inner.delete_profile(service_id, external_id))
            .await
    }

    async fn update_profiles(&self, service_id: &ServiceId, updates: Vec<ProfileUpdate>) -> Result<(), StoreError> {
        self.timed("update_profiles", self.inner.update_profiles(service_id, updates))
            .await
    }

    async fn export_profiles(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
    ) -> Result<ExportStream, StoreError> {
        self.export(
            "export_profiles",
            self.inner.export_profiles(service_id, timezone, plan, audience),
        )
        .await
    }

    async fn save_audience(&self, service_id: &ServiceId, audience: &Audience) -> Result<(), StoreError> {
        self.timed("save_audience", self.inner.save_audience(service_id, audience))
            .await
    }

    async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<bool, StoreError> {
        self.timed("delete_audience", self.inner.delete_audience(service_id, audience_id))
            .await
    }

    async fn append_request_log(&self, entries: Vec<RequestLogEntry>) -> Result<(), StoreError> {
        self.timed("append_request_log", self.inner.append_request_log(entries))
            .await
    }

    async fn request_sums(
        &self,
        service_id: &ServiceId,
        query: &fineport_store::RequestSumsQuery,
    ) -> Result<Vec<fineport_store::BucketSums>, StoreError> {
        self.timed("request_sums", self.inner.request_sums(service_id, query))
            .await
    }

    async fn recent_requests(
        &self,
        service_id: &ServiceId,
        limit: usize,
        outcome: Option<&str>,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.timed(
            "recent_requests",
            self.inner.recent_requests(service_id, limit, outcome),
        )
        .await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.timed("setting", self.inner.setting(key)).await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.timed("set_setting", self.inner.set_setting(key, value)).await
    }

    fn backlog(&self) -> Option<Backlog> {
        self.inner.backlog()
    }

    async fn engine_memory(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.engine_memory().await
    }
}
