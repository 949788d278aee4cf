//! The Export API (SPEC §2): admission in the documented order of checks,
//! then a streaming CSV response.
//!
//! Order of checks: `service_id` present → export token → body and names →
//! look-back → limits → query. Each refusal is an [`ExportError`] with the
//! detailed response of SPEC §2.2; every response carries the
//! `X-Rate-Limit-*` headers of the service's hourly export window. A request
//! refused before its body was read (no `service_id`, 401) has the body read
//! and discarded first, so that its keep-alive connection stays usable.

pub mod error;
mod stream;

use std::time::Instant;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use fineport_contract::export::{check_lookback, EventExportRequest, ExportFailure, ExportOutcome};
use fineport_contract::profile::plan_profile_export;
use fineport_contract::time::today_in;
use fineport_store::{ExportPart, ExportStream, Limits, RequestLogEntry, StoreError, TokenKind};
use futures::future::BoxFuture;
use futures::StreamExt;

use self::error::{rate_headers, store_outcome, ExportError};
use self::stream::{ExportBody, Ledger};
use crate::catalog::ServiceView;
use crate::limits::{Counter, ExportPermit, RateStatus};
use crate::state::{bearer_token, drain_body, read_body, require_json, service_id_param, Caller, SharedState};

pub const EVENT_ENDPOINT: &str = "/api/v1/export/event";
pub const PROFILE_ENDPOINT: &str = "/api/v1/export/userprofile";

/// 405 for another method than POST on an export endpoint, in the Export
/// API's dialect (`invalid_parameter` with a detail; axum adds `Allow`).
pub async fn method_not_allowed(method: axum::http::Method) -> Response {
    let failure = ExportFailure::invalid(format!("{method} is not allowed; the Export API takes POST"));
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(failure.body())).into_response()
}

/// A request that passed authentication, with what its log entry needs.
struct Admitted {
    service: ServiceView,
    entry: RequestLogEntry,
}

/// How an export request is authorised.
enum Access<'a> {
    /// The Export API: `service_id` in `query`, the service's export token.
    Token { query: Option<&'a str> },
    /// The admin API (`/admin/v1/services/{id}/export/…`): the admin
    /// middleware already checked the admin token; `service_id` is the
    /// path's. The log entry has no token id.
    Admin { service_id: &'a str },
}

/// The first checks of both export endpoints: `service_id`, then the token.
async fn authenticate(
    state: &SharedState,
    endpoint: &str,
    caller: &Caller,
    access: Access<'_>,
    headers: &HeaderMap,
) -> Result<Admitted, Box<(ExportError, RequestLogEntry)>> {
    let now = state.clock.now();
    let query = match access {
        Access::Token { query } => query,
        Access::Admin { service_id } => {
            let entry = caller.log_entry(endpoint, Some(service_id), now);
            return match state.catalog.service(service_id) {
                Some(service) => Ok(Admitted { service, entry }),
                None => {
                    let per_hour = u64::from(Limits::default().export_per_hour);
                    let rate = state.limiter.peek(service_id, Counter::Exports, per_hour, now).await;
                    let error = ExportError {
                        failure: ExportFailure::invalid(format!("no service {service_id:?}")),
                        rate: Some(rate),
                        retry_after_secs: None,
                    };
                    Err(Box::new((error, entry)))
                }
            };
        }
    };
    let service_id = service_id_param(query);
    let mut entry = caller.log_entry(endpoint, service_id.as_deref(), now);
    let service = service_id.as_deref().and_then(|id| state.catalog.service(id));
    let per_hour = service
        .as_ref()
        .map_or(Limits::default().export_per_hour, |s| s.service.limits.export_per_hour);
    let rate = state
        .limiter
        .peek(&entry.service_id, Counter::Exports, u64::from(per_hour), now)
        .await;
    let fail = |failure: ExportFailure, entry: RequestLogEntry| {
        let error = ExportError {
            failure,
            rate: Some(rate),
            retry_after_secs: None,
        };
        Err(Box::new((error, entry)))
    };
    let Some(service_id) = service_id else {
        return fail(
            ExportFailure::invalid("service_id is required in the query string"),
            entry,
        );
    };
    let token = bearer_token(headers);
    let unauthorized = || ExportFailure::new(ExportOutcome::UnauthorizedToken);
    let (Some(service), Some(token)) = (service, token) else {
        return fail(unauthorized(), entry);
    };
    match state.catalog.authenticate(&service_id, TokenKind::Export, token, now) {
        Some(token_id) => {
            entry.token_id = Some(token_id);
            Ok(Admitted { service, entry })
        }
        None => fail(unauthorized(), entry),
    }
}

/// The store call that starts an export.
type Start = BoxFuture<'static, Result<ExportStream, StoreError>>;

/// A checked export: its file name and how to start it.
struct ExportJob {
    filename: String,
    start: Start,
}

/// `POST /api/v1/export/event` (SPEC §2.1–§2.3).
#[utoipa::path(
    post,
    path = EVENT_ENDPOINT,
    operation_id = "export_event",
    tag = crate::openapi::EXPORT_TAG,
    params(("service_id" = String, Query, description = "The service whose events to export.")),
    request_body(content = crate::openapi::EventExportBody, content_type = "application/json"),
    responses((
        status = 200,
        description = "The CSV, streamed: a header line, then one row per event (SPEC §2.3). A failure after the first byte ends the body without its final chunk.",
        content_type = "text/csv; charset=utf-8",
        body = String,
        headers(("Content-Disposition" = String, description = "`attachment; filename=\"<service>_events_<from>_<to>.csv\"`")),
    )),
    security(("export_token" = []))
)]
pub async fn export_event(
    state: State<SharedState>,
    caller: Caller,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let RawQuery(query) = query;
    let access = Access::Token {
        query: query.as_deref(),
    };
    export(EVENT_ENDPOINT, state, caller, access, headers, body, event_job).await
}

/// The checks and the store call of an event export (SPEC §2.1): body,
/// names, look-back.
fn event_job(
    state: &SharedState,
    service: &ServiceView,
    json: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<ExportJob, ExportFailure> {
    let plan = EventExportRequest::parse(json)?.plan(&service.taxonomy)?;
    check_lookback(
        plan.from_date,
        today_in(service.timezone, now),
        service.service.export_lookback_days,
    )?;
    let (store, service_id, timezone) = (
        state.store.clone(),
        service.service.service_id.clone(),
        service.timezone,
    );
    Ok(ExportJob {
        filename: format!("{service_id}_events_{}_{}.csv", plan.from_date, plan.to_date),
        start: Box::pin(async move { store.export_events(&service_id, timezone, &plan).await }),
    })
}

/// `POST /api/v1/export/userprofile` (SPEC §2.4).
#[utoipa::path(
    post,
    path = PROFILE_ENDPOINT,
    operation_id = "export_userprofile",
    tag = crate::openapi::EXPORT_TAG,
    params(("service_id" = String, Query, description = "The service whose profiles to export.")),
    request_body(content = crate::openapi::ProfileExportBody, content_type = "application/json"),
    responses((
        status = 200,
        description = "The CSV, streamed: a header line, then one row per profile (SPEC §2.3). A failure after the first byte ends the body without its final chunk.",
        content_type = "text/csv; charset=utf-8",
        body = String,
        headers(("Content-Disposition" = String, description = "`attachment; filename=\"<service>_userprofile_<today>.csv\"`")),
    )),
    security(("export_token" = []))
)]
pub async fn export_userprofile(
    state: State<SharedState>,
    caller: Caller,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let RawQuery(query) = query;
    let access = Access::Token {
        query: query.as_deref(),
    };
    export(PROFILE_ENDPOINT, state, caller, access, headers, body, profile_job).await
}

/// The checks and the store call of a user-profile export (SPEC §2.4):
/// body, names, audience.
fn profile_job(
    state: &SharedState,
    service: &ServiceView,
    json: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<ExportJob, ExportFailure> {
    let plan = plan_profile_export(json, &service.taxonomy)?;
    let service_id = service.service.service_id.clone();
    let audience = match &plan.audience {
        None => None,
        Some(id) => {
            let audience = state
                .catalog
                .audience(&service_id, id)
                .ok_or_else(|| ExportFailure::invalid(format!("audience {id:?} does not exist")))?;
            // A rule may name things the taxonomy no longer types the same way.
            Some(audience.filter(&service.taxonomy).map_err(ExportFailure::invalid)?)
        }
    };
    let (store, timezone) = (state.store.clone(), service.timezone);
    Ok(ExportJob {
        filename: format!("{service_id}_userprofile_{}.csv", today_in(timezone, now)),
        start: Box::pin(async move {
            store
                .export_profiles(&service_id, timezone, &plan, audience.as_ref())
                .await
        }),
    })
}

/// The most rows an admin export's `?limit=N` asks for.
pub const MAX_PREVIEW_ROWS: u64 = 1000;

/// `?limit=N` of an admin export.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    limit: Option<u64>,
}

#[allow(clippy::too_many_arguments)] // the two handlers' extractors, passed on as they are
/// An admin export: the Export API's flow for `endpoint` with `job`, the
/// service from the path, and `?limit=N` (1 to [`MAX_PREVIEW_ROWS`]) ending
/// the CSV after N rows; a bad `limit` is refused like a bad body.
async fn admin_export(
    endpoint: &'static str,
    state: State<SharedState>,
    caller: Caller,
    service_id: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
    job: fn(&SharedState, &ServiceView, &serde_json::Value, DateTime<Utc>) -> Result<ExportJob, ExportFailure>,
) -> Response {
    let limit = serde_urlencoded::from_str::<PreviewQuery>(query.as_deref().unwrap_or_default())
        .map_err(|e| ExportFailure::invalid(format!("invalid query string: {e}")))
        .and_then(|q| match q.limit {
            Some(n) if !(1..=MAX_PREVIEW_ROWS).contains(&n) => Err(ExportFailure::invalid(format!(
                "limit must be 1 to {MAX_PREVIEW_ROWS}, not {n}"
            ))),
            other => Ok(other),
        });
    let access = Access::Admin {
        service_id: &service_id,
    };
    export(
        endpoint,
        state,
        caller,
        access,
        headers,
        body,
        move |state, service, json, now| {
            let limit = limit?;
            let mut job = job(state, service, json, now)?;
            if let Some(rows) = limit {
                let start = job.start;
                job.start = Box::pin(async move { start.await.map(|s| stream::first_rows(s, rows)) });
            }
            Ok(job)
        },
    )
    .await
}

/// `POST /admin/v1/services/{id}/export/event`: the event export as the
/// admin (the Export API's body, admission, CSV and errors; logged as
/// `/api/v1/export/event`).
#[utoipa::path(
    post,
    path = "/admin/v1/services/{id}/export/event",
    operation_id = "admin_export_event",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = String, Path, description = "The service's id."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "End the CSV after this many rows (a preview); logged ok with that many rows."),
    ),
    request_body(content = crate::openapi::EventExportBody, content_type = "application/json"),
    responses((
        status = 200,
        description = "The CSV of the Export API, streamed (SPEC §2.3); failures are its detailed responses.",
        content_type = "text/csv; charset=utf-8",
        body = String,
    )),
    security(("admin_token" = []))
)]
pub async fn admin_export_event(
    state: State<SharedState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admin_export(EVENT_ENDPOINT, state, caller, id, query, headers, body, event_job).await
}

/// `POST /admin/v1/services/{id}/export/userprofile`: the user-profile
/// export as the admin (logged as `/api/v1/export/userprofile`).
#[utoipa::path(
    post,
    path = "/admin/v1/services/{id}/export/userprofile",
    operation_id = "admin_export_userprofile",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = String, Path, description = "The service's id."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "End the CSV after this many rows (a preview); logged ok with that many rows."),
    ),
    request_body(content = crate::openapi::ProfileExportBody, content_type = "application/json"),
    responses((
        status = 200,
        description = "The CSV of the Export API, streamed (SPEC §2.4); failures are its detailed responses.",
        content_type = "text/csv; charset=utf-8",
        body = String,
    )),
    security(("admin_token" = []))
)]
pub async fn admin_export_userprofile(
    state: State<SharedState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admin_export(PROFILE_ENDPOINT, state, caller, id, query, headers, body, profile_job).await
}

/// The flow both export endpoints share, in the documented order of
/// checks; `check` validates the body and names and prepares the work.
async fn export(
    endpoint: &str,
    State(state): State<SharedState>,
    caller: Caller,
    access: Access<'_>,
    headers: HeaderMap,
    body: Body,
    check: impl FnOnce(&SharedState, &ServiceView, &serde_json::Value, DateTime<Utc>) -> Result<ExportJob, ExportFailure>,
) -> Response {
    let started = Instant::now();
    let Admitted { service, entry } = match authenticate(&state, endpoint, &caller, access, &headers).await {
        Ok(a) => a,
        Err(refused) => {
            // Read the unread body first, so that the connection stays usable
            // for the client's next request; one that cannot be read (too
            // large, too slow) is answered `Connection: close` instead.
            let (error, entry) = *refused;
            drain_body(body, state.config.export_body_limit, state.config.body_timeout).await;
            return refuse(&state, error, entry, started);
        }
    };
    let now = state.clock.now();
    let checked = match read_body(body, state.config.export_body_limit, state.config.body_timeout).await {
        Err(e) => Err(ExportFailure::invalid(e.to_string())),
        Ok(bytes) => require_json(&headers)
            .map_err(ExportFailure::invalid)
            .and_then(|()| {
                fineport_contract::json::parse_value(&bytes).map_err(|e| ExportFailure::invalid(e.to_string()))
            })
            .and_then(|json| check(&state, &service, &json, now)),
    };
    let job = match checked {
        Ok(job) => job,
        Err(failure) => {
            let per_hour = u64::from(service.service.limits.export_per_hour);
            let rate = state
                .limiter
                .peek(&service.service.service_id, Counter::Exports, per_hour, now)
                .await;
            let error = ExportError {
                failure,
                rate: Some(rate),
                retry_after_secs: None,
            };
            return refuse(&state, error, entry, started);
        }
    };
    let permit = match acquire(&state, &service, now).await {
        Ok(p) => p,
        Err(error) => return refuse(&state, error, entry, started),
    };
    let ledger = Ledger {
        log: state.log.clone(),
        entry,
        started,
        permit,
        in_flight: state.metrics.export_in_flight(),
        span: tracing::Span::current(),
    };
    stream_csv(ledger, job.filename, job.start).await
}

/// Admits an export under the service's hourly quota and concurrency limit
/// (shared by both export endpoints).
async fn acquire(
    state: &SharedState,
    service: &ServiceView,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ExportPermit, ExportError> {
    let limits = service.service.limits;
    state
        .limiter
        .acquire_export(
            &service.service.service_id,
            u64::from(limits.export_per_hour),
            limits.export_concurrency,
            now,
        )
        .await
        .map_err(|refusal| {
            state
                .metrics
                .limiter_refusal(&service.service.service_id, Counter::Exports);
            ExportError {
                failure: ExportFailure::new(ExportOutcome::TooManyApiRequests),
                rate: Some(refusal.status),
                retry_after_secs: Some(refusal.retry_after_secs),
            }
        })
}

/// Logs a refused request and answers it.
fn refuse(state: &SharedState, error: ExportError, mut entry: RequestLogEntry, started: Instant) -> Response {
    entry.status = error.outcome().http_status();
    entry.message = error.outcome().message().into();
    entry.duration_ms = started.elapsed().as_millis() as u64;
    state.log.record(entry, &tracing::Span::current());
    error.into_response()
}

/// Starts the export and answers with its CSV once the first chunk is
/// ready. A failure before that (from the start or as the stream's first
/// item) answers 500 with the detailed response; after it, the body breaks
/// (see [`stream`]).
async fn stream_csv(ledger: Ledger, filename: String, start: Start) -> Response {
    // If this future is dropped while waiting (the client left before the
    // first byte), the guard records it; the stream, dropped with it,
    // interrupts the query.
    let mut guard = PendingGuard { ledger: Some(ledger) };
    let rate = guard.ledger.as_ref().map(|l| l.permit.status);
    let (stream, first) = match start.await {
        Err(e) => (None, Some(Err(e))),
        Ok(mut stream) => {
            let first = stream.next().await;
            (Some(stream), first)
        }
    };
    let first = match first {
        Some(Ok(ExportPart::Chunk(chunk))) => chunk,
        Some(Ok(ExportPart::End(summary))) => {
            // Finished without a byte (no store does this: the header always
            // comes): an empty, complete body.
            if let Some(ledger) = guard.ledger.take() {
                ledger.close(200, Ok(()), Some(summary.rows), 0);
            }
            Default::default()
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "export failed before its first byte");
            // A query error says why (e.g. acknowledged imports that cannot
            // be stored yet); anything else stays a bare unknown_error.
            let failure = match store_outcome(&e) {
                ExportOutcome::QueryError => ExportFailure::with_detail(ExportOutcome::QueryError, e.message),
                _ => ExportFailure::new(ExportOutcome::UnknownError),
            };
            return guard.fail(failure, rate);
        }
        // Ended without `End`: never complete.
        None => return guard.fail(ExportFailure::new(ExportOutcome::UnknownError), rate),
    };
    let ledger = guard.ledger.take();
    let body = ExportBody {
        stream,
        first: Some(first),
        ledger,
        bytes_sent: 0,
    };
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert("content-disposition", v);
    }
    if let Some(rate) = rate {
        rate_headers(headers, &rate);
    }
    response
}

/// The books of an export that has not answered yet.
struct PendingGuard {
    ledger: Option<Ledger>,
}

impl PendingGuard {
    fn fail(mut self, failure: ExportFailure, rate: Option<RateStatus>) -> Response {
        let outcome = failure.outcome;
        let Some(ledger) = self.ledger.take() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let mut rate = rate;
        ledger.close(outcome.http_status(), Err(outcome), None, 0);
        // The refund happened in close: report the window as it is now.
        if let Some(r) = rate.as_mut() {
            r.remaining += 1;
        }
        ExportError {
            failure,
            rate,
            retry_after_secs: None,
        }
        .into_response()
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger.take() {
            ledger.close(200, Err(ExportOutcome::ClientConnectionClosed), None, 0);
        }
    }
}
