//! The test harness: a real fineport server on `127.0.0.1:0` over a real
//! store, with a manual clock. The store is a DuckDB file in a temporary
//! directory or, for the cluster half of the behaviour suite, fresh
//! databases on the ClickHouse shards and the PostgreSQL server that
//! `FINEPORT_TEST_CLICKHOUSE_URL` and `FINEPORT_TEST_POSTGRES_URL` name. The
//! server's store is a [`FailingStore`] over it, so tests can inject
//! failures. Dropping the [`TestServer`] shuts it down.
//!
//! [`backend_suite!`] runs a file's behaviour tests once per backend.
#![allow(dead_code)]

pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fineport_server::clock::{Clock, ManualClock};
use fineport_server::limits::{Limiter, MemoryLimiter};
use fineport_server::{build_state, Config, Parts, SharedState};
use fineport_store::duckdb::{DuckDbOptions, DuckDbStore, MovePolicy};
use fineport_store::failing::FailingStore;
use fineport_store::testing::TestCluster;
use fineport_store::Store;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// 2026-11-25T03:00:00Z: 12:00 in Seoul, still the 25th in UTC.
pub fn default_now() -> DateTime<Utc> {
    at("2026-11-25T03:00:00Z")
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid RFC 3339")
        .with_timezone(&Utc)
}

/// Runs each named test (an `async fn name()` in the same file) on every
/// backend, as quickwit's `metastore_test_suite!` does: `duckdb::name` on an
/// embedded DuckDB file, `cluster::name` on ClickHouse + PostgreSQL. Inside
/// a test, [`TestServer::start`] and its siblings open the backend under
/// test. The cluster half says "skipped" without the cluster's URLs, and
/// fails without them under `CI=true`.
#[macro_export]
macro_rules! backend_suite {
    ($($name:ident),* $(,)?) => {
        mod duckdb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::Backend::DuckDb.run(super::$name()).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = $crate::common::Backend::cluster(stringify!($name)) {
                        backend.run(super::$name()).await
                    }
                }
            )*
        }
        mod cluster_import_log {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = $crate::common::Backend::cluster_import_log(stringify!($name)) {
                        backend.run(super::$name()).await
                    }
                }
            )*
        }
    };
}

/// The store a [`TestServer`] runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    DuckDb,
    Cluster(TestCluster),
    /// The cluster with an import log per server (`--cluster-import-log`),
    /// in a directory of the system's temporary one.
    ClusterImportLog(TestCluster),
}

tokio::task_local! {
    static BACKEND: Backend;
}

impl Backend {
    /// The cluster from the environment (see [`TestCluster::from_env`]).
    pub fn cluster(test: &str) -> Option<Backend> {
        TestCluster::from_env(test).map(Backend::Cluster)
    }

    /// The same cluster, its servers with import logs.
    pub fn cluster_import_log(test: &str) -> Option<Backend> {
        TestCluster::from_env(test).map(Backend::ClusterImportLog)
    }

    /// Runs `test` with this backend as the one servers start on.
    pub async fn run<T>(self, test: impl std::future::Future<Output = T>) -> T {
        BACKEND.scope(self, test).await
    }

    /// The backend of the running test; DuckDB outside [`backend_suite!`].
    pub fn current() -> Backend {
        BACKEND.try_with(Backend::clone).unwrap_or(Backend::DuckDb)
    }
}

/// Where a test server keeps its data, so that a restart finds it again.
enum Data {
    DuckDb(tempfile::TempDir),
    /// The databases made for this server on the test cluster, dropped
    /// with the server (unless a restart takes them over).
    Cluster(TestCluster, fineport_store::cluster::ClusterOptions),
    /// Another server's cluster databases, shared by a replica
    /// ([`TestServer::replica`]) and never dropped by it: their owner drops
    /// them, once.
    Replica(fineport_store::cluster::ClusterOptions),
}

pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    /// The DuckDB store itself, for what only it offers
    /// (`set_memory_limit`); `None` on the cluster.
    pub duckdb: Option<Arc<DuckDbStore>>,
    /// What the server talks to: the store behind failure injection.
    pub faults: Arc<FailingStore<dyn Store>>,
    pub state: SharedState,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    data: Data,
}

/// A service as the admin API created it.
#[derive(Debug, Clone)]
pub struct Svc {
    pub id: String,
    pub import_token: String,
    pub export_token: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Config::default(), default_now()).await
    }

    /// A server on the backend under test ([`Backend::current`]).
    pub async fn start_with(config: Config, now: DateTime<Utc>) -> TestServer {
        let data = match Backend::current() {
            Backend::DuckDb => Data::DuckDb(tempfile::tempdir().expect("temp dir")),
            Backend::Cluster(cluster) => {
                let options = cluster.fresh_databases().await;
                Data::Cluster(cluster, options)
            }
            Backend::ClusterImportLog(cluster) => {
                let mut options = cluster.fresh_databases().await;
                options.import_log = Some(import_log_in(&options.clickhouse.database));
                Data::Cluster(cluster, options)
            }
        };
        Self::start_in(data, config, now, store_options(1)).await
    }

    /// A server on the cluster store opened with `options` (e.g. on the
    /// `fineport_broken` cluster of `scripts/cluster`).
    pub async fn start_on_cluster(
        cluster: TestCluster,
        options: fineport_store::cluster::ClusterOptions,
    ) -> TestServer {
        Self::start_in(
            Data::Cluster(cluster, options),
            Config::default(),
            default_now(),
            store_options(1),
        )
        .await
    }

    /// A DuckDB server whose exports cut slices of `cells` (rows × columns)
    /// rather than one per minute.
    pub async fn start_with_slice_cells(cells: u64) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(
            Data::DuckDb(dir),
            Config::default(),
            default_now(),
            store_options(cells),
        )
        .await
    }

    /// A DuckDB server over a store opened with `options` (e.g. a tiny
    /// memory limit); [`TestServer::restart`] reopens it with the usual ones.
    pub async fn start_with_store(config: Config, options: DuckDbOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(Data::DuckDb(dir), config, default_now(), options).await
    }

    /// The DuckDB server's data directory; panics on the cluster.
    pub fn dir(&self) -> &std::path::Path {
        match &self.data {
            Data::DuckDb(dir) => dir.path(),
            Data::Cluster(..) | Data::Replica(_) => panic!("a DuckDB test server"),
        }
    }

    /// The cluster store's options (its databases); `None` on DuckDB.
    pub fn cluster_options(&self) -> Option<&fineport_store::cluster::ClusterOptions> {
        match &self.data {
            Data::Cluster(_, options) | Data::Replica(options) => Some(options),
            Data::DuckDb(_) => None,
        }
    }

    /// Another replica of this cluster server: a second server, with a
    /// store of its own, on the same ClickHouse and PostgreSQL databases,
    /// with the same [`Config`] and its own clock at this one's time. It
    /// never drops the databases; this server does when it is dropped, so
    /// drop the replica first (declare it after this one). Panics on
    /// DuckDB, which one process opens.
    pub async fn replica(&self) -> TestServer {
        let mut options = self
            .cluster_options()
            .expect("replicas share a cluster test server's databases")
            .clone();
        if options.import_log.is_some() {
            let name = format!("{}-{}", options.clickhouse.database, uuid::Uuid::new_v4().simple());
            options.import_log = Some(import_log_in(&name));
        }
        self.replica_on(options).await
    }

    /// A replica of this server opened with `options` (the same databases,
    /// e.g. with another `flush_wait` or import log).
    pub async fn replica_on(&self, options: fineport_store::cluster::ClusterOptions) -> TestServer {
        Self::start_in(
            Data::Replica(options),
            self.state.config.clone(),
            self.clock.now(),
            store_options(1),
        )
        .await
    }

    /// The DuckDB store; panics on the cluster.
    pub fn duckdb(&self) -> &Arc<DuckDbStore> {
        self.duckdb.as_ref().expect("a DuckDB test server")
    }

    /// Stops this server, closes its store and starts a new server on the
    /// same data (DuckDB file or cluster databases), as a process restart would.
    pub async fn restart(mut self) -> TestServer {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server");
        }
        let data = std::mem::replace(&mut self.data, Data::DuckDb(tempfile::tempdir().expect("temp dir")));
        let (config, now) = (self.state.config.clone(), self.clock.now());
        drop(self);
        Self::start_in(data, config, now, store_options(1)).await
    }

    /// Sends the shutdown signal and waits up to `patience` for `serve` to
    /// return: `None` if it has not by then (the server is then aborted on
    /// drop), else what `serve` returned.
    pub async fn stop_within(&mut self, patience: Duration) -> Option<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = self.server.as_mut()?;
        let joined = tokio::time::timeout(patience, server).await.ok()?;
        self.server = None;
        Some(joined.expect("server task"))
    }

    /// A DuckDB server whose limits are `limiter`'s (e.g. a `RedisLimiter`).
    pub async fn start_with_limiter(limiter: Arc<dyn Limiter>) -> TestServer {
        let data = Data::DuckDb(tempfile::tempdir().expect("temp dir"));
        Self::start_in_with(data, Config::default(), default_now(), store_options(1), limiter).await
    }

    async fn start_in(data: Data, config: Config, now: DateTime<Utc>, options: DuckDbOptions) -> TestServer {
        Self::start_in_with(data, config, now, options, Arc::new(MemoryLimiter::default())).await
    }

    async fn start_in_with(
        data: Data,
        config: Config,
        now: DateTime<Utc>,
        options: DuckDbOptions,
        limiter: Arc<dyn Limiter>,
    ) -> TestServer {
        let (store, duckdb): (Arc<dyn Store>, _) = match &data {
            Data::DuckDb(dir) => {
                let store =
                    Arc::new(DuckDbStore::open(&dir.path().join("fineport.duckdb"), &options).expect("open store"));
                (store.clone(), Some(store))
            }
            Data::Cluster(_, options) | Data::Replica(options) => {
                let store = fineport_store::cluster::ClusterStore::open(options)
                    .await
                    .expect("open cluster store");
                (Arc::new(store), None)
            }
        };
        let faults: Arc<FailingStore<dyn Store>> = Arc::new(FailingStore::new(store));
        let clock = Arc::new(ManualClock::new(now));
        let parts = Parts {
            store: faults.clone(),
            clock: clock.clone(),
            limiter,
            config,
            admin_token: Some(ADMIN_TOKEN.into()),
        };
        let (state, _) = build_state(parts).await.expect("build state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(fineport_server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            addr,
            clock,
            duckdb,
            faults,
            state,
            http: reqwest::Client::builder().no_gzip().no_zstd().build().expect("client"),
            shutdown: Some(tx),
            server: Some(server),
            data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST to the admin API; returns (status, JSON body).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Creates a service; panics unless the answer is 201.
    pub async fn service(&self, body: Value) -> Svc {
        let (status, v) = self
            .admin(reqwest::Method::POST, "/admin/v1/services", Some(body))
            .await;
        assert_eq!(status, 201, "create service: {v}");
        Svc {
            id: v["service_id"].as_str().expect("service_id").to_owned(),
            import_token: v["import_token"].as_str().expect("import_token").to_owned(),
            export_token: v["export_token"].as_str().expect("export_token").to_owned(),
        }
    }

    /// Adds to a service's taxonomy; panics unless 200.
    pub async fn taxonomy(&self, svc: &Svc, doc: Value) {
        let (status, v) = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/v1/services/{}/taxonomy", svc.id),
                Some(doc),
            )
            .await;
        assert_eq!(status, 200, "taxonomy: {v}");
    }

    /// POST /api/v1/events; returns the answer's JSON (HTTP must be 200).
    pub async fn import(&self, svc: &Svc, body: Value) -> Value {
        let resp = self
            .import_raw(&svc.id, Some(&svc.import_token), body.to_string())
            .await;
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.expect("import answer is JSON")
    }

    pub async fn import_raw(&self, service_id: &str, token: Option<&str>, body: String) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(&format!("/api/v1/events?service_id={service_id}")))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.header("access_token", t);
        }
        req.send().await.expect("import request")
    }

    /// POST to an Import API endpoint (`/api/v1/identities`, …) of `svc`
    /// with its import token; panics unless HTTP 200 (the Import API's
    /// answer to everything it read).
    pub async fn import_endpoint(&self, svc: &Svc, path: &str, body: &Value) -> reqwest::Response {
        let resp = self
            .http
            .post(self.url(&format!("{path}?service_id={}", svc.id)))
            .header("access_token", &svc.import_token)
            .json(body)
            .send()
            .await
            .expect("import request");
        assert_eq!(resp.status(), 200);
        resp
    }

    /// POST /api/v1/export/event with the service's export token.
    pub async fn export(&self, svc: &Svc, body: Value) -> reqwest::Response {
        self.export_raw(
            &format!("/api/v1/export/event?service_id={}", svc.id),
            Some(&svc.export_token),
            body.to_string(),
        )
        .await
    }

    pub async fn export_raw(&self, path_and_query: &str, token: Option<&str>, body: String) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(path_and_query))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("export request")
    }

    /// The service's request log, newest first.
    pub async fn requests(&self, svc: &Svc) -> Vec<Value> {
        let (status, v) = self
            .admin(
                reqwest::Method::GET,
                &format!("/admin/v1/services/{}/requests?limit=1000", svc.id),
                None,
            )
            .await;
        assert_eq!(status, 200, "requests: {v}");
        v["requests"].as_array().cloned().unwrap_or_default()
    }
}

/// The store options of test servers: by default one export slice per
/// minute with events (`slice_cells` 1), so that every export test goes
/// through the slice worker and both ways of ordering a slice (a minute of
/// more than 2 rows is sorted by DuckDB); imports move into the tables only
/// when a read asks, so that every test that reads what it imported depends
/// on that.
pub fn store_options(slice_cells: u64) -> DuckDbOptions {
    DuckDbOptions {
        export_slice_cells: slice_cells,
        import_moves: MovePolicy {
            events: usize::MAX,
            idle: std::time::Duration::from_secs(3600),
            commit_events: fineport_store::duckdb::BULK_EVENTS,
        },
        ..Default::default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Data::Cluster(cluster, options) = &self.data {
            cluster.drop_databases(options);
        }
        if let Data::Cluster(_, options) | Data::Replica(options) = &self.data {
            if let Some(dir) = options.import_log.as_ref().and_then(|log| log.path.parent()) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// An import log of its own for a test server: `<tmp>/fineport-test-logs/<name>/import.log`.
pub fn import_log_in(name: &str) -> fineport_store::cluster::ImportLogOptions {
    let path = std::env::temp_dir()
        .join("fineport-test-logs")
        .join(name)
        .join("import.log");
    fineport_store::cluster::ImportLogOptions::new(path)
}

/// Parses CSV text with a real CSV parser: (header, rows).
pub fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let header = reader
        .headers()
        .expect("csv header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.expect("csv record").iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// A cell of `row` by column name.
pub fn cell<'a>(header: &[String], row: &'a [String], column: &str) -> &'a str {
    let i = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    &row[i]
}

/// A deterministic UUID for test event `n`.
pub fn event_id(n: u128) -> String {
    fineport_contract::Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 + n).to_string()
}

/// One event body element.
pub fn event(n: u128, name: &str, datetime: &str, properties: Value) -> Value {
    json!({"event_log_id": event_id(n), "event_name": name, "event_datetime": datetime, "properties": properties})
}

/// An import body for `external_id` with `events`.
pub fn events_body(external_id: &str, events: Vec<Value>) -> Value {
    json!({"common": {"identity": {"external_id": external_id}}, "events": events})
}

/// Imports `n` events of ~10 KB each on 2026-11-25, so an export is far
/// bigger than any socket buffer.
pub async fn import_big(server: &TestServer, svc: &Svc, n: u128) {
    server
        .taxonomy(svc, json!({"event_properties": [{"name": "blob", "type": "String"}]}))
        .await;
    let blob = "가나다라마바사아자차".repeat(330);
    for chunk in 0..n.div_ceil(100) {
        let events = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| event(i, "df_login", "2026-11-25T01:00:00Z", json!({"blob": blob})))
            .collect();
        let answer = server.import(svc, events_body("big", events)).await;
        assert_eq!(answer["code"], "20000", "{answer}");
    }
}

/// Polls the request log until it shows `count` entries with `message`.
pub async fn wait_for_log(server: &TestServer, svc: &Svc, message: &str, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let entries: Vec<Value> = server
            .requests(svc)
            .await
            .into_iter()
            .filter(|e| e["message"] == message)
            .collect();
        if entries.len() >= count {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the request log never showed {count} × {message}");
}

/// An export read over a raw socket with a 4 KiB receive buffer, so that
/// the server, not the kernel, holds what the client has not read yet.
pub struct StalledExport {
    pub socket: tokio::net::TcpStream,
    pub received: Vec<u8>,
}

impl StalledExport {
    /// Sends the request and reads its first 64 KiB.
    pub async fn start(server: &TestServer, svc: &Svc, body: &Value) -> StalledExport {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut socket = socket.connect(server.addr).await.unwrap();
        let body = body.to_string();
        let request = format!(
            "POST /api/v1/export/event?service_id={} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            svc.id,
            svc.export_token,
            body.len()
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut received = vec![0; 64 * 1024];
        socket.read_exact(&mut received).await.unwrap();
        StalledExport { socket, received }
    }

    /// Reads the rest and returns the CSV, the chunked encoding undone.
    pub async fn finish(&mut self) -> String {
        self.socket.read_to_end(&mut self.received).await.unwrap();
        let text = &self.received;
        let head_end = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(text.starts_with(b"HTTP/1.1 200"));
        let mut rest = &text[head_end..];
        let mut csv = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            csv.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
        String::from_utf8(csv).unwrap()
    }

    /// Reads whatever else the server sends until it closes the connection
    /// (cleanly or with a reset), within `patience`; returns all bytes
    /// received, the first 64 KiB included.
    pub async fn read_until_closed(&mut self, patience: Duration) -> Vec<u8> {
        let mut buf = vec![0; 64 * 1024];
        let reading = async {
            loop {
                match self.socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.received.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(patience, reading)
            .await
            .expect("the server must close the stalled connection");
        std::mem::take(&mut self.received)
    }
}

/// Whether a chunked HTTP/1.1 response ends with its last chunk (`0`),
/// i.e. the transfer was complete.
pub fn ends_with_last_chunk(received: &[u8]) -> bool {
    received.ends_with(b"\r\n0\r\n\r\n")
}
