//! The streaming event export on DuckDB.
//!
//! One query per service day, each sorted on its own by
//! `(correction_ts, event_log_id)`: the days are disjoint and in order, so
//! the concatenation is the globally ordered result, while DuckDB only ever
//! sorts one day and the memory of an export does not grow with its range.
//! Results are pulled as a stream of Arrow batches and encoded straight into
//! CSV chunks by the contract's cell encoder.

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
use fineport_contract::Tz;

use super::schema::{events_table, Layout};
use super::FailPoint;
use crate::{ExportSink, ExportSummary, StoreError, StoreErrorKind, CHUNK_BYTES};

pub(crate) fn run(
    conn: &Connection,
    layout: &Layout,
    service_id: &str,
    timezone: Tz,
    plan: &EventExportPlan,
    sink: &mut dyn ExportSink,
    failpoint: Option<FailPoint>,
) -> Result<ExportSummary, StoreError> {
    start(conn, sink, failpoint)?;

    let select: Vec<String> = plan.columns.iter().map(|c| column_expr(layout, &c.source)).collect();
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

    let mut out = Out {
        buf: plan.header_line(),
        sink,
        summary: ExportSummary::default(),
        failpoint,
    };
    let mut scratch = Vec::new();
    for day in days_with_events(conn, service_id, timezone, plan)? {
        let (start_ms, end_ms) = day_bounds_ms(day, timezone);
        let sql = format!(
            "SELECT {} FROM {} WHERE correction_ts >= make_timestamp({}::BIGINT) AND correction_ts < make_timestamp({}::BIGINT){} \
             ORDER BY correction_ts, event_log_id",
            select.join(", "),
            events_table(service_id),
            start_ms * 1000,
            end_ms * 1000,
            filter,
        );
        let mut stmt = conn.prepare(&sql).map_err(query_error)?;
        let stream = stmt.stream_arrow(params_from_iter(names.iter())).map_err(query_error)?;
        for batch in stream {
            let batch = batch.map_err(query_error)?;
            encode_batch(&batch, &mut out, &mut scratch)?;
        }
    }
    out.flush()?;
    Ok(out.summary)
}

/// The days of the plan that can hold events: those between the first and
/// the last event of the range. A range of years (look-back 0) or one that
/// reaches far into the future costs one query, not one per empty day.
fn days_with_events(
    conn: &Connection,
    service_id: &str,
    timezone: Tz,
    plan: &EventExportPlan,
) -> Result<Vec<chrono::NaiveDate>, StoreError> {
    let (start_ms, _) = day_bounds_ms(plan.from_date, timezone);
    let (_, end_ms) = day_bounds_ms(plan.to_date, timezone);
    let sql = format!(
        "SELECT epoch_ms(min(correction_ts)), epoch_ms(max(correction_ts)) FROM {} \
         WHERE correction_ts >= make_timestamp({}::BIGINT) AND correction_ts < make_timestamp({}::BIGINT)",
        events_table(service_id),
        start_ms * 1000,
        end_ms * 1000
    );
    let (first, last): (Option<i64>, Option<i64>) = conn
        .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(query_error)?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Vec::new());
    };
    let day_of = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&timezone).date_naive());
    let (Some(first_day), Some(last_day)) = (day_of(first), day_of(last)) else {
        return Ok(Vec::new());
    };
    Ok(plan.days().filter(|d| *d >= first_day && *d <= last_day).collect())
}

/// What every export does first: let the sink interrupt the connection's
/// query, and honour a before-the-first-byte failpoint.
pub(crate) fn start(
    conn: &Connection,
    sink: &mut dyn ExportSink,
    failpoint: Option<FailPoint>,
) -> Result<(), StoreError> {
    let interrupt = conn.interrupt_handle();
    sink.set_interrupt(Box::new(move || interrupt.interrupt()));
    match failpoint {
        Some(FailPoint::BeforeFirstByte) => Err(StoreError::query("injected failure before the first byte")),
        Some(FailPoint::InternalBeforeFirstByte) => Err(StoreError::internal("injected internal error")),
        _ => Ok(()),
    }
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
    sink: &'a mut dyn ExportSink,
    pub summary: ExportSummary,
    failpoint: Option<FailPoint>,
}

impl<'a> Out<'a> {
    pub fn new(header: Vec<u8>, sink: &'a mut dyn ExportSink, failpoint: Option<FailPoint>) -> Self {
        Out {
            buf: header,
            sink,
            summary: ExportSummary::default(),
            failpoint,
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
            return Err(StoreError::new(StoreErrorKind::Cancelled, "the client went away"));
        }
        if let Some(FailPoint::AfterBytes(n)) = self.failpoint {
            if self.summary.bytes >= n {
                return Err(StoreError::query(format!(
                    "injected failure after {} bytes",
                    self.summary.bytes
                )));
            }
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

fn encode_batch(batch: &RecordBatch, out: &mut Out<'_>, scratch: &mut Vec<u8>) -> Result<(), StoreError> {
    let cols = batch
        .columns()
        .iter()
        .map(|a| Col::new(a.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    for row in 0..batch.num_rows() {
        for (c, col) in cols.iter().enumerate() {
            if c > 0 {
                out.buf.push(b',');
            }
            col.cell(&mut out.buf, scratch, row);
        }
        out.end_row()?;
    }
    Ok(())
}
