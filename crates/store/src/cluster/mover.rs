//! Cluster mode's import log (`--cluster-import-log`): imports answered
//! once durable in this replica's own log, stored in ClickHouse behind the
//! answers in large INSERTs.
//!
//! Without it, each import waits for a synchronous INSERT on every shard,
//! and an INSERT holds what arrived while the previous one ran: a few
//! hundred rows with a few clients, which ClickHouse 18.16 takes ~13 ms to
//! write and stores at ~25,000 rows per CPU-second (docs/benchmarks.md,
//! item 15). With it, the same log thread as DuckDB's
//! ([`crate::import_log::acker`]) appends, syncs and answers, and the
//! *mover* thread here resolves the identities of many requests in one
//! PostgreSQL transaction and sends their rows as one INSERT of
//! [`ImportLogOptions::move_events`] or more.
//!
//! What an answer then promises is this replica's disk, until the move.
//! So that a read on *any* replica sees every acknowledged event, the
//! replica announces in PostgreSQL that it holds unmoved events before it
//! answers them, and moves when a read elsewhere asks
//! (`postgres/import_logs.rs`); a read that cannot get them (the replica
//! is down with its log) fails rather than answer short
//! ([`super::ClusterStore`]'s `flush`).
//!
//! One process per log and per replica id: `<log>.replica` is locked
//! (`flock`) while the log is open, and the mover holds a PostgreSQL
//! advisory lock on the id, so a second process on the same log, or one
//! with a copied `.replica` file, is refused at start.
//!
//! The mover and the announcement run on a tokio runtime of their own (one
//! worker thread), with their own ClickHouse and PostgreSQL connections,
//! so that they finish their work at shutdown whatever the server's
//! runtime is doing. A move that fails (a shard or PostgreSQL down) keeps its
//! batches and is tried again every [`MOVE_RETRY_EVERY`], or at once by a
//! read; replaying a batch is harmless (identity resolution is
//! idempotent, first corrections are memoised, and equal keys are deduped
//! on read).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fineport_contract::import::EventBatch;
use fineport_contract::ServiceId;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

use super::clickhouse::{Backing, ClickHouse, ClickHouseOptions};
use super::postgres::Postgres;
use super::prepare_rows;
use crate::import_log::acker::{self, Ahead, BeforeAnswer, Closing, Job, LogThread, Mover, Moves, Progress};
use crate::import_log::{ImportLog, LoggedBatch};
use crate::{Backlog, InsertSummary, StoreError};

/// This replica's import log.
#[derive(Debug, Clone)]
pub struct ImportLogOptions {
    /// The log file (segments `<path>`, `<path>.1`, …), on this replica's
    /// own disk; `<path>.replica` holds the replica's id in
    /// PostgreSQL's `import_logs`.
    pub path: PathBuf,
    /// A move starts once this many events wait (default 20,000: an INSERT
    /// that size is as cheap per row for ClickHouse 18.16 as one of
    /// 100,000, item 15 of docs/benchmarks.md).
    pub move_events: usize,
    /// … or once no import has come for this long (default 20 ms).
    pub idle: Duration,
}

impl ImportLogOptions {
    pub fn new(path: PathBuf) -> ImportLogOptions {
        ImportLogOptions {
            path,
            move_events: 20_000,
            idle: Duration::from_millis(20),
        }
    }
}

/// How often a replica holding unmoved events looks for reads that wait
/// for them (one `SELECT` of a sequence).
const FLUSH_POLL: Duration = Duration::from_millis(10);

/// How long a start waits for its replica id's lock in PostgreSQL before
/// it refuses (another process holds it).
const REPLICA_LOCK_WAIT: Duration = Duration::from_secs(5);

/// After a failed move, how often the mover tries again by itself.
const MOVE_RETRY_EVERY: Duration = Duration::from_secs(2);

/// Moves that may wait for the mover, in [`ImportLogOptions::move_events`].
const MOVES_AHEAD: usize = 4;

/// INSERTs the mover keeps in flight while it prepares the next move (its
/// identities and rows): one INSERT's wait no longer stops the moves.
const INSERTS_IN_FLIGHT: usize = 2;

/// The log side of a [`super::ClusterStore`]: where imports go, how far
/// the mover got, and this replica's id.
pub(crate) struct ImportLogSide {
    /// Dropped first: stops the log thread after the mover has stored what
    /// it holds (or given up on it: it stays in the log for the next start).
    log_thread: LogThread<Infallible>,
    progress: Arc<Progress>,
    pub replica_id: String,
    /// `<log>.replica`, locked while this side lives.
    _replica_file: std::fs::File,
}

/// What the mover opens for itself (the announcement then uses its
/// runtime and PostgreSQL).
#[derive(Clone)]
pub(crate) struct Targets {
    pub clickhouse: ClickHouseOptions,
    pub postgres_url: String,
    /// The store's registered item properties per service.
    pub items: Arc<RwLock<HashMap<ServiceId, Vec<String>>>>,
}

impl ImportLogSide {
    /// Opens the log, stores what it holds from before (a crash), starts
    /// the mover and the log thread. Errors: `Internal` when the log, its
    /// replica id or the mover's connections cannot be opened; a log whose
    /// batches cannot be stored yet is not an error (they stay, announced).
    pub async fn open(options: &ImportLogOptions, targets: Targets) -> Result<ImportLogSide, StoreError> {
        let (replica_id, replica_file) = replica_id(&options.path)?;
        let (log, batches) = {
            let path = options.path.clone();
            tokio::task::spawn_blocking(move || ImportLog::open(&path))
                .await
                .map_err(|e| StoreError::internal(format!("opening the import log: {e}")))??
        };
        let (ready, started) = oneshot::channel();
        let progress = Arc::new(Progress::default());
        let ahead = Arc::new(Ahead::new(MOVES_AHEAD.saturating_mul(options.move_events.max(1))));
        let (moves, from_log) = std::sync::mpsc::channel();
        let pending = Arc::new(Mutex::new(true));
        let state = MoverStart {
            parts: MoverParts {
                targets: targets.clone(),
                replica_id: replica_id.clone(),
                options: options.clone(),
                progress: progress.clone(),
                ahead: ahead.clone(),
                pending: pending.clone(),
            },
            replay: batches,
            end: log.end(),
        };
        let thread = std::thread::Builder::new()
            .name("fineport-cluster-mover".into())
            .spawn(move || run_mover(state, from_log, ready))
            .map_err(|e| StoreError::internal(format!("cannot start the mover thread: {e}")))?;
        let (runtime, meta) = started
            .await
            .map_err(|_| StoreError::internal("the mover thread stopped while starting"))??;
        let before_answer = announcer(runtime, meta, replica_id.clone(), pending);
        let log_thread = acker::spawn(
            Some(log),
            Mover {
                moves,
                thread,
                ahead,
                progress: progress.clone(),
                appended: progress.appended.load(Ordering::Acquire),
                before_answer: Some(before_answer),
            },
        )?;
        tracing::info!(path = %options.path.display(), replica_id = %replica_id,
            "imports are answered from this replica's import log");
        Ok(ImportLogSide {
            log_thread,
            progress,
            replica_id,
            _replica_file: replica_file,
        })
    }

    /// Answers once `batch` is synced to the log (SPEC §3: `20000` means
    /// durable). Errors: `Internal` when the log cannot be written or the
    /// announcement in PostgreSQL fails (the request is then not
    /// acknowledged).
    pub async fn insert(
        &self,
        service_id: &ServiceId,
        batch: EventBatch,
        received_at_ms: i64,
    ) -> Result<InsertSummary, StoreError> {
        let (job, answer) = Job::events(service_id, batch, received_at_ms);
        self.log_thread.send(job)?;
        answer
            .await
            .map_err(|_| StoreError::internal("the import log's thread stopped"))?
    }

    /// Waits until every event this replica acknowledged is in ClickHouse;
    /// a `Query` error when batches of `service_id` cannot be moved yet.
    pub async fn sync(&self, service_id: &ServiceId) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.log_thread.send(Job::Sync {
            service_id: service_id.to_owned(),
            reply,
        })?;
        answer
            .await
            .map_err(|_| StoreError::internal("the import mover stopped"))?
    }

    pub fn backlog(&self) -> Backlog {
        self.progress.backlog()
    }
}

/// The replica id kept beside the log (`<path>.replica`), made on the
/// first start: a random UUID, so that two replicas never share one. The
/// file stays open and locked (`flock`) while the log is: a second process
/// on the same log is refused, as it would overwrite the log's records.
fn replica_id(log: &Path) -> Result<(String, std::fs::File), StoreError> {
    let mut path = log.as_os_str().to_owned();
    path.push(".replica");
    let path = PathBuf::from(path);
    let io = |e: std::io::Error| StoreError::internal(format!("the replica id {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    file.try_lock().map_err(|_| {
        StoreError::internal(format!(
            "the import log {} is in use by another fineport process: every replica needs a log of its own",
            log.display()
        ))
    })?;
    let mut id = String::new();
    std::io::Read::read_to_string(&mut file, &mut id).map_err(io)?;
    let id = id.trim().to_owned();
    if !id.is_empty() {
        return Ok((id, file));
    }
    let id = fineport_contract::Uuid::new_v4().hyphenated().to_string();
    std::io::Write::write_all(&mut file, id.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok((id, file))
}

/// The import log's own runtime, with one worker thread that drives its
/// connections and runs spawned work (the mover's INSERTs) while the mover
/// thread, or the log thread, waits on it with `block_on`.
fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fineport-cluster-insert")
        .enable_all()
        .build()
        .map_err(|e| StoreError::internal(format!("cannot start a runtime for the import log: {e}")))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The log thread's announcement: before the first answer after a time
/// this replica held nothing unmoved, `pending` is committed in
/// PostgreSQL (under the lock the mover takes to clear it), through the
/// mover's runtime (its worker drives the connection) and connections. It
/// is never called after the mover has stopped: the log thread stops first.
fn announcer(runtime: Handle, meta: Postgres, replica_id: String, pending: Arc<Mutex<bool>>) -> BeforeAnswer {
    Box::new(move || {
        let mut announced = pending
            .lock()
            .map_err(|_| StoreError::internal("the import log's state is poisoned"))?;
        if !*announced {
            runtime.block_on(meta.set_import_log(&replica_id, true, None, now_ms()))?;
            *announced = true;
        }
        Ok(())
    })
}

/// What the mover shares with the log side, and is configured with.
struct MoverParts {
    targets: Targets,
    replica_id: String,
    options: ImportLogOptions,
    progress: Arc<Progress>,
    ahead: Arc<Ahead>,
    /// Whether PostgreSQL says this replica holds unmoved events.
    pending: Arc<Mutex<bool>>,
}

/// What the mover thread starts from.
struct MoverStart {
    parts: MoverParts,
    /// What the log held at open, and the log's end after it.
    replay: Vec<LoggedBatch>,
    end: u64,
}

/// A move whose INSERT runs on the mover's runtime.
struct InFlight {
    batches: Vec<LoggedBatch>,
    events: usize,
    /// The log position after its last batch.
    through: u64,
    insert: tokio::task::JoinHandle<Result<(), StoreError>>,
}

/// The mover thread's state.
struct MoverState {
    rt: Runtime,
    events: ClickHouse,
    meta: Postgres,
    parts: MoverParts,
    /// Moves whose INSERT is running, oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
    /// Acknowledged batches not in ClickHouse yet nor in flight, in arrival
    /// order, and the log position after the last of them.
    unmoved: Vec<LoggedBatch>,
    unmoved_events: usize,
    unmoved_through: u64,
    /// When the last move failed, and why.
    failed: Option<(Instant, StoreError)>,
    /// The newest flush request answered, and when requests were last read.
    flushed: i64,
    polled: Instant,
}

/// What the mover hands the log side once it has started: its runtime and
/// its PostgreSQL, for the announcement.
type Started = Result<(Handle, Postgres), StoreError>;

fn run_mover(start: MoverStart, moves: Receiver<Moves<Infallible>>, ready: oneshot::Sender<Started>) {
    let _closing = Closing(start.parts.ahead.clone());
    let opened = runtime().and_then(|rt| {
        let events = rt.block_on(ClickHouse::open(&start.parts.targets.clickhouse))?;
        let meta = rt.block_on(Postgres::open(&start.parts.targets.postgres_url))?;
        // One running process per replica id, across machines too (a
        // copied `<log>.replica` would clear another's `pending`).
        let lock = rt.block_on(async {
            let client = meta.client().await?;
            // The session of a process killed a moment ago may still hold
            // it until PostgreSQL has noticed.
            let deadline = tokio::time::Instant::now() + REPLICA_LOCK_WAIT;
            let mut locked = meta.lock_replica(&client, &start.parts.replica_id).await?;
            while !locked && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                locked = meta.lock_replica(&client, &start.parts.replica_id).await?;
            }
            match locked {
                true => Ok(client),
                false => Err(StoreError::internal(format!(
                    "replica id {} is in use by another running fineport process (a copied {}.replica?): \
                     every replica needs an import log and a .replica file of its own",
                    start.parts.replica_id,
                    start.parts.options.path.display()
                ))),
            }
        })?;
        Ok((rt, events, meta, lock))
    });
    let (rt, events, meta, replica_lock) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut state = MoverState {
        rt,
        events,
        meta,
        parts: start.parts,
        in_flight: std::collections::VecDeque::new(),
        unmoved: Vec::new(),
        unmoved_events: 0,
        unmoved_through: start.end,
        failed: None,
        flushed: 0,
        polled: Instant::now(),
    };
    if let Err(e) = state.replay(start.replay, start.end) {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok((state.rt.handle().clone(), state.meta.clone())));
    state.run(&moves);
    // Closing the session gives the replica id back.
    drop(deadpool_postgres::Object::take(replica_lock));
}

impl MoverState {
    /// Announces what the log holds from before and stores it (what cannot
    /// be stored yet stays, announced, and is retried).
    fn replay(&mut self, batches: Vec<LoggedBatch>, end: u64) -> Result<(), StoreError> {
        self.parts.progress.appended.store(end, Ordering::Release);
        self.parts.progress.moved.store(end, Ordering::Release);
        // Every request made before this start is answered by this replay,
        // which stores all the log holds.
        let requested = self.rt.block_on(self.meta.flush_requested())?;
        if batches.is_empty() {
            self.record(Some(requested))?;
            self.flushed = requested;
            return Ok(());
        }
        tracing::info!(
            batches = batches.len(),
            "storing what the import log holds from before a stop"
        );
        self.rt
            .block_on(self.meta.set_import_log(&self.parts.replica_id, true, None, now_ms()))?;
        self.unmoved_events = batches.iter().map(|b| b.batch.events.len()).sum();
        self.parts.progress.acknowledged(batches.len(), self.unmoved_events);
        self.parts.progress.moved.store(0, Ordering::Release);
        self.unmoved = batches;
        self.move_unmoved();
        if self.parts.progress.all_moved() {
            self.record(Some(requested))?;
            self.flushed = requested;
        }
        Ok(())
    }

    fn run(&mut self, moves: &Receiver<Moves<Infallible>>) {
        let mut last_job = Instant::now();
        loop {
            let pending = self.parts.pending.lock().map(|p| *p).unwrap_or(true);
            // The next thing due: an INSERT's answer, the idle move, a
            // retry, or a look at the flush requests.
            let mut wait = Duration::from_secs(3600);
            if !self.in_flight.is_empty() {
                wait = Duration::from_millis(2);
            }
            if !self.unmoved.is_empty() && self.failed.is_none() {
                wait = wait.min(self.parts.options.idle.saturating_sub(last_job.elapsed()));
            }
            if pending || self.failed.is_some() {
                wait = wait.min(FLUSH_POLL);
            }
            match moves.recv_timeout(wait) {
                Ok(job) => {
                    last_job = Instant::now();
                    self.take(job);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let due = match &self.failed {
                        None => last_job.elapsed() >= self.parts.options.idle,
                        Some((at, _)) => at.elapsed() >= MOVE_RETRY_EVERY,
                    };
                    if due && !self.unmoved.is_empty() && self.in_flight.is_empty() {
                        self.start_move();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.reap(false);
            if pending && self.polled.elapsed() >= FLUSH_POLL {
                self.answer_flush_requests(moves);
            }
        }
        // Closing: leave nothing unmoved behind that can be stored.
        self.move_unmoved();
    }

    fn take(&mut self, job: Moves<Infallible>) {
        match job {
            Moves::Batches { batches, through } => {
                let events = batches.iter().map(|b| b.batch.events.len()).sum::<usize>();
                self.parts.ahead.take(events);
                self.unmoved_events += events;
                self.unmoved.extend(batches);
                self.unmoved_through = through;
                if self.unmoved_events >= self.parts.options.move_events && self.failed.is_none() {
                    self.start_move();
                }
            }
            Moves::Other(never) => match never {},
            Moves::Sync { service_id, reply } => {
                self.move_unmoved();
                let _ = reply.send(service_id.map_or(Ok(()), |s| self.all_moved(&s)));
            }
        }
    }

    /// When a read elsewhere asked since the last answer: moves everything
    /// acknowledged before it read the request (receiving what the log
    /// thread has answered but not yet handed over), then records the
    /// request as answered.
    fn answer_flush_requests(&mut self, moves: &Receiver<Moves<Infallible>>) {
        self.polled = Instant::now();
        let requested = match self.rt.block_on(self.meta.flush_requested()) {
            Ok(requested) => requested,
            Err(e) => return tracing::warn!(error = %e, "cannot read the flush requests"),
        };
        if requested <= self.flushed {
            return;
        }
        let answered = self.parts.progress.appended.load(Ordering::Acquire);
        while self.unmoved_through < answered {
            match moves.recv() {
                Ok(job) => self.take(job),
                Err(_) => break,
            }
        }
        self.move_unmoved();
        if self.parts.progress.moved.load(Ordering::Acquire) >= answered {
            match self.record(Some(requested)) {
                Ok(()) => self.flushed = requested,
                Err(e) => tracing::warn!(error = %e, "cannot record a flush request as answered"),
            }
        }
    }

    /// Writes this replica's row: `pending` cleared when everything is
    /// moved (under the announcement's lock), and `flushed` when given.
    fn record(&mut self, flushed: Option<i64>) -> Result<(), StoreError> {
        let mut pending = self
            .parts
            .pending
            .lock()
            .map_err(|_| StoreError::internal("the import log's state is poisoned"))?;
        let all_moved = self.parts.progress.all_moved();
        if flushed.is_none() && (!*pending || !all_moved) {
            return Ok(());
        }
        self.rt.block_on(
            self.meta
                .set_import_log(&self.parts.replica_id, !all_moved, flushed, now_ms()),
        )?;
        *pending = !all_moved;
        Ok(())
    }

    /// Stores every unmoved batch and waits for every INSERT in flight;
    /// on success the log may free them. On failure they stay, for the
    /// next try.
    fn move_unmoved(&mut self) {
        self.start_move();
        self.reap(true);
    }

    /// Resolves the unmoved batches' identities and encodes their rows
    /// here, then starts their INSERT on the runtime's worker and returns;
    /// with [`INSERTS_IN_FLIGHT`] running, first waits for the oldest.
    fn start_move(&mut self) {
        if self.unmoved.is_empty() {
            return;
        }
        let items = self.parts.targets.items.read().map(|m| m.clone()).unwrap_or_default();
        let prepared = self.rt.block_on(prepare_rows(
            &self.events,
            &self.meta,
            &items,
            &self.unmoved,
            Backing::ImportLog,
        ));
        let rows = match prepared {
            Ok(rows) => rows,
            Err(e) => return self.fail(e),
        };
        let events = self.events.clone();
        let insert = self.rt.spawn(async move { events.insert_import_rows(rows).await });
        self.in_flight.push_back(InFlight {
            batches: std::mem::take(&mut self.unmoved),
            events: std::mem::take(&mut self.unmoved_events),
            through: self.unmoved_through,
            insert,
        });
        while self.in_flight.len() > INSERTS_IN_FLIGHT {
            self.reap_oldest();
        }
    }

    /// Takes the answers of the INSERTs that are done, oldest first (all of
    /// them, waiting, with `wait`).
    fn reap(&mut self, wait: bool) {
        while self.in_flight.front().is_some_and(|m| wait || m.insert.is_finished()) {
            self.reap_oldest();
        }
    }

    /// Waits for the oldest INSERT in flight: its batches are then stored
    /// and the log may free them. If it failed, every move in flight goes
    /// back before the unmoved batches, to be tried again in order (what
    /// a later INSERT stored is deduped on read).
    fn reap_oldest(&mut self) {
        let Some(oldest) = self.in_flight.pop_front() else {
            return;
        };
        let result = match self.rt.block_on(oldest.insert) {
            Ok(result) => result,
            Err(e) => Err(StoreError::internal(format!("the INSERT task failed: {e}"))),
        };
        match result {
            Ok(()) => {
                self.parts
                    .progress
                    .moved_into_tables(oldest.batches.len(), oldest.events);
                self.parts.progress.moved.store(oldest.through, Ordering::Release);
                if self.in_flight.is_empty() && self.unmoved.is_empty() {
                    self.failed = None;
                }
                drop(oldest.batches);
                if let Err(e) = self.record(None) {
                    tracing::warn!(error = %e, "cannot record that the import log is moved");
                }
            }
            Err(e) => {
                let mut batches = oldest.batches;
                let mut events = oldest.events;
                for later in std::mem::take(&mut self.in_flight) {
                    // Its INSERT may still store its rows: harmless.
                    batches.extend(later.batches);
                    events += later.events;
                }
                batches.append(&mut self.unmoved);
                self.unmoved = batches;
                self.unmoved_events += events;
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, e: StoreError) {
        tracing::error!(error = %e, batches = self.unmoved.len(),
            "acknowledged imports cannot be stored in ClickHouse yet; they stay in the import log");
        self.failed = Some((Instant::now(), e));
    }

    /// `Ok` when every acknowledged batch of `service_id` is stored;
    /// otherwise a `Query` error saying how many are not and why.
    fn all_moved(&self, service_id: &ServiceId) -> Result<(), StoreError> {
        let events: usize = self
            .unmoved
            .iter()
            .filter(|b| b.service_id == *service_id)
            .map(|b| b.batch.events.len())
            .sum();
        if events == 0 {
            return Ok(());
        }
        let why = self
            .failed
            .as_ref()
            .map_or("unknown".into(), |(_, e)| e.message.clone());
        Err(StoreError::query(format!(
            "{events} acknowledged events of service {service_id} cannot be stored in ClickHouse yet \
             (they are safe in this replica's import log): {why}"
        )))
    }
}
