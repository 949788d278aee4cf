//! The log thread, `fineport-import-log`, shared by every backend that
//! answers imports from the import log (DuckDB, and the cluster with
//! `--cluster-import-log`): it appends the batches that arrived together
//! with one sync, answers them (`20000` = durable in the log), and hands
//! them on to the backend's *mover*, the thread that stores them in the
//! tables later and in bulk. The mover reports how far it got through
//! [`Progress::moved`]; this thread frees the log up to there.
//!
//! The mover gets [`Moves`] in arrival order: batches, a backend's own
//! jobs (`Other`, e.g. DuckDB's other writes, which must come after the
//! batches acknowledged before them), and syncs (what a read asks first).

#[cfg(test)]
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use fineport_contract::ServiceId;
use tokio::sync::oneshot;

use super::{ImportLog, LoggedBatch};
use crate::{Backlog, InsertSummary, StoreError};

/// Most events acknowledged with one sync of the log.
const MAX_GROUP_EVENTS: usize = 8_000;

/// Bytes held in the import log at which acknowledging waits for the mover
/// to catch up: bounds the log (and a replay after a crash) when the mover
/// falls behind or cannot move. (Under a load the mover keeps up with, the
/// log's moved segments are freed as it goes, and it never gets there.)
const LOG_CATCH_UP_BYTES: u64 = 256 << 20;

/// How far acknowledged imports have got, for [`crate::Store::backlog`]:
/// the log thread counts what it acknowledges, the mover what it stores
/// in the tables, and anyone may read the difference without waiting.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Bytes appended to the log since the start (the log thread's
    /// position; it only grows, even when the file is emptied).
    pub appended: AtomicU64,
    /// The log position up to which everything is in the tables.
    pub moved: AtomicU64,
    /// Acknowledged batches, and their events, not in the tables yet.
    batches: AtomicU64,
    events: AtomicU64,
}

impl Progress {
    pub fn backlog(&self) -> Backlog {
        // `moved` first: it never passes `appended`, which only grows.
        let moved = self.moved.load(Ordering::Acquire);
        Backlog {
            batches: self.batches.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            bytes: self.appended.load(Ordering::Acquire).saturating_sub(moved),
        }
    }

    /// Whether everything acknowledged is in the tables.
    pub fn all_moved(&self) -> bool {
        self.moved.load(Ordering::Acquire) >= self.appended.load(Ordering::Acquire)
    }

    pub fn acknowledged(&self, batches: usize, events: usize) {
        self.batches.fetch_add(batches as u64, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
    }

    pub fn moved_into_tables(&self, batches: usize, events: usize) {
        self.batches.fetch_sub(batches as u64, Ordering::Relaxed);
        self.events.fetch_sub(events as u64, Ordering::Relaxed);
    }
}

/// What the log thread is given.
pub(crate) enum Job<X> {
    Events {
        batch: Box<LoggedBatch>,
        /// Its import-log record, made by the caller off this thread.
        record: Vec<u8>,
        reply: oneshot::Sender<Result<InsertSummary, StoreError>>,
    },
    /// A job of the backend's own, handed to the mover after the batches
    /// that came before it.
    Other(X),
    /// Stores every acknowledged batch in the tables, then replies: what a
    /// read does first so that it sees every acknowledged event. The reply
    /// is an error when batches of `service_id` are still unmoved (the
    /// move failed), so that a read never silently misses them.
    Sync {
        service_id: ServiceId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl<X> Job<X> {
    /// The job that logs `batch` (its record made here, on the caller's
    /// task), and where its answer comes.
    pub fn events(
        service_id: &ServiceId,
        batch: fineport_contract::import::EventBatch,
        received_at_ms: i64,
    ) -> (Job<X>, oneshot::Receiver<Result<InsertSummary, StoreError>>) {
        let mut record = Vec::new();
        super::record(&mut record, service_id, received_at_ms, &batch);
        let (reply, answer) = oneshot::channel();
        let batch = Box::new(LoggedBatch {
            service_id: service_id.to_owned(),
            received_at_ms,
            batch,
        });
        (Job::Events { batch, record, reply }, answer)
    }
}

/// What the mover is given, in arrival order.
pub(crate) enum Moves<X> {
    /// Acknowledged batches; `through` is the log position after them.
    Batches {
        batches: Vec<LoggedBatch>,
        through: u64,
    },
    Other(X),
    Sync {
        /// The service whose reader waits; `None` for the log thread's own
        /// catch-up, which only waits.
        service_id: Option<ServiceId>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Called after a group is in the log and before it is answered; an error
/// fails the group's requests (they are in the log, and so stored later,
/// but not acknowledged). The cluster announces there that this replica
/// holds events not in ClickHouse yet.
pub(crate) type BeforeAnswer = Box<dyn FnMut() -> Result<(), StoreError> + Send>;

/// Acknowledged events handed to the mover and not taken by it yet,
/// bounded: a channel bounded by events rather than by messages, since a
/// group holds one request or hundreds.
pub(crate) struct Ahead {
    /// Events in the channel, and whether the mover has stopped.
    state: Mutex<(usize, bool)>,
    taken: Condvar,
    limit: usize,
}

impl Ahead {
    pub fn new(limit: usize) -> Ahead {
        Ahead {
            state: Mutex::new((0, false)),
            taken: Condvar::new(),
            limit,
        }
    }

    /// Waits until `events` more fit (always, when none are ahead), then
    /// counts them; returns at once once the mover has stopped.
    fn reserve(&self, events: usize) {
        let Ok(mut state) = self.state.lock() else { return };
        while state.0 > 0 && state.0 + events > self.limit && !state.1 {
            match self.taken.wait(state) {
                Ok(s) => state = s,
                Err(_) => return,
            }
        }
        state.0 += events;
    }

    /// The mover took `events`.
    pub fn take(&self, events: usize) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = state.0.saturating_sub(events);
        }
        self.taken.notify_all();
    }

    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.taken.notify_all();
    }
}

/// Closes [`Ahead`] when the mover thread ends, however it ends, so that
/// the log thread never waits for it forever. The mover holds it.
pub(crate) struct Closing(pub Arc<Ahead>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The mover's side of the log thread, for [`spawn`].
pub(crate) struct Mover<X> {
    pub moves: Sender<Moves<X>>,
    pub thread: JoinHandle<()>,
    /// Shared with the mover, which calls [`Ahead::take`] on what it takes.
    pub ahead: Arc<Ahead>,
    /// Shared with the mover, which stores [`Progress::moved`].
    pub progress: Arc<Progress>,
    /// The log position the mover's replay ended at.
    pub appended: u64,
    pub before_answer: Option<BeforeAnswer>,
}

/// A running log thread, as its backend holds it: where to send jobs, and
/// [`LogThread::close`] (also on drop), which stops the thread after the
/// mover has stored what it can and stopped.
pub(crate) struct LogThread<X> {
    /// `None` once closing: dropping the sender stops the thread.
    jobs: Mutex<Option<Sender<Job<X>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<X> LogThread<X> {
    /// Hands `job` to the log thread. Errors: `Internal` once it is
    /// closed or has stopped.
    pub fn send(&self, job: Job<X>) -> Result<(), StoreError> {
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| StoreError::internal("the import log's sender is poisoned"))?;
        jobs.as_ref()
            .ok_or_else(|| StoreError::internal("the store is closed"))?
            .send(job)
            .map_err(|_| StoreError::internal("the import log's thread stopped"))
    }

    /// Stops the log thread and waits for it (and so for the mover).
    pub fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl<X> Drop for LogThread<X> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Starts the log thread in front of `mover`. Without a `log`, batches are
/// answered at once (tests of the mover alone).
pub(crate) fn spawn<X: Send + 'static>(log: Option<ImportLog>, mover: Mover<X>) -> Result<LogThread<X>, StoreError> {
    let (tx, jobs) = std::sync::mpsc::channel();
    let acker = Acker {
        log,
        appended: mover.appended,
        progress: mover.progress,
        mover: mover.moves,
        ahead: mover.ahead,
        before_answer: mover.before_answer,
        log_cap: LOG_CATCH_UP_BYTES,
    };
    let thread = std::thread::Builder::new()
        .name("fineport-import-log".into())
        .spawn(move || acker.run(jobs, mover.thread))
        .map_err(|e| StoreError::internal(format!("cannot start the import log's thread: {e}")))?;
    Ok(LogThread {
        jobs: Mutex::new(Some(tx)),
        thread: Mutex::new(Some(thread)),
    })
}

/// The log thread's state.
struct Acker<X> {
    log: Option<ImportLog>,
    /// Bytes appended to the log since the start; positions in the log are
    /// counted in these, so they only grow even when the file is emptied
    /// (published as `progress.appended`).
    appended: u64,
    /// `progress.moved`: up to where the mover has stored everything.
    progress: Arc<Progress>,
    mover: Sender<Moves<X>>,
    /// Bounds the acknowledged events sent to the mover and not yet taken.
    ahead: Arc<Ahead>,
    before_answer: Option<BeforeAnswer>,
    /// [`LOG_CATCH_UP_BYTES`], but in tests.
    log_cap: u64,
}

/// Batches that arrived together, acknowledged with one sync of the log.
#[derive(Default)]
struct Acks {
    records: Vec<u8>,
    batches: Vec<LoggedBatch>,
    replies: Vec<oneshot::Sender<Result<InsertSummary, StoreError>>>,
    events: usize,
}

impl<X: Send + 'static> Acker<X> {
    fn run(mut self, jobs: Receiver<Job<X>>, mover: JoinHandle<()>) {
        while let Ok(first) = jobs.recv() {
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
                    // Batches acknowledged before another job go first.
                    Job::Other(other) => {
                        self.acknowledge(std::mem::take(&mut group));
                        self.forward(Moves::Other(other));
                    }
                    Job::Sync { service_id, reply } => {
                        self.acknowledge(std::mem::take(&mut group));
                        self.forward(Moves::Sync {
                            service_id: Some(service_id),
                            reply,
                        });
                    }
                }
                if group.events < MAX_GROUP_EVENTS {
                    next = jobs.try_recv().ok();
                }
            }
            self.acknowledge(group);
            self.release_moved();
        }
        // Closing: the mover stores what is left and stops; then the log
        // can be emptied.
        drop(self.mover);
        if mover.join().is_err() {
            tracing::error!("the import mover thread panicked");
        }
        let moved = self.progress.moved.load(Ordering::Acquire);
        if let Some(Err(e)) = self.log.as_mut().map(|log| log.release(moved)) {
            tracing::error!(error = %e, "cannot empty the import log (a restart stores what it holds again, nothing twice)");
        }
    }

    fn forward(&self, job: Moves<X>) {
        // The mover only stops after this thread does.
        let _ = self.mover.send(job);
    }

    /// Makes a group of batches durable in the log, answers them and hands
    /// them to the mover.
    fn acknowledge(&mut self, group: Acks) {
        if group.replies.is_empty() {
            return;
        }
        // Still full after the last catch-up (`release_moved`): the mover
        // cannot store what the log holds (a disk, a memory limit, a
        // ClickHouse out of reach). Refused rather than logged, so that
        // neither the log nor the batches held for the mover grow without
        // bound; the client sends it again later (50000).
        if let Some(log) = self.log.as_ref().filter(|log| log.len() >= self.log_cap) {
            let e = StoreError::internal(format!(
                "the import log holds {} MiB that cannot be stored yet; nothing of this request was kept: \
                 send it again later",
                log.len() >> 20
            ));
            group.replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
            return;
        }
        let logged = match &mut self.log {
            Some(log) => log.append(&group.records),
            None => Ok(()),
        };
        if let Err(e) = logged {
            tracing::error!(error = %e, "cannot write the import log");
            group.replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
            return;
        }
        self.appended += group.records.len() as u64;
        self.progress.appended.store(self.appended, Ordering::Release);
        self.progress.acknowledged(group.batches.len(), group.events);
        let announced = self.before_answer.as_mut().map_or(Ok(()), |announce| announce());
        for (batch, reply) in group.batches.iter().zip(group.replies) {
            let _ = reply.send(match &announced {
                Ok(()) => Ok(InsertSummary {
                    events: batch.batch.events.len(),
                }),
                Err(e) => Err(e.clone()),
            });
        }
        self.ahead.reserve(group.events);
        self.forward(Moves::Batches {
            batches: group.batches,
            through: self.appended,
        });
    }

    /// Frees the log's segments whose batches are all in the tables (and
    /// empties it when everything is); when what it holds has grown large
    /// because the mover cannot keep up or cannot move, first waits for
    /// the mover to catch up.
    fn release_moved(&mut self) {
        let Some(log) = &mut self.log else { return };
        if log.is_empty() {
            return;
        }
        if self.progress.moved.load(Ordering::Acquire) != self.appended && log.len() >= self.log_cap {
            let (reply, done) = oneshot::channel();
            let _ = self.mover.send(Moves::Sync {
                service_id: None,
                reply,
            });
            let _ = done.blocking_recv();
        }
        if let Err(e) = log.release(self.progress.moved.load(Ordering::Acquire)) {
            tracing::error!(error = %e, "cannot free the import log (a restart stores what it holds again, nothing twice)");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A log that its mover cannot empty is bounded: once it holds the cap
    /// after a catch-up, requests are refused with nothing kept (not
    /// logged, not handed on), and accepted again once the mover has
    /// stored what it held.
    #[test]
    fn a_full_log_that_cannot_be_moved_refuses_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = ImportLog::open(&dir.path().join("import.log")).unwrap();
        let progress = Arc::new(Progress::default());
        let (moves, from_log) = std::sync::mpsc::channel::<Moves<Infallible>>();
        let can_move = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ahead = Arc::new(Ahead::new(usize::MAX));
        // A mover that stores nothing until told to, then everything.
        let mover = {
            let (progress, can_move, ahead) = (progress.clone(), can_move.clone(), ahead.clone());
            std::thread::spawn(move || {
                let mut through = 0;
                for job in from_log {
                    match job {
                        Moves::Batches { batches, through: t } => {
                            ahead.take(batches.iter().map(|b| b.batch.events.len()).sum());
                            through = t;
                        }
                        Moves::Other(never) => match never {},
                        Moves::Sync { reply, .. } => {
                            if can_move.load(Ordering::SeqCst) {
                                progress.moved.store(through, Ordering::Release);
                            }
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            })
        };
        let acker = Acker {
            log: Some(log),
            appended: 0,
            progress: progress.clone(),
            mover: moves,
            ahead,
            before_answer: None,
            log_cap: 1,
        };
        let (jobs, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || acker.run(rx, mover));
        let service = ServiceId::parse("shop").unwrap();
        let import = |n: u128| {
            let sample = crate::import_log::tests::sample(n);
            let (job, answer) = Job::<Infallible>::events(&service, sample.batch, sample.received_at_ms);
            jobs.send(job).unwrap();
            answer.blocking_recv().unwrap()
        };
        assert!(import(0).is_ok(), "an empty log takes the first request");
        let appended = progress.appended.load(Ordering::Acquire);
        let refused = import(10).expect_err("full, and the mover cannot store it");
        assert_eq!(refused.kind, crate::StoreErrorKind::Internal);
        assert!(refused.message.contains("send it again later"), "{}", refused.message);
        assert_eq!(
            progress.appended.load(Ordering::Acquire),
            appended,
            "nothing of it was logged"
        );
        assert!(import(20).is_err(), "still full");
        can_move.store(true, Ordering::SeqCst);
        // The refused request's own catch-up now empties the log.
        let mut accepted = false;
        for n in 0..10 {
            if import(30 + n * 10).is_ok() {
                accepted = true;
                break;
            }
        }
        assert!(accepted, "accepted again once the mover stored what the log held");
        drop(jobs);
        thread.join().unwrap();
    }

    /// The hand-over to the writer holds at most `limit` events (or one
    /// group, when none are ahead), waits while full until the mover takes
    /// some, and never waits once the mover has stopped.
    #[test]
    fn the_queue_ahead_of_the_mover_is_bounded_in_events() {
        let ahead = Arc::new(Ahead::new(100));
        ahead.reserve(60);
        ahead.reserve(40);
        let (done, waited) = std::sync::mpsc::channel();
        let waiting = {
            let (ahead, done) = (ahead.clone(), done.clone());
            std::thread::spawn(move || {
                ahead.reserve(30);
                let _ = done.send("second");
            })
        };
        assert!(
            waited.recv_timeout(Duration::from_millis(200)).is_err(),
            "100 events ahead: 30 more wait"
        );
        ahead.take(60);
        assert_eq!(waited.recv_timeout(Duration::from_secs(10)), Ok("second"));
        waiting.join().unwrap();
        // 70 ahead now; a group larger than the limit goes when none are.
        ahead.take(70);
        ahead.reserve(500);
        // Once the mover has stopped, nothing waits.
        let stopped = {
            let ahead = ahead.clone();
            std::thread::spawn(move || {
                ahead.reserve(10);
                let _ = done.send("after the stop");
            })
        };
        assert!(waited.recv_timeout(Duration::from_millis(200)).is_err());
        ahead.close();
        assert_eq!(waited.recv_timeout(Duration::from_secs(10)), Ok("after the stop"));
        stopped.join().unwrap();
    }
}
