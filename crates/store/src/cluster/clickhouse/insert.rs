//! Group commit: the import requests of the whole process share INSERTs.
//!
//! Each INSERT makes a part on every shard it touches, and ClickHouse
//! slows then refuses inserts past 150/300 active parts per partition
//! (`parts_to_delay_insert`/`parts_to_throw_insert` on 18.16), which one
//! INSERT per import request (up to ~170 a second at the spec's default
//! limit) would reach. So callers hand their rows (already encoded as
//! RowBinary, in their own task) to one writer task, which sends what
//! waits as one INSERT (up to [`ClickHouseOptions::insert_max_rows`],
//! optionally after waiting [`ClickHouseOptions::insert_linger`] for more)
//! and answers every caller with its outcome. One INSERT is in flight at a
//! time; rows that arrive meanwhile form the next one. So a single client
//! gets one INSERT per request and many clients share them: INSERTs come
//! at most one per INSERT's duration (measured on 18.16: 32 ms per 100-row
//! INSERT, one 20,000-row INSERT 166 ms), a rate at which 18.16's merges
//! kept up. `fineport bench --store cluster` (8 clients): 17,000 events/s
//! with no linger, 10,000 with 50 ms.
//!
//! How a round travels depends on what stores its rows again should
//! fineport die halfway through it ([`Backing`]), so there are two writer
//! tasks. A request answered on its own INSERT ([`Backing::Answer`]) goes
//! in one INSERT into the Distributed table with
//! `insert_distributed_sync=1`, which returns only once every shard wrote
//! its rows (the default would acknowledge rows still queued on the
//! initiator's disk) and which ClickHouse finishes once it has the body,
//! whatever becomes of fineport: a request is stored whole or not at all.
//! The import log's moves ([`Backing::ImportLog`]) encode each row into
//! the body of its shard (`route.rs`) and send one INSERT into
//! `events_local` per shard, all at once, answered once every one returned
//! OK: ClickHouse does less work per row, and a move half stored when
//! fineport died is stored again from the log at the restart. (Rows of an
//! answered request sent that way were half stored by a SIGKILL between
//! two shards' INSERTs: `tests/sudden_death.rs` caught 19 of 40.) Where
//! the URLs cannot be matched to shards, both writers use the Distributed
//! table.
//!
//! Durability and failure: a failed INSERT fails every caller in its
//! round; some rows may have reached a shard (a round is not atomic across
//! shards when a shard fails), and the client's resend (or the import
//! log's next try) is absorbed by the dedupe.
//!
//! [`ClickHouseOptions::insert_linger`]: super::ClickHouseOptions::insert_linger
//! [`ClickHouseOptions::insert_max_rows`]: super::ClickHouseOptions::insert_max_rows

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use fineport_contract::cells::import_cells;
use fineport_contract::import::{EventInput, API_VERSION, PLATFORM_HTTP_API};
use fineport_contract::ServiceId;

use super::route::Route;
use super::rowbinary::{put_i64, put_len, put_str, put_str_array, put_str_bytes, put_u16, put_u64};
use super::{new_query_id, EventRow, Inner};
use crate::StoreError;

/// Requests that may wait for the writer; more callers wait to enqueue.
const QUEUE_REQUESTS: usize = 1024;

/// An INSERT that has not answered after this long fails its callers.
const INSERT_TIMEOUT: Duration = Duration::from_secs(60);

/// The columns an INSERT sends, in RowBinary order.
const COLUMNS: &str = "service_id, correction_ms, event_log_id, server_ms, event_ms, unified_id, \
                       event_name, api_version, platform, prop_keys, prop_values, item_count, ver";

/// Bits of `ver` that order the rows received within one millisecond.
const RECEIPT_BITS: u32 = 20;

/// The receipt order of this process: `ver` of each row it stores.
///
/// `ver = u64::MAX − (server_ms << 20 | n)`, `n` counting the rows received
/// in that millisecond (saturating at 2^20 − 1): a later receipt has a
/// smaller `ver`, so `ReplacingMergeTree(ver)` keeps the first receipt of an
/// `event_log_id` and the export, ordered by `ver DESC` within a key, sees it
/// first. `server_ms` alone would tie for two requests in one millisecond
/// (or under a frozen test clock). Rows of one request are numbered
/// together, before the request is queued, so a request answered before
/// another was sent always counts as received first.
#[derive(Default)]
pub(crate) struct ReceiptOrder(Mutex<(i64, u64)>);

impl ReceiptOrder {
    /// The next `rows` versions for rows received at `server_ms`.
    fn next(&self, server_ms: i64, rows: usize) -> impl Iterator<Item = u64> {
        let first = match self.0.lock() {
            Ok(mut last) => {
                let n = if last.0 == server_ms { last.1 } else { 0 };
                *last = (server_ms, n + rows as u64);
                n
            }
            // A panic elsewhere poisoned the lock: ties are possible, nothing else.
            Err(_) => 0,
        };
        let ms = u64::try_from(server_ms).unwrap_or(0) << RECEIPT_BITS;
        let cap = (1u64 << RECEIPT_BITS) - 1;
        (first..first + rows as u64).map(move |n| u64::MAX - (ms | n.min(cap)))
    }
}

/// What stores an INSERT's rows again if fineport dies while the INSERT is
/// half sent; it decides how the rows travel (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Nothing: the client is answered after the INSERT, and one whose
    /// answer was lost may never send again. One INSERT into the
    /// Distributed table: stored whole or not at all.
    Answer,
    /// The import log, which stores its unmoved rows again after a
    /// restart: one INSERT per shard into `events_local`.
    ImportLog,
}

/// One caller's rows and where its answer goes.
struct Request {
    rows: usize,
    /// One body per destination of the route.
    bodies: Vec<Vec<u8>>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The callers' end of the writer task.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Request>,
    order: Arc<ReceiptOrder>,
    route: Arc<Route>,
    /// Bodies an [`ImportRows`] fills: [`Route::destinations`].
    destinations: usize,
}

impl Writer {
    /// Starts the writer task sending rows by `route`, numbering them in
    /// the process's receipt `order` (one for every writer); it ends when
    /// the last `Writer` is dropped.
    pub fn start(inner: Arc<Inner>, route: Route, order: Arc<ReceiptOrder>) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_REQUESTS);
        let destinations = route.destinations(inner.nodes.len());
        let route = Arc::new(route);
        tokio::spawn(run(inner, route.clone(), rx));
        Writer {
            tx,
            order,
            route,
            destinations,
        }
    }

    /// Whether rows go straight to their shards' `events_local`.
    pub fn to_shards(&self) -> bool {
        matches!(*self.route, Route::Shards { .. })
    }

    /// Encodes `rows`, queues them and waits for the INSERT round holding them.
    pub async fn insert(&self, rows: Vec<EventRow>) -> Result<(), StoreError> {
        let Some(server_ms) = rows.first().map(|row| row.server_ms) else {
            return Ok(());
        };
        let mut out = self.import_rows(Backing::Answer);
        for (row, ver) in rows.iter().zip(self.order.next(server_ms, rows.len())) {
            let body = &mut out.bodies[self.route.destination(row.service_id.as_str(), &row.event_log_id)];
            encode(body, row, ver)?;
            out.rows += 1;
        }
        self.send(out).await
    }

    /// An empty [`ImportRows`] for this writer, of rows `backing` stands
    /// behind, numbered in the receipt order.
    pub fn import_rows(&self, backing: Backing) -> ImportRows {
        ImportRows {
            bodies: vec![Vec::new(); self.destinations],
            rows: 0,
            scratch: Vec::new(),
            order: self.order.clone(),
            route: self.route.clone(),
            backing,
        }
    }

    /// Queues rows already encoded and waits for the INSERT holding them.
    pub async fn send(&self, rows: ImportRows) -> Result<(), StoreError> {
        if rows.rows == 0 {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        let request = Request {
            rows: rows.rows,
            bodies: rows.bodies,
            done,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| StoreError::internal("the ClickHouse writer has stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::internal("the ClickHouse writer stopped before answering"))?
    }
}

/// Imported events encoded as RowBinary as they are added, with no
/// [`EventRow`] in between (the cells are written straight from the
/// validated events: what the cluster's import log moves, by the
/// hundred thousand). The same columns and cells as [`EventRow::from_import`].
pub struct ImportRows {
    /// One RowBinary body per destination of `route`.
    bodies: Vec<Vec<u8>>,
    rows: usize,
    scratch: Vec<u8>,
    order: Arc<ReceiptOrder>,
    route: Arc<Route>,
    /// Which writer sends them.
    backing: Backing,
}

impl ImportRows {
    /// Appends `events` (validated, of one request received at
    /// `received_at_ms`, resolved to `unified_id`): each with the
    /// correction time `correction(event)` and the `df_items_<p>` cells of
    /// `item_properties` when it has items.
    pub fn push_request(
        &mut self,
        service_id: &ServiceId,
        events: &[&EventInput],
        received_at_ms: i64,
        unified_id: &str,
        item_properties: &[String],
        correction: impl Fn(&EventInput) -> i64,
    ) {
        let versions = self.order.next(received_at_ms, events.len());
        for (event, ver) in events.iter().zip(versions) {
            let mut id = [0u8; 36];
            let event_log_id = event.event_log_id.hyphenated().encode_lower(&mut id);
            let head = RowHead {
                service_id: service_id.as_str(),
                correction_ms: correction(event),
                event_log_id,
                server_ms: received_at_ms,
                event_ms: event.event_datetime_ms,
                unified_id,
                event_name: &event.event_name,
                api_version: API_VERSION,
                platform: PLATFORM_HTTP_API,
            };
            let scratch = &mut self.scratch;
            let body = &mut self.bodies[self.route.destination(head.service_id, event_log_id)];
            put_row(body, &head, ver, event.items.len(), |out| {
                let cells = || import_cells(event, item_properties.iter().map(String::as_str));
                put_len(out, cells().count());
                for cell in cells() {
                    put_len(out, cell.key_len());
                    cell.push_key(out);
                }
                put_len(out, cells().count());
                for cell in cells() {
                    scratch.clear();
                    cell.push_text(scratch);
                    put_str_bytes(out, scratch);
                }
            });
            self.rows += 1;
        }
    }

    /// Rows appended so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// What stands behind these rows: which writer sends them.
    pub fn backing(&self) -> Backing {
        self.backing
    }
}

/// The columns of a row before its properties, in [`COLUMNS`] order.
struct RowHead<'a> {
    service_id: &'a str,
    correction_ms: i64,
    event_log_id: &'a str,
    server_ms: i64,
    event_ms: i64,
    unified_id: &'a str,
    event_name: &'a str,
    api_version: &'a str,
    platform: &'a str,
}

/// Appends one row as RowBinary in [`COLUMNS`] order: `props` appends the
/// `prop_keys` and `prop_values` arrays.
fn put_row(out: &mut Vec<u8>, head: &RowHead<'_>, ver: u64, items: usize, props: impl FnOnce(&mut Vec<u8>)) {
    put_str(out, head.service_id);
    put_i64(out, head.correction_ms);
    put_str(out, head.event_log_id);
    put_i64(out, head.server_ms);
    put_i64(out, head.event_ms);
    put_str(out, head.unified_id);
    put_str(out, head.event_name);
    put_str(out, head.api_version);
    put_str(out, head.platform);
    props(out);
    put_u16(out, u16::try_from(items).unwrap_or(u16::MAX));
    put_u64(out, ver);
}

/// Appends `row` as RowBinary in [`COLUMNS`] order.
fn encode(out: &mut Vec<u8>, row: &EventRow, ver: u64) -> Result<(), StoreError> {
    if row.prop_keys.len() != row.prop_values.len() {
        return Err(StoreError::internal(format!(
            "event {}: {} property keys but {} values",
            row.event_log_id,
            row.prop_keys.len(),
            row.prop_values.len()
        )));
    }
    let head = RowHead {
        service_id: row.service_id.as_str(),
        correction_ms: row.correction_ms,
        event_log_id: &row.event_log_id,
        server_ms: row.server_ms,
        event_ms: row.event_ms,
        unified_id: &row.unified_id,
        event_name: &row.event_name,
        api_version: &row.api_version,
        platform: &row.platform,
    };
    put_row(out, &head, ver, usize::from(row.item_count), |out| {
        put_str_array(out, &row.prop_keys);
        put_str_array(out, &row.prop_values);
    });
    Ok(())
}

/// The writer task: gathers requests into INSERT rounds, one at a time.
async fn run(inner: Arc<Inner>, route: Arc<Route>, mut rx: mpsc::Receiver<Request>) {
    let linger = inner.options.insert_linger;
    let max_rows = inner.options.insert_max_rows.max(1);
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + linger;
        let mut rows = first.rows;
        let mut bodies = first.bodies;
        let mut waiting = vec![first.done];
        while rows < max_rows {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(request)) => {
                    rows += request.rows;
                    for (body, more) in bodies.iter_mut().zip(&request.bodies) {
                        body.extend_from_slice(more);
                    }
                    waiting.push(request.done);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let result = send(&inner, &route, bodies, rows).await;
        if let Err(e) = &result {
            tracing::warn!(
                "ClickHouse INSERT of {rows} rows for {} callers failed: {e}",
                waiting.len()
            );
        }
        for done in waiting {
            // A caller that went away no longer needs its answer.
            let _ = done.send(result.clone());
        }
    }
}

/// One INSERT round of `rows` rows encoded in `bodies` (one per
/// destination of `route`): the shards' INSERTs run at once, and the round
/// is OK once every one is.
async fn send(inner: &Inner, route: &Route, bodies: Vec<Vec<u8>>, rows: usize) -> Result<(), StoreError> {
    let inserts = bodies.into_iter().enumerate().filter(|(_, body)| !body.is_empty());
    let round = futures::future::try_join_all(inserts.map(|(destination, body)| match route {
        Route::Shards { .. } => {
            inner.shard_inserts.fetch_add(1, Ordering::Relaxed);
            insert(inner, destination, &inner.local_table, false, body)
        }
        Route::Distributed => insert(inner, inner.pick_node(), &inner.events_table, true, body),
    }));
    match tokio::time::timeout(INSERT_TIMEOUT, round).await {
        Ok(Ok(_)) => {
            inner.inserts.fetch_add(1, Ordering::Relaxed);
            inner.inserted_rows.fetch_add(rows as u64, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(e)) => Err(StoreError::internal(format!("storing events failed: {}", e.message))),
        Err(_) => Err(StoreError::internal(format!(
            "storing events failed: the INSERT did not answer within {} s",
            INSERT_TIMEOUT.as_secs()
        ))),
    }
}

/// One synchronous INSERT of `body` into `table` on `node`, with
/// `insert_distributed_sync=1` when `table` is the Distributed one.
async fn insert(inner: &Inner, node: usize, table: &str, distributed: bool, body: Vec<u8>) -> Result<(), StoreError> {
    let sql = format!("INSERT INTO {table} ({COLUMNS}) FORMAT RowBinary");
    let query_id = new_query_id("insert");
    let mut params = vec![("query", sql.as_str()), ("query_id", query_id.as_str())];
    if distributed {
        params.push(("insert_distributed_sync", "1"));
    }
    let response = inner.post(node, &params, body).await?;
    // The answer is empty; reading it to the end keeps the connection.
    response
        .bytes()
        .await
        .map(drop)
        .map_err(|e| StoreError::query(format!("ClickHouse INSERT: {e}")))
}
