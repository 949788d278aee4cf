//! Backfills through the Import API (SPEC §4, §5.3): files of events or
//! user profiles sent to `/api/v1/events` or `/api/v1/user-profile` in
//! requests the API accepts, with concurrency, retries and the per-minute
//! limit honoured, and every row the server refuses written to a report.
//!
//! What it reads ([`Format`]):
//! - **CSV** in fineport's (and DFINERY's) export format (SPEC §2.3, §2.4),
//!   so an export loads back into a service. Cells are typed by the target
//!   service's taxonomy ([`TaxonomyDoc`], as `GET /admin/v1/services/{id}/taxonomy`
//!   lists it): a `String` property holding `123` stays a string. See
//!   [`csv`] for the columns.
//! - **JSON Lines**: one event per line in the Import API's shape plus an
//!   `"identity"` member, or one `{"identity":…,"user_properties":…}`
//!   profile per line. See [`jsonl`].
//!
//! How it sends ([`run`]):
//! - Events are grouped by user (`common.identity` is one per request)
//!   within a bounded window ([`batch`]), at most 100 events and 100 items
//!   a request; each profile is one request (DFINERY's documented body).
//! - `50000`, HTTP 5xx and transport errors are retried with backoff
//!   ([`RetryPolicy`]): safe, because `event_log_id` makes a resent event
//!   stored once (and a profile update is idempotent).
//! - `40401` waits until the window resets (`X-Rate-Limit-Reset`), and is
//!   not counted as a failure; when the window has room for part of a
//!   batch, that part goes at once.
//! - `40001` (nothing of the request was stored): the invalid rows go to
//!   the rejects file with the server's reason, the rest is sent again.
//! - `40000`, `40402`, `40403`: the request is split in halves (a body over
//!   the server's size limit, a server with a lower count limit); a single
//!   row refused so is rejected with the server's message.
//! - `40101`, `40201`: the import stops at once with the server's message.
//!
//! There is no resume file: a re-run of the same files stores nothing twice.

pub mod batch;
pub mod csv;
pub mod jsonl;
mod rejects;
mod send;

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fineport_contract::taxonomy::TaxonomyDoc;
use serde_json::{Map, Value as Json};

use crate::progress::{human_bytes, thousands, Progress};
use crate::retry::RetryPolicy;
use batch::Batcher;
pub use rejects::Reject;

/// What the files hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Events, sent to `/api/v1/events`.
    Events,
    /// User profiles, sent to `/api/v1/user-profile`.
    Profiles,
}

impl Kind {
    /// The noun for counts: `events` or `profiles`.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Profiles => "profiles",
        }
    }

    fn path(self) -> [&'static str; 3] {
        match self {
            Kind::Events => ["api", "v1", "events"],
            Kind::Profiles => ["api", "v1", "user-profile"],
        }
    }
}

/// How a file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The export CSV (SPEC §2.3/§2.4).
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a file name says: `.csv` → CSV; `.jsonl`, `.ndjson`,
    /// `.json` → JSON Lines (any letter case); else `None`.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// One input: a file, or standard input when `path` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub path: Option<PathBuf>,
    pub format: Format,
}

impl Input {
    /// The name rows are reported under: the path as given, or `-`.
    pub fn name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "-".to_owned(),
        }
    }
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The server, e.g. `http://127.0.0.1:8080` or `https://openapi.dfinery.ai`.
    pub base_url: String,
    /// `service_id` of every request.
    pub service: String,
    /// The import token (header `access_token`).
    pub token: String,
    pub kind: Kind,
    /// Read in order.
    pub inputs: Vec<Input>,
    /// The target's taxonomy; required for CSV inputs (cell types).
    pub taxonomy: Option<TaxonomyDoc>,
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// Retries of one request after `50000`, 5xx or a transport error.
    pub retry: RetryPolicy,
    /// The JSON Lines report of rejected rows; created at the start,
    /// removed at the end when nothing was rejected.
    pub rejects: PathBuf,
    /// Plain lines instead of a bar even on a terminal.
    pub plain: bool,
    /// Longest wait for the per-minute window (`40401`).
    pub max_rate_wait: Duration,
}

/// Counts of one run (shared by the reader and the senders).
#[derive(Debug, Default)]
pub struct Counters {
    /// Rows read from the inputs (events or profiles).
    pub read: AtomicU64,
    /// Rows the server acknowledged (`20000`).
    pub stored: AtomicU64,
    /// Rows written to the rejects file (by the server or unreadable).
    pub rejected: AtomicU64,
    /// Requests sent again after `50000`, 5xx or a transport error.
    pub retries: AtomicU64,
    /// Requests refused with `40401` and waited out.
    pub rate_waits: AtomicU64,
    /// HTTP requests made.
    pub requests: AtomicU64,
    /// Input bytes read.
    pub input_bytes: AtomicU64,
}

/// What a run did, for the summary.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub kind: Kind,
    pub read: u64,
    pub stored: u64,
    pub rejected: u64,
    pub retries: u64,
    pub rate_waits: u64,
    pub requests: u64,
    pub elapsed: Duration,
    /// The rejects file, when a row was rejected.
    pub rejects: Option<PathBuf>,
}

impl ImportSummary {
    /// Several lines for a person: counts, time and rate, where the
    /// rejects are.
    pub fn to_text(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        let noun = self.kind.noun();
        let mut text = format!(
            "{} {noun} read, {} stored, {} rejected; {} requests, {} retries, {} waits for the per-minute limit; {} ({:.0} {noun}/s)",
            thousands(self.read),
            thousands(self.stored),
            thousands(self.rejected),
            thousands(self.requests),
            thousands(self.retries),
            thousands(self.rate_waits),
            crate::rate::human_duration(self.elapsed),
            self.stored as f64 / secs,
        );
        if let Some(path) = &self.rejects {
            text.push_str(&format!(
                "\n{} rejected {noun} with the reason for each: {}",
                thousands(self.rejected),
                path.display()
            ));
        }
        text
    }
}

/// How a run ended: its summary, and the error that stopped it, if any.
#[derive(Debug)]
pub struct ImportReport {
    pub summary: ImportSummary,
    /// Why the import stopped before the end (refused token, retries used
    /// up, unreadable input); `None` when every row was sent.
    pub failure: Option<anyhow::Error>,
}

/// Where a row came from: the input's name and the row's 1-based line
/// (for CSV, the line its record starts on; the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: u64,
}

/// One row ready to send: an event of `/api/v1/events`'s `events` list or
/// a whole `/api/v1/user-profile` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub origin: Origin,
    /// The event's `event_log_id`, for the rejects file.
    pub event_log_id: Option<String>,
    /// Items the event carries (0 for profiles).
    pub items: usize,
    pub body: Map<String, Json>,
}

/// What a reader yields per row: a row and the identity it belongs to,
/// or a row it could not read (rejected without asking the server).
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Row { identity: Map<String, Json>, row: Row },
    Unreadable(Reject),
}

/// A reader of one input, row by row.
pub trait RowReader: Send {
    /// The next row; `None` at the end. Errors are I/O or format errors
    /// that end the input (a row that cannot be read is a
    /// [`Parsed::Unreadable`]).
    fn next_row(&mut self) -> Option<anyhow::Result<Parsed>>;
}

/// Opens `input` (standard input for `path: None`) for reading.
pub fn open(input: &Input) -> anyhow::Result<Box<dyn BufRead + Send>> {
    Ok(match &input.path {
        Some(path) => Box::new(BufReader::with_capacity(
            256 * 1024,
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(std::io::stdin())),
    })
}

/// A reader that counts the bytes it hands on into `counter`.
pub struct Counted<R> {
    inner: R,
    counter: Arc<Counters>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.input_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Makes the reader of `input` (CSV readers check the header against the
/// taxonomy here, so a column the target does not know stops the import
/// before anything is sent).
pub fn reader(
    input: &Input,
    kind: Kind,
    taxonomy: Option<&TaxonomyDoc>,
    counters: Arc<Counters>,
) -> anyhow::Result<Box<dyn RowReader>> {
    let source = Counted {
        inner: open(input)?,
        counter: counters,
    };
    let name: Arc<str> = input.name().into();
    Ok(match input.format {
        Format::Jsonl => Box::new(jsonl::JsonlReader::new(BufReader::new(source), name, kind)),
        Format::Csv => {
            let taxonomy = taxonomy.context(
                "CSV needs the target service's taxonomy for the cell types: pass --admin-token \
                 (or FINEPORT_ADMIN_TOKEN) to read it from the server, or --taxonomy FILE \
                 (the output of `fineport admin taxonomy show <service>`)",
            )?;
            Box::new(csv::CsvReader::new(source, name, kind, taxonomy)?)
        }
    })
}

/// Runs an import: reads every input in order, sends, reports. Never
/// panics on bad input; the report says what was stored and why it
/// stopped, if it did.
///
/// Errors (`Err`, before anything is sent): an input that cannot be opened,
/// a CSV header with a column the taxonomy lacks, a rejects file that
/// cannot be created, an invalid base URL.
pub async fn run(options: ImportOptions) -> anyhow::Result<ImportReport> {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    // Every input is opened and every CSV header checked before the first request.
    let readers = options
        .inputs
        .iter()
        .map(|input| reader(input, options.kind, options.taxonomy.as_ref(), counters.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rejects = Arc::new(rejects::RejectsFile::create(&options.rejects)?);
    let sender = send::Sender::new(&options, counters.clone(), rejects.clone())?;

    let total_bytes: u64 = options
        .inputs
        .iter()
        .filter_map(|i| i.path.as_ref())
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let plain = options.plain || !std::io::stderr().is_terminal();
    let progress = Arc::new(Progress::new(total_bytes.div_ceil(1000), "kB read", options.plain));
    let sender = Arc::new(sender.with_progress(progress.clone()));

    let (tx, rx) = tokio::sync::mpsc::channel::<batch::Request>(options.concurrency.max(1) * 2);
    let kind = options.kind;
    let reading_counters = counters.clone();
    let reading_rejects = rejects.clone();
    let reading = tokio::task::spawn_blocking(move || read_all(readers, kind, tx, &reading_counters, &reading_rejects));

    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let rx = rx.clone();
        let sender = sender.clone();
        workers.spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                match next {
                    Some(request) => sender.send(request).await?,
                    None => return Ok::<(), anyhow::Error>(()),
                }
            }
        });
    }
    drop(rx);

    let done = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn(tick(
        progress.clone(),
        counters.clone(),
        total_bytes,
        plain,
        options.kind,
        done.clone(),
    ));

    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        let result = joined.unwrap_or_else(|e| Err(anyhow::anyhow!("a sender task failed: {e}")));
        if let Err(e) = result {
            if failure.is_none() {
                failure = Some(e);
            }
            // Stop at once: the others' requests in flight are dropped
            // (safe: a resend stores nothing twice).
            workers.abort_all();
        }
    }
    // The workers are gone, so a reader still sending sees its channel closed.
    match reading.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if failure.is_none() => failure = Some(e),
        Ok(Err(_)) => {}
        Err(e) if failure.is_none() => failure = Some(anyhow::anyhow!("the reader failed: {e}")),
        Err(_) => {}
    }
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    progress.finish();

    let rejected = counters.rejected.load(Ordering::Relaxed);
    let rejects_path = rejects.finish(rejected > 0)?;
    let summary = ImportSummary {
        kind: options.kind,
        read: counters.read.load(Ordering::Relaxed),
        stored: counters.stored.load(Ordering::Relaxed),
        rejected,
        retries: counters.retries.load(Ordering::Relaxed),
        rate_waits: counters.rate_waits.load(Ordering::Relaxed),
        requests: counters.requests.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        rejects: rejects_path,
    };
    Ok(ImportReport { summary, failure })
}

/// The reading thread: every input in order, rows grouped into requests
/// and handed to the senders; unreadable rows go to the rejects file.
/// Ends early (Ok) when the senders are gone.
fn read_all(
    readers: Vec<Box<dyn RowReader>>,
    kind: Kind,
    tx: tokio::sync::mpsc::Sender<batch::Request>,
    counters: &Counters,
    rejects: &rejects::RejectsFile,
) -> anyhow::Result<()> {
    let mut batcher = Batcher::new(kind, batch::WINDOW_EVENTS);
    let send = |requests: Vec<batch::Request>| requests.into_iter().all(|r| tx.blocking_send(r).is_ok());
    for mut reader in readers {
        while let Some(parsed) = reader.next_row() {
            counters.read.fetch_add(1, Ordering::Relaxed);
            match parsed? {
                Parsed::Row { identity, row } => {
                    if !send(batcher.push(identity, row)) {
                        return Ok(());
                    }
                }
                Parsed::Unreadable(reject) => {
                    rejects.write(&reject)?;
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    send(batcher.finish());
    Ok(())
}

/// Moves the bar with the input read; in plain mode, a line every 10 s.
async fn tick(
    progress: Arc<Progress>,
    counters: Arc<Counters>,
    total: u64,
    plain: bool,
    kind: Kind,
    done: Arc<AtomicBool>,
) {
    let mut last_line = Instant::now();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let read = counters.input_bytes.load(Ordering::Relaxed);
        progress.set_position(read / 1000);
        if plain && last_line.elapsed() >= Duration::from_secs(10) {
            last_line = Instant::now();
            let of = if total > 0 {
                format!(
                    " of {} ({:.0} %)",
                    human_bytes(total),
                    read as f64 * 100.0 / total as f64
                )
            } else {
                String::new()
            };
            progress.line(&format!(
                "read {}{of}; {} {} stored, {} rejected, {} retries",
                human_bytes(read),
                thousands(counters.stored.load(Ordering::Relaxed)),
                kind.noun(),
                thousands(counters.rejected.load(Ordering::Relaxed)),
                thousands(counters.retries.load(Ordering::Relaxed)),
            ));
        }
    }
}

/// `request_datetime` for a profile sent now: UTC `yyyy-MM-ddTHH:mm:ss.SSSZ`.
pub fn now_datetime() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut out = Vec::new();
    fineport_contract::csv::push_datetime_ms(&mut out, ms);
    String::from_utf8_lossy(&out).into_owned()
}
