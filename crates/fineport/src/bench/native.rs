//! The reference: DuckDB's own CSV writer on the same file, the same rows
//! and the same columns as a fineport export, in this process after the
//! server has stopped (DuckDB lets one process open a file read-write):
//! `COPY (SELECT <columns> FROM <both event tables> WHERE <range> [AND
//! event_name IN …] [ORDER BY correction_ts, event_log_id]) TO '<file>'
//! (FORMAT CSV, HEADER)`, the service's main and late-event tables read as
//! one `UNION ALL` (DuckDB pushes the range into both).
//!
//! The columns are taken from the header fineport sent, mapped to the
//! table's columns through `taxonomy_properties`. DuckDB writes its own
//! spellings (`2025-09-15 10:00:00.123` for a timestamp, `[a, b]` for a
//! list), so the bytes differ a little; the rows, columns and order do not.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use duckdb::Connection;

use super::http::SERVICE_ID;

/// Every event of the bench's service: its main and its late-event table.
fn all_events() -> anyhow::Result<String> {
    Ok(fineport_store::duckdb::all_events(
        &fineport_contract::ServiceId::parse(SERVICE_ID)?,
    ))
}

/// The system columns: CSV name → table column.
const SYSTEM: [(&str, &str); 8] = [
    ("df_unified_id", "unified_id"),
    ("event_name", "event_name"),
    ("df_api_version", "api_version"),
    ("df_server_datetime", "server_ts"),
    ("df_correction_datetime", "correction_ts"),
    ("df_event_log_id", "event_log_id"),
    ("df_event_datetime", "event_ts"),
    ("df_platform", "platform"),
];

/// The CSV name of one of the table's system columns
/// (`correction_ts` → `df_correction_datetime`).
pub fn system_csv_name(col: &str) -> Option<&'static str> {
    SYSTEM.iter().find(|(_, c)| *c == col).map(|(n, _)| *n)
}

pub struct Native {
    conn: Connection,
    /// (scope, property name) → column.
    columns: HashMap<(String, String), String>,
}

/// What a native COPY is asked to write.
pub struct Query<'a> {
    pub header: &'a str,
    pub from_day: &'a str,
    /// The day after the last one.
    pub until_day: &'a str,
    pub events: Option<&'a [&'a str]>,
    pub ordered: bool,
}

/// A column of the event table behind a CSV column of fineport's header.
pub struct SourceColumn {
    /// The CSV column's name.
    pub name: String,
    /// The table's column and its DuckDB type (`VARCHAR`, `BIGINT[]`, …).
    pub col: String,
    pub duckdb_type: String,
    pub nullable: bool,
}

pub struct NativeRun {
    pub bytes: u64,
    pub total: Duration,
}

impl Native {
    pub fn open(db: &Path) -> anyhow::Result<Native> {
        let conn = Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
        let mut stmt =
            conn.prepare("SELECT scope, name, col FROM taxonomy_properties WHERE service_id = ? AND col IS NOT NULL")?;
        let rows = stmt.query_map([SERVICE_ID], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
        let columns = rows.collect::<Result<HashMap<_, _>, _>>()?;
        drop(stmt);
        Ok(Native { conn, columns })
    }

    /// DuckDB's threads on this connection (its default: the cores).
    pub fn threads(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT current_setting('threads')::BIGINT", [], |r| r.get(0))?)
    }

    /// The table column behind a CSV column of fineport's header: the one
    /// mapping from export header to DuckDB column, for the COPY and for
    /// the file chdb loads.
    fn source(&self, name: &str) -> anyhow::Result<&str> {
        if let Some((_, col)) = SYSTEM.iter().find(|(n, _)| *n == name) {
            return Ok(col);
        }
        let key = match name.strip_prefix("df_items_") {
            Some(item) => ("item".to_string(), item.to_string()),
            None => ("event".to_string(), name.to_string()),
        };
        match self.columns.get(&key) {
            Some(col) => Ok(col),
            None => bail!("no column for {name}"),
        }
    }

    /// The SELECT expression of a CSV column of fineport's header.
    fn column(&self, name: &str) -> anyhow::Result<String> {
        let col = self.source(name)?;
        if SYSTEM.iter().any(|(n, _)| *n == name) {
            return Ok(col.to_string());
        }
        Ok(format!("{col} AS \"{name}\""))
    }

    /// The table's columns behind the CSV columns any of `headers` names
    /// (first seen first), with their DuckDB types.
    pub fn source_columns(&self, headers: &[&str]) -> anyhow::Result<Vec<SourceColumn>> {
        let mut stmt = self.conn.prepare(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns WHERE table_name = ?",
        )?;
        let rows = stmt.query_map([format!("events_{SERVICE_ID}")], |r| {
            Ok((r.get::<_, String>(0)?, (r.get::<_, String>(1)?, r.get::<_, bool>(2)?)))
        })?;
        let types = rows.collect::<Result<HashMap<_, _>, _>>()?;
        let mut columns: Vec<SourceColumn> = Vec::new();
        for name in headers.iter().flat_map(|h| h.split(',')) {
            if columns.iter().any(|c| c.name == name) {
                continue;
            }
            let col = self.source(name)?;
            let (duckdb_type, nullable) = types.get(col).with_context(|| format!("no type for {col}"))?;
            columns.push(SourceColumn {
                name: name.to_owned(),
                col: col.to_owned(),
                duckdb_type: duckdb_type.clone(),
                nullable: *nullable,
            });
        }
        Ok(columns)
    }

    /// Writes `SELECT <select> FROM` every row of the event tables to a CSV
    /// file with a header, NULL as `\N`.
    pub fn copy_table(&self, select: &[String], out: &Path) -> anyhow::Result<()> {
        let sql = format!(
            "COPY (SELECT {} FROM {}) TO '{}' (FORMAT CSV, HEADER, NULLSTR '\\N')",
            select.join(", "),
            all_events()?,
            out.display()
        );
        self.conn
            .execute_batch(&sql)
            .with_context(|| format!("native COPY failed: {sql}"))
    }

    /// Runs one COPY to `out` and returns its size and time.
    pub fn copy(&self, q: &Query<'_>, out: &Path) -> anyhow::Result<NativeRun> {
        let select = q
            .header
            .split(',')
            .map(|name| self.column(name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let filter = q.events.map_or(String::new(), |names| {
            let list: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
            format!(" AND event_name IN ({})", list.join(", "))
        });
        let order = if q.ordered {
            " ORDER BY correction_ts, event_log_id"
        } else {
            ""
        };
        let sql = format!(
            "COPY (SELECT {} FROM {} WHERE correction_ts >= TIMESTAMP '{}' \
             AND correction_ts < TIMESTAMP '{}'{filter}{order}) TO '{}' (FORMAT CSV, HEADER)",
            select.join(", "),
            all_events()?,
            q.from_day,
            q.until_day,
            out.display()
        );
        let started = Instant::now();
        self.conn
            .execute_batch(&sql)
            .with_context(|| format!("native COPY failed: {sql}"))?;
        let total = started.elapsed();
        let bytes = std::fs::metadata(out)?.len();
        std::fs::remove_file(out).ok();
        Ok(NativeRun { bytes, total })
    }
}
