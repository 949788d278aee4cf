//! The fineport HTTP server: the DFINERY Export and Import APIs,
//! fineport's admin API and its web console, over a [`Store`].
//!
//! The caller owns the socket and the shutdown signal (as in mini-redis):
//! build the state with [`build_state`], then [`serve`] it on a bound
//! listener until the shutdown future resolves. Tests do the same on
//! `127.0.0.1:0`.

pub mod admin;
pub mod catalog;
pub mod clock;
pub mod connection;
pub mod console;
pub mod demo;
pub mod export;
pub mod import;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod request_log;
pub mod state;
pub mod sync;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::Router;
use fineport_contract::export::{ExportFailure, ExportOutcome};
use fineport_contract::import::ImportCode;
use fineport_store::{Store, StoreError};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::export::error::ExportError;
use crate::import::ImportAnswer;
use crate::limits::Limiter;
use crate::metrics::store::MeteredStore;
use crate::metrics::Metrics;
use crate::request_log::RequestLog;
pub use crate::state::{AppState, Config, SharedState};

/// The settings key under which the admin token's hash is kept.
const ADMIN_TOKEN_KEY: &str = "admin_token_sha256";

/// The pieces a server is made of; tests swap the clock and limiter.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub limiter: Arc<dyn Limiter>,
    pub config: Config,
    /// `FINEPORT_ADMIN_TOKEN`; when absent one is generated at first start.
    pub admin_token: Option<String>,
}

/// Builds the shared state, with the store behind a [`MeteredStore`] so
/// that its every call is timed. Returns the admin token when it was
/// generated now, so the caller can print it once.
pub async fn build_state(parts: Parts) -> Result<(SharedState, Option<String>), StoreError> {
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(parts.store, metrics.clone()));
    let (admin_token_hash, generated) = match parts.admin_token {
        Some(token) => (tokens::hash(&token), None),
        None => match store.setting(ADMIN_TOKEN_KEY).await? {
            Some(hash) => (hash, None),
            None => {
                let token = tokens::generate();
                let hash = tokens::hash(&token);
                store.set_setting(ADMIN_TOKEN_KEY, &hash).await?;
                (hash, Some(token))
            }
        },
    };
    let catalog = Arc::new(Catalog::load(store.clone(), parts.config.token_policy).await?);
    let state = AppState {
        log: RequestLog::new(store.clone(), catalog.clone(), metrics.clone()),
        store,
        catalog,
        metrics,
        limiter: parts.limiter,
        clock: parts.clock,
        config: parts.config,
        admin_token_hash,
        sessions: console::session::Sessions::new(),
    };
    Ok((Arc::new(state), generated))
}

/// The whole HTTP surface. A response whose request body was not read to
/// its end carries `Connection: close` ([`connection::close_unless_body_read`]).
/// Every request has an id, answered in `x-request-id`
/// ([`request_log::RequestId`]), runs in its tracing span
/// ([`request_log::request_span`]; tower-http's own lines are at debug
/// level) and is counted by route ([`metrics::track_http`]).
pub fn router(state: SharedState) -> Router {
    api(state).0
}

/// The routes and the OpenAPI document that describes them, both built
/// from the handlers' `#[utoipa::path]` attributes ([`openapi`]); the
/// document is also served at [`openapi::OPENAPI_ENDPOINT`].
pub fn api(state: SharedState) -> (Router, utoipa::openapi::OpenApi) {
    let (export_api, export_doc) = OpenApiRouter::new()
        .routes(routes!(export::export_event))
        .routes(routes!(export::export_userprofile))
        .split_for_parts();
    let export_api = export_api
        .method_not_allowed_fallback(export::method_not_allowed)
        .layer(CompressionLayer::new())
        .layer(CatchPanicLayer::custom(|_| {
            ExportError::new(ExportFailure::with_detail(
                ExportOutcome::UnknownError,
                "internal error",
            ))
            .into_response()
        }));
    let (import_api, import_doc) = OpenApiRouter::new()
        .routes(routes!(import::events))
        .routes(routes!(import::identities))
        .routes(routes!(import::identities_delete))
        .routes(routes!(import::user_profile))
        .split_for_parts();
    let import_api = import_api
        .method_not_allowed_fallback(import::method_not_allowed)
        .layer(CatchPanicLayer::custom(|_| {
            ImportAnswer::new(ImportCode::InternalServerError, "internal error").into_response()
        }));
    let (admin_api, admin_doc) = admin::routes(state.clone());
    let (console, console_doc) = console::routes();
    let (operations, operations_doc) = OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(metrics::serve_metrics))
        .split_for_parts();
    let mut doc = openapi::base();
    for part in [export_doc, import_doc, admin_doc, console_doc, operations_doc] {
        doc.merge(part);
    }
    openapi::complete(&mut doc);
    let served = openapi::Served::new(&doc);
    let router = Router::new()
        .merge(export_api)
        .merge(import_api)
        .merge(admin_api)
        .merge(console)
        .merge(operations.layer(axum::Extension(served)))
        .fallback(admin::no_such_endpoint)
        .layer(axum::middleware::from_fn(connection::close_unless_body_read))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track_http))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_log::request_span)
                // Failures are logged where they happen, with why.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(axum::middleware::from_fn(request_log::with_request_id))
        .with_state(state);
    (router, doc)
}

/// `GET /health`: `ok` while the server serves.
#[utoipa::path(
    get,
    path = "/health",
    tag = openapi::OPERATIONS_TAG,
    responses((status = 200, description = "The server is up.", body = String, content_type = "text/plain; charset=utf-8"))
)]
async fn health() -> &'static str {
    "ok"
}

/// Serves `state` on `listener` until `shutdown` resolves, then gives the
/// requests in flight [`Config::shutdown_timeout`](state::Config::shutdown_timeout)
/// to finish, closes what is left, writes the request log and returns.
/// Meanwhile a task keeps the catalog in step with other replicas sharing
/// the store ([`sync`]).
///
/// The accept loop is ours rather than `axum::serve`'s so that every
/// resource a client can hold is bounded:
/// - at most [`Config::max_connections`](state::Config::max_connections)
///   connections are open: the loop takes a slot before it accepts, and the
///   connection's task gives it back when it ends (as mini-redis does);
/// - hyper gets a timer, so a connection that has not sent a request's
///   headers within [`Config::header_timeout`](state::Config::header_timeout),
///   keep-alive idle time included, is closed;
/// - each socket gets TCP keepalive and a write-progress timeout
///   ([`Config::write_timeout`](state::Config::write_timeout), see
///   [`connection::prepare`]);
/// - shutdown has a deadline: connections still open after it are aborted
///   (hyper drops their response bodies, so an export mid-stream ends
///   without its final chunk and logs `client_connection_closed`).
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flusher = state.log.spawn_flusher(state.config.log_flush_every);
    // Other replicas' catalog changes, while this one serves; aborted when
    // `serve` returns or is dropped.
    let syncer = sync::spawn(state.clone());
    // The metrics' histograms drained every second; aborted likewise.
    let upkeep = Metrics::spawn_upkeep(state.metrics.clone());
    let app = router(state.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(
        state.config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    // Every connection's task, so that shutdown can abort what outlives its
    // deadline. Finished ones are reaped before each accept: the set holds
    // at most `max_connections` + 1 tasks.
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while let Some(ended) = connections.try_join_next() {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a connection task failed");
            }
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // unreachable: the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(remote));
            app.clone().oneshot(request)
        });
        let io = TokioIo::new(connection::prepare(stream, state.config.write_timeout));
        let connection = graceful.watch(http.serve_connection(io, service));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let deadline = state.config.shutdown_timeout;
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        while connections.try_join_next().is_some() {}
        tracing::warn!(
            open = connections.len(),
            deadline_secs = deadline.as_secs_f64(),
            "connections still open at the shutdown deadline; closing them"
        );
    }
    // Aborts what is left and waits until each task is dropped: their
    // response bodies record their outcome in the request log first.
    connections.shutdown().await;
    drop(syncer);
    flusher.abort();
    drop(upkeep);
    state.log.flush().await;
    Ok(())
}
