//! The application state every handler shares, built once from [`Config`],
//! and the small request helpers both API dialects use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use fineport_store::{RequestLogEntry, Store};
use http_body_util::BodyExt;

use crate::catalog::{Catalog, TokenPolicy};
use crate::clock::Clock;
use crate::limits::Limiter;
use crate::metrics::{Metrics, MetricsAccess};
use crate::request_log::RequestLog;

/// Server settings that are not about where to listen or store.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest Export API request body.
    pub export_body_limit: usize,
    /// Largest Import API request body.
    pub import_body_limit: usize,
    /// How long a client may take to send its request body.
    pub body_timeout: Duration,
    /// How long a connection may take to send a request's headers, idle
    /// keep-alive time included; then it is closed.
    pub header_timeout: Duration,
    /// How long a write to a connection may wait for the socket to accept
    /// any byte (the client is not reading); then the connection is closed.
    /// Reset by every byte accepted, so a slow but live reader is not cut.
    pub write_timeout: Duration,
    /// Connections open at once; the accept loop waits for one to close
    /// before it accepts another (the kernel's backlog holds the rest).
    pub max_connections: usize,
    /// How long requests in flight get to finish after the shutdown signal;
    /// then their connections are closed (an export mid-stream ends without
    /// its final chunk) and [`serve`](crate::serve) returns.
    pub shutdown_timeout: Duration,
    pub token_policy: TokenPolicy,
    /// How often the request log is written to the store.
    pub log_flush_every: Duration,
    /// How often the whole catalog is read again from a store that other
    /// replicas share ([`crate::sync`]): the safety net behind the store's
    /// change announcements, which bring each change within a second. Not
    /// used on a store only this process opens (DuckDB).
    pub catalog_refresh_every: Duration,
    /// Who may read `/metrics` (by default: the admin token).
    pub metrics_access: MetricsAccess,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            export_body_limit: 64 * 1024,
            import_body_limit: 4 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(30),
            token_policy: TokenPolicy::default(),
            log_flush_every: Duration::from_millis(500),
            catalog_refresh_every: Duration::from_secs(10),
            metrics_access: MetricsAccess::default(),
        }
    }
}

pub struct AppState {
    /// The store behind [`crate::metrics::store::MeteredStore`].
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    pub limiter: Arc<dyn Limiter>,
    pub clock: Arc<dyn Clock>,
    pub log: RequestLog,
    /// This server's metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    pub config: Config,
    /// SHA-256 of the admin token.
    pub admin_token_hash: String,
    /// The web console's sign-in sessions, in this process's memory.
    pub sessions: crate::console::session::Sessions,
}

pub type SharedState = Arc<AppState>;

/// Who sent a request, for the request log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub ip: String,
    pub user_agent: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        let user_agent = header_str(&parts.headers, "user-agent")
            .unwrap_or_default()
            .chars()
            .take(256)
            .collect();
        Ok(Caller { ip, user_agent })
    }
}

impl Caller {
    /// A request-log entry for this caller's request, outcome still unknown.
    /// The `service_id` it names goes into the request's span at once, so
    /// that every line logged while it runs says which service it is for.
    pub fn log_entry(
        &self,
        endpoint: &str,
        service_id: Option<&str>,
        time: chrono::DateTime<chrono::Utc>,
    ) -> RequestLogEntry {
        if let Some(id) = service_id {
            // As a string: the log escapes it (it is whatever the client sent).
            tracing::Span::current().record("service_id", id);
        }
        RequestLogEntry {
            time,
            service_id: service_id.unwrap_or_default().to_owned(),
            endpoint: endpoint.to_owned(),
            status: 0,
            message: String::new(),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            token_id: None,
            rows: None,
            bytes: None,
            duration_ms: 0,
        }
    }
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The token of an `Authorization: Bearer <token>` header (SPEC §2.1,
/// §5.2). The scheme name is case-insensitive (RFC 9110 §11.1: `Bearer`,
/// `bearer`, `BEARER`); it is followed by spaces and exactly one token with
/// no whitespace in it. `None` for a missing header, another scheme, no
/// token or more than one word after the scheme.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, "authorization")?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    let one_token = !token.is_empty() && !token.contains(|c: char| c.is_ascii_whitespace());
    (scheme.eq_ignore_ascii_case("bearer") && one_token).then_some(token)
}

/// Checks that a request says its body is JSON, as DFINERY requires of
/// every Export and Import API call: `Content-Type: application/json`, in
/// any letter case, parameters such as `charset=utf-8` allowed. A missing
/// or other media type is refused (the caller answers in its dialect), so
/// that a script that would fail against DFINERY fails here first.
pub fn require_json(headers: &HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get("content-type") else {
        return Err("the Content-Type header is missing; send Content-Type: application/json".into());
    };
    let media_type = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(format!(
            "Content-Type {:?} is not application/json",
            String::from_utf8_lossy(value.as_bytes())
        ))
    }
}

/// `service_id` from a raw query string, if present and non-empty.
pub fn service_id_param(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default()).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "service_id")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge(usize),
    Unreadable(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(limit) => write!(f, "the request body is larger than {limit} bytes"),
            BodyError::Unreadable(e) => write!(f, "the request body could not be read: {e}"),
        }
    }
}

impl BodyError {
    /// The body did not arrive within `timeout`.
    fn timed_out(timeout: Duration) -> Self {
        BodyError::Unreadable(format!("not received within {}s", timeout.as_secs()))
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::timed_out(timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(BodyError::TooLarge(limit))
            } else {
                Err(BodyError::Unreadable(e.to_string()))
            }
        }
    }
}

/// Reads and discards a request body of at most `limit` bytes within
/// `timeout`, for a request refused before its body was read.
///
/// Answering without reading the body would leave it on the wire in front
/// of the client's next request, and the connection could not be reused.
/// A body that is declared larger than `limit` is not read at all. A body
/// that cannot be read to its end (too large, too slow) is left, logged at
/// debug level, and the connection middleware answers `Connection: close`
/// ([`connection::close_unless_body_read`](crate::connection::close_unless_body_read)).
pub async fn drain_body(body: Body, limit: usize, timeout: Duration) {
    if let Err(e) = try_drain_body(body, limit, timeout).await {
        tracing::debug!(error = %e, "the body of a refused request was not read");
    }
}

async fn try_drain_body(body: Body, limit: usize, timeout: Duration) -> Result<(), BodyError> {
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    let drain = async move {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len());
                if seen > limit {
                    return Err(BodyError::TooLarge(limit));
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, drain)
        .await
        .unwrap_or_else(|_| Err(BodyError::timed_out(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_takes_exactly_one_token() {
        let token = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", value.parse().expect("header value"));
            bearer_token(&headers).map(str::to_owned)
        };
        for ok in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "bEaReR abc",
            "Bearer  abc",
            "Bearer abc ",
        ] {
            assert_eq!(token(ok).as_deref(), Some("abc"), "{ok:?}");
        }
        for refused in [
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearerabc",
            "Bearer abc def",
            "Token abc",
            "abc",
        ] {
            assert_eq!(token(refused), None, "{refused:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn json_is_required_as_the_content_type() {
        let check = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert("content-type", v.parse().expect("header value"));
            }
            require_json(&headers)
        };
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;x=y",
        ] {
            assert_eq!(check(Some(ok)), Ok(()), "{ok:?}");
        }
        for refused in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/jsonx"),
            Some(""),
        ] {
            assert!(check(refused).is_err(), "{refused:?}");
        }
    }
}
