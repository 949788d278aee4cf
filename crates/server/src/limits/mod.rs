//! Rate limits (SPEC §3): fixed windows aligned to the UTC clock, plus the
//! export concurrency limit, behind the async [`Limiter`] trait.
//!
//! Two limiters implement it, one per folder, and one behaviour suite
//! (`tests/limits.rs`) runs against both:
//! - [`MemoryLimiter`] keeps the counters in this process: the single-node
//!   default, and what [`RedisLimiter`] falls back to while Redis is down;
//! - [`RedisLimiter`] keeps them in Redis, so that every replica of a
//!   cluster shares one hourly quota, one set of concurrency slots and one
//!   per-minute window per service (SPEC §3 "Limits hold across all
//!   replicas"). Each decision is one Lua script run by Redis, on Redis's
//!   clock; a concurrency slot is a lease that the holder's heartbeats
//!   extend, so a replica that dies frees its slots within one lease.
//!
//! Export quota is taken when a request is admitted (so concurrent requests
//! cannot overshoot) and given back if the request then fails on the
//! server's side; import units likewise ([`Limiter::give_back`]): refused
//! and failed requests use no quota.

mod memory;
mod redis;

pub use memory::MemoryLimiter;
pub use redis::{RedisLimiter, RedisLimiterError, RedisLimiterOptions};

use chrono::{DateTime, Utc};

/// A fixed window and its spelling in `X-Rate-Limit-Limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Minute,
    Hour,
}

impl Window {
    pub fn millis(self) -> i64 {
        match self {
            Window::Minute => 60_000,
            Window::Hour => 3_600_000,
        }
    }

    /// `X-Rate-Limit-Limit` names the window: `1m`, `1H`.
    pub fn header(self) -> &'static str {
        match self {
            Window::Minute => "1m",
            Window::Hour => "1H",
        }
    }

    /// Start of the window holding `now` (aligned to the UTC clock).
    pub fn start(self, now: DateTime<Utc>) -> i64 {
        let ms = now.timestamp_millis();
        ms - ms.rem_euclid(self.millis())
    }
}

/// What the `X-Rate-Limit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    pub window: Window,
    pub remaining: u64,
    /// Unix milliseconds when the window resets.
    pub reset_ms: i64,
}

/// Why a request was refused, with the status to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: RateStatus,
    /// `Retry-After` seconds: until the reset for a used-up quota, 1 for concurrency.
    pub retry_after_secs: u64,
}

/// A counter of one kind of use in one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Exports,
    Events,
    Identities,
    Profiles,
}

impl Counter {
    /// Its name in metrics (`fineport_limiter_refusals_total{counter}`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::Exports => "exports",
            Counter::Events => "events",
            Counter::Identities => "identities",
            Counter::Profiles => "profiles",
        }
    }

    pub fn window(self) -> Window {
        match self {
            Counter::Exports => Window::Hour,
            _ => Window::Minute,
        }
    }
}

/// What holds an admitted export's concurrency slot: a count in this
/// process, or a lease in Redis.
pub trait Lease: Send + Sync {
    /// Frees the slot and, when `refund` is set, gives the export's unit of
    /// quota back to the window it was taken from. Must not block: a
    /// network release runs in the background.
    fn release(self: Box<Self>, refund: bool);
}

/// An admitted export: holds its concurrency slot until dropped.
pub struct ExportPermit {
    /// The hourly window after this export was counted.
    pub status: RateStatus,
    refund: bool,
    lease: Option<Box<dyn Lease>>,
}

impl ExportPermit {
    pub fn new(status: RateStatus, lease: Box<dyn Lease>) -> Self {
        ExportPermit {
            status,
            refund: false,
            lease: Some(lease),
        }
    }

    /// The request failed on the server's side: its quota is given back
    /// when the permit is dropped.
    pub fn refund(&mut self) {
        self.refund = true;
    }
}

impl Drop for ExportPermit {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release(self.refund);
        }
    }
}

/// Rate limits shared by every request of a server (SPEC §3). `now` is the
/// server's clock; a limiter with a clock of its own (Redis) decides by
/// that one instead, so that replicas agree.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Admits an export: one unit of the hourly quota and one concurrency
    /// slot, both or neither. The quota is checked first, so a refusal for
    /// a used-up quota says when the hour resets (`Retry-After` to the
    /// reset) and one for concurrency says `Retry-After: 1`.
    async fn acquire_export(
        &self,
        service_id: &str,
        per_hour: u64,
        concurrency: u32,
        now: DateTime<Utc>,
    ) -> Result<ExportPermit, Refusal>;

    /// Takes `n` units of `counter` if they fit under `limit` in the current
    /// window, all or nothing.
    async fn take(
        &self,
        service_id: &str,
        counter: Counter,
        n: u64,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<RateStatus, Refusal>;

    /// Gives back `n` units that [`take`](Limiter::take) granted with
    /// `taken` (the request then failed on the server's side). Nothing when
    /// that window has ended.
    async fn give_back(&self, service_id: &str, counter: Counter, n: u64, taken: &RateStatus);

    /// The status of `counter` without using any of it.
    async fn peek(&self, service_id: &str, counter: Counter, limit: u64, now: DateTime<Utc>) -> RateStatus;
}

/// `Retry-After` for a used-up window: whole seconds until its reset, at
/// least 1.
fn retry_after(reset_ms: i64, now_ms: i64) -> u64 {
    let ms = (reset_ms - now_ms).max(0) as u64;
    ms.div_ceil(1000).max(1)
}
