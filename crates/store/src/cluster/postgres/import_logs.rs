//! The replicas' import logs as PostgreSQL knows them
//! (`--cluster-import-log`, `cluster/mover.rs`): what lets a read on any
//! replica see the events every replica acknowledged.
//!
//! A replica with a log answers imports once they are in its own log, and
//! stores them in ClickHouse later. So that a read elsewhere cannot miss
//! them, each such replica has a row in `import_logs`:
//!
//! - `pending` is set (committed) before the replica answers the first
//!   import after a time it held nothing unmoved, and cleared only once
//!   everything it acknowledged is in ClickHouse. A replica whose row says
//!   `false` therefore holds no event acknowledged before that row was read.
//! - A read that finds pending replicas takes a number from the sequence
//!   `import_flush_requests` ([`Postgres::request_flush`]). A pending
//!   replica polls the sequence; when it has moved, it records the number
//!   it had read before the move began as `flushed`. Everything it
//!   acknowledged before the read asked is then in ClickHouse once
//!   `flushed` reaches the read's number ([`Postgres::unflushed`]).

use super::{pg_error, Postgres};
use crate::StoreError;

impl Postgres {
    /// Records whether replica `replica_id` holds acknowledged events not
    /// in ClickHouse yet (creating its row); with `flushed`, also that it
    /// moved everything acknowledged before flush request `flushed`.
    /// Durable on return.
    pub async fn set_import_log(
        &self,
        replica_id: &str,
        pending: bool,
        flushed: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO import_logs (replica_id, pending, flushed, updated_ms) \
                 VALUES ($1, $2, coalesce($3::bigint, 0), $4) \
                 ON CONFLICT (replica_id) DO UPDATE SET pending = excluded.pending, \
                 flushed = greatest(import_logs.flushed, coalesce($3::bigint, import_logs.flushed)), \
                 updated_ms = excluded.updated_ms",
                &[&replica_id, &pending, &flushed, &now_ms],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// The newest flush request any read made (0 before the first).
    pub async fn flush_requested(&self) -> Result<i64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM import_flush_requests",
                &[],
            )
            .await
            .map_err(pg_error)?;
        row.try_get(0).map_err(pg_error)
    }

    /// For a read: whether any replica has an import log at all (a row in
    /// `import_logs`), and, when one but `except` (the reader's own, which
    /// it syncs itself) holds unmoved events, a new flush request's number
    /// for [`Postgres::unflushed`].
    pub async fn request_flush(&self, except: &str) -> Result<(bool, Option<i64>), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) > 0, coalesce(bool_or(pending AND replica_id <> $1), false) FROM import_logs",
                &[&except],
            )
            .await
            .map_err(pg_error)?;
        let (any, pending): (bool, bool) = (row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?);
        if !pending {
            return Ok((any, None));
        }
        let row = client
            .query_one("SELECT nextval('import_flush_requests')", &[])
            .await
            .map_err(pg_error)?;
        Ok((any, Some(row.try_get(0).map_err(pg_error)?)))
    }

    /// Whether any replica has (had) an import log here.
    pub async fn any_import_log(&self) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT EXISTS (SELECT 1 FROM import_logs)", &[])
            .await
            .map_err(pg_error)?;
        row.try_get(0).map_err(pg_error)
    }

    /// Takes replica `replica_id`'s lock for as long as `client`'s session
    /// lasts: `false` when another running process holds it (two processes
    /// with one replica id, e.g. a copied `<log>.replica`, would clear each
    /// other's `pending`).
    pub async fn lock_replica(&self, client: &deadpool_postgres::Object, replica_id: &str) -> Result<bool, StoreError> {
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&super::schema::IMPORT_LOG_LOCK_NAMESPACE, &replica_id],
            )
            .await
            .map_err(pg_error)?;
        row.try_get(0).map_err(pg_error)
    }

    /// The replicas but `except` that still hold events acknowledged
    /// before flush request `request`.
    pub async fn unflushed(&self, request: i64, except: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT replica_id FROM import_logs WHERE pending AND flushed < $1 AND replica_id <> $2 \
                 ORDER BY replica_id",
                &[&request, &except],
            )
            .await
            .map_err(pg_error)?;
        rows.iter().map(|r| r.try_get(0).map_err(pg_error)).collect()
    }
}
