//! The DuckDB schema: metadata tables, two event tables per service, and
//! the [`Layout`] that maps taxonomy names to the event tables' columns.
//!
//! Each service has two event tables of the same columns:
//! `events_<service_id>` and `late_events_<service_id>`: eight system
//! columns, then one typed column per registered event property (`p<n>`)
//! and one list column per item property (`p<n>`, a list with one element
//! per item). Columns are named by number, never by property name, so
//! request-supplied names never reach SQL text and names that differ only
//! in case stay distinct. Rows are appended in arrival order, which is
//! close to time order, so DuckDB's per-row-group min/max on
//! `correction_ts` skips most of the table for a one-day query; an event
//! whose correction time is more than [`LATE_MS`] older than the newest in
//! the main table (one that arrived late) goes to the late table instead, so that they do not widen the main
//! table's row groups to the hours and days they belong to (every query of
//! such an hour would decode each vector holding one of them:
//! docs/benchmarks.md, item 17). Readers that want every event read both
//! ([`all_events`]). The tables have no index (one would block `ALTER
//! TABLE … ADD COLUMN`): idempotency by `event_log_id` is kept in the
//! writer's memory (see `event_ids`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use duckdb::core::{LogicalTypeHandle, LogicalTypeId};
use duckdb::Connection;
use fineport_contract::taxonomy::PropertyScope;
use fineport_contract::types::PropertyType;
use fineport_contract::ServiceId;

use crate::StoreError;

pub(crate) const META_DDL: &str = "
CREATE TABLE IF NOT EXISTS settings (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS services (service_id VARCHAR PRIMARY KEY, doc VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id VARCHAR PRIMARY KEY, service_id VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    hash VARCHAR NOT NULL, created_ms BIGINT NOT NULL, by_reissue BOOLEAN NOT NULL,
    valid_until_ms BIGINT, revoked BOOLEAN NOT NULL);
ALTER TABLE tokens ADD COLUMN IF NOT EXISTS reason VARCHAR;
CREATE TABLE IF NOT EXISTS taxonomy_events (service_id VARCHAR NOT NULL, name VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS taxonomy_properties (
    service_id VARCHAR NOT NULL, scope VARCHAR NOT NULL, name VARCHAR NOT NULL,
    type VARCHAR NOT NULL, col VARCHAR);
CREATE TABLE IF NOT EXISTS profiles (
    service_id VARCHAR NOT NULL, unified_id VARCHAR NOT NULL, external_id VARCHAR, created_ms BIGINT NOT NULL,
    PRIMARY KEY (service_id, unified_id));
CREATE TABLE IF NOT EXISTS identifiers (
    service_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, value VARCHAR NOT NULL, unified_id VARCHAR NOT NULL,
    PRIMARY KEY (service_id, kind, value));
CREATE TABLE IF NOT EXISTS user_properties (
    service_id VARCHAR NOT NULL, unified_id VARCHAR NOT NULL, name VARCHAR NOT NULL, value VARCHAR NOT NULL,
    updated_ms BIGINT NOT NULL, PRIMARY KEY (service_id, unified_id, name));
CREATE TABLE IF NOT EXISTS audiences (
    service_id VARCHAR NOT NULL, audience_id VARCHAR NOT NULL, doc VARCHAR NOT NULL,
    PRIMARY KEY (service_id, audience_id));
CREATE TABLE IF NOT EXISTS request_log (
    time_ms BIGINT NOT NULL, service_id VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, status INTEGER NOT NULL,
    message VARCHAR NOT NULL, ip VARCHAR NOT NULL, user_agent VARCHAR NOT NULL, token_id VARCHAR,
    rows BIGINT, bytes BIGINT, duration_ms BIGINT NOT NULL);
";

/// The system columns of every event table, in table order.
pub(crate) const SYSTEM_COLUMNS: [(&str, SysType); 8] = [
    ("correction_ts", SysType::Timestamp),
    ("event_log_id", SysType::Text),
    ("event_name", SysType::Text),
    ("unified_id", SysType::Text),
    ("api_version", SysType::Text),
    ("server_ts", SysType::Timestamp),
    ("event_ts", SysType::Timestamp),
    ("platform", SysType::Text),
];

#[derive(Debug, Clone, Copy)]
pub(crate) enum SysType {
    Text,
    Timestamp,
}

impl SysType {
    pub fn scalar(self) -> Scalar {
        match self {
            SysType::Text => Scalar::Varchar,
            SysType::Timestamp => Scalar::Timestamp,
        }
    }
}

/// The DuckDB types of event-table values, named here once for both ways
/// fineport states a column's type: SQL text for `CREATE`/`ALTER TABLE`,
/// and DuckDB's type handles for the table function that inserts moves
/// (`move_rows.rs`), whose result columns must match the table's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar {
    Varchar,
    Bigint,
    Double,
    Boolean,
    Timestamp,
    Date,
}

impl Scalar {
    pub fn sql(self) -> &'static str {
        match self {
            Scalar::Varchar => "VARCHAR",
            Scalar::Bigint => "BIGINT",
            Scalar::Double => "DOUBLE",
            Scalar::Boolean => "BOOLEAN",
            Scalar::Timestamp => "TIMESTAMP",
            Scalar::Date => "DATE",
        }
    }

    pub fn handle(self) -> LogicalTypeHandle {
        LogicalTypeHandle::from(match self {
            Scalar::Varchar => LogicalTypeId::Varchar,
            Scalar::Bigint => LogicalTypeId::Bigint,
            Scalar::Double => LogicalTypeId::Double,
            Scalar::Boolean => LogicalTypeId::Boolean,
            Scalar::Timestamp => LogicalTypeId::Timestamp,
            Scalar::Date => LogicalTypeId::Date,
        })
    }
}

/// A property column's DuckDB type: a [`Scalar`] inside `lists` levels of
/// list (an array type is one, an item property adds one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredType {
    scalar: Scalar,
    lists: usize,
}

impl StoredType {
    pub fn of(column: &PropertyColumn) -> StoredType {
        let (scalar, lists) = match column.ty {
            PropertyType::String | PropertyType::Items => (Scalar::Varchar, 0),
            PropertyType::Long => (Scalar::Bigint, 0),
            PropertyType::Double => (Scalar::Double, 0),
            PropertyType::Boolean => (Scalar::Boolean, 0),
            PropertyType::Datetime => (Scalar::Timestamp, 0),
            PropertyType::Date => (Scalar::Date, 0),
            PropertyType::StringArray => (Scalar::Varchar, 1),
            PropertyType::LongArray => (Scalar::Bigint, 1),
            PropertyType::DoubleArray => (Scalar::Double, 1),
        };
        let item = usize::from(column.scope == PropertyScope::Item);
        StoredType {
            scalar,
            lists: lists + item,
        }
    }

    /// As SQL, e.g. `BIGINT[][]`.
    pub fn sql(self) -> String {
        format!("{}{}", self.scalar.sql(), "[]".repeat(self.lists))
    }

    pub fn handle(self) -> LogicalTypeHandle {
        (0..self.lists).fold(self.scalar.handle(), |ty, _| LogicalTypeHandle::list(&ty))
    }
}

/// How far behind the newest stored event of its service an event may be
/// and still go to the main table: 1 hour, in milliseconds.
pub(crate) const LATE_MS: i64 = 3_600_000;

/// The main event table of a service, quoted.
pub(crate) fn events_table(service_id: &ServiceId) -> String {
    format!("\"events_{service_id}\"")
}

/// The late-event table of a service, quoted (see the module doc). No
/// service's main table can have this name: theirs begin with `events_`.
pub(crate) fn late_events_table(service_id: &ServiceId) -> String {
    format!("\"late_events_{service_id}\"")
}

/// Both event tables of a service as one relation, in SQL text:
/// `(SELECT * FROM main UNION ALL SELECT * FROM late)`: every event the
/// service holds, for SQL on the file (the bench's reference COPY too).
pub fn all_events(service_id: &ServiceId) -> String {
    format!(
        "(SELECT * FROM {} UNION ALL SELECT * FROM {})",
        events_table(service_id),
        late_events_table(service_id)
    )
}

/// One property column of an event table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PropertyColumn {
    pub col: String,
    pub scope: PropertyScope,
    pub name: String,
    pub ty: PropertyType,
}

/// The property columns of one service's event table, in table order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    pub columns: Vec<PropertyColumn>,
    pub index: HashMap<(PropertyScope, String), usize>,
}

impl Layout {
    pub fn push(&mut self, column: PropertyColumn) {
        self.index
            .insert((column.scope, column.name.clone()), self.columns.len());
        self.columns.push(column);
    }

    pub fn column(&self, scope: PropertyScope, name: &str) -> Option<&PropertyColumn> {
        self.index.get(&(scope, name.to_owned())).map(|&i| &self.columns[i])
    }

    /// The column name for the next property added to this table.
    pub fn next_column_name(&self) -> String {
        format!("p{}", self.columns.len() + 1)
    }
}

pub(crate) type Layouts = Arc<std::sync::RwLock<HashMap<String, Arc<Layout>>>>;

/// Creates a service's two event tables.
pub(crate) fn create_event_table(conn: &Connection, service_id: &ServiceId) -> Result<(), StoreError> {
    for table in [events_table(service_id), late_events_table(service_id)] {
        create_system_columns(conn, &table)?;
    }
    Ok(())
}

fn create_system_columns(conn: &Connection, table: &str) -> Result<(), StoreError> {
    let system: Vec<String> = SYSTEM_COLUMNS
        .iter()
        .map(|(name, ty)| format!("{name} {} NOT NULL", ty.scalar().sql()))
        .collect();
    conn.execute_batch(&format!("CREATE TABLE {table} ({})", system.join(", ")))?;
    Ok(())
}

/// Adds one property column to both of a service's event tables.
pub(crate) fn add_column(conn: &Connection, service_id: &ServiceId, column: &PropertyColumn) -> Result<(), StoreError> {
    for table in [events_table(service_id), late_events_table(service_id)] {
        add_column_to(conn, &table, column)?;
    }
    Ok(())
}

fn add_column_to(conn: &Connection, table: &str, column: &PropertyColumn) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "ALTER TABLE {table} ADD COLUMN {} {}",
        column.col,
        StoredType::of(column).sql()
    ))?;
    Ok(())
}

/// Creates the late-event table of each service in `services` that has
/// none (a file written before late events had a table of their own), with
/// its main table's columns in the same order; `layouts` holds each
/// service's property columns. The late events such a file already holds
/// stay where they are.
pub(crate) fn add_missing_late_tables(
    conn: &Connection,
    services: &[ServiceId],
    layouts: &HashMap<String, Arc<Layout>>,
) -> Result<(), StoreError> {
    let tables: HashSet<String> = {
        let mut stmt = conn.prepare("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        names.collect::<Result<_, _>>()?
    };
    for service_id in services {
        let table = late_events_table(service_id);
        if tables.contains(table.trim_matches('"')) {
            continue;
        }
        // All or nothing: a table left without some of its columns would
        // refuse every move into it.
        conn.execute_batch("BEGIN TRANSACTION")?;
        let created = create_system_columns(conn, &table).and_then(|()| {
            layouts.get(service_id.as_str()).map_or(Ok(()), |layout| {
                layout.columns.iter().try_for_each(|c| add_column_to(conn, &table, c))
            })
        });
        match created {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        tracing::info!(%service_id, "added the late-event table a file from an earlier version lacks");
    }
    Ok(())
}

/// Reads every service's layout from the taxonomy tables.
pub(crate) fn load_layouts(conn: &Connection) -> Result<HashMap<String, Arc<Layout>>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT service_id, scope, name, type, col FROM taxonomy_properties \
         WHERE col IS NOT NULL ORDER BY service_id, CAST(substr(col, 2) AS INTEGER)",
    )?;
    let mut layouts: HashMap<String, Layout> = HashMap::new();
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        let (service_id, scope, name, ty, col) = row?;
        let scope = parse_scope(&scope)?;
        let ty = PropertyType::parse(&ty).ok_or_else(|| StoreError::internal(format!("unknown stored type {ty:?}")))?;
        layouts
            .entry(service_id)
            .or_default()
            .push(PropertyColumn { col, scope, name, ty });
    }
    Ok(layouts.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

pub(crate) use crate::records::parse_scope;
