//! `fineport bench`: fineport's export and import speed beside DuckDB's own
//! (docs/benchmarks.md has the method and the results).
//!
//! One run: generate a seeded synthetic service ([`data`]); start
//! `fineport serve` as a child process on a fresh data directory, or with
//! `--store cluster` on fresh databases of a ClickHouse + PostgreSQL
//! cluster ([`server`]); load the data through `POST /api/v1/events` from
//! several concurrent clients; time three exports over HTTP (1 day and 30
//! days with every property, 30 days with an include filter on events and
//! properties), with the time to first byte and the server's RSS sampled
//! during each; stop the server; run the store's own export of the same rows
//! and columns — DuckDB's `COPY … TO … (FORMAT CSV)` on the same file
//! ([`native`]), or ClickHouse's `SELECT … FORMAT CSVWithNames` over HTTP
//! ([`native_clickhouse`]); on the DuckDB run, where a python with chdb is
//! found, also current ClickHouse's own CSV writer on the same rows from
//! memory ([`native_chdb`]); print the table ([`report`]).
//! Every timing is the best of `--runs`; row counts are checked against the
//! generator's, so a short export fails the bench instead of flattering it.

mod data;
mod http;
mod native;
mod native_chdb;
mod native_clickhouse;
mod report;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use self::http::{ExportRun, Tokens};
use self::native::{Native, NativeRun, Query};
use self::report::{Case, Report, Threads};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events in the synthetic service (spread over 30 days).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Seed of the generator: the same seed and size give the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How events fall in time: `live` (requests in time order, a few late
    /// events) or `shuffled` (every event anywhere in the month).
    #[arg(long, value_enum, default_value = "live")]
    arrival: data::Arrival,
    /// What each event carries: `standard` (~430 bytes of JSON, 45 export
    /// columns) or `heavy` (~660 bytes, 56 columns: long strings, 27 custom
    /// properties of every type on most events).
    #[arg(long, value_enum, default_value = "standard")]
    event_size: data::EventSize,
    /// Concurrent import clients (one connection each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Runs of each export; the best time is reported.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Where the bench's data directory is created (a fresh one per run).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Keep the data directory (its path is printed) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// The store under test: the embedded DuckDB file, or the cluster
    /// (ClickHouse + PostgreSQL, in fresh databases `fp_bench_<hex>`,
    /// dropped after the run unless --keep).
    #[arg(long, value_enum, default_value = "duckdb")]
    store: StoreKind,
    /// With `--store cluster`: the HTTP URL of every ClickHouse shard.
    #[arg(long, value_delimiter = ',', required_if_eq("store", "cluster"))]
    clickhouse_url: Vec<String>,
    /// With `--store cluster`: a PostgreSQL URL whose user may create databases.
    #[arg(long, required_if_eq("store", "cluster"))]
    postgres_url: Option<String>,
    /// With `--store cluster`: the server gets an import log in its data
    /// directory (`fineport serve --cluster-import-log`): imports answered
    /// once synced to it, stored in ClickHouse behind the answers.
    #[arg(long, requires = "postgres_url")]
    cluster_import_log: bool,
    /// On the DuckDB store: a python that can `import chdb` (embedded
    /// ClickHouse), for a second reference beside DuckDB's COPY. Default:
    /// `python3` on PATH if it can; without one that reference is skipped.
    #[arg(long, env = "FINEPORT_BENCH_CHDB_PYTHON")]
    chdb_python: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Duckdb,
    Cluster,
}

/// One export case: its request body and the rows it must return.
struct ExportCase {
    label: &'static str,
    body: Value,
    from: &'static str,
    until: &'static str,
    events: Option<&'static [&'static str]>,
    rows: u64,
}

impl ExportCase {
    /// What the store's own export of this case is asked to write, with
    /// fineport's `header` and with or without `ORDER BY`.
    fn query<'a>(&'a self, header: &'a str, ordered: bool) -> Query<'a> {
        Query {
            header,
            from_day: self.from,
            until_day: self.until,
            events: self.events,
            ordered,
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    let tmp = tempfile::Builder::new()
        .prefix("fineport-bench-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("cannot create a directory in {}", args.dir.display()))?;
    // On the cluster: databases no earlier run used, named after this one.
    let database = (args.store == StoreKind::Cluster).then(|| format!("fp_bench_{:016x}", rand::random::<u64>()));
    let result = run_in(&args, tmp.path().to_path_buf(), database.as_deref()).await;
    if args.keep {
        let kept = tmp.keep();
        eprintln!("data kept in {}", kept.display());
        if let Some(database) = &database {
            eprintln!("cluster databases kept: {database}");
        }
    } else if let (Some(database), Some(postgres_url)) = (&database, &args.postgres_url) {
        // Reported, not fatal: the figures are printed anyway.
        if let Err(e) = fineport_store::cluster::drop_databases(&args.clickhouse_url, postgres_url, database).await {
            eprintln!("could not drop the cluster databases {database}: {e}");
        }
    }
    let report = result?;
    println!("{}", report.render());
    Ok(())
}

async fn run_in(args: &BenchArgs, dir: PathBuf, database: Option<&str>) -> anyhow::Result<Report> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Before the long part: a --chdb-python that cannot import chdb fails now.
    let chdb_python = match args.store {
        StoreKind::Duckdb => native_chdb::find_python(args.chdb_python.as_deref())?,
        StoreKind::Cluster => None,
    };
    eprintln!(
        "generating {} events (seed {}, {:?} arrival)…",
        args.events, args.seed, args.arrival
    );
    let started = Instant::now();
    let (seed, events, arrival, size) = (args.seed, args.events, args.arrival, args.event_size);
    let dataset = tokio::task::spawn_blocking(move || data::generate(events, seed, arrival, size, threads)).await?;
    let generate_time = started.elapsed();
    let cases = export_cases(&dataset);
    let mut report = Report::new(
        args.events,
        args.seed,
        args.clients,
        dataset.bodies.len(),
        dataset.items,
    );
    report.arrival = format!("{:?}", args.arrival).to_lowercase();
    report.event_size = format!("{:?}", args.event_size).to_lowercase();
    report.generate_time = generate_time;
    report.body_bytes = dataset.bodies.iter().map(|b| b.len() as u64).sum();

    let data_dir = dir.join("data");
    let cluster = match (database, &args.postgres_url) {
        (Some(database), Some(postgres_url)) => {
            let url = fineport_store::cluster::postgres::create_database(postgres_url, database)
                .await
                .with_context(|| format!("cannot create the PostgreSQL database {database}"))?;
            let shards = args.clickhouse_url.join(",");
            eprintln!("cluster databases: {database} (ClickHouse {shards}, PostgreSQL)");
            report.reference = "ClickHouse SELECT … FORMAT CSVWithNames";
            let mut store_args = vec![
                format!("--clickhouse-url={shards}"),
                format!("--clickhouse-database={database}"),
                format!("--postgres-url={url}"),
            ];
            if args.cluster_import_log {
                report.durable = "synced to the replica's import log (--cluster-import-log)";
                store_args.push(format!(
                    "--cluster-import-log={}",
                    data_dir.join("import.log").display()
                ));
            } else {
                report.durable = "ClickHouse's synchronous INSERT returned";
            }
            Some((database.to_owned(), store_args))
        }
        _ => None,
    };
    let store_args = cluster.as_ref().map_or(&[][..], |(_, a)| a.as_slice());
    report.store = if cluster.is_some() {
        "cluster (ClickHouse + PostgreSQL)"
    } else {
        "DuckDB"
    };
    let server = server::Server::start(&data_dir, store_args)?;
    let Tokens { import, export } = http::create_service(&server.base, &data::taxonomy(args.event_size)).await?;
    eprintln!(
        "importing {} requests from {} clients…",
        dataset.bodies.len(),
        args.clients
    );
    let bodies: Vec<Bytes> = dataset.bodies.into_iter().map(Bytes::from).collect();
    let import_started = Instant::now();
    report.import_time = http::import_all(&server.base, &import, bodies, args.clients).await?;
    // An export first waits until the writer has moved every acknowledged
    // event into the tables; one of a day without events costs nothing else.
    let empty_day = json!({"events_condition_type": "all", "from_date": data::EMPTY_DAY, "to_date": data::EMPTY_DAY});
    let (run, _) = http::export(&server.base, &export, &empty_day, server.pid()).await?;
    if run.rows != 0 {
        bail!("the export of {} returned {} rows", data::EMPTY_DAY, run.rows);
    }
    report.import_stored_time = import_started.elapsed();
    report.rss_after_import = server::rss_bytes(server.pid()).unwrap_or(0);
    // Export data at rest, as DuckDB's COPY below reads it: a restart
    // checkpoints the import's write-ahead log into the compressed table
    // format, so the exports do not read rows still held in memory.
    eprintln!("restarting the server…");
    server.stop()?;
    let server = server::Server::start(&data_dir, store_args)?;
    report.rss_after_restart = server::rss_bytes(server.pid()).unwrap_or(0);

    let mut headers = Vec::new();
    for case in &cases {
        eprintln!("exporting over HTTP: {}…", case.label);
        let (run, header) = best_export(args.runs, &server, &export, case).await?;
        report.cases.push(Case::new(case.label, run));
        headers.push(header);
    }
    eprintln!("exporting with the client: 30 days as 30 one-day requests…");
    report.client = Some(best_client(args.runs, &server, &export, &dir, cases[1].rows).await?);
    report.rss_peak_lifetime = peak_rss(server.pid());
    server.stop()?;

    if let Some((database, _)) = &cluster {
        let native = native_clickhouse::ClickHouseNative::new(&args.clickhouse_url[0], database)?;
        for ((report_case, case), header) in report.cases.iter_mut().zip(&cases).zip(&headers) {
            eprintln!("ClickHouse SELECT: {}…", case.label);
            report_case.native_ordered = Some(best_clickhouse(args.runs, &native, &case.query(header, true)).await?);
            report_case.native_unordered = Some(best_clickhouse(args.runs, &native, &case.query(header, false)).await?);
        }
        return Ok(report);
    }
    let db = data_dir.join("fineport.duckdb");
    let runs = args.runs;
    let native_runs =
        tokio::task::spawn_blocking(move || native_references(&db, &dir, &cases, &headers, runs, chdb_python))
            .await??;
    report.chdb = Some(match &native_runs.chdb {
        Some(c) => format!("ClickHouse {} (chdb {})", c.clickhouse, c.chdb),
        None => "not installed (pip install chdb)".to_owned(),
    });
    report.threads = Some(Threads {
        server: fineport_store::duckdb::default_threads(),
        copy: native_runs.duckdb_threads,
    });
    let mut chdb_best = native_runs.chdb.map(|c| c.best.into_iter());
    for (case, (ordered, unordered)) in report.cases.iter_mut().zip(native_runs.duckdb) {
        case.native_ordered = Some(ordered);
        case.native_unordered = Some(unordered);
        if let Some(best) = chdb_best.as_mut() {
            case.chdb_ordered = best.next();
            case.chdb_unordered = best.next();
        }
    }
    Ok(report)
}

/// The store's own exports on the DuckDB run: DuckDB's COPY of each case
/// with and without ORDER BY, then, with a python that has chdb, chdb's.
struct NativeReferences {
    duckdb: Vec<(NativeRun, NativeRun)>,
    /// DuckDB's threads in the COPYs.
    duckdb_threads: i64,
    chdb: Option<native_chdb::ChdbRuns>,
}

fn native_references(
    db: &std::path::Path,
    dir: &std::path::Path,
    cases: &[ExportCase],
    headers: &[String],
    runs: usize,
    chdb_python: Option<PathBuf>,
) -> anyhow::Result<NativeReferences> {
    let native = Native::open(db)?;
    let duckdb_threads = native.threads()?;
    let out = dir.join("native.csv");
    let duckdb = cases
        .iter()
        .zip(headers)
        .map(|(case, header)| {
            eprintln!("DuckDB COPY: {}…", case.label);
            Ok((
                best_native(runs, &native, &case.query(header, true), &out)?,
                best_native(runs, &native, &case.query(header, false), &out)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Some(python) = chdb_python else {
        eprintln!("chdb: not installed (pip install chdb), skipped");
        return Ok(NativeReferences {
            duckdb,
            duckdb_threads,
            chdb: None,
        });
    };
    eprintln!("chdb: DuckDB writes the table's columns for ClickHouse (untimed)…");
    let names: Vec<&str> = headers.iter().map(String::as_str).collect();
    let structure = native_chdb::structure(&native.source_columns(&names)?)?;
    let table = dir.join("chdb-table.csv");
    let select: Vec<String> = structure.iter().map(|(s, _)| s.clone()).collect();
    native.copy_table(&select, &table)?;
    drop(native);
    let jobs: Vec<native_chdb::Job<'_>> = cases
        .iter()
        .zip(headers)
        .flat_map(|(case, header)| {
            [true, false].map(|ordered| native_chdb::Job {
                label: case.label,
                query: case.query(header, ordered),
                rows: case.rows,
            })
        })
        .collect();
    let chdb = native_chdb::run(&python, native_chdb::load_sql(&table, &structure), dir, &jobs, runs);
    std::fs::remove_file(&table).ok();
    let chdb = chdb?;
    Ok(NativeReferences {
        duckdb,
        duckdb_threads,
        chdb: Some(chdb),
    })
}

fn export_cases(d: &data::Dataset) -> Vec<ExportCase> {
    let all = |from, to| json!({"events_condition_type": "all", "from_date": from, "to_date": to});
    vec![
        ExportCase {
            label: "1 day, all properties",
            body: all(data::ONE_DAY, data::ONE_DAY),
            from: data::ONE_DAY,
            until: data::DAY_AFTER_ONE_DAY,
            events: None,
            rows: d.per_day[data::ONE_DAY_INDEX],
        },
        ExportCase {
            label: "30 days, all properties",
            body: all(data::FIRST_DAY, data::LAST_DAY),
            from: data::FIRST_DAY,
            until: data::DAY_AFTER_LAST_DAY,
            events: None,
            rows: d.per_day.iter().sum(),
        },
        ExportCase {
            label: "30 days, include filter (3 events, 6 properties)",
            body: json!({
                "events_condition_type": "include",
                "events": data::FILTER_EVENTS,
                "properties_condition_type": "include",
                "properties": data::FILTER_PROPERTIES,
                "from_date": data::FIRST_DAY,
                "to_date": data::LAST_DAY,
            }),
            from: data::FIRST_DAY,
            until: data::DAY_AFTER_LAST_DAY,
            events: Some(&data::FILTER_EVENTS),
            rows: d.filtered_per_day.iter().sum(),
        },
    ]
}

/// Runs an export `runs` times: the best time and first byte (and the
/// first run's first byte), the largest RSS growth; fails when the row
/// count is not the generator's.
async fn best_export(
    runs: usize,
    server: &server::Server,
    token: &str,
    case: &ExportCase,
) -> anyhow::Result<(ExportRun, String)> {
    let mut best: Option<ExportRun> = None;
    let mut header = Vec::new();
    for _ in 0..runs.max(1) {
        let (run, h) = http::export(&server.base, token, &case.body, server.pid()).await?;
        if run.rows != case.rows {
            bail!("{}: {} rows exported, {} expected", case.label, run.rows, case.rows);
        }
        header = h;
        best = Some(match best {
            None => run,
            Some(b) => {
                // Memory: the run that grew the most; times: the best of each.
                let most = if run.rss_growth() > b.rss_growth() { run } else { b };
                ExportRun {
                    total: b.total.min(run.total),
                    first_byte: b.first_byte.min(run.first_byte),
                    first_byte_first_run: b.first_byte_first_run,
                    rss_before: most.rss_before,
                    rss_peak: most.rss_peak,
                    cache_before: most.cache_before,
                    cache_after: most.cache_after,
                    ..run
                }
            }
        });
    }
    let header = String::from_utf8(header).context("the CSV header is not UTF-8")?;
    Ok((best.context("no export run")?, header))
}

/// `fineport export`'s engine over the 30 days (30 one-day requests, 5 at
/// a time, each checked, then one file): its best time of `runs`; fails
/// when the row count is not the generator's.
async fn best_client(
    runs: usize,
    server: &server::Server,
    token: &str,
    dir: &std::path::Path,
    rows: u64,
) -> anyhow::Result<report::ClientRun> {
    use fineport_client::export::{self, ExportSpec, Output, What};
    let day = |s: &str| fineport_contract::time::parse_date(s).context("a bench date");
    let file = dir.join("client.csv");
    let spec = ExportSpec {
        base_url: fineport_client::http::base_url(&server.base)?,
        service_id: http::SERVICE_ID.to_owned(),
        token: token.to_owned(),
        what: What::Events {
            events: fineport_contract::export::Selection::All,
            properties: fineport_contract::export::Selection::All,
            from: day(data::FIRST_DAY)?,
            to: day(data::LAST_DAY)?,
        },
        timezone: Some(chrono_tz::UTC),
        concurrency: 5,
        per_hour: 100_000,
        retry: fineport_client::retry::RetryPolicy::default(),
        output: Output::File(file.clone()),
        compression: Default::default(),
        force: true,
        plain: true,
    };
    let mut best: Option<report::ClientRun> = None;
    for _ in 0..runs.max(1) {
        let summary = export::run(&spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let got: u64 = summary.units.iter().map(|u| u.rows).sum();
        if got != rows {
            bail!("the client exported {got} rows, {rows} expected");
        }
        let _ = std::fs::remove_file(&file);
        let raw_days = raw_days(&spec).await?;
        let run = report::ClientRun {
            total: summary.elapsed,
            bytes: summary.output_bytes,
            raw_days,
        };
        best = Some(match best {
            Some(b) => report::ClientRun {
                total: b.total.min(run.total),
                raw_days: b.raw_days.min(run.raw_days),
                ..b
            },
            None => run,
        });
    }
    best.context("no client run")
}

/// The same one-day requests as the client, 5 at a time, their bodies read
/// and dropped: what the client's checks, files and retries cost on top.
async fn raw_days(spec: &fineport_client::export::ExportSpec) -> anyhow::Result<Duration> {
    use futures::StreamExt;
    let http = fineport_client::http::export_client(&spec.base_url)?;
    let url = fineport_client::http::api_url(&spec.base_url, &["api", "v1", "export", "event"], &spec.service_id);
    let started = Instant::now();
    let days = spec.units().into_iter().map(|(_, day)| {
        let request = http.post(url.clone()).bearer_auth(&spec.token).json(&spec.body(day));
        async move {
            let mut body = request.send().await?.error_for_status()?.bytes_stream();
            while let Some(chunk) = body.next().await {
                chunk?;
            }
            anyhow::Ok(())
        }
    });
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(days)
        .buffer_unordered(spec.concurrency)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    Ok(started.elapsed())
}

fn best_native(runs: usize, native: &Native, q: &Query<'_>, out: &std::path::Path) -> anyhow::Result<NativeRun> {
    let mut best: Option<NativeRun> = None;
    for _ in 0..runs.max(1) {
        let run = native.copy(q, out)?;
        if best.as_ref().is_none_or(|b| run.total < b.total) {
            best = Some(run);
        }
    }
    best.context("no native run")
}

async fn best_clickhouse(
    runs: usize,
    native: &native_clickhouse::ClickHouseNative,
    q: &Query<'_>,
) -> anyhow::Result<NativeRun> {
    let mut best: Option<NativeRun> = None;
    for _ in 0..runs.max(1) {
        let run = native.select(q).await?;
        if best.as_ref().is_none_or(|b| run.total < b.total) {
            best = Some(run);
        }
    }
    best.context("no ClickHouse run")
}

/// The process's lifetime peak RSS (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Seconds as a float, for rates.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}
