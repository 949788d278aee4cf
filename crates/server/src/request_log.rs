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
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use fineport_store::{RequestLogEntry, Store};
use tracing::field::{display, Empty};
use tracing::Span;

use crate::catalog::Catalog;
use crate::metrics::{self, Metrics};

/// The header that names a request: the client's own if it sent a
/// [well-formed](RequestId::accepts) one (a proxy's, say), else one the
/// server made; answered on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of one request, in its span (`id`) and its response's
/// [`REQUEST_ID_HEADER`], so that one export can be followed through the
/// logs among concurrent ones of the same service.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The longest id taken from a client.
    pub const MAX_LEN: usize = 64;

    /// Whether a client's id is taken as it is: 1 to [`Self::MAX_LEN`]
    /// ASCII letters, digits, `-`, `_` or `.`; anything else could forge
    /// a log line's fields, so the server makes its own instead.
    pub fn accepts(value: &[u8]) -> bool {
        (1..=Self::MAX_LEN).contains(&value.len())
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    fn of(request: &Request) -> RequestId {
        match request.headers().get(REQUEST_ID_HEADER) {
            Some(v) if Self::accepts(v.as_bytes()) => RequestId(v.clone()),
            _ => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                // 32 hex digits are a valid header value.
                RequestId(HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("invalid")))
            }
        }
    }

    fn as_str(&self) -> &str {
        // Only ever built from the bytes `accepts` allows, or hex.
        self.0.to_str().unwrap_or_default()
    }
}

/// Middleware outside the trace layer: gives the request its
/// [`RequestId`] (for [`request_span`]) and answers it in
/// [`REQUEST_ID_HEADER`].
pub async fn with_request_id(mut request: Request, next: Next) -> Response {
    let id = RequestId::of(&request);
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, id.0);
    response
}

/// The span of one HTTP request: `id` ([`RequestId`]), `method` and `route`
/// (the route template it matched, `other` for none) now; `service_id` once
/// the request names one ([`crate::state::Caller::log_entry`]); `outcome`,
/// `status`, `rows` and `bytes` when an API request's outcome is known
/// ([`RequestLog::record`]). Never the raw path, the query, a token, any
/// other header or a body.
pub fn request_span(request: &Request) -> Span {
    let id = request.extensions().get::<RequestId>().map(RequestId::as_str);
    tracing::info_span!(
        "request",
        id = id.unwrap_or_default(),
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
