//! Limits kept in this process: the single-node default, and the fallback
//! of [`RedisLimiter`](super::RedisLimiter) while Redis is unreachable.
//! Windows follow the server's clock (the `now` each call is given).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::{retry_after, Counter, ExportPermit, Lease, Limiter, RateStatus, Refusal};

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

    /// Subtracts `n` from the window that starts at `window_start`, if it is
    /// still the one kept.
    fn sub(&mut self, service_id: &str, counter: Counter, window_start: i64, n: u64) {
        if let Some((start, used)) = self.windows.get_mut(&(service_id.to_owned(), counter)) {
            if *start == window_start {
                *used = used.saturating_sub(n);
            }
        }
    }
}

/// Limits kept in this process. Cheap to clone: clones share the counters.
#[derive(Default, Clone)]
pub struct MemoryLimiter {
    state: Arc<Mutex<State>>,
}

impl MemoryLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn status(counter: Counter, limit: u64, used: u64, window_start: i64) -> RateStatus {
    let window = counter.window();
    RateStatus {
        window,
        remaining: limit.saturating_sub(used),
        reset_ms: window_start + window.millis(),
    }
}

/// A running export's slot in a [`MemoryLimiter`].
struct MemoryLease {
    limiter: MemoryLimiter,
    service_id: String,
    window_start: i64,
}

impl Lease for MemoryLease {
    fn release(self: Box<Self>, refund: bool) {
        let mut state = self.limiter.lock();
        if let Some(r) = state.running.get_mut(&self.service_id) {
            *r = r.saturating_sub(1);
        }
        if refund {
            state.sub(&self.service_id, Counter::Exports, self.window_start, 1);
        }
    }
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
        let mut state = self.lock();
        let used = state.used(service_id, counter, start);
        if used >= per_hour {
            let st = status(counter, per_hour, used, start);
            return Err(Refusal {
                status: st,
                retry_after_secs: retry_after(st.reset_ms, now.timestamp_millis()),
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
        let lease = MemoryLease {
            limiter: self.clone(),
            service_id: service_id.to_owned(),
            window_start: start,
        };
        Ok(ExportPermit::new(
            status(counter, per_hour, used + 1, start),
            Box::new(lease),
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
        let mut state = self.lock();
        let used = state.used(service_id, counter, start);
        if used.saturating_add(n) > limit {
            let st = status(counter, limit, used, start);
            return Err(Refusal {
                status: st,
                retry_after_secs: retry_after(st.reset_ms, now.timestamp_millis()),
            });
        }
        state.add(service_id, counter, start, n);
        Ok(status(counter, limit, used + n, start))
    }

    async fn give_back(&self, service_id: &str, counter: Counter, n: u64, taken: &RateStatus) {
        let start = taken.reset_ms - counter.window().millis();
        self.lock().sub(service_id, counter, start, n);
    }

    async fn peek(&self, service_id: &str, counter: Counter, limit: u64, now: DateTime<Utc>) -> RateStatus {
        let start = counter.window().start(now);
        let state = self.lock();
        status(counter, limit, state.used(service_id, counter, start), start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    // The behaviour both limiters share is tested in tests/limits.rs, on
    // the real clock; these pin the window arithmetic on a given clock.

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
        drop(p1);
        assert!(l.acquire_export("s", 2, 5, now).await.is_ok());
        // another service is untouched; the next hour starts afresh
        assert!(l.acquire_export("t", 2, 5, now).await.is_ok());
        assert!(l.acquire_export("s", 2, 5, at("2026-11-25T11:00:00Z")).await.is_ok());
    }

    #[tokio::test]
    async fn counted_windows_take_all_or_nothing_and_give_back_only_in_their_window() {
        let l = MemoryLimiter::default();
        let now = at("2026-11-25T10:00:10Z");
        let taken = l.take("s", Counter::Events, 60, 100, now).await.unwrap();
        assert_eq!(taken.remaining, 40);
        let refused = l.take("s", Counter::Events, 41, 100, now).await.unwrap_err();
        assert_eq!(refused.retry_after_secs, 50);
        assert_eq!(l.peek("s", Counter::Events, 100, now).await.remaining, 40);
        l.give_back("s", Counter::Events, 10, &taken).await;
        assert_eq!(l.peek("s", Counter::Events, 100, now).await.remaining, 50);
        let next = at("2026-11-25T10:01:00Z");
        assert_eq!(l.peek("s", Counter::Events, 100, next).await.remaining, 100);
        let in_next = l.take("s", Counter::Events, 30, 100, next).await.unwrap();
        // a give-back for the previous minute leaves this one alone
        l.give_back("s", Counter::Events, 50, &taken).await;
        assert_eq!(l.peek("s", Counter::Events, 100, next).await.remaining, 70);
        assert_eq!(in_next.remaining, 70);
    }
}
