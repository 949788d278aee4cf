//! The admin API (SPEC §5.2): services, tokens, taxonomy and the request
//! log, behind the admin token. Errors are `{"error":"<code>","detail":"…"}`
//! with a proper 4xx/5xx status.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fineport_contract::export::MAX_LOOKBACK_DAYS;
use fineport_contract::taxonomy::TaxonomyDoc;
use fineport_contract::ServiceId;
use fineport_store::{Limits, Service, TokenKind};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value as Json_};

use crate::catalog::CatalogError;
use crate::state::{bearer_token, SharedState};
use crate::tokens;

pub fn routes(state: SharedState) -> Router<SharedState> {
    Router::new()
        .route("/admin/v1/services", post(create_service).get(list_services))
        .route("/admin/v1/services/{id}", get(get_service).patch(patch_service))
        .route("/admin/v1/services/{id}/tokens/{kind}/reissue", post(reissue_token))
        .route("/admin/v1/services/{id}/tokens/{kind}", delete(revoke_token))
        .route("/admin/v1/services/{id}/taxonomy", get(get_taxonomy).post(add_taxonomy))
        .route("/admin/v1/services/{id}/requests", get(requests))
        .route(
            "/admin/v1/services/{id}/audiences",
            get(list_audiences).post(create_audience),
        )
        .route("/admin/v1/services/{id}/audiences/{aid}", delete(delete_audience))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state, require_admin))
}

/// 405 for a known admin path with another method (axum adds `Allow`).
async fn method_not_allowed(method: Method, uri: Uri) -> AdminError {
    AdminError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// 404 for any path no API serves: the whole server's fallback, in the
/// admin API's error shape (the DFINERY APIs have no word for it).
pub async fn no_such_endpoint(method: Method, uri: Uri) -> AdminError {
    AdminError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {method} {}", uri.path()),
    )
}

/// A request body, whose rejection (too large, unreadable) is an
/// [`AdminError`] like every other admin failure.
struct AdminBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for AdminBody {
    type Rejection = AdminError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(AdminBody)
            .map_err(|e| AdminError::new(e.status(), "invalid_request", e.body_text()))
    }
}

/// Path parameters, whose rejection is an [`AdminError`].
struct AdminPath<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for AdminPath<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| AdminPath(v))
            .map_err(|e| AdminError::new(e.status(), "invalid_request", e.body_text()))
    }
}

/// A query string parsed into `T`; a malformed one is a 400 [`AdminError`].
fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, AdminError> {
    let raw = raw.unwrap_or_default();
    serde_urlencoded::from_str(raw).map_err(|e| AdminError::invalid(format!("invalid query string {raw:?}: {e}")))
}

/// An admin API failure.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl AdminError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        AdminError {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    /// 401 `unauthorized`.
    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
}

impl From<CatalogError> for AdminError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound(what) => AdminError::new(StatusCode::NOT_FOUND, "not_found", what),
            CatalogError::Conflict(why) => AdminError::new(StatusCode::CONFLICT, "conflict", why),
            CatalogError::Invalid(why) => AdminError::invalid(why),
            CatalogError::Store(e) => {
                tracing::error!(error = %e, "admin change failed in the store");
                AdminError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the store failed; nothing was changed",
                )
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.code, "detail": self.detail}))).into_response()
    }
}

type AdminResult = Result<Response, AdminError>;

async fn require_admin(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let token = bearer_token(request.headers());
    match token {
        Some(t) if tokens::matches(t, &state.admin_token_hash) => next.run(request).await,
        _ => AdminError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required",
        )
        .into_response(),
    }
}

/// Parses a JSON body into `T`, refusing unknown fields with a clear detail.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::invalid(format!("invalid JSON body: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsPatch {
    export_per_hour: Option<u32>,
    export_concurrency: Option<u32>,
    events_per_minute: Option<u64>,
    identities_per_minute: Option<u32>,
    profiles_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicePatch {
    #[serde(default)]
    service_id: Option<String>,
    name: Option<String>,
    timezone: Option<String>,
    export_lookback_days: Option<u32>,
    auto_register: Option<bool>,
    limits: Option<LimitsPatch>,
}

impl ServicePatch {
    fn apply(self, service: &mut Service) -> Result<(), String> {
        if let Some(name) = self.name {
            service.name = name;
        }
        if let Some(tz) = self.timezone {
            fineport_contract::time::parse_timezone(&tz).ok_or_else(|| format!("unknown timezone {tz:?}"))?;
            service.timezone = tz;
        }
        if let Some(days) = self.export_lookback_days {
            if days > MAX_LOOKBACK_DAYS {
                return Err(format!(
                    "export_lookback_days must be 0 (unlimited) to {MAX_LOOKBACK_DAYS}, not {days}"
                ));
            }
            service.export_lookback_days = days;
        }
        if let Some(auto) = self.auto_register {
            service.auto_register = auto;
        }
        if let Some(l) = self.limits {
            let at_least_one = |name: &str, v: u64| {
                if v == 0 {
                    Err(format!("limits.{name} must be at least 1"))
                } else {
                    Ok(())
                }
            };
            let limits = &mut service.limits;
            if let Some(v) = l.export_per_hour {
                at_least_one("export_per_hour", v.into())?;
                limits.export_per_hour = v;
            }
            if let Some(v) = l.export_concurrency {
                at_least_one("export_concurrency", v.into())?;
                limits.export_concurrency = v;
            }
            if let Some(v) = l.events_per_minute {
                at_least_one("events_per_minute", v)?;
                limits.events_per_minute = v;
            }
            if let Some(v) = l.identities_per_minute {
                at_least_one("identities_per_minute", v.into())?;
                limits.identities_per_minute = v;
            }
            if let Some(v) = l.profiles_per_minute {
                at_least_one("profiles_per_minute", v.into())?;
                limits.profiles_per_minute = v;
            }
        }
        Ok(())
    }
}

/// A generated service id: 10 lowercase letters or digits (SPEC §1).
fn generated_service_id() -> Result<ServiceId, AdminError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let id: String = (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    ServiceId::parse(&id).map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

fn service_json(service: &Service) -> Json_ {
    serde_json::to_value(service).unwrap_or(Json_::Null)
}

async fn create_service(State(state): State<SharedState>, AdminBody(body): AdminBody) -> AdminResult {
    let patch: ServicePatch = if body.is_empty() {
        ServicePatch::default()
    } else {
        parse(&body)?
    };
    let service_id = match &patch.service_id {
        Some(id) => ServiceId::parse(id).map_err(|e| AdminError::invalid(e.to_string()))?,
        None => generated_service_id()?,
    };
    let mut service = Service {
        name: service_id.to_string(),
        service_id,
        timezone: "UTC".into(),
        export_lookback_days: 30,
        auto_register: false,
        limits: Limits::default(),
        created_at: state.clock.now(),
    };
    patch.apply(&mut service).map_err(AdminError::invalid)?;
    let (import_token, export_token) = state.catalog.create_service(service.clone()).await?;
    let mut body = service_json(&service);
    body["import_token"] = import_token.into();
    body["export_token"] = export_token.into();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_services(State(state): State<SharedState>) -> AdminResult {
    let services: Vec<Json_> = state.catalog.services().iter().map(service_json).collect();
    Ok(Json(json!({ "services": services })).into_response())
}

fn find(state: &SharedState, id: &str) -> Result<crate::catalog::ServiceView, AdminError> {
    state
        .catalog
        .service(id)
        .ok_or_else(|| CatalogError::no_service(id).into())
}

async fn get_service(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    Ok(Json(service_json(&find(&state, &id)?.service)).into_response())
}

async fn patch_service(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    AdminBody(body): AdminBody,
) -> AdminResult {
    let patch: ServicePatch = parse(&body)?;
    if patch.service_id.as_ref().is_some_and(|new| id != new.as_str()) {
        return Err(AdminError::invalid("service_id cannot be changed"));
    }
    let service = state.catalog.update_service(&id, |s| patch.apply(s)).await?;
    Ok(Json(service_json(&service)).into_response())
}

fn token_kind(kind: &str) -> Result<TokenKind, AdminError> {
    TokenKind::parse(kind).ok_or_else(|| {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token kind {kind:?}; use import or export"),
        )
    })
}

async fn reissue_token(
    State(state): State<SharedState>,
    AdminPath((id, kind)): AdminPath<(ServiceId, String)>,
) -> AdminResult {
    let kind = token_kind(&kind)?;
    let reissued = state.catalog.reissue(&id, kind, state.clock.now()).await?;
    let until = reissued
        .previous_valid_until
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Ok(Json(json!({"token": reissued.token, "previous_valid_until": until})).into_response())
}

async fn revoke_token(
    State(state): State<SharedState>,
    AdminPath((id, kind)): AdminPath<(ServiceId, String)>,
) -> AdminResult {
    let kind = token_kind(&kind)?;
    let revoked = state.catalog.revoke(&id, kind, state.clock.now()).await?;
    Ok(Json(json!({"revoked": revoked})).into_response())
}

async fn get_taxonomy(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    Ok(Json(find(&state, &id)?.taxonomy.to_listing()).into_response())
}

async fn add_taxonomy(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    AdminBody(body): AdminBody,
) -> AdminResult {
    let doc: TaxonomyDoc = parse(&body)?;
    let added = state.catalog.register(&id, &doc).await?;
    Ok(Json(json!({"added": added, "taxonomy": find(&state, &id)?.taxonomy.to_listing()})).into_response())
}

/// `?limit=N` of the request log: 1 to 10,000 (default 100).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsQuery {
    limit: Option<usize>,
}

async fn requests(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    RawQuery(raw): RawQuery,
) -> AdminResult {
    let q: RequestsQuery = query(raw.as_deref())?;
    find(&state, &id)?;
    state.log.flush().await;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let entries = state.store.recent_requests(&id, limit).await.map_err(|e| {
        tracing::error!(error = %e, "reading the request log failed");
        AdminError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request log could not be read",
        )
    })?;
    Ok(Json(json!({ "requests": entries })).into_response())
}

async fn list_audiences(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    let audiences = state
        .catalog
        .audiences(&id)
        .ok_or_else(|| CatalogError::no_service(&id))?;
    Ok(Json(json!({ "audiences": audiences })).into_response())
}

async fn create_audience(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    AdminBody(body): AdminBody,
) -> AdminResult {
    let audience: fineport_contract::profile::Audience = parse(&body)?;
    let created = state.catalog.create_audience(&id, audience).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn delete_audience(
    State(state): State<SharedState>,
    AdminPath((id, aid)): AdminPath<(ServiceId, String)>,
) -> AdminResult {
    state.catalog.delete_audience(&id, &aid).await?;
    Ok(Json(json!({"deleted": aid})).into_response())
}
