//! Builds the Arrow record batch that appends events to an event table.
//!
//! The batch has the table's exact column order and types (the appender
//! does not cast): the system columns, then every property column of the
//! [`Layout`], null where an event lacks the property. An item column holds,
//! for an event with items, a list with one element per item (null where
//! that item lacks the property); for an event without items, null.

use std::sync::Arc;

use duckdb::arrow::array::{
    make_builder, ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use duckdb::arrow::datatypes::{Field, Schema};
use duckdb::arrow::record_batch::RecordBatch;
use fineport_contract::import::{EventInput, API_VERSION, PLATFORM_HTTP_API};
use fineport_contract::taxonomy::PropertyScope;
use fineport_contract::types::{PropertyType, Value};
use foldhash::HashMap;

use super::schema::{Layout, PropertyColumn, SysType, SYSTEM_COLUMNS};
use crate::StoreError;

/// An event ready to append, with its system values resolved.
pub(crate) struct EventRow<'a> {
    pub event: &'a EventInput,
    pub unified_id: &'a str,
    pub server_ms: i64,
    pub correction_ms: i64,
}

pub(crate) fn build(layout: &Layout, rows: &[EventRow<'_>]) -> Result<RecordBatch, StoreError> {
    let n = rows.len();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (name, ty) in SYSTEM_COLUMNS {
        let array: ArrayRef = match (name, ty) {
            (_, SysType::Timestamp) => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(n);
                for r in rows {
                    b.append_value(
                        match name {
                            "correction_ts" => r.correction_ms,
                            "server_ts" => r.server_ms,
                            _ => r.event.event_datetime_ms,
                        } * 1000,
                    );
                }
                Arc::new(b.finish())
            }
            (_, SysType::Text) => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                let mut uuid = [0; 36];
                for r in rows {
                    b.append_value(match name {
                        "event_log_id" => r.event.event_log_id.hyphenated().encode_lower(&mut uuid),
                        "event_name" => r.event.event_name.as_str(),
                        "unified_id" => r.unified_id,
                        "api_version" => API_VERSION,
                        _ => PLATFORM_HTTP_API,
                    });
                }
                Arc::new(b.finish())
            }
        };
        fields.push(Field::new(name, array.data_type().clone(), false));
        arrays.push(array);
    }
    let slots = Slots::new(layout, rows);
    // Columns are independent: a large batch builds half of them on a
    // second thread, so the writer thread spends half as long here.
    let columns: Vec<(usize, &PropertyColumn)> = layout.columns.iter().enumerate().collect();
    let (first, second) = columns.split_at(columns.len() / 2);
    let (first, second) = if n >= PARALLEL_ROWS {
        std::thread::scope(|scope| {
            let other = scope.spawn(|| property_columns(second, &slots));
            let first = property_columns(first, &slots);
            let second = other
                .join()
                .unwrap_or_else(|_| Err(StoreError::internal("building a batch panicked")));
            (first, second)
        })
    } else {
        (property_columns(first, &slots), property_columns(second, &slots))
    };
    for (field, array) in first?.into_iter().chain(second?) {
        fields.push(field);
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| StoreError::internal(e.to_string()))
}

/// Rows from which building a batch is split across two threads.
const PARALLEL_ROWS: usize = 4096;

/// Every value of a batch placed by column: each event's properties (and
/// each item's) are looked up once, by name, in the layout, instead of
/// once per column of the table (a profile of heavy imports had those
/// `BTreeMap` searches at 8 % of the server's CPU). Column-major, so that
/// building a column reads its values in order.
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

/// The fields and arrays of `columns` (with their table positions).
fn property_columns(
    columns: &[(usize, &PropertyColumn)],
    slots: &Slots<'_>,
) -> Result<Vec<(Field, ArrayRef)>, StoreError> {
    columns
        .iter()
        .map(|&(c, column)| {
            let data_type = column.arrow_type();
            let mut builder = make_builder(&data_type, slots.rows);
            match column.scope {
                PropertyScope::Item => {
                    let values = slots.items(c);
                    let lb = list(&mut builder)?;
                    for r in 0..slots.rows {
                        let items = slots.items_of[r]..slots.items_of[r + 1];
                        if items.is_empty() {
                            lb.append(false);
                            continue;
                        }
                        append_values(lb.values().as_mut(), column.ty, &values[items])?;
                        lb.append(true);
                    }
                }
                _ => append_values(builder.as_mut(), column.ty, slots.events(c))?,
            }
            Ok((Field::new(&column.col, data_type, true), builder.finish()))
        })
        .collect()
}

type DynList = ListBuilder<Box<dyn ArrayBuilder>>;

fn list(b: &mut Box<dyn ArrayBuilder>) -> Result<&mut DynList, StoreError> {
    downcast(b.as_mut())
}

fn downcast<T: 'static>(b: &mut dyn ArrayBuilder) -> Result<&mut T, StoreError> {
    b.as_any_mut()
        .downcast_mut::<T>()
        .ok_or_else(|| StoreError::internal("arrow builder of an unexpected type"))
}

/// Appends `values` (a null for `None` or a value of another type) of type
/// `ty` to a builder made for `ty`; the builder is downcast once for all.
fn append_values(b: &mut dyn ArrayBuilder, ty: PropertyType, values: &[Option<&Value>]) -> Result<(), StoreError> {
    macro_rules! scalar {
        ($builder:ty, $variant:ident, $conv:expr) => {{
            let b = downcast::<$builder>(b)?;
            for v in values {
                match v {
                    Some(Value::$variant(x)) => b.append_value($conv(x)),
                    _ => b.append_null(),
                }
            }
        }};
    }
    macro_rules! array {
        ($inner:ty, $variant:ident, $conv:expr) => {{
            let lb = downcast::<DynList>(b)?;
            for v in values {
                match v {
                    Some(Value::$variant(xs)) => {
                        let inner = downcast::<$inner>(lb.values().as_mut())?;
                        for x in xs {
                            inner.append_value($conv(x));
                        }
                        lb.append(true);
                    }
                    _ => lb.append(false),
                }
            }
        }};
    }
    match ty {
        PropertyType::String => scalar!(StringBuilder, String, String::as_str),
        PropertyType::Long => scalar!(Int64Builder, Long, |x: &i64| *x),
        PropertyType::Double => scalar!(Float64Builder, Double, |x: &f64| *x),
        PropertyType::Boolean => scalar!(BooleanBuilder, Boolean, |x: &bool| *x),
        PropertyType::Datetime => scalar!(TimestampMicrosecondBuilder, Datetime, |x: &i64| *x * 1000),
        PropertyType::Date => scalar!(Date32Builder, Date, |x: &i32| *x),
        PropertyType::StringArray => array!(StringBuilder, StringArray, String::as_str),
        PropertyType::LongArray => array!(Int64Builder, LongArray, |x: &i64| *x),
        PropertyType::DoubleArray => array!(Float64Builder, DoubleArray, |x: &f64| *x),
        PropertyType::Items => {
            let b = downcast::<StringBuilder>(b)?;
            values.iter().for_each(|_| b.append_null());
        }
    }
    Ok(())
}
