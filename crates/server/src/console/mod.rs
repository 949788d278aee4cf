//! The web console at `/console`: a single-page app for the people who run
//! fineport, served by the binary itself, and its sign-in sessions.
//!
//! - The app is three static files under `crates/server/console/`
//!   (`index.html`, `app.css`, `app.js`: vanilla HTML, CSS and JavaScript,
//!   no build step), embedded with `include_str!` and served with their
//!   content types, `Cache-Control: no-cache` (a browser revalidates, so
//!   an upgraded binary's console is picked up at once) and a strict
//!   `Content-Security-Policy` ([`CSP`]): only this origin's script and
//!   style, no inline script or style, no framing. The app calls the
//!   admin API itself (`/admin/v1/…`), so there is one way to do a thing.
//! - Sign-in trades the admin token for a session ([`session`]):
//!   `POST /console/session` sets the cookie `fineport_console` (a random
//!   id; `HttpOnly`, `SameSite=Strict`, `Path=/`, `Max-Age`; never the
//!   token) and answers the session's CSRF token; `GET /console/session`
//!   gives the CSRF token again after a reload; `DELETE` signs out.
//! - The admin API accepts the cookie together with `X-CSRF-Token: <the
//!   session's CSRF token>` on every request, GET included, as it accepts
//!   `Authorization: Bearer <admin token>` ([`authorize`], called by the
//!   admin API's guard). A cookie alone is refused.

pub mod session;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin::{AdminBody, AdminError};
use crate::state::{header_str, Caller, SharedState};
use crate::tokens;

/// The cookie that carries the session id.
pub const COOKIE: &str = "fineport_console";
/// The header that carries the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The path of the session endpoints.
pub const SESSION_PATH: &str = "/console/session";
/// How long a failed sign-in waits before it is answered.
pub const FAILED_SIGN_IN_DELAY: Duration = Duration::from_millis(500);

/// The policy of every console page: scripts, styles and fetches from this
/// origin only; no inline script or style, no plugins, no framing, forms
/// post nowhere else. Charts are SVG elements the script makes.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// The console's routes: its files, and the session endpoints with their
/// OpenAPI operations.
pub fn routes() -> (axum::Router<SharedState>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::new()
        .routes(routes!(create_session, read_session, delete_session))
        .split_for_parts();
    let router = router
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/app.css", get(app_css))
        .method_not_allowed_fallback(crate::admin::method_not_allowed);
    (router, doc)
}

/// A console file with its type and the headers every console page carries.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Whether a request is made within a console session: the session cookie
/// names a live session and `X-CSRF-Token` carries its CSRF token. `Err`
/// says what is missing, for the 401's detail; `Ok(false)` when the
/// request has no session cookie at all.
pub fn authorize(state: &SharedState, headers: &HeaderMap) -> Result<bool, &'static str> {
    let Some(id) = cookie(headers, COOKIE) else {
        return Ok(false);
    };
    let now = state.clock.now();
    if state.sessions.find(id, now).is_none() {
        return Err("the console session has expired or ended; sign in again");
    }
    let Some(csrf) = header_str(headers, CSRF_HEADER) else {
        return Err("a console session needs its X-CSRF-Token header");
    };
    if state.sessions.verify(id, csrf, now) {
        Ok(true)
    } else {
        Err("the X-CSRF-Token header does not match the console session")
    }
}

/// The body of `POST /console/session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The admin token (`FINEPORT_ADMIN_TOKEN`).
    pub token: String,
}

/// A console session, as its client needs it.
#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    /// The value every admin API request of this session must carry in
    /// `X-CSRF-Token`: 64 hex digits.
    pub csrf_token: String,
    /// When the session ends, RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

impl SessionInfo {
    fn new(s: &session::Issued) -> Self {
        SessionInfo {
            csrf_token: s.csrf_token.clone(),
            expires_at: s.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// A JSON answer that no cache may keep.
fn no_store(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn set_cookie(response: &mut Response, value: &str, max_age: i64) {
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
}

#[utoipa::path(
    post,
    path = SESSION_PATH,
    tag = crate::openapi::CONSOLE_TAG,
    request_body(content = SignIn, description = "The admin token."),
    responses(
        (status = 200, description = "Signed in: the session's CSRF token and expiry. `Set-Cookie: fineport_console=<session id>; Path=/; HttpOnly; SameSite=Strict; Max-Age=<seconds>`.",
            body = SessionInfo,
            headers(("Set-Cookie" = String, description = "The session cookie."))),
        (status = 400, description = "`invalid_request`: the body is not `{\"token\":…}`.", body = crate::openapi::AdminErrorBody),
        (status = 401, description = "`unauthorized`: not the admin token (answered after a short delay).", body = crate::openapi::AdminErrorBody),
        (status = 429, description = "`too_many_requests`: too many failed sign-ins from this address lately.", body = crate::openapi::AdminErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait at most (the failure window's length)."))),
    )
)]
async fn create_session(
    State(state): State<SharedState>,
    caller: Caller,
    AdminBody(body): AdminBody,
) -> Result<Response, AdminError> {
    let ip = caller.ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let now = state.clock.now();
    if !state.sessions.may_try(ip, now) {
        let mut response =
            AdminError::too_many_requests("too many failed sign-ins from this address; wait a minute").into_response();
        // The window's whole length: an upper bound of the wait.
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(session::FAILURE_WINDOW.num_seconds()),
        );
        return Ok(response);
    }
    let sign_in: SignIn = crate::admin::parse(&body)?;
    if !tokens::matches(&sign_in.token, &state.admin_token_hash) {
        state.sessions.failed(ip, now);
        tokio::time::sleep(FAILED_SIGN_IN_DELAY).await;
        return Err(AdminError::unauthorized("that is not the admin token"));
    }
    let issued = state.sessions.create(now);
    let mut response = no_store(StatusCode::OK, Json(SessionInfo::new(&issued)));
    set_cookie(&mut response, &issued.id, session::SESSION_LIFETIME.num_seconds());
    Ok(response)
}

#[utoipa::path(
    get,
    path = SESSION_PATH,
    tag = crate::openapi::CONSOLE_TAG,
    params(("fineport_console" = Option<String>, Cookie, description = "The session id, set at sign-in.")),
    responses(
        (status = 200, description = "The session the cookie names: its CSRF token and expiry.", body = SessionInfo),
        (status = 401, description = "`unauthorized`: no cookie, or the session has expired or ended.", body = crate::openapi::AdminErrorBody),
    )
)]
async fn read_session(State(state): State<SharedState>, headers: HeaderMap) -> Result<Response, AdminError> {
    let found = cookie(&headers, COOKIE).and_then(|id| state.sessions.find(id, state.clock.now()));
    match found {
        Some(s) => Ok(no_store(StatusCode::OK, Json(SessionInfo::new(&s)))),
        None => Err(AdminError::unauthorized("no console session; sign in")),
    }
}

#[utoipa::path(
    delete,
    path = SESSION_PATH,
    tag = crate::openapi::CONSOLE_TAG,
    params(
        ("fineport_console" = Option<String>, Cookie, description = "The session id, set at sign-in."),
        ("X-CSRF-Token" = Option<String>, Header, description = "The session's CSRF token."),
    ),
    responses(
        (status = 204, description = "Signed out: the session is forgotten and the cookie cleared (`Max-Age=0`).",
            headers(("Set-Cookie" = String, description = "The cleared cookie."))),
        (status = 401, description = "`unauthorized`: no live session, or no matching `X-CSRF-Token`.", body = crate::openapi::AdminErrorBody),
    )
)]
async fn delete_session(State(state): State<SharedState>, headers: HeaderMap) -> Result<Response, AdminError> {
    match authorize(&state, &headers) {
        Ok(true) => {}
        Ok(false) => return Err(AdminError::unauthorized("no console session; sign in")),
        Err(why) => return Err(AdminError::unauthorized(why)),
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        state.sessions.remove(id);
    }
    let mut response = no_store(StatusCode::NO_CONTENT, ());
    set_cookie(&mut response, "", 0);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; fineport_console=abc ; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "fineport"), None);
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("x=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("fineport_console=\"q\""));
        assert_eq!(cookie(&headers, COOKIE), Some("q"));
    }
}
