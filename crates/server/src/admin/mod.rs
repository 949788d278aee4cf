//! The admin API (SPEC §5.2): services, tokens, taxonomy and the request
//! log, behind the admin token. Errors are `{"error":"<code>","detail":"…"}`
//! with a proper 4xx/5xx status.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fineport_contract::export::MAX_LOOKBACK_DAYS;
use fineport_contract::profile::Audience;
use fineport_contract::taxonomy::TaxonomyDoc;
use fineport_contract::ServiceId;
use fineport_store::{Limits, RequestLogEntry, Service, TokenKind};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::CatalogError;
use crate::state::{bearer_token, SharedState};
use crate::tokens;

/// The admin API's routes and their OpenAPI operations, from the
/// handlers' `#[utoipa::path]` attributes.
pub fn routes(state: SharedState) -> (axum::Router<SharedState>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::new()
        .routes(routes!(create_service, list_services))
        .routes(routes!(get_service, patch_service))
        .routes(routes!(reissue_token))
        .routes(routes!(revoke_token))
        .routes(routes!(get_taxonomy, add_taxonomy))
        .routes(routes!(requests))
        .routes(routes!(list_audiences, create_audience))
        .routes(routes!(delete_audience))
        .split_for_parts();
    let router = router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state, require_admin));
    (router, doc)
}

/// 405 for a known admin path with another method (axum adds `Allow`).
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> AdminError {
    AdminError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// 404 for any path no API serves: the whole server's fallback, in the
/// admin API's error shape (the DFINERY APIs have no word for it).
pub async fn no_such_endpoint(method: Method, uri: Uri) -> AdminError {
    AdminError::new(
        StatusCode::NOT_FOUND,
        NOT_FOUND,
        format!("no endpoint {method} {}", uri.path()),
    )
}

/// A request body, whose rejection (too large, unreadable) is an
/// [`AdminError`] like every other admin failure.
pub(crate) struct AdminBody(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for AdminBody {
    type Rejection = AdminError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(AdminBody)
            .map_err(|e| AdminError::new(e.status(), BAD_REQUEST, e.body_text()))
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
            .map_err(|e| AdminError::new(e.status(), BAD_REQUEST, e.body_text()))
    }
}

/// A query string parsed into `T`; a malformed one is a 400 [`AdminError`].
fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, AdminError> {
    let raw = raw.unwrap_or_default();
    serde_urlencoded::from_str(raw).map_err(|e| AdminError::invalid(format!("invalid query string {raw:?}: {e}")))
}

/// The `error` codes of the admin API (SPEC §5.2).
pub const ERROR_CODES: [&str; 7] = [
    BAD_REQUEST,
    UNAUTHORIZED,
    NOT_FOUND,
    CONFLICT,
    METHOD_NOT_ALLOWED,
    TOO_MANY_REQUESTS,
    INTERNAL,
];
const BAD_REQUEST: &str = "invalid_request";
const UNAUTHORIZED: &str = "unauthorized";
const NOT_FOUND: &str = "not_found";
const CONFLICT: &str = "conflict";
const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// Too many failed console sign-ins from one address ([`crate::console`]).
const TOO_MANY_REQUESTS: &str = "too_many_requests";
const INTERNAL: &str = "internal";

/// An admin API failure: `status` with `{"error":<code>,"detail":…}`,
/// the code one of [`ERROR_CODES`].
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

/// The body of an [`AdminError`].
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    detail: &'a str,
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
        Self::new(StatusCode::BAD_REQUEST, BAD_REQUEST, detail)
    }

    /// 401 `unauthorized`.
    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED, detail)
    }

    /// 429 `too_many_requests`.
    pub(crate) fn too_many_requests(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, TOO_MANY_REQUESTS, detail)
    }
}

impl From<CatalogError> for AdminError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound(what) => AdminError::new(StatusCode::NOT_FOUND, NOT_FOUND, what),
            CatalogError::Conflict(why) => AdminError::new(StatusCode::CONFLICT, CONFLICT, why),
            CatalogError::Invalid(why) => AdminError::invalid(why),
            CatalogError::Store(e) => {
                tracing::error!(error = %e, "admin change failed in the store");
                AdminError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    INTERNAL,
                    "the store failed; nothing was changed",
                )
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            detail: &self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

type AdminResult = Result<Response, AdminError>;

/// The admin API's guard: `Authorization: Bearer <admin token>`, or a
/// console session (its cookie and `X-CSRF-Token`, [`crate::console::authorize`]);
/// anything else is a 401.
async fn require_admin(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    if bearer_token(request.headers()).is_some_and(|t| tokens::matches(t, &state.admin_token_hash)) {
        return next.run(request).await;
    }
    match crate::console::authorize(&state, request.headers()) {
        Ok(true) => next.run(request).await,
        Ok(false) => AdminError::unauthorized("a valid admin token is required").into_response(),
        Err(why) => AdminError::unauthorized(why).into_response(),
    }
}

/// Parses a JSON body into `T`, refusing unknown fields with a clear detail.
pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::invalid(format!("invalid JSON body: {e}")))
}

/// Limits to change (SPEC §3); each at least 1.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LimitsPatch {
    export_per_hour: Option<u32>,
    export_concurrency: Option<u32>,
    events_per_minute: Option<u64>,
    identities_per_minute: Option<u32>,
    profiles_per_minute: Option<u32>,
}

/// A service to create, or the settings to change (SPEC §5.2); every
/// field optional. `export_lookback_days`: 0 (unlimited) to 36,500.
#[derive(Debug, Default, Deserialize, ToSchema)]
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
    ServiceId::parse(&id).map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, e.to_string()))
}

/// Path parameters of a service's endpoints.
const SERVICE_ID: &str = "The service's id.";

/// `201` to `POST /admin/v1/services`: the service, with its two tokens,
/// shown this once.
#[derive(Serialize, ToSchema)]
struct ServiceCreated {
    #[serde(flatten)]
    service: Service,
    import_token: String,
    export_token: String,
}

/// `GET /admin/v1/services`.
#[derive(Serialize, ToSchema)]
struct ServiceList {
    services: Vec<Service>,
}

/// `POST …/tokens/{kind}/reissue`: the new token, shown this once, and
/// until when the previous one still works (RFC 3339 UTC; `null` when
/// there was none).
#[derive(Serialize, ToSchema)]
struct Reissued {
    token: String,
    #[schema(format = DateTime)]
    previous_valid_until: Option<String>,
}

/// `DELETE …/tokens/{kind}`: how many tokens were revoked.
#[derive(Serialize, ToSchema)]
struct Revoked {
    revoked: usize,
}

/// `POST …/taxonomy`: the names that were new, and the whole taxonomy.
#[derive(Serialize, ToSchema)]
struct TaxonomyAdded {
    added: TaxonomyDoc,
    taxonomy: TaxonomyDoc,
}

/// `GET …/requests`: the request log, newest first.
#[derive(Serialize, ToSchema)]
struct RequestList {
    requests: Vec<RequestLogEntry>,
}

/// `GET …/audiences`.
#[derive(Serialize, ToSchema)]
struct AudienceList {
    audiences: Vec<Audience>,
}

/// `DELETE …/audiences/{aid}`: the id deleted.
#[derive(Serialize, ToSchema)]
struct AudienceDeleted {
    deleted: String,
}

/// A token kind in a path: `import` or `export`.
#[derive(ToSchema)]
#[allow(dead_code)] // only a schema: the handler reads a string, for a 404 in the admin dialect
enum TokenKindName {
    #[schema(rename = "import")]
    Import,
    #[schema(rename = "export")]
    Export,
}

#[utoipa::path(
    post,
    path = "/admin/v1/services",
    tag = crate::openapi::ADMIN_TAG,
    request_body(content = Option<ServicePatch>, description = "May be absent or empty: a generated id and the defaults."),
    responses(
        (status = 201, description = "Created.", body = ServiceCreated),
        (status = 409, description = "`conflict`: the id exists.", body = crate::openapi::AdminErrorBody),
    ),
    security(("admin_token" = []))
)]
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
    let created = ServiceCreated {
        service,
        import_token,
        export_token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/v1/services",
    tag = crate::openapi::ADMIN_TAG,
    responses((status = 200, description = "Every service.", body = ServiceList)),
    security(("admin_token" = []))
)]
async fn list_services(State(state): State<SharedState>) -> AdminResult {
    let services = state.catalog.services();
    Ok(Json(ServiceList { services }).into_response())
}

fn find(state: &SharedState, id: &str) -> Result<crate::catalog::ServiceView, AdminError> {
    state
        .catalog
        .service(id)
        .ok_or_else(|| CatalogError::no_service(id).into())
}

#[utoipa::path(
    get,
    path = "/admin/v1/services/{id}",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    responses((status = 200, description = "The service.", body = Service)),
    security(("admin_token" = []))
)]
async fn get_service(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    Ok(Json(find(&state, &id)?.service).into_response())
}

#[utoipa::path(
    patch,
    path = "/admin/v1/services/{id}",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    request_body(content = ServicePatch, description = "The settings to change; `service_id`, if given, must be the same."),
    responses((status = 200, description = "The service as changed.", body = Service)),
    security(("admin_token" = []))
)]
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
    Ok(Json(service).into_response())
}

fn token_kind(kind: &str) -> Result<TokenKind, AdminError> {
    TokenKind::parse(kind).ok_or_else(|| {
        AdminError::new(
            StatusCode::NOT_FOUND,
            NOT_FOUND,
            format!("no token kind {kind:?}; use import or export"),
        )
    })
}

#[utoipa::path(
    post,
    path = "/admin/v1/services/{id}/tokens/{kind}/reissue",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = ServiceId, Path, description = SERVICE_ID),
        ("kind" = inline(TokenKindName), Path, description = "Which token."),
    ),
    responses(
        (status = 200, description = "The new token; the previous one works for 14 more days.", body = Reissued),
        (status = 409, description = "`conflict`: within the cool-down after the last reissue.", body = crate::openapi::AdminErrorBody),
    ),
    security(("admin_token" = []))
)]
async fn reissue_token(
    State(state): State<SharedState>,
    AdminPath((id, kind)): AdminPath<(ServiceId, String)>,
) -> AdminResult {
    let kind = token_kind(&kind)?;
    let reissued = state.catalog.reissue(&id, kind, state.clock.now()).await?;
    let previous_valid_until = reissued
        .previous_valid_until
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Ok(Json(Reissued {
        token: reissued.token,
        previous_valid_until,
    })
    .into_response())
}

#[utoipa::path(
    delete,
    path = "/admin/v1/services/{id}/tokens/{kind}",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = ServiceId, Path, description = SERVICE_ID),
        ("kind" = inline(TokenKindName), Path, description = "Which token."),
    ),
    responses((status = 200, description = "The current and any previous token no longer work.", body = Revoked)),
    security(("admin_token" = []))
)]
async fn revoke_token(
    State(state): State<SharedState>,
    AdminPath((id, kind)): AdminPath<(ServiceId, String)>,
) -> AdminResult {
    let kind = token_kind(&kind)?;
    let revoked = state.catalog.revoke(&id, kind, state.clock.now()).await?;
    Ok(Json(Revoked { revoked }).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/v1/services/{id}/taxonomy",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    responses((status = 200, description = "The registered names and types, with `df_items`.", body = TaxonomyDoc)),
    security(("admin_token" = []))
)]
async fn get_taxonomy(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    Ok(Json(find(&state, &id)?.taxonomy.to_listing()).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/v1/services/{id}/taxonomy",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    request_body(content = TaxonomyDoc, description = "Names to register; registering a known name with its type is a no-op."),
    responses(
        (status = 200, description = "What was new, and the whole taxonomy.", body = TaxonomyAdded),
        (status = 409, description = "`conflict`: a known name with another type.", body = crate::openapi::AdminErrorBody),
    ),
    security(("admin_token" = []))
)]
async fn add_taxonomy(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    AdminBody(body): AdminBody,
) -> AdminResult {
    let doc: TaxonomyDoc = parse(&body)?;
    let added = state.catalog.register(&id, &doc).await?;
    let taxonomy = find(&state, &id)?.taxonomy.to_listing();
    Ok(Json(TaxonomyAdded { added, taxonomy }).into_response())
}

/// The most request-log entries one call returns.
const MAX_REQUESTS: usize = 10_000;

/// `?limit=N` of the request log: 1 to [`MAX_REQUESTS`] (default 100).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsQuery {
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/admin/v1/services/{id}/requests",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = ServiceId, Path, description = SERVICE_ID),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "How many entries, newest first: 1 to 10,000; default 100."),
    ),
    responses((status = 200, description = "The request log; never a token.", body = RequestList)),
    security(("admin_token" = []))
)]
async fn requests(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    RawQuery(raw): RawQuery,
) -> AdminResult {
    let q: RequestsQuery = query(raw.as_deref())?;
    find(&state, &id)?;
    state.log.flush().await;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_REQUESTS).contains(&limit) {
        return Err(AdminError::invalid(format!(
            "limit must be 1 to {MAX_REQUESTS}, not {limit}"
        )));
    }
    let requests = state.store.recent_requests(&id, limit).await.map_err(|e| {
        tracing::error!(error = %e, "reading the request log failed");
        AdminError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            INTERNAL,
            "the request log could not be read",
        )
    })?;
    Ok(Json(RequestList { requests }).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/v1/services/{id}/audiences",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    responses((status = 200, description = "The service's audiences.", body = AudienceList)),
    security(("admin_token" = []))
)]
async fn list_audiences(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    let audiences = state
        .catalog
        .audiences(&id)
        .ok_or_else(|| CatalogError::no_service(&id))?;
    Ok(Json(AudienceList { audiences }).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/v1/services/{id}/audiences",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    request_body(content = Audience, description = "`external_ids` (a static list) or `rule`; `id` optional (6 lowercase letters or digits, generated when absent)."),
    responses(
        (status = 201, description = "Created.", body = Audience),
        (status = 409, description = "`conflict`: the id exists.", body = crate::openapi::AdminErrorBody),
    ),
    security(("admin_token" = []))
)]
async fn create_audience(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    AdminBody(body): AdminBody,
) -> AdminResult {
    let audience: Audience = parse(&body)?;
    let created = state.catalog.create_audience(&id, audience).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(
    delete,
    path = "/admin/v1/services/{id}/audiences/{aid}",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = ServiceId, Path, description = SERVICE_ID),
        ("aid" = String, Path, description = "The audience's id."),
    ),
    responses((status = 200, description = "Deleted.", body = AudienceDeleted)),
    security(("admin_token" = []))
)]
async fn delete_audience(
    State(state): State<SharedState>,
    AdminPath((id, aid)): AdminPath<(ServiceId, String)>,
) -> AdminResult {
    state.catalog.delete_audience(&id, &aid).await?;
    Ok(Json(AudienceDeleted { deleted: aid }).into_response())
}
