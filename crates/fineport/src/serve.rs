//! `fineport serve`: opens the store (the DuckDB file in the data
//! directory, or the cluster: ClickHouse + PostgreSQL), builds the server
//! state, optionally fills the demo service, and serves until Ctrl-C or
//! SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use fineport_server::clock::SystemClock;
use fineport_server::limits::{Limiter, MemoryLimiter, RedisLimiter, RedisLimiterOptions};
use fineport_server::metrics::MetricsAccess;
use fineport_server::{build_state, Config, Parts};
use fineport_store::cluster::clickhouse::ClickHouseOptions;
use fineport_store::cluster::{ClusterOptions, ClusterStore, ImportLogOptions};
use fineport_store::duckdb::{DuckDbOptions, DuckDbStore, MovePolicy, BULK_EVENTS};
use fineport_store::Store;
use tokio::net::TcpListener;

/// The environment variable holding the admin token. When it is unset, a
/// token is generated at first start, printed once, and stored hashed.
const ADMIN_TOKEN_ENV: &str = "FINEPORT_ADMIN_TOKEN";

/// The environment variable holding a token that opens `/metrics` and
/// nothing else, for Prometheus to hold instead of the admin token.
const METRICS_TOKEN_ENV: &str = "FINEPORT_METRICS_TOKEN";

#[derive(Debug, Args)]
#[command(
    after_help = "The admin token comes from FINEPORT_ADMIN_TOKEN; when it is unset, one is generated \
at first start, printed once and stored hashed in the data directory.\n\n\
GET /metrics (Prometheus text) takes the admin token as a bearer token, or the token in \
FINEPORT_METRICS_TOKEN, which opens /metrics and nothing else (give that one to Prometheus); \
--metrics-public serves it to anyone."
)]
pub struct ServeArgs {
    /// Address to listen on (host:port).
    #[arg(long, env = "FINEPORT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Data directory (created if absent); holds fineport.duckdb and its
    /// import log, fineport.duckdb.import-log and its segments .1, .2, …
    /// (back up all of them, together). In
    /// cluster mode it only keeps the demo's tokens (cluster-<database>/).
    #[arg(long, env = "FINEPORT_DATA", default_value = "./fineport-data")]
    data: PathBuf,
    /// Create (if absent) a service `demo` with 30 days of synthetic shop
    /// events, and print its tokens and a ready-to-paste curl export.
    #[arg(long, env = "FINEPORT_DEMO")]
    demo: bool,
    /// Cluster mode: the HTTP URL of every ClickHouse shard, comma-separated
    /// (e.g. http://10.0.0.1:8123,http://10.0.0.2:8123). Events go to
    /// ClickHouse; --postgres-url is then required and holds the rest. The
    /// shards must list each other in `remote_servers` as --clickhouse-cluster.
    #[arg(
        long,
        env = "FINEPORT_CLICKHOUSE_URL",
        value_delimiter = ',',
        requires = "postgres_url"
    )]
    clickhouse_url: Vec<String>,
    /// Cluster mode: the ClickHouse database fineport creates its tables in.
    #[arg(long, env = "FINEPORT_CLICKHOUSE_DATABASE", default_value_t = ClickHouseOptions::default().database)]
    clickhouse_database: String,
    /// Cluster mode: the cluster name in the shards' `remote_servers`.
    #[arg(long, env = "FINEPORT_CLICKHOUSE_CLUSTER", default_value_t = ClickHouseOptions::default().cluster)]
    clickhouse_cluster: String,
    /// Cluster mode: milliseconds an INSERT waits for more import requests
    /// to share it (0: it takes what arrived while the previous one ran).
    #[arg(long, env = "FINEPORT_CLICKHOUSE_INSERT_LINGER_MS",
          default_value_t = ClickHouseOptions::default().insert_linger.as_millis() as u64)]
    clickhouse_insert_linger_ms: u64,
    /// Cluster mode: PostgreSQL (services, tokens, taxonomies, profiles,
    /// audiences, the request log), e.g. postgres://fineport@10.0.0.3/fineport.
    #[arg(long, env = "FINEPORT_POSTGRES_URL", requires = "clickhouse_url")]
    postgres_url: Option<String>,
    /// Cluster mode: this replica's import log, a file on its own disk
    /// (e.g. /var/lib/fineport/import.log), one per replica. Imports are
    /// then answered once synced to it and stored in ClickHouse behind the
    /// answers, in large INSERTs: ~5x faster, but until then the events are
    /// on this machine only, and reads and profile writes on every replica
    /// wait for them (or fail after --cluster-flush-wait-secs while this
    /// replica is down). Without it, each import waits for its synchronous
    /// INSERT on every shard. docs/cluster.md.
    #[arg(long, env = "FINEPORT_CLUSTER_IMPORT_LOG", requires = "clickhouse_url")]
    cluster_import_log: Option<PathBuf>,
    /// With --cluster-import-log: a move into ClickHouse starts once this
    /// many acknowledged events wait (one INSERT; a read, an idle moment
    /// and shutdown move sooner).
    #[arg(long, env = "FINEPORT_CLUSTER_IMPORT_MOVE_EVENTS", requires = "cluster_import_log",
          default_value_t = ImportLogOptions::new(PathBuf::new()).move_events)]
    cluster_import_move_events: usize,
    /// With --cluster-import-log: … or once no import came for this many ms.
    #[arg(long, env = "FINEPORT_CLUSTER_IMPORT_MOVE_IDLE_MS", requires = "cluster_import_log",
          default_value_t = ImportLogOptions::new(PathBuf::new()).idle.as_millis() as u64)]
    cluster_import_move_idle_ms: u64,
    /// Cluster mode: how long a read (or a profile write) waits for other
    /// replicas to store the events their import logs hold before it fails
    /// (500 query_error; 50000 for a profile write).
    #[arg(long, env = "FINEPORT_CLUSTER_FLUSH_WAIT_SECS", requires = "clickhouse_url",
          default_value_t = ClusterOptions::new(ClickHouseOptions::default(), String::new()).flush_wait.as_secs())]
    cluster_flush_wait_secs: u64,
    /// Limits shared by every replica: a Redis URL
    /// (redis://[user:password@]host:port[/db]). Without it each process
    /// keeps its own limits, which is right for a single node. While Redis
    /// cannot be reached, each replica limits its own requests (logged).
    #[arg(long, env = "FINEPORT_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of fineport's Redis keys (deployments sharing one Redis need
    /// different ones; no '{' or '}').
    #[arg(long, env = "FINEPORT_REDIS_KEY_PREFIX", default_value_t = RedisLimiterOptions::default().key_prefix)]
    redis_key_prefix: String,
    /// Milliseconds an export's concurrency slot outlives the last
    /// heartbeat of the replica serving it (a replica killed mid-export
    /// frees its slots within this); heartbeats come every third of it.
    #[arg(long, env = "FINEPORT_REDIS_LEASE_MS",
          default_value_t = RedisLimiterOptions::default().lease.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(300..))]
    redis_lease_ms: u64,
    /// Cluster mode: seconds between full re-reads of the catalog
    /// (services, tokens, taxonomies, audiences) from PostgreSQL, the safety
    /// net behind the change notifications that bring each change made
    /// through another replica within a second.
    #[arg(long, env = "FINEPORT_CATALOG_REFRESH_SECS",
          default_value_t = Config::default().catalog_refresh_every.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    catalog_refresh_secs: u64,
    /// DuckDB's threads, 1 or more (default: one less than the machine's
    /// cores, at least 1: an export's encoder keeps a core of its own).
    #[arg(long, env = "FINEPORT_DUCKDB_THREADS")]
    duckdb_threads: Option<std::num::NonZeroUsize>,
    /// DuckDB memory limit, e.g. 4GB or 512MB.
    #[arg(long, env = "FINEPORT_DUCKDB_MEMORY_LIMIT", default_value = "4GB")]
    duckdb_memory_limit: String,
    /// Cells (rows × columns) an event export sorts at a time: less memory
    /// per export when smaller, fewer queries when larger.
    #[arg(long, env = "FINEPORT_EXPORT_SLICE_CELLS", default_value_t = DuckDbOptions::default().export_slice_cells)]
    export_slice_cells: u64,
    /// Acknowledged imports move from the import log into the tables once
    /// this many events wait…
    #[arg(long, env = "FINEPORT_IMPORT_MOVE_EVENTS", default_value_t = DuckDbOptions::default().import_moves.events)]
    import_move_events: usize,
    /// …or once no import has come for this many milliseconds (and always
    /// before a read, another write, or shutdown).
    #[arg(long, env = "FINEPORT_IMPORT_MOVE_IDLE_MS",
          default_value_t = DuckDbOptions::default().import_moves.idle.as_millis() as u64)]
    import_move_idle_ms: u64,
    /// Moves go into one transaction, committed once it holds this many
    /// events besides late ones, or a quarter more in all (and at once when
    /// a read or another write needs them, when idle, at shutdown). The default, DuckDB's row group, makes each
    /// commit a bulk append that DuckDB writes compressed without its WAL;
    /// a lower value bounds the import's memory, at the cost of speed.
    #[arg(long, env = "FINEPORT_IMPORT_COMMIT_EVENTS", default_value_t = BULK_EVENTS)]
    import_commit_events: usize,
    /// Hours after a token reissue before the same kind may be reissued again.
    #[arg(long, env = "FINEPORT_TOKEN_REISSUE_COOLDOWN_HOURS", default_value_t = 24)]
    token_reissue_cooldown_hours: u32,
    /// Largest Import API request body, in bytes.
    #[arg(long, env = "FINEPORT_IMPORT_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    import_body_limit: usize,
    /// Seconds a response may wait for its client to take any byte (the
    /// client stopped reading) before the connection is closed; an export
    /// cut this way frees its slot and is logged client_connection_closed.
    #[arg(long, env = "FINEPORT_WRITE_TIMEOUT_SECS", default_value_t = Config::default().write_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    write_timeout_secs: u64,
    /// Connections open at once; further ones wait in the listen backlog
    /// until one closes.
    #[arg(long, env = "FINEPORT_MAX_CONNECTIONS", default_value_t = Config::default().max_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// Seconds the requests in flight get to finish after Ctrl-C/SIGTERM;
    /// then their connections are closed (an export mid-stream ends as a
    /// broken transfer) and the server stops.
    #[arg(long, env = "FINEPORT_SHUTDOWN_TIMEOUT_SECS",
          default_value_t = Config::default().shutdown_timeout.as_secs())]
    shutdown_timeout_secs: u64,
    /// Serve GET /metrics to anyone who can reach the port, without a
    /// token: only where the port is reachable from the monitoring network
    /// alone. By default /metrics takes the admin token or
    /// FINEPORT_METRICS_TOKEN.
    #[arg(long, env = "FINEPORT_METRICS_PUBLIC")]
    metrics_public: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // A file-size limit (`ulimit -f`) reached by the store must fail that
    // write with EFBIG, which the store reports (an import answered 50000,
    // an export 500 query_error), instead of killing the server: handling
    // SIGXFSZ (and never acting on it) is what makes the write fail.
    #[cfg(unix)]
    let _file_size_signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
        .context("cannot handle SIGXFSZ")?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;
    let store = open_store(&args).await?;

    let admin_token = std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty());
    let metrics_token = std::env::var(METRICS_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty());
    let metrics_access = match (args.metrics_public, metrics_token) {
        (true, Some(_)) => {
            anyhow::bail!(
                "--metrics-public serves /metrics without a token: unset {METRICS_TOKEN_ENV}, or drop the flag"
            )
        }
        (true, None) => MetricsAccess::Public,
        (false, Some(token)) => MetricsAccess::Token {
            sha256: fineport_server::tokens::hash(&token),
        },
        (false, None) => MetricsAccess::AdminToken,
    };
    let parts = Parts {
        store,
        clock: Arc::new(SystemClock),
        limiter: open_limiter(&args).await?,
        config: Config {
            import_body_limit: args.import_body_limit,
            write_timeout: std::time::Duration::from_secs(args.write_timeout_secs),
            max_connections: args.max_connections,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_secs),
            catalog_refresh_every: std::time::Duration::from_secs(args.catalog_refresh_secs),
            metrics_access,
            token_policy: fineport_server::catalog::TokenPolicy {
                cooldown: chrono::Duration::hours(i64::from(args.token_reissue_cooldown_hours)),
                ..Default::default()
            },
            ..Config::default()
        },
        admin_token,
    };
    let (state, generated) = build_state(parts).await.context("cannot load the catalog")?;
    if let Some(token) = generated {
        println!("admin token (shown once): {token}");
        println!("  (set {ADMIN_TOKEN_ENV} to choose your own; this one is stored hashed only)");
    }

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("cannot read the listening address")?;

    if args.demo {
        // The demo's tokens are kept beside its store: in the data directory
        // for DuckDB, in a directory of their own for each cluster database.
        let demo_dir = if args.postgres_url.is_some() {
            args.data.join(format!("cluster-{}", args.clickhouse_database))
        } else {
            args.data.clone()
        };
        std::fs::create_dir_all(&demo_dir).with_context(|| format!("cannot create {}", demo_dir.display()))?;
        let started = std::time::Instant::now();
        let demo = fineport_server::demo::ensure_demo(&state, &demo_dir)
            .await
            .context("cannot set up the demo service")?;
        if demo.created {
            println!(
                "demo service {:?} created with {} events in {:.1}s",
                demo.service_id,
                demo.events,
                started.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "demo service {:?} exists; its tokens are in {}",
                demo.service_id,
                demo_dir.join("demo-tokens.json").display()
            );
        }
        println!("  import token (access_token):         {}", demo.import_token);
        println!("  export token (Authorization: Bearer): {}", demo.export_token);
        println!("export the last 7 days as CSV:");
        println!("{}", demo.curl_command(&format!("http://{addr}")));
        println!("export the gold members' profiles (audience gold01):");
        println!("{}", demo.profile_curl_command(&format!("http://{addr}")));
    }

    println!("listening on http://{addr}");
    tracing::info!(%addr, data = %args.data.display(), "serving");
    fineport_server::serve(listener, state, shutdown_signal())
        .await
        .context("the server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Limits in Redis when `--redis-url` is given, else in this process.
async fn open_limiter(args: &ServeArgs) -> anyhow::Result<Arc<dyn Limiter>> {
    let Some(url) = &args.redis_url else {
        return Ok(Arc::new(MemoryLimiter::default()));
    };
    let options = RedisLimiterOptions {
        url: url.clone(),
        key_prefix: args.redis_key_prefix.clone(),
        lease: std::time::Duration::from_millis(args.redis_lease_ms),
        ..RedisLimiterOptions::default()
    };
    let limiter = RedisLimiter::connect(options).await.context("--redis-url")?;
    Ok(Arc::new(limiter))
}

/// The cluster when `--clickhouse-url` is given, else the DuckDB file in
/// the data directory.
async fn open_store(args: &ServeArgs) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(postgres_url) = &args.postgres_url {
        let mut options = ClusterOptions::new(
            ClickHouseOptions {
                urls: args.clickhouse_url.clone(),
                database: args.clickhouse_database.clone(),
                cluster: args.clickhouse_cluster.clone(),
                insert_linger: std::time::Duration::from_millis(args.clickhouse_insert_linger_ms),
                ..ClickHouseOptions::default()
            },
            postgres_url.clone(),
        );
        options.flush_wait = std::time::Duration::from_secs(args.cluster_flush_wait_secs);
        options.import_log = args.cluster_import_log.clone().map(|path| ImportLogOptions {
            move_events: args.cluster_import_move_events.max(1),
            idle: std::time::Duration::from_millis(args.cluster_import_move_idle_ms),
            ..ImportLogOptions::new(path)
        });
        let store = ClusterStore::open(&options)
            .await
            .context("cannot open the cluster store (ClickHouse + PostgreSQL)")?;
        return Ok(Arc::new(store));
    }
    let db_path = args.data.join("fineport.duckdb");
    let options = DuckDbOptions {
        threads: args.duckdb_threads.map(std::num::NonZeroUsize::get),
        memory_limit: Some(args.duckdb_memory_limit.clone()),
        export_slice_cells: args.export_slice_cells,
        import_moves: MovePolicy {
            events: args.import_move_events.max(1),
            idle: std::time::Duration::from_millis(args.import_move_idle_ms),
            commit_events: args.import_commit_events.max(1),
        },
        ..DuckDbOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || DuckDbStore::open(&db_path, &options))
        .await
        .context("opening the store panicked")?
        .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
    Ok(Arc::new(store))
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing open requests until the shutdown deadline");
}
