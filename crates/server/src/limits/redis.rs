//! Limits shared by every replica through Redis (SPEC §3 "Limits hold
//! across all replicas of the server when they share a Redis").
//!
//! Each decision is one Lua script (`lua/*.lua`, run with `EVALSHA`), so
//! that two replicas racing for the last unit or slot cannot both win, and
//! each script reads Redis's `TIME`, so that every replica counts in the
//! same windows whatever its own clock says. Keys (per service, with the
//! `{service}` hash tag so that a script's keys share one Redis Cluster
//! slot): `<prefix>{<service>}:export:win` (hash: window number `w`, used
//! `n`), `<prefix>{<service>}:export:lease` (sorted set: lease id → expiry
//! in ms), `<prefix>{<service>}:{events,identities,profiles}:win`. Every
//! key expires by itself: Redis keeps nothing that must survive a restart.
//!
//! A concurrency slot is a **lease** of [`RedisLimiterOptions::lease`]:
//! while the export streams, a task extends it every third of a lease; the
//! end of the export (the permit's drop) removes it. A replica that dies
//! (`kill -9`, power loss) stops extending its leases, and an acquire purges
//! expired ones first: the slot is free again within one lease.
//!
//! **Redis unreachable.** Every call is bounded by
//! [`RedisLimiterOptions::timeout`]. A call that fails or times out is
//! decided by this replica's own [`MemoryLimiter`] instead, and a warning is
//! logged (at most one per 10 s): the API stays up, each replica enforces
//! the service's limits on its own requests, so across `n` replicas a
//! service can get up to `n` times its limits until Redis is back. Limits
//! protect the stores from overload; refusing every export and import while
//! only the limiter is down would turn a Redis outage into an API outage
//! (ARCHITECTURE.md "Decisions").

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fineport_contract::ServiceId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script};

use super::{retry_after, Counter, ExportPermit, Lease, Limiter, MemoryLimiter, RateStatus, Refusal, Window};

/// How a [`RedisLimiter`] reaches Redis and keeps its leases.
#[derive(Debug, Clone)]
pub struct RedisLimiterOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Prepended to every key, so that several deployments (or tests) can
    /// share one Redis. No `{` or `}` (they would change the hash tag).
    pub key_prefix: String,
    /// How long an export's concurrency slot outlives the last heartbeat
    /// of the replica serving it. Heartbeats come every third of it.
    pub lease: Duration,
    /// The longest a request waits for Redis before this replica decides
    /// by itself.
    pub timeout: Duration,
}

impl Default for RedisLimiterOptions {
    fn default() -> Self {
        RedisLimiterOptions {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "fineport:".into(),
            lease: Duration::from_secs(6),
            timeout: Duration::from_millis(500),
        }
    }
}

/// The six scripts, hashed once.
struct Scripts {
    export_acquire: Script,
    lease_heartbeat: Script,
    export_release: Script,
    window_take: Script,
    window_peek: Script,
    window_give_back: Script,
}

struct Inner {
    connection: ConnectionManager,
    options: RedisLimiterOptions,
    scripts: Scripts,
    fallback: MemoryLimiter,
    /// Unix seconds of the last "Redis unreachable" warning.
    last_warning: AtomicI64,
}

/// Limits kept in Redis and shared by every replica that uses the same
/// Redis and key prefix. Cheap to clone.
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

/// Why a [`RedisLimiter`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RedisLimiterError {
    #[error("the Redis URL is not valid: {0}")]
    Url(String),
    #[error("the Redis key prefix {0:?} must not hold '{{' or '}}'")]
    Prefix(String),
}

impl RedisLimiter {
    /// A limiter on the Redis at `options.url`. The connection is made in
    /// the background and remade whenever it breaks; if Redis cannot be
    /// reached now, a warning is logged and requests are limited by this
    /// replica alone until it can (see the module docs). Errors: a
    /// malformed URL or key prefix.
    pub async fn connect(options: RedisLimiterOptions) -> Result<RedisLimiter, RedisLimiterError> {
        if options.key_prefix.contains(['{', '}']) {
            return Err(RedisLimiterError::Prefix(options.key_prefix));
        }
        let client = redis::Client::open(options.url.as_str()).map_err(|e| RedisLimiterError::Url(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisLimiterError::Url(e.to_string()))?;
        let limiter = RedisLimiter {
            inner: Arc::new(Inner {
                connection,
                options,
                scripts: Scripts {
                    export_acquire: Script::new(include_str!("lua/export_acquire.lua")),
                    lease_heartbeat: Script::new(include_str!("lua/lease_heartbeat.lua")),
                    export_release: Script::new(include_str!("lua/export_release.lua")),
                    window_take: Script::new(include_str!("lua/window_take.lua")),
                    window_peek: Script::new(include_str!("lua/window_peek.lua")),
                    window_give_back: Script::new(include_str!("lua/window_give_back.lua")),
                },
                fallback: MemoryLimiter::default(),
                last_warning: AtomicI64::new(i64::MIN),
            }),
        };
        if let Err(e) = limiter.inner.ping().await {
            tracing::warn!(error = %e, "Redis cannot be reached now; each replica limits its own requests until it can");
        }
        Ok(limiter)
    }
}

impl Inner {
    fn key(&self, service_id: &ServiceId, what: &str) -> String {
        format!("{}{{{service_id}}}:{what}", self.options.key_prefix)
    }

    fn window_key(&self, service_id: &ServiceId, counter: Counter) -> String {
        let what = match counter {
            Counter::Exports => "export:win",
            Counter::Events => "events:win",
            Counter::Identities => "identities:win",
            Counter::Profiles => "profiles:win",
        };
        self.key(service_id, what)
    }

    async fn ping(&self) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(self.options.timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.options.timeout.as_millis())),
        }
    }

    /// Runs `script` with `keys` and `args`, within the timeout.
    async fn eval<T: FromRedisValue>(&self, script: &Script, keys: &[&str], args: &[String]) -> Result<T, String> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.options.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.options.timeout.as_millis())),
        }
    }

    /// Logs that Redis failed and this replica decides alone, at most once
    /// every 10 s.
    fn degraded(&self, what: &str, error: &str) {
        let now = Utc::now().timestamp();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error,
                what,
                "Redis is unreachable; this replica limits its own requests until it is back"
            );
        }
    }
}

/// An export's slot in Redis: a lease kept alive by a heartbeat task.
struct RedisLease {
    inner: Arc<Inner>,
    window_key: String,
    lease_key: String,
    lease_id: String,
    /// The hourly window the export was counted in.
    window: i64,
    heartbeat: tokio::task::AbortHandle,
}

impl Lease for RedisLease {
    fn release(self: Box<Self>, refund: bool) {
        self.heartbeat.abort();
        // Without a runtime (a permit dropped at the very end of the
        // process) the lease simply expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let args = [
                self.lease_id.clone(),
                if refund { "1" } else { "0" }.to_owned(),
                self.window.to_string(),
            ];
            let released = self
                .inner
                .eval::<(i64, i64)>(
                    &self.inner.scripts.export_release,
                    &[&self.window_key, &self.lease_key],
                    &args,
                )
                .await;
            if let Err(e) = released {
                // The slot comes free when its lease ends.
                self.inner.degraded("export release", &e);
            }
        });
    }
}

/// Extends a lease every third of its length until aborted, or until Redis
/// says it is gone.
async fn heartbeat(inner: Arc<Inner>, lease_key: String, lease_id: String) {
    let lease_ms = inner.options.lease.as_millis().to_string();
    let every = inner.options.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let args = [lease_id.clone(), lease_ms.clone()];
        match inner
            .eval::<i64>(&inner.scripts.lease_heartbeat, &[&lease_key], &args)
            .await
        {
            Ok(1) => {}
            Ok(_) => {
                // Expired and purged (heartbeats failed for a whole lease,
                // or Redis restarted): the export goes on, but its slot may
                // now be someone else's.
                tracing::warn!(lease_id, "an export's concurrency lease was lost; the export continues");
                return;
            }
            Err(e) => inner.degraded("export heartbeat", &e),
        }
    }
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn acquire_export(
        &self,
        service_id: &str,
        per_hour: u64,
        concurrency: u32,
        now: DateTime<Utc>,
    ) -> Result<ExportPermit, Refusal> {
        let inner = &self.inner;
        let Ok(id) = ServiceId::parse(service_id) else {
            return inner
                .fallback
                .acquire_export(service_id, per_hour, concurrency, now)
                .await;
        };
        let (window_key, lease_key) = (inner.window_key(&id, Counter::Exports), inner.key(&id, "export:lease"));
        let lease_id = uuid::Uuid::new_v4().to_string();
        let args = [
            per_hour.to_string(),
            concurrency.to_string(),
            lease_id.clone(),
            inner.options.lease.as_millis().to_string(),
            Window::Hour.millis().to_string(),
        ];
        let answer = inner
            .eval::<(i64, String, i64, i64, i64, i64)>(&inner.scripts.export_acquire, &[&window_key, &lease_key], &args)
            .await;
        let (granted, reason, remaining, reset_ms, window, now_ms) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                inner.degraded("export acquire", &e);
                return inner
                    .fallback
                    .acquire_export(service_id, per_hour, concurrency, now)
                    .await;
            }
        };
        let status = RateStatus {
            window: Window::Hour,
            remaining: remaining.max(0) as u64,
            reset_ms,
        };
        if granted != 1 {
            let retry_after_secs = if reason == "quota" {
                retry_after(reset_ms, now_ms)
            } else {
                1
            };
            return Err(Refusal {
                status,
                retry_after_secs,
            });
        }
        let heartbeat = tokio::spawn(heartbeat(inner.clone(), lease_key.clone(), lease_id.clone())).abort_handle();
        let lease = RedisLease {
            inner: inner.clone(),
            window_key,
            lease_key,
            lease_id,
            window,
            heartbeat,
        };
        Ok(ExportPermit::new(status, Box::new(lease)))
    }

    async fn take(
        &self,
        service_id: &str,
        counter: Counter,
        n: u64,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<RateStatus, Refusal> {
        let inner = &self.inner;
        let Ok(id) = ServiceId::parse(service_id) else {
            return inner.fallback.take(service_id, counter, n, limit, now).await;
        };
        let window = counter.window();
        let key = inner.window_key(&id, counter);
        let args = [limit.to_string(), n.to_string(), window.millis().to_string()];
        let answer = inner
            .eval::<(i64, i64, i64, i64, i64)>(&inner.scripts.window_take, &[&key], &args)
            .await;
        let (granted, remaining, reset_ms, _, now_ms) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                inner.degraded("window take", &e);
                return inner.fallback.take(service_id, counter, n, limit, now).await;
            }
        };
        let status = RateStatus {
            window,
            remaining: remaining.max(0) as u64,
            reset_ms,
        };
        if granted == 1 {
            Ok(status)
        } else {
            Err(Refusal {
                status,
                retry_after_secs: retry_after(reset_ms, now_ms),
            })
        }
    }

    async fn give_back(&self, service_id: &str, counter: Counter, n: u64, taken: &RateStatus) {
        let inner = &self.inner;
        let Ok(id) = ServiceId::parse(service_id) else {
            return inner.fallback.give_back(service_id, counter, n, taken).await;
        };
        let window_ms = counter.window().millis();
        let window = taken.reset_ms.div_euclid(window_ms) - 1;
        let key = inner.window_key(&id, counter);
        let args = [n.to_string(), window.to_string()];
        // Units taken while Redis was down were taken from the fallback; a
        // give-back that reaches Redis for them returns units Redis never
        // counted, which lets at most `n` more through in that window.
        if let Err(e) = inner.eval::<i64>(&inner.scripts.window_give_back, &[&key], &args).await {
            inner.degraded("window give-back", &e);
            inner.fallback.give_back(service_id, counter, n, taken).await;
        }
    }

    async fn peek(&self, service_id: &str, counter: Counter, limit: u64, now: DateTime<Utc>) -> RateStatus {
        let inner = &self.inner;
        let Ok(id) = ServiceId::parse(service_id) else {
            return inner.fallback.peek(service_id, counter, limit, now).await;
        };
        let window = counter.window();
        let key = inner.window_key(&id, counter);
        let args = [window.millis().to_string()];
        match inner
            .eval::<(i64, i64, i64, i64)>(&inner.scripts.window_peek, &[&key], &args)
            .await
        {
            Ok((used, reset_ms, _, _)) => RateStatus {
                window,
                remaining: limit.saturating_sub(used.max(0) as u64),
                reset_ms,
            },
            Err(e) => {
                inner.degraded("window peek", &e);
                inner.fallback.peek(service_id, counter, limit, now).await
            }
        }
    }
}
