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
    // Columns are independent: a large batch builds half of them on a
    // second thread, so the writer thread spends half as long here.
    let (first, second) = layout.columns.split_at(layout.columns.len() / 2);
    let (first, second) = if n >= PARALLEL_ROWS {
        std::thread::scope(|scope| {
            let other = scope.spawn(|| property_columns(second, rows));
            let first = property_columns(first, rows);
            let second = other
                .join()
                .unwrap_or_else(|_| Err(StoreError::internal("building a batch panicked")));
            (first, second)
        })
    } else {
        (property_columns(first, rows), property_columns(second, rows))
    };
    for (field, array) in first?.into_iter().chain(second?) {
        fields.push(field);
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| StoreError::internal(e.to_string()))
}

/// Rows from which building a batch is split across two threads.
const PARALLEL_ROWS: usize = 4096;

/// The fields and arrays of `columns` for `rows`.
fn property_columns(columns: &[PropertyColumn], rows: &[EventRow<'_>]) -> Result<Vec<(Field, ArrayRef)>, StoreError> {
    columns
        .iter()
        .map(|column| {
            let data_type = column.arrow_type();
            let mut builder = make_builder(&data_type, rows.len());
            for r in rows {
                match column.scope {
                    PropertyScope::Item if r.event.items.is_empty() => list(&mut builder)?.append(false),
                    PropertyScope::Item => {
                        let lb = list(&mut builder)?;
                        for item in &r.event.items {
                            append_value(lb.values().as_mut(), column.ty, item.get(&column.name))?;
                        }
                        lb.append(true);
                    }
                    _ => append_value(builder.as_mut(), column.ty, r.event.properties.get(&column.name))?,
                }
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

/// Appends one value (or a null) of type `ty` to a builder made for `ty`.
fn append_value(b: &mut dyn ArrayBuilder, ty: PropertyType, v: Option<&Value>) -> Result<(), StoreError> {
    macro_rules! scalar {
        ($builder:ty, $variant:ident, $conv:expr) => {{
            let b = downcast::<$builder>(b)?;
            match v {
                Some(Value::$variant(x)) => b.append_value($conv(x)),
                _ => b.append_null(),
            }
        }};
    }
    macro_rules! array {
        ($inner:ty, $variant:ident, $conv:expr) => {{
            let lb = downcast::<DynList>(b)?;
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
        PropertyType::Items => downcast::<StringBuilder>(b)?.append_null(),
    }
    Ok(())
}
