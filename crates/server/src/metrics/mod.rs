//! Prometheus metrics, served as text at `GET /metrics` (the list, with
//! each metric's labels and meaning, is in README's "Metrics").
//!
//! Each server state owns its recorder ([`Metrics`]) instead of installing
//! the process-wide one of the `metrics` facade: servers that share a
//! process (the tests start dozens) keep their own counts, and nothing
//! depends on what else the process installed. Metrics are recorded
//! through the recorder's own [`Recorder`] methods, which hand back the
//! same `metrics` handles the facade's macros would; the facade's
//! thread-local `with_local_recorder` would work only for the synchronous
//! stretch of code it wraps, and an export's outcome is known in a body
//! that hyper polls on any thread.
//!
//! Labels never carry what a client sends unchecked: `service_id` is a
//! service the admin created, or empty; `endpoint` and `route` are the
//! server's route templates (`other` for a path no route matches);
//! `outcome` and `status` come from closed sets. So the number of series
//! is bounded by the services, not by the traffic.
//!
//! Histograms are kept as Prometheus histograms with fixed buckets
//! ([`BUCKETS`], in seconds), so that replicas' can be summed. Their
//! samples wait in the recorder until drained into the buckets: [`serve`]
//! calls [`Metrics::upkeep`] every second, so memory stays bounded
//! whether or not anyone scrapes.
//!
//! [`serve`]: crate::serve

pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fineport_store::{Backlog, RequestLogEntry};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::limits;
use crate::state::{bearer_token, SharedState};
use crate::tokens;

/// Histogram buckets, in seconds: a millisecond (a store read) to an hour
/// (a large export).
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The `route` (and `endpoint`) label of a request no route matched.
pub const OTHER_ROUTE: &str = "other";

const REQUESTS: &str = "fineport_requests_total";
const REQUEST_DURATION: &str = "fineport_request_duration_seconds";
const EXPORT_ROWS: &str = "fineport_export_rows_total";
const EXPORT_BYTES: &str = "fineport_export_bytes_total";
const IMPORT_EVENTS: &str = "fineport_import_events_total";
const LIMITER_REFUSALS: &str = "fineport_limiter_refusals_total";
const EXPORTS_IN_FLIGHT: &str = "fineport_exports_in_flight";
const STORE_OPERATION: &str = "fineport_store_operation_seconds";
const BACKLOG_BATCHES: &str = "fineport_import_log_backlog_batches";
const BACKLOG_EVENTS: &str = "fineport_import_log_backlog_events";
const BACKLOG_BYTES: &str = "fineport_import_log_backlog_bytes";
const HTTP_REQUESTS: &str = "fineport_http_requests_total";
const HTTP_DURATION: &str = "fineport_http_request_duration_seconds";
const BUILD_INFO: &str = "fineport_build_info";
const ENGINE_MEMORY: &str = "fineport_engine_memory_bytes";

/// Every metric with its `# HELP` text.
const HELP: &[(&str, &str)] = &[
    (
        REQUESTS,
        "Export and Import API requests, by service, endpoint, outcome (the detailed-response message or the import code) and HTTP status, counted when the outcome is known (an export's when its body ends).",
    ),
    (
        REQUEST_DURATION,
        "Export and Import API request duration in seconds, from the request to its outcome (an export's last byte).",
    ),
    (EXPORT_ROWS, "Rows of complete exports."),
    (EXPORT_BYTES, "CSV bytes sent by exports, interrupted ones included (before HTTP compression)."),
    (IMPORT_EVENTS, "Events stored by /api/v1/events requests answered 20000."),
    (
        LIMITER_REFUSALS,
        "Requests refused by a rate or concurrency limit (429 too_many_api_requests, 40401), by service and limiter counter.",
    ),
    (EXPORTS_IN_FLIGHT, "Exports this process is running (each holds a concurrency slot)."),
    (
        STORE_OPERATION,
        "Store operation duration in seconds, by operation and result; an export's until its first chunk.",
    ),
    (BACKLOG_BATCHES, "Import requests acknowledged but not yet moved from the import log into the tables."),
    (BACKLOG_EVENTS, "Events acknowledged but not yet moved from the import log into the tables."),
    (BACKLOG_BYTES, "Import-log bytes not yet moved into the tables."),
    (HTTP_REQUESTS, "HTTP responses, by route template and status (every route, the admin API and /metrics included)."),
    (
        HTTP_DURATION,
        "HTTP response time in seconds, by route template: until the response head (an export's streaming is in fineport_request_duration_seconds).",
    ),
    (BUILD_INFO, "Always 1; the version label is fineport's."),
    (
        ENGINE_MEMORY,
        "Memory the embedded DuckDB holds, in bytes, by its duckdb_memory() tag (BASE_TABLE: table blocks cached in its buffer pool, bounded by --duckdb-memory-limit; COLUMN_DATA: materialised query results; …). DuckDB store only.",
    ),
];

/// What the `metrics` API asks of a call site; the Prometheus recorder
/// ignores it.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// A server's metrics: its recorder, and the handles of the metrics
/// without per-request labels.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    exports_in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        for (name, help) in HELP {
            let key_name = KeyName::from_const_str(name);
            let help = ::metrics::SharedString::const_str(help);
            if name.ends_with("_total") {
                recorder.describe_counter(key_name, None, help);
            } else if name.ends_with("_seconds") {
                recorder.describe_histogram(key_name, None, help);
            } else {
                recorder.describe_gauge(key_name, None, help);
            }
        }
        let handle = recorder.handle();
        let metrics = Metrics {
            exports_in_flight: recorder.register_gauge(&Key::from_static_name(EXPORTS_IN_FLIGHT), &METADATA),
            recorder,
            handle,
        };
        metrics
            .gauge(BUILD_INFO, vec![Label::new("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        metrics
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    /// An Export or Import API request whose outcome is now known (what
    /// the request log records, see [`crate::request_log`]). `service` is
    /// its `service_id` label: the service's id if it exists, else empty.
    pub fn request(&self, entry: &RequestLogEntry, service: &str) {
        let (service, endpoint) = (service.to_owned(), entry.endpoint.clone());
        self.counter(
            REQUESTS,
            vec![
                Label::new("service_id", service.clone()),
                Label::new("endpoint", endpoint.clone()),
                Label::new("outcome", entry.message.clone()),
                Label::new("status", entry.status.to_string()),
            ],
        )
        .increment(1);
        self.histogram(REQUEST_DURATION, vec![Label::new("endpoint", endpoint.clone())])
            .record(entry.duration_ms as f64 / 1000.0);
        let labels = || {
            vec![
                Label::new("service_id", service.clone()),
                Label::new("endpoint", endpoint.clone()),
            ]
        };
        match entry.endpoint.as_str() {
            crate::export::EVENT_ENDPOINT | crate::export::PROFILE_ENDPOINT => {
                if let Some(rows) = entry.rows {
                    self.counter(EXPORT_ROWS, labels()).increment(rows);
                }
                if let Some(bytes) = entry.bytes {
                    self.counter(EXPORT_BYTES, labels()).increment(bytes);
                }
            }
            crate::import::EVENTS_ENDPOINT if entry.message == "ok" => {
                let events = entry.rows.unwrap_or_default();
                self.counter(IMPORT_EVENTS, vec![Label::new("service_id", service.clone())])
                    .increment(events);
            }
            _ => {}
        }
    }

    /// A request of `service_id` (a service that exists: limits apply only
    /// to authenticated requests) refused by the limit on `counter`.
    pub fn limiter_refusal(&self, service_id: &str, counter: limits::Counter) {
        self.counter(
            LIMITER_REFUSALS,
            vec![
                Label::new("service_id", service_id.to_owned()),
                Label::new("counter", counter.name()),
            ],
        )
        .increment(1);
    }

    /// Counts an export as running until the returned guard is dropped.
    pub fn export_in_flight(&self) -> InFlight {
        self.exports_in_flight.increment(1.0);
        InFlight(self.exports_in_flight.clone())
    }

    /// One store call ([`store::MeteredStore`]).
    pub fn store_operation(&self, operation: &'static str, ok: bool, elapsed: Duration) {
        self.histogram(
            STORE_OPERATION,
            vec![
                Label::new("operation", operation),
                Label::new("result", if ok { "ok" } else { "error" }),
            ],
        )
        .record(elapsed.as_secs_f64());
    }

    /// One HTTP response of `route` (a route template, or [`OTHER_ROUTE`]).
    pub fn http_response(&self, route: &str, status: StatusCode, elapsed: Duration) {
        self.counter(
            HTTP_REQUESTS,
            vec![
                Label::new("route", route.to_owned()),
                Label::new("status", status.as_str().to_owned()),
            ],
        )
        .increment(1);
        self.histogram(HTTP_DURATION, vec![Label::new("route", route.to_owned())])
            .record(elapsed.as_secs_f64());
    }

    /// The Prometheus text of everything recorded, with the store's import
    /// backlog as it is now (no backlog gauges for a store without one).
    pub fn render(&self, backlog: Option<Backlog>, engine_memory: &[(String, u64)]) -> String {
        for (tag, bytes) in engine_memory {
            self.gauge(ENGINE_MEMORY, vec![Label::new("tag", tag.clone())])
                .set(*bytes as f64);
        }
        if let Some(backlog) = backlog {
            for (name, value) in [
                (BACKLOG_BATCHES, backlog.batches),
                (BACKLOG_EVENTS, backlog.events),
                (BACKLOG_BYTES, backlog.bytes),
            ] {
                self.gauge(name, Vec::new()).set(value as f64);
            }
        }
        self.handle.render()
    }

    /// Drains the histograms' samples into their buckets (see the module
    /// docs); cheap, called every second.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Starts the task that calls [`Metrics::upkeep`] every second, until
    /// the returned [`Upkeep`] is dropped.
    pub fn spawn_upkeep(metrics: Arc<Metrics>) -> Upkeep {
        Upkeep(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                metrics.upkeep();
            }
        }))
    }
}

/// The running upkeep task; dropping this aborts it (so a `serve` future
/// that is dropped takes its task along).
pub struct Upkeep(tokio::task::JoinHandle<()>);

impl Drop for Upkeep {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An export counted in `fineport_exports_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Who may read `/metrics`. Metrics name every service and show its
/// traffic, and `/metrics` is on the port that serves the public APIs, so
/// by default it takes a token; a Prometheus scrape config sends one with
/// `authorization: {credentials: …}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MetricsAccess {
    /// `Authorization: Bearer <admin token>` (the default).
    #[default]
    AdminToken,
    /// The admin token, or this token (its SHA-256), which opens
    /// `/metrics` and nothing else: what a scraper should hold
    /// (`FINEPORT_METRICS_TOKEN`).
    Token { sha256: String },
    /// Anyone who can reach the port (`--metrics-public`): for a port that
    /// only the monitoring network reaches.
    Public,
}

impl MetricsAccess {
    fn allows(&self, headers: &HeaderMap, admin_token_hash: &str) -> bool {
        let token = bearer_token(headers);
        let matches = |hash: &str| token.is_some_and(|t| tokens::matches(t, hash));
        match self {
            MetricsAccess::Public => true,
            MetricsAccess::AdminToken => matches(admin_token_hash),
            MetricsAccess::Token { sha256 } => matches(sha256) || matches(admin_token_hash),
        }
    }
}

/// The media type of Prometheus's text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The path of the metrics.
pub const METRICS_ENDPOINT: &str = "/metrics";

/// `GET /metrics`: the Prometheus text, to whom [`MetricsAccess`] allows;
/// 401 in the admin API's error shape otherwise.
#[utoipa::path(
    get,
    path = METRICS_ENDPOINT,
    tag = crate::openapi::OPERATIONS_TAG,
    security(("admin_token" = []), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Every metric in Prometheus's text format (the list is in README's \"Metrics\"). \
            With `--metrics-public`, served without a token.", body = String, content_type = TEXT_FORMAT),
        (status = 401, description = "`unauthorized`: neither the admin token nor the metrics token.", body = crate::openapi::AdminErrorBody),
    )
)]
pub async fn serve_metrics(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    if !state.config.metrics_access.allows(&headers, &state.admin_token_hash) {
        let mut response =
            crate::admin::AdminError::unauthorized("/metrics needs the admin token or the metrics token")
                .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    // Best effort: a scrape still answers when the engine cannot say.
    let engine_memory = state.store.engine_memory().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the engine's memory");
        Vec::new()
    });
    let text = state.metrics.render(state.store.backlog(), &engine_memory);
    ([(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT))], text).into_response()
}

/// The route template `request` matched, or [`OTHER_ROUTE`].
pub fn route(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(OTHER_ROUTE, MatchedPath::as_str)
}

/// Middleware of every route: counts and times each response by route
/// template and status.
pub async fn track_http(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let route = route(&request).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_response(&route, response.status(), started.elapsed());
    response
}
