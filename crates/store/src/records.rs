//! The records a store keeps besides events: services, tokens, request log.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fineport_contract::taxonomy::{PropertyScope, Taxonomy};
use fineport_contract::ServiceId;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Per-service limits (SPEC §3), each overridable through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limits {
    pub export_per_hour: u32,
    pub export_concurrency: u32,
    pub events_per_minute: u64,
    pub identities_per_minute: u32,
    pub profiles_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            export_per_hour: 100,
            export_concurrency: 5,
            events_per_minute: 1_000_000,
            identities_per_minute: 10_000,
            profiles_per_minute: 10_000,
        }
    }
}

/// A service (tenant) and its settings (SPEC §1 "Service").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Service {
    pub service_id: ServiceId,
    pub name: String,
    /// IANA timezone name; export days are calendar days here.
    pub timezone: String,
    /// How many days back an export may start; 0 = unlimited.
    pub export_lookback_days: u32,
    pub auto_register: bool,
    pub limits: Limits,
    pub created_at: DateTime<Utc>,
}

pub use fineport_contract::tokens::TokenKind;

/// A token as stored: its hash, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// A short public id, shown in the request log.
    pub token_id: String,
    pub service_id: ServiceId,
    pub kind: TokenKind,
    /// SHA-256 of the token, hex.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    /// Issued by a reissue (not at service creation): starts the cool-down.
    pub by_reissue: bool,
    /// Set when a newer token replaced this one: valid until then (grace).
    pub valid_until: Option<DateTime<Utc>>,
    pub revoked: bool,
    /// Why it was issued: the reason given to a reissue (at most
    /// [`MAX_TOKEN_REASON_CHARS`] characters); `None` when none was given.
    pub reason: Option<String>,
}

/// The longest reason a reissued token keeps, in characters.
pub const MAX_TOKEN_REASON_CHARS: usize = 500;

impl TokenRecord {
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.valid_until.is_none_or(|until| now < until)
    }
}

/// What the server keeps in memory, loaded once at start.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    pub services: Vec<Service>,
    pub tokens: Vec<TokenRecord>,
    pub taxonomies: HashMap<ServiceId, Taxonomy>,
    /// (service_id, audience)
    pub audiences: Vec<(ServiceId, fineport_contract::profile::Audience)>,
}

/// The result of storing an event batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InsertSummary {
    /// Events acknowledged: stored now, or stored before under the same
    /// `event_log_id` (a resend).
    pub events: usize,
}

/// The result of a completed export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSummary {
    pub rows: u64,
    pub bytes: u64,
}

/// One line of the request log (SPEC §5.2): never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestLogEntry {
    pub time: DateTime<Utc>,
    #[serde(skip)]
    pub service_id: String,
    pub endpoint: String,
    pub status: u16,
    pub message: String,
    pub ip: String,
    pub user_agent: String,
    pub token_id: Option<String>,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub duration_ms: u64,
}

/// What [`crate::Store::request_sums`] adds up over the request log of one
/// service, per time bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSumsQuery {
    /// The buckets' bounds (UTC ms, strictly ascending): bucket `i` is
    /// `[bounds[i], bounds[i + 1])`, so there is one bucket fewer than bounds.
    pub bounds: Vec<i64>,
    /// The entries counted in [`BucketSums::requests`]: those whose
    /// `endpoint` is one of these.
    pub counted: Vec<String>,
    /// The entries whose `rows` are summed in [`BucketSums::rows`]: those
    /// whose `endpoint` is one of these and whose `message` is `ok`.
    pub rows_of: Vec<String>,
}

impl RequestSumsQuery {
    /// `Invalid` unless there are at least two bounds, strictly ascending.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.bounds.len() < 2 || self.bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(StoreError::new(
                crate::StoreErrorKind::Invalid,
                "request sums need at least two strictly ascending bounds",
            ));
        }
        Ok(())
    }
}

/// One bucket of [`crate::Store::request_sums`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketSums {
    /// Entries with an endpoint in [`RequestSumsQuery::counted`].
    pub requests: u64,
    /// Sum of `rows` of the `ok` entries with an endpoint in
    /// [`RequestSumsQuery::rows_of`] (entries without rows count 0).
    pub rows: u64,
}

/// A stored time (UTC ms). Out of chrono's range is corrupt data: an error
/// naming `what`, never a silent 1970.
pub(crate) fn ms_to_time(ms: i64, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::internal(format!("corrupt stored data: {what} has the impossible time {ms} ms")))
}

/// A service id read from a table: one that does not parse is corrupt
/// data, an error naming it.
pub(crate) fn stored_service_id(id: String) -> Result<ServiceId, StoreError> {
    ServiceId::parse(&id).map_err(|e| StoreError::internal(format!("corrupt stored data: {e}")))
}

/// A property scope as stored (`PropertyScope::as_str`).
pub(crate) fn parse_scope(s: &str) -> Result<PropertyScope, StoreError> {
    match s {
        "event" => Ok(PropertyScope::Event),
        "item" => Ok(PropertyScope::Item),
        "user" => Ok(PropertyScope::User),
        other => Err(StoreError::internal(format!("unknown stored scope {other:?}"))),
    }
}

/// A service named `service_id` in UTC with the default limits, no
/// look-back limit and no auto-registration: the store's own tests'.
#[cfg(test)]
pub(crate) fn utc_test_service(service_id: &ServiceId) -> Service {
    Service {
        service_id: service_id.clone(),
        name: service_id.to_string(),
        timezone: "UTC".into(),
        export_lookback_days: 0,
        auto_register: false,
        limits: Limits::default(),
        created_at: Utc::now(),
    }
}
