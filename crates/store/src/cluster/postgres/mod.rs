//! Cluster mode's metadata store on PostgreSQL: services, tokens,
//! taxonomies (names and types), profiles and identities, user properties,
//! audiences, the request log, server settings, and the memo of the first
//! correction time of future-dated events. Events themselves live in
//! ClickHouse.
//!
//! Each method has exactly the semantics of the [`crate::Store`] method of
//! the same name; several fineport processes may share one database.
//!
//! # Concurrency
//!
//! Every write is one transaction on a pooled connection
//! (`deadpool-postgres`). Identity resolution (the algorithm of
//! [`crate::identity`]) takes a per-service transaction-scoped advisory
//! lock (`pg_advisory_xact_lock(LOCK_NAMESPACE, hashtext(service_id))`),
//! then reads the identifiers the request names and their profiles, decides,
//! and writes its changes; so resolutions of one service, in any process,
//! run one after the other and can never split a user in two, while other
//! services proceed. Profile deletes take the same lock. User properties
//! are upserted with `ON CONFLICT … DO UPDATE … WHERE
//! excluded.updated_ms >= user_properties.updated_ms`, which PostgreSQL
//! evaluates against the newest committed row (after waiting for its writer), so an older update
//! never overwrites a newer one, whatever the interleaving. The first
//! correction of a future-dated event is recorded with `INSERT … ON
//! CONFLICT DO UPDATE SET correction_ms = first_corrections.correction_ms
//! RETURNING`, which answers every caller the value that won.
//!
//! # Processes that share the catalog
//!
//! Every catalog write (services, tokens, taxonomies, audiences) announces
//! its service with `NOTIFY` inside its transaction, and
//! [`Postgres::watch_catalog`] `LISTEN`s for them on a connection of its own;
//! [`Postgres::lock_catalog`] is a per-service session-level advisory lock
//! that serialises catalog changes across processes (`watch.rs`).
//!
//! # Errors
//!
//! An error PostgreSQL answered with a SQLSTATE is `Query`; a connection
//! that cannot be made or broke (no SQLSTATE), or a pool timeout, is
//! `Internal` (the server's `unknown_error`, HTTP 500 / 50000).

mod corrections;
mod import_logs;
mod profiles;
mod schema;
mod watch;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use fineport_contract::profile::Audience;
use fineport_contract::taxonomy::{PropertyScope, Taxonomy, TaxonomyDoc};
use fineport_contract::types::PropertyType;
use fineport_contract::ServiceId;
use tokio_postgres::NoTls;

use crate::records::{ms_to_time, parse_scope, stored_service_id};
use crate::{CatalogSnapshot, RequestLogEntry, Service, StoreError, StoreErrorKind, TokenKind, TokenRecord};

/// Connections the pool keeps at most.
const POOL_SIZE: usize = 16;

/// How long a caller waits for a pooled connection, or for a new one.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata store of cluster mode. Cheap to clone: clones share the
/// connection pool.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    /// Where the database is, for the connection of the catalog watch.
    config: tokio_postgres::Config,
    /// When expired correction memos were last deleted (UTC ms).
    last_purge_ms: Arc<AtomicI64>,
}

/// A PostgreSQL error as a store error: `Query` when the server answered
/// one (with its SQLSTATE), `Internal` when the connection failed.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::query(format!("PostgreSQL {}: {}", db.code().code(), db.message())),
        None => StoreError::internal(format!("PostgreSQL connection: {e}")),
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        other => StoreError::internal(format!("PostgreSQL pool: {other}")),
    }
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::internal(format!("stored document: {e}"))
}

/// Creates the database `name` (lowercase letters, digits and `_` only) on
/// the server of `server_url`, whose user must be allowed to, and returns
/// `server_url` pointing at it. For tests and `fineport bench`, which want
/// databases no one else uses; a deployment creates its database itself.
pub async fn create_database(server_url: &str, name: &str) -> Result<String, StoreError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::internal(format!("invalid database name {name:?}")));
    }
    let (client, connection) = tokio_postgres::connect(server_url, NoTls).await.map_err(pg_error)?;
    let connection = tokio::spawn(connection);
    let created = client.batch_execute(&format!("CREATE DATABASE {name}")).await;
    drop(client);
    let _ = connection.await;
    created.map_err(pg_error)?;
    let (base, query) = server_url.split_once('?').unwrap_or((server_url, ""));
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| StoreError::internal("a PostgreSQL URL must start with postgres://"))?;
    let host = rest.split_once('/').map_or(rest, |(host, _)| host);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    Ok(format!("{scheme}://{host}/{name}{query}"))
}

/// Drops the database `name` on the server of `server_url` (any database
/// of that server, as in [`create_database`]), closing its connections.
/// Nothing if it does not exist. For tests and `fineport bench`.
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::internal(format!("invalid database name {name:?}")));
    }
    let (client, connection) = tokio_postgres::connect(server_url, NoTls).await.map_err(pg_error)?;
    let connection = tokio::spawn(connection);
    let dropped = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    drop(client);
    let _ = connection.await;
    dropped.map_err(pg_error)
}

impl Postgres {
    /// Connects to the database at `url` (e.g.
    /// `postgres://postgres@127.0.0.1:55433/fineport`) and runs the
    /// idempotent migrations. Errors: `Internal` for a malformed URL or a
    /// database that cannot be reached, `Query` for a failed migration.
    pub async fn open(url: &str) -> Result<Postgres, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::internal(format!("PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::internal(format!("PostgreSQL pool: {e}")))?;
        let store = Postgres {
            pool,
            config,
            last_purge_ms: Arc::default(),
        };
        let mut client = store.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&schema::LOCK_NAMESPACE, &schema::MIGRATION_LOCK],
        )
        .await
        .map_err(pg_error)?;
        tx.batch_execute(schema::MIGRATIONS).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(store)
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Everything the server keeps in memory: services (by id), tokens (by
    /// creation), taxonomies, audiences (by service, then id); one snapshot.
    pub async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        self.load(None).await
    }

    /// [`Postgres::load_catalog`] of one service (an empty snapshot when it
    /// does not exist); one snapshot.
    pub async fn load_service(&self, service_id: &ServiceId) -> Result<CatalogSnapshot, StoreError> {
        self.load(Some(service_id)).await
    }

    /// The catalog, or the part of one service, in one read-only
    /// repeatable-read transaction (one snapshot).
    async fn load(&self, only: Option<&ServiceId>) -> Result<CatalogSnapshot, StoreError> {
        // The same statements with and without the filter, so that the
        // filtered ones use the tables' service_id indexes.
        let filter = match only {
            Some(_) => " WHERE service_id = $1",
            None => "",
        };
        let only = only.map(ServiceId::as_str);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &only {
            Some(id) => vec![id],
            None => Vec::new(),
        };
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let mut snapshot = CatalogSnapshot::default();
        let sql = format!("SELECT doc FROM services{filter} ORDER BY service_id");
        for row in query(&tx, &sql, &params).await? {
            snapshot
                .services
                .push(serde_json::from_str(row.try_get(0).map_err(pg_error)?).map_err(json_error)?);
        }
        let sql = format!(
            "SELECT token_id, service_id, kind, hash, created_ms, by_reissue, valid_until_ms, revoked, reason \
             FROM tokens{filter} ORDER BY created_ms, token_id"
        );
        for row in query(&tx, &sql, &params).await? {
            let kind: &str = row.try_get(2).map_err(pg_error)?;
            let kind =
                TokenKind::parse(kind).ok_or_else(|| StoreError::internal(format!("unknown token kind {kind:?}")))?;
            snapshot.tokens.push(TokenRecord {
                token_id: row.try_get(0).map_err(pg_error)?,
                service_id: stored_service_id(row.try_get(1).map_err(pg_error)?)?,
                kind,
                hash: row.try_get(3).map_err(pg_error)?,
                created_at: ms_to_time(row.try_get(4).map_err(pg_error)?, "a token's creation")?,
                by_reissue: row.try_get(5).map_err(pg_error)?,
                valid_until: row
                    .try_get::<_, Option<i64>>(6)
                    .map_err(pg_error)?
                    .map(|ms| ms_to_time(ms, "a token's end of validity"))
                    .transpose()?,
                revoked: row.try_get(7).map_err(pg_error)?,
                reason: row.try_get(8).map_err(pg_error)?,
            });
        }
        let sql = format!("SELECT service_id, name FROM taxonomy_events{filter}");
        for row in query(&tx, &sql, &params).await? {
            let service_id = stored_service_id(row.try_get(0).map_err(pg_error)?)?;
            let name: String = row.try_get(1).map_err(pg_error)?;
            snapshot.taxonomies.entry(service_id).or_default().events.insert(name);
        }
        let sql = format!("SELECT service_id, scope, name, type FROM taxonomy_properties{filter}");
        for row in query(&tx, &sql, &params).await? {
            let service_id = stored_service_id(row.try_get(0).map_err(pg_error)?)?;
            let scope = parse_scope(row.try_get(1).map_err(pg_error)?)?;
            let name: String = row.try_get(2).map_err(pg_error)?;
            let ty: &str = row.try_get(3).map_err(pg_error)?;
            let ty =
                PropertyType::parse(ty).ok_or_else(|| StoreError::internal(format!("unknown stored type {ty:?}")))?;
            let taxonomy = snapshot.taxonomies.entry(service_id).or_default();
            match scope {
                PropertyScope::Event => taxonomy.event_properties.insert(name, ty),
                PropertyScope::Item => taxonomy.item_properties.insert(name, ty),
                PropertyScope::User => taxonomy.user_properties.insert(name, ty),
            };
        }
        let sql = format!("SELECT service_id, doc FROM audiences{filter} ORDER BY service_id, audience_id");
        for row in query(&tx, &sql, &params).await? {
            let service_id = stored_service_id(row.try_get(0).map_err(pg_error)?)?;
            let audience: Audience = serde_json::from_str(row.try_get(1).map_err(pg_error)?).map_err(json_error)?;
            snapshot.audiences.push((service_id, audience));
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(snapshot)
    }

    /// Creates a service with its tokens and taxonomy, atomically.
    /// `Conflict` if the id exists (also when another process created it
    /// at the same moment).
    pub async fn create_service(
        &self,
        service: &Service,
        tokens: &[TokenRecord],
        taxonomy: &Taxonomy,
    ) -> Result<(), StoreError> {
        let doc = serde_json::to_string(service).map_err(json_error)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let created = tx
            .execute(
                "INSERT INTO services (service_id, doc) VALUES ($1, $2) ON CONFLICT (service_id) DO NOTHING",
                &[&service.service_id.as_str(), &doc],
            )
            .await
            .map_err(pg_error)?;
        if created == 0 {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("service {} exists", service.service_id),
            ));
        }
        save_tokens_in(&tx, tokens).await?;
        register_in(&tx, &service.service_id, &taxonomy.to_doc()).await?;
        announce(&tx, &service.service_id).await?;
        tx.commit().await.map_err(pg_error)
    }

    /// Replaces a service's settings. `NotFound` if it does not exist.
    pub async fn update_service(&self, service: &Service) -> Result<(), StoreError> {
        let doc = serde_json::to_string(service).map_err(json_error)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let n = tx
            .execute(
                "UPDATE services SET doc = $2 WHERE service_id = $1",
                &[&service.service_id.as_str(), &doc],
            )
            .await
            .map_err(pg_error)?;
        if n == 0 {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                format!("no service {}", service.service_id),
            ));
        }
        announce(&tx, &service.service_id).await?;
        tx.commit().await.map_err(pg_error)
    }

    /// Inserts new tokens and updates changed ones (matched by
    /// `token_id`), atomically.
    pub async fn save_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        save_tokens_in(&tx, tokens).await?;
        let services: std::collections::BTreeSet<&ServiceId> = tokens.iter().map(|t| &t.service_id).collect();
        for service_id in services {
            announce(&tx, service_id).await?;
        }
        tx.commit().await.map_err(pg_error)
    }

    /// Registers taxonomy additions (names and types; already checked
    /// against the current taxonomy), atomically. A name registered again
    /// (e.g. by another process at the same moment) keeps its first type.
    /// `Internal` for a property of type `Items` (`df_items` is never
    /// registered).
    pub async fn register(&self, service_id: &ServiceId, additions: &TaxonomyDoc) -> Result<(), StoreError> {
        if additions.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        register_in(&tx, service_id, additions).await?;
        announce(&tx, service_id).await?;
        tx.commit().await.map_err(pg_error)
    }

    /// Saves (creates or replaces) an audience definition.
    pub async fn save_audience(&self, service_id: &ServiceId, audience: &Audience) -> Result<(), StoreError> {
        let doc = serde_json::to_string(audience).map_err(json_error)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO audiences (service_id, audience_id, doc) VALUES ($1, $2, $3) \
             ON CONFLICT (service_id, audience_id) DO UPDATE SET doc = excluded.doc",
            &[&service_id.as_str(), &audience.id, &doc],
        )
        .await
        .map_err(pg_error)?;
        announce(&tx, service_id).await?;
        tx.commit().await.map_err(pg_error)
    }

    /// Deletes an audience. `false` if there was none.
    pub async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let n = tx
            .execute(
                "DELETE FROM audiences WHERE service_id = $1 AND audience_id = $2",
                &[&service_id.as_str(), &audience_id],
            )
            .await
            .map_err(pg_error)?;
        if n > 0 {
            announce(&tx, service_id).await?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(n > 0)
    }

    /// Appends entries to the request log (SPEC §5.2), in their order.
    pub async fn append_request_log(&self, entries: Vec<RequestLogEntry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut columns = RequestLogColumns::default();
        for e in &entries {
            columns.push(e)?;
        }
        let c = &columns;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO request_log (time_ms, service_id, endpoint, status, message, ip, user_agent, \
                 token_id, rows, bytes, duration_ms) \
                 SELECT time_ms, service_id, endpoint, status, message, ip, user_agent, token_id, rows, bytes, \
                 duration_ms FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[]) WITH ORDINALITY \
                 AS e(time_ms, service_id, endpoint, status, message, ip, user_agent, token_id, rows, bytes, \
                 duration_ms, n) ORDER BY n",
                &[
                    &c.time_ms,
                    &c.service_id,
                    &c.endpoint,
                    &c.status,
                    &c.message,
                    &c.ip,
                    &c.user_agent,
                    &c.token_id,
                    &c.rows,
                    &c.bytes,
                    &c.duration_ms,
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// The newest `limit` log entries of a service, newest first (entries
    /// of the same millisecond: the last appended first).
    pub async fn recent_requests(
        &self,
        service_id: &ServiceId,
        limit: usize,
        outcome: Option<&str>,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT time_ms, service_id, endpoint, status, message, ip, user_agent, token_id, rows, bytes, \
                 duration_ms FROM request_log WHERE service_id = $1 AND ($3::text IS NULL OR message = $3) \
                 ORDER BY time_ms DESC, seq DESC LIMIT $2",
                &[&service_id.as_str(), &limit, &outcome],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|r| {
                let count = |i: usize| -> Result<Option<u64>, StoreError> {
                    Ok(r.try_get::<_, Option<i64>>(i).map_err(pg_error)?.map(|v| v as u64))
                };
                Ok(RequestLogEntry {
                    time: ms_to_time(r.try_get(0).map_err(pg_error)?, "a request log entry")?,
                    service_id: r.try_get(1).map_err(pg_error)?,
                    endpoint: r.try_get(2).map_err(pg_error)?,
                    status: u16::try_from(r.try_get::<_, i32>(3).map_err(pg_error)?)
                        .map_err(|e| StoreError::internal(format!("corrupt stored status: {e}")))?,
                    message: r.try_get(4).map_err(pg_error)?,
                    ip: r.try_get(5).map_err(pg_error)?,
                    user_agent: r.try_get(6).map_err(pg_error)?,
                    token_id: r.try_get(7).map_err(pg_error)?,
                    rows: count(8)?,
                    bytes: count(9)?,
                    duration_ms: r.try_get::<_, i64>(10).map_err(pg_error)? as u64,
                })
            })
            .collect()
    }

    /// Sums over a service's request log per time bucket
    /// ([`crate::Store::request_sums`]): one grouped query over the
    /// buckets' range (the `request_log_newest` index).
    pub async fn request_sums(
        &self,
        service_id: &ServiceId,
        query: &crate::RequestSumsQuery,
    ) -> Result<Vec<crate::BucketSums>, StoreError> {
        query.check()?;
        let (lows, highs) = (&query.bounds[..query.bounds.len() - 1], &query.bounds[1..]);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT b.i, count(r.seq) FILTER (WHERE r.endpoint = ANY($4)), \
                 coalesce(sum(r.rows) FILTER (WHERE r.endpoint = ANY($5) AND r.message = 'ok'), 0)::bigint \
                 FROM unnest($2::bigint[], $3::bigint[]) WITH ORDINALITY AS b(lo, hi, i) \
                 LEFT JOIN request_log r ON r.service_id = $1 AND r.time_ms >= b.lo AND r.time_ms < b.hi \
                 GROUP BY b.i ORDER BY b.i",
                &[&service_id.as_str(), &lows, &highs, &query.counted, &query.rows_of],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|r| {
                Ok(crate::BucketSums {
                    requests: r.try_get::<_, i64>(1).map_err(pg_error)?.max(0) as u64,
                    rows: r.try_get::<_, i64>(2).map_err(pg_error)?.max(0) as u64,
                })
            })
            .collect()
    }

    /// A server-wide setting (e.g. the admin token hash).
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
            .await
            .map_err(pg_error)?;
        row.map(|r| r.try_get(0).map_err(pg_error)).transpose()
    }

    /// Sets a server-wide setting, replacing its value.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

/// Runs a query, mapping its error.
async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    client.query(sql, params).await.map_err(pg_error)
}

/// The request log entries of one append, as columns for `unnest`.
#[derive(Default)]
struct RequestLogColumns<'a> {
    time_ms: Vec<i64>,
    service_id: Vec<&'a str>,
    endpoint: Vec<&'a str>,
    status: Vec<i32>,
    message: Vec<&'a str>,
    ip: Vec<&'a str>,
    user_agent: Vec<&'a str>,
    token_id: Vec<Option<&'a str>>,
    rows: Vec<Option<i64>>,
    bytes: Vec<Option<i64>>,
    duration_ms: Vec<i64>,
}

impl<'a> RequestLogColumns<'a> {
    fn push(&mut self, e: &'a RequestLogEntry) -> Result<(), StoreError> {
        let big = |v: u64| i64::try_from(v).map_err(|_| StoreError::internal(format!("{v} is out of range")));
        self.time_ms.push(e.time.timestamp_millis());
        self.service_id.push(&e.service_id);
        self.endpoint.push(&e.endpoint);
        self.status.push(i32::from(e.status));
        self.message.push(&e.message);
        self.ip.push(&e.ip);
        self.user_agent.push(&e.user_agent);
        self.token_id.push(e.token_id.as_deref());
        self.rows.push(e.rows.map(big).transpose()?);
        self.bytes.push(e.bytes.map(big).transpose()?);
        self.duration_ms.push(big(e.duration_ms)?);
        Ok(())
    }
}

/// Announces, inside the transaction `client` runs, that the catalog of
/// `service_id` changed ([`watch::CHANNEL`]). PostgreSQL delivers a
/// notification to the listening watches only when its transaction commits
/// (and never when it rolls back), so no watch hears of a change before a
/// read can see it, and none can miss a committed one while listening.
async fn announce(client: &impl GenericClient, service_id: &ServiceId) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&watch::CHANNEL, &service_id.as_str()])
        .await
        .map_err(pg_error)?;
    Ok(())
}

async fn save_tokens_in(client: &impl GenericClient, tokens: &[TokenRecord]) -> Result<(), StoreError> {
    for t in tokens {
        client
            .execute(
                "INSERT INTO tokens \
                 (token_id, service_id, kind, hash, created_ms, by_reissue, valid_until_ms, revoked, reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (token_id) DO UPDATE SET \
                 service_id = excluded.service_id, kind = excluded.kind, hash = excluded.hash, \
                 created_ms = excluded.created_ms, by_reissue = excluded.by_reissue, \
                 valid_until_ms = excluded.valid_until_ms, revoked = excluded.revoked, \
                 reason = excluded.reason",
                &[
                    &t.token_id,
                    &t.service_id.as_str(),
                    &t.kind.as_str(),
                    &t.hash,
                    &t.created_at.timestamp_millis(),
                    &t.by_reissue,
                    &t.valid_until.as_ref().map(DateTime::<Utc>::timestamp_millis),
                    &t.revoked,
                    &t.reason,
                ],
            )
            .await
            .map_err(pg_error)?;
    }
    Ok(())
}

async fn register_in(
    client: &impl GenericClient,
    service_id: &ServiceId,
    additions: &TaxonomyDoc,
) -> Result<(), StoreError> {
    for name in &additions.events {
        client
            .execute(
                "INSERT INTO taxonomy_events (service_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&service_id.as_str(), name],
            )
            .await
            .map_err(pg_error)?;
    }
    for (scope, def) in additions.properties() {
        if def.ty == PropertyType::Items {
            return Err(StoreError::internal(format!(
                "{:?}: df_items is never registered",
                def.name
            )));
        }
        client
            .execute(
                "INSERT INTO taxonomy_properties (service_id, scope, name, type) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&service_id.as_str(), &scope.as_str(), &def.name, &def.ty.as_str()],
            )
            .await
            .map_err(pg_error)?;
    }
    Ok(())
}
