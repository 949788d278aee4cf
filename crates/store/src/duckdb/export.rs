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
//! slice's rows unordered as Arrow batches and sorts only their keys, the
//! order the encoder then walks. A slice worker with its own connection
//! fetches slice *k + 1* (DuckDB runs the query on all its threads) while
//! this thread encodes slice *k*. A second worker was measured: 3 % faster
//! on 2 cores for 8 % more CPU and one more slice in memory, so one it is.
//! Every slice query reads only rows with `rowid <=` the last one in the
//! histogram's snapshot: events are only ever appended, so all slices see
//! the same committed set even though they run in a separate transaction
//! from the histogram.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use duckdb::arrow::array::{
    Array, BooleanArray, Date32Array, Float64Array, Int64Array, ListArray, StringArray, TimestampMicrosecondArray,
};
use duckdb::arrow::datatypes::{DataType, TimeUnit};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::{params_from_iter, Connection};
use fineport_contract::csv;
use fineport_contract::export::{ColumnSource, EventExportPlan, EventFilterKind, SystemColumn};
use fineport_contract::taxonomy::PropertyScope;
use fineport_contract::time::day_bounds_ms;
use fineport_contract::ServiceId;
use fineport_contract::Tz;

use super::schema::{events_table, Layout};
use super::stream::{cancelled, Sink};
use crate::{ExportSummary, StoreError, StoreErrorKind, CHUNK_BYTES};

/// Cells (rows × columns) a slice aims at by default: ~33,000 rows of the
/// 45 columns of a full export. Three slices are in memory at most (one
/// fetched, one waiting, one written); smaller slices cost more queries
/// (docs/benchmarks.md, items 3 and 4). A minute with more rows is one
/// slice on its own.
pub(crate) const DEFAULT_SLICE_CELLS: u64 = 1_500_000;

/// A slice of more than this many times the target rows — a minute busier
/// than a slice, which the cut cannot split — is sorted and streamed by
/// DuckDB instead of held whole: slower, but within DuckDB's memory limit.
const SORTED_BY_DUCKDB_ABOVE: u64 = 2;

/// The first slice has this share (1/8) of a slice's rows: it holds up the
/// first byte (one day of the 4M bench service, first export after a start:
/// 82 ms with a quarter against 126–140 ms with a whole first slice; one
/// day of the 1M heavy service: 47 ms with an eighth against 54–56 ms with
/// a quarter; the total the same).
const FIRST_SLICE_SHARE: u64 = 8;

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
    batches: Vec<RecordBatch>,
    /// `(batch, row)` in `(correction_ts, event_log_id)` order.
    order: Vec<(u32, u32)>,
}

impl SortedSlice {
    /// A batch already in order.
    fn in_order(batch: RecordBatch) -> SortedSlice {
        let order = (0..batch.num_rows() as u32).map(|r| (0, r)).collect();
        SortedSlice {
            batches: vec![batch],
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
    conn: &Connection,
    layout: &Layout,
    service_id: &ServiceId,
    timezone: Tz,
    plan: &EventExportPlan,
    sink: &mut Sink,
    Settings { slice_cells }: Settings,
) -> Result<ExportSummary, StoreError> {
    let worker_conn = conn.try_clone()?;
    let interrupts = [conn.interrupt_handle(), worker_conn.interrupt_handle()];
    let interrupt_all = move || interrupts.iter().for_each(|i| i.interrupt());
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
    let table = events_table(service_id);
    let (start_ms, _) = day_bounds_ms(plan.from_date, timezone);
    let (_, end_ms) = day_bounds_ms(plan.to_date, timezone);
    let rows_per_slice = (slice_cells / csv_columns.max(1) as u64).max(1);
    let (last_rowid, slices) = plan_slices(conn, &table, &filter, &names, (start_ms, end_ms), rows_per_slice)?;
    let query = SliceQuery {
        sql_head: format!("SELECT {} FROM {table} WHERE rowid <= {last_rowid}", select.join(", ")),
        filter,
        names,
        keys,
        sorted_by_duckdb_above: rows_per_slice.saturating_mul(SORTED_BY_DUCKDB_ABOVE),
    };

    let mut out = Out::new(plan.header_line(), sink);
    std::thread::scope(|scope| -> Result<(), StoreError> {
        // Rendezvous: the worker holds at most the slice it is fetching
        // and the one it waits to hand over.
        let (tx, rx) = sync_channel(0);
        let (query, slices) = (&query, &slices);
        std::thread::Builder::new()
            .name("fineport-slices".into())
            .spawn_scoped(scope, move || query.run_all(&worker_conn, slices, &tx))
            .map_err(|e| StoreError::internal(format!("cannot start an export worker: {e}")))?;
        let result = encode_slices(&rx, csv_columns, &mut out);
        if result.is_err() {
            // Stop a worker that is still fetching slices nobody will read.
            drop(rx);
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
        let columns = slice
            .batches
            .iter()
            .map(|batch| {
                batch.columns()[..csv_columns]
                    .iter()
                    .map(|a| Col::new(a.as_ref()))
                    .collect()
            })
            .collect::<Result<Vec<Vec<Col>>, _>>()?;
        for &(batch, row) in &slice.order {
            encode_row(&columns[batch as usize], row as usize, out, &mut scratch)?;
        }
    }
}

/// Where the sort keys are among a slice query's columns.
#[derive(Debug, Clone, Copy)]
struct SortKeys {
    correction_ts: usize,
    event_log_id: usize,
}

/// The query of one slice, without its time range.
struct SliceQuery {
    sql_head: String,
    filter: String,
    names: Vec<String>,
    keys: SortKeys,
    /// A slice of more rows than this is sorted by DuckDB; see
    /// [`SORTED_BY_DUCKDB_ABOVE`].
    sorted_by_duckdb_above: u64,
}

impl SliceQuery {
    /// Runs `slices` in order, handing their rows on sorted, then `Done`;
    /// stops at the first error (which it hands on) or when the encoder
    /// has gone.
    fn run_all(&self, conn: &Connection, slices: &[Slice], tx: &SyncSender<Result<Piece, StoreError>>) {
        for slice in slices {
            let handed_over = if slice.rows > self.sorted_by_duckdb_above {
                self.stream_sorted(conn, *slice, tx)
            } else {
                self.fetch_and_sort(conn, *slice)
                    .map(|rows| tx.send(Ok(Piece::Rows(rows))).is_ok())
            };
            match handed_over {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        let _ = tx.send(Ok(Piece::Done));
    }

    fn sql(&self, slice: Slice, order_by: &str) -> String {
        format!(
            "{} AND correction_ts >= make_timestamp({}::BIGINT) AND correction_ts < make_timestamp({}::BIGINT){}{order_by}",
            self.sql_head,
            slice.start_ms * 1000,
            slice.end_ms * 1000,
            self.filter,
        )
    }

    /// The usual slice: fetched whole and unordered, then its keys sorted.
    fn fetch_and_sort(&self, conn: &Connection, slice: Slice) -> Result<SortedSlice, StoreError> {
        let mut stmt = conn.prepare(&self.sql(slice, "")).map_err(query_error)?;
        // Materialised, not streamed: a streamed scan hands on each of its
        // vectors as its own batch, and the few late events that match in
        // the next days' vectors made thousands of batches of a few rows.
        stmt.execute(params_from_iter(self.names.iter())).map_err(query_error)?;
        let mut batches = Vec::new();
        while let Some(rows) = stmt.step().map_err(query_error)? {
            batches.push(RecordBatch::from(&rows));
        }
        // DuckDB's copy of the rows goes before the sort and the handover:
        // only the Arrow copy waits for the encoder.
        drop(stmt);
        let order = sort_order(&batches, self.keys)?;
        Ok(SortedSlice { batches, order })
    }

    /// A slice too big to hold (a minute of many rows): DuckDB sorts it
    /// within its memory limit, spilling if it must, and its rows are
    /// handed on a batch at a time. `Ok(false)` when the encoder has gone.
    fn stream_sorted(
        &self,
        conn: &Connection,
        slice: Slice,
        tx: &SyncSender<Result<Piece, StoreError>>,
    ) -> Result<bool, StoreError> {
        let sql = self.sql(slice, " ORDER BY correction_ts, event_log_id");
        let mut stmt = conn.prepare(&sql).map_err(query_error)?;
        for batch in stmt
            .stream_arrow(params_from_iter(self.names.iter()))
            .map_err(query_error)?
        {
            let batch = batch.map_err(query_error)?;
            if tx.send(Ok(Piece::Rows(SortedSlice::in_order(batch)))).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The rows of `batches` in `(correction_ts, event_log_id)` order, the
/// order of `ORDER BY correction_ts, event_log_id` (strings compare by
/// their bytes in both). Rows arrive nearly in that order already.
fn sort_order(batches: &[RecordBatch], keys: SortKeys) -> Result<Vec<(u32, u32)>, StoreError> {
    let key_columns = batches
        .iter()
        .map(|batch| {
            let ts = batch
                .column(keys.correction_ts)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>();
            let id = batch.column(keys.event_log_id).as_any().downcast_ref::<StringArray>();
            ts.zip(id)
                .ok_or_else(|| StoreError::internal("unexpected types of the export's sort keys"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut order = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for (b, (ts, _)) in key_columns.iter().enumerate() {
        // Both columns are NOT NULL, so `values()` is every row's key.
        order.extend(ts.values().iter().enumerate().map(|(r, &t)| (t, b as u32, r as u32)));
    }
    let id = |b: u32, r: u32| key_columns[b as usize].1.value(r as usize);
    order.sort_unstable_by(|x, y| x.0.cmp(&y.0).then_with(|| id(x.1, x.2).cmp(id(y.1, y.2))));
    Ok(order.into_iter().map(|(_, b, r)| (b, r)).collect())
}

/// Cuts `[start_ms, end_ms)` into slices from a per-minute histogram of the
/// rows the export will read, and returns them with the last `rowid` of
/// the histogram's snapshot. Minutes without rows cost nothing: a range of
/// years with a few events is one or two queries.
fn plan_slices(
    conn: &Connection,
    table: &str,
    filter: &str,
    names: &[String],
    (start_ms, end_ms): (i64, i64),
    rows_per_slice: u64,
) -> Result<(i64, Vec<Slice>), StoreError> {
    // One statement, so the histogram and the rowid bound share a snapshot.
    let sql = format!(
        "WITH hist AS (SELECT epoch_ms(correction_ts) // {BUCKET_MS} AS bucket, count(*) AS n FROM {table} \
         WHERE correction_ts >= make_timestamp({}::BIGINT) AND correction_ts < make_timestamp({}::BIGINT){filter} \
         GROUP BY bucket) \
         SELECT bucket, n, (SELECT coalesce(max(rowid), -1) FROM {table}) FROM hist ORDER BY bucket",
        start_ms * 1000,
        end_ms * 1000,
    );
    let mut stmt = conn.prepare(&sql).map_err(query_error)?;
    let mut buckets = Vec::new();
    let mut last_rowid = -1;
    let mut rows = stmt.query(params_from_iter(names.iter())).map_err(query_error)?;
    while let Some(row) = rows.next().map_err(query_error)? {
        buckets.push((row.get::<_, i64>(0)?, row.get::<_, u64>(1)?));
        last_rowid = row.get(2)?;
    }
    Ok((
        last_rowid,
        cut_slices(&buckets, SliceTarget::new(rows_per_slice), start_ms, end_ms),
    ))
}

/// Rows per slice: the first slice is smaller, so that the first byte
/// waits for less.
#[derive(Debug, Clone, Copy)]
struct SliceTarget {
    first_rows: u64,
    rows: u64,
}

impl SliceTarget {
    fn new(rows: u64) -> Self {
        SliceTarget {
            first_rows: (rows / FIRST_SLICE_SHARE).max(1),
            rows,
        }
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

pub(crate) fn query_error(e: duckdb::Error) -> StoreError {
    // An interrupted query is one whose client left; report it as such.
    let message = e.to_string();
    if message.contains("INTERRUPT") || message.contains("nterrupted") {
        StoreError::new(StoreErrorKind::Cancelled, message)
    } else {
        StoreError::query(message)
    }
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
    column.map_or_else(|| "NULL".to_string(), |c| c.col.clone())
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

/// A column of a batch, downcast once per batch.
enum Col<'a> {
    Str(&'a StringArray),
    Long(&'a Int64Array),
    Double(&'a Float64Array),
    Bool(&'a BooleanArray),
    Micros(&'a TimestampMicrosecondArray),
    Date(&'a Date32Array),
    List(&'a ListArray, Box<Col<'a>>),
    /// An all-null column (an unregistered property).
    Null,
}

impl<'a> Col<'a> {
    fn new(array: &'a dyn Array) -> Result<Col<'a>, StoreError> {
        let any = array.as_any();
        let unexpected = || StoreError::internal(format!("unexpected column type {}", array.data_type()));
        Ok(match array.data_type() {
            DataType::Utf8 => Col::Str(any.downcast_ref().ok_or_else(unexpected)?),
            DataType::Int64 => Col::Long(any.downcast_ref().ok_or_else(unexpected)?),
            DataType::Float64 => Col::Double(any.downcast_ref().ok_or_else(unexpected)?),
            DataType::Boolean => Col::Bool(any.downcast_ref().ok_or_else(unexpected)?),
            DataType::Timestamp(TimeUnit::Microsecond, _) => Col::Micros(any.downcast_ref().ok_or_else(unexpected)?),
            DataType::Date32 => Col::Date(any.downcast_ref().ok_or_else(unexpected)?),
            DataType::List(_) => {
                let list: &ListArray = any.downcast_ref().ok_or_else(unexpected)?;
                Col::List(list, Box::new(Col::new(list.values().as_ref())?))
            }
            DataType::Null => Col::Null,
            _ => return Err(unexpected()),
        })
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Col::Str(a) => a.is_null(i),
            Col::Long(a) => a.is_null(i),
            Col::Double(a) => a.is_null(i),
            Col::Bool(a) => a.is_null(i),
            Col::Micros(a) => a.is_null(i),
            Col::Date(a) => a.is_null(i),
            Col::List(a, _) => a.is_null(i),
            Col::Null => true,
        }
    }

    /// Row `i` as a CSV cell; a null is an empty cell.
    fn cell(&self, out: &mut Vec<u8>, scratch: &mut Vec<u8>, i: usize) {
        if self.is_null(i) {
            return;
        }
        match self {
            Col::Str(a) => csv::push_field(out, a.value(i).as_bytes()),
            Col::Long(a) => csv::push_i64(out, a.value(i)),
            Col::Double(a) => csv::push_f64(out, a.value(i)),
            Col::Bool(a) => csv::push_bool(out, a.value(i)),
            Col::Micros(a) => csv::push_datetime_ms(out, a.value(i).div_euclid(1000)),
            Col::Date(a) => csv::push_date_days(out, a.value(i)),
            Col::List(..) => {
                scratch.clear();
                self.json(scratch, i);
                csv::push_field(out, scratch);
            }
            Col::Null => {}
        }
    }

    /// Row `i` as a JSON value (inside an array cell).
    fn json(&self, out: &mut Vec<u8>, i: usize) {
        if self.is_null(i) {
            out.extend_from_slice(b"null");
            return;
        }
        match self {
            Col::Str(a) => csv::push_json_string(out, a.value(i)),
            Col::Long(a) => csv::push_i64(out, a.value(i)),
            Col::Double(a) if a.value(i).is_finite() => csv::push_f64(out, a.value(i)),
            Col::Double(_) | Col::Null => out.extend_from_slice(b"null"),
            Col::Bool(a) => csv::push_bool(out, a.value(i)),
            Col::Micros(a) => {
                out.push(b'"');
                csv::push_datetime_ms(out, a.value(i).div_euclid(1000));
                out.push(b'"');
            }
            Col::Date(a) => {
                out.push(b'"');
                csv::push_date_days(out, a.value(i));
                out.push(b'"');
            }
            Col::List(a, child) => {
                let offsets = a.value_offsets();
                let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                out.push(b'[');
                for (n, j) in (start..end).enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    child.json(out, j);
                }
                out.push(b']');
            }
        }
    }
}

/// Writes row `row` of a batch's columns as one CSV line.
fn encode_row(cols: &[Col<'_>], row: usize, out: &mut Out<'_>, scratch: &mut Vec<u8>) -> Result<(), StoreError> {
    for (c, col) in cols.iter().enumerate() {
        if c > 0 {
            out.buf.push(b',');
        }
        col.cell(&mut out.buf, scratch, row);
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

    #[test]
    fn sort_order_is_by_time_then_event_log_id_across_batches() {
        use duckdb::arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_log_id", DataType::Utf8, false),
            Field::new("correction_ts", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        ]));
        let batch = |ids: &[&str], ts: &[i64]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ids.to_vec())),
                    Arc::new(TimestampMicrosecondArray::from(ts.to_vec())),
                ],
            )
            .unwrap()
        };
        // A late row in the second batch, and a tie on time broken by id.
        let batches = [
            batch(&["b", "a", "z"], &[20, 30, 40]),
            batch(&["y", "c", "a0"], &[40, 10, 50]),
        ];
        let keys = SortKeys {
            correction_ts: 1,
            event_log_id: 0,
        };
        let order = sort_order(&batches, keys).unwrap();
        assert_eq!(order, vec![(1, 1), (0, 0), (0, 1), (1, 0), (0, 2), (1, 2)]);
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
