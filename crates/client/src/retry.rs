//! Retries with exponential backoff and full jitter (AWS's "full jitter":
//! a random wait between zero and the capped exponential), so many clients
//! that failed together do not come back together.

use std::time::Duration;

/// The retry budget and backoff of one unit of work (an export day, an
/// import batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 = fail at the first error.
    pub max_retries: u32,
    /// The first backoff's cap.
    pub base: Duration,
    /// No wait is longer.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 8 retries, 1 s doubling to at most 60 s: a server that is down for
    /// about four minutes is ridden out.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry):
    /// uniform in `[cap/2, cap]` with `cap = min(max, base·2^(retry−1))`
    /// (half of it jittered, so a wait is never near zero).
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max);
        let half = cap / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let p = RetryPolicy::default();
        for retry in 1..=12 {
            let cap = Duration::from_secs(1 << (retry - 1).min(20)).min(p.max);
            for _ in 0..50 {
                let d = p.backoff(retry);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "retry {retry}: {d:?} outside [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
        assert!(p.backoff(40) <= p.max);
    }
}
