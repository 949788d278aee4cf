//! The OpenAPI 3.1 document served at `/openapi.json`: every endpoint of
//! the Export, Import and admin APIs, generated from the code.
//!
//! Where it comes from:
//! - each handler's `#[utoipa::path]` attribute gives its method, path,
//!   parameters, request body and its own answers; the router is built from
//!   those same attributes ([`utoipa_axum`] in [`crate::router`]), so a
//!   route cannot exist without its operation nor the other way round;
//! - the admin API's bodies are the Rust types it reads and writes
//!   (`Service`, `TaxonomyDoc`, `Audience`, the request log's entries…);
//! - the DFINERY bodies (SPEC §2.1, §4) are checked by hand-written
//!   validators in `fineport_contract` for DFINERY's exact errors, so their
//!   schemas are the types below, kept true by `tests/openapi.rs` and by
//!   Schemathesis in CI, which check real answers against the document;
//! - [`complete`] adds what every operation of an API shares, built from
//!   the contract's own enums: the seven detailed responses of SPEC §2.2
//!   (each status with exactly the messages DFINERY answers with it), the
//!   import codes of SPEC §4, the `X-Rate-Limit-*` headers of SPEC §3, the
//!   admin errors of SPEC §5.2 and the three token kinds as security schemes.

use fineport_contract::export::ExportOutcome;
use fineport_contract::import::ImportCode;
use serde::Deserialize;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, OneOfBuilder, RefOr, Schema, Type};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// The path of the document itself.
pub const OPENAPI_ENDPOINT: &str = "/openapi.json";

/// Tags, one per API.
pub const EXPORT_TAG: &str = "Export API";
pub const IMPORT_TAG: &str = "Import API";
pub const ADMIN_TAG: &str = "Admin API";
pub const OPERATIONS_TAG: &str = "Operations";
pub const CONSOLE_TAG: &str = "Console";

/// Security scheme names (SPEC §2.1, §4, §5.2).
pub const EXPORT_TOKEN: &str = "export_token";
pub const IMPORT_TOKEN: &str = "import_token";
pub const ADMIN_TOKEN: &str = "admin_token";
/// The token that opens `/metrics` alone (`FINEPORT_METRICS_TOKEN`).
pub const METRICS_TOKEN: &str = "metrics_token";

/// The document's fixed parts; the operations come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fineport",
        description = "A self-hosted event store that speaks the DFINERY Open API: the Export API \
                       (streaming CSV), the Import API and fineport's admin API.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "Export API", description = "DFINERY's Export API (SPEC §2): a streaming CSV, or a detailed response."),
        (name = "Import API", description = "DFINERY's Import API (SPEC §4): HTTP 200 with a result code for every answer."),
        (name = "Admin API", description = "fineport's admin API (SPEC §5.2), behind the admin token."),
        (name = "Operations", description = "Health and the API's own description."),
        (name = "Console", description = "The web console's sign-in sessions (`/console`): the admin token traded for a cookie; \
                                          the admin API then accepts that cookie with the session's `X-CSRF-Token` header."),
    ),
    components(schemas(ImportAnswerBody, ImportProblemBody, AdminErrorBody))
)]
struct ApiDoc;

/// The fixed parts of the document, before the router adds its operations.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `all` | `include` | `exclude` (SPEC §2.1): exactly these, in lowercase.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConditionType {
    All,
    Include,
    Exclude,
}

/// The body of `POST /api/v1/export/event` (SPEC §2.1). `null` counts as
/// absent. Names must be registered in the service's taxonomy.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventExportBody {
    /// Event names for `include`/`exclude`; ignored with `all`.
    pub events: Option<Vec<String>>,
    pub events_condition_type: ConditionType,
    /// Event property names; item properties as `df_items_<prop>`, or
    /// `df_items` for all of them.
    pub properties: Option<Vec<String>>,
    /// Absent means `all`.
    pub properties_condition_type: Option<ConditionType>,
    /// First day, inclusive, `yyyy-MM-dd` in the service's timezone; no
    /// earlier than today − the look-back days.
    #[schema(format = Date)]
    pub from_date: String,
    /// Last day, inclusive, `yyyy-MM-dd`; not before `from_date`.
    #[schema(format = Date)]
    pub to_date: String,
}

/// The body of `POST /api/v1/export/userprofile` (SPEC §2.1, §2.4).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileExportBody {
    /// User property names for `include`/`exclude`.
    pub properties: Option<Vec<String>>,
    pub properties_condition_type: ConditionType,
    /// An audience id (6 lowercase letters or digits); absent = every user.
    pub audience: Option<String>,
    /// Identity columns; `df_external_id` is the only one.
    pub identities: Option<Vec<String>>,
    /// Absent means no identity column.
    pub identities_condition_type: Option<ConditionType>,
}

/// A user's identifiers (SPEC §1, §4): at least one; `df_unified_id` (a
/// UUID) alone or with `external_id` only. Strings of 1 to 256 bytes.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityBody {
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub phone_no: Option<String>,
    pub kakao_user_id: Option<String>,
    pub line_user_id: Option<String>,
    #[schema(format = "uuid")]
    pub df_unified_id: Option<String>,
}

/// What every event of a request shares.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsCommon {
    pub identity: IdentityBody,
}

/// One event (SPEC §4). Property values are typed by the taxonomy.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The idempotency key within a service.
    #[schema(format = "uuid")]
    pub event_log_id: String,
    pub event_name: String,
    /// When the event happened, an ISO-8601 date-time.
    pub event_datetime: String,
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
    /// Items, each an object of item properties; at most 100 a request.
    pub items: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
}

/// The body of `POST /api/v1/events` (SPEC §4): 1 to 100 events of one
/// user; atomic.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    pub common: EventsCommon,
    #[schema(min_items = 1, max_items = 100)]
    pub events: Vec<EventBody>,
}

/// The body of `POST /api/v1/identities` (SPEC §4).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesBody {
    pub identity: IdentityBody,
    /// An ISO-8601 date-time.
    pub request_datetime: String,
}

/// The identity of `POST /api/v1/identities/delete`: `external_id` only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalIdOnly {
    pub external_id: String,
}

/// The body of `POST /api/v1/identities/delete` (SPEC §4).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesDeleteBody {
    pub identity: ExternalIdOnly,
    pub request_datetime: String,
}

/// One profile update of `POST /api/v1/user-profile` (SPEC §4); the
/// endpoint also takes a list of up to 100 of them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserProfileBody {
    pub identity: IdentityBody,
    /// Values typed by the user-property taxonomy.
    pub user_properties: serde_json::Map<String, serde_json::Value>,
    /// An ISO-8601 date-time: an older update never overwrites a newer one.
    pub request_datetime: String,
}

/// An Export API failure body (SPEC §2.2) whose `message` is one of
/// `messages`: `{"result":"fail","message":…}`, plus fineport's
/// human-readable `detail` where it has one.
fn export_failure(messages: &[&str]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .property(
            "result",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["fail"])),
        )
        .required("result")
        .property(
            "message",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(messages.iter().copied())),
        )
        .required("message")
        .property("detail", ObjectBuilder::new().schema_type(Type::String))
        .into()
}

/// An Import API answer (SPEC §4), always with HTTP 200:
/// `{"status":bool,"code":"NNNNN","message":…,"data":…}`. `data` is `true`
/// on success, else `null` or the problems found.
#[derive(ToSchema)]
pub struct ImportAnswerBody {
    pub status: bool,
    #[schema(schema_with = import_codes)]
    pub code: String,
    #[schema(schema_with = import_messages)]
    pub message: String,
    #[schema(schema_with = import_data)]
    pub data: serde_json::Value,
}

/// One problem of a refused import: the event's index when it is about
/// one event, and why.
#[derive(ToSchema)]
pub struct ImportProblemBody {
    #[schema(minimum = 0)]
    pub index: Option<u64>,
    pub reason: String,
}

fn import_codes() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ImportCode::ALL.map(ImportCode::code)))
}

fn import_messages() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ImportCode::ALL.map(ImportCode::message)))
}

fn import_data() -> OneOfBuilder {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([true])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(utoipa::openapi::schema::ArrayBuilder::new().items(ImportProblemBody::schema()))
}

/// An admin API failure (SPEC §5.2): `{"error":"<code>","detail":"…"}`.
#[derive(ToSchema)]
pub struct AdminErrorBody {
    #[schema(schema_with = admin_error_codes)]
    pub error: String,
    pub detail: String,
}

fn admin_error_codes() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(crate::admin::ERROR_CODES))
}

/// A `$ref` to one of this document's component schemas.
fn component(name: &str) -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(name))
}

fn json_response(description: &str, schema: RefOr<Schema>) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

/// The `X-Rate-Limit-*` headers every Export and Import API answer carries
/// (SPEC §3), and `Retry-After` on a refusal.
fn rate_limit_headers(response: &mut Response, refusal: bool) {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let integer = || ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
    let headers = [
        (
            "X-Rate-Limit-Limit",
            string().enum_values(Some(["1s", "1m", "1H", "1d", "1M", "1y"])),
            "The window of the limit this answer counts against.",
        ),
        (
            "X-Rate-Limit-Remaining",
            integer(),
            "What is left in the window after this request.",
        ),
        (
            "X-Rate-Limit-Reset",
            integer(),
            "Unix time in milliseconds when the window resets.",
        ),
    ];
    for (name, schema, description) in headers {
        let header = HeaderBuilder::new()
            .schema(Some(schema))
            .description(Some(description))
            .build();
        response.headers.insert(name.into(), header.into());
    }
    if refusal {
        let header = HeaderBuilder::new()
            .schema(Some(integer()))
            .description(Some(
                "Seconds until the window resets, or 1 when only the concurrency limit refused.",
            ))
            .build();
        response.headers.insert("Retry-After".into(), header.into());
    }
}

/// The `X-Request-Id` header every answer carries
/// ([`crate::request_log::RequestId`]).
fn request_id_header(response: &mut Response) {
    let header = HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9._-]{1,64}$")),
        ))
        .description(Some(
            "The request's id in the server's log: the request's own `X-Request-Id` when it sent \
             1 to 64 letters, digits, `-`, `_` or `.`, else one the server made.",
        ))
        .build();
    response.headers.insert("X-Request-Id".into(), header.into());
}

/// Every operation of a path item, with its method.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Adds to the operations what each API shares (see the module docs):
/// responses, headers and security, by the operation's tag.
pub fn complete(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        EXPORT_TOKEN.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A service's export token: `Authorization: Bearer <token>` (SPEC §2.1).",
                ))
                .build(),
        )
        .into(),
    );
    components.security_schemes.insert(
        IMPORT_TOKEN.into(),
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "access_token",
            "A service's import token in the `access_token` header (SPEC §4).",
        )))
        .into(),
    );
    components.security_schemes.insert(
        ADMIN_TOKEN.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The admin token: `Authorization: Bearer <token>` (SPEC §5.2)."))
                .build(),
        )
        .into(),
    );
    components.security_schemes.insert(
        METRICS_TOKEN.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The token in `FINEPORT_METRICS_TOKEN`, which opens `/metrics` and nothing else: \
                     `Authorization: Bearer <token>`.",
                ))
                .build(),
        )
        .into(),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        // The admin API's exports answer in the Export API's dialect.
        let admin_export = path.starts_with("/admin/") && path.contains("/export/");
        for operation in operations(item) {
            let tag = operation.tags.as_ref().and_then(|t| t.first()).cloned();
            let responses = &mut operation.responses.responses;
            if admin_export {
                for status in [400, 429, 500] {
                    let messages: Vec<&str> = ExportOutcome::ALL
                        .iter()
                        .filter(|o| o.http_status() == status)
                        .map(|o| o.message())
                        .collect();
                    let mut response = json_response(
                        &format!(
                            "A detailed response of the Export API (SPEC §2.2): {}.",
                            messages.join(" or ")
                        ),
                        export_failure(&messages),
                    );
                    rate_limit_headers(&mut response, status == 429);
                    responses.insert(status.to_string(), response.into());
                }
            }
            match tag.as_deref() {
                Some(EXPORT_TAG) => {
                    if let Some(RefOr::T(ok)) = responses.get_mut("200") {
                        rate_limit_headers(ok, false);
                    }
                    let mut statuses: Vec<u16> = ExportOutcome::ALL
                        .iter()
                        .map(|o| o.http_status())
                        .filter(|s| *s != 200)
                        .collect();
                    statuses.dedup();
                    for status in statuses {
                        let messages: Vec<&str> = ExportOutcome::ALL
                            .iter()
                            .filter(|o| o.http_status() == status)
                            .map(|o| o.message())
                            .collect();
                        let schema = export_failure(&messages);
                        let mut response = json_response(
                            &format!("A detailed response (SPEC §2.2): {}.", messages.join(" or ")),
                            schema,
                        );
                        rate_limit_headers(&mut response, status == 429);
                        responses.insert(status.to_string(), response.into());
                    }
                }
                Some(IMPORT_TAG) => {
                    let mut response = json_response(
                        "Every answer of the Import API, success or refusal: the outcome is the `code` (SPEC §4).",
                        component("ImportAnswerBody"),
                    );
                    rate_limit_headers(&mut response, true);
                    responses.insert("200".into(), response.into());
                }
                Some(ADMIN_TAG) => {
                    for (status, why) in [
                        ("400", "`invalid_request`: a malformed body, path or query."),
                        ("401", "`unauthorized`: the admin token is missing or wrong."),
                        ("404", "`not_found`: no such service, token kind or audience."),
                        ("500", "`internal`: the store failed; nothing was changed."),
                    ] {
                        responses
                            .entry(status.into())
                            .or_insert_with(|| json_response(why, component("AdminErrorBody")).into());
                    }
                }
                _ => {}
            }
            for response in responses.values_mut() {
                if let RefOr::T(response) = response {
                    request_id_header(response);
                }
            }
        }
    }
}

/// The document as served: its JSON, serialized once.
#[derive(Clone)]
pub struct Served(std::sync::Arc<str>);

impl Served {
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        // Serializing a tree of strings, maps and numbers cannot fail.
        Served(doc.to_json().unwrap_or_default().into())
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = OPENAPI_ENDPOINT,
    tag = OPERATIONS_TAG,
    responses((status = 200, description = "The OpenAPI 3.1 document of every endpoint.", content_type = "application/json", body = Object))
)]
pub async fn openapi_json(axum::Extension(doc): axum::Extension<Served>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
        .into_response()
}
