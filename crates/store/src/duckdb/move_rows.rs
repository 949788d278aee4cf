//! Inserts a move's events into an event table straight from the parsed
//! batches, through a table function that fills DuckDB's vectors.
//!
//! `INSERT INTO "events_<service>" SELECT * FROM fineport_move_rows(<key>)`
//! runs in the writer's transaction; DuckDB calls the function for chunks
//! of up to 2,048 rows, and each chunk's vectors are written from the
//! batches' values: no Arrow batch in between, no appender copy (the Arrow build and
//! its conversion were half of a heavy import's writer thread,
//! docs/benchmarks.md item 13).
//!
//! The rows are the columns of the table, in its order: the system columns,
//! then every property column of the [`Layout`], null where an event lacks
//! the property. An item column holds, for an event with items, a list
//! with one element per item (null where that item lacks the property); for
//! an event without items, null.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use duckdb::core::{DataChunkHandle, FlatVector, ListVector, LogicalTypeHandle, LogicalTypeId};
use duckdb::vtab::{BindInfo, InitInfo, TableFunctionInfo, VTab};
use duckdb::Connection;
use fineport_contract::import::{EventInput, API_VERSION, PLATFORM_HTTP_API};
use fineport_contract::taxonomy::PropertyScope;
use fineport_contract::types::{PropertyType, Value};
use foldhash::HashMap;

use super::schema::{Layout, StoredType, SysType, SYSTEM_COLUMNS};
use crate::StoreError;

/// The table function's name.
const FUNCTION: &str = "fineport_move_rows";

/// Rows DuckDB asks for at a time (`STANDARD_VECTOR_SIZE`).
const CHUNK_ROWS: usize = 2048;

/// An event ready to append, with its system values resolved.
pub(crate) struct EventRow<'a> {
    pub event: &'a EventInput,
    pub unified_id: &'a str,
    pub server_ms: i64,
    pub correction_ms: i64,
}

/// Registers the table function on the writer's connection (once).
pub(crate) fn register(conn: &Connection) -> Result<(), StoreError> {
    conn.register_table_function::<MoveRows>(FUNCTION)?;
    Ok(())
}

/// Inserts `rows` into `table` (quoted), which has `layout`'s columns,
/// within the connection's open transaction.
pub(crate) fn insert(conn: &Connection, table: &str, layout: &Layout, rows: &[EventRow<'_>]) -> Result<(), StoreError> {
    let mut ids = vec![0; rows.len() * 36];
    for (row, text) in rows.iter().zip(ids.chunks_exact_mut(36)) {
        row.event.event_log_id.hyphenated().encode_lower(text);
    }
    let rows = Move {
        layout,
        rows,
        slots: Slots::new(layout, rows),
        ids,
    };
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    let _registered = Registered::new(key, &rows);
    conn.execute(&format!("INSERT INTO {table} SELECT * FROM {FUNCTION}({key})"), [])?;
    Ok(())
}

/// One insert's rows, as the table function reads them.
struct Move<'a> {
    layout: &'a Layout,
    rows: &'a [EventRow<'a>],
    slots: Slots<'a>,
    /// Each row's `event_log_id` as text, 36 bytes each: the vectors point
    /// into it.
    ids: Vec<u8>,
}

/// The moves being inserted, by key: the table function's only way to
/// them, since its bind data must be `'static`. An entry lives exactly as
/// long as the [`insert`] call that made it, which outlives the statement
/// that reads it.
static MOVES: Mutex<BTreeMap<u64, MovePtr>> = Mutex::new(BTreeMap::new());
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy)]
struct MovePtr(*const Move<'static>);

// SAFETY: a `Move` is only read (never written) through the pointer, while
// the `insert` that owns it waits for the statement on its own thread.
unsafe impl Send for MovePtr {}

/// Removes a move's entry when its `insert` returns, however it returns.
struct Registered(u64);

impl Registered {
    fn new(key: u64, rows: &Move<'_>) -> Registered {
        // The lifetime is erased only to be stored: the entry is removed
        // (by `drop`, below) before `rows` goes out of scope.
        let ptr = MovePtr((rows as *const Move<'_>).cast::<Move<'static>>());
        if let Ok(mut moves) = MOVES.lock() {
            moves.insert(key, ptr);
        }
        Registered(key)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut moves) = MOVES.lock() {
            moves.remove(&self.0);
        }
    }
}

/// Runs `f` on the move registered under `key`.
fn with_move<T>(key: u64, f: impl FnOnce(&Move<'_>) -> T) -> Result<T, Box<dyn Error>> {
    let ptr = MOVES
        .lock()
        .map_err(|_| "the registry of moves is poisoned")?
        .get(&key)
        .copied()
        .ok_or_else(|| format!("{FUNCTION}: no move {key} is being inserted"))?;
    // SAFETY: the entry exists, so the `insert` that registered it has not
    // returned and its `Move` is alive; it is only read.
    Ok(f(unsafe { &*ptr.0 }))
}

struct MoveRows;

struct Bound {
    key: u64,
}

struct Cursor {
    next: AtomicUsize,
}

impl VTab for MoveRows {
    type InitData = Cursor;
    type BindData = Bound;

    fn bind(bind: &BindInfo) -> Result<Bound, Box<dyn Error>> {
        let key = u64::try_from(bind.get_parameter(0).to_int64())?;
        with_move(key, |m| {
            for (name, ty) in SYSTEM_COLUMNS {
                bind.add_result_column(name, ty.scalar().handle());
            }
            for column in &m.layout.columns {
                bind.add_result_column(&column.col, StoredType::of(column).handle());
            }
        })?;
        Ok(Bound { key })
    }

    fn init(init: &InitInfo) -> Result<Cursor, Box<dyn Error>> {
        // One thread, so that rows keep their order.
        init.set_max_threads(1);
        Ok(Cursor {
            next: AtomicUsize::new(0),
        })
    }

    fn func(info: &TableFunctionInfo<Self>, output: &mut DataChunkHandle) -> Result<(), Box<dyn Error>> {
        let cursor = info.get_init_data();
        let start = cursor.next.load(Ordering::Relaxed);
        let n = with_move(info.get_bind_data().key, |m| {
            let n = rows_that_fit(m, start, CHUNK_ROWS.min(m.rows.len() - start));
            if n > 0 {
                fill(m, start, n, output)?;
            }
            Ok::<_, Box<dyn Error>>(n)
        })??;
        cursor.next.store(start + n, Ordering::Relaxed);
        output.set_len(n);
        Ok(())
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![LogicalTypeHandle::from(LogicalTypeId::Bigint)])
    }
}

/// How many of the `want` rows from `start` fit one call (at least one):
/// as many as keep every list column's elements (and a list of lists'
/// inner elements) within the 2,048 that each list's child vector holds
/// when DuckDB hands the chunk over. Growing a child would allocate from
/// DuckDB's memory-limited buffer pool inside this callback, where a C++
/// exception (the memory limit) cannot be caught and aborts the process;
/// within its capacity, reserving allocates nothing. A single row with more
/// than 2,048 elements in one list still goes alone, and grows the child.
fn rows_that_fit(m: &Move<'_>, start: usize, want: usize) -> usize {
    let mut fit = want;
    for (c, column) in m.layout.columns.iter().enumerate() {
        let (mut outer, mut inner) = (0, 0);
        for r in 0..fit {
            let (a, b) = match column.scope {
                PropertyScope::Item => {
                    let items = m.slots.items_of[start + r]..m.slots.items_of[start + r + 1];
                    let nested: usize = m.slots.items(c)[items.clone()]
                        .iter()
                        .filter_map(|v| list_len(column.ty, v))
                        .sum();
                    (items.len(), nested)
                }
                _ if is_list(column.ty) => (list_len(column.ty, &m.slots.events(c)[start + r]).unwrap_or(0), 0),
                _ => break,
            };
            outer += a;
            inner += b;
            if outer > CHUNK_ROWS || inner > CHUNK_ROWS {
                fit = r.max(1);
                break;
            }
        }
    }
    fit
}

/// The elements of `v` when it is a list of type `ty`.
fn list_len(ty: PropertyType, v: &Option<&Value>) -> Option<usize> {
    match (ty, v) {
        (PropertyType::StringArray, Some(Value::StringArray(xs))) => Some(xs.len()),
        (PropertyType::LongArray, Some(Value::LongArray(xs))) => Some(xs.len()),
        (PropertyType::DoubleArray, Some(Value::DoubleArray(xs))) => Some(xs.len()),
        _ => None,
    }
}

/// Writes rows `start..start + n` of `m` into `output`'s vectors.
fn fill(m: &Move<'_>, start: usize, n: usize, output: &DataChunkHandle) -> Result<(), Box<dyn Error>> {
    let rows = &m.rows[start..start + n];
    for (c, (name, ty)) in SYSTEM_COLUMNS.iter().enumerate() {
        let mut v = output.flat_vector(c);
        match ty {
            SysType::Timestamp => {
                // SAFETY: a TIMESTAMP vector holds i64 microseconds, and a
                // chunk's vectors hold `CHUNK_ROWS` ≥ `n` values.
                let out = unsafe { v.as_mut_slice_with_len::<i64>(n) };
                for (o, r) in out.iter_mut().zip(rows) {
                    *o = match *name {
                        "correction_ts" => r.correction_ms,
                        "server_ts" => r.server_ms,
                        _ => r.event.event_datetime_ms,
                    } * 1000;
                }
            }
            SysType::Text => {
                let out = strings(&mut v, n);
                for (i, (o, r)) in out.iter_mut().zip(rows).enumerate() {
                    *o = string_t(match *name {
                        "event_log_id" => &m.ids[(start + i) * 36..(start + i + 1) * 36],
                        "event_name" => r.event.event_name.as_bytes(),
                        "unified_id" => r.unified_id.as_bytes(),
                        "api_version" => API_VERSION.as_bytes(),
                        _ => PLATFORM_HTTP_API.as_bytes(),
                    });
                }
            }
        }
    }
    let items = m.slots.items_of[start]..m.slots.items_of[start + n];
    for (c, column) in m.layout.columns.iter().enumerate() {
        let at = SYSTEM_COLUMNS.len() + c;
        match column.scope {
            PropertyScope::Item => {
                let mut list = output.list_vector(at);
                let values = &m.slots.items(c)[items.clone()];
                for r in 0..n {
                    let (from, to) = (m.slots.items_of[start + r], m.slots.items_of[start + r + 1]);
                    if from == to {
                        list.set_null(r);
                    } else {
                        list.set_entry(r, from - items.start, to - from);
                    }
                }
                if is_list(column.ty) {
                    list.try_reserve(values.len())?;
                    let mut inner = list.list_child();
                    fill_lists(&mut inner, column.ty, values);
                } else {
                    let mut child = list.child(values.len());
                    fill_scalars(&mut child, column.ty, values);
                }
                list.set_len(values.len());
            }
            _ => {
                let values = &m.slots.events(c)[start..start + n];
                if is_list(column.ty) {
                    fill_lists(&mut output.list_vector(at), column.ty, values);
                } else {
                    fill_scalars(&mut output.flat_vector(at), column.ty, values);
                }
            }
        }
    }
    Ok(())
}

fn is_list(ty: PropertyType) -> bool {
    matches!(
        ty,
        PropertyType::StringArray | PropertyType::LongArray | PropertyType::DoubleArray
    )
}

/// A VARCHAR vector's first `n` values, as DuckDB's `string_t`s.
fn strings<'v>(v: &'v mut FlatVector<'_>, n: usize) -> &'v mut [[u8; 16]] {
    // SAFETY: a VARCHAR vector holds 16-byte `string_t`s, with room for a
    // chunk (or, for a list's child, for what was reserved).
    unsafe { v.as_mut_slice_with_len::<[u8; 16]>(n) }
}

/// DuckDB's `string_t` for `text`: its length, then the text itself when it
/// fits in 12 bytes (zero-padded), else its first 4 bytes and a pointer to
/// it. The pointer is to the move's own memory (the parsed batches, or
/// [`Move::ids`]), which outlives the statement that reads it, so that the
/// callback copies no text and calls nothing in DuckDB that allocates: a
/// C++ exception thrown there (DuckDB's memory limit) would have to unwind
/// through this Rust callback, which aborts the process. DuckDB copies the
/// text into the table when it appends the chunk.
fn string_t(text: &[u8]) -> [u8; 16] {
    let mut out = [0; 16];
    // Texts are far below 4 GiB: a request body is limited to far less.
    out[..4].copy_from_slice(&(text.len() as u32).to_ne_bytes());
    if text.len() <= 12 {
        out[4..4 + text.len()].copy_from_slice(text);
    } else {
        out[4..8].copy_from_slice(&text[..4]);
        out[8..].copy_from_slice(&(text.as_ptr() as usize).to_ne_bytes());
    }
    out
}

/// Writes `values` (of scalar type `ty`; null for `None` or another type)
/// into `v` from row 0; `v` holds at least `values.len()` rows.
fn fill_scalars(v: &mut FlatVector<'_>, ty: PropertyType, values: &[Option<&Value>]) {
    macro_rules! fixed {
        ($t:ty, $variant:ident, $conv:expr) => {{
            let mut nulls = Vec::new();
            {
                // SAFETY: the vector's physical type is `$t` (the column's
                // DuckDB type, from `StoredType`), with room for the values.
                let out = unsafe { v.as_mut_slice_with_len::<$t>(values.len()) };
                for (i, (o, value)) in out.iter_mut().zip(values).enumerate() {
                    match value {
                        Some(Value::$variant(x)) => *o = $conv(x),
                        _ => nulls.push(i),
                    }
                }
            }
            nulls.into_iter().for_each(|i| v.set_null(i));
        }};
    }
    match ty {
        PropertyType::String => {
            let mut nulls = Vec::new();
            let out = strings(v, values.len());
            for (i, (o, value)) in out.iter_mut().zip(values).enumerate() {
                match value {
                    Some(Value::String(s)) => *o = string_t(s.as_bytes()),
                    _ => nulls.push(i),
                }
            }
            nulls.into_iter().for_each(|i| v.set_null(i));
        }
        PropertyType::Long => fixed!(i64, Long, |x: &i64| *x),
        PropertyType::Double => fixed!(f64, Double, |x: &f64| *x),
        PropertyType::Boolean => fixed!(bool, Boolean, |x: &bool| *x),
        PropertyType::Datetime => fixed!(i64, Datetime, |x: &i64| *x * 1000),
        PropertyType::Date => fixed!(i32, Date, |x: &i32| *x),
        _ => (0..values.len()).for_each(|i| v.set_null(i)),
    }
}

/// Writes `values` (of array type `ty`; null for `None` or another type)
/// into list vector `list` from row 0, its elements into the list's child.
fn fill_lists(list: &mut ListVector<'_>, ty: PropertyType, values: &[Option<&Value>]) {
    let len = |v: &Option<&Value>| list_len(ty, v);
    let total: usize = values.iter().filter_map(len).sum();
    let mut offset = 0;
    for (i, v) in values.iter().enumerate() {
        match len(v) {
            Some(n) => {
                list.set_entry(i, offset, n);
                offset += n;
            }
            None => list.set_null(i),
        }
    }
    let mut child = list.child(total);
    let mut at = 0;
    for v in values.iter().flatten() {
        match (ty, v) {
            (PropertyType::StringArray, Value::StringArray(xs)) => {
                let out = strings(&mut child, total);
                for (o, x) in out[at..at + xs.len()].iter_mut().zip(xs) {
                    *o = string_t(x.as_bytes());
                }
                at += xs.len();
            }
            (PropertyType::LongArray, Value::LongArray(xs)) => {
                // SAFETY: a BIGINT child with room for `total` values.
                let out = unsafe { child.as_mut_slice_with_len::<i64>(total) };
                out[at..at + xs.len()].copy_from_slice(xs);
                at += xs.len();
            }
            (PropertyType::DoubleArray, Value::DoubleArray(xs)) => {
                // SAFETY: a DOUBLE child with room for `total` values.
                let out = unsafe { child.as_mut_slice_with_len::<f64>(total) };
                out[at..at + xs.len()].copy_from_slice(xs);
                at += xs.len();
            }
            _ => {}
        }
    }
    list.set_len(total);
}

/// Every value of a batch placed by column: each event's properties (and
/// each item's) are looked up once, by name, in the layout, instead of
/// once per column of the table (a profile of heavy imports had those
/// `BTreeMap` searches at 8 % of the server's CPU). Column-major, so that
/// filling a column reads its values in order.
struct Slots<'a> {
    rows: usize,
    /// `columns × rows`: the event property of each row in each
    /// event-scope column (`None` also in item columns).
    events: Vec<Option<&'a Value>>,
    /// `columns × items`: the items of every row one after another.
    items: Vec<Option<&'a Value>>,
    /// Each row's items: `items_of[r]..items_of[r + 1]`.
    items_of: Vec<usize>,
}

impl<'a> Slots<'a> {
    fn new(layout: &Layout, rows: &[EventRow<'a>]) -> Slots<'a> {
        let columns = layout.columns.len();
        let mut by_name: [HashMap<&str, usize>; 2] = Default::default();
        for (i, c) in layout.columns.iter().enumerate() {
            by_name[usize::from(c.scope == PropertyScope::Item)].insert(c.name.as_str(), i);
        }
        let n = rows.len();
        let mut items_of = Vec::with_capacity(n + 1);
        items_of.push(0);
        for row in rows {
            items_of.push(items_of[items_of.len() - 1] + row.event.items.len());
        }
        let n_items = items_of[n];
        let mut slots = Slots {
            rows: n,
            events: vec![None; n * columns],
            items: vec![None; n_items * columns],
            items_of,
        };
        for (r, row) in rows.iter().enumerate() {
            for (name, value) in &row.event.properties {
                // A name without a column cannot be here: properties are
                // checked against the taxonomy, and every taxonomy name has one.
                if let Some(&c) = by_name[0].get(name.as_str()) {
                    slots.events[c * n + r] = Some(value);
                }
            }
            for (i, item) in (slots.items_of[r]..).zip(&row.event.items) {
                for (name, value) in item {
                    if let Some(&c) = by_name[1].get(name.as_str()) {
                        slots.items[c * n_items + i] = Some(value);
                    }
                }
            }
        }
        slots
    }

    /// Column `c`'s event property in every row.
    fn events(&self, c: usize) -> &[Option<&'a Value>] {
        &self.events[c * self.rows..(c + 1) * self.rows]
    }

    /// Column `c`'s item property of every item.
    fn items(&self, c: usize) -> &[Option<&'a Value>] {
        let n = self.items_of[self.rows];
        &self.items[c * n..(c + 1) * n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duckdb::schema::{add_column, create_event_table, events_table, PropertyColumn};
    use fineport_contract::{ServiceId, Uuid};

    fn column(n: usize, scope: PropertyScope, name: &str, ty: PropertyType) -> PropertyColumn {
        PropertyColumn {
            col: format!("p{n}"),
            scope,
            name: name.into(),
            ty,
        }
    }

    /// The property `name` of event `i`: every type, present on some rows
    /// only, so that each 2,048-row chunk has values and nulls in new places.
    fn value(i: usize, name: &str) -> Option<Value> {
        let x = i as i64;
        Some(match name {
            "s" if !i.is_multiple_of(3) => Value::String(format!("v{i}, \"q\" 한")),
            "l" if i % 4 != 1 => Value::Long(x * 7 - 3),
            "d" if i % 5 != 2 => Value::Double(x as f64 / 8.0),
            "b" if i.is_multiple_of(2) => Value::Boolean(i.is_multiple_of(4)),
            "t" if !i.is_multiple_of(6) => Value::Datetime(1_764_000_000_000 + x),
            "day" if !i.is_multiple_of(7) => Value::Date(20_000 + i as i32),
            "sa" if i % 3 == 1 => Value::StringArray((0..i % 4).map(|k| format!("{i}.{k}")).collect()),
            "la" if i.is_multiple_of(5) => Value::LongArray(vec![x, -x]),
            "da" if i % 9 == 4 => Value::DoubleArray(vec![0.5, x as f64]),
            "color" if i % 2 == 1 => Value::String(format!("c{i}")),
            "sizes" if i % 3 != 2 => Value::StringArray(vec![format!("S{i}"); i % 3]),
            _ => return None,
        })
    }

    const EVENT: [(&str, PropertyType); 9] = [
        ("s", PropertyType::String),
        ("l", PropertyType::Long),
        ("d", PropertyType::Double),
        ("b", PropertyType::Boolean),
        ("t", PropertyType::Datetime),
        ("day", PropertyType::Date),
        ("sa", PropertyType::StringArray),
        ("la", PropertyType::LongArray),
        ("da", PropertyType::DoubleArray),
    ];
    const ITEM: [(&str, PropertyType); 2] = [("color", PropertyType::String), ("sizes", PropertyType::StringArray)];

    /// Event `i`: its properties, and `i % 4` items (none for a quarter).
    fn event(i: usize) -> EventInput {
        let props = |names: &[(&str, PropertyType)], at: usize| {
            names
                .iter()
                .filter_map(|(name, _)| Some(((*name).to_owned(), value(at, name)?)))
                .collect()
        };
        EventInput {
            event_log_id: Uuid::from_u128(i as u128 + 1),
            event_name: "df_login".into(),
            event_datetime_ms: 1_764_000_000_000 + i as i64,
            properties: props(&EVENT, i),
            items: (0..i % 4).map(|k| props(&ITEM, i + k)).collect(),
        }
    }

    /// What a cell of event `i` reads as through `CAST(… AS VARCHAR)`.
    fn expected(i: usize, name: &str) -> Option<String> {
        let v = value(i, name)?;
        Some(match v {
            Value::String(s) => s,
            Value::Long(x) => x.to_string(),
            Value::Double(x) => format!("{x:?}"),
            Value::Boolean(x) => x.to_string(),
            // DuckDB leaves out a zero fraction and trailing zeros.
            Value::Datetime(ms) => {
                let t = chrono::DateTime::from_timestamp_millis(ms)?.naive_utc();
                let fraction = format!("{:03}", ms.rem_euclid(1000));
                let fraction = fraction.trim_end_matches('0');
                let point = if fraction.is_empty() { "" } else { "." };
                format!("{}{point}{fraction}", t.format("%Y-%m-%d %H:%M:%S"))
            }
            Value::Date(d) => (chrono::NaiveDate::from_ymd_opt(1970, 1, 1)? + chrono::Days::new(d as u64)).to_string(),
            Value::StringArray(xs) => format!("[{}]", xs.join(", ")),
            Value::LongArray(xs) => format!("{xs:?}"),
            Value::DoubleArray(xs) => format!("{xs:?}"),
        })
    }

    #[test]
    fn a_move_across_chunks_keeps_every_value_and_null_in_its_row() {
        let conn = Connection::open_in_memory().unwrap();
        let service = ServiceId::parse("s").unwrap();
        create_event_table(&conn, &service).unwrap();
        let mut layout = Layout::default();
        let columns = EVENT
            .iter()
            .map(|&(n, ty)| (PropertyScope::Event, n, ty))
            .chain(ITEM.iter().map(|&(n, ty)| (PropertyScope::Item, n, ty)));
        for (k, (scope, name, ty)) in columns.enumerate() {
            let c = column(k + 1, scope, name, ty);
            add_column(&conn, &service, &c).unwrap();
            layout.push(c);
        }
        register(&conn).unwrap();
        // Three chunks and a bit, so that nulls and values move between
        // the rows a reused chunk held before.
        let n = 2 * CHUNK_ROWS + CHUNK_ROWS / 2 + 7;
        let events: Vec<EventInput> = (0..n).map(event).collect();
        let rows: Vec<EventRow<'_>> = events
            .iter()
            .map(|event| EventRow {
                event,
                unified_id: "u",
                server_ms: 5,
                correction_ms: event.event_datetime_ms,
            })
            .collect();
        insert(&conn, &events_table(&service), &layout, &rows).unwrap();

        let cols: Vec<String> = layout
            .columns
            .iter()
            .map(|c| format!("CAST({} AS VARCHAR)", c.col))
            .collect();
        let sql = format!(
            "SELECT event_log_id, server_ts::VARCHAR, {} FROM {} ORDER BY event_ts",
            cols.join(", "),
            events_table(&service)
        );
        let mut stmt = conn.prepare(&sql).unwrap();
        let mut got = stmt.query([]).unwrap();
        let mut i = 0;
        while let Some(row) = got.next().unwrap() {
            let id: String = row.get(0).unwrap();
            assert_eq!(id, Uuid::from_u128(i as u128 + 1).to_string());
            assert_eq!(row.get::<_, String>(1).unwrap(), "1970-01-01 00:00:00.005");
            for (k, (name, _)) in EVENT.iter().enumerate() {
                let cell: Option<String> = row.get(2 + k).unwrap();
                assert_eq!(cell, expected(i, name), "event {i}, {name}");
            }
            // An item column: a list with an element per item (null where the
            // item lacks it), or null without items.
            for (k, (name, _)) in ITEM.iter().enumerate() {
                let cell: Option<String> = row.get(2 + EVENT.len() + k).unwrap();
                let want = (i % 4 > 0).then(|| {
                    let parts: Vec<String> = (0..i % 4)
                        .map(|j| expected(i + j, name).unwrap_or_else(|| "NULL".into()))
                        .collect();
                    format!("[{}]", parts.join(", "))
                });
                assert_eq!(cell, want, "event {i}, item {name}");
            }
            i += 1;
        }
        assert_eq!(i, n);
        assert!(MOVES.lock().unwrap().is_empty(), "the move's entry is gone");
    }
}
