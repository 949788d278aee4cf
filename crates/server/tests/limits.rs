//! One behaviour suite for both limiters (SPEC §3), run against the
//! in-process [`MemoryLimiter`] and against a real Redis through two
//! [`RedisLimiter`]s that stand for two replicas; then what only Redis
//! does: leases that outlive a dead replica by one lease at most, and what
//! happens while Redis cannot be reached.
//!
//! Windows are real (Redis decides by its own clock), so a test that needs
//! two calls in one window first waits until it is clear of the window's end.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::relay::Relay;
use fineport_server::limits::{
    Counter, ExportPermit, Limiter, MemoryLimiter, RateStatus, RedisLimiter, RedisLimiterOptions, Window,
};
use fineport_store::testing::{service_url, REDIS_VAR};
use tokio::sync::Barrier;

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Redis,
}

fn redis_options(url: &str, prefix: &str) -> RedisLimiterOptions {
    RedisLimiterOptions {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        ..RedisLimiterOptions::default()
    }
}

/// A key prefix no other test (or run) uses.
fn fresh_prefix() -> String {
    format!("fp-test-{}:", uuid::Uuid::new_v4().simple())
}

/// Two replicas' limiters: for Redis, two limiters on one Redis and one
/// prefix; in memory (one process), the same limiter twice.
async fn replicas(kind: Kind, test: &str) -> Option<(Arc<dyn Limiter>, Arc<dyn Limiter>)> {
    match kind {
        Kind::Memory => {
            let l = Arc::new(MemoryLimiter::default());
            Some((l.clone(), l))
        }
        Kind::Redis => {
            let url = service_url(REDIS_VAR, test)?;
            let prefix = fresh_prefix();
            let a = RedisLimiter::connect(redis_options(&url, &prefix))
                .await
                .expect("limiter");
            let b = RedisLimiter::connect(redis_options(&url, &prefix))
                .await
                .expect("limiter");
            Some((Arc::new(a), Arc::new(b)))
        }
    }
}

/// Waits until `window` has at least `margin` left, so that what a test
/// does next happens in one window.
async fn clear_of_window_end(window: Window, margin: Duration) {
    let now = Utc::now().timestamp_millis();
    let left = window.millis() - now.rem_euclid(window.millis());
    if left < margin.as_millis() as i64 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;
    }
}

/// Retries `acquire` until it is granted (a Redis release runs in the
/// background, so a freed slot shows up a moment later).
async fn acquire_soon(limiter: &dyn Limiter, service: &str, quota: u64, slots: u32) -> ExportPermit {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match limiter.acquire_export(service, quota, slots, Utc::now()).await {
            Ok(p) => return p,
            Err(r) if Instant::now() < deadline => {
                let _ = r;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(r) => panic!("not granted within 5 s: {r:?}"),
        }
    }
}

fn assert_hour_reset(status: &RateStatus) {
    assert_eq!(status.window, Window::Hour);
    assert_eq!(status.reset_ms % 3_600_000, 0, "the hour is aligned to the UTC clock");
}

async fn quota_is_one_hourly_window_shared_by_replicas(kind: Kind, test: &str) {
    let Some((a, b)) = replicas(kind, test).await else {
        return;
    };
    clear_of_window_end(Window::Hour, Duration::from_secs(30)).await;
    let first = a.acquire_export("shop", 3, 10, Utc::now()).await.expect("1st");
    assert_eq!(first.status.remaining, 2);
    assert_hour_reset(&first.status);
    let second = b.acquire_export("shop", 3, 10, Utc::now()).await.expect("2nd");
    assert_eq!(second.status.remaining, 1);
    let _third = a.acquire_export("shop", 3, 10, Utc::now()).await.expect("3rd");
    let refused = b
        .acquire_export("shop", 3, 10, Utc::now())
        .await
        .err()
        .expect("4th refused");
    assert_eq!(refused.status.remaining, 0);
    assert_eq!(refused.status.reset_ms, first.status.reset_ms);
    assert!(
        (1..=3600).contains(&refused.retry_after_secs),
        "Retry-After runs to the reset: {}",
        refused.retry_after_secs
    );
    // A failed export gives its unit back, on whichever replica it ran.
    let mut failed = second;
    failed.refund();
    drop(failed);
    let again = acquire_soon(&*a, "shop", 3, 10).await;
    assert_eq!(again.status.remaining, 0);
    // Another service has its own quota.
    let other = b
        .acquire_export("other", 3, 10, Utc::now())
        .await
        .expect("other service");
    assert_eq!(other.status.remaining, 2);
    // Peeking uses nothing.
    assert_eq!(a.peek("other", Counter::Exports, 3, Utc::now()).await.remaining, 2);
}

async fn concurrency_slots_are_shared_and_free_on_drop(kind: Kind, test: &str) {
    let Some((a, b)) = replicas(kind, test).await else {
        return;
    };
    clear_of_window_end(Window::Hour, Duration::from_secs(30)).await;
    let held = a.acquire_export("shop", 100, 2, Utc::now()).await.expect("1st slot");
    let _held2 = b.acquire_export("shop", 100, 2, Utc::now()).await.expect("2nd slot");
    let refused = a
        .acquire_export("shop", 100, 2, Utc::now())
        .await
        .err()
        .expect("no 3rd slot");
    assert_eq!(refused.retry_after_secs, 1, "a concurrency refusal says Retry-After: 1");
    assert_eq!(refused.status.remaining, 98, "a refused request uses no quota");
    drop(held);
    let _third = acquire_soon(&*b, "shop", 100, 2).await;
}

/// `n` calls released at once by a barrier, alternately through replica
/// `a` and `b`; their results in order.
async fn race<T, F, Fut>(a: &Arc<dyn Limiter>, b: &Arc<dyn Limiter>, n: usize, call: F) -> Vec<T>
where
    F: Fn(Arc<dyn Limiter>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (barrier, call) = (barrier.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            call(limiter).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    results
}

/// 40 requests at once, half through each replica, for 5 slots.
async fn racing_replicas_get_exactly_the_free_slots(kind: Kind, test: &str) {
    let Some((a, b)) = replicas(kind, test).await else {
        return;
    };
    clear_of_window_end(Window::Hour, Duration::from_secs(30)).await;
    let results = race(&a, &b, 40, |l| async move {
        l.acquire_export("shop", 100, 5, Utc::now()).await
    })
    .await;
    let mut granted = Vec::new();
    let mut concurrency = 0;
    for result in results {
        match result {
            Ok(p) => granted.push(p),
            Err(r) if r.retry_after_secs == 1 => concurrency += 1,
            Err(r) => panic!("refused for quota: {r:?}"),
        }
    }
    assert_eq!((granted.len(), concurrency), (5, 35));
}

/// 40 requests at once for the last 3 units of the hour.
async fn racing_replicas_get_exactly_the_last_quota(kind: Kind, test: &str) {
    let Some((a, b)) = replicas(kind, test).await else {
        return;
    };
    clear_of_window_end(Window::Hour, Duration::from_secs(30)).await;
    let results = race(&a, &b, 40, |l| async move {
        l.acquire_export("shop", 3, 100, Utc::now()).await
    })
    .await;
    let mut granted = Vec::new();
    for result in results {
        match result {
            Ok(p) => granted.push(p),
            Err(r) => assert!(r.retry_after_secs >= 1 && r.status.remaining == 0, "{r:?}"),
        }
    }
    assert_eq!(granted.len(), 3);
}

async fn minute_windows_take_all_or_nothing_and_give_back(kind: Kind, test: &str) {
    let Some((a, b)) = replicas(kind, test).await else {
        return;
    };
    clear_of_window_end(Window::Minute, Duration::from_secs(15)).await;
    let taken = a
        .take("shop", Counter::Events, 60, 100, Utc::now())
        .await
        .expect("60 of 100");
    assert_eq!(taken.remaining, 40);
    assert_eq!(taken.window, Window::Minute);
    assert_eq!(taken.reset_ms % 60_000, 0);
    let refused = b
        .take("shop", Counter::Events, 41, 100, Utc::now())
        .await
        .expect_err("41 more");
    assert_eq!(refused.status.remaining, 40, "all or nothing");
    assert!((1..=60).contains(&refused.retry_after_secs));
    assert_eq!(b.peek("shop", Counter::Events, 100, Utc::now()).await.remaining, 40);
    b.give_back("shop", Counter::Events, 10, &taken).await;
    assert_eq!(a.peek("shop", Counter::Events, 100, Utc::now()).await.remaining, 50);
    // Each counter is its own window.
    let identities = b
        .take("shop", Counter::Identities, 1, 5, Utc::now())
        .await
        .expect("identity");
    assert_eq!(identities.remaining, 4);
}

/// 20 requests of 10 events at once against a limit of 100.
async fn racing_replicas_fill_a_window_exactly(kind: Kind, test: &str) {
    let Some((a, b)) = replicas(kind, test).await else {
        return;
    };
    clear_of_window_end(Window::Minute, Duration::from_secs(15)).await;
    let results = race(&a, &b, 20, |l| async move {
        l.take("shop", Counter::Events, 10, 100, Utc::now()).await
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    assert_eq!(a.peek("shop", Counter::Events, 100, Utc::now()).await.remaining, 0);
}

macro_rules! limiter_suite {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Kind::Memory, concat!("memory::", stringify!($test))).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Kind::Redis, concat!("redis::", stringify!($test))).await;
                }
            )*
        }
    };
}

limiter_suite!(
    quota_is_one_hourly_window_shared_by_replicas,
    concurrency_slots_are_shared_and_free_on_drop,
    racing_replicas_get_exactly_the_free_slots,
    racing_replicas_get_exactly_the_last_quota,
    minute_windows_take_all_or_nothing_and_give_back,
    racing_replicas_fill_a_window_exactly,
);

/// A replica that holds a slot and dies (its runtime is stopped: no more
/// heartbeats, no release) keeps the slot while alive, however long, and
/// loses it within one lease of its death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_slot_is_free_within_one_lease() {
    let test = "a_dead_replicas_slot_is_free_within_one_lease";
    let Some(url) = service_url(REDIS_VAR, test) else {
        return;
    };
    let lease = Duration::from_millis(900);
    let options = RedisLimiterOptions {
        lease,
        ..redis_options(&url, &fresh_prefix())
    };
    let survivor = RedisLimiter::connect(options.clone()).await.expect("limiter");
    let doomed_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let doomed = doomed_runtime
        .spawn(async move {
            let limiter = RedisLimiter::connect(options).await.expect("limiter");
            let permit = limiter.acquire_export("shop", 100, 1, Utc::now()).await.expect("slot");
            // Killed, not dropped: no release will ever run.
            std::mem::forget(permit);
        })
        .await;
    doomed.expect("the doomed replica got its slot");
    // Alive for three leases: its heartbeats keep the slot.
    let alive_until = Instant::now() + 3 * lease;
    while Instant::now() < alive_until {
        let refused = survivor.acquire_export("shop", 100, 1, Utc::now()).await;
        assert!(refused.is_err(), "a live replica's slot was given away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    doomed_runtime.shutdown_background();
    let died = Instant::now();
    let _slot = acquire_soon(&survivor, "shop", 100, 1).await;
    let freed_after = died.elapsed();
    println!("the dead replica's slot came free {freed_after:?} after its death (lease {lease:?})");
    assert!(
        freed_after <= lease + Duration::from_millis(500),
        "held {freed_after:?}, longer than one lease"
    );
}

/// Redis that is not there: every decision is this replica's own, within
/// the timeout, and the limits still hold (for this replica).
#[tokio::test]
async fn redis_unreachable_decides_on_this_replica_alone() {
    let options = RedisLimiterOptions {
        url: "redis://127.0.0.1:1".into(),
        timeout: Duration::from_millis(200),
        ..RedisLimiterOptions::default()
    };
    let limiter = RedisLimiter::connect(options)
        .await
        .expect("a limiter even without Redis");
    clear_of_window_end(Window::Hour, Duration::from_secs(30)).await;
    let _one = limiter.acquire_export("shop", 2, 5, Utc::now()).await.expect("1st");
    let _two = limiter.acquire_export("shop", 2, 5, Utc::now()).await.expect("2nd");
    let refused = limiter
        .acquire_export("shop", 2, 5, Utc::now())
        .await
        .err()
        .expect("quota");
    assert_eq!(refused.status.remaining, 0);
    clear_of_window_end(Window::Minute, Duration::from_secs(15)).await;
    assert_eq!(
        limiter
            .take("shop", Counter::Events, 7, 10, Utc::now())
            .await
            .expect("7 of 10")
            .remaining,
        3
    );
    assert!(limiter.take("shop", Counter::Events, 4, 10, Utc::now()).await.is_err());
}

/// Redis lost while replicas run, then back: while it is gone each replica
/// decides alone; once it is back they share one window again, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_and_back_while_replicas_run() {
    let test = "redis_lost_and_back_while_replicas_run";
    let Some(url) = service_url(REDIS_VAR, test) else {
        return;
    };
    let relay = Relay::start(Relay::host_port(&url)).await;
    let prefix = fresh_prefix();
    let through_relay = RedisLimiterOptions {
        timeout: Duration::from_millis(300),
        ..redis_options(&format!("redis://{}", relay.addr), &prefix)
    };
    let a = RedisLimiter::connect(through_relay).await.expect("limiter");
    let b = RedisLimiter::connect(redis_options(&url, &prefix))
        .await
        .expect("limiter");
    clear_of_window_end(Window::Minute, Duration::from_secs(15)).await;
    a.take("shop", Counter::Profiles, 3, 10, Utc::now())
        .await
        .expect("shared");
    assert_eq!(b.peek("shop", Counter::Profiles, 10, Utc::now()).await.remaining, 7);

    relay.cut();
    // A decides alone: its own window is fresh, and Redis does not see it.
    let alone = a
        .take("shop", Counter::Profiles, 9, 10, Utc::now())
        .await
        .expect("local");
    assert_eq!(alone.remaining, 1);
    assert_eq!(b.peek("shop", Counter::Profiles, 10, Utc::now()).await.remaining, 7);

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shared = a.peek("shop", Counter::Profiles, 10, Utc::now()).await;
        if shared.remaining == 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A did not reach Redis again within 10 s: {shared:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.take("shop", Counter::Profiles, 2, 10, Utc::now())
        .await
        .expect("shared again");
    assert_eq!(b.peek("shop", Counter::Profiles, 10, Utc::now()).await.remaining, 5);
}

/// The API with Redis unreachable: exports and imports are answered as
/// usual, with this replica's own counts in their headers, and none waits
/// on Redis longer than the limiter's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_stays_up_while_redis_is_unreachable() {
    let options = RedisLimiterOptions {
        url: "redis://127.0.0.1:1".into(),
        timeout: Duration::from_millis(200),
        ..RedisLimiterOptions::default()
    };
    let limiter = RedisLimiter::connect(options)
        .await
        .expect("a limiter even without Redis");
    let server = common::TestServer::start_with_limiter(Arc::new(limiter)).await;
    let svc = server.service(serde_json::json!({"service_id": "shop"})).await;
    let login = common::event(1, "df_login", "2026-11-25T01:00:00Z", serde_json::json!({}));
    let imported = server
        .import_endpoint(&svc, "/api/v1/events", &common::events_body("u1", vec![login]))
        .await;
    assert_eq!(imported.headers()["x-rate-limit-remaining"], "999999");
    assert_eq!(imported.json::<serde_json::Value>().await.unwrap()["code"], "20000");
    let day = serde_json::json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    for remaining in ["99", "98"] {
        let resp = server.export(&svc, day.clone()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-rate-limit-remaining"], remaining);
        let (_, rows) = common::parse_csv(&resp.text().await.unwrap());
        assert_eq!(rows.len(), 1);
    }
}
