//! The streaming event export on DuckDB.
//!
//! The range is cut into *slices*: consecutive time ranges of about
//! [`DEFAULT_SLICE_CELLS`] cells each (rows × columns; a store option), cut
//! on UTC minute boundaries from a histogram of the range. Slices are
//! disjoint and in order, so writing each one in `(correction_ts,
//! event_log_id)` order writes the whole range in that order, while only
//! one slice at a time is ever sorted and an export's memory follows the
//! slice size, not the range or the service's daily volume.
//!
//! A slice is not sorted by DuckDB: an `ORDER BY` would copy every row
//! into DuckDB's sort layout (buffer-managed memory the size of the slice,
//! and a third of the CPU of a sorted COPY). Instead a worker fetches the
//! slice's rows unordered, as DuckDB's own chunks (`chunks.rs`: no Arrow
//! copy), and sorts only their keys, the order the encoder then walks. A
//! slice worker with its own connection fetches slice *k + 1* (DuckDB runs
//! the query on its threads, one less than the cores by default) while
//! this thread encodes slice *k* from the chunks' vectors. A second worker
//! was measured: 3 % faster on 2 cores for 8 % more CPU and one more slice
//! in memory, so one it is.
//! Every query reads both of the service's event tables, the main one and
//! the late one (`schema.rs`), as one `UNION ALL`, and only rows with
//! `rowid <=` each table's last one when the export started (both read by
//! one statement): events are only ever appended, so the histogram and all
//! slices see the same committed set even though each runs in a
//! transaction of its own.
//!
//! The first byte waits for one minute: the worker queries the range's
//! first minute (sorted by DuckDB: its rows are not counted yet) while this
//! thread runs the histogram of the rest, and the encoder hands the first
//! slice on as soon as it is written, not when 64 KiB are full. A slice's
//! query reads the blocks its late rows are in (events that arrived hours
//! or days after their time, in the late table; before item 17 of
//! docs/benchmarks.md, among the next days' rows), which the first export
//! after a start reads cold: a first slice of many minutes has more late
//! rows in more blocks. One day of the 4M heavy bench
//! service, the first export after a start (restarts alternating, one
//! host): first byte 45–55 ms with the first minute queried beside the
//! histogram, 48–72 ms with it after the histogram, 83–97 ms with an
//! eighth of a slice (~36 minutes) as the first slice; warm, 18–25, 22–32
//! and 44–48 ms; the whole export the same (docs/benchmarks.md, item 5).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use fineport_contract::csv;
use fineport_contract::export::{ColumnSource, EventExportPlan, EventFilterKind, SystemColumn};
use fineport_contract::taxonomy::PropertyScope;
use fineport_contract::time::day_bounds_ms;
use fineport_contract::ServiceId;
use fineport_contract::Tz;

use super::chunks::{self, string_bytes, Chunk, Column, Database, Execution, RawConnection, RowPrefetch};
use super::schema::{events_table, late_events_table, Layout};
use super::stream::{cancelled, Sink};
use crate::{ExportSummary, StoreError, CHUNK_BYTES};

/// Cells (rows × columns) a slice aims at by default: ~22,000 rows of the
/// 45 columns of a full export, ~18,000 of 56. Two slices are in memory at
/// most, and the one being written shrinks as its chunks are written;
/// each slice costs a query (docs/benchmarks.md, items 3, 4, 16 and 18:
/// since late events have a table of their own, slices of 0.75M to 1.5M
/// cells take the same time for a month). A minute with more rows is one
/// slice on its own.
pub(crate) const DEFAULT_SLICE_CELLS: u64 = 1_000_000;

/// A slice of more than this many times the target rows — a minute busier
/// than a slice, which the cut cannot split — is sorted and streamed by
/// DuckDB instead of held whole: slower, but within DuckDB's memory limit.
const SORTED_BY_DUCKDB_ABOVE: u64 = 2;

/// The histogram's bucket, and so the finest cut between slices.
const BUCKET_MS: i64 = 60_000;

/// How an export runs, beyond what it exports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Cells (rows × columns) per slice; see [`DEFAULT_SLICE_CELLS`].
    pub slice_cells: u64,
}

/// A time range `[start_ms, end_ms)` of the export, queried on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slice {
    start_ms: i64,
    end_ms: i64,
    /// Rows in the histogram.
    rows: u64,
}

/// Rows as fetched, and the order to write them in.
struct SortedSlice {
    chunks: Vec<Chunk>,
    /// `(chunk, row)` in `(correction_ts, event_log_id)` order.
    order: Vec<(u32, u32)>,
}

impl SortedSlice {
    /// A chunk already in order.
    fn in_order(chunk: Chunk) -> SortedSlice {
        let order = (0..chunk.rows() as u32).map(|r| (0, r)).collect();
        SortedSlice {
            chunks: vec![chunk],
            order,
        }
    }
}

/// What the slice worker hands the encoder.
enum Piece {
    Rows(SortedSlice),
    /// Every slice has been handed over.
    Done,
}

pub(crate) fn run(
    database: &Database,
    layout: &Layout,
    service_id: &ServiceId,
    timezone: Tz,
    plan: &EventExportPlan,
    sink: &mut Sink,
    Settings { slice_cells }: Settings,
) -> Result<ExportSummary, StoreError> {
    let (conn, worker_conn) = (database.connect()?, database.connect()?);
    let (planner, worker) = (conn.interrupt_handle(), worker_conn.interrupt_handle());
    let interrupt_all = move || {
        planner();
        worker();
    };
    sink.set_interrupt(interrupt_all.clone())?;

    let mut select: Vec<String> = plan.columns.iter().map(|c| column_expr(layout, &c.source)).collect();
    let csv_columns = select.len();
    // The sort keys, selected once more at the end when the CSV lacks them.
    let mut key = |expr: &str| {
        select.iter().position(|c| c == expr).unwrap_or_else(|| {
            select.push(expr.to_string());
            select.len() - 1
        })
    };
    let keys = SortKeys {
        correction_ts: key("correction_ts"),
        event_log_id: key("event_log_id"),
    };
    let (filter, names) = match &plan.event_filter {
        None => (String::new(), Vec::new()),
        Some((kind, names)) => {
            let marks = vec!["?"; names.len()].join(", ");
            let op = if *kind == EventFilterKind::Include {
                "IN"
            } else {
                "NOT IN"
            };
            (format!(" AND event_name {op} ({marks})"), names.clone())
        }
    };
    let (start_ms, _) = day_bounds_ms(plan.from_date, timezone);
    let (_, end_ms) = day_bounds_ms(plan.to_date, timezone);
    let rows_per_slice = (slice_cells / csv_columns.max(1) as u64).max(1);
    let tables = last_rowids(&conn, vec![events_table(service_id), late_events_table(service_id)])?;
    let params = tables.iter().flat_map(|_| names.iter().cloned()).collect();
    let source = Source { tables, filter, params };
    let query = SliceQuery {
        source: &source,
        select: select.join(", "),
        keys,
        sorted_by_duckdb_above: rows_per_slice.saturating_mul(SORTED_BY_DUCKDB_ABOVE),
    };
    // The range's first minute, queried before the histogram is known;
    // the histogram covers the rest.
    let first = Slice {
        start_ms,
        end_ms: (start_ms + BUCKET_MS).min(end_ms),
        rows: 0,
    };

    let mut out = Out::new(plan.header_line(), sink);
    std::thread::scope(|scope| -> Result<(), StoreError> {
        // Rendezvous: the worker holds at most the slice it is fetching
        // and the one it waits to hand over.
        let (tx, rx) = sync_channel(0);
        let (planned_tx, planned_rx) = sync_channel::<Vec<Slice>>(1);
        let query = &query;
        std::thread::Builder::new()
            .name("fineport-slices".into())
            .spawn_scoped(scope, move || query.run_all(&worker_conn, first, &planned_rx, &tx))
            .map_err(|e| StoreError::internal(format!("cannot start an export worker: {e}")))?;
        let result = plan_slices(&conn, &source, (first.end_ms, end_ms), rows_per_slice).and_then(|slices| {
            // Never full: the worker is told its slices once.
            let _ = planned_tx.send(slices);
            encode_slices(&rx, csv_columns, &mut out)
        });
        if result.is_err() {
            // Stop a worker that is still fetching slices nobody will read.
            drop((rx, planned_tx));
            interrupt_all();
        }
        result
    })?;
    out.flush()?;
    Ok(out.summary)
}

/// Takes the sorted rows in order and encodes their first `csv_columns`
/// columns, until the worker says it is done.
fn encode_slices(
    worker: &Receiver<Result<Piece, StoreError>>,
    csv_columns: usize,
    out: &mut Out<'_>,
) -> Result<(), StoreError> {
    let mut scratch = Vec::new();
    loop {
        let slice = match worker.recv() {
            Ok(Ok(Piece::Rows(slice))) => slice,
            Ok(Ok(Piece::Done)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            // Never a silent end: a worker that stops says so first.
            Err(_) => return Err(StoreError::internal("an export worker stopped")),
        };
        in_order_freeing(slice, csv_columns, |columns, row| {
            encode_row(columns, row, out, &mut scratch)
        })?;
        if out.summary.bytes == 0 {
            // The header and the first rows go out now, not when 64 KiB
            // are full (see the module doc).
            out.flush()?;
        }
    }
}

/// Calls `write` with each row of `slice` in its order (the row's first
/// `csv_columns` columns and its index in its chunk), freeing each chunk
/// once its last row is written: rows come nearly in the order they were
/// fetched, so the slice's memory drains while the worker fetches the next
/// one, instead of staying whole until its last row (docs/benchmarks.md,
/// item 16).
fn in_order_freeing(
    slice: SortedSlice,
    csv_columns: usize,
    mut write: impl FnMut(&[Column<'_>], usize) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let SortedSlice { chunks, order } = slice;
    // Where each chunk is written for the last time: the positions after
    // which one or more chunks can go.
    let mut last_use = vec![0usize; chunks.len()];
    for (at, &(chunk, _)) in order.iter().enumerate() {
        last_use[chunk as usize] = at;
    }
    let mut ends: Vec<usize> = last_use.iter().map(|&at| at + 1).collect();
    ends.sort_unstable();
    ends.dedup();
    let mut chunks: Vec<Option<Chunk>> = chunks.into_iter().map(Some).collect();
    let mut from = 0;
    for end in ends {
        if end <= from {
            continue;
        }
        {
            let columns: Vec<Option<Vec<Column>>> = chunks
                .iter()
                .map(|chunk| match chunk {
                    // Written already: never read again.
                    None => Some(None),
                    Some(chunk) => (0..csv_columns)
                        .map(|c| chunk.column(c))
                        .collect::<Option<Vec<_>>>()
                        .map(Some),
                })
                .collect::<Option<_>>()
                .ok_or_else(|| StoreError::internal("a slice has fewer columns than the CSV"))?;
            let prefetch: Vec<Option<RowPrefetch>> =
                columns.iter().map(|c| c.as_deref().map(RowPrefetch::new)).collect();
            let segment = &order[from..end];
            for (at, &(chunk, row)) in segment.iter().enumerate() {
                // The rows written a few rows from now: their cells on
                // their way into the cache while this one is written.
                if let Some(&(chunk, row)) = segment.get(at + PREFETCH_ROWS_AHEAD) {
                    if let Some(rows) = &prefetch[chunk as usize] {
                        rows.values(row as usize);
                    }
                }
                if let Some(&(chunk, row)) = segment.get(at + PREFETCH_ROWS_AHEAD / 2) {
                    if let Some(rows) = &prefetch[chunk as usize] {
                        rows.behind(row as usize);
                    }
                }
                let columns = columns[chunk as usize]
                    .as_deref()
                    .ok_or_else(|| StoreError::internal("a slice's row is in a chunk already freed"))?;
                write(columns, row as usize)?;
            }
        }
        for (chunk, &last) in chunks.iter_mut().zip(&last_use) {
            if last < end {
                *chunk = None;
            }
        }
        from = end;
    }
    Ok(())
}

/// How many rows ahead of the one being written [`in_order_freeing`] asks
/// for a row's cells to be cached.
const PREFETCH_ROWS_AHEAD: usize = 4;

/// Where the sort keys are among a slice query's columns.
#[derive(Debug, Clone, Copy)]
struct SortKeys {
    correction_ts: usize,
    event_log_id: usize,
}

/// The rows an export reads: each of the service's event tables (the
/// main one, then the late one) up to its last `rowid` when the export
/// started, with the export's event filter.
struct Source {
    /// `(table, last rowid)`.
    tables: Vec<(String, i64)>,
    /// ` AND event_name IN (?, …)` or `NOT IN`, or empty.
    filter: String,
    /// What the filter's `?` bind, once per table.
    params: Vec<String>,
}

impl Source {
    /// `SELECT {select}` over the rows of `[start_ms, end_ms)` of every
    /// table, as one `UNION ALL`; it binds [`Source::params`].
    fn select(&self, select: &str, start_ms: i64, end_ms: i64) -> String {
        let each: Vec<String> = self
            .tables
            .iter()
            .map(|(table, last_rowid)| {
                format!(
                    "SELECT {select} FROM {table} WHERE rowid <= {last_rowid} \
                     AND correction_ts >= make_timestamp({}::BIGINT) AND correction_ts < make_timestamp({}::BIGINT){}",
                    start_ms * 1000,
                    end_ms * 1000,
                    self.filter
                )
            })
            .collect();
        each.join(" UNION ALL ")
    }
}

/// The query of one slice, without its time range.
struct SliceQuery<'a> {
    source: &'a Source,
    /// The selected columns, in SQL.
    select: String,
    keys: SortKeys,
    /// A slice of more rows than this is sorted by DuckDB; see
    /// [`SORTED_BY_DUCKDB_ABOVE`].
    sorted_by_duckdb_above: u64,
}

impl SliceQuery<'_> {
    /// Runs the `first` minute, then the slices `planned` sends, in order,
    /// handing their rows on sorted, then `Done`; stops at the first error
    /// (which it hands on), when the encoder has gone, or when no slices
    /// come (planning failed).
    fn run_all(
        &self,
        conn: &RawConnection,
        first: Slice,
        planned: &Receiver<Vec<Slice>>,
        tx: &SyncSender<Result<Piece, StoreError>>,
    ) {
        if let Err(e) = self.hand_over_all(conn, first, planned, tx) {
            let _ = tx.send(Err(e));
        }
    }

    /// [`SliceQuery::run_all`]'s work, up to its first error.
    fn hand_over_all(
        &self,
        conn: &RawConnection,
        first: Slice,
        planned: &Receiver<Vec<Slice>>,
        tx: &SyncSender<Result<Piece, StoreError>>,
    ) -> Result<(), StoreError> {
        // The first minute's rows are not counted yet: DuckDB sorts them,
        // within its memory limit however many they are.
        if !self.stream_sorted(conn, first, tx)? {
            return Ok(());
        }
        let Ok(slices) = planned.recv() else {
            return Ok(());
        };
        for slice in slices {
            let handed_over = if slice.rows > self.sorted_by_duckdb_above {
                self.stream_sorted(conn, slice, tx)?
            } else {
                let rows = self.fetch_and_sort(conn, slice)?;
                tx.send(Ok(Piece::Rows(rows))).is_ok()
            };
            if !handed_over {
                return Ok(());
            }
        }
        let _ = tx.send(Ok(Piece::Done));
        Ok(())
    }

    fn sql(&self, slice: Slice, order_by: &str) -> String {
        format!(
            "{}{order_by}",
            self.source.select(&self.select, slice.start_ms, slice.end_ms)
        )
    }

    /// The usual slice: fetched whole and unordered, then its keys sorted.
    fn fetch_and_sort(&self, conn: &RawConnection, slice: Slice) -> Result<SortedSlice, StoreError> {
        // Streamed, not materialised: a materialised result holds DuckDB's
        // collection of the slice and the chunks copied out of it at once.
        // A streamed result hands on each scanned vector's matches as a
        // chunk of its own, which cost thousands of small chunks a slice
        // while late events lay among the next days' rows; in the main
        // table, in time order, a slice's vectors match whole, and its few
        // late events come from a few vectors of the late table
        // (docs/benchmarks.md, item 18).
        let mut result = conn.query(&self.sql(slice, ""), &self.source.params, Execution::Streamed)?;
        let mut chunks = Vec::new();
        while let Some(chunk) = result.next_chunk()? {
            chunks.push(chunk);
        }
        drop(result);
        let order = sort_order(&chunks, self.keys)?;
        Ok(SortedSlice { chunks, order })
    }

    /// A slice too big to hold (a minute of many rows): DuckDB sorts it
    /// within its memory limit, spilling if it must, and its rows are
    /// handed on a batch at a time. `Ok(false)` when the encoder has gone.
    fn stream_sorted(
        &self,
        conn: &RawConnection,
        slice: Slice,
        tx: &SyncSender<Result<Piece, StoreError>>,
    ) -> Result<bool, StoreError> {
        let sql = self.sql(slice, " ORDER BY correction_ts, event_log_id");
        let mut result = conn.query(&sql, &self.source.params, Execution::Streamed)?;
        while let Some(chunk) = result.next_chunk()? {
            let piece = SortedSlice::in_order(chunk);
            if tx.send(Ok(Piece::Rows(piece))).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The rows of `chunks` in `(correction_ts, event_log_id)` order, the
/// order of `ORDER BY correction_ts, event_log_id` (strings compare by
/// their bytes in both). Rows arrive nearly in that order already.
fn sort_order(chunks: &[Chunk], keys: SortKeys) -> Result<Vec<(u32, u32)>, StoreError> {
    let key_columns = chunks
        .iter()
        .map(
            |chunk| match (chunk.column(keys.correction_ts), chunk.column(keys.event_log_id)) {
                (Some(Column::Timestamp(ts)), Some(Column::Varchar(ids))) => Ok((ts, ids)),
                _ => Err(StoreError::internal("unexpected types of the export's sort keys")),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let mut order = Vec::with_capacity(chunks.iter().map(Chunk::rows).sum());
    for (c, (ts, _)) in key_columns.iter().enumerate() {
        // Both columns are NOT NULL: every row has its key.
        order.extend((0..chunks[c].rows()).map(|r| (ts.get(r).copied().unwrap_or(i64::MIN), c as u32, r as u32)));
    }
    let id = |c: u32, r: u32| key_columns[c as usize].1.get(r as usize).map_or(&[][..], string_bytes);
    order.sort_unstable_by(|x, y| x.0.cmp(&y.0).then_with(|| id(x.1, x.2).cmp(id(y.1, y.2))));
    Ok(order.into_iter().map(|(_, c, r)| (c, r)).collect())
}

/// Each of `tables` with its last `rowid` now, read by one statement (so
/// at one moment): every query of the export reads only rows up to them.
/// Events are only ever appended, so the export's queries, each in a
/// transaction of its own, all see the same committed rows.
fn last_rowids(conn: &RawConnection, tables: Vec<String>) -> Result<Vec<(String, i64)>, StoreError> {
    let each: Vec<String> = tables
        .iter()
        .map(|table| format!("(SELECT coalesce(max(rowid), -1) FROM {table})"))
        .collect();
    let mut result = conn.query(&format!("SELECT {}", each.join(", ")), &[], Execution::Materialised)?;
    let chunk = result
        .next_chunk()?
        .ok_or_else(|| StoreError::internal("no result of the export's last rowids"))?;
    tables
        .into_iter()
        .enumerate()
        .map(|(c, table)| match chunk.column(c) {
            Some(Column::BigInt(values)) => Ok((table, values.get(0).copied().unwrap_or(-1))),
            _ => Err(StoreError::internal("unexpected result of the export's last rowids")),
        })
        .collect()
}

/// Cuts `[start_ms, end_ms)` into slices from a per-minute histogram of the
/// rows the export will read. Minutes without rows cost nothing: a range of
/// years with a few events is one or two queries.
fn plan_slices(
    conn: &RawConnection,
    source: &Source,
    (start_ms, end_ms): (i64, i64),
    rows_per_slice: u64,
) -> Result<Vec<Slice>, StoreError> {
    let sql = format!(
        "SELECT epoch_ms(correction_ts) // {BUCKET_MS} AS bucket, count(*) AS n FROM ({}) \
         GROUP BY bucket ORDER BY bucket",
        source.select("correction_ts", start_ms, end_ms)
    );
    let mut result = conn.query(&sql, &source.params, Execution::Materialised)?;
    let mut buckets = Vec::new();
    while let Some(chunk) = result.next_chunk()? {
        let column = |c: usize| match chunk.column(c) {
            Some(Column::BigInt(values)) => Ok(values),
            _ => Err(StoreError::internal("unexpected types of the export's histogram")),
        };
        let (bucket, n) = (column(0)?, column(1)?);
        for r in 0..chunk.rows() {
            // Neither is ever NULL (a NOT NULL time).
            if let (Some(&b), Some(&n)) = (bucket.get(r), n.get(r)) {
                buckets.push((b, n.max(0) as u64));
            }
        }
    }
    Ok(cut_slices(&buckets, SliceTarget::new(rows_per_slice), start_ms, end_ms))
}

/// Rows per slice. The first slice is one minute (the first with rows) as
/// well: when the range's first minute, queried apart, has none, the first
/// byte waits for one minute's query still (see the module doc).
#[derive(Debug, Clone, Copy)]
struct SliceTarget {
    first_rows: u64,
    rows: u64,
}

impl SliceTarget {
    fn new(rows: u64) -> Self {
        SliceTarget { first_rows: 1, rows }
    }
}

/// Groups consecutive buckets (`(bucket since the epoch, rows)`, ascending)
/// into slices of at most the target's rows where the buckets allow; the first
/// slice starts at `start_ms` and the last ends at `end_ms`.
fn cut_slices(buckets: &[(i64, u64)], target: SliceTarget, start_ms: i64, end_ms: i64) -> Vec<Slice> {
    let mut slices = Vec::new();
    let mut slice_start = start_ms;
    let mut rows = 0;
    for &(bucket, n) in buckets {
        let rows_per_slice = if slices.is_empty() {
            target.first_rows
        } else {
            target.rows
        };
        if rows > 0 && rows + n > rows_per_slice {
            let cut = (bucket * BUCKET_MS).clamp(start_ms, end_ms);
            slices.push(Slice {
                start_ms: slice_start,
                end_ms: cut,
                rows,
            });
            slice_start = cut;
            rows = 0;
        }
        rows += n;
    }
    if rows > 0 {
        slices.push(Slice {
            start_ms: slice_start,
            end_ms,
            rows,
        });
    }
    slices
}

/// A failed duckdb-rs query; see [`chunks::failure`].
pub(crate) fn query_error(e: duckdb::Error) -> StoreError {
    chunks::failure(e.to_string())
}

/// The SELECT expression of one CSV column.
fn column_expr(layout: &Layout, source: &ColumnSource) -> String {
    let sys = |s: SystemColumn| match s {
        SystemColumn::UnifiedId => "unified_id",
        SystemColumn::EventName => "event_name",
        SystemColumn::ApiVersion => "api_version",
        SystemColumn::ServerDatetime => "server_ts",
        SystemColumn::CorrectionDatetime => "correction_ts",
        SystemColumn::EventLogId => "event_log_id",
        SystemColumn::EventDatetime => "event_ts",
        SystemColumn::Platform => "platform",
    };
    let column = match source {
        ColumnSource::System(s) => return sys(*s).to_string(),
        ColumnSource::EventProperty { name, .. } => layout.column(PropertyScope::Event, name),
        ColumnSource::ItemProperty { name, .. } => layout.column(PropertyScope::Item, name),
    };
    // A registered property always has a column; NULL keeps the export whole if not.
    column.map_or_else(|| "NULL::VARCHAR".to_string(), |c| c.col.clone())
}

/// The CSV being written: a buffer handed to the sink in ~64 KiB chunks.
pub(crate) struct Out<'a> {
    pub buf: Vec<u8>,
    sink: &'a mut Sink,
    pub summary: ExportSummary,
}

impl<'a> Out<'a> {
    pub fn new(header: Vec<u8>, sink: &'a mut Sink) -> Self {
        Out {
            buf: header,
            sink,
            summary: ExportSummary::default(),
        }
    }

    /// Ends a row: counts it and hands a full chunk on.
    pub fn end_row(&mut self) -> Result<(), StoreError> {
        self.buf.push(b'\n');
        self.summary.rows += 1;
        if self.buf.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4));
        self.summary.bytes += chunk.len() as u64;
        if !self.sink.send(chunk) {
            return Err(cancelled());
        }
        Ok(())
    }
}

/// Row `i` of `col` as a CSV cell; a NULL is an empty cell.
fn cell(col: &Column<'_>, out: &mut Vec<u8>, scratch: &mut Vec<u8>, i: usize) {
    match col {
        Column::Varchar(f) => f.get(i).map(|s| csv::push_field(out, string_bytes(s))),
        Column::BigInt(f) => f.get(i).map(|&v| csv::push_i64(out, v)),
        Column::Double(f) => f.get(i).map(|&v| csv::push_f64(out, v)),
        Column::Boolean(f) => f.get(i).map(|&v| csv::push_bool(out, v != 0)),
        Column::Timestamp(f) => f.get(i).map(|&v| csv::push_datetime_ms(out, v.div_euclid(1000))),
        Column::Date(f) => f.get(i).map(|&v| csv::push_date_days(out, v)),
        Column::List(f, _) => f.get(i).map(|_| {
            scratch.clear();
            json(col, scratch, i);
            csv::push_field(out, scratch);
        }),
    };
}

/// Row `i` of `col` as a JSON value (inside an array cell): `null` for a
/// NULL and for a double JSON cannot spell.
fn json(col: &Column<'_>, out: &mut Vec<u8>, i: usize) {
    let written = match col {
        // DuckDB's VARCHAR is always UTF-8.
        Column::Varchar(f) => f.get(i).map(|s| csv::push_json_string(out, string_bytes(s))),
        Column::BigInt(f) => f.get(i).map(|&v| csv::push_i64(out, v)),
        Column::Double(f) => f.get(i).filter(|v| v.is_finite()).map(|&v| csv::push_f64(out, v)),
        Column::Boolean(f) => f.get(i).map(|&v| csv::push_bool(out, v != 0)),
        // Times and dates as JSON strings.
        Column::Timestamp(f) => f.get(i).map(|&v| {
            out.push(b'"');
            csv::push_datetime_ms(out, v.div_euclid(1000));
            out.push(b'"');
        }),
        Column::Date(f) => f.get(i).map(|&v| {
            out.push(b'"');
            csv::push_date_days(out, v);
            out.push(b'"');
        }),
        Column::List(f, child) => f.get(i).map(|entry| {
            out.push(b'[');
            for (n, j) in (entry.offset..entry.offset + entry.length).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                json(child, out, j as usize);
            }
            out.push(b']');
        }),
    };
    if written.is_none() {
        out.extend_from_slice(b"null");
    }
}

/// Writes row `row` of a chunk's columns as one CSV line.
fn encode_row(cols: &[Column<'_>], row: usize, out: &mut Out<'_>, scratch: &mut Vec<u8>) -> Result<(), StoreError> {
    for (c, col) in cols.iter().enumerate() {
        if c > 0 {
            out.buf.push(b',');
        }
        cell(col, &mut out.buf, scratch, row);
    }
    out.end_row()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of bucket `b`.
    fn h(b: i64) -> i64 {
        b * BUCKET_MS
    }

    #[test]
    fn slices_cover_the_range_and_group_buckets_up_to_the_target() {
        let (start, end) = (h(10) - 1234, h(40));
        let buckets = [(10, 5), (11, 5), (12, 1), (20, 8), (21, 30), (39, 2)];
        let slices = cut_slices(
            &buckets,
            SliceTarget {
                first_rows: 10,
                rows: 10,
            },
            start,
            end,
        );
        let bounds: Vec<(i64, i64, u64)> = slices.iter().map(|s| (s.start_ms, s.end_ms, s.rows)).collect();
        // 5+5 fit; 1 opens a new slice, 1+8 fit; 30 is over the target alone; 2.
        assert_eq!(
            bounds,
            vec![
                (start, h(12), 10),
                (h(12), h(21), 9),
                (h(21), h(39), 30),
                (h(39), end, 2)
            ]
        );
    }

    /// The one chunk of `sql`'s result.
    fn one_chunk(conn: &RawConnection, sql: &str) -> Chunk {
        let mut result = conn.query(sql, &[], Execution::Materialised).unwrap();
        let chunk = result.next_chunk().unwrap().unwrap();
        assert!(result.next_chunk().unwrap().is_none());
        chunk
    }

    #[test]
    fn sort_order_is_by_time_then_event_log_id_across_chunks() {
        let (db, _conn) = Database::open(None).unwrap();
        let conn = db.connect().unwrap();
        // A late row in the second chunk, and a tie on time broken by id.
        let query = |rows: &str| {
            one_chunk(
                &conn,
                &format!("SELECT id, make_timestamp(ts) AS ts FROM (VALUES {rows}) t(id, ts, ord) ORDER BY ord"),
            )
        };
        let first = query("('b', 20, 0), ('a', 30, 1), ('z', 40, 2)");
        let second = query("('y', 40, 0), ('c', 10, 1), ('a0', 50, 2)");
        assert!(matches!(
            (first.column(0), first.column(1)),
            (Some(Column::Varchar(_)), Some(Column::Timestamp(_)))
        ));
        let keys = SortKeys {
            correction_ts: 1,
            event_log_id: 0,
        };
        let order = sort_order(&[first, second], keys).unwrap();
        assert_eq!(order, vec![(1, 1), (0, 0), (0, 1), (1, 0), (0, 2), (1, 2)]);
    }

    #[test]
    fn rows_are_written_in_order_and_each_chunk_lives_until_its_last_row() {
        let (db, _conn) = Database::open(None).unwrap();
        let conn = db.connect().unwrap();
        let chunk = |values: &str| one_chunk(&conn, &format!("SELECT * FROM (VALUES {values}) t(v)"));
        // Chunk 1's last row comes right after chunk 0's: freed one position
        // too early, it would be gone when its row is written.
        let slice = SortedSlice {
            chunks: vec![chunk("('a0'), ('a1')"), chunk("('b0'), ('b1')"), chunk("('c0')")],
            order: vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)],
        };
        let mut written = Vec::new();
        in_order_freeing(slice, 1, |columns, row| {
            match &columns[0] {
                Column::Varchar(v) => {
                    written.push(String::from_utf8(string_bytes(v.get(row).unwrap()).to_vec()).unwrap())
                }
                _ => panic!("not a VARCHAR"),
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(written, ["a0", "b0", "c0", "a1", "b1"]);
    }

    #[test]
    fn chunks_read_every_exported_type_and_null() {
        let (db, _conn) = Database::open(None).unwrap();
        let conn = db.connect().unwrap();
        let sql = "SELECT * FROM (VALUES \
            ('a long string over twelve bytes, \"quoted\"', 42::BIGINT, 1.5::DOUBLE, true, \
             make_timestamp(1795564800123000), DATE '2026-11-25', ['x', NULL, 'y,\"'], [1.0, 2.5]::DOUBLE[]), \
            (NULL, NULL, NULL, NULL, NULL, NULL, NULL, []::DOUBLE[]), \
            ('short', -7::BIGINT, -0.25::DOUBLE, false, make_timestamp(-1000), DATE '1969-12-31', [], NULL)) \
            t(s, l, d, b, ts, dt, sl, dl) ORDER BY s NULLS FIRST";
        let mut result = conn.query(sql, &[], Execution::Streamed).unwrap();
        let chunk = result.next_chunk().unwrap().unwrap();
        drop(result);
        assert!(chunk.column(8).is_none());
        let cols: Vec<Column> = (0..8).map(|c| chunk.column(c).unwrap()).collect();
        let mut scratch = Vec::new();
        let lines: Vec<String> = (0..chunk.rows())
            .map(|r| {
                let mut out = Vec::new();
                for (c, col) in cols.iter().enumerate() {
                    if c > 0 {
                        out.push(b',');
                    }
                    cell(col, &mut out, &mut scratch, r);
                }
                String::from_utf8(out).unwrap()
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                ",,,,,,,[]".to_string(),
                r#""a long string over twelve bytes, ""quoted""",42,1.5,true,2026-11-25T00:00:00.123Z,2026-11-25,"[""x"",null,""y,\""""]","[1.0,2.5]""#.to_string(),
                "short,-7,-0.25,false,1969-12-31T23:59:59.999Z,1969-12-31,[],".to_string(),
            ]
        );
    }

    #[test]
    fn the_first_slice_is_smaller() {
        let buckets = [(0, 3), (1, 3), (2, 3), (3, 3), (4, 3), (5, 3)];
        let slices = cut_slices(&buckets, SliceTarget::new(9), 0, h(6));
        let rows: Vec<u64> = slices.iter().map(|s| s.rows).collect();
        assert_eq!(rows, vec![3, 9, 6]);
    }

    #[test]
    fn no_rows_no_slices_and_few_rows_one_slice() {
        assert!(cut_slices(&[], SliceTarget::new(10), 0, h(24)).is_empty());
        let one = cut_slices(
            &[(3, 4), (9000, 2)],
            SliceTarget {
                first_rows: 10,
                rows: 10,
            },
            0,
            h(10_000),
        );
        assert_eq!(
            one,
            vec![Slice {
                start_ms: 0,
                end_ms: h(10_000),
                rows: 6
            }]
        );
    }
}
