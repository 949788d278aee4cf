//! What the workspace's tests need to find the test cluster, in one place:
//! the store's own tests and the server's behaviour suite both call
//! [`TestCluster::from_env`]. Never used by the binary.
//!
//! Tests that need the cluster find it by URL: `FINEPORT_TEST_CLICKHOUSE_URL`
//! (the HTTP URL of every shard, comma-separated) and
//! `FINEPORT_TEST_POSTGRES_URL` (a PostgreSQL URL whose user may create
//! databases); `FINEPORT_TEST_REDIS_URL` for the shared limits.
//! `scripts/cluster start` prints all three. Unset, a test says it was
//! skipped; unset under `CI=true`, it fails, so CI cannot go green without
//! the cluster.

use crate::cluster::clickhouse::ClickHouseOptions;
use crate::cluster::ClusterOptions;

/// The shards' HTTP URLs, comma-separated.
pub const CLICKHOUSE_VAR: &str = "FINEPORT_TEST_CLICKHOUSE_URL";
/// A PostgreSQL URL whose user may create databases.
pub const POSTGRES_VAR: &str = "FINEPORT_TEST_POSTGRES_URL";
/// A Redis URL (`redis://127.0.0.1:56379`); each test uses keys of its own.
pub const REDIS_VAR: &str = "FINEPORT_TEST_REDIS_URL";

/// The value of `var`, the URL of a service `test` needs. Unset or empty:
/// `None` after printing that `test` was skipped, or a panic when
/// `CI=true` (CI must never go green without the service).
pub fn service_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {var} must be set under CI=true (scripts/cluster start prints it)")
        }
        _ => {
            eprintln!("{test}: skipped: {var} unset (scripts/cluster start prints it)");
            None
        }
    }
}

/// The cluster named by the environment.
#[derive(Debug, Clone)]
pub struct TestCluster {
    pub clickhouse_urls: Vec<String>,
    pub postgres_url: String,
}

impl TestCluster {
    /// The cluster from `FINEPORT_TEST_CLICKHOUSE_URL` and
    /// `FINEPORT_TEST_POSTGRES_URL`. Without them: `None` after printing
    /// that `test` was skipped, or a panic when `CI=true`.
    pub fn from_env(test: &str) -> Option<TestCluster> {
        let clickhouse = service_url(CLICKHOUSE_VAR, test)?;
        let postgres_url = service_url(POSTGRES_VAR, test)?;
        Some(TestCluster {
            clickhouse_urls: clickhouse.split(',').map(|s| s.trim().to_owned()).collect(),
            postgres_url,
        })
    }

    /// A unique database name for one test: `fp_test_<32 hex digits>`.
    pub fn database_name() -> String {
        format!("fp_test_{}", fineport_contract::Uuid::new_v4().simple())
    }

    /// Options for a store on databases no other test uses: a new
    /// PostgreSQL database (created here) and a new ClickHouse database (the
    /// store creates it on every shard when it opens).
    pub async fn fresh_databases(&self) -> ClusterOptions {
        let name = Self::database_name();
        let postgres_url = crate::cluster::postgres::create_database(&self.postgres_url, &name)
            .await
            .unwrap_or_else(|e| panic!("create PostgreSQL database {name}: {e}"));
        ClusterOptions::new(
            ClickHouseOptions {
                urls: self.clickhouse_urls.clone(),
                database: name,
                ..ClickHouseOptions::default()
            },
            postgres_url,
        )
    }

    /// Drops what [`TestCluster::fresh_databases`] made for `options`, on
    /// PostgreSQL and on every shard; best effort, on a runtime of its own,
    /// so that a test's `Drop` can call it.
    pub fn drop_databases(&self, options: &ClusterOptions) {
        let (server_url, name) = (self.postgres_url.clone(), options.clickhouse.database.clone());
        let shards = self.clickhouse_urls.clone();
        let dropping = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            let _ = runtime.block_on(crate::cluster::drop_databases(&shards, &server_url, &name));
        });
        let _ = dropping.join();
    }
}
