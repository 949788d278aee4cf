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
use fineport_store::{Limits, RequestLogEntry, Service, TokenKind, TokenRecord, MAX_TOKEN_REASON_CHARS};
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
        .routes(routes!(timezones))
        .routes(routes!(create_service, list_services))
        .routes(routes!(get_service, patch_service))
        .routes(routes!(list_tokens))
        .routes(routes!(reissue_token))
        .routes(routes!(revoke_token))
        .routes(routes!(get_taxonomy, add_taxonomy))
        .routes(routes!(requests))
        .routes(routes!(stats))
        .routes(routes!(crate::export::admin_export_event))
        .routes(routes!(crate::export::admin_export_userprofile))
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
    #[schema(value_type = Option<ServiceId>)]
    service_id: Option<String>,
    name: Option<String>,
    timezone: Option<String>,
    /// Kept equal to [`MAX_LOOKBACK_DAYS`] by `tests/openapi.rs`.
    #[schema(maximum = 36500)]
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

/// The optional body of `POST …/tokens/{kind}/reissue`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReissueBody {
    /// Why the token is reissued, kept with the new token and shown in the
    /// token list: at most 500 characters.
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// Where a token stands now.
#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum TokenState {
    /// Works, with no end set.
    Active,
    /// Replaced by a newer token; works until `valid_until`.
    Grace,
    /// Replaced, and its grace period is over.
    Expired,
    /// Revoked: never works again.
    Revoked,
}

/// One token of a service, as `GET …/tokens` lists it: never its value or hash.
#[derive(Serialize, ToSchema)]
struct TokenInfo {
    /// The token's public id, as the request log shows it (`tok_…`).
    token_id: String,
    #[schema(value_type = TokenKindName)]
    kind: &'static str,
    /// When it was issued (RFC 3339 UTC).
    #[schema(format = DateTime)]
    created_at: String,
    /// When a newer token replaced it: the end of its grace period (RFC
    /// 3339 UTC); `null` while it is the current token.
    #[schema(format = DateTime)]
    valid_until: Option<String>,
    revoked: bool,
    state: TokenState,
    /// The reason given when it was reissued; `null` if none was.
    reason: Option<String>,
}

impl TokenInfo {
    fn of(t: &TokenRecord, now: chrono::DateTime<chrono::Utc>) -> TokenInfo {
        let state = match t.valid_until {
            _ if t.revoked => TokenState::Revoked,
            None => TokenState::Active,
            Some(until) if now < until => TokenState::Grace,
            Some(_) => TokenState::Expired,
        };
        let rfc3339 = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        TokenInfo {
            token_id: t.token_id.clone(),
            kind: t.kind.as_str(),
            created_at: rfc3339(t.created_at),
            valid_until: t.valid_until.map(rfc3339),
            revoked: t.revoked,
            state,
            reason: t.reason.clone(),
        }
    }
}

/// `GET …/tokens`: the service's tokens, newest first.
#[derive(Serialize, ToSchema)]
struct TokenList {
    tokens: Vec<TokenInfo>,
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

/// An audience as `GET …/audiences` lists it: its definition and its size.
#[derive(Serialize, ToSchema)]
struct AudienceInfo {
    /// The audience's fields, as `POST …/audiences` answers them (its
    /// schema, `Audience`, admits no other field, so it is not referenced here).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    audience: Audience,
    /// How many profiles are in the audience now (the rows its profile
    /// export would have); `null` when it cannot be evaluated (a rule that
    /// names what the taxonomy no longer types the same way).
    size: Option<u64>,
}

/// `GET …/audiences`.
#[derive(Serialize, ToSchema)]
struct AudienceList {
    audiences: Vec<AudienceInfo>,
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

/// `GET /admin/v1/timezones`.
#[derive(Serialize, ToSchema)]
struct TimezoneList {
    /// Every IANA name a service's `timezone` may be, sorted.
    timezones: Vec<&'static str>,
}

#[utoipa::path(
    get,
    path = "/admin/v1/timezones",
    tag = crate::openapi::ADMIN_TAG,
    responses((status = 200, description = "Every timezone name a service accepts (IANA), sorted.", body = TimezoneList)),
    security(("admin_token" = []))
)]
async fn timezones() -> AdminResult {
    let timezones = fineport_contract::time::timezone_names();
    Ok(Json(TimezoneList { timezones }).into_response())
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
    get,
    path = "/admin/v1/services/{id}/tokens",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    responses((status = 200, description = "Every token the service has had, newest first; never a token's value.", body = TokenList)),
    security(("admin_token" = []))
)]
async fn list_tokens(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    let now = state.clock.now();
    let tokens = state
        .catalog
        .tokens(&id)
        .ok_or_else(|| CatalogError::no_service(&id))?
        .iter()
        .map(|t| TokenInfo::of(t, now))
        .collect();
    Ok(Json(TokenList { tokens }).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/v1/services/{id}/tokens/{kind}/reissue",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = ServiceId, Path, description = SERVICE_ID),
        ("kind" = inline(TokenKindName), Path, description = "Which token."),
    ),
    request_body(content = Option<ReissueBody>, description = "May be absent or empty: no reason."),
    responses(
        (status = 200, description = "The new token; the previous one works for 14 more days.", body = Reissued),
        (status = 409, description = "`conflict`: within the cool-down after the last reissue.", body = crate::openapi::AdminErrorBody),
    ),
    security(("admin_token" = []))
)]
async fn reissue_token(
    State(state): State<SharedState>,
    AdminPath((id, kind)): AdminPath<(ServiceId, String)>,
    AdminBody(body): AdminBody,
) -> AdminResult {
    let kind = token_kind(&kind)?;
    let ReissueBody { reason } = if body.is_empty() {
        ReissueBody::default()
    } else {
        parse(&body)?
    };
    if let Some(r) = &reason {
        let chars = r.chars().count();
        if chars > MAX_TOKEN_REASON_CHARS {
            return Err(AdminError::invalid(format!(
                "reason must be at most {MAX_TOKEN_REASON_CHARS} characters, not {chars}"
            )));
        }
    }
    let reason = reason.filter(|r| !r.is_empty());
    let reissued = state.catalog.reissue(&id, kind, state.clock.now(), reason).await?;
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

/// `?limit=N&outcome=M` of the request log: 1 to [`MAX_REQUESTS`]
/// (default 100) entries, only those whose `message` is `M` when given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsQuery {
    limit: Option<usize>,
    outcome: Option<String>,
}

#[utoipa::path(
    get,
    path = "/admin/v1/services/{id}/requests",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = ServiceId, Path, description = SERVICE_ID),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "How many entries, newest first: 1 to 10,000; default 100."),
        ("outcome" = Option<String>, Query, description = "Only the entries whose `message` is exactly this (`ok`, `invalid_parameter`, `40001`, …), filtered before the limit."),
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
    let requests = state
        .store
        .recent_requests(&id, limit, q.outcome.as_deref())
        .await
        .map_err(log_unreadable)?;
    Ok(Json(RequestList { requests }).into_response())
}

/// A request log that could not be read: logged, and a 500 `internal`.
fn log_unreadable(e: fineport_store::StoreError) -> AdminError {
    tracing::error!(error = %e, "reading the request log failed");
    AdminError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        INTERNAL,
        "the request log could not be read",
    )
}

/// `?hours=H&days=D` of `GET …/stats`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    hours: Option<u32>,
    days: Option<u32>,
}

/// One hour of `GET …/stats`.
#[derive(Serialize, ToSchema)]
struct HourStats {
    /// The hour's start (RFC 3339 UTC).
    #[schema(format = DateTime)]
    hour: String,
    /// Export and Import API requests logged in the hour, whatever their outcome.
    requests: u64,
    /// Rows of the exports that completed (`ok`) in the hour.
    export_rows: u64,
}

/// One day (in the service's timezone) of `GET …/stats`.
#[derive(Serialize, ToSchema)]
struct DayStats {
    /// `yyyy-MM-dd` in the service's timezone.
    #[schema(format = Date)]
    day: String,
    /// Events stored that day: the `rows` of `/api/v1/events` requests answered `ok`.
    events: u64,
}

/// `GET …/stats`: every hour of the last `hours` and every day of the last
/// `days`, oldest first, zeros included.
#[derive(Serialize, ToSchema)]
struct Stats {
    hourly: Vec<HourStats>,
    daily: Vec<DayStats>,
}

/// The request log's endpoints of the Export API.
const EXPORT_ENDPOINTS: [&str; 2] = [crate::export::EVENT_ENDPOINT, crate::export::PROFILE_ENDPOINT];

/// The request log's endpoints of the Import API.
const IMPORT_ENDPOINTS: [&str; 4] = [
    crate::import::EVENTS_ENDPOINT,
    crate::import::IDENTITIES_ENDPOINT,
    crate::import::IDENTITIES_DELETE_ENDPOINT,
    crate::import::USER_PROFILE_ENDPOINT,
];

#[utoipa::path(
    get,
    path = "/admin/v1/services/{id}/stats",
    tag = crate::openapi::ADMIN_TAG,
    params(
        ("id" = ServiceId, Path, description = SERVICE_ID),
        ("hours" = Option<u32>, Query, minimum = 1, maximum = 720, description = "How many hours, the current one last: 1 to 720; default 48."),
        ("days" = Option<u32>, Query, minimum = 1, maximum = 366, description = "How many days of the service's timezone, today last: 1 to 366; default 30."),
    ),
    responses((status = 200, description = "Requests and exported rows per hour, events stored per day, from the request log.", body = Stats)),
    security(("admin_token" = []))
)]
async fn stats(
    State(state): State<SharedState>,
    AdminPath(id): AdminPath<ServiceId>,
    RawQuery(raw): RawQuery,
) -> AdminResult {
    let q: StatsQuery = query(raw.as_deref())?;
    let service = find(&state, &id)?;
    let (hours, days) = (q.hours.unwrap_or(48), q.days.unwrap_or(30));
    if !(1..=720).contains(&hours) {
        return Err(AdminError::invalid(format!("hours must be 1 to 720, not {hours}")));
    }
    if !(1..=366).contains(&days) {
        return Err(AdminError::invalid(format!("days must be 1 to 366, not {days}")));
    }
    state.log.flush().await;
    let now = state.clock.now();
    const HOUR_MS: i64 = 3_600_000;
    let this_hour = now.timestamp_millis().div_euclid(HOUR_MS) * HOUR_MS;
    let first_hour = this_hour - (i64::from(hours) - 1) * HOUR_MS;
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let hourly_query = fineport_store::RequestSumsQuery {
        bounds: (0..=i64::from(hours)).map(|h| first_hour + h * HOUR_MS).collect(),
        counted: names(&[EXPORT_ENDPOINTS.as_slice(), IMPORT_ENDPOINTS.as_slice()].concat()),
        rows_of: names(&EXPORT_ENDPOINTS),
    };
    let today = fineport_contract::time::today_in(service.timezone, now);
    let day_list: Vec<chrono::NaiveDate> = (0..days)
        .rev()
        .filter_map(|back| today.checked_sub_days(chrono::Days::new(u64::from(back))))
        .collect();
    let mut day_bounds: Vec<i64> = day_list
        .iter()
        .map(|d| fineport_contract::time::day_start_ms(*d, service.timezone))
        .collect();
    if let Some(last) = day_list.last() {
        day_bounds.push(fineport_contract::time::day_bounds_ms(*last, service.timezone).1);
    }
    let daily_query = fineport_store::RequestSumsQuery {
        bounds: day_bounds,
        counted: Vec::new(),
        rows_of: names(&[crate::import::EVENTS_ENDPOINT]),
    };
    let (hourly, daily) = futures::try_join!(
        state.store.request_sums(&id, &hourly_query),
        state.store.request_sums(&id, &daily_query)
    )
    .map_err(log_unreadable)?;
    let hourly = hourly
        .iter()
        .zip(&hourly_query.bounds)
        .map(|(sums, start)| HourStats {
            hour: chrono::DateTime::from_timestamp_millis(*start)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            requests: sums.requests,
            export_rows: sums.rows,
        })
        .collect();
    let daily = daily
        .iter()
        .zip(&day_list)
        .map(|(sums, day)| DayStats {
            day: day.to_string(),
            events: sums.rows,
        })
        .collect();
    Ok(Json(Stats { hourly, daily }).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/v1/services/{id}/audiences",
    tag = crate::openapi::ADMIN_TAG,
    params(("id" = ServiceId, Path, description = SERVICE_ID)),
    responses((status = 200, description = "The service's audiences, each with its size now.", body = AudienceList)),
    security(("admin_token" = []))
)]
async fn list_audiences(State(state): State<SharedState>, AdminPath(id): AdminPath<ServiceId>) -> AdminResult {
    let service = find(&state, &id)?;
    let audiences = state
        .catalog
        .audiences(&id)
        .ok_or_else(|| CatalogError::no_service(&id))?;
    let mut listed = Vec::with_capacity(audiences.len());
    for audience in audiences {
        let size = match audience.filter(&service.taxonomy) {
            Ok(filter) => Some(audience_size(&state, &service, &audience.id, &filter).await?),
            Err(_) => None,
        };
        listed.push(AudienceInfo { audience, size });
    }
    Ok(Json(AudienceList { audiences: listed }).into_response())
}

/// The profiles in an audience now: the rows of its profile export (the
/// unified id column only), counted as the store streams them, so every
/// backend's audience rules (and only theirs) decide.
async fn audience_size(
    state: &SharedState,
    service: &crate::catalog::ServiceView,
    audience_id: &str,
    filter: &fineport_contract::profile::AudienceFilter,
) -> Result<u64, AdminError> {
    use futures::StreamExt;
    let failed = |e: fineport_store::StoreError| {
        tracing::error!(error = %e, audience_id, "sizing an audience failed");
        AdminError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            INTERNAL,
            format!("the size of audience {audience_id:?} could not be read"),
        )
    };
    let plan = fineport_contract::profile::ProfileExportPlan {
        with_external_id: false,
        properties: Vec::new(),
        audience: Some(audience_id.to_owned()),
    };
    let mut stream = state
        .store
        .export_profiles(&service.service.service_id, service.timezone, &plan, Some(filter))
        .await
        .map_err(failed)?;
    while let Some(part) = stream.next().await {
        if let fineport_store::ExportPart::End(summary) = part.map_err(failed)? {
            return Ok(summary.rows);
        }
    }
    Err(failed(fineport_store::StoreError::internal(
        "the profile export stopped without finishing",
    )))
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
