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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fineport_contract::export::EventExportPlan;
use fineport_contract::import::{EventBatch, Identity};
use fineport_contract::profile::{Audience, AudienceFilter, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::{Taxonomy, TaxonomyDoc};
use fineport_contract::{ServiceId, Tz};

use crate::{
    CatalogSnapshot, ExportSink, ExportSummary, InsertSummary, RequestLogEntry, Service, Store, StoreError, TokenRecord,
};

/// Where an export fails (event and user-profile exports alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// A `Query` error before anything is sent; the wrapped store's export
    /// does not run.
    BeforeFirstByte,
    /// A `Query` error once at least this many bytes have been handed to
    /// the sink (so the response has certainly started): the wrapped
    /// store is told the client left and stops as it would then.
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

    /// Runs `export` (the wrapped store's export into the sink it is given)
    /// with the injected failure, if any.
    fn export_with(
        &self,
        sink: &mut dyn ExportSink,
        export: impl FnOnce(&mut dyn ExportSink) -> Result<ExportSummary, StoreError>,
    ) -> Result<ExportSummary, StoreError> {
        let failpoint = *self.export.lock().unwrap_or_else(|p| p.into_inner());
        match failpoint {
            None => export(sink),
            Some(FailPoint::BeforeFirstByte) => Err(StoreError::query("injected failure before the first byte")),
            Some(FailPoint::InternalBeforeFirstByte) => Err(StoreError::internal("injected internal error")),
            Some(FailPoint::AfterBytes(limit)) => {
                let mut failing = FailingSink {
                    inner: sink,
                    limit,
                    sent: 0,
                    tripped: false,
                };
                let result = export(&mut failing);
                if failing.tripped {
                    // Whatever the wrapped store made of the refused send.
                    return Err(StoreError::query(format!(
                        "injected failure after {} bytes",
                        failing.sent
                    )));
                }
                result
            }
        }
    }
}

/// Hands chunks on until `limit` bytes have gone, then refuses the next
/// send as a departed client would, so the wrapped store stops.
struct FailingSink<'a> {
    inner: &'a mut dyn ExportSink,
    limit: u64,
    /// Bytes the inner sink accepted.
    sent: u64,
    /// The limit was reached (not the client leaving).
    tripped: bool,
}

impl ExportSink for FailingSink<'_> {
    fn send(&mut self, chunk: Vec<u8>) -> bool {
        if self.tripped {
            return false;
        }
        let len = chunk.len() as u64;
        if !self.inner.send(chunk) {
            return false;
        }
        self.sent += len;
        if self.sent >= self.limit {
            self.tripped = true;
            return false;
        }
        true
    }

    fn set_interrupt(&mut self, interrupt: Box<dyn Fn() + Send + Sync>) {
        self.inner.set_interrupt(interrupt);
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for FailingStore<S> {
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        self.inner.load_catalog().await
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

    fn export_events(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
        sink: &mut dyn ExportSink,
    ) -> Result<ExportSummary, StoreError> {
        self.export_with(sink, |sink| self.inner.export_events(service_id, timezone, plan, sink))
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

    fn export_profiles(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
        sink: &mut dyn ExportSink,
    ) -> Result<ExportSummary, StoreError> {
        self.export_with(sink, |sink| {
            self.inner.export_profiles(service_id, timezone, plan, audience, sink)
        })
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

    async fn recent_requests(&self, service_id: &ServiceId, limit: usize) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.inner.recent_requests(service_id, limit).await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(key).await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_setting(key, value).await
    }
}

#[cfg(test)]
mod tests {
    //! The wrapper over the real DuckDB store, on the user-profile export
    //! (the server tests cover the event export and event imports).

    use super::*;
    use crate::duckdb::DuckDbStore;
    use crate::{Limits, StoreErrorKind};

    /// Keeps what it is sent; `open: false` plays a client that left.
    struct Recorder {
        chunks: Vec<Vec<u8>>,
        open: bool,
    }

    impl ExportSink for Recorder {
        fn send(&mut self, chunk: Vec<u8>) -> bool {
            self.chunks.push(chunk);
            self.open
        }

        fn set_interrupt(&mut self, _: Box<dyn Fn() + Send + Sync>) {}
    }

    fn recorder() -> Recorder {
        Recorder {
            chunks: Vec::new(),
            open: true,
        }
    }

    async fn store_with_service() -> (FailingStore<DuckDbStore>, ServiceId) {
        let store = FailingStore::new(Arc::new(DuckDbStore::open_in_memory().expect("in-memory store")));
        let service_id = ServiceId::parse("shop").expect("service id");
        let service = Service {
            service_id: service_id.clone(),
            name: "shop".into(),
            timezone: "UTC".into(),
            export_lookback_days: 0,
            auto_register: false,
            limits: Limits::default(),
            created_at: chrono::Utc::now(),
        };
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
    fn exported_rows(store: &FailingStore<DuckDbStore>, service_id: &ServiceId) -> Vec<String> {
        let mut sink = recorder();
        export(store, service_id, &mut sink).expect("export");
        let text = String::from_utf8(sink.chunks.concat()).expect("UTF-8");
        text.lines().skip(1).map(str::to_owned).collect()
    }

    /// A user-profile export of every profile with its external_id.
    fn export(
        store: &FailingStore<DuckDbStore>,
        service_id: &ServiceId,
        sink: &mut Recorder,
    ) -> Result<ExportSummary, StoreError> {
        let plan = ProfileExportPlan {
            with_external_id: true,
            properties: Vec::new(),
            audience: None,
        };
        store.export_profiles(service_id, Tz::UTC, &plan, None, sink)
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
        assert!(tokio::task::block_in_place(|| exported_rows(&store, &service_id)).is_empty());

        store.inject_write_failure(false);
        store.upsert_identity(&service_id, user("u1")).await.expect("stored");
        let rows = tokio::task::block_in_place(|| exported_rows(&store, &service_id));
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
        tokio::task::block_in_place(|| {
            // Before the first byte: nothing reaches the sink.
            store.inject_export_failure(Some(FailPoint::BeforeFirstByte));
            let mut sink = recorder();
            let e = export(&store, &service_id, &mut sink).expect_err("injected");
            assert_eq!(
                (e.kind, e.message.as_str()),
                (StoreErrorKind::Query, "injected failure before the first byte")
            );
            assert!(sink.chunks.is_empty());

            store.inject_export_failure(Some(FailPoint::InternalBeforeFirstByte));
            let e = export(&store, &service_id, &mut sink).expect_err("injected");
            assert_eq!(e.kind, StoreErrorKind::Internal);
            assert!(sink.chunks.is_empty());

            // After a byte: the chunk is handed on, then the export fails.
            store.inject_export_failure(Some(FailPoint::AfterBytes(1)));
            let e = export(&store, &service_id, &mut sink).expect_err("injected");
            assert_eq!(e.kind, StoreErrorKind::Query, "{e}");
            assert_eq!(sink.chunks.len(), 1);

            // A client that leaves first is still a client that left.
            store.inject_export_failure(Some(FailPoint::AfterBytes(1 << 20)));
            let mut gone = Recorder {
                chunks: Vec::new(),
                open: false,
            };
            let e = export(&store, &service_id, &mut gone).expect_err("client left");
            assert_eq!(e.kind, StoreErrorKind::Cancelled);

            store.inject_export_failure(None);
            assert_eq!(exported_rows(&store, &service_id).len(), 3);
        });
    }
}
