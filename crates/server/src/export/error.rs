//! The Export API's error dialect: the HTTP status of the detailed response,
//! `{"result":"fail","message":…}`, and the rate-limit headers.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fineport_contract::export::{ExportFailure, ExportOutcome};
use fineport_store::{StoreError, StoreErrorKind};

use crate::limits::RateStatus;

/// An Export API failure as a response.
pub struct ExportError {
    pub failure: ExportFailure,
    pub rate: Option<RateStatus>,
    pub retry_after_secs: Option<u64>,
}

impl ExportError {
    pub fn new(failure: ExportFailure) -> Self {
        ExportError {
            failure,
            rate: None,
            retry_after_secs: None,
        }
    }

    pub fn outcome(&self) -> ExportOutcome {
        self.failure.outcome
    }
}

impl From<ExportFailure> for ExportError {
    fn from(failure: ExportFailure) -> Self {
        ExportError::new(failure)
    }
}

/// The one place a store error becomes a detailed response.
pub fn store_outcome(e: &StoreError) -> ExportOutcome {
    match e.kind {
        StoreErrorKind::Query => ExportOutcome::QueryError,
        StoreErrorKind::Cancelled => ExportOutcome::ClientConnectionClosed,
        StoreErrorKind::NotFound | StoreErrorKind::Conflict | StoreErrorKind::Invalid | StoreErrorKind::Internal => {
            ExportOutcome::UnknownError
        }
    }
}

/// `X-Rate-Limit-Limit`, `-Remaining`, `-Reset` (Unix ms).
pub fn rate_headers(headers: &mut HeaderMap, rate: &RateStatus) {
    headers.insert("x-rate-limit-limit", HeaderValue::from_static(rate.window.header()));
    headers.insert("x-rate-limit-remaining", HeaderValue::from(rate.remaining));
    headers.insert("x-rate-limit-reset", HeaderValue::from(rate.reset_ms));
}

impl IntoResponse for ExportError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.failure.outcome.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.failure.body())).into_response();
        if let Some(rate) = &self.rate {
            rate_headers(response.headers_mut(), rate);
        }
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}
