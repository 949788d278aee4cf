//! A second reference beside DuckDB's COPY on the default run: current
//! ClickHouse's own CSV writer through chdb (embedded ClickHouse for
//! Python, `pip install chdb`), where a python that can `import chdb` is
//! found (`--chdb-python`, `FINEPORT_BENCH_CHDB_PYTHON`, else `python3` on
//! PATH); without one the bench says so and goes on.
//!
//! After DuckDB's COPY runs, DuckDB writes the event table's columns that
//! fineport's headers name to a CSV file in ClickHouse's text forms
//! (untimed; this DuckDB build has no Parquet writer), and [`structure`]
//! gives ClickHouse each column's type from DuckDB's. One python process
//! ([`SCRIPT`]) loads that file into a session table `ENGINE = Memory`
//! (untimed: the data is in memory, as issue 16 measured), then times
//! `SELECT <columns> FROM t WHERE <same range> [AND event_name IN …]
//! [ORDER BY df_correction_datetime, df_event_log_id] INTO OUTFILE '<file>'
//! TRUNCATE FORMAT CSVWithNames` for each case, `--runs` times, and prints
//! a JSON line a run with its seconds, bytes and rows.
//!
//! ClickHouse writes its own spellings (`2025-09-15 10:00:00.123000` for a
//! timestamp, `['a','b']` for a list, every string quoted), so the bytes
//! differ a little; the rows, columns and order do not.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::native::{system_csv_name, NativeRun, Query, SourceColumn};

/// The python side, run with `python -c`.
pub const SCRIPT: &str = include_str!("chdb_select.py");

/// Whether `python` can import chdb.
fn imports_chdb(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import chdb"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The python to run chdb with: `explicit` (which must import chdb: asked
/// for, it is an error if it cannot), else `python3` on PATH if it imports
/// chdb, else none.
pub fn find_python(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(python) = explicit {
        if !imports_chdb(python) {
            bail!(
                "--chdb-python {}: it cannot `import chdb` (pip install chdb)",
                python.display()
            );
        }
        return Ok(Some(python.to_path_buf()));
    }
    let python3 = PathBuf::from("python3");
    Ok(imports_chdb(&python3).then_some(python3))
}

/// A ClickHouse identifier, back-quoted.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A ClickHouse string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// For each source column: the DuckDB expression that writes it as
/// ClickHouse reads it from CSV (scalars as DuckDB spells them; lists as
/// ClickHouse array literals, `['a\'b',NULL]`), and its `name Type` for
/// ClickHouse's load.
pub fn structure(columns: &[SourceColumn]) -> anyhow::Result<Vec<(String, String)>> {
    columns
        .iter()
        .map(|c| {
            let name = format!("\"{}\"", c.name.replace('"', "\"\""));
            let (select, ty) = match c.duckdb_type.strip_suffix("[]") {
                Some(element) => {
                    let (text, ty) = list_text(&c.col, element, 1)?;
                    (format!("coalesce({text}, '[]') AS {name}"), ty)
                }
                None => {
                    let ty = scalar_type(&c.duckdb_type)?;
                    let ty = if c.nullable {
                        format!("Nullable({ty})")
                    } else {
                        ty.to_owned()
                    };
                    (format!("{} AS {name}", c.col), ty)
                }
            };
            Ok((select, format!("{} {ty}", ident(&c.name))))
        })
        .collect()
}

/// ClickHouse's type for a DuckDB scalar type.
fn scalar_type(duckdb: &str) -> anyhow::Result<&'static str> {
    Ok(match duckdb {
        "VARCHAR" => "String",
        "BIGINT" => "Int64",
        "INTEGER" => "Int32",
        "DOUBLE" => "Float64",
        "BOOLEAN" => "Bool",
        "TIMESTAMP" => "DateTime64(6, 'UTC')",
        "DATE" => "Date32",
        other => bail!("no ClickHouse type for DuckDB's {other}"),
    })
}

/// A DuckDB expression spelling the list `expr` of `element`s as a
/// ClickHouse array literal, and the array's ClickHouse type; `depth`
/// names the lambda's variable.
fn list_text(expr: &str, element: &str, depth: usize) -> anyhow::Result<(String, String)> {
    let x = format!("x{depth}");
    let (item, ty) = match element.strip_suffix("[]") {
        Some(inner) => {
            let (text, ty) = list_text(&x, inner, depth + 1)?;
            (format!("coalesce({text}, '[]')"), ty)
        }
        None => {
            let ty = scalar_type(element)?;
            let text = match element {
                // DuckDB's literals take no backslash escapes: '\' is one.
                "VARCHAR" => format!(r"'''' || replace(replace({x}, '\', '\\'), '''', '\''') || ''''"),
                "TIMESTAMP" | "DATE" => format!("'''' || CAST({x} AS VARCHAR) || ''''"),
                _ => format!("CAST({x} AS VARCHAR)"),
            };
            (format!("coalesce({text}, 'NULL')"), format!("Nullable({ty})"))
        }
    };
    Ok((
        format!("'[' || array_to_string(list_transform({expr}, lambda {x}: {item}), ',') || ']'"),
        format!("Array({ty})"),
    ))
}

/// The statement that loads DuckDB's CSV file into the session table `t`.
pub fn load_sql(csv: &Path, structure: &[(String, String)]) -> String {
    let columns: Vec<&str> = structure.iter().map(|(_, c)| c.as_str()).collect();
    format!(
        "CREATE TABLE t ENGINE = Memory AS SELECT * FROM file({}, CSVWithNames, {})",
        literal(&csv.display().to_string()),
        literal(&columns.join(", "))
    )
}

/// The timed statement of one case: ClickHouse writes the CSV to `out`.
pub fn select_sql(q: &Query<'_>, out: &Path) -> anyhow::Result<String> {
    let csv = |col| system_csv_name(col).with_context(|| format!("no CSV name for {col}"));
    let (ts, id, event) = (
        ident(csv("correction_ts")?),
        ident(csv("event_log_id")?),
        ident(csv("event_name")?),
    );
    let select: Vec<String> = q.header.split(',').map(ident).collect();
    let filter = q.events.map_or(String::new(), |names| {
        let list: Vec<String> = names.iter().map(|n| literal(n)).collect();
        format!(" AND {event} IN ({})", list.join(", "))
    });
    let order = if q.ordered {
        format!(" ORDER BY {ts}, {id}")
    } else {
        String::new()
    };
    let day = |d: &str| format!("toDateTime64({}, 6, 'UTC')", literal(&format!("{d} 00:00:00")));
    Ok(format!(
        "SELECT {} FROM t WHERE {ts} >= {} AND {ts} < {}{filter}{order} \
         INTO OUTFILE {} TRUNCATE FORMAT CSVWithNames",
        select.join(", "),
        day(q.from_day),
        day(q.until_day),
        literal(&out.display().to_string())
    ))
}

/// One line of the script's output.
#[derive(Debug, PartialEq)]
pub enum Line {
    Version {
        clickhouse: String,
        chdb: String,
    },
    Loaded {
        rows: u64,
    },
    Run {
        query: usize,
        seconds: f64,
        bytes: u64,
        rows: u64,
    },
}

pub fn parse_line(line: &str) -> anyhow::Result<Line> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("chdb printed {line:?}"))?;
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let u64_of = |k: &str| v.get(k).and_then(Value::as_u64);
    if let Some(clickhouse) = str_of("version") {
        let chdb = str_of("chdb").unwrap_or_default();
        return Ok(Line::Version { clickhouse, chdb });
    }
    if let Some(rows) = u64_of("loaded_rows") {
        return Ok(Line::Loaded { rows });
    }
    match (
        u64_of("query"),
        v.get("seconds").and_then(Value::as_f64),
        u64_of("bytes"),
        u64_of("rows"),
    ) {
        (Some(query), Some(seconds), Some(bytes), Some(rows)) if seconds >= 0.0 => Ok(Line::Run {
            query: usize::try_from(query)?,
            seconds,
            bytes,
            rows,
        }),
        _ => bail!("chdb printed an unexpected line: {line}"),
    }
}

/// One timed query and the rows it must write.
pub struct Job<'a> {
    pub label: &'a str,
    pub query: Query<'a>,
    pub rows: u64,
}

/// What the chdb reference measured: the best run of each job, in order.
pub struct ChdbRuns {
    /// ClickHouse's `SELECT version()` and the chdb package's version.
    pub clickhouse: String,
    pub chdb: String,
    pub best: Vec<NativeRun>,
}

/// Runs the script once for every job, `runs` times each; fails when a run
/// writes other than the job's rows, or the script fails.
pub fn run(python: &Path, load: String, dir: &Path, jobs: &[Job<'_>], runs: usize) -> anyhow::Result<ChdbRuns> {
    let out = dir.join("chdb.csv");
    let queries = jobs
        .iter()
        .map(|j| select_sql(&j.query, &out))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let input = json!({
        "load": load,
        "queries": queries,
        "runs": runs.max(1),
        "out": out.display().to_string(),
    });
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .current_dir(dir)
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    {
        let mut stdin = child.stdin.take().context("the python's stdin")?;
        stdin.write_all(input.to_string().as_bytes())?;
    }
    let stdout = child.stdout.take().context("the python's stdout")?;
    let mut version = None;
    let mut best: Vec<Option<NativeRun>> = jobs.iter().map(|_| None).collect();
    for line in BufReader::new(stdout).lines() {
        match parse_line(&line?)? {
            Line::Version { clickhouse, chdb } => {
                eprintln!("chdb {chdb} (ClickHouse {clickhouse}): loading DuckDB's file…");
                version = Some((clickhouse, chdb));
            }
            Line::Loaded { rows } => eprintln!("chdb: {rows} rows in memory; timing the SELECTs…"),
            Line::Run {
                query,
                seconds,
                bytes,
                rows,
            } => {
                let job = jobs.get(query).context("chdb answered an unknown query")?;
                if rows != job.rows {
                    bail!("chdb, {}: {rows} rows written, {} expected", job.label, job.rows);
                }
                let run = NativeRun {
                    bytes,
                    total: Duration::from_secs_f64(seconds),
                };
                let slot = &mut best[query];
                if slot.as_ref().is_none_or(|b| run.total < b.total) {
                    *slot = Some(run);
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the chdb script failed ({status}); its error is above");
    }
    let (clickhouse, chdb) = version.context("chdb printed no version")?;
    let best = jobs
        .iter()
        .zip(best)
        .map(|(j, b)| b.with_context(|| format!("chdb ran no {}", j.label)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ChdbRuns { clickhouse, chdb, best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_orders_and_filters_like_fineport() {
        let q = Query {
            header: "df_unified_id,event_name,df_correction_datetime,df_event_log_id,price",
            from_day: "2025-09-01",
            until_day: "2025-10-01",
            events: Some(&["df_purchase", "it's"]),
            ordered: true,
        };
        let sql = select_sql(&q, Path::new("/tmp/x/chdb.csv")).unwrap();
        assert_eq!(
            sql,
            "SELECT `df_unified_id`, `event_name`, `df_correction_datetime`, `df_event_log_id`, `price` FROM t \
             WHERE `df_correction_datetime` >= toDateTime64('2025-09-01 00:00:00', 6, 'UTC') \
             AND `df_correction_datetime` < toDateTime64('2025-10-01 00:00:00', 6, 'UTC') \
             AND `event_name` IN ('df_purchase', 'it\\'s') \
             ORDER BY `df_correction_datetime`, `df_event_log_id` \
             INTO OUTFILE '/tmp/x/chdb.csv' TRUNCATE FORMAT CSVWithNames"
        );
        let unordered = select_sql(
            &Query {
                events: None,
                ordered: false,
                ..q
            },
            Path::new("/o.csv"),
        )
        .unwrap();
        assert!(!unordered.contains("ORDER BY"));
        assert!(!unordered.contains(" IN ("));
        assert!(
            unordered.ends_with("'2025-10-01 00:00:00', 6, 'UTC') INTO OUTFILE '/o.csv' TRUNCATE FORMAT CSVWithNames")
        );
    }

    fn column(name: &str, col: &str, duckdb_type: &str, nullable: bool) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            col: col.into(),
            duckdb_type: duckdb_type.into(),
            nullable,
        }
    }

    #[test]
    fn structure_maps_duckdb_types_and_spells_lists_for_clickhouse() {
        let s = structure(&[
            column("df_correction_datetime", "correction_ts", "TIMESTAMP", false),
            column("price", "p3", "DOUBLE", true),
            column("tags", "p4", "VARCHAR[]", true),
            column("df_items_sizes", "p5", "BIGINT[][]", true),
        ])
        .unwrap();
        let types: Vec<&str> = s.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "`df_correction_datetime` DateTime64(6, 'UTC')",
                "`price` Nullable(Float64)",
                "`tags` Array(Nullable(String))",
                "`df_items_sizes` Array(Array(Nullable(Int64)))",
            ]
        );
        assert_eq!(s[0].0, r#"correction_ts AS "df_correction_datetime""#);
        assert_eq!(
            s[2].0,
            r#"coalesce('[' || array_to_string(list_transform(p4, lambda x1: coalesce('''' || replace(replace(x1, '\', '\\'), '''', '\''') || '''', 'NULL')), ',') || ']', '[]') AS "tags""#
        );
        assert!(s[3].0.contains(
            "lambda x1: coalesce('[' || array_to_string(list_transform(x1, lambda x2: coalesce(CAST(x2 AS VARCHAR), 'NULL'))"
        ));
        assert!(structure(&[column("m", "p9", "MAP(VARCHAR, VARCHAR)", true)]).is_err());
        assert_eq!(
            load_sql(Path::new("/var/tmp/b/chdb.csv"), &s[..2]),
            r"CREATE TABLE t ENGINE = Memory AS SELECT * FROM file('/var/tmp/b/chdb.csv', CSVWithNames, '`df_correction_datetime` DateTime64(6, \'UTC\'), `price` Nullable(Float64)')"
        );
    }

    /// DuckDB spells a list of awkward strings as ClickHouse reads it.
    #[test]
    fn duckdb_writes_clickhouse_array_literals() {
        let conn = duckdb::Connection::open_in_memory().unwrap();
        conn.execute_batch(r#"CREATE TABLE e (p4 VARCHAR[]); INSERT INTO e VALUES (['a,b', 'c''d', 'e"f', 'g\h', NULL]), ([]), (NULL)"#)
            .unwrap();
        let s = structure(&[column("tags", "p4", "VARCHAR[]", true)]).unwrap();
        let mut stmt = conn.prepare(&format!("SELECT {} FROM e", s[0].0)).unwrap();
        let got: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, [r#"['a,b','c\'d','e"f','g\\h',NULL]"#, "[]", "[]"]);
    }

    #[test]
    fn parses_the_scripts_lines() {
        assert_eq!(
            parse_line(r#"{"version": "26.9.2.1", "chdb": "4.4.0"}"#).unwrap(),
            Line::Version {
                clickhouse: "26.9.2.1".into(),
                chdb: "4.4.0".into()
            }
        );
        assert_eq!(
            parse_line(r#"{"loaded_rows": 120}"#).unwrap(),
            Line::Loaded { rows: 120 }
        );
        assert_eq!(
            parse_line(r#"{"query": 2, "seconds": 0.25, "bytes": 1000, "rows": 7}"#).unwrap(),
            Line::Run {
                query: 2,
                seconds: 0.25,
                bytes: 1000,
                rows: 7
            }
        );
        assert!(parse_line(r#"{"query": 2, "seconds": 0.25}"#).is_err());
        assert!(parse_line(r#"{"query": 0, "seconds": -1.0, "bytes": 1, "rows": 1}"#).is_err());
        assert!(parse_line("Traceback (most recent call last):").is_err());
    }

    #[test]
    fn a_python_without_chdb_is_an_error_only_when_asked_for() {
        assert!(find_python(Some(Path::new("/nonexistent/python"))).is_err());
    }
}
