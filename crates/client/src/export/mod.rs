//! `fineport export`'s engine: a big export made boring (SPEC §5.3).
//!
//! An event export's range is split into single days (calendar days of the
//! service's timezone, which is how the Export API reads `from_date` and
//! `to_date`, SPEC §2.3). Up to `concurrency` days run at once, never more.
//! Each day streams into a part file and counts as done only when its body
//! ended cleanly (the transport's final chunk) and parsed whole
//! ([`check::CsvCheck`]). Then:
//!
//! - **429**: the answer's `X-Rate-Limit-*` headers say whether the hour is
//!   used up; if so every worker waits until `X-Rate-Limit-Reset` (one
//!   gate for all), else (the concurrency limit) the one request waits
//!   `Retry-After`. Waiting never counts as a failure and never loops on
//!   the server: while the gate is closed nothing is sent.
//! - **5xx, transport errors, broken streams**: retried with backoff and
//!   jitter ([`RetryPolicy`]); the part is discarded.
//! - **400 / 401** (`invalid_parameter`, `exceed_date_range_limit`,
//!   `unauthorized_token`): stop at once, with the server's detail and a
//!   hint ([`ExportError::Refused`]).
//!
//! Finished days are recorded in a state file ([`parts`]), so a second run
//! with the same arguments fetches only what is missing; days not over yet
//! in the service's timezone are fetched every time and never recorded.

pub mod check;
pub mod parts;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use chrono::{DateTime, Duration as Days, NaiveDate, Utc};
use chrono_tz::Tz;
use fineport_contract::export::Selection;
use futures::{StreamExt, TryStreamExt};
use reqwest::{StatusCode, Url};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::progress::{human_bytes, thousands, Progress};
use crate::rate::{clock_utc, human_duration, RateLimit};
use crate::retry::RetryPolicy;
use check::CsvCheck;
use parts::{Compression, DoneUnit, WorkDir};

/// What to export (the request body of SPEC §2.1 minus the dates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// `POST /api/v1/export/event`, one request per day of `from..=to`.
    Events {
        events: Selection,
        properties: Selection,
        from: NaiveDate,
        to: NaiveDate,
    },
    /// `POST /api/v1/export/userprofile`, one request.
    Profiles {
        properties: Selection,
        audience: Option<String>,
        /// Adds the `df_external_id` column.
        external_id: bool,
    },
}

/// Where the CSV goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One file with one header (compressed by its [`Compression`]).
    File(PathBuf),
    /// One file per day in this directory (`--split daily`).
    Daily(PathBuf),
    /// Standard output, once every day is complete.
    Stdout,
}

/// Everything one export run needs.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub base_url: Url,
    pub service_id: String,
    /// The export token (`Authorization: Bearer`).
    pub token: String,
    pub what: What,
    /// The service's timezone, when known: days not over in it are never
    /// recorded as done. Unknown: a day counts as over once it is over in
    /// every timezone (12:00 UTC the next day).
    pub timezone: Option<Tz>,
    /// Requests at once (the service's export concurrency limit).
    pub concurrency: usize,
    /// Export calls per hour (the service's quota), for the time estimate.
    pub per_hour: u32,
    pub retry: RetryPolicy,
    pub output: Output,
    pub compression: Compression,
    /// Overwrite an existing output file.
    pub force: bool,
    /// Plain log lines even on a terminal.
    pub plain: bool,
}

/// One unit's outcome, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSummary {
    pub label: String,
    pub rows: u64,
    pub bytes: u64,
    pub retries: u32,
    /// Done by an earlier run (not fetched now).
    pub resumed: bool,
    /// Not over yet in the service's timezone: fetched, not recorded.
    pub open: bool,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub units: Vec<UnitSummary>,
    /// The output file or directory (`None` for stdout).
    pub output: Option<PathBuf>,
    pub elapsed: Duration,
    /// Bytes written to the output (after compression).
    pub output_bytes: u64,
}

impl Summary {
    /// The summary table: rows per day, bytes, retries; then the totals.
    pub fn table(&self) -> String {
        let mut out = format!("{:<12} {:>12} {:>10} {:>7}  note\n", "day", "rows", "bytes", "retries");
        for u in &self.units {
            let note = match (u.resumed, u.open) {
                (true, _) => "from an earlier run",
                (_, true) => "not over yet: fetched, will be fetched again",
                _ => "",
            };
            out.push_str(&format!(
                "{:<12} {:>12} {:>10} {:>7}  {note}\n",
                u.label,
                thousands(u.rows),
                human_bytes(u.bytes),
                u.retries
            ));
        }
        let rows: u64 = self.units.iter().map(|u| u.rows).sum();
        let bytes: u64 = self.units.iter().map(|u| u.bytes).sum();
        let retries: u32 = self.units.iter().map(|u| u.retries).sum();
        out.push_str(&format!(
            "{:<12} {:>12} {:>10} {:>7}  in {}\n",
            "total",
            thousands(rows),
            human_bytes(bytes),
            retries,
            human_duration(self.elapsed)
        ));
        if let Some(path) = &self.output {
            out.push_str(&format!(
                "wrote {} ({} on disk; the bytes above count each day with its header, uncompressed)\n",
                path.display(),
                human_bytes(self.output_bytes)
            ));
        }
        out
    }
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The server refused the request for good (400/401): retrying cannot help.
    #[error("{label}: the server refused the export: HTTP {status} {message}{}\nhint: {hint}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        label: String,
        status: u16,
        message: String,
        detail: Option<String>,
        hint: String,
    },
    /// A unit failed after every retry.
    #[error("{label}: gave up after {retries} retries: {last}\nthe days already done are kept: run the same command again to resume")]
    GaveUp { label: String, retries: u32, last: String },
    /// Days' columns differ, so they cannot share one header.
    #[error("the columns of {first} and {other} differ (was a property registered in between?):\n  {first}: {first_header}\n  {other}: {other_header}\nname the columns with --properties, or write one file per day with --split daily")]
    Columns {
        first: String,
        other: String,
        first_header: String,
        other_header: String,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A plain-words hint for a refusal's message (SPEC §2.2).
pub fn hint(message: &str) -> &'static str {
    match message {
        "unauthorized_token" => "check --service and the export token (FINEPORT_EXPORT_TOKEN); an import token or another service's token is refused, and a reissued token replaces the old one after 14 days",
        "exceed_date_range_limit" => "--from is older than the service's look-back (DFINERY: 30 days, counted in the service's timezone); move --from forward",
        "invalid_parameter" => "an event or property name is not in the service's taxonomy, a date is not yyyy-MM-dd, or --from is after --to; the detail says which",
        _ => "see the server's message",
    }
}

impl ExportSpec {
    /// The request body of one unit (SPEC §2.1).
    pub fn body(&self, day: Option<NaiveDate>) -> Value {
        let mut body = Map::new();
        let mut selection = |kind: &str, list: &str, s: &Selection| {
            let (ty, names) = match s {
                Selection::All => ("all", None),
                Selection::Include(n) => ("include", Some(n)),
                Selection::Exclude(n) => ("exclude", Some(n)),
            };
            body.insert(kind.into(), ty.into());
            if let Some(names) = names {
                body.insert(list.into(), json!(names));
            }
        };
        match &self.what {
            What::Events { events, properties, .. } => {
                selection("events_condition_type", "events", events);
                selection("properties_condition_type", "properties", properties);
                if let Some(day) = day {
                    let day = day.format("%Y-%m-%d").to_string();
                    body.insert("from_date".into(), day.clone().into());
                    body.insert("to_date".into(), day.into());
                }
            }
            What::Profiles {
                properties,
                audience,
                external_id,
            } => {
                selection("properties_condition_type", "properties", properties);
                if let Some(audience) = audience {
                    body.insert("audience".into(), audience.clone().into());
                }
                if *external_id {
                    body.insert("identities_condition_type".into(), "include".into());
                    body.insert("identities".into(), json!(["df_external_id"]));
                }
            }
        }
        Value::Object(body)
    }

    /// The fingerprint a state file must match to be resumed.
    fn fingerprint(&self) -> Value {
        let kind = match self.what {
            What::Events { .. } => "event",
            What::Profiles { .. } => "userprofile",
        };
        json!({
            "url": self.base_url.as_str(),
            "service_id": self.service_id,
            "kind": kind,
            "body": self.body(None),
        })
    }

    /// The units in order: each day of the range, or `profiles`.
    pub fn units(&self) -> Vec<(String, Option<NaiveDate>)> {
        match &self.what {
            What::Events { from, to, .. } => from
                .iter_days()
                .take_while(|d| d <= to)
                .map(|d| (d.format("%Y-%m-%d").to_string(), Some(d)))
                .collect(),
            What::Profiles { .. } => vec![("profiles".to_owned(), None)],
        }
    }

    /// Whether `day` is over (in the service's timezone, or everywhere).
    pub fn is_over(&self, day: NaiveDate, now: DateTime<Utc>) -> bool {
        let next = day + Days::days(1);
        match self.timezone {
            Some(tz) => fineport_contract::time::today_in(tz, now) >= next,
            None => next.and_hms_opt(12, 0, 0).is_some_and(|noon| now.naive_utc() >= noon),
        }
    }

    fn endpoint(&self) -> Url {
        let last = match self.what {
            What::Events { .. } => "event",
            What::Profiles { .. } => "userprofile",
        };
        crate::http::api_url(&self.base_url, &["api", "v1", "export", last], &self.service_id)
    }

    /// The output file of one day in `--split daily` mode.
    fn daily_name(&self, label: &str) -> String {
        format!("{}_events_{label}{}", self.service_id, self.compression.suffix())
    }
}

/// The quota gate shared by all workers: closed until `until` when the
/// hour is used up; `remaining` as the last answer said.
/// The first request of a run (see [`Run::pass_gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Probe {
    #[default]
    NotSent,
    InFlight,
    Answered,
}

#[derive(Default)]
struct Gate {
    probe: Probe,
    until: Option<SystemTime>,
    remaining: Option<u64>,
    reset_at: Option<SystemTime>,
    planned: bool,
}

struct Run<'a> {
    spec: &'a ExportSpec,
    http: reqwest::Client,
    progress: &'a Progress,
    gate: Mutex<Gate>,
    /// Units still to fetch (for the plan line).
    to_fetch: usize,
    work: &'a WorkDir,
    split: bool,
    /// When the run started (which days are over).
    now: DateTime<Utc>,
    /// The first finished unit's label and header, which every other unit
    /// must match in a single-file output.
    first_header: Mutex<Option<(String, String)>>,
}

enum Attempt {
    Done(DoneUnit),
    /// Transient: retry after backoff.
    Retry(String),
    /// Refused by the limits: wait this long, then try again (no retry used).
    /// `None`: the refusal said nothing about when (no rate-limit headers).
    Wait(Option<Duration>),
}

impl Run<'_> {
    /// Waits while the gate is closed, showing why.
    ///
    /// The first request of a run goes alone: until it is answered, the
    /// others wait (a few milliseconds), so a run that starts with the hour
    /// used up learns it from one refusal instead of one per slot.
    async fn pass_gate(&self) {
        loop {
            let probe = self.gate.lock().map(|mut g| {
                let state = g.probe;
                if state == Probe::NotSent {
                    g.probe = Probe::InFlight;
                }
                state
            });
            match probe {
                Ok(Probe::InFlight) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(Probe::NotSent) => return,
                _ => {}
            }
            let until = self.gate.lock().ok().and_then(|g| g.until);
            let now = SystemTime::now();
            match until {
                Some(at) if at > now => {
                    // No countdown in the text: a plain log gets one line
                    // per wait, not one per second.
                    self.progress
                        .status(&format!("hourly export quota used up: waiting until {}", clock_utc(at)));
                    tokio::time::sleep(at.duration_since(now).unwrap_or_default().min(Duration::from_secs(1))).await;
                }
                _ => {
                    self.progress.status("");
                    return;
                }
            }
        }
    }

    /// The first request has its answer (after [`Run::observe`] read it):
    /// the others may go.
    fn answered(&self) {
        if let Ok(mut gate) = self.gate.lock() {
            gate.probe = Probe::Answered;
        }
    }

    /// Learns from an answer's rate-limit headers; closes the gate when the
    /// hour is used up, and prints the plan once.
    fn observe(&self, rate: &RateLimit, refused: bool) {
        let Ok(mut gate) = self.gate.lock() else { return };
        let now = SystemTime::now();
        if rate.window.as_deref().is_some_and(|w| w != "1H") {
            return;
        }
        gate.remaining = rate.remaining.or(gate.remaining);
        gate.reset_at = rate.reset_at.or(gate.reset_at);
        if (refused && rate.quota_used_up(now)) || (rate.remaining == Some(0) && !refused) {
            if let Some(at) = rate.reset_at.filter(|at| *at > now) {
                gate.until = Some(gate.until.map_or(at, |u| u.max(at)));
            }
        }
        if !gate.planned {
            gate.planned = true;
            if let (Some(remaining), Some(reset)) = (gate.remaining, gate.reset_at) {
                let needed = self.to_fetch as u64;
                if needed > remaining && self.spec.per_hour > 0 {
                    let after = needed - remaining;
                    let hours_after = after.div_ceil(u64::from(self.spec.per_hour)).saturating_sub(1);
                    let wait = reset.duration_since(now).unwrap_or_default() + Duration::from_secs(3600 * hours_after);
                    self.progress.line(&format!(
                        "{needed} days need {needed} export calls; {remaining} left this hour (it resets at {}), {} an hour after that: this takes at least {}",
                        clock_utc(reset),
                        self.spec.per_hour,
                        human_duration(wait)
                    ));
                }
            }
        }
    }

    /// One unit from start to end: fetched and checked, its columns
    /// compared, its day file written (`--split daily`), recorded as done
    /// when its day is over.
    async fn unit(&self, label: String, day: Option<NaiveDate>) -> Result<UnitSummary, ExportError> {
        let (unit, retries) = self.fetch(self.work, &label, day).await?;
        let open = day.is_some_and(|d| !self.spec.is_over(d, self.now));
        if self.split {
            let part = self.work.part(&label);
            let target = self.work.dir.join(self.spec.daily_name(&label));
            let compression = self.spec.compression;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                parts::write_atomically(&target, |out| {
                    parts::write_parts(std::slice::from_ref(&part), compression, &mut *out).map(drop)
                })?;
                std::fs::remove_file(&part).with_context(|| format!("cannot remove {}", part.display()))
            })
            .await
            .map_err(|e| anyhow::anyhow!("writing {label} failed: {e}"))??;
        } else if let Ok(mut first) = self.first_header.lock() {
            match &*first {
                None => *first = Some((label.clone(), unit.header.clone())),
                Some((first, header)) if *header != unit.header => {
                    return Err(ExportError::Columns {
                        first: first.clone(),
                        other: label,
                        first_header: header.clone(),
                        other_header: unit.header,
                    })
                }
                Some(_) => {}
            }
        }
        if !open {
            self.work.record(&label, unit.clone())?;
        }
        self.progress.unit_done();
        self.progress.line(&format!(
            "{label}: {} rows, {}{}{}",
            thousands(unit.rows),
            human_bytes(unit.bytes),
            if retries > 0 {
                format!(", {retries} retries")
            } else {
                String::new()
            },
            if open { " (not over yet)" } else { "" }
        ));
        Ok(UnitSummary {
            label,
            rows: unit.rows,
            bytes: unit.bytes,
            retries,
            resumed: false,
            open,
        })
    }

    /// Fetches one unit into its part file, with retries.
    async fn fetch(&self, work: &WorkDir, label: &str, day: Option<NaiveDate>) -> Result<(DoneUnit, u32), ExportError> {
        let mut retries = 0;
        // 429s in a row that did not say how long to wait grow their wait
        // (as a retry's backoff), so a server that omits the headers is
        // never asked once a second for an hour.
        let mut blind_refusals = 0;
        loop {
            self.pass_gate().await;
            match self.attempt(work, label, day).await? {
                Attempt::Done(unit) => return Ok((unit, retries)),
                Attempt::Wait(Some(wait)) => tokio::time::sleep(wait).await,
                Attempt::Wait(None) => {
                    blind_refusals += 1;
                    tokio::time::sleep(self.spec.retry.backoff(blind_refusals)).await;
                }
                Attempt::Retry(why) => {
                    if retries >= self.spec.retry.max_retries {
                        return Err(ExportError::GaveUp {
                            label: label.to_owned(),
                            retries,
                            last: why,
                        });
                    }
                    retries += 1;
                    let wait = self.spec.retry.backoff(retries);
                    self.progress.line(&format!(
                        "{label}: {why}; retry {retries}/{} in {:.1}s",
                        self.spec.retry.max_retries,
                        wait.as_secs_f64()
                    ));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt(&self, work: &WorkDir, label: &str, day: Option<NaiveDate>) -> Result<Attempt, ExportError> {
        let request = self
            .http
            .post(self.spec.endpoint())
            .bearer_auth(&self.spec.token)
            .json(&self.spec.body(day));
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.answered();
                return Ok(Attempt::Retry(format!(
                    "request failed: {}",
                    crate::http::error_chain(&e)
                )));
            }
        };
        let status = response.status();
        let rate = RateLimit::from_headers(response.headers());
        self.observe(&rate, status == StatusCode::TOO_MANY_REQUESTS);
        self.answered();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let now = SystemTime::now();
            let wait = rate.wait_after_refusal(now, Duration::from_secs(3700));
            if !rate.quota_used_up(now) {
                self.progress.status(&format!(
                    "{label}: the server is busy (concurrency limit), waiting {}",
                    human_duration(wait.max(Duration::from_secs(1)))
                ));
            }
            return Ok(Attempt::Wait(if rate.quota_used_up(now) {
                Some(Duration::ZERO)
            } else if rate == RateLimit::default() {
                None
            } else {
                Some(wait)
            }));
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let json: Option<Value> = serde_json::from_str(&text).ok();
            let message = json
                .as_ref()
                .and_then(|j| j.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            // 408 is a proxy's timeout: worth another try, unlike the
            // Export API's own 400 and 401.
            if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT {
                let message = message.unwrap_or_else(|| text.trim().chars().take(300).collect());
                return Err(ExportError::Refused {
                    label: label.to_owned(),
                    status: status.as_u16(),
                    hint: hint(&message).to_owned(),
                    detail: json
                        .as_ref()
                        .and_then(|j| j.get("detail"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    message,
                });
            }
            return Ok(Attempt::Retry(format!(
                "HTTP {}{}",
                status.as_u16(),
                message.map(|m| format!(" {m}")).unwrap_or_default()
            )));
        }
        let partial = work.partial(label);
        let mut guard = RemoveOnDrop(Some(partial.clone()));
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.display()))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut check = CsvCheck::default();
        let mut body = response.bytes_stream().map_err(|e| crate::http::error_chain(&e));
        // Rows (records the checker completed, header included) and bytes
        // shown so far, taken back if the attempt fails.
        let (mut records, mut bytes) = (0u64, 0u64);
        let broken = loop {
            match body.next().await {
                None => break None,
                Some(Err(e)) => break Some(format!("the stream broke after {}: {e}", human_bytes(bytes))),
                Some(Ok(chunk)) => {
                    if let Err(e) = check.feed(&chunk) {
                        break Some(format!("the CSV is malformed: {e}"));
                    }
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", partial.display()))?;
                    let new = check.records() - records;
                    records += new;
                    bytes += chunk.len() as u64;
                    self.progress.add(new, chunk.len() as u64);
                }
            }
        };
        let checked = match broken {
            Some(why) => Err(why),
            None => check.finish(),
        };
        let (rows, header) = match checked {
            Ok(ok) => ok,
            Err(why) => {
                self.progress.sub(records, bytes);
                return Ok(Attempt::Retry(why));
            }
        };
        // The header is not a row.
        self.progress.sub(1, 0);
        out.flush()
            .await
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", partial.display()))?;
        out.into_inner()
            .sync_all()
            .await
            .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", partial.display()))?;
        tokio::fs::rename(&partial, work.part(label))
            .await
            .map_err(|e| anyhow::anyhow!("cannot rename {}: {e}", partial.display()))?;
        guard.0 = None;
        let header = String::from_utf8_lossy(&header).trim_end().to_owned();
        Ok(Attempt::Done(DoneUnit { rows, bytes, header }))
    }
}

/// Removes a half-written part when its attempt is dropped (Ctrl-C, an
/// error elsewhere) or fails.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the export to its end: every unit fetched (or resumed), checked
/// and written to the output. On an error the finished units stay in the
/// work directory for the next run, and no output is written.
///
/// Errors: [`ExportError`]; an output file that exists (without `force`).
pub async fn run(spec: &ExportSpec) -> Result<Summary, ExportError> {
    let started = Instant::now();
    let units = spec.units();
    if units.is_empty() {
        return Err(anyhow::anyhow!("the range has no days: --from is after --to").into());
    }
    let request = spec.fingerprint();
    let work = match &spec.output {
        Output::File(path) => {
            if path.exists() && !spec.force {
                return Err(anyhow::anyhow!(
                    "{} exists; pass --force to overwrite it, or choose another --output",
                    path.display()
                )
                .into());
            }
            let mut dir = path.clone().into_os_string();
            dir.push(".parts");
            WorkDir::open(dir.into(), &request, false)?
        }
        Output::Daily(dir) => WorkDir::open(dir.clone(), &request, true)?,
        Output::Stdout => WorkDir::temporary(&request)?,
    };
    let split = matches!(spec.output, Output::Daily(_));
    let now = Utc::now();
    let mut resumed = Vec::new();
    let mut to_fetch = Vec::new();
    for (label, day) in &units {
        let have = work.done(label);
        let present = if split {
            work.dir.join(spec.daily_name(label)).exists()
        } else {
            work.part(label).exists()
        };
        match have {
            Some(unit) if present => resumed.push((label.clone(), unit)),
            _ => to_fetch.push((label.clone(), *day)),
        }
    }
    let progress = Progress::new(units.len() as u64, "days", spec.plain);
    if !resumed.is_empty() {
        progress.line(&format!(
            "resuming: {} of {} days done by an earlier run ({}), {} to fetch",
            resumed.len(),
            units.len(),
            work.dir.display(),
            to_fetch.len()
        ));
        for _ in &resumed {
            progress.unit_done();
        }
    }
    let http = crate::http::export_client(&spec.base_url)?;
    let run = Run {
        spec,
        http,
        progress: &progress,
        gate: Mutex::new(Gate::default()),
        to_fetch: to_fetch.len(),
        work: &work,
        split,
        now,
        first_header: Mutex::new(resumed.first().map(|(l, u)| (l.clone(), u.header.clone()))),
    };
    let mut summaries: Vec<UnitSummary> = resumed
        .iter()
        .map(|(label, u)| UnitSummary {
            label: label.clone(),
            rows: u.rows,
            bytes: u.bytes,
            retries: 0,
            resumed: true,
            open: false,
        })
        .collect();
    let run = &run;
    let mut fetches = futures::stream::iter(to_fetch.into_iter().map(|(label, day)| run.unit(label, day)))
        .buffer_unordered(spec.concurrency.max(1));
    while let Some(result) = fetches.next().await {
        match result {
            Ok(unit) => summaries.push(unit),
            Err(e) => {
                drop(fetches);
                work.remove_if_empty();
                return Err(e);
            }
        }
    }
    drop(fetches);
    summaries.sort_by(|a, b| a.label.cmp(&b.label));
    progress.finish();
    let (output, output_bytes) = write_output(spec, &work, &units).await?;
    Ok(Summary {
        units: summaries,
        output,
        elapsed: started.elapsed(),
        output_bytes,
    })
}

/// Writes the single output from the parts (file and stdout modes) and
/// cleans the work directory up.
async fn write_output(
    spec: &ExportSpec,
    work: &WorkDir,
    units: &[(String, Option<NaiveDate>)],
) -> Result<(Option<PathBuf>, u64), ExportError> {
    let parts: Vec<PathBuf> = units.iter().map(|(label, _)| work.part(label)).collect();
    let compression = spec.compression;
    match &spec.output {
        Output::Daily(dir) => {
            let bytes = units
                .iter()
                .filter_map(|(l, _)| std::fs::metadata(dir.join(spec.daily_name(l))).ok())
                .map(|m| m.len())
                .sum();
            Ok((Some(dir.clone()), bytes))
        }
        Output::File(output) => {
            let path = output.clone();
            let dir = work.dir.clone();
            let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                parts::write_atomically(&path, |out| {
                    parts::write_parts(&parts, compression, &mut *out).map(drop)
                })?;
                let bytes = std::fs::metadata(&path)?.len();
                std::fs::remove_dir_all(&dir)?;
                Ok(bytes)
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))??;
            Ok((Some(output.clone()), bytes))
        }
        Output::Stdout => {
            let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let stdout = std::io::stdout();
                let mut lock = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
                match parts::write_parts(&parts, compression, &mut lock) {
                    // The reader left (`| head`): what it read was whole; not an error.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                    written => Ok(written?),
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))??;
            Ok((None, bytes))
        }
    }
}
