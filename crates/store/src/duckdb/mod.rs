//! The embedded default store: one DuckDB database file.
//!
//! Writes go through a single writer thread ([`writer`]) that groups
//! concurrent event imports into one commit; reads and exports run on
//! their own cloned connections, so an export never waits for imports and
//! sees only committed data. See [`schema`] for the table layout.

mod chunks;
mod event_ids;
mod export;
mod identity;
mod move_rows;
mod profiles;
mod schema;
mod stream;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use duckdb::{params, Connection, OptionalExt};
use fineport_contract::export::EventExportPlan;
use fineport_contract::import::{EventBatch, Identity};
use fineport_contract::profile::{Audience, AudienceFilter, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::{PropertyScope, Taxonomy, TaxonomyDoc};
use fineport_contract::types::PropertyType;
use fineport_contract::{ServiceId, Tz};
use tokio::sync::oneshot;

use self::chunks::Database;
pub use self::schema::all_events;
use self::schema::{Layout, Layouts, PropertyColumn};
use self::writer::{Exec, Job, WriterState};
pub use self::writer::{MovePolicy, BULK_EVENTS};
use crate::import_log::acker::{LogThread, Progress};
use crate::import_log::{ImportLog, LoggedBatch};
use crate::records::{ms_to_time, stored_service_id};
use crate::{
    Backlog, CatalogSnapshot, ExportStream, ExportSummary, InsertSummary, RequestLogEntry, Service, Store, StoreError,
    StoreErrorKind, TokenKind, TokenRecord,
};

/// Tuning for the embedded store.
#[derive(Debug, Clone)]
pub struct DuckDbOptions {
    /// DuckDB's threads (default: one less than the machine's cores, at
    /// least 1; see `default_threads`).
    pub threads: Option<usize>,
    /// DuckDB memory limit, e.g. `"2GB"`.
    pub memory_limit: Option<String>,
    /// WAL size that triggers a checkpoint. DuckDB's 16 MB default makes a
    /// busy import checkpoint every few seconds, and each checkpoint rewrites
    /// the growing event table's last row groups, so its cost grows with it.
    pub checkpoint_threshold: Option<String>,
    /// Cells (rows × columns) an event export sorts at a time; see
    /// `export.rs`. Smaller slices use less memory and cost more queries.
    pub export_slice_cells: u64,
    /// When acknowledged imports move from the import log into the tables
    /// (see `writer.rs`).
    pub import_moves: MovePolicy,
}

impl Default for DuckDbOptions {
    fn default() -> Self {
        DuckDbOptions {
            threads: None,
            memory_limit: Some("4GB".into()),
            checkpoint_threshold: Some("1GB".into()),
            export_slice_cells: export::DEFAULT_SLICE_CELLS,
            import_moves: MovePolicy {
                events: 8_000,
                idle: std::time::Duration::from_millis(50),
                commit_events: BULK_EVENTS,
            },
        }
    }
}

/// DuckDB's threads unless told: one less than the machine's cores, at
/// least 1. An event export's encoder runs beside DuckDB's query on a
/// core of its own; with DuckDB on every core the two compete and the
/// querying thread spins in DuckDB's scheduler while it waits for the
/// others (1M heavy events on 2 cores: the 30-day export 2.77 s with one
/// DuckDB thread against 3.16 s with two, its own memory growth +12
/// against +87 MiB, the import the same; docs/benchmarks.md, item 11).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

pub struct DuckDbStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The connection reads clone from (DuckDB connections are not `Sync`).
    reader: Mutex<Connection>,
    /// The log thread in front of the writer thread.
    writer: LogThread<Exec>,
    layouts: Layouts,
    export_slice_cells: u64,
    /// The imports acknowledged and not yet moved ([`Store::backlog`]).
    progress: Arc<Progress>,
    /// Last: closed after the connections above (and the writer's, which
    /// `drop` waits for).
    database: Database,
}

impl DuckDbStore {
    /// Opens (creating if needed) the database file at `path`, with its
    /// import log beside it (`<path>.import-log`), and first stores
    /// whatever the log still holds from before a crash.
    pub fn open(path: &Path, options: &DuckDbOptions) -> Result<DuckDbStore, StoreError> {
        let db = Database::open(Some(path))?;
        let mut log_path = path.as_os_str().to_owned();
        log_path.push(".import-log");
        Self::from_database(db, options, Some(ImportLog::open(Path::new(&log_path))?))
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<DuckDbStore, StoreError> {
        Self::from_database(Database::open(None)?, &DuckDbOptions::default(), None)
    }

    fn from_database(
        (database, conn): (Database, Connection),
        options: &DuckDbOptions,
        log: Option<(ImportLog, Vec<LoggedBatch>)>,
    ) -> Result<DuckDbStore, StoreError> {
        let threads = options.threads.unwrap_or_else(default_threads).max(1);
        conn.execute_batch(&format!("SET threads = {threads}"))?;
        tracing::info!(threads, "DuckDB's threads");
        for (setting, value) in [
            ("memory_limit", &options.memory_limit),
            ("checkpoint_threshold", &options.checkpoint_threshold),
        ] {
            if let Some(v) = value {
                conn.execute_batch(&format!("SET {setting} = '{}'", v.replace('\'', "")))?;
            }
        }
        conn.execute_batch(schema::META_DDL)?;
        let loaded = schema::load_layouts(&conn)?;
        let services = {
            let mut stmt = conn.prepare("SELECT service_id FROM services")?;
            let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
            ids.map(|id| {
                let id = id?;
                ServiceId::parse(&id)
                    .map_err(|_| StoreError::internal(format!("a stored service id is not valid: {id:?}")))
            })
            .collect::<Result<Vec<_>, StoreError>>()?
        };
        schema::add_missing_late_tables(&conn, &services, &loaded)?;
        let layouts: Layouts = Arc::new(std::sync::RwLock::new(loaded));
        let identities = identity::Identities::load(&conn)?;
        let writer_conn = conn.try_clone()?;
        move_rows::register(&writer_conn)?;
        let mut state = WriterState::new(writer_conn, layouts.clone(), identities, options.import_moves);
        let log = match log {
            Some((mut log, batches)) => {
                state.replay(&mut log, batches)?;
                Some(log)
            }
            None => None,
        };
        let progress = state.progress.clone();
        let writer = writer::spawn(state, log)?;
        Ok(DuckDbStore {
            inner: Arc::new(Inner {
                reader: Mutex::new(conn),
                writer,
                layouts,
                export_slice_cells: options.export_slice_cells,
                progress,
                database,
            }),
        })
    }

    /// Changes DuckDB's memory limit (e.g. `"4GB"`) while the store runs;
    /// what `--duckdb-memory-limit` sets at start. Errors: `Query` for a
    /// value DuckDB refuses.
    pub fn set_memory_limit(&self, limit: &str) -> Result<(), StoreError> {
        self.connection()?
            .execute_batch(&format!("SET memory_limit = '{}'", limit.replace('\'', "")))?;
        Ok(())
    }

    /// Waits until every acknowledged import is in the tables, so that a
    /// read sees it. A `Query` error when acknowledged batches of
    /// `service_id` cannot be moved (DuckDB's memory limit, a full disk): a
    /// read must then fail rather than miss them. Blocking: call it off the
    /// async runtime.
    fn sync_imports(&self, service_id: &ServiceId) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Sync {
            service_id: service_id.to_owned(),
            reply,
        })?;
        rx.blocking_recv()
            .map_err(|_| StoreError::internal("the writer thread stopped"))?
    }

    /// A handle on the same database, for an export's thread to own.
    fn handle(&self) -> DuckDbStore {
        DuckDbStore {
            inner: self.inner.clone(),
        }
    }

    /// An event export into `sink`. Blocking: runs on the export's thread.
    fn run_event_export(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
        sink: &mut stream::Sink,
    ) -> Result<ExportSummary, StoreError> {
        self.sync_imports(service_id)?;
        let layout = self
            .inner
            .layouts
            .read()
            .map_err(|_| StoreError::internal("layout lock poisoned"))?
            .get(service_id.as_str())
            .cloned()
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, format!("no event table for {service_id}")))?;
        let settings = export::Settings {
            slice_cells: self.inner.export_slice_cells,
        };
        export::run(
            &self.inner.database,
            &layout,
            service_id,
            timezone,
            plan,
            sink,
            settings,
        )
    }

    /// A user-profile export into `sink`. Blocking, like [`Self::run_event_export`].
    fn run_profile_export(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
        sink: &mut stream::Sink,
    ) -> Result<ExportSummary, StoreError> {
        self.sync_imports(service_id)?;
        let conn = self.connection()?;
        profiles::export(&conn, service_id, timezone, plan, audience, sink)
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        let reader = self
            .inner
            .reader
            .lock()
            .map_err(|_| StoreError::internal("reader lock poisoned"))?;
        Ok(reader.try_clone()?)
    }

    /// Runs a read on its own connection, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.connection()?;
        tokio::task::spawn_blocking(move || f(&conn))
            .await
            .map_err(|e| StoreError::internal(format!("read task failed: {e}")))?
    }

    /// Runs a write in its own transaction on the writer thread.
    async fn write(
        &self,
        work: impl FnOnce(&mut WriterState) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Other(Exec {
            work: Box::new(work),
            reply,
        }))?;
        rx.await
            .map_err(|_| StoreError::internal("the writer thread stopped"))?
    }

    /// Runs a write that answers a value, in its own transaction.
    async fn write_with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.write(move |state| {
            let value = work(state)?;
            let _ = tx.send(value);
            Ok(())
        })
        .await?;
        rx.await
            .map_err(|_| StoreError::internal("the writer dropped its answer"))
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.inner.writer.send(job)
    }
}

impl Drop for Inner {
    /// Closes the database deterministically: the writer thread finishes
    /// what it was given and drops its connection before this returns, so
    /// the file can be opened again at once.
    fn drop(&mut self) {
        self.writer.close();
    }
}

/// Registers `additions` in the open transaction: taxonomy rows, and an
/// event-table column per event or item property.
fn register_in(state: &mut WriterState, service_id: &ServiceId, additions: &TaxonomyDoc) -> Result<(), StoreError> {
    let mut layout: Layout = (*state.layout(service_id)).clone();
    for name in &additions.events {
        state.conn.execute(
            "INSERT INTO taxonomy_events VALUES (?, ?)",
            params![service_id.as_str(), name],
        )?;
    }
    for (scope, def) in additions.properties() {
        if def.ty == PropertyType::Items {
            return Err(StoreError::internal(format!(
                "{:?}: df_items is never a column",
                def.name
            )));
        }
        let col = if scope == PropertyScope::User {
            None
        } else {
            let column = PropertyColumn {
                col: layout.next_column_name(),
                scope,
                name: def.name.clone(),
                ty: def.ty,
            };
            schema::add_column(&state.conn, service_id, &column)?;
            let col = column.col.clone();
            layout.push(column);
            Some(col)
        };
        state.conn.execute(
            "INSERT INTO taxonomy_properties VALUES (?, ?, ?, ?, ?)",
            params![service_id.as_str(), scope.as_str(), def.name, def.ty.as_str(), col],
        )?;
    }
    state.set_layout(service_id, layout);
    Ok(())
}

fn save_tokens_in(conn: &Connection, tokens: &[TokenRecord]) -> Result<(), StoreError> {
    for t in tokens {
        conn.execute(
            "INSERT OR REPLACE INTO tokens \
             (token_id, service_id, kind, hash, created_ms, by_reissue, valid_until_ms, revoked, reason) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                t.token_id,
                t.service_id.as_str(),
                t.kind.as_str(),
                t.hash,
                t.created_at.timestamp_millis(),
                t.by_reissue,
                t.valid_until.map(|v| v.timestamp_millis()),
                t.revoked,
                t.reason
            ],
        )?;
    }
    Ok(())
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::internal(format!("stored service settings: {e}"))
}

#[async_trait]
impl Store for DuckDbStore {
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        self.read(|conn| {
            let mut snapshot = CatalogSnapshot::default();
            let mut stmt = conn.prepare("SELECT doc FROM services ORDER BY service_id")?;
            for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
                snapshot.services.push(serde_json::from_str(&doc?).map_err(json_error)?);
            }
            let mut stmt = conn.prepare(
                "SELECT token_id, service_id, kind, hash, created_ms, by_reissue, valid_until_ms, revoked, reason \
                 FROM tokens ORDER BY created_ms",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, bool>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, bool>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })?;
            for row in rows {
                let (token_id, service_id, kind, hash, created, by_reissue, until, revoked, reason) = row?;
                let kind = TokenKind::parse(&kind)
                    .ok_or_else(|| StoreError::internal(format!("unknown token kind {kind:?}")))?;
                snapshot.tokens.push(TokenRecord {
                    token_id,
                    service_id: stored_service_id(service_id)?,
                    kind,
                    hash,
                    created_at: ms_to_time(created, "a token's creation")?,
                    by_reissue,
                    valid_until: until
                        .map(|ms| ms_to_time(ms, "a token's end of validity"))
                        .transpose()?,
                    revoked,
                    reason,
                });
            }
            let mut stmt = conn.prepare("SELECT service_id, name FROM taxonomy_events")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (service_id, name) = row?;
                snapshot
                    .taxonomies
                    .entry(stored_service_id(service_id)?)
                    .or_default()
                    .events
                    .insert(name);
            }
            let mut stmt = conn.prepare("SELECT service_id, scope, name, type FROM taxonomy_properties")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (service_id, scope, name, ty) = row?;
                let scope = schema::parse_scope(&scope)?;
                let ty = PropertyType::parse(&ty)
                    .ok_or_else(|| StoreError::internal(format!("unknown stored type {ty:?}")))?;
                let taxonomy = snapshot.taxonomies.entry(stored_service_id(service_id)?).or_default();
                match scope {
                    PropertyScope::Event => taxonomy.event_properties.insert(name, ty),
                    PropertyScope::Item => taxonomy.item_properties.insert(name, ty),
                    PropertyScope::User => taxonomy.user_properties.insert(name, ty),
                };
            }
            let mut stmt = conn.prepare("SELECT service_id, doc FROM audiences ORDER BY service_id, audience_id")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (service_id, doc) = row?;
                snapshot.audiences.push((
                    stored_service_id(service_id)?,
                    serde_json::from_str(&doc).map_err(json_error)?,
                ));
            }
            Ok(snapshot)
        })
        .await
    }

    async fn create_service(
        &self,
        service: &Service,
        tokens: &[TokenRecord],
        taxonomy: &Taxonomy,
    ) -> Result<(), StoreError> {
        let service = service.clone();
        let tokens = tokens.to_vec();
        let taxonomy = taxonomy.to_doc();
        self.write(move |state| {
            let exists: Option<String> = state
                .conn
                .query_row(
                    "SELECT service_id FROM services WHERE service_id = ?",
                    [service.service_id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    format!("service {} exists", service.service_id),
                ));
            }
            let doc = serde_json::to_string(&service).map_err(json_error)?;
            state.conn.execute(
                "INSERT INTO services VALUES (?, ?)",
                params![service.service_id.as_str(), doc],
            )?;
            save_tokens_in(&state.conn, &tokens)?;
            schema::create_event_table(&state.conn, &service.service_id)?;
            state.set_layout(&service.service_id, Layout::default());
            register_in(state, &service.service_id, &taxonomy)
        })
        .await
    }

    async fn update_service(&self, service: &Service) -> Result<(), StoreError> {
        let service = service.clone();
        self.write(move |state| {
            let doc = serde_json::to_string(&service).map_err(json_error)?;
            let n = state.conn.execute(
                "UPDATE services SET doc = ? WHERE service_id = ?",
                params![doc, service.service_id.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::new(
                    StoreErrorKind::NotFound,
                    format!("no service {}", service.service_id),
                ));
            }
            Ok(())
        })
        .await
    }

    async fn save_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        let tokens = tokens.to_vec();
        self.write(move |state| save_tokens_in(&state.conn, &tokens)).await
    }

    async fn register(&self, service_id: &ServiceId, additions: &TaxonomyDoc) -> Result<(), StoreError> {
        if additions.is_empty() {
            return Ok(());
        }
        let service_id = service_id.to_owned();
        let additions = additions.clone();
        self.write(move |state| register_in(state, &service_id, &additions))
            .await
    }

    async fn insert_events(
        &self,
        service_id: &ServiceId,
        batch: EventBatch,
        received_at_ms: i64,
    ) -> Result<InsertSummary, StoreError> {
        if crate::identity::may_conflict(&batch.identity) {
            // Checked and stored in one writer transaction, answered after
            // its commit: a conflict must be refused, never acknowledged.
            let batch = LoggedBatch {
                service_id: service_id.to_owned(),
                received_at_ms,
                batch,
            };
            return self.write_with(move |state| writer::insert_now(state, &batch)).await;
        }
        let (job, answer) = Job::events(service_id, batch, received_at_ms);
        self.send(job)?;
        answer
            .await
            .map_err(|_| StoreError::internal("the writer thread stopped"))?
    }

    /// On a blocking thread behind the stream (see `stream.rs`): first the
    /// acknowledged imports are moved in (a `Query` error if they cannot
    /// be), then the sliced export of `export.rs` runs.
    async fn export_events(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &EventExportPlan,
    ) -> Result<ExportStream, StoreError> {
        let (store, service_id, plan) = (self.handle(), service_id.to_owned(), plan.clone());
        Ok(stream::spawn(move |sink| {
            store.run_event_export(&service_id, timezone, &plan, sink)
        }))
    }
    async fn upsert_identity(&self, service_id: &ServiceId, identity: Identity) -> Result<String, StoreError> {
        let service_id = service_id.to_owned();
        self.write_with(move |state| profiles::upsert_identity(state, &service_id, &identity))
            .await
    }

    async fn delete_profile(&self, service_id: &ServiceId, external_id: &str) -> Result<bool, StoreError> {
        let (service_id, external_id) = (service_id.to_owned(), external_id.to_owned());
        self.write_with(move |state| profiles::delete_profile(state, &service_id, &external_id))
            .await
    }

    async fn update_profiles(&self, service_id: &ServiceId, updates: Vec<ProfileUpdate>) -> Result<(), StoreError> {
        let service_id = service_id.to_owned();
        self.write(move |state| profiles::update_profiles(state, &service_id, &updates))
            .await
    }

    /// On a blocking thread behind the stream, like [`Store::export_events`].
    async fn export_profiles(
        &self,
        service_id: &ServiceId,
        timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
    ) -> Result<ExportStream, StoreError> {
        let (store, service_id, plan) = (self.handle(), service_id.to_owned(), plan.clone());
        let audience = audience.cloned();
        Ok(stream::spawn(move |sink| {
            store.run_profile_export(&service_id, timezone, &plan, audience.as_ref(), sink)
        }))
    }

    async fn save_audience(&self, service_id: &ServiceId, audience: &Audience) -> Result<(), StoreError> {
        let (service_id, audience) = (service_id.to_owned(), audience.clone());
        self.write(move |state| {
            let doc = serde_json::to_string(&audience).map_err(json_error)?;
            state.conn.execute(
                "INSERT OR REPLACE INTO audiences VALUES (?, ?, ?)",
                params![service_id.as_str(), audience.id, doc],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_audience(&self, service_id: &ServiceId, audience_id: &str) -> Result<bool, StoreError> {
        let (service_id, audience_id) = (service_id.to_owned(), audience_id.to_owned());
        self.write_with(move |state| {
            let n = state.conn.execute(
                "DELETE FROM audiences WHERE service_id = ? AND audience_id = ?",
                params![service_id.as_str(), audience_id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn append_request_log(&self, entries: Vec<RequestLogEntry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // On a connection of its own, not the writer's: the log depends on
        // no other write, and an `Exec` on the writer would first commit
        // the open move transaction (twice a second under load), which
        // would then never hold the row group that makes it a bulk append
        // (`writer::BULK_EVENTS`).
        self.read(move |conn| {
            let mut app = conn.appender("request_log")?;
            for e in &entries {
                app.append_row(params![
                    e.time.timestamp_millis(),
                    e.service_id,
                    e.endpoint,
                    e.status,
                    e.message,
                    e.ip,
                    e.user_agent,
                    e.token_id,
                    e.rows.map(|v| v as i64),
                    e.bytes.map(|v| v as i64),
                    e.duration_ms as i64
                ])?;
            }
            app.flush()?;
            Ok(())
        })
        .await
    }

    async fn recent_requests(
        &self,
        service_id: &ServiceId,
        limit: usize,
        outcome: Option<&str>,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        let service_id = service_id.to_string();
        let outcome = outcome.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT time_ms, service_id, endpoint, status, message, ip, user_agent, token_id, rows, bytes, duration_ms \
                 FROM request_log WHERE service_id = ? AND (?::VARCHAR IS NULL OR message = ?) \
                 ORDER BY time_ms DESC, rowid DESC LIMIT ?",
            )?;
            let rows = stmt.query_map(params![service_id, outcome, outcome, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, RequestLogEntry {
                    time: DateTime::<Utc>::UNIX_EPOCH,
                    service_id: r.get(1)?,
                    endpoint: r.get(2)?,
                    status: r.get::<_, i32>(3)? as u16,
                    message: r.get(4)?,
                    ip: r.get(5)?,
                    user_agent: r.get(6)?,
                    token_id: r.get(7)?,
                    rows: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                    bytes: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
                    duration_ms: r.get::<_, i64>(10)? as u64,
                }))
            })?;
            let mut entries = Vec::new();
            for row in rows {
                let (ms, mut entry) = row?;
                entry.time = ms_to_time(ms, "a request log entry")?;
                entries.push(entry);
            }
            Ok(entries)
        })
        .await
    }

    async fn request_sums(
        &self,
        service_id: &ServiceId,
        query: &crate::RequestSumsQuery,
    ) -> Result<Vec<crate::BucketSums>, StoreError> {
        query.check()?;
        // The bounds are numbers and the endpoints quoted literals: no
        // request text reaches the SQL.
        let buckets: Vec<String> = query
            .bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| format!("({i}, {}, {})", w[0], w[1]))
            .collect();
        let list = |names: &[String]| {
            let quoted: Vec<String> = names.iter().map(|n| format!("'{}'", n.replace('\'', "''"))).collect();
            if quoted.is_empty() {
                "NULL".to_owned()
            } else {
                quoted.join(", ")
            }
        };
        let sql = format!(
            "WITH b(i, lo, hi) AS (VALUES {}) \
             SELECT b.i, count(r.time_ms) FILTER (WHERE r.endpoint IN ({})), \
             coalesce(sum(r.rows) FILTER (WHERE r.endpoint IN ({}) AND r.message = 'ok'), 0)::BIGINT \
             FROM b LEFT JOIN request_log r ON r.service_id = ? AND r.time_ms >= b.lo AND r.time_ms < b.hi \
             GROUP BY b.i ORDER BY b.i",
            buckets.join(", "),
            list(&query.counted),
            list(&query.rows_of),
        );
        let service_id = service_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params![service_id], |r| {
                Ok(crate::BucketSums {
                    requests: r.get::<_, i64>(1)?.max(0) as u64,
                    rows: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(conn
                .query_row("SELECT value FROM settings WHERE key = ?", [key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |state| {
            state
                .conn
                .execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", params![key, value])?;
            Ok(())
        })
        .await
    }

    fn backlog(&self) -> Option<Backlog> {
        Some(self.inner.progress.backlog())
    }

    async fn engine_memory(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT tag, memory_usage_bytes::UBIGINT FROM duckdb_memory() ORDER BY tag")?;
            let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExportPart;
    use fineport_contract::export::EventExportRequest;
    use fineport_contract::import::EventInput;
    use futures::StreamExt;

    /// 2026-11-25 (UTC), the day the move tests import into; received a
    /// day later, so no time is corrected.
    const DAY_MS: i64 = 1_795_564_800_000;

    /// One user's `df_login` events, `(event_log_id, time in ms)` each.
    fn logins(events: impl IntoIterator<Item = (u128, i64)>) -> EventBatch {
        EventBatch {
            identity: Identity {
                external_id: Some("u1".into()),
                ..Default::default()
            },
            events: events
                .into_iter()
                .map(|(id, at_ms)| EventInput {
                    event_log_id: fineport_contract::Uuid::from_u128(id),
                    event_name: "df_login".into(),
                    event_datetime_ms: at_ms,
                    properties: Default::default(),
                    items: Vec::new(),
                })
                .collect(),
            registrations: Default::default(),
        }
    }

    /// The rows `table` holds (committed; a read does not commit the open move).
    async fn rows_in(store: &DuckDbStore, table: &'static str) -> i64 {
        store
            .read(move |conn| Ok(conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap()
    }

    /// Service `shop`'s export of 2026-11-25 (it commits what is open
    /// first): the rows it counted at its end, and the CSV.
    async fn export_day(store: &DuckDbStore, taxonomy: &Taxonomy) -> (Option<u64>, String) {
        let request =
            serde_json::json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
        let plan = EventExportRequest::parse(&request).unwrap().plan(taxonomy).unwrap();
        let service_id = ServiceId::parse("shop").unwrap();
        let mut stream = store.export_events(&service_id, Tz::UTC, &plan).await.unwrap();
        let (mut rows, mut csv) = (None, Vec::new());
        while let Some(part) = stream.next().await {
            match part.unwrap() {
                ExportPart::Chunk(bytes) => csv.extend_from_slice(&bytes),
                ExportPart::End(summary) => rows = Some(summary.rows),
            }
        }
        (rows, String::from_utf8(csv).unwrap())
    }

    /// An event export hands its first rows on alone, before any later
    /// row has been read or 64 KiB are full: the range's first minute when
    /// it has rows (queried while the histogram runs), else the first
    /// minute with rows. The first byte waits for one minute.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_export_hands_on_its_first_minute_at_once() {
        let store = DuckDbStore::open_in_memory().unwrap();
        let service_id = ServiceId::parse("shop").unwrap();
        let taxonomy = Taxonomy::standard();
        let service = crate::records::utc_test_service(&service_id);
        store.create_service(&service, &[], &taxonomy).await.unwrap();
        // 2026-11-25 (UTC): 00:00:30, 10:00:05, 10:01:10; 2026-11-26:
        // 10:00:05, 10:00:30, 10:05:00 (seconds since 2026-11-25).
        let day_ms = 1_795_564_800_000;
        let seconds = [30, 36_005, 36_070, 122_405, 122_430, 122_700];
        let events = (0u128..)
            .zip(seconds)
            .map(|(n, second)| EventInput {
                event_log_id: fineport_contract::Uuid::from_u128(n + 1),
                event_name: "df_login".into(),
                event_datetime_ms: day_ms + second * 1000,
                properties: Default::default(),
                items: Vec::new(),
            })
            .collect();
        let batch = EventBatch {
            identity: Identity {
                external_id: Some("u1".into()),
                ..Default::default()
            },
            events,
            registrations: Default::default(),
        };
        store
            .insert_events(&service_id, batch, day_ms + 200_000_000)
            .await
            .unwrap();
        // The lines of each chunk an export of `day` hands on.
        let export = |day: &'static str| {
            let (store, service_id, taxonomy) = (&store, &service_id, &taxonomy);
            async move {
                let request = serde_json::json!({"events_condition_type": "all", "from_date": day, "to_date": day});
                let plan = EventExportRequest::parse(&request).unwrap().plan(taxonomy).unwrap();
                let mut stream = store.export_events(service_id, Tz::UTC, &plan).await.unwrap();
                let (mut chunks, mut rows) = (Vec::new(), None);
                while let Some(part) = stream.next().await {
                    match part.unwrap() {
                        ExportPart::Chunk(chunk) => {
                            let text = String::from_utf8(chunk.to_vec()).unwrap();
                            chunks.push(text.lines().map(str::to_owned).collect::<Vec<_>>());
                        }
                        ExportPart::End(summary) => rows = Some(summary.rows),
                    }
                }
                assert_eq!(rows, Some(3));
                chunks
            }
        };
        let times = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .filter_map(|l| l.split(',').nth(1))
                .filter(|t| t.starts_with("2026"))
                .map(|t| t[11..19].to_owned())
                .collect()
        };
        // The range's first minute has a row: it goes out with the header.
        let chunks = export("2026-11-25").await;
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert!(chunks[0][0].starts_with("df_api_version,df_correction_datetime"));
        assert_eq!(times(&chunks[0]), ["00:00:30"]);
        assert_eq!(times(&chunks[1]), ["10:00:05", "10:01:10"]);
        // It has none: the first minute with rows goes out with the header.
        let chunks = export("2026-11-26").await;
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(times(&chunks[0]), ["10:00:05", "10:00:30"]);
        assert_eq!(times(&chunks[1]), ["10:05:00"]);
    }

    /// Moves share one transaction until it holds `commit_events`: its
    /// rows are invisible until then, an event repeated by a later move of
    /// the same transaction is stored once, a read commits what is open,
    /// and after a restart stored events sent again are skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn moves_share_one_transaction_until_it_holds_a_bulk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulk.duckdb");
        let options = DuckDbOptions {
            import_moves: MovePolicy {
                events: 10,
                idle: std::time::Duration::from_secs(3600),
                commit_events: 50,
            },
            ..Default::default()
        };
        let service_id = ServiceId::parse("shop").unwrap();
        let taxonomy = Taxonomy::standard();
        let day_ms = DAY_MS;
        let batch = |ids: std::ops::Range<u128>| logins(ids.map(|n| (n, day_ms + n as i64 * 1000)));
        {
            let store = DuckDbStore::open(&path, &options).unwrap();
            store
                .create_service(&crate::records::utc_test_service(&service_id), &[], &taxonomy)
                .await
                .unwrap();
            // Ten batches of 5 (the sixth repeats the second), moved 10
            // events at a time into one transaction, committed at 50.
            for b in 0..10u128 {
                let first = if b == 5 { 5 } else { b * 5 };
                store
                    .insert_events(&service_id, batch(first..first + 5), day_ms + 86_400_000)
                    .await
                    .unwrap();
            }
            // Two more: a move into the next transaction, left open.
            for first in [50u128, 55] {
                store
                    .insert_events(&service_id, batch(first..first + 5), day_ms + 86_400_000)
                    .await
                    .unwrap();
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while rows_in(&store, "events_shop").await != 45 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the table never held just the first transaction's 45 rows"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // The commit's rows are visible a moment before the writer
            // counts them as moved.
            while store.backlog().unwrap().events != 10 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the last two batches should wait in the open transaction, backlog {:?}",
                    store.backlog().unwrap()
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert_eq!(
                rows_in(&store, "events_shop").await,
                45,
                "an open move is not committed before 50 events"
            );
            // A read first commits everything acknowledged.
            assert_eq!(export_day(&store, &taxonomy).await.0, Some(55));
            assert_eq!(store.backlog().unwrap().events, 0);
        }
        let store = DuckDbStore::open(&path, &options).unwrap();
        store
            .insert_events(&service_id, batch(50..65), day_ms + 86_400_000)
            .await
            .unwrap();
        assert_eq!(export_day(&store, &taxonomy).await.0, Some(60));
        assert_eq!(
            rows_in(&store, "events_shop").await,
            60,
            "after a restart the repeats are skipped, the new ones stored"
        );
    }

    /// Events more than an hour behind the newest stored one go to the
    /// late-event table; an export reads both in time order; their ids are
    /// remembered across a restart; and a file from before late tables
    /// gets one when opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn late_events_have_their_own_table_and_export_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.duckdb");
        let service_id = ServiceId::parse("shop").unwrap();
        let taxonomy = Taxonomy::standard();
        let (day_ms, hour) = (DAY_MS, 3_600_000);
        let batch = |events: &[(u128, i64)]| logins(events.iter().copied());
        let received = day_ms + 24 * hour;
        // The export's correction times, in the order written.
        async fn exported(store: &DuckDbStore, taxonomy: &Taxonomy) -> Vec<String> {
            let (_, text) = export_day(store, taxonomy).await;
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap().split(',').collect();
            let at = header.iter().position(|h| *h == "df_correction_datetime").unwrap();
            lines.map(|l| l.split(',').nth(at).unwrap().to_string()).collect()
        }
        let on_time = [(1, day_ms + 10 * hour), (2, day_ms + 11 * hour)];
        let late = [(3, day_ms + 2 * hour), (4, day_ms + 3 * hour)];
        let within_the_hour = [(5, day_ms + 10 * hour + hour / 2)];
        {
            let store = DuckDbStore::open(&path, &DuckDbOptions::default()).unwrap();
            store
                .create_service(&crate::records::utc_test_service(&service_id), &[], &taxonomy)
                .await
                .unwrap();
            for events in [&on_time[..], &late, &within_the_hour] {
                store.insert_events(&service_id, batch(events), received).await.unwrap();
            }
            let times = exported(&store, &taxonomy).await;
            assert_eq!(times.len(), 5);
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order: {times:?}");
            assert_eq!(rows_in(&store, "events_shop").await, 3);
            assert_eq!(
                rows_in(&store, "late_events_shop").await,
                2,
                "two hours and more behind is late"
            );
        }
        {
            // After a restart the late events' ids are known: a resend is skipped.
            let store = DuckDbStore::open(&path, &DuckDbOptions::default()).unwrap();
            store.insert_events(&service_id, batch(&late), received).await.unwrap();
            assert_eq!(exported(&store, &taxonomy).await.len(), 5);
            assert_eq!(rows_in(&store, "late_events_shop").await, 2);
        }
        // A file from before late tables: its late events are in the main table.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("INSERT INTO events_shop SELECT * FROM late_events_shop; DROP TABLE late_events_shop;")
                .unwrap();
        }
        let store = DuckDbStore::open(&path, &DuckDbOptions::default()).unwrap();
        assert_eq!(rows_in(&store, "late_events_shop").await, 0);
        store
            .insert_events(&service_id, batch(&[(6, day_ms + hour)]), received)
            .await
            .unwrap();
        let times = exported(&store, &taxonomy).await;
        assert_eq!(times.len(), 6);
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order: {times:?}");
        assert_eq!(rows_in(&store, "late_events_shop").await, 1);
    }

    /// A database file made before tokens kept a reason (no `reason`
    /// column) opens: the column is added, its tokens read without one,
    /// and a reason saved afterwards survives a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_from_before_token_reasons_opens_and_keeps_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.duckdb");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE tokens (
                    token_id VARCHAR PRIMARY KEY, service_id VARCHAR NOT NULL, kind VARCHAR NOT NULL,
                    hash VARCHAR NOT NULL, created_ms BIGINT NOT NULL, by_reissue BOOLEAN NOT NULL,
                    valid_until_ms BIGINT, revoked BOOLEAN NOT NULL);
                 INSERT INTO tokens VALUES ('old', 'shop', 'export', 'hash-old', 1000, false, NULL, false);",
            )
            .unwrap();
        }
        let token = |id: &str, ms: i64, reason: Option<&str>| TokenRecord {
            token_id: id.into(),
            service_id: ServiceId::parse("shop").unwrap(),
            kind: TokenKind::Export,
            hash: format!("hash-{id}"),
            created_at: ms_to_time(ms, "test").unwrap(),
            by_reissue: false,
            valid_until: None,
            revoked: false,
            reason: reason.map(str::to_owned),
        };
        let store = DuckDbStore::open(&path, &DuckDbOptions::default()).unwrap();
        assert_eq!(
            store.load_catalog().await.unwrap().tokens,
            vec![token("old", 1000, None)]
        );
        store
            .save_tokens(&[token("new", 2000, Some("rotated by policy"))])
            .await
            .unwrap();
        drop(store);
        let store = DuckDbStore::open(&path, &DuckDbOptions::default()).unwrap();
        assert_eq!(
            store.load_catalog().await.unwrap().tokens,
            vec![token("old", 1000, None), token("new", 2000, Some("rotated by policy"))]
        );
    }
}
