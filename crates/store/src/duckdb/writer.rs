//! The writer: the connection that makes every write but the request
//! log's appends (`append_request_log`), fed by the import log.
//!
//! Three threads. **`fineport-import-log`** acknowledges event batches: the
//! batches that arrived together are appended to the import log
//! ([`crate::import_log`], its thread in [`crate::import_log::acker`]) with one sync, answered, and handed on.
//! **`fineport-writer`** owns the write connection, the identity index and
//! the event-id sets, and runs every write in arrival order: it *moves*
//! acknowledged batches into the tables — when enough have gathered, when
//! none has come for a moment, before any other write, before a read that
//! needs them ([`Job::Sync`]), and at shutdown — into one transaction that
//! stays open across moves until it holds a DuckDB row group's worth
//! ([`BULK_EVENTS`]) or something needs its events committed. A DuckDB
//! transaction costs ~5 ms however small it is, and one that appends a
//! whole row group is a bulk append that skips DuckDB's write-ahead log
//! and the checkpoint that would compress its rows later; moving thousands
//! of events at a time, while the next ones are being acknowledged, is
//! what makes imports fast. The log frees each segment once everything in
//! it has been moved. **`fineport-free`** frees moved batches. Each request
//! is still atomic: if a move's transaction fails, its batches are retried
//! one by one, and a batch that still fails stays unmoved (and in the log)
//! to be tried again, never lost.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duckdb::Connection;
use fineport_contract::ServiceId;
use tokio::sync::oneshot;

use super::event_ids::IdSet;
use super::identity::{Identities, Staged};
use super::move_rows::{self, EventRow};
use super::schema::{events_table, late_events_table, Layout, Layouts, LATE_MS};
use crate::import_log::acker::{self, Ahead, Closing, Mover, Moves, Progress};
use crate::import_log::{ImportLog, LoggedBatch};
use crate::{InsertSummary, StoreError};

/// Acknowledged events that may wait for the writer thread, in moves
/// ([`MovePolicy::events`]): enough for the log thread to go on
/// acknowledging through a move and through a commit, which compresses a
/// bulk's row groups on the writer thread (with two moves ahead, answering
/// stalled in every commit: 106k heavy events/s at 4M against 130k with
/// six, docs/benchmarks.md item 14), so that answering and moving
/// overlap. When the writer falls behind
/// further, acknowledging (and so the clients) waits, and the events held
/// in memory stay bounded.
const MOVES_AHEAD: usize = 6;

/// Moved batches that may wait to be freed (on `fineport-free`) before
/// the writer waits for that thread.
const FREES_AHEAD: usize = 2;

pub(crate) type ExecFn = Box<dyn FnOnce(&mut WriterState) -> Result<(), StoreError> + Send>;

/// Any write but a move, run alone in its own transaction after the
/// batches acknowledged before it.
pub(crate) struct Exec {
    pub work: ExecFn,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

/// What the writer's callers send (through the log thread).
pub(crate) type Job = acker::Job<Exec>;

/// What the writer thread is given, in arrival order.
type WriteJob = Moves<Exec>;

/// After a failed move, how often other writes try it again (a read that
/// needs the batches always tries).
const MOVE_RETRY_EVERY: Duration = Duration::from_secs(5);

/// When acknowledged batches are moved into the tables.
#[derive(Debug, Clone, Copy)]
pub struct MovePolicy {
    /// As soon as this many events wait.
    pub events: usize,
    /// When no request has come for this long.
    pub idle: Duration,
    /// Moves go into one open transaction, committed once it holds this
    /// many events besides late ones (or a quarter more in all), or at
    /// once when a read or another write needs them, when idle, and at
    /// shutdown. [`BULK_EVENTS`] by default.
    pub commit_events: usize,
}

/// Events a move transaction gathers before it commits: DuckDB's row group
/// (122,880 rows). A transaction that appends a whole row group to a table
/// is a *bulk append*: DuckDB compresses its rows into row groups of the
/// database file when it commits, and its write-ahead log only records
/// where they are. Smaller transactions write every row into the WAL, to be
/// read back and compressed by a checkpoint that stops every write while it
/// runs (item 14 of docs/benchmarks.md).
pub const BULK_EVENTS: usize = 122_880;

pub(crate) struct WriterState {
    pub conn: Connection,
    pub layouts: Layouts,
    pub identities: Identities,
    /// Identity changes of the running `Exec` job, applied after its commit.
    pub pending: Option<Staged>,
    /// Event ids the running `Exec` job inserted ([`insert_now`]), added
    /// to [`WriterState::event_ids`] after its commit.
    pending_event_ids: HashMap<ServiceId, foldhash::HashSet<u128>>,
    /// The committed `event_log_id`s of each service that imported since
    /// the start (loaded on its first import).
    pub event_ids: HashMap<ServiceId, IdSet>,
    /// The newest `correction_ts` in each service's main event table, in
    /// ms (loaded on its first import): an event more than
    /// [`LATE_MS`] older goes to the late table instead.
    newest_ms: HashMap<ServiceId, i64>,
    /// Acknowledged batches not in the tables yet, in arrival order.
    unmoved: Vec<LoggedBatch>,
    /// The move transaction, open until it holds
    /// [`MovePolicy::commit_events`] or a read, a write or idleness needs
    /// its events committed.
    open: Option<Open>,
    /// Events in `unmoved`.
    unmoved_events: usize,
    /// The log position after the last batch in `unmoved`; the one up to
    /// which everything is in the tables is `progress.moved` (read by the
    /// log thread).
    unmoved_through: u64,
    pub progress: Arc<Progress>,
    move_policy: MovePolicy,
    /// When the last move left batches behind, if it did: wait for a
    /// reason to retry instead of retrying whenever idle, and let other
    /// writes retry only every [`MOVE_RETRY_EVERY`].
    move_failed: Option<Instant>,
    /// Why the last batch that could not be moved failed.
    move_error: Option<StoreError>,
    /// Where moved batches go to be freed: off this thread, which is the
    /// import's bottleneck (freeing a move's parsed events was ~9 % of its
    /// CPU); `None` frees them here (before [`spawn`], and in replay).
    free: Option<SyncSender<Vec<LoggedBatch>>>,
}

impl WriterState {
    pub fn layout(&self, service_id: &str) -> Arc<Layout> {
        self.layouts
            .read()
            .map(|l| l.get(service_id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn set_layout(&self, service_id: &str, layout: Layout) {
        if let Ok(mut l) = self.layouts.write() {
            l.insert(service_id.to_owned(), Arc::new(layout));
        }
    }

    /// Re-reads the layouts after a rolled-back change, so that memory never
    /// shows columns the database does not have.
    pub fn reload_layouts(&self) {
        match super::schema::load_layouts(&self.conn) {
            Ok(fresh) => {
                if let Ok(mut l) = self.layouts.write() {
                    *l = fresh;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot reload table layouts"),
        }
    }

    /// The committed ids of a service, loaded on first use.
    fn event_ids(&mut self, service_id: &ServiceId) -> Result<&IdSet, StoreError> {
        if !self.event_ids.contains_key(service_id) {
            let ids = IdSet::load(&self.conn, service_id)?;
            tracing::info!(%service_id, ids = ids.len(), "loaded the event ids of a service");
            self.event_ids.insert(service_id.clone(), ids);
        }
        Ok(&self.event_ids[service_id])
    }

    /// The newest correction time in a service's main table, loaded on
    /// first use (`i64::MIN` when it is empty).
    fn newest_ms(&mut self, service_id: &ServiceId) -> Result<&mut i64, StoreError> {
        match self.newest_ms.entry(service_id.clone()) {
            Entry::Occupied(known) => Ok(known.into_mut()),
            Entry::Vacant(first) => {
                let newest: Option<i64> = self.conn.query_row(
                    &format!("SELECT epoch_ms(max(correction_ts)) FROM {}", events_table(service_id)),
                    [],
                    |r| r.get(0),
                )?;
                Ok(first.insert(newest.unwrap_or(i64::MIN)))
            }
        }
    }

    /// Applies what a committed group changed to the in-memory indexes.
    fn apply(&mut self, changes: GroupChanges) {
        self.identities.apply(changes.identities);
        for (service_id, ids) in changes.event_ids {
            self.event_ids.entry(service_id).or_default().extend(ids);
        }
    }

    /// Runs `f` in a transaction, committing on success.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut WriterState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        match f(self) {
            Ok(v) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    self.rollback();
                    Err(e.into())
                }
            },
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Ends the open transaction without its changes; a failure to do so
    /// is logged (the next `BEGIN` then fails loudly).
    fn rollback(&self) {
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "cannot roll back the writer's transaction");
        }
    }

    pub fn new(conn: Connection, layouts: Layouts, identities: Identities, move_policy: MovePolicy) -> WriterState {
        WriterState {
            conn,
            layouts,
            identities,
            pending: None,
            pending_event_ids: HashMap::new(),
            event_ids: HashMap::new(),
            newest_ms: HashMap::new(),
            unmoved: Vec::new(),
            open: None,
            unmoved_events: 0,
            unmoved_through: 0,
            progress: Arc::default(),
            move_policy,
            move_failed: None,
            move_error: None,
            free: None,
        }
    }

    /// Stores what the log holds from before a crash, and empties the log
    /// if all of it went in (what did not stays unmoved and is retried).
    /// Log positions go on from the log's end ([`ImportLog::end`]).
    pub fn replay(&mut self, log: &mut ImportLog, batches: Vec<LoggedBatch>) -> Result<(), StoreError> {
        if batches.is_empty() {
            return Ok(());
        }
        tracing::info!(
            batches = batches.len(),
            "storing what the import log holds from before a crash"
        );
        self.unmoved_events = batches.iter().map(|b| b.batch.events.len()).sum();
        self.progress.acknowledged(batches.len(), self.unmoved_events);
        self.unmoved = batches;
        self.unmoved_through = log.end();
        self.progress.appended.store(log.end(), Ordering::Release);
        self.move_unmoved();
        if self.unmoved.is_empty() {
            log.release(log.end())?;
        }
        Ok(())
    }

    /// Moves every acknowledged batch into the tables and commits: what a
    /// read, another write, an idle moment and shutdown need.
    pub fn move_unmoved(&mut self) {
        self.insert_unmoved();
        self.commit_open();
    }

    /// Inserts the acknowledged batches into the open move transaction
    /// (beginning one), and commits it once it holds
    /// [`MovePolicy::commit_events`].
    fn move_some(&mut self) {
        self.insert_unmoved();
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.holds_a_bulk(self.move_policy.commit_events))
        {
            self.commit_open();
        }
    }

    /// Inserts the acknowledged batches into the open move transaction,
    /// beginning one if none is open. They stay in [`Open::batches`] until
    /// it commits; if the insert fails, the transaction is rolled back and
    /// everything it held is retried one batch per transaction.
    fn insert_unmoved(&mut self) {
        if self.unmoved.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut self.unmoved);
        let events = std::mem::take(&mut self.unmoved_events);
        let mut open = match self.open.take() {
            Some(open) => open,
            None => match self.conn.execute_batch("BEGIN TRANSACTION") {
                Ok(()) => Open::default(),
                Err(e) => return self.retry_one_by_one(batches, self.unmoved_through, &e.into()),
            },
        };
        let inserted = insert_batches(self, &mut open.changes, &batches.iter().collect::<Vec<_>>());
        open.batches.extend(batches);
        match inserted {
            Ok(()) => {
                open.events += events;
                open.through = self.unmoved_through;
                self.open = Some(open);
            }
            Err(e) => {
                self.rollback();
                self.retry_one_by_one(open.batches, self.unmoved_through, &e);
            }
        }
    }

    /// Commits the open move transaction, if any: its events are then in
    /// the tables, its batches freed, and the log told how far it is moved
    /// (unless batches were left behind).
    fn commit_open(&mut self) {
        let Some(open) = self.open.take() else { return };
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            self.rollback();
            return self.retry_one_by_one(open.batches, open.through, &e.into());
        }
        self.apply(open.changes);
        self.progress.moved_into_tables(open.batches.len(), open.events);
        if let Some(free) = &self.free {
            // Fails only once the freeing thread is gone: then the batches
            // come back and are freed here.
            let _ = free.send(open.batches);
        }
        // Batches left behind by a failed move were retried in this one;
        // what `unmoved` holds now came after it.
        self.move_failed = None;
        self.move_error = None;
        self.progress.moved.store(open.through, Ordering::Release);
    }

    /// After a move's transaction failed with `error` (and was rolled
    /// back): stores `batches` (the log's batches up to position
    /// `through`) one per transaction, so that one bad batch cannot hold
    /// back the others; a batch that still fails stays unmoved (and in the
    /// log) to be tried again, never lost.
    fn retry_one_by_one(&mut self, batches: Vec<LoggedBatch>, through: u64, error: &StoreError) {
        tracing::warn!(error = %error, batches = batches.len(), "moving imports failed; retrying them one by one");
        let mut failed = Vec::new();
        for batch in batches {
            let one = self.transaction(|s| {
                let mut changes = GroupChanges::default();
                insert_batches(s, &mut changes, &[&batch])?;
                Ok(changes)
            });
            match one {
                Ok(changes) => {
                    self.apply(changes);
                    self.progress.moved_into_tables(1, batch.batch.events.len());
                }
                Err(e) => {
                    tracing::error!(error = %e, service_id = %batch.service_id,
                        "an acknowledged batch cannot be stored yet; it stays in the import log");
                    self.move_error = Some(e);
                    failed.push(batch);
                }
            }
        }
        self.move_failed = (!failed.is_empty()).then(Instant::now);
        if self.move_failed.is_none() {
            self.move_error = None;
            self.progress.moved.store(through, Ordering::Release);
        }
        // Batches that came after `through` wait behind the ones left.
        failed.append(&mut self.unmoved);
        self.unmoved_events = failed.iter().map(|b| b.batch.events.len()).sum();
        self.unmoved = failed;
    }

    /// `Ok` when every acknowledged batch of `service_id` is in the tables;
    /// otherwise a `Query` error saying how many are not and why, so that a
    /// read answers `query_error` instead of a short export.
    fn all_moved(&self, service_id: &ServiceId) -> Result<(), StoreError> {
        let stuck: Vec<&LoggedBatch> = self.unmoved.iter().filter(|b| b.service_id == *service_id).collect();
        if stuck.is_empty() {
            return Ok(());
        }
        let events: usize = stuck.iter().map(|b| b.batch.events.len()).sum();
        let why = self.move_error.as_ref().map_or("unknown".into(), |e| e.message.clone());
        Err(StoreError::query(format!(
            "{events} acknowledged events of service {service_id} cannot be moved into its tables yet \
             (they are safe in the import log): {why}"
        )))
    }
}

/// Starts the writer thread on `state` and the log thread in front of it;
/// closing the returned log thread stops both, after the writer has moved
/// everything.
pub(crate) fn spawn(mut state: WriterState, log: Option<ImportLog>) -> Result<acker::LogThread<Exec>, StoreError> {
    let thread_error = |e: std::io::Error| StoreError::internal(format!("cannot start the writer threads: {e}"));
    let (free, to_free) = std::sync::mpsc::sync_channel::<Vec<LoggedBatch>>(FREES_AHEAD);
    std::thread::Builder::new()
        .name("fineport-free".into())
        .spawn(move || to_free.into_iter().for_each(drop))
        .map_err(thread_error)?;
    state.free = Some(free);
    let (moves, writer_jobs) = std::sync::mpsc::channel();
    let ahead = Arc::new(Ahead::new(MOVES_AHEAD.saturating_mul(state.move_policy.events)));
    let progress = state.progress.clone();
    let appended = state.unmoved_through;
    let closing = Closing(ahead.clone());
    let thread = std::thread::Builder::new()
        .name("fineport-writer".into())
        .spawn(move || {
            let _closed = closing;
            run_writer(&mut state, writer_jobs, &_closed.0)
        })
        .map_err(thread_error)?;
    acker::spawn(
        log,
        Mover {
            moves,
            thread,
            ahead,
            progress,
            appended,
            before_answer: None,
        },
    )
}

fn run_writer(state: &mut WriterState, jobs: Receiver<WriteJob>, ahead: &Ahead) {
    loop {
        // Idle for a moment: commit the open move, and move what waits
        // (unless a move just failed: then only a reason retries it).
        let idle_work = state.open.is_some() || (!state.unmoved.is_empty() && state.move_failed.is_none());
        let job = if idle_work {
            jobs.recv_timeout(state.move_policy.idle)
        } else {
            jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match job {
            Ok(Moves::Batches { batches, through }) => {
                let events = batches.iter().map(|b| b.batch.events.len()).sum::<usize>();
                ahead.take(events);
                state.unmoved_events += events;
                state.unmoved.extend(batches);
                state.unmoved_through = through;
                if state.unmoved_events >= state.move_policy.events {
                    state.move_some();
                }
            }
            Ok(Moves::Other(Exec { work, reply })) => {
                // Writes before this one are stored first, in order; after a
                // failed move, only once in a while (the cause — a memory
                // limit, a full disk — rarely passes at once, and each try
                // costs the whole move).
                if state.move_failed.is_none_or(|at| at.elapsed() >= MOVE_RETRY_EVERY) {
                    state.move_unmoved();
                } else {
                    state.commit_open();
                }
                let result = state.transaction(work);
                let changes = GroupChanges {
                    identities: state.pending.take().unwrap_or_default(),
                    event_ids: std::mem::take(&mut state.pending_event_ids),
                    ..GroupChanges::default()
                };
                if result.is_ok() {
                    state.apply(changes);
                }
                if result.is_err() {
                    state.reload_layouts();
                }
                let _ = reply.send(result);
            }
            Ok(Moves::Sync { service_id, reply }) => {
                state.move_unmoved();
                let _ = reply.send(service_id.map_or(Ok(()), |s| state.all_moved(&s)));
            }
            Err(RecvTimeoutError::Timeout) if state.move_failed.is_none() => state.move_unmoved(),
            Err(RecvTimeoutError::Timeout) => state.commit_open(),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Closing: leave nothing unmoved behind.
    state.move_unmoved();
}

/// The open move transaction: what it holds, kept until it commits.
#[derive(Default)]
struct Open {
    changes: GroupChanges,
    /// The batches inserted in it: freed once it commits, retried one by
    /// one if it fails.
    batches: Vec<LoggedBatch>,
    events: usize,
    /// The log position after its last batch.
    through: u64,
}

impl Open {
    /// Whether it should commit: it holds `commit_events` events besides
    /// those that went to a late table (so that the main table gets a
    /// whole row group: a bulk append), or a quarter more than that in all,
    /// which bounds its memory when many events are late.
    fn holds_a_bulk(&self, commit_events: usize) -> bool {
        self.events.saturating_sub(self.changes.late_rows) >= commit_events
            || self.events >= commit_events.saturating_add(commit_events / 4)
    }
}

/// What one group's transaction adds to the writer's in-memory indexes,
/// applied only once it has committed.
#[derive(Default)]
struct GroupChanges {
    identities: Staged,
    /// The ids of the events the group inserted, per service: a later
    /// event with one of them, in the same transaction, is a repeat.
    event_ids: HashMap<ServiceId, foldhash::HashSet<u128>>,
    /// Events the group appended to a late-event table.
    late_rows: usize,
}

/// Stores `batch` at once, within the open transaction of an `Exec` job,
/// instead of through the import log: for a batch whose identity may
/// conflict ([`crate::identity::may_conflict`]: a `df_unified_id` with an
/// external_id), which must be refused with nothing stored rather than
/// acknowledged and resolved later. The writer runs it after moving every
/// batch acknowledged before it, so resolution sees them; durable once the
/// job's transaction committed, as every `Exec` write. A conflict is an
/// `Invalid` error and the job rolls back.
pub(crate) fn insert_now(state: &mut WriterState, batch: &LoggedBatch) -> Result<InsertSummary, StoreError> {
    let mut changes = GroupChanges {
        identities: state.pending.take().unwrap_or_default(),
        event_ids: std::mem::take(&mut state.pending_event_ids),
        ..GroupChanges::default()
    };
    let inserted = insert_batches(state, &mut changes, &[batch]);
    state.pending = Some(changes.identities);
    state.pending_event_ids = changes.event_ids;
    inserted?;
    Ok(InsertSummary {
        events: batch.batch.events.len(),
    })
}

/// Inserts the events of `jobs` within the open transaction. Batches from
/// the import log never conflict (they are acknowledged only when
/// [`crate::identity::may_conflict`] is false); should one, the move fails
/// and the batch stays in the log, never dropped.
fn insert_batches(
    state: &mut WriterState,
    changes: &mut GroupChanges,
    jobs: &[&LoggedBatch],
) -> Result<(), StoreError> {
    // Resolve identities in arrival order, then insert per service.
    let uids: Vec<String> = jobs
        .iter()
        .map(|job| {
            state
                .identities
                .resolve(&mut changes.identities, &job.service_id, &job.batch.identity)
        })
        .collect::<Result<_, _>>()?;
    let mut by_service: HashMap<&ServiceId, Vec<(&LoggedBatch, &str)>> = HashMap::new();
    for (job, uid) in jobs.iter().zip(&uids) {
        by_service.entry(&job.service_id).or_default().push((job, uid));
    }
    let now_ms = jobs.iter().map(|j| j.received_at_ms).max().unwrap_or_default();
    for (service_id, service_jobs) in by_service {
        // Events already stored, and repeats within the transaction, are
        // skipped.
        let stored = state.event_ids(service_id)?;
        let fresh_ids = changes.event_ids.entry(service_id.to_owned()).or_default();
        let mut fresh = Vec::new();
        for (job, uid) in service_jobs {
            for event in &job.batch.events {
                let id = event.event_log_id.as_u128();
                if stored.contains(id) || !fresh_ids.insert(id) {
                    continue;
                }
                fresh.push(EventRow {
                    event,
                    unified_id: uid,
                    server_ms: job.received_at_ms,
                    correction_ms: event.correction_ms(job.received_at_ms),
                });
            }
        }
        if fresh.is_empty() {
            continue;
        }
        // Late events go to their own table (see `schema.rs`), the others
        // move the newest time on.
        let newest = state.newest_ms(service_id)?;
        let (timely, late): (Vec<_>, Vec<_>) = fresh.into_iter().partition(|row| {
            let timely = row.correction_ms >= newest.saturating_sub(LATE_MS);
            if timely {
                *newest = (*newest).max(row.correction_ms);
            }
            timely
        });
        let layout = state.layout(service_id);
        let late_count = late.len();
        for (table, rows) in [
            (events_table(service_id), timely),
            (late_events_table(service_id), late),
        ] {
            if !rows.is_empty() {
                move_rows::insert(&state.conn, &table, &layout, &rows)?;
            }
        }
        changes.late_rows += late_count;
    }
    Identities::write(&state.conn, &mut changes.identities, now_ms)?;
    Ok(())
}
