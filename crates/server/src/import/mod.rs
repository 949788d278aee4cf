//! The Import API (SPEC §4): HTTP 200 with a result code for every answer.
//!
//! Order of checks: `service_id` (40101) → `access_token` (40201) → body
//! (40000: unreadable, not sent as `Content-Type: application/json`, or not
//! JSON) → contents (40001 for an object that repeats a key, then 40402,
//! 40001) → per-minute limit (40401) → store.
//! Invalid requests use no quota. 20000 is answered only after the store
//! has committed the batch. A request the store refuses because it
//! contradicts stored state (an identity conflict: `StoreErrorKind::Invalid`)
//! is 40001 with the store's reason, and stored nothing. A request refused before its body was read
//! (40101, 40201) has the body read and discarded first, so that its
//! keep-alive connection stays usable.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fineport_contract::import::{response_body, validate_events, ImportCode, ImportProblem, ImportRejection};
use fineport_contract::json::{parse_value, Doc, DocError};
use fineport_store::{Limits, RequestLogEntry, StoreErrorKind, TokenKind};

use crate::catalog::{CatalogError, ServiceView};
use crate::export::error::rate_headers;
use crate::limits::{Counter, RateStatus};
use crate::state::{drain_body, header_str, read_body, require_json, service_id_param, Caller, SharedState};

pub const EVENTS_ENDPOINT: &str = "/api/v1/events";
pub const IDENTITIES_ENDPOINT: &str = "/api/v1/identities";
pub const IDENTITIES_DELETE_ENDPOINT: &str = "/api/v1/identities/delete";
pub const USER_PROFILE_ENDPOINT: &str = "/api/v1/user-profile";

/// An Import API answer: always HTTP 200, the outcome in the body.
pub struct ImportAnswer {
    pub code: ImportCode,
    pub problems: Vec<ImportProblem>,
    pub rate: Option<RateStatus>,
    pub retry_after_secs: Option<u64>,
}

impl ImportAnswer {
    pub fn new(code: ImportCode, reason: impl Into<String>) -> Self {
        ImportAnswer {
            code,
            problems: vec![ImportProblem::request(reason)],
            rate: None,
            retry_after_secs: None,
        }
    }
}

impl From<ImportRejection> for ImportAnswer {
    fn from(r: ImportRejection) -> Self {
        ImportAnswer {
            code: r.code,
            problems: r.problems,
            rate: None,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ImportAnswer {
    fn into_response(self) -> Response {
        let mut response = Json(response_body(self.code, &self.problems)).into_response();
        if let Some(rate) = &self.rate {
            rate_headers(response.headers_mut(), rate);
        }
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

/// 405 for another method than POST on an import endpoint, with the Import
/// API's `40000` body (axum adds `Allow`).
pub async fn method_not_allowed(method: axum::http::Method) -> Response {
    let answer = ImportAnswer::new(
        ImportCode::BadRequest,
        format!("{method} is not allowed; the Import API takes POST"),
    );
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, answer).into_response()
}

/// `service_id` and `access_token`, the first checks of every import endpoint.
pub fn authenticate(
    state: &SharedState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(ServiceView, String), ImportAnswer> {
    let service = service_id_param(query)
        .and_then(|id| state.catalog.service(&id))
        .ok_or_else(|| ImportAnswer::new(ImportCode::InvalidServiceId, "service_id is missing or unknown"))?;
    let token = header_str(headers, "access_token").map(str::trim).unwrap_or_default();
    let now = state.clock.now();
    let token_id = (!token.is_empty())
        .then(|| {
            state
                .catalog
                .authenticate(&service.service.service_id, TokenKind::Import, token, now)
        })
        .flatten()
        .ok_or_else(|| {
            ImportAnswer::new(
                ImportCode::InvalidToken,
                "access_token is missing or not a valid import token",
            )
        })?;
    Ok((service, token_id))
}

/// The Import API endpoints, each with the counter its limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Events,
    Identities,
    IdentitiesDelete,
    UserProfile,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Events => EVENTS_ENDPOINT,
            Endpoint::Identities => IDENTITIES_ENDPOINT,
            Endpoint::IdentitiesDelete => IDENTITIES_DELETE_ENDPOINT,
            Endpoint::UserProfile => USER_PROFILE_ENDPOINT,
        }
    }

    /// Events count events; the others count requests (SPEC §3).
    fn counter(self) -> Counter {
        match self {
            Endpoint::Events => Counter::Events,
            Endpoint::Identities | Endpoint::IdentitiesDelete => Counter::Identities,
            Endpoint::UserProfile => Counter::Profiles,
        }
    }

    fn limit(self, limits: &Limits) -> u64 {
        match self.counter() {
            Counter::Events => limits.events_per_minute,
            Counter::Identities => u64::from(limits.identities_per_minute),
            _ => u64::from(limits.profiles_per_minute),
        }
    }
}

/// `POST /api/v1/events` (SPEC §4): Stores 1 to 100 events of one user, atomically.
#[utoipa::path(
    post,
    path = EVENTS_ENDPOINT,
    operation_id = "import_events",
    tag = crate::openapi::IMPORT_TAG,
    params(("service_id" = String, Query, description = "The service to import into.")),
    request_body(content = crate::openapi::EventsBody, content_type = "application/json"),
    security(("import_token" = []))
)]
pub async fn events(
    state: State<SharedState>,
    caller: Caller,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(Endpoint::Events, state, caller, query, headers, body).await
}

/// `POST /api/v1/identities` (SPEC §4): Creates or updates a profile from its identifiers.
#[utoipa::path(
    post,
    path = IDENTITIES_ENDPOINT,
    operation_id = "import_identities",
    tag = crate::openapi::IMPORT_TAG,
    params(("service_id" = String, Query, description = "The service to import into.")),
    request_body(content = crate::openapi::IdentitiesBody, content_type = "application/json"),
    security(("import_token" = []))
)]
pub async fn identities(
    state: State<SharedState>,
    caller: Caller,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(Endpoint::Identities, state, caller, query, headers, body).await
}

/// `POST /api/v1/identities/delete` (SPEC §4): Deletes a profile, its identifiers and properties, irreversibly (events stay).
#[utoipa::path(
    post,
    path = IDENTITIES_DELETE_ENDPOINT,
    operation_id = "import_identities_delete",
    tag = crate::openapi::IMPORT_TAG,
    params(("service_id" = String, Query, description = "The service to import into.")),
    request_body(content = crate::openapi::IdentitiesDeleteBody, content_type = "application/json"),
    security(("import_token" = []))
)]
pub async fn identities_delete(
    state: State<SharedState>,
    caller: Caller,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(Endpoint::IdentitiesDelete, state, caller, query, headers, body).await
}

/// `POST /api/v1/user-profile` (SPEC §4): Sets user properties; an older update never overwrites a newer one. Also takes a list of up to 100 updates.
#[utoipa::path(
    post,
    path = USER_PROFILE_ENDPOINT,
    operation_id = "import_user_profile",
    tag = crate::openapi::IMPORT_TAG,
    params(("service_id" = String, Query, description = "The service to import into.")),
    request_body(content = crate::openapi::UserProfileBody, content_type = "application/json"),
    security(("import_token" = []))
)]
pub async fn user_profile(
    state: State<SharedState>,
    caller: Caller,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(Endpoint::UserProfile, state, caller, query, headers, body).await
}

/// One Import API request: answer, rate headers and request log entry.
async fn handle(
    endpoint: Endpoint,
    State(state): State<SharedState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let received = state.clock.now();
    let mut entry = caller.log_entry(endpoint.path(), service_id_param(query.as_deref()).as_deref(), received);
    entry.status = 200;
    let limits = state
        .catalog
        .service(&entry.service_id)
        .map_or(Limits::default(), |s| s.service.limits);
    let mut answer = import(endpoint, &state, query.as_deref(), &headers, body, received, &mut entry).await;
    if answer.rate.is_none() {
        let limit = endpoint.limit(&limits);
        answer.rate = Some(
            state
                .limiter
                .peek(&entry.service_id, endpoint.counter(), limit, received)
                .await,
        );
    }
    entry.message = if answer.code == ImportCode::Ok {
        "ok".into()
    } else {
        answer.code.code().into()
    };
    entry.duration_ms = started.elapsed().as_millis() as u64;
    state.log.record(entry, &tracing::Span::current());
    answer.into_response()
}

/// What a validated request stores.
enum Work {
    Events(fineport_contract::import::EventBatch),
    Identity(fineport_contract::profile::IdentityRequest),
    Delete(String),
    Profiles(fineport_contract::profile::ProfileBatch),
}

impl Work {
    /// Units counted against the per-minute limit.
    fn units(&self) -> u64 {
        match self {
            Work::Events(batch) => batch.events.len() as u64,
            _ => 1,
        }
    }
}

async fn import(
    endpoint: Endpoint,
    state: &SharedState,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    received: chrono::DateTime<chrono::Utc>,
    entry: &mut RequestLogEntry,
) -> ImportAnswer {
    let (service, token_id) = match authenticate(state, query, headers) {
        Ok(ok) => ok,
        Err(answer) => {
            // As for a refused export: read the body so that the connection
            // stays usable, or it is answered `Connection: close`.
            drain_body(body, state.config.import_body_limit, state.config.body_timeout).await;
            return answer;
        }
    };
    entry.token_id = Some(token_id);
    let bytes = match read_body(body, state.config.import_body_limit, state.config.body_timeout).await {
        Ok(b) => b,
        Err(e) => return ImportAnswer::new(ImportCode::BadRequest, e.to_string()),
    };
    entry.bytes = Some(bytes.len() as u64);
    if let Err(why) = require_json(headers) {
        return ImportAnswer::new(ImportCode::BadRequest, why);
    }
    // Not JSON is 40000; an object that repeats a key, which
    // `serde_json::Value` would hide, 40001.
    let unreadable = |e: DocError| match e {
        DocError::NotJson(_) => ImportAnswer::new(ImportCode::BadRequest, e.to_string()),
        DocError::RepeatedKey(_) => ImportAnswer::new(ImportCode::ValidationFailure, e.to_string()),
    };
    let service_id = service.service.service_id.clone();
    let auto = service.service.auto_register;
    let validated = if endpoint == Endpoint::Events {
        // The hot path: a tree that borrows from the body.
        match Doc::parse(&bytes) {
            Ok(doc) => validate_events(&doc, &service.taxonomy, auto).map(Work::Events),
            Err(e) => return unreadable(e),
        }
    } else {
        // Low-volume endpoints, whose rules read a `serde_json::Value`.
        let json = match parse_value(&bytes) {
            Ok(json) => json,
            Err(e) => return unreadable(e),
        };
        match endpoint {
            Endpoint::Identities => fineport_contract::profile::validate_identity(&json).map(Work::Identity),
            Endpoint::IdentitiesDelete => fineport_contract::profile::validate_delete(&json).map(Work::Delete),
            // `UserProfile` (events took the branch above).
            _ => fineport_contract::profile::validate_profiles(&json, &service.taxonomy, auto).map(Work::Profiles),
        }
    };
    let work = match validated {
        Ok(w) => w,
        Err(rejection) => return rejection.into(),
    };
    entry.rows = Some(work.units());
    let limit = endpoint.limit(&service.service.limits);
    let rate = match state
        .limiter
        .take(&service_id, endpoint.counter(), work.units(), limit, received)
        .await
    {
        Ok(rate) => rate,
        Err(refusal) => {
            state.metrics.limiter_refusal(&service_id, endpoint.counter());
            let unit = if endpoint == Endpoint::Events {
                "events"
            } else {
                "requests"
            };
            let mut answer = ImportAnswer::new(
                ImportCode::TooManyRequest,
                format!("more than {limit} {unit} this minute; retry after the window resets"),
            );
            answer.rate = Some(refusal.status);
            answer.retry_after_secs = Some(refusal.retry_after_secs);
            return answer;
        }
    };
    let registrations = match &work {
        Work::Events(batch) => Some(&batch.registrations),
        Work::Profiles(batch) => Some(&batch.registrations),
        _ => None,
    };
    let units = work.units();
    if let Some(doc) = registrations.filter(|d| !d.is_empty()) {
        if let Err(e) = state.catalog.register(&service_id, doc).await {
            // Refused or failed: the request uses no quota.
            state
                .limiter
                .give_back(&service_id, endpoint.counter(), units, &rate)
                .await;
            // No rate here: `handle` reports the window as it is after the give-back.
            return match e {
                CatalogError::Conflict(why) | CatalogError::Invalid(why) => {
                    ImportAnswer::new(ImportCode::ValidationFailure, why)
                }
                other => {
                    tracing::error!(error = ?other, "auto-registration failed");
                    ImportAnswer::new(ImportCode::InternalServerError, "the taxonomy could not be updated")
                }
            };
        }
    }
    let stored = match work {
        Work::Events(batch) => state
            .store
            .insert_events(&service_id, batch, received.timestamp_millis())
            .await
            .map(drop),
        Work::Identity(request) => state
            .store
            .upsert_identity(&service_id, request.identity)
            .await
            .map(drop),
        Work::Delete(external_id) => state.store.delete_profile(&service_id, &external_id).await.map(drop),
        Work::Profiles(batch) => state.store.update_profiles(&service_id, batch.updates).await,
    };
    match stored {
        Ok(()) => ImportAnswer {
            code: ImportCode::Ok,
            problems: Vec::new(),
            rate: Some(rate),
            retry_after_secs: None,
        },
        Err(e) => {
            // Refused or failed: the request uses no quota.
            state
                .limiter
                .give_back(&service_id, endpoint.counter(), units, &rate)
                .await;
            if e.kind == StoreErrorKind::Invalid {
                // It contradicts what is stored (an identity conflict):
                // a content rule, and nothing was stored.
                return ImportAnswer::new(ImportCode::ValidationFailure, e.message);
            }
            tracing::error!(error = %e, endpoint = endpoint.path(), "import failed");
            ImportAnswer::new(
                ImportCode::InternalServerError,
                "the request could not be stored; nothing was stored",
            )
        }
    }
}
