//! The request log (SPEC §5.2): one entry per API request, buffered in
//! memory and written to the store in batches, so logging never costs a
//! request its own commit. Reading the log flushes it first.
//!
//! [`RequestLog::record`] is where an Export or Import API request's
//! outcome lands, once known (an export's when its body ends): besides the
//! entry, it counts the request in the [`Metrics`] and writes the
//! request's line to the process log. That line is an event in the
//! request's tracing span ([`request_span`], made by tower-http's trace
//! layer for every request), whose fields say which service, route,
//! outcome, status, rows and bytes; the span also gives its context to
//! every other line logged while the request runs. Neither carries a
//! token, a header or a body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use fineport_store::{RequestLogEntry, Store};
use tracing::field::{display, Empty};
use tracing::Span;

use crate::catalog::Catalog;
use crate::metrics::{self, Metrics};

/// The span of one HTTP request: `method` and `route` (the route template
/// it matched, `other` for none) now; `service_id` once the request names
/// one ([`crate::state::Caller::log_entry`]); `outcome`, `status`, `rows`
/// and `bytes` when an API request's outcome is known ([`RequestLog::record`]).
/// Never the raw path, the query, a header or a body.
pub fn request_span(request: &Request) -> Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = %metrics::route(request),
        service_id = Empty,
        outcome = Empty,
        status = Empty,
        rows = Empty,
        bytes = Empty,
    )
}

#[derive(Clone)]
pub struct RequestLog {
    store: Arc<dyn Store>,
    /// Which `service_id`s may label metrics: services that exist.
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    buffer: Arc<Mutex<Vec<RequestLogEntry>>>,
    /// Serialises flushes so that entries reach the store in order.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

impl RequestLog {
    pub fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Self {
        RequestLog {
            store,
            catalog,
            metrics,
            buffer: Arc::default(),
            flushing: Arc::default(),
        }
    }

    /// Starts the background task that flushes every `every`.
    pub fn spawn_flusher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                log.flush().await;
            }
        })
    }

    /// Records an API request's outcome: its log entry, its metrics, its
    /// fields in `span` (the request's [`request_span`], kept by whoever
    /// records it after the handler returned) and one `request` line in
    /// that span.
    pub fn record(&self, entry: RequestLogEntry, span: &Span) {
        let service = if self.catalog.contains(&entry.service_id) {
            entry.service_id.as_str()
        } else {
            ""
        };
        self.metrics.request(&entry, service);
        span.record("outcome", display(&entry.message));
        span.record("status", entry.status);
        if let Some(rows) = entry.rows {
            span.record("rows", rows);
        }
        if let Some(bytes) = entry.bytes {
            span.record("bytes", bytes);
        }
        tracing::info!(parent: span, duration_ms = entry.duration_ms, "request");
        self.buffer.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
    }

    /// Writes everything recorded so far.
    pub async fn flush(&self) {
        let _order = self.flushing.lock().await;
        let entries = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.store.append_request_log(entries.clone()).await {
            // Kept for the next flush (the store may only be full for now),
            // within a bound: the oldest entries go first.
            let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::replace(&mut *buffer, entries);
            buffer.extend(newer);
            let dropped = buffer.len().saturating_sub(MAX_UNWRITTEN);
            buffer.drain(..dropped);
            tracing::error!(error = %e, kept = buffer.len(), dropped, "cannot write the request log; retrying at the next flush");
        }
    }
}

/// Request-log entries kept in memory while the store cannot take them.
const MAX_UNWRITTEN: usize = 100_000;
