//! The event export on ClickHouse (SPEC §2.1, §2.3).
//!
//! The range's service days (DST-aware, [`day_bounds_ms`]) are grouped
//! into *query ranges*: consecutive days holding together at most
//! [`ClickHouseOptions::export_rows_per_query`] rows (by a first `count()`
//! per 15-minute bucket; a bigger day is a range of its own, never split).
//! 18.16 cannot read a table in key order: each shard sorts its whole
//! result in memory before sending a byte (a 1M-row month: 0.3–0.5 GiB
//! per shard, against 21–80 MiB for a 33k-row day), so a range bounds
//! the memory of a query and the wait for the first byte. Ranges are
//! disjoint and in order, and each is sorted by `(correction_ms,
//! event_log_id, ver DESC)`, so their concatenation is in export order.
//!
//! Each range is one query on the Distributed table, `FORMAT RowBinary`,
//! with its own `query_id`; the rows are encoded here into CSV with the
//! functions of [`fineport_contract::csv`] the DuckDB backend uses. Every
//! row is checked: its correction time must lie in the range and its key
//! must not decrease, and a response ending inside a row is an error.
//! That is what catches a query that failed after its first block (18.16
//! then appends `Code: …` to an HTTP 200 body that ends cleanly). Rows
//! with the same `(correction_ms, event_log_id)` are adjacent, the first
//! receipt first: all but the first are dropped (resends whose merge has
//! not happened yet).
//!
//! The export runs in its own task and hands ~[`CHUNK_BYTES`] chunks over
//! the bounded channel of `channel.rs`, so it produces only as fast as it is
//! read. Dropping the stream aborts the task, which drops the response
//! and sends `KILL QUERY` for the running query ([`KillOnDrop`]).
//!
//! [`ClickHouseOptions::export_rows_per_query`]: super::ClickHouseOptions::export_rows_per_query

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use fineport_contract::csv;
use fineport_contract::export::{ColumnSource, EventExportPlan, EventFilterKind, SystemColumn};
use fineport_contract::taxonomy::ITEMS_COLUMN_PREFIX;
use fineport_contract::time::day_bounds_ms;
use fineport_contract::{ServiceId, Tz};
use tokio::sync::mpsc;

use super::response::Rows;
use super::rowbinary::Cursor;
use super::{literal, new_query_id, Inner, KillOnDrop};
use crate::channel::{self, AbortOnDrop, Item};
use crate::{ExportPart, ExportStream, ExportSummary, StoreError, StoreErrorKind, CHUNK_BYTES};

/// The planning count's bucket: every timezone offset in use today is a
/// multiple of it, so a bucket falls within one service day.
const BUCKET_MS: i64 = 15 * 60_000;

/// Plans with at most this many property columns have ClickHouse cut the
/// property arrays to them (`arrayFilter`); wider plans read them whole.
/// Measured as `fineport bench --store cluster`'s ratio to ClickHouse's
/// own CSV (38 property keys): filtering every plan took the
/// all-properties export from 1.10–1.41× to 1.01×; filtering the
/// 6-property include plan took it from 0.46× to 0.72–0.84×.
const FILTER_KEYS_AT_MOST: usize = 8;

/// Starts the export task; see the module doc. Dropping the stream aborts
/// the task, which drops its response and its [`KillOnDrop`].
pub(crate) fn start(inner: Arc<Inner>, service_id: ServiceId, timezone: Tz, plan: EventExportPlan) -> ExportStream {
    let (tx, rx) = channel::channel();
    let task = tokio::spawn(async move {
        let result = run(&inner, &service_id, timezone, &plan, &tx).await;
        let _ = tx.send(result.map(ExportPart::End)).await;
    });
    channel::stream(rx, AbortOnDrop(task))
}

/// The SQL pieces every query of one export shares.
struct Query {
    /// `… WHERE service_id = '…'`, without the time condition.
    from_where: String,
    /// ` AND event_name [NOT] IN (…)` or nothing.
    filter: String,
    /// The two property arrays, cut to the keys the plan exports when they
    /// are few ([`FILTER_KEYS_AT_MOST`]): what a short include list leaves
    /// out is then never sent.
    properties: String,
}

async fn run(
    inner: &Arc<Inner>,
    service_id: &ServiceId,
    timezone: Tz,
    plan: &EventExportPlan,
    tx: &mpsc::Sender<Item>,
) -> Result<ExportSummary, StoreError> {
    let filter = match &plan.event_filter {
        None => String::new(),
        Some((kind, names)) => {
            let op = if *kind == EventFilterKind::Include {
                "IN"
            } else {
                "NOT IN"
            };
            let names: Vec<String> = names.iter().map(|n| literal(n)).collect();
            format!(" AND event_name {op} ({})", names.join(", "))
        }
    };
    let keys: Vec<String> = plan
        .columns
        .iter()
        .filter_map(|column| match &column.source {
            ColumnSource::System(_) => None,
            ColumnSource::EventProperty { name, .. } => Some(literal(name)),
            ColumnSource::ItemProperty { name, .. } => Some(literal(&format!("{ITEMS_COLUMN_PREFIX}{name}"))),
        })
        .collect();
    let properties = if keys.is_empty() {
        "emptyArrayString(), emptyArrayString()".to_owned()
    } else if keys.len() > FILTER_KEYS_AT_MOST {
        "prop_keys, prop_values".to_owned()
    } else {
        let set = format!("[{}]", keys.join(", "));
        format!(
            "arrayFilter(k -> has({set}, k), prop_keys), arrayFilter((v, k) -> has({set}, k), prop_values, prop_keys)"
        )
    };
    let query = Query {
        from_where: format!(
            "FROM {} WHERE service_id = '{}'",
            inner.events_table,
            service_id.as_str()
        ),
        filter,
        properties,
    };
    let days: Vec<(i64, i64)> = plan
        .from_date
        .iter_days()
        .take_while(|d| *d <= plan.to_date)
        .map(|d| day_bounds_ms(d, timezone))
        .collect();
    let buckets = count_buckets(inner, &query, &days).await?;
    let ranges = group_days(&days, &buckets, inner.options.export_rows_per_query.max(1));

    let mut encoder = Encoder::new(plan, tx);
    for range in ranges {
        read_range(inner, &query, range, &mut encoder).await?;
    }
    encoder.flush().await?;
    Ok(encoder.summary)
}

/// Rows per 15-minute bucket (`(bucket, rows)`, ascending) in the days.
async fn count_buckets(inner: &Arc<Inner>, query: &Query, days: &[(i64, i64)]) -> Result<Vec<(i64, u64)>, StoreError> {
    let (Some(&(start, _)), Some(&(_, end))) = (days.first(), days.last()) else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT intDiv(correction_ms, {BUCKET_MS}) AS b, count() {} AND correction_ms >= {start} \
         AND correction_ms < {end}{} GROUP BY b ORDER BY b FORMAT RowBinary",
        query.from_where, query.filter
    );
    let node = inner.pick_node();
    let query_id = new_query_id("plan");
    let max_time = inner.options.max_execution_secs.to_string();
    let params = [
        ("query_id", query_id.as_str()),
        ("max_execution_time", max_time.as_str()),
    ];
    let mut guard = KillOnDrop::new(inner.clone(), node, query_id.clone());
    let response = inner.post(node, &params, sql).await?;
    let mut rows = Rows::new(response, inner.nodes[node].clone());
    let mut buckets: Vec<(i64, u64)> = Vec::new();
    // intDiv truncates toward zero; a bucket is within one of the range's.
    let (low, high) = (start / BUCKET_MS - 1, end / BUCKET_MS + 1);
    while let Some((bucket, n)) = rows.next(|c| Some((c.i64()?, c.u64()?))).await? {
        let after_last = buckets.last().is_none_or(|&(last, _)| bucket > last);
        if !(low..=high).contains(&bucket) || !after_last {
            return Err(rows.failure("the count of the export's rows is malformed").await);
        }
        buckets.push((bucket, n));
    }
    guard.disarm();
    Ok(buckets)
}

/// Groups consecutive `days` (`[start, end)` UTC ms, contiguous) into
/// ranges of at most `target` rows by `buckets`; a day is never split. The
/// ranges cover the days from the first to the last (an empty day joins
/// the range before it, leading ones the first); none when the days hold
/// no rows.
fn group_days(days: &[(i64, i64)], buckets: &[(i64, u64)], target: u64) -> Vec<(i64, i64)> {
    let (Some(&(start, _)), Some(&(_, end))) = (days.first(), days.last()) else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    let mut range_start = start;
    let mut rows = 0;
    let mut next_bucket = buckets.iter().peekable();
    for (i, &(day_start, day_end)) in days.iter().enumerate() {
        let last_day = i + 1 == days.len();
        let mut day_rows = 0;
        // A bucket belongs to the day its start falls in (the first day
        // takes one that starts before it).
        while let Some(&&(bucket, n)) = next_bucket.peek() {
            if !last_day && bucket * BUCKET_MS >= day_end {
                break;
            }
            day_rows += n;
            next_bucket.next();
        }
        if rows > 0 && day_rows > 0 && rows + day_rows > target {
            ranges.push((range_start, day_start));
            range_start = day_start;
            rows = 0;
        }
        rows += day_rows;
    }
    if rows > 0 {
        ranges.push((range_start, end));
    }
    ranges
}

/// Queries one range and encodes its rows.
async fn read_range(
    inner: &Arc<Inner>,
    query: &Query,
    (start, end): (i64, i64),
    encoder: &mut Encoder<'_>,
) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT correction_ms, event_log_id, server_ms, event_ms, unified_id, event_name, api_version, \
         platform, {}, item_count {} AND correction_ms >= {start} AND correction_ms < {end}{} \
         ORDER BY correction_ms, event_log_id, ver DESC FORMAT RowBinary",
        query.properties, query.from_where, query.filter
    );
    let node = inner.pick_node();
    let query_id = new_query_id("export");
    let max_time = inner.options.max_execution_secs.to_string();
    let params = [
        ("query_id", query_id.as_str()),
        ("max_execution_time", max_time.as_str()),
    ];
    inner.export_queries.fetch_add(1, Ordering::Relaxed);
    let mut guard = KillOnDrop::new(inner.clone(), node, query_id.clone());
    let response = inner.post(node, &params, sql).await?;
    let mut rows = Rows::new(response, inner.nodes[node].clone());
    let keys = encoder.keys.clone();
    let (mut key_slots, mut slots) = (Vec::new(), vec![None; encoder.slot_count]);
    while let Some(row) = rows.next(|c| parse_row(c, &keys, &mut key_slots, &mut slots)).await? {
        if !(start..end).contains(&row.correction_ms) {
            let what = format!(
                "a row with correction time {} outside the queried [{start}, {end})",
                row.correction_ms
            );
            return Err(rows.failure(&what).await);
        }
        let id = &rows.buf()[row.event_log_id.clone()];
        match encoder
            .last_key
            .as_ref()
            .map(|(ms, last)| (row.correction_ms, id).cmp(&(*ms, last.as_slice())))
        {
            Some(std::cmp::Ordering::Less) => return Err(rows.failure("rows out of order").await),
            // A resend not merged away yet: the first receipt came first.
            Some(std::cmp::Ordering::Equal) => continue,
            _ => {}
        }
        encoder.row(rows.buf(), &row, &slots).await?;
    }
    guard.disarm();
    Ok(())
}

/// The fixed columns of a row, strings as ranges of the response buffer.
struct RawRow {
    correction_ms: i64,
    event_log_id: Range<usize>,
    server_ms: i64,
    event_ms: i64,
    unified_id: Range<usize>,
    event_name: Range<usize>,
    api_version: Range<usize>,
    platform: Range<usize>,
}

/// Reads one row; its property values go to `slots` by the plan's column
/// of their key (`keys`), keys the plan does not export are skipped.
fn parse_row(
    c: &mut Cursor<'_>,
    keys: &HashMap<Vec<u8>, usize>,
    key_slots: &mut Vec<Option<usize>>,
    slots: &mut [Option<Range<usize>>],
) -> Option<RawRow> {
    slots.fill(None);
    key_slots.clear();
    let row = RawRow {
        correction_ms: c.i64()?,
        event_log_id: c.str()?,
        server_ms: c.i64()?,
        event_ms: c.i64()?,
        unified_id: c.str()?,
        event_name: c.str()?,
        api_version: c.str()?,
        platform: c.str()?,
    };
    for _ in 0..c.len()? {
        let key = c.str()?;
        key_slots.push(keys.get(c.slice(key)).copied());
    }
    let values = c.len()?;
    for i in 0..values {
        let value = c.str()?;
        // Arrays of another length are not fineport's; their extra values
        // have no key.
        if let Some(Some(slot)) = key_slots.get(i) {
            slots[*slot] = Some(value);
        }
    }
    c.u16()?;
    Some(row)
}

/// What a CSV column is filled from.
enum Cell {
    System(SystemColumn),
    /// The property value in this slot (a key of `prop_keys`).
    Property(usize),
}

/// The CSV being written and handed on in chunks.
struct Encoder<'a> {
    columns: Vec<Cell>,
    /// Property key (`name` or `df_items_<name>`) → slot.
    keys: HashMap<Vec<u8>, usize>,
    slot_count: usize,
    /// The key of the last row written, to drop resends and check order.
    last_key: Option<(i64, Vec<u8>)>,
    out: Vec<u8>,
    tx: &'a mpsc::Sender<Item>,
    summary: ExportSummary,
}

impl<'a> Encoder<'a> {
    fn new(plan: &EventExportPlan, tx: &'a mpsc::Sender<Item>) -> Self {
        let mut keys = HashMap::new();
        let columns = plan
            .columns
            .iter()
            .map(|column| {
                let key = match &column.source {
                    ColumnSource::System(s) => return Cell::System(*s),
                    ColumnSource::EventProperty { name, .. } => name.clone(),
                    ColumnSource::ItemProperty { name, .. } => format!("{ITEMS_COLUMN_PREFIX}{name}"),
                };
                let next = keys.len();
                Cell::Property(*keys.entry(key.into_bytes()).or_insert(next))
            })
            .collect();
        let slot_count = keys.len();
        Encoder {
            columns,
            keys,
            slot_count,
            last_key: None,
            out: plan.header_line(),
            tx,
            summary: ExportSummary::default(),
        }
    }

    /// Writes one row (its strings in `buf`) and hands a full chunk on.
    async fn row(&mut self, buf: &[u8], row: &RawRow, slots: &[Option<Range<usize>>]) -> Result<(), StoreError> {
        let out = &mut self.out;
        for (i, column) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let text = |r: &Range<usize>| &buf[r.clone()];
            match column {
                Cell::System(SystemColumn::UnifiedId) => csv::push_field(out, text(&row.unified_id)),
                Cell::System(SystemColumn::EventName) => csv::push_field(out, text(&row.event_name)),
                Cell::System(SystemColumn::ApiVersion) => csv::push_field(out, text(&row.api_version)),
                Cell::System(SystemColumn::ServerDatetime) => csv::push_datetime_ms(out, row.server_ms),
                Cell::System(SystemColumn::CorrectionDatetime) => csv::push_datetime_ms(out, row.correction_ms),
                Cell::System(SystemColumn::EventLogId) => csv::push_field(out, text(&row.event_log_id)),
                Cell::System(SystemColumn::EventDatetime) => csv::push_datetime_ms(out, row.event_ms),
                Cell::System(SystemColumn::Platform) => csv::push_field(out, text(&row.platform)),
                Cell::Property(slot) => {
                    if let Some(value) = &slots[*slot] {
                        csv::push_field(out, text(value));
                    }
                }
            }
        }
        out.push(b'\n');
        self.summary.rows += 1;
        match &mut self.last_key {
            Some((ms, id)) => {
                *ms = row.correction_ms;
                id.clear();
                id.extend_from_slice(&buf[row.event_log_id.clone()]);
            }
            None => self.last_key = Some((row.correction_ms, buf[row.event_log_id.clone()].to_vec())),
        }
        if self.out.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands what is written on; waits while the consumer is behind.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4));
        self.summary.bytes += chunk.len() as u64;
        self.tx
            .send(Ok(ExportPart::Chunk(Bytes::from(chunk))))
            .await
            .map_err(|_| StoreError::new(StoreErrorKind::Cancelled, "the export stream was dropped"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn days(n: i64) -> Vec<(i64, i64)> {
        (0..n).map(|d| (d * DAY, (d + 1) * DAY)).collect()
    }

    fn bucket(ms: i64, n: u64) -> (i64, u64) {
        (ms / BUCKET_MS, n)
    }

    #[test]
    fn days_group_up_to_the_target_and_cover_the_range() {
        let buckets = [
            bucket(0, 5),
            bucket(DAY + 1, 4),
            bucket(3 * DAY, 20),
            bucket(4 * DAY, 1),
        ];
        assert_eq!(
            group_days(&days(6), &buckets, 10),
            vec![(0, 3 * DAY), (3 * DAY, 4 * DAY), (4 * DAY, 6 * DAY)]
        );
    }

    #[test]
    fn one_row_per_query_splits_every_day_with_rows() {
        let buckets = [bucket(DAY, 1), bucket(DAY + 5, 1), bucket(3 * DAY, 1)];
        assert_eq!(
            group_days(&days(5), &buckets, 1),
            vec![(0, 3 * DAY), (3 * DAY, 5 * DAY)]
        );
    }

    #[test]
    fn no_rows_no_queries() {
        assert!(group_days(&days(3), &[], 10).is_empty());
        assert!(group_days(&[], &[bucket(0, 1)], 10).is_empty());
    }
}
