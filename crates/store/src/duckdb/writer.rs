//! The writer thread: the only connection that writes.
//!
//! Every write goes through one thread, which serialises DDL with inserts
//! and owns the identity index and the event-id sets. Event batches take
//! two steps. **Acknowledge**: the batches that arrived together are
//! appended to the import log ([`super::import_log`]) with one sync, and
//! only then answered. **Move**: acknowledged batches are inserted into the
//! tables in one large transaction — when enough have gathered, when no
//! request has come for a moment, before any other write (so writes stay in
//! arrival order), before a read that needs them ([`Job::Sync`]), and at
//! shutdown — after which the log is emptied. A DuckDB transaction costs
//! ~5 ms however small it is; moving thousands of events at a time is what
//! makes imports fast. Each request is still atomic: if a move's
//! transaction fails, its batches are retried one by one, and a batch that
//! still fails stays in the log to be tried again, never lost.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use duckdb::Connection;
use tokio::sync::oneshot;

use super::batch::{self, EventRow};
use super::event_ids::IdSet;
use super::identity::{Identities, Staged};
use super::import_log::{ImportLog, LoggedBatch};
use super::schema::{Layout, Layouts};
use crate::{InsertSummary, StoreError};

/// Most events acknowledged with one sync of the log.
const MAX_GROUP_EVENTS: usize = 20_000;

pub(crate) type ExecFn = Box<dyn FnOnce(&mut WriterState) -> Result<(), StoreError> + Send>;

pub(crate) enum Job {
    Events {
        batch: Box<LoggedBatch>,
        /// Its import-log record, made by the caller off this thread.
        record: Vec<u8>,
        reply: oneshot::Sender<Result<InsertSummary, StoreError>>,
    },
    /// Any other write, run alone in its own transaction.
    Exec {
        work: ExecFn,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Moves every acknowledged batch into the tables, then replies: what a
    /// read does first so that it sees every acknowledged event.
    Sync { reply: oneshot::Sender<()> },
}

/// When acknowledged batches are moved into the tables.
#[derive(Debug, Clone, Copy)]
pub struct MovePolicy {
    /// As soon as this many events wait.
    pub events: usize,
    /// When no request has come for this long.
    pub idle: Duration,
}

pub(crate) struct WriterState {
    pub conn: Connection,
    pub layouts: Layouts,
    pub identities: Identities,
    /// Identity changes of the running `Exec` job, applied after its commit.
    pub pending: Option<Staged>,
    /// The committed `event_log_id`s of each service that imported since
    /// the start (loaded on its first import).
    pub event_ids: HashMap<String, IdSet>,
    /// Where batches are durable before they are moved (`None` for an
    /// in-memory database, which is not durable anyway).
    pub log: Option<ImportLog>,
    /// Acknowledged batches not in the tables yet, in arrival order.
    pub unmoved: Vec<LoggedBatch>,
    /// Events in `unmoved`.
    pub unmoved_events: usize,
    pub move_policy: MovePolicy,
    /// The last move left batches behind: wait for a reason to retry
    /// instead of retrying whenever idle.
    move_failed: bool,
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
    fn event_ids(&mut self, service_id: &str) -> Result<&IdSet, StoreError> {
        if !self.event_ids.contains_key(service_id) {
            let ids = IdSet::load(&self.conn, service_id)?;
            tracing::info!(service_id, ids = ids.len(), "loaded the event ids of a service");
            self.event_ids.insert(service_id.to_owned(), ids);
        }
        Ok(&self.event_ids[service_id])
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
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

impl WriterState {
    pub fn new(conn: Connection, layouts: Layouts, identities: Identities, move_policy: MovePolicy) -> WriterState {
        WriterState {
            conn,
            layouts,
            identities,
            pending: None,
            event_ids: HashMap::new(),
            log: None,
            unmoved: Vec::new(),
            unmoved_events: 0,
            move_policy,
            move_failed: false,
        }
    }

    /// Makes a group of batches durable in the log, then answers them.
    fn acknowledge(&mut self, group: Acks) {
        if group.replies.is_empty() {
            return;
        }
        let logged = match &mut self.log {
            Some(log) => log.append(&group.records),
            None => Ok(()),
        };
        match logged {
            Ok(()) => {
                for (batch, reply) in group.batches.into_iter().zip(group.replies) {
                    let events = batch.batch.events.len();
                    self.unmoved_events += events;
                    self.unmoved.push(batch);
                    let _ = reply.send(Ok(InsertSummary { events }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the import log");
                group.replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
            }
        }
    }

    /// Inserts every acknowledged batch into the tables; empties the log
    /// once nothing is left behind.
    pub fn move_unmoved(&mut self) {
        if self.unmoved.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut self.unmoved);
        self.unmoved_events = 0;
        let all = self.transaction(|s| {
            let mut changes = GroupChanges::default();
            insert_batches(s, &mut changes, &batches.iter().collect::<Vec<_>>())?;
            Ok(changes)
        });
        match all {
            Ok(changes) => self.apply(changes),
            Err(e) => {
                tracing::warn!(error = %e, batches = batches.len(), "moving imports failed; retrying them one by one");
                for batch in batches {
                    let one = self.transaction(|s| {
                        let mut changes = GroupChanges::default();
                        insert_batches(s, &mut changes, &[&batch])?;
                        Ok(changes)
                    });
                    match one {
                        Ok(changes) => self.apply(changes),
                        Err(e) => {
                            tracing::error!(error = %e, service_id = %batch.service_id,
                                "an acknowledged batch cannot be stored yet; it stays in the import log");
                            self.unmoved_events += batch.batch.events.len();
                            self.unmoved.push(batch);
                        }
                    }
                }
            }
        }
        self.move_failed = !self.unmoved.is_empty();
        if !self.move_failed {
            if let Some(Err(e)) = self.log.as_mut().map(ImportLog::clear) {
                tracing::error!(error = %e, "cannot empty the import log (a restart will skip what it holds)");
            }
        }
    }
}

/// Batches that arrived together, acknowledged with one sync of the log.
#[derive(Default)]
struct Acks {
    records: Vec<u8>,
    batches: Vec<LoggedBatch>,
    replies: Vec<oneshot::Sender<Result<InsertSummary, StoreError>>>,
    events: usize,
}

pub(crate) fn spawn(state: WriterState) -> Result<(Sender<Job>, std::thread::JoinHandle<()>), StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("fineport-writer".into())
        .spawn(move || run(state, rx))
        .map_err(|e| StoreError::internal(format!("cannot start the writer thread: {e}")))?;
    Ok((tx, thread))
}

fn run(mut state: WriterState, rx: Receiver<Job>) {
    loop {
        let first = if state.unmoved.is_empty() || state.move_failed {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(state.move_policy.idle)
        };
        let first = match first {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                state.move_unmoved();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut group = Acks::default();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Events { batch, record, reply } => {
                    group.events += batch.batch.events.len();
                    group.records.extend_from_slice(&record);
                    group.batches.push(*batch);
                    group.replies.push(reply);
                }
                Job::Exec { work, reply } => {
                    // Writes before this one are stored first, in order.
                    state.acknowledge(std::mem::take(&mut group));
                    state.move_unmoved();
                    let result = state.transaction(work);
                    if let (Ok(()), Some(staged)) = (&result, state.pending.take()) {
                        state.identities.apply(staged);
                    }
                    state.pending = None;
                    if result.is_err() {
                        state.reload_layouts();
                    }
                    let _ = reply.send(result);
                }
                Job::Sync { reply } => {
                    state.acknowledge(std::mem::take(&mut group));
                    state.move_unmoved();
                    let _ = reply.send(());
                }
            }
            if group.events < MAX_GROUP_EVENTS {
                next = rx.try_recv().ok();
            }
        }
        state.acknowledge(group);
        if state.unmoved_events >= state.move_policy.events {
            state.move_unmoved();
        }
    }
    // Closing: leave nothing but an empty log behind.
    state.move_unmoved();
}

/// What one group's transaction adds to the writer's in-memory indexes,
/// applied only once it has committed.
#[derive(Default)]
struct GroupChanges {
    identities: Staged,
    /// The ids of the events the group inserted, per service.
    event_ids: Vec<(String, Vec<u128>)>,
}

/// Inserts the events of `jobs` within the open transaction.
fn insert_batches(state: &mut WriterState, changes: &mut GroupChanges, jobs: &[&LoggedBatch]) -> Result<(), StoreError> {
    // Resolve identities in arrival order, then insert per service.
    let uids: Vec<String> = jobs
        .iter()
        .map(|job| {
            state
                .identities
                .resolve(&mut changes.identities, &job.service_id, &job.batch.identity)
        })
        .collect();
    let mut by_service: HashMap<&str, Vec<(&LoggedBatch, &str)>> = HashMap::new();
    for (job, uid) in jobs.iter().zip(&uids) {
        by_service.entry(job.service_id.as_str()).or_default().push((job, uid));
    }
    let now_ms = jobs.iter().map(|j| j.received_at_ms).max().unwrap_or_default();
    for (service_id, service_jobs) in by_service {
        // Events already stored, and repeats within the group, are skipped.
        let stored = state.event_ids(service_id)?;
        let mut fresh_ids = HashSet::new();
        let mut fresh = Vec::new();
        for (job, uid) in service_jobs {
            for event in &job.batch.events {
                let id = event.event_log_id.as_u128();
                if stored.contains(id) || !fresh_ids.insert(id) {
                    continue;
                }
                fresh.push(EventRow {
                    event,
                    event_log_id: event.event_log_id.hyphenated().to_string(),
                    unified_id: uid,
                    server_ms: job.received_at_ms,
                    correction_ms: event.event_datetime_ms.min(job.received_at_ms),
                });
            }
        }
        if fresh.is_empty() {
            continue;
        }
        let layout = state.layout(service_id);
        let batch = batch::build(&layout, &fresh)?;
        let mut app = state.conn.appender(&format!("events_{service_id}"))?;
        app.append_record_batch(batch)?;
        app.flush()?;
        changes
            .event_ids
            .push((service_id.to_owned(), fresh_ids.into_iter().collect()));
    }
    Identities::write(&state.conn, &changes.identities, now_ms)?;
    Ok(())
}
