//! The writer thread: the only connection that writes, with group commit.
//!
//! Every write goes through one thread, which serialises DDL with inserts
//! and owns the identity index. Event batches that arrive while a commit is
//! running are gathered into the next transaction, so concurrent small
//! requests share one WAL sync instead of each paying for their own. Each
//! request is still atomic: if a group's transaction fails, its requests are
//! retried one by one, so one bad request cannot fail its neighbours.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use duckdb::Connection;
use fineport_contract::import::EventBatch;
use tokio::sync::oneshot;

use super::batch::{self, EventRow};
use super::event_ids::IdSet;
use super::identity::{Identities, Staged};
use super::schema::{Layout, Layouts};
use crate::{InsertSummary, StoreError};

/// Most events gathered into one transaction.
const MAX_GROUP_EVENTS: usize = 20_000;

pub(crate) type ExecFn = Box<dyn FnOnce(&mut WriterState) -> Result<(), StoreError> + Send>;

pub(crate) enum Job {
    Events {
        service_id: String,
        batch: Box<EventBatch>,
        received_at_ms: i64,
        reply: oneshot::Sender<Result<InsertSummary, StoreError>>,
    },
    /// Any other write, run alone in its own transaction.
    Exec {
        work: ExecFn,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
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

pub(crate) fn spawn(state: WriterState) -> Result<(Sender<Job>, std::thread::JoinHandle<()>), StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("fineport-writer".into())
        .spawn(move || run(state, rx))
        .map_err(|e| StoreError::internal(format!("cannot start the writer thread: {e}")))?;
    Ok((tx, thread))
}

fn run(mut state: WriterState, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = Vec::new();
        let mut pending = Some(first);
        let mut events = 0;
        while let Some(job) = pending.take() {
            match job {
                Job::Exec { work, reply } => {
                    // Writes before this one are committed first, in order.
                    commit_group(&mut state, std::mem::take(&mut group));
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
                Job::Events {
                    service_id,
                    batch,
                    received_at_ms,
                    reply,
                } => {
                    events += batch.events.len();
                    group.push(EventJob {
                        service_id,
                        batch,
                        received_at_ms,
                        reply,
                    });
                }
            }
            if events < MAX_GROUP_EVENTS {
                pending = rx.try_recv().ok();
            }
        }
        commit_group(&mut state, group);
    }
}

struct EventJob {
    service_id: String,
    batch: Box<EventBatch>,
    received_at_ms: i64,
    reply: oneshot::Sender<Result<InsertSummary, StoreError>>,
}

fn commit_group(state: &mut WriterState, group: Vec<EventJob>) {
    if group.is_empty() {
        return;
    }
    let result = state.transaction(|s| {
        let mut changes = GroupChanges::default();
        let jobs: Vec<&EventJob> = group.iter().collect();
        let summaries = insert_jobs(s, &mut changes, &jobs)?;
        Ok((summaries, changes))
    });
    match result {
        Ok((summaries, changes)) => {
            state.apply(changes);
            for (job, summary) in group.into_iter().zip(summaries) {
                let _ = job.reply.send(Ok(summary));
            }
        }
        Err(e) if group.len() == 1 => {
            tracing::warn!(error = %e, "event insert failed");
            group.into_iter().for_each(|j| drop(j.reply.send(Err(e.clone()))));
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = group.len(), "group commit failed; retrying its requests one by one");
            for job in group {
                let one = state.transaction(|s| {
                    let mut changes = GroupChanges::default();
                    let summary = insert_jobs(s, &mut changes, &[&job])?;
                    Ok((summary, changes))
                });
                let reply = match one {
                    Ok((mut summaries, changes)) => {
                        state.apply(changes);
                        Ok(summaries.pop().unwrap_or_default())
                    }
                    Err(e) => Err(e),
                };
                let _ = job.reply.send(reply);
            }
        }
    }
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
fn insert_jobs(
    state: &mut WriterState,
    changes: &mut GroupChanges,
    jobs: &[&EventJob],
) -> Result<Vec<InsertSummary>, StoreError> {
    // Resolve identities in arrival order, then insert per service.
    let uids: Vec<String> = jobs
        .iter()
        .map(|job| {
            state
                .identities
                .resolve(&mut changes.identities, &job.service_id, &job.batch.identity)
        })
        .collect();
    let mut by_service: HashMap<&str, Vec<(&EventJob, &str)>> = HashMap::new();
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
    Ok(jobs
        .iter()
        .map(|j| InsertSummary {
            events: j.batch.events.len(),
        })
        .collect())
}
