//! Rate limits (SPEC §3): fixed windows aligned to the UTC clock, plus the
//! export concurrency limit, behind the async [`Limiter`] trait so that
//! replicas can share them through a network service (Redis, issue 12).
//! [`MemoryLimiter`] is the one-process implementation and the default.
//!
//! Export quota is taken when a request is admitted (so concurrent requests
//! cannot overshoot) and given back if the request then fails on the server's
//! side: refused and failed requests use no quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    pub fn window(self) -> Window {
        match self {
            Counter::Exports => Window::Hour,
            _ => Window::Minute,
        }
    }
}

/// An admitted export: holds its concurrency slot until dropped.
pub struct ExportPermit {
    pub status: RateStatus,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
    refund: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ExportPermit {
    pub fn new(
        status: RateStatus,
        release: Box<dyn FnOnce() + Send + Sync>,
        refund: Box<dyn FnOnce() + Send + Sync>,
    ) -> Self {
        ExportPermit {
            status,
            release: Some(release),
            refund: Some(refund),
        }
    }

    /// Gives the quota back: the request failed on the server's side.
    pub fn refund(&mut self) {
        if let Some(refund) = self.refund.take() {
            refund();
        }
    }
}

impl Drop for ExportPermit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

#[async_trait::async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Admits an export: one unit of the hourly quota and one concurrency slot.
    async fn acquire_export(
        &self,
        service_id: &str,
        per_hour: u64,
        concurrency: u32,
        now: DateTime<Utc>,
    ) -> Result<ExportPermit, Refusal>;

    /// Takes `n` units of `counter` if they fit under `limit` in the current window.
    async fn take(
        &self,
        service_id: &str,
        counter: Counter,
        n: u64,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<RateStatus, Refusal>;

    /// The status of `counter` without using any of it.
    async fn peek(&self, service_id: &str, counter: Counter, limit: u64, now: DateTime<Utc>) -> RateStatus;
}

#[derive(Default)]
struct State {
    /// (service, counter) → (window start, used).
    windows: HashMap<(String, Counter), (i64, u64)>,
    /// service → running exports.
    running: HashMap<String, u32>,
}

impl State {
    fn used(&self, service_id: &str, counter: Counter, window_start: i64) -> u64 {
        match self.windows.get(&(service_id.to_owned(), counter)) {
            Some((start, used)) if *start == window_start => *used,
            _ => 0,
        }
    }

    fn add(&mut self, service_id: &str, counter: Counter, window_start: i64, n: u64) {
        let entry = self
            .windows
            .entry((service_id.to_owned(), counter))
            .or_insert((window_start, 0));
        if entry.0 != window_start {
            *entry = (window_start, 0);
        }
        entry.1 += n;
    }
}

/// Limits kept in this process.
#[derive(Default, Clone)]
pub struct MemoryLimiter {
    state: Arc<Mutex<State>>,
}

fn status(counter: Counter, limit: u64, used: u64, window_start: i64) -> RateStatus {
    let window = counter.window();
    RateStatus {
        window,
        remaining: limit.saturating_sub(used),
        reset_ms: window_start + window.millis(),
    }
}

fn retry_after(status: &RateStatus, now: DateTime<Utc>) -> u64 {
    let ms = (status.reset_ms - now.timestamp_millis()).max(0) as u64;
    ms.div_ceil(1000).max(1)
}

#[async_trait::async_trait]
impl Limiter for MemoryLimiter {
    async fn acquire_export(
        &self,
        service_id: &str,
        per_hour: u64,
        concurrency: u32,
        now: DateTime<Utc>,
    ) -> Result<ExportPermit, Refusal> {
        let counter = Counter::Exports;
        let start = counter.window().start(now);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let used = state.used(service_id, counter, start);
        if used >= per_hour {
            let st = status(counter, per_hour, used, start);
            return Err(Refusal {
                status: st,
                retry_after_secs: retry_after(&st, now),
            });
        }
        let running = state.running.get(service_id).copied().unwrap_or(0);
        if running >= concurrency {
            return Err(Refusal {
                status: status(counter, per_hour, used, start),
                retry_after_secs: 1,
            });
        }
        state.add(service_id, counter, start, 1);
        *state.running.entry(service_id.to_owned()).or_insert(0) += 1;
        drop(state);

        let (s1, id1) = (self.state.clone(), service_id.to_owned());
        let release = Box::new(move || {
            let mut state = s1.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = state.running.get_mut(&id1) {
                *r = r.saturating_sub(1);
            }
        });
        let (s2, id2) = (self.state.clone(), service_id.to_owned());
        let refund = Box::new(move || {
            let mut state = s2.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((window, used)) = state.windows.get_mut(&(id2, counter)) {
                if *window == start {
                    *used = used.saturating_sub(1);
                }
            }
        });
        Ok(ExportPermit::new(
            status(counter, per_hour, used + 1, start),
            release,
            refund,
        ))
    }

    async fn take(
        &self,
        service_id: &str,
        counter: Counter,
        n: u64,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<RateStatus, Refusal> {
        let start = counter.window().start(now);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let used = state.used(service_id, counter, start);
        if used.saturating_add(n) > limit {
            let st = status(counter, limit, used, start);
            return Err(Refusal {
                status: st,
                retry_after_secs: retry_after(&st, now),
            });
        }
        state.add(service_id, counter, start, n);
        Ok(status(counter, limit, used + n, start))
    }

    async fn peek(&self, service_id: &str, counter: Counter, limit: u64, now: DateTime<Utc>) -> RateStatus {
        let start = counter.window().start(now);
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        status(counter, limit, state.used(service_id, counter, start), start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[tokio::test]
    async fn hourly_quota_is_a_fixed_utc_window_and_refunds() {
        let l = MemoryLimiter::default();
        let now = at("2026-11-25T10:59:30Z");
        let mut p1 = l.acquire_export("s", 2, 5, now).await.unwrap();
        assert_eq!(p1.status.remaining, 1);
        assert_eq!(p1.status.reset_ms, at("2026-11-25T11:00:00Z").timestamp_millis());
        let _p2 = l.acquire_export("s", 2, 5, now).await.unwrap();
        let refused = l.acquire_export("s", 2, 5, now).await.err().unwrap();
        assert_eq!(refused.retry_after_secs, 30);
        assert_eq!(refused.status.remaining, 0);
        p1.refund();
        assert!(l.acquire_export("s", 2, 5, now).await.is_ok());
        // another service is untouched; the next hour starts afresh
        assert!(l.acquire_export("t", 2, 5, now).await.is_ok());
        assert!(l.acquire_export("s", 2, 5, at("2026-11-25T11:00:00Z")).await.is_ok());
    }

    #[tokio::test]
    async fn concurrency_slots_free_on_drop() {
        let l = MemoryLimiter::default();
        let now = at("2026-11-25T10:00:00Z");
        let p = l.acquire_export("s", 100, 1, now).await.unwrap();
        let refused = l.acquire_export("s", 100, 1, now).await.err().unwrap();
        assert_eq!(refused.retry_after_secs, 1);
        drop(p);
        assert!(l.acquire_export("s", 100, 1, now).await.is_ok());
    }

    #[tokio::test]
    async fn counted_windows_take_all_or_nothing() {
        let l = MemoryLimiter::default();
        let now = at("2026-11-25T10:00:10Z");
        assert_eq!(l.take("s", Counter::Events, 60, 100, now).await.unwrap().remaining, 40);
        let refused = l.take("s", Counter::Events, 41, 100, now).await.unwrap_err();
        assert_eq!(refused.retry_after_secs, 50);
        assert_eq!(l.peek("s", Counter::Events, 100, now).await.remaining, 40);
        assert_eq!(
            l.peek("s", Counter::Events, 100, at("2026-11-25T10:01:00Z"))
                .await
                .remaining,
            100
        );
    }
}
