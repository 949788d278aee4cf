//! The events half of the cluster backend: events in a sharded ClickHouse
//! cluster (18.16 and later), over ClickHouse's HTTP interface.
//!
//! Layout (one table for every service, the same DDL on every shard):
//! `<db>.events_local`, a `ReplacingMergeTree(ver)` ordered by
//! `(service_id, correction_ms, event_log_id)` and partitioned by UTC
//! month, and `<db>.events`, a `Distributed` table over it sharded by
//! `cityHash64(service_id, event_log_id)`, so that every copy of an event
//! lands on one shard. Properties are the parallel arrays `prop_keys` /
//! `prop_values` holding canonical CSV cell text made at import
//! ([`fineport_contract::cells::StoredEvent`]); ClickHouse never formats a
//! value, so an export is byte-identical to the DuckDB backend's.
//! `ver`, smaller for each later receipt (`insert.rs` `ReceiptOrder`),
//! makes merges keep the first receipt.
//!
//! - [`ClickHouse::insert`] is a group commit (`insert.rs`): concurrent
//!   callers share one synchronous Distributed INSERT, which stores each
//!   request whole. The import log's moves ([`Backing::ImportLog`]) send
//!   each row straight to its shard's `events_local`, where the
//!   Distributed table would send it (`route.rs`), or through the
//!   Distributed table where the URLs cannot be matched to shards.
//! - [`ClickHouse::export`] streams the event export (`export.rs`): one
//!   sorted query per group of service days, read as RowBinary and encoded
//!   here with the DuckDB backend's CSV functions.
//! - [`ClickHouse::users_with_events`] streams the users matching an
//!   audience event-count rule (`users.rs`).
//!
//! Why HTTP with a RowBinary reader written here (`rowbinary.rs`) rather
//! than a client crate: 18.16 has no `RowBinaryWithNamesAndTypes`, which
//! typed clients use to check their schema, and every response must be
//! checked row by row anyway: after its headers, 18.16 reports a failure
//! by appending its error text to a body that otherwise ends cleanly
//! (HTTP 200), so only a per-row range/order check (and a partial row at
//! the end) tells a cut export from a complete one. Owning the request
//! also gives each query its own `query_id`, which a dropped export uses
//! for `KILL QUERY` (18.16 does not stop a query when its client leaves).
//!
//! Names never reach SQL text: the service id is a [`ServiceId`]
//! (`[a-z0-9_]`), database and cluster names are checked at open, and
//! event names are sent as `unhex('…')` literals (18.16 has no query
//! parameters).

mod export;
mod insert;
mod response;
mod route;
mod rowbinary;
mod users;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fineport_contract::export::EventExportPlan;
use fineport_contract::{ServiceId, Tz, Uuid};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::{ExportStream, StoreError};

pub use self::insert::{Backing, ImportRows};
pub use fineport_contract::cells::StoredEvent as EventRow;

/// Where the cluster is and how fineport uses it.
#[derive(Debug, Clone)]
pub struct ClickHouseOptions {
    /// The HTTP URL of every shard, e.g. `http://127.0.0.1:18123`. Each
    /// gets the tables; queries and inserts go to them in turn.
    pub urls: Vec<String>,
    /// Database holding the tables (default `fineport`): ASCII letters,
    /// digits and `_`.
    pub database: String,
    /// The `remote_servers` cluster of the shards (default `fineport`),
    /// with exactly one shard per URL: ASCII letters, digits and `_`.
    pub cluster: String,
    /// Group commit: how long an INSERT waits for more rows after the first
    /// that waits for it, or until [`Self::insert_max_rows`] wait (default
    /// 0: it takes what arrived while the previous INSERT ran, and goes).
    pub insert_linger: Duration,
    /// Group commit: most rows in one INSERT (default 20,000).
    pub insert_max_rows: usize,
    /// Export: consecutive days are queried together while they hold at
    /// most this many rows (default 33,000; a bigger day is queried alone,
    /// never split). 1 queries every day with events on its own.
    pub export_rows_per_query: u64,
    /// `max_execution_time` of every read query, in seconds (default
    /// 600): a backstop, since the day queries take well under a second.
    pub max_execution_secs: u64,
}

impl Default for ClickHouseOptions {
    fn default() -> Self {
        ClickHouseOptions {
            urls: Vec::new(),
            database: "fineport".into(),
            cluster: "fineport".into(),
            insert_linger: Duration::from_millis(0),
            insert_max_rows: 20_000,
            export_rows_per_query: 33_000,
            max_execution_secs: 600,
        }
    }
}

/// Counters of what the backend sent, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClickHouseStats {
    /// INSERT rounds that returned OK (a round is one INSERT, or for the
    /// import log's moves one per shard its rows touch).
    pub inserts: u64,
    /// Rows in those INSERTs.
    pub inserted_rows: u64,
    /// INSERTs sent straight into a shard's `events_local` (the import
    /// log's moves, where the URLs are matched to shards), answered or not.
    pub shard_inserts: u64,
    /// Export row queries started (planning queries not counted).
    pub export_queries: u64,
}

/// A connection to the ClickHouse cluster: a cheap clone (an `Arc`).
#[derive(Clone)]
pub struct ClickHouse {
    inner: Arc<Inner>,
    /// Requests answered on their INSERT ([`Backing::Answer`]).
    answers: insert::Writer,
    /// The import log's moves ([`Backing::ImportLog`]); the same writer
    /// where the URLs are not matched to shards.
    moves: insert::Writer,
}

/// What every operation shares.
pub(crate) struct Inner {
    http: reqwest::Client,
    /// Shard base URLs, without a trailing `/`.
    nodes: Vec<String>,
    /// `<database>.events` (Distributed).
    events_table: String,
    /// `<database>.events_local` (on every shard).
    local_table: String,
    options: ClickHouseOptions,
    next_node: AtomicUsize,
    inserts: AtomicU64,
    inserted_rows: AtomicU64,
    shard_inserts: AtomicU64,
    export_queries: AtomicU64,
}

/// Tries of a `KILL QUERY` for an abandoned query.
const KILL_ATTEMPTS: u32 = 3;

/// Longest ClickHouse error text kept in a [`StoreError`] message.
const MAX_ERROR_TEXT: usize = 2_000;

impl ClickHouse {
    /// Connects to every shard of `opts.urls` and makes sure the tables
    /// exist: checks that each shard answers and sees `opts.cluster` with
    /// one shard per URL, then runs `CREATE DATABASE/TABLE … IF NOT
    /// EXISTS` for `events_local` on every shard and the Distributed
    /// `events` on every shard (18.16 has no `ON CLUSTER` without
    /// ZooKeeper). Idempotent. Errors: `Internal` for bad options, `Query`
    /// with ClickHouse's text for a shard that is down or refuses.
    pub async fn open(opts: &ClickHouseOptions) -> Result<ClickHouse, StoreError> {
        identifier("database", &opts.database)?;
        identifier("cluster", &opts.cluster)?;
        if opts.urls.is_empty() {
            return Err(StoreError::internal("no ClickHouse URL given"));
        }
        let http = reqwest::Client::builder()
            // Below the server's keep_alive_timeout (3 s in Debian's
            // config), so a pooled connection is never one it just closed.
            .pool_idle_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| StoreError::internal(format!("cannot build the HTTP client: {e}")))?;
        let inner = Arc::new(Inner {
            http,
            nodes: opts.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect(),
            events_table: format!("{}.events", opts.database),
            local_table: format!("{}.events_local", opts.database),
            options: opts.clone(),
            next_node: AtomicUsize::new(0),
            inserts: AtomicU64::new(0),
            inserted_rows: AtomicU64::new(0),
            shard_inserts: AtomicU64::new(0),
            export_queries: AtomicU64::new(0),
        });
        let db = &opts.database;
        let ddl = [
            format!("CREATE DATABASE IF NOT EXISTS {db}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.events_local (\
                 service_id String, correction_ms Int64, event_log_id String, server_ms Int64, \
                 event_ms Int64, unified_id String, event_name String, api_version String, \
                 platform String, prop_keys Array(String), prop_values Array(String), \
                 item_count UInt16, ver UInt64) \
                 ENGINE = ReplacingMergeTree(ver) \
                 PARTITION BY toYYYYMM(toDateTime(intDiv(correction_ms, 1000), 'UTC')) \
                 ORDER BY (service_id, correction_ms, event_log_id)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.events AS {db}.events_local \
                 ENGINE = Distributed({}, {db}, events_local, cityHash64(service_id, event_log_id))",
                opts.cluster
            ),
        ];
        let shards_sql = format!(
            "SELECT shard_num, shard_weight, is_local FROM system.clusters \
             WHERE cluster = '{}' ORDER BY shard_num, replica_num FORMAT TSV",
            opts.cluster
        );
        let mut listings = Vec::new();
        for node in 0..inner.nodes.len() {
            let shards = inner.fetch(node, &shards_sql, &[]).await?;
            let Some(listing) = route::ClusterRow::parse_tsv(&String::from_utf8_lossy(&shards)) else {
                return Err(StoreError::internal(format!(
                    "ClickHouse at {}: unexpected system.clusters rows: {:?}",
                    inner.nodes[node],
                    clip(&shards)
                )));
            };
            if listing.len() != inner.nodes.len() {
                return Err(StoreError::internal(format!(
                    "ClickHouse at {} has {} shards in cluster {:?}, but {} URLs are given: \
                     give the HTTP URL of each shard once",
                    inner.nodes[node],
                    listing.len(),
                    opts.cluster,
                    inner.nodes.len()
                )));
            }
            listings.push(listing);
            for sql in &ddl {
                inner.fetch(node, sql, &[]).await?;
            }
        }
        let route = match route::Route::from_listings(&listings) {
            Ok(route) => {
                tracing::info!(
                    "ClickHouse: each of the {} URLs is one shard of cluster {:?}; \
                     rows moved from an import log go straight to each shard's events_local",
                    inner.nodes.len(),
                    opts.cluster
                );
                route
            }
            Err(why) => {
                tracing::warn!(
                    "ClickHouse: the URLs cannot be matched to the shards of cluster {:?} ({why}); \
                     INSERTs go through the Distributed table",
                    opts.cluster
                );
                route::Route::Distributed
            }
        };
        let order = Arc::new(insert::ReceiptOrder::default());
        let answers = insert::Writer::start(inner.clone(), route::Route::Distributed, order.clone());
        let moves = match route {
            route::Route::Distributed => answers.clone(),
            shards => insert::Writer::start(inner.clone(), shards, order),
        };
        Ok(ClickHouse { inner, answers, moves })
    }

    /// Stores `rows` durably (SPEC §4 "20000 means durable") and whole: one
    /// INSERT into the Distributed table with `insert_distributed_sync=1`,
    /// `Ok` only after every shard holding some of them wrote its part
    /// ([`Backing::Answer`]). Concurrent callers share one round of
    /// INSERTs (group commit; see [`ClickHouseOptions::insert_linger`]).
    /// Errors: `Internal` when an INSERT of the round failed (the server
    /// answers 50000); some of the rows may then be stored, which a
    /// resend's dedupe absorbs.
    /// Resends of stored `event_log_id`s are accepted and deduplicated on
    /// read and by merges.
    pub async fn insert(&self, rows: Vec<EventRow>) -> Result<(), StoreError> {
        self.answers.insert(rows).await
    }

    /// Rows to fill with [`ImportRows::push_request`] for
    /// [`ClickHouse::insert_import_rows`], of which `backing` says what
    /// stores them again should fineport die mid-INSERT.
    pub fn import_rows(&self, backing: Backing) -> ImportRows {
        self.writer(backing).import_rows(backing)
    }

    /// Stores rows encoded as they were added, durably, as `Ok` says:
    /// [`ClickHouse::insert`]'s round for [`Backing::Answer`]; for
    /// [`Backing::ImportLog`], where the URLs are matched to shards, one
    /// INSERT per shard into `events_local`, `Ok` once every one returned
    /// OK (a move is then not stored whole if fineport dies mid-round: the
    /// log stores it again). Errors as [`ClickHouse::insert`].
    pub async fn insert_import_rows(&self, rows: ImportRows) -> Result<(), StoreError> {
        self.writer(rows.backing()).send(rows).await
    }

    fn writer(&self, backing: Backing) -> &insert::Writer {
        match backing {
            Backing::Answer => &self.answers,
            Backing::ImportLog => &self.moves,
        }
    }

    /// The event export of SPEC §2.1/§2.3 as an [`ExportStream`]: the
    /// header line, then the rows of `plan` whose correction time lies in
    /// the service days `plan.from_date..=plan.to_date` of `timezone`,
    /// ordered by `(correction_ms, event_log_id)`, each `event_log_id`
    /// once (the first receipt), in chunks of ~[`crate::CHUNK_BYTES`],
    /// then `End` with rows and bytes. A failure before the first chunk
    /// (a shard down: `Query` with ClickHouse's text) is the stream's
    /// first item; a later one is an `Err` item, never a clean end.
    /// Dropping the stream drops the running query's response and sends
    /// `KILL QUERY` for it.
    pub async fn export(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
    ) -> Result<ExportStream, StoreError> {
        Ok(export::start(
            self.inner.clone(),
            service_id.clone(),
            timezone,
            plan.clone(),
        ))
    }

    /// The unified ids (ascending by bytes, each once) of the service's
    /// users with at least `min_count` distinct events (`event_log_id`s)
    /// named `event` whose correction time lies in `[from_ms, to_ms)` (UTC
    /// ms): an audience event-count rule (SPEC §1 "Audience"). Streamed,
    /// so a caller can merge-join it with profiles in bounded memory.
    /// Errors: `Query` (as the method's error when the query fails before
    /// its first row; as an item when it fails later). Dropping the
    /// stream sends `KILL QUERY` for its query.
    pub async fn users_with_events(
        &self,
        service_id: &ServiceId,
        event: &str,
        min_count: u32,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<BoxStream<'static, Result<String, StoreError>>, StoreError> {
        users::with_events(self.inner.clone(), service_id, event, min_count, from_ms, to_ms)
            .await
            .map(StreamExt::boxed)
    }

    /// Whether the import log's moves go straight to each shard's
    /// `events_local` (the URLs were matched to shards at open) rather than
    /// through the Distributed table.
    pub fn inserts_to_shards(&self) -> bool {
        self.moves.to_shards()
    }

    /// What has been sent so far.
    pub fn stats(&self) -> ClickHouseStats {
        ClickHouseStats {
            inserts: self.inner.inserts.load(Ordering::Relaxed),
            inserted_rows: self.inner.inserted_rows.load(Ordering::Relaxed),
            shard_inserts: self.inner.shard_inserts.load(Ordering::Relaxed),
            export_queries: self.inner.export_queries.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    /// The shard the next query or insert goes to (in turn).
    fn pick_node(&self) -> usize {
        self.next_node.fetch_add(1, Ordering::Relaxed) % self.nodes.len()
    }

    /// POSTs `body` to shard `node` with the URL parameters `params`
    /// (`query`, `query_id`, settings). `Query` error with ClickHouse's
    /// text for a refused connection or a status other than 200.
    async fn post(
        &self,
        node: usize,
        params: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Result<reqwest::Response, StoreError> {
        let url = &self.nodes[node];
        let response = self
            .http
            .post(url)
            .query(params)
            .body(body)
            .send()
            .await
            .map_err(|e| StoreError::query(format!("ClickHouse at {url}: {}", error_chain(&e))))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.bytes().await.unwrap_or_default();
        Err(StoreError::query(format!(
            "ClickHouse at {url} answered {status}: {}",
            clip(&text)
        )))
    }

    /// Runs `sql` (sent as the body) on shard `node` and returns the whole
    /// response: for DDL and small reads.
    async fn fetch(&self, node: usize, sql: &str, params: &[(&str, &str)]) -> Result<Bytes, StoreError> {
        let url = &self.nodes[node];
        self.post(node, params, sql.to_string())
            .await?
            .bytes()
            .await
            .map_err(|e| StoreError::query(format!("ClickHouse at {url}: {}", error_chain(&e))))
    }
}

/// Checks a database or cluster name before it goes into SQL text.
fn identifier(what: &str, s: &str) -> Result<(), StoreError> {
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        Ok(())
    } else {
        Err(StoreError::internal(format!(
            "ClickHouse {what} {s:?} must be ASCII letters, digits or '_'"
        )))
    }
}

/// Drops `database` on every shard of `urls` (nothing where it does not
/// exist). For tests and `fineport bench`, which make databases of their
/// own. Errors: `Internal` for a bad name, `Query` for a shard that
/// refused or did not answer (the other shards are still tried).
pub async fn drop_database(urls: &[String], database: &str) -> Result<(), StoreError> {
    identifier("database", database)?;
    let http = reqwest::Client::new();
    let mut first_error = None;
    for url in urls {
        let dropped = http
            .post(url)
            .body(format!("DROP DATABASE IF EXISTS {database}"))
            .send()
            .await;
        let error = match dropped {
            Ok(resp) if resp.status().is_success() => continue,
            Ok(resp) => format!("answered {}", resp.status()),
            Err(e) => error_chain(&e),
        };
        first_error.get_or_insert(StoreError::query(format!(
            "ClickHouse at {url}: DROP DATABASE {database}: {error}"
        )));
    }
    first_error.map_or(Ok(()), Err)
}

/// A new `query_id`: `fineport-<what>-<uuid>`.
fn new_query_id(what: &str) -> String {
    format!("fineport-{what}-{}", Uuid::new_v4().simple())
}

/// Stops the query `query_id` on `node` when dropped while armed (its
/// reader went away before the end): `KILL QUERY … ` without `SYNC`, from a
/// spawned task, so dropping never waits. Killing the initiator's query
/// stops its remote parts too.
pub(crate) struct KillOnDrop {
    inner: Arc<Inner>,
    node: usize,
    query_id: String,
    armed: bool,
}

impl KillOnDrop {
    fn new(inner: Arc<Inner>, node: usize, query_id: String) -> Self {
        KillOnDrop {
            inner,
            node,
            query_id,
            armed: true,
        }
    }

    /// The query ended by itself: nothing to kill.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (inner, node) = (self.inner.clone(), self.node);
        // query ids are made here of hex and '-': safe in a literal.
        let sql = format!("KILL QUERY WHERE query_id = '{}'", self.query_id);
        runtime.spawn(async move {
            // A query still being set up has "unkillable stages" on 18.16;
            // a moment later it can be killed.
            for attempt in 1..=KILL_ATTEMPTS {
                match inner.fetch(node, &sql, &[]).await {
                    Ok(_) => return,
                    Err(e) if attempt == KILL_ATTEMPTS => {
                        tracing::warn!("could not kill an abandoned ClickHouse query: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }
}

/// `s` as a ClickHouse string expression that needs no escaping.
fn literal(s: &str) -> String {
    format!("unhex('{}')", hex::encode_upper(s.as_bytes()))
}

/// ClickHouse's text, cut to [`MAX_ERROR_TEXT`] bytes, trimmed.
fn clip(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(&text[..text.len().min(MAX_ERROR_TEXT)]);
    text.trim().to_string()
}

/// An error and its sources on one line (reqwest's own message is terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_hex() {
        assert_eq!(literal("a'\\"), "unhex('61275C')");
        assert_eq!(literal(""), "unhex('')");
    }
}
