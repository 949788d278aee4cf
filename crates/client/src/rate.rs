//! DFINERY's rate-limit headers (SPEC §3) as a client reads them:
//! `X-Rate-Limit-Limit` (the window: `1s 1m 1H 1d 1M 1y`),
//! `X-Rate-Limit-Remaining` (what is left in the window after this
//! request), `X-Rate-Limit-Reset` (Unix time in **milliseconds** when the
//! window resets) and, on a 429, `Retry-After` (seconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// What one answer's headers said; every field is optional because a
/// server (or a proxy in between) may leave any of them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// The window, as sent (`1H` for exports, `1m` for imports).
    pub window: Option<String>,
    /// Calls (or events) left in the window after this one.
    pub remaining: Option<u64>,
    /// When the window resets.
    pub reset_at: Option<SystemTime>,
    /// `Retry-After`, on a refusal.
    pub retry_after: Option<Duration>,
}

impl RateLimit {
    /// Reads the headers; a malformed value counts as absent.
    pub fn from_headers(headers: &HeaderMap) -> RateLimit {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        RateLimit {
            window: get("x-rate-limit-limit").map(str::to_owned),
            remaining: get("x-rate-limit-remaining").and_then(|v| v.parse().ok()),
            reset_at: get("x-rate-limit-reset")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            retry_after: get("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }

    /// Whether a refusal means the window's quota is used up (rather than
    /// the concurrency limit): `Remaining: 0` with a reset more than a
    /// couple of seconds away.
    pub fn quota_used_up(&self, now: SystemTime) -> bool {
        self.remaining == Some(0) && self.reset_at.is_some_and(|at| at > now + Duration::from_secs(2))
    }

    /// How long to wait after a 429: until the reset when the quota is used
    /// up, else `Retry-After`, else one second; never more than `cap`.
    pub fn wait_after_refusal(&self, now: SystemTime, cap: Duration) -> Duration {
        let wait = if self.quota_used_up(now) {
            self.reset_at
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or(Duration::from_secs(1))
        } else {
            self.retry_after.unwrap_or(Duration::from_secs(1))
        };
        wait.clamp(Duration::from_millis(200), cap)
    }
}

/// `hh:mm:ss` in local-agnostic UTC, for "waiting until …" lines.
pub fn clock_utc(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// A duration in words a person reads at a glance: `1.2s`, `45s`, `12m 5s`, `3h 20m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..10 => format!("{:.1}s", d.as_secs_f64()),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_used_up_hour_waits_until_the_reset_and_a_busy_slot_one_second() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let reset_ms = (1_000_000 + 600) * 1000;
        let quota = RateLimit::from_headers(&headers(&[
            ("X-Rate-Limit-Limit", "1H"),
            ("X-Rate-Limit-Remaining", "0"),
            ("X-Rate-Limit-Reset", &reset_ms.to_string()),
            ("Retry-After", "600"),
        ]));
        assert_eq!(quota.window.as_deref(), Some("1H"));
        assert!(quota.quota_used_up(now));
        assert_eq!(
            quota.wait_after_refusal(now, Duration::from_secs(7200)),
            Duration::from_secs(600)
        );
        assert_eq!(
            quota.wait_after_refusal(now, Duration::from_secs(60)),
            Duration::from_secs(60)
        );

        let busy = RateLimit::from_headers(&headers(&[
            ("X-Rate-Limit-Remaining", "40"),
            ("X-Rate-Limit-Reset", &reset_ms.to_string()),
            ("Retry-After", "1"),
        ]));
        assert!(!busy.quota_used_up(now));
        assert_eq!(
            busy.wait_after_refusal(now, Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        let bare = RateLimit::from_headers(&headers(&[("X-Rate-Limit-Remaining", "x")]));
        assert_eq!(bare, RateLimit::default());
        assert_eq!(
            bare.wait_after_refusal(now, Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn durations_and_clocks_read_plainly() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_millis(1250)), "1.2s");
        assert_eq!(human_duration(Duration::from_secs(725)), "12m 5s");
        assert_eq!(human_duration(Duration::from_secs(12_000)), "3h 20m");
        assert_eq!(
            clock_utc(UNIX_EPOCH + Duration::from_secs(3600 * 25 + 61)),
            "01:01:01 UTC"
        );
    }
}
