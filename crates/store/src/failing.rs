//! Failure injection for tests: [`FailingStore`] wraps any [`Store`] and
//! makes its exports or writes fail on demand.
//!
//! The failures the server must turn into DFINERY's answers (SPEC §2.3: a
//! 500 before the first byte, a broken transfer after it; Import API 50000
//! storing nothing) are hard to provoke in a real backend. Rather than each
//! backend carrying its own hooks, the wrapper sits between the server and
//! the store, so the same tests run over DuckDB today and over any later
//! backend (e.g. ClickHouse) without a line of backend code — a proxy in
//! the manner of quickwit's `TimeoutAndRetryStorage`. It delegates
//! every method to the wrapped store unless a failure is switched on; it is
//! reachable only through the Rust API, never over HTTP.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fineport_contract::export::EventExportPlan;
use fineport_contract::import::{EventBatch, Identity};
use fineport_contract::profile::{Audience, AudienceFilter, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc};
use fineport_contract::{ServiceId, Tz};
use futures::{stream, StreamExt};

use crate::{
    Backlog, BucketSums, CatalogLock, CatalogSnapshot, CatalogWatch, ExportPart, ExportStream, InsertSummary,
    RequestLogEntry, RequestSumsQuery, Service, Store, StoreError, TokenRecord,
};

/// Where an export fails (event and user-profile exports alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// A `Query` error before anything is sent; the wrapped store's export
    /// does not run.
    BeforeFirstByte,
    /// A `Query` error once the wrapped store's stream has handed on at
    /// least this many bytes (so the response has certainly started): the
    /// wrapped stream is dropped, so its export stops as it would when a
    /// client leaves, and the error takes its place.
    AfterBytes(u64),
    /// An `Internal` error before anything is sent; the wrapped store's
    /// export does not run.
    InternalBeforeFirstByte,
}

/// A [`Store`] that delegates to `S` except where a failure is injected:
/// exports at a [`FailPoint`], and writes of imported data
/// ([`Store::insert_events`], [`Store::upsert_identity`],
/// [`Store::update_profiles`]) with an `Internal` error that stores nothing.
/// `S` may be unsized, so `FailingStore<dyn Store>` wraps whatever backend
/// the configuration chose.
pub struct FailingStore<S: Store + ?Sized> {
    inner: Arc<S>,
    export: Mutex<Option<FailPoint>>,
    writes: AtomicBool,
}

impl<S: Store + ?Sized> FailingStore<S> {
    /// Wraps `inner` with no failure switched on.
    pub fn new(inner: Arc<S>) -> Self {
        FailingStore {
            inner,
            export: Mutex::new(None),
            writes: AtomicBool::new(false),
        }
    }

    /// The wrapped store, for what only the backend offers.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Makes every following export fail at `failpoint` (`None` to stop).
    pub fn inject_export_failure(&self, failpoint: Option<FailPoint>) {
        *self.export.lock().unwrap_or_else(|p| p.into_inner()) = failpoint;
    }

    /// Makes every following import (events, identities, user profiles)
    /// fail before it reaches the wrapped store (`false` to stop).
    pub fn inject_write_failure(&self, fail: bool) {
        self.writes.store(fail, Ordering::SeqCst);
    }

    fn check_writes(&self) -> Result<(), StoreError> {
        if self.writes.load(Ordering::SeqCst) {
            return Err(StoreError::internal("injected write failure"));
        }
        Ok(())
    }

    /// Starts `export` (the wrapped store's export) with the injected
    /// failure, if any.
    async fn export_with(
        &self,
        export: impl Future<Output = Result<ExportStream, StoreError>> + Send,
    ) -> Result<ExportStream, StoreError> {
        let failpoint = *self.export.lock().unwrap_or_else(|p| p.into_inner());
        let fail = |e: StoreError| -> Result<ExportStream, StoreError> { Ok(Box::pin(stream::once(async { Err(e) }))) };
        match failpoint {
            None => export.await,
            Some(FailPoint::BeforeFirstByte) => fail(StoreError::query("injected failure before the first byte")),
            Some(FailPoint::InternalBeforeFirstByte) => fail(StoreError::internal("injected internal error")),
            Some(FailPoint::AfterBytes(limit)) => Ok(fail_after(export.await?, limit)),
        }
    }
}

/// Where [`fail_after`] is.
enum AfterBytes {
    /// Passing the wrapped stream on, with the bytes it has handed on.
    Passing(ExportStream, u64),
    /// The limit was reached: the wrapped stream has been dropped (which
    /// stops its export, as a departed client would); the error is next.
    Tripped(u64),
    Over,
}

/// Passes `inner` on until `limit` bytes have gone, then drops it and
/// fails with a `Query` error. An end or an error of `inner` before that
/// is passed on as it is.
fn fail_after(inner: ExportStream, limit: u64) -> ExportStream {
    Box::pin(stream::unfold(AfterBytes::Passing(inner, 0), move |state| async move {
        match state {
            AfterBytes::Passing(mut inner, sent) => {
                let item = inner.next().await?;
                let next = match &item {
                    Ok(ExportPart::Chunk(chunk)) => {
                        let sent = sent + chunk.len() as u64;
                        if sent >= limit {
                            AfterBytes::Tripped(sent)
                        } else {
                            AfterBytes::Passing(inner, sent)
                        }
                    }
                    Ok(ExportPart::End(_)) | Err(_) => AfterBytes::Passing(inner, sent),
                };
                Some((item, next))
            }
            AfterBytes::Tripped(sent) => Some((
                Err(StoreError::query(format!("injected failure after {sent} bytes"))),
                AfterBytes::Over,
            )),
            AfterBytes::Over => None,
        }
    }))
}

#[async_trait]
impl<S: Store + ?Sized> Store for FailingStore<S> {
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        self.inner.load_catalog().await
    }

    async fn load_service(&self, service_id: &ServiceId) -> Result<CatalogSnapshot, StoreError> {
        self.inner.load_service(service_id).await
    }

    async fn watch_catalog(&self) -> Result<Option<CatalogWatch>, StoreError> {
        self.inner.watch_catalog().await
    }

    async fn lock_catalog(&self, service_id: &ServiceId) -> Result<Option<CatalogLock>, StoreError> {
        self.inner.lock_catalog(service_id).await
    }

    async fn create_service(
        &self,
        service: &Service,
        tokens: &[TokenRecord],
        taxonomy: &Taxonomy,
    ) -> Result<(), StoreError> {
        self.inner.create_service(service, tokens, taxonomy).await
    }

    async fn update_service(&self, service: &Service) -> Result<(), StoreError> {
        self.inner.update_service(service).await
    }

    async fn save_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        self.inner.save_tokens(tokens).await
    }

    async fn register(&self, service_id: &ServiceId, additions: &TaxonomyDoc) -> Result<(), StoreError> {
        self.inner.register(service_id, additions).await
    }

    async fn insert_events(
        &self,
        service_id: &ServiceId,
        batch: EventBatch,
        received_at_ms: i64,
    ) -> Result<InsertSummary, StoreError> {
        self.check_writes()?;
        self.inner.insert_events(service_id, batch, received_at_ms).await
    }

    async fn export_events(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
    ) -> Result<ExportStream, StoreError> {
        self.export_with(self.inner.export_events(service_id, timezone, plan))
            .await
    }

    async fn upsert_identity(&self, service_id: &ServiceId, identity: Identity) -> Result<String, StoreError> {
        self.check_writes()?;
        self.inner.upsert_identity(service_id, identity).await
    }

    async fn delete_profile(&self, service_id: &ServiceId, external_id: &str) -> Result<bool, StoreError> {
        self.inner.delete_profile(service_id, external_id).await
    }

    async fn update_profiles(&self, service_id: &ServiceId, updates: Vec<ProfileUpdate>) -> Result<(), StoreError> {
        self.check_writes()?;
        self.inner.update_profiles(service_id, updates).await
    }

    async fn export_profiles(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
    ) -> Result<ExportStream, StoreError> {
        self.export_with(self.inner.export_profiles(service_id, timezone, plan, audience))
            .await
    }

    async fn save_audience(&self, service_id: &ServiceId, audience: &Audience) -> Result<(), StoreError> {
        self.inner.save_audience(service_id, audience).await
    }

    async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<bool, StoreError> {
        self.inner.delete_audience(service_id, audience_id).await
    }

    async fn append_request_log(&self, entries: Vec<RequestLogEntry>) -> Result<(), StoreError> {
        self.inner.append_request_log(entries).await
    }

    async fn recent_requests(
        &self,
        service_id: &ServiceId,
        limit: usize,
        outcome: Option<&str>,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.inner.recent_requests(service_id, limit, outcome).await
    }

    async fn request_sums(
        &self,
        service_id: &ServiceId,
        query: &RequestSumsQuery,
    ) -> Result<Vec<BucketSums>, StoreError> {
        self.inner.request_sums(service_id, query).await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(key).await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_setting(key, value).await
    }

    fn backlog(&self) -> Option<Backlog> {
        self.inner.backlog()
    }

    async fn engine_memory(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.engine_memory().await
    }
}

#[cfg(test)]
mod tests {
    //! The wrapper over the real DuckDB store, on the user-profile export
    //! (the server tests cover the event export and event imports).

    use super::*;
    use crate::duckdb::DuckDbStore;
    use crate::{ExportSummary, StoreErrorKind};
    use bytes::Bytes;

    /// What an export handed on: its chunks, and how it ended (`None`:
    /// the stream ended without `End` nor an error).
    struct Received {
        chunks: Vec<Bytes>,
        end: Option<Result<ExportSummary, StoreError>>,
    }

    /// Reads `stream` to its end.
    async fn receive(mut stream: ExportStream) -> Received {
        let mut received = Received {
            chunks: Vec::new(),
            end: None,
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(ExportPart::Chunk(chunk)) => received.chunks.push(chunk),
                Ok(ExportPart::End(summary)) => received.end = Some(Ok(summary)),
                Err(e) => received.end = Some(Err(e)),
            }
        }
        received
    }

    async fn store_with_service() -> (FailingStore<DuckDbStore>, ServiceId) {
        let store = FailingStore::new(Arc::new(DuckDbStore::open_in_memory().expect("in-memory store")));
        let service_id = ServiceId::parse("shop").expect("service id");
        let service = crate::records::utc_test_service(&service_id);
        store
            .create_service(&service, &[], &Taxonomy::standard())
            .await
            .expect("create service");
        (store, service_id)
    }

    fn user(external_id: &str) -> Identity {
        Identity {
            external_id: Some(external_id.into()),
            ..Default::default()
        }
    }

    /// The profile export's CSV, rows only (no failure injected).
    async fn exported_rows(store: &FailingStore<DuckDbStore>, service_id: &ServiceId) -> Vec<String> {
        let received = export(store, service_id).await;
        received.end.expect("ended").expect("export");
        let text = String::from_utf8(received.chunks.concat()).expect("UTF-8");
        text.lines().skip(1).map(str::to_owned).collect()
    }

    /// A user-profile export of every profile with its external_id, read
    /// to its end.
    async fn export(store: &FailingStore<DuckDbStore>, service_id: &ServiceId) -> Received {
        receive(start_export(store, service_id).await).await
    }

    async fn start_export(store: &FailingStore<DuckDbStore>, service_id: &ServiceId) -> ExportStream {
        let plan = ProfileExportPlan {
            with_external_id: true,
            properties: Vec::new(),
            audience: None,
        };
        store
            .export_profiles(service_id, Tz::UTC, &plan, None)
            .await
            .expect("started")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn injected_write_failures_store_nothing_until_switched_off() {
        let (store, service_id) = store_with_service().await;
        store.inject_write_failure(true);
        let e = store
            .upsert_identity(&service_id, user("u1"))
            .await
            .expect_err("injected");
        assert_eq!(e.kind, StoreErrorKind::Internal);
        let e = store
            .update_profiles(&service_id, Vec::new())
            .await
            .expect_err("injected");
        assert_eq!(e.kind, StoreErrorKind::Internal);
        assert!(exported_rows(&store, &service_id).await.is_empty());

        store.inject_write_failure(false);
        store.upsert_identity(&service_id, user("u1")).await.expect("stored");
        let rows = exported_rows(&store, &service_id).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_fail_at_the_injected_point() {
        let (store, service_id) = store_with_service().await;
        for n in 0..3 {
            store
                .upsert_identity(&service_id, user(&format!("u{n}")))
                .await
                .expect("stored");
        }
        // Before the first byte: nothing is handed on.
        store.inject_export_failure(Some(FailPoint::BeforeFirstByte));
        let received = export(&store, &service_id).await;
        let e = received.end.expect("ended").expect_err("injected");
        assert_eq!(
            (e.kind, e.message.as_str()),
            (StoreErrorKind::Query, "injected failure before the first byte")
        );
        assert!(received.chunks.is_empty());

        store.inject_export_failure(Some(FailPoint::InternalBeforeFirstByte));
        let received = export(&store, &service_id).await;
        let e = received.end.expect("ended").expect_err("injected");
        assert_eq!(e.kind, StoreErrorKind::Internal);
        assert!(received.chunks.is_empty());

        // After a byte: the chunk is handed on, then the export fails.
        store.inject_export_failure(Some(FailPoint::AfterBytes(1)));
        let received = export(&store, &service_id).await;
        let e = received.end.expect("ended").expect_err("injected");
        assert_eq!(e.kind, StoreErrorKind::Query, "{e}");
        assert_eq!(received.chunks.len(), 1);

        // A consumer that leaves first just drops the stream, which stops
        // the wrapped export; the next export runs whole.
        store.inject_export_failure(Some(FailPoint::AfterBytes(1 << 20)));
        let mut stream = start_export(&store, &service_id).await;
        assert!(matches!(stream.next().await, Some(Ok(ExportPart::Chunk(_)))));
        drop(stream);

        store.inject_export_failure(None);
        assert_eq!(exported_rows(&store, &service_id).await.len(), 3);
    }
}
