//! Sudden death, measured (issue 14, part 5): the real `fineport serve`
//! killed with SIGKILL twenty times while four clients import, and stopped
//! with SIGTERM while exports stream.
//!
//! - [`twenty_sigkills_under_four_importing_clients`] (DuckDB): every
//!   acknowledged event (HTTP 200 with code 20000, SPEC §4) is exported
//!   exactly once, no event twice, every batch whole or absent (the ones
//!   whose answer was lost too), nothing that was never sent.
//! - [`twenty_sigkills_on_the_cluster`]: the same against ClickHouse +
//!   PostgreSQL (needs `FINEPORT_TEST_CLICKHOUSE_URL` and
//!   `FINEPORT_TEST_POSTGRES_URL`; skipped without them, failed under
//!   `CI=true`).
//! - [`twenty_sigkills_on_the_cluster_with_an_import_log`]: the same with
//!   `--cluster-import-log`, every other start moving nothing by itself, so
//!   that kills find acknowledged events in the log only.
//! - [`sigterm_finishes_what_fits_the_deadline_and_breaks_the_rest_visibly`]:
//!   an export that can finish within `--shutdown-timeout-secs` finishes
//!   whole; one whose reader stalls past it ends without its final chunk;
//!   no new connection is accepted meanwhile; the process exits 0 in time;
//!   acknowledged imports are all there after a restart.
//!
//! Each test prints its figures (`eprintln!`, shown by `--nocapture` and
//! in CI logs); docs/failures.md ("Sudden death") records a run's.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{admin, free_port, send_signal, start_server, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SERVICE: &str = "death";
/// Not UTC, so that "today" is the service's day, not the machine's.
const TIMEZONE: chrono_tz::Tz = chrono_tz::Asia::Seoul;
const CLIENTS: usize = 4;
const KILLS: usize = 20;
/// External ids the clients share (a batch has one identity, SPEC §4).
const USERS: usize = 6;
const EVENT_NAMES: [&str; 3] = ["df_login", "df_view_home", "death_tick"];
/// Longest a client waits for the server to listen again.
const BACK_WITHIN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// What the clients sent, and how each batch ended.

#[derive(Debug, Clone)]
struct SentEvent {
    id: String,
    name: &'static str,
    n: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// HTTP 200 with code 20000 (after `lost` attempts whose answer was lost).
    Acked,
    /// Every attempt's answer was lost and the client gave up: it may or
    /// may not be stored, but whole or not at all.
    Unknown,
    /// Any other answer: nothing may be stored.
    Refused(String),
}

#[derive(Debug, Clone)]
struct SentBatch {
    user: usize,
    events: Vec<SentEvent>,
    fate: Fate,
    /// Attempts whose answer was lost (the connection cut after sending).
    lost: usize,
}

/// An event id no other test or run uses: `client` (or a test's tag) and a
/// serial number.
fn event_id(client: usize, serial: usize) -> String {
    format!("5d0c1e{client:02x}-0000-4000-8000-{serial:012x}")
}

fn user_name(user: usize) -> String {
    format!("sd-user-{user}")
}

/// Ten minutes ago, in UTC: today or (just after midnight) yesterday in the
/// service's timezone, whenever this runs (CI reruns under `faketime`).
fn recent_datetime() -> String {
    (Utc::now() - chrono::Duration::minutes(10))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Yesterday and today in the service's timezone: every event sent in the
/// last day and a half.
fn export_range() -> (String, String) {
    let today = Utc::now().with_timezone(&TIMEZONE).date_naive();
    ((today - chrono::Days::new(1)).to_string(), today.to_string())
}

fn batch_body(user: usize, events: &[SentEvent], extra: Option<&str>) -> Value {
    let at = recent_datetime();
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut properties = json!({"n": e.n});
            if let Some(blob) = extra {
                properties["blob"] = json!(blob);
            }
            json!({"event_log_id": e.id, "event_name": e.name, "event_datetime": at, "properties": properties})
        })
        .collect();
    json!({"common": {"identity": {"external_id": user_name(user)}}, "events": events})
}

/// One POST of an import batch, as the client saw it.
enum Attempt {
    /// No connection (refused: the server is down or restarting): the
    /// request never left, sending it again is a first attempt.
    NotSent,
    /// The request may have arrived; its answer did not (cut or reset).
    Lost,
    Answer(u16, Value),
}

async fn attempt(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Attempt {
    match http.post(url).header("access_token", token).json(body).send().await {
        Err(e) if e.is_connect() => Attempt::NotSent,
        Err(_) => Attempt::Lost,
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(bytes) => Attempt::Answer(status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
                Err(_) => Attempt::Lost,
            }
        }
    }
}

fn acknowledged(status: u16, answer: &Value) -> bool {
    status == 200 && answer["code"] == "20000"
}

#[derive(Default)]
struct ClientRun {
    batches: Vec<SentBatch>,
    /// Attempts refused a connection (the server down), each sent again.
    not_sent: usize,
    /// Batches sent again after their answer was lost.
    resent: usize,
}

/// One importing client: batches of 1 to 60 events of a random user (the
/// last client's often with a large `blob` property) until
/// `stop`; a connection refused is tried again (nothing was sent); a lost
/// answer is sent again or given up (half of the time each: a real client
/// resends, and a batch given up shows what a crash leaves of it).
async fn import_client(
    client: usize,
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    seed: u64,
) -> ClientRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let url = format!("{base}/api/v1/events?service_id={SERVICE}");
    let mut run = ClientRun::default();
    let mut serial = 0;
    while !stop.load(Ordering::SeqCst) {
        let user = rng.random_range(0..USERS);
        let events: Vec<SentEvent> = (0..rng.random_range(1..=60))
            .map(|_| {
                serial += 1;
                SentEvent {
                    id: event_id(client, serial),
                    name: EVENT_NAMES[rng.random_range(0..EVENT_NAMES.len())],
                    n: (client * 1_000_000_000 + serial) as i64,
                }
            })
            .collect();
        // The last client sends large events half of the time: records of
        // up to a megabyte, which a kill can tear in the middle of writing.
        let blob = (client == CLIENTS - 1 && rng.random_bool(0.5)).then(|| "x".repeat(rng.random_range(1_000..16_000)));
        let body = batch_body(user, &events, blob.as_deref());
        let mut lost = 0;
        let mut down_since: Option<Instant> = None;
        let fate = loop {
            match attempt(&http, &url, &token, &body).await {
                Attempt::NotSent => {
                    run.not_sent += 1;
                    let since = *down_since.get_or_insert_with(Instant::now);
                    assert!(
                        since.elapsed() < BACK_WITHIN,
                        "client {client}: the server did not come back"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Attempt::Answer(status, answer) if acknowledged(status, &answer) => break Fate::Acked,
                Attempt::Answer(status, answer) => break Fate::Refused(format!("{status} {answer}")),
                Attempt::Lost => {
                    lost += 1;
                    if rng.random_bool(0.5) {
                        run.resent += 1;
                        down_since = None;
                    } else {
                        break Fate::Unknown;
                    }
                }
            }
        };
        if fate == Fate::Acked {
            acked.fetch_add(1, Ordering::SeqCst);
        }
        run.batches.push(SentBatch {
            user,
            events,
            fate,
            lost,
        });
    }
    run
}

// ---------------------------------------------------------------------------
// The check of an export against what was sent.

#[derive(Debug, Default)]
struct Verdict {
    rows: usize,
    /// Acknowledged events missing from the export (a).
    lost: Vec<String>,
    /// Events exported more than once (b).
    doubled: Vec<String>,
    /// Batches with some but not all of their events (c).
    halves: Vec<String>,
    /// Exported events no client sent (d).
    strangers: Vec<String>,
    /// Refused batches with events stored.
    refused_stored: Vec<String>,
    /// Rows whose cells are not what was sent.
    altered: Vec<String>,
    /// Users whose events carry more than one `df_unified_id`, or users
    /// sharing one.
    identities: Vec<String>,
    unknown_stored: usize,
    unknown_absent: usize,
}

impl Verdict {
    fn assert_clean(&self) {
        let show = |what: &str, v: &[String]| {
            if v.is_empty() {
                String::new()
            } else {
                format!("{what}: {} (e.g. {:?}); ", v.len(), &v[..v.len().min(3)])
            }
        };
        let problems = [
            show("(a) acknowledged events lost", &self.lost),
            show("(b) events exported twice", &self.doubled),
            show("(c) batches half stored", &self.halves),
            show("(d) events never sent", &self.strangers),
            show("refused batches stored", &self.refused_stored),
            show("rows not as sent", &self.altered),
            show("identities", &self.identities),
        ]
        .concat();
        assert!(problems.is_empty(), "{problems}");
    }
}

/// Reads an event export (with the `n` property) and checks it against
/// `batches`: every acknowledged event once, every batch whole or absent,
/// nothing else, each row's name and `n` as sent, one `df_unified_id` per user.
fn check_export(csv: &str, batches: &[SentBatch]) -> Verdict {
    let mut sent: HashMap<&str, (usize, usize)> = HashMap::new();
    for (b, batch) in batches.iter().enumerate() {
        for (e, event) in batch.events.iter().enumerate() {
            assert!(
                sent.insert(&event.id, (b, e)).is_none(),
                "{} sent in two batches",
                event.id
            );
        }
    }
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().expect("the header line").clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column in {headers:?}"))
    };
    let (id_col, uid_col, name_col, n_col) = (
        column("df_event_log_id"),
        column("df_unified_id"),
        column("event_name"),
        column("n"),
    );
    let mut verdict = Verdict::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut present = vec![0usize; batches.len()];
    let mut uids: BTreeMap<usize, HashSet<String>> = BTreeMap::new();
    for record in reader.records() {
        let record = record.expect("a CSV record");
        verdict.rows += 1;
        let id = &record[id_col];
        if !seen.insert(id.to_owned()) {
            verdict.doubled.push(id.to_owned());
            continue;
        }
        let Some(&(b, e)) = sent.get(id) else {
            verdict.strangers.push(id.to_owned());
            continue;
        };
        let event = &batches[b].events[e];
        if record[name_col] != *event.name || record[n_col] != event.n.to_string() {
            verdict.altered.push(format!("{:?}", record.iter().collect::<Vec<_>>()));
        }
        present[b] += 1;
        uids.entry(batches[b].user)
            .or_default()
            .insert(record[uid_col].to_owned());
    }
    for (batch, &present) in batches.iter().zip(&present) {
        let whole = present == batch.events.len();
        let first = &batch.events[0].id;
        if present != 0 && !whole {
            verdict.halves.push(format!(
                "{first}: {present} of {} ({:?})",
                batch.events.len(),
                batch.fate
            ));
        }
        match &batch.fate {
            Fate::Acked => verdict.lost.extend(
                batch
                    .events
                    .iter()
                    .filter(|e| !seen.contains(&e.id))
                    .map(|e| e.id.clone()),
            ),
            Fate::Refused(why) if present > 0 => verdict.refused_stored.push(format!("{first}: {why}")),
            Fate::Refused(_) => {}
            Fate::Unknown if whole => verdict.unknown_stored += 1,
            Fate::Unknown => verdict.unknown_absent += 1,
        }
    }
    let mut owners: HashMap<&String, usize> = HashMap::new();
    for (user, ids) in &uids {
        if ids.len() != 1 {
            verdict
                .identities
                .push(format!("{} has {} df_unified_ids", user_name(*user), ids.len()));
        }
        for id in ids {
            if let Some(other) = owners.insert(id, *user) {
                verdict
                    .identities
                    .push(format!("{} and {} share {id}", user_name(other), user_name(*user)));
            }
        }
    }
    verdict
}

/// The service's whole event export (yesterday and today, with `n`),
/// read to its proper end.
fn export_all(base: &str, export_token: &str) -> String {
    let (from, to) = export_range();
    let (status, text) = common::post(
        format!("{base}/api/v1/export/event?service_id={SERVICE}"),
        ("authorization", &format!("Bearer {export_token}")),
        json!({"events_condition_type": "all", "properties_condition_type": "include",
               "properties": ["n"], "from_date": from, "to_date": to}),
    );
    assert_eq!(status, 200, "{text}");
    text
}

/// The service the tests import into: Asia/Seoul, with the event
/// `death_tick` and the event properties `n` (Long) and `blob` (String).
/// Returns (import token, export token).
fn create_service(server: &Server) -> (String, String) {
    let (ok, created) = admin(
        server,
        &["services", "create", "--id", SERVICE, "--timezone", TIMEZONE.name()],
    );
    assert!(ok, "{created}");
    let (ok, added) = admin(
        server,
        &[
            "taxonomy",
            "add",
            SERVICE,
            "--event",
            "death_tick",
            "--event-property",
            "n:Long",
            "--event-property",
            "blob:String",
        ],
    );
    assert!(ok, "{added}");
    let token = |kind: &str| created[kind].as_str().expect("a token").to_owned();
    (token("import_token"), token("export_token"))
}

// ---------------------------------------------------------------------------
// The server's log.

/// On a failure, shows the end of the servers' log.
struct ShowLogOnFailure(PathBuf);

impl Drop for ShowLogOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = std::fs::read_to_string(&self.0).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("---- {} (last {} lines)", self.0.display(), tail.len());
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}

/// How often the log says `message`, and the sum of its `field=N`.
fn log_count(log: &Path, message: &str, field: &str) -> (usize, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let key = format!("{field}=");
    text.lines()
        .filter(|l| l.contains(message))
        .fold((0, 0), |(lines, sum), line| {
            let n = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&key))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            (lines + 1, sum + n)
        })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// min / median / max of `values`, in ms.
fn spread(values: &[u64]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.as_slice() {
        [] => "-".into(),
        v => format!("{} / {} / {} ms", v[0], v[v.len() / 2], v[v.len() - 1]),
    }
}

// ---------------------------------------------------------------------------
// SIGKILL ×20.

/// When a server is killed: `Millis` after it listens, or once `Acks`
/// more batches were acknowledged.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Millis(u64),
    Acks(usize),
}

struct Life {
    kill_at: KillAt,
    flags: String,
    lived_ms: u64,
    acked: usize,
    /// SIGTERM this many ms before the SIGKILL.
    termed_first: Option<u64>,
    /// Killed again this many ms into the next start.
    killed_starting: Option<u64>,
    /// From the kill to "listening on" of the next server (a kill while
    /// it started included).
    restart_ms: u64,
}

/// Kills the server `KILLS` times with SIGKILL while `CLIENTS` clients
/// import, restarting it on the same port and data each time with the
/// next of `flag_sets` (in turn), then checks one export of everything.
fn sudden_death(label: &str, base_flags: &[String], flag_sets: &[&[&str]]) {
    let started = Instant::now();
    let seed: u64 = std::env::var("FINEPORT_SUDDEN_DEATH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{label}: seed {seed} (FINEPORT_SUDDEN_DEATH_SEED={seed} repeats the kill moments)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let _show = ShowLogOnFailure(log.clone());
    let port = free_port();
    // The flags of the `set`th start.
    let flags_of = |set: usize| -> Vec<&str> {
        let mut flags: Vec<&str> = base_flags.iter().map(String::as_str).collect();
        flags.extend_from_slice(flag_sets[set % flag_sets.len()]);
        flags
    };
    let start = |set: usize| -> (Server, String) {
        let server = start_server(&data, port, &flags_of(set), &log)
            .unwrap_or_else(|printed| panic!("{label}: serve stopped before listening: {printed}"));
        (server, flag_sets[set % flag_sets.len()].join(" "))
    };

    let (mut server, mut flags) = start(0);
    let (import_token, export_token) = create_service(&server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENTS)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            runtime.spawn(import_client(
                c,
                server.base.clone(),
                import_token.clone(),
                stop.clone(),
                acked.clone(),
                seed.wrapping_add(c as u64 + 1),
            ))
        })
        .collect();

    let mut lives: Vec<Life> = Vec::new();
    let mut born = Instant::now();
    for kill in 0..KILLS {
        let acked_at_birth = acked.load(Ordering::SeqCst);
        // Early kills (during the first requests after a restart), later
        // ones, and kills after a number of acknowledged batches.
        let kill_at = match kill % 3 {
            0 => KillAt::Millis(rng.random_range(0..150)),
            1 => KillAt::Millis(rng.random_range(150..1200)),
            _ => KillAt::Acks(rng.random_range(1..120)),
        };
        loop {
            let due = match kill_at {
                KillAt::Millis(ms) => born.elapsed() >= Duration::from_millis(ms),
                KillAt::Acks(n) => acked.load(Ordering::SeqCst) - acked_at_birth >= n,
            };
            if due {
                break;
            }
            assert!(
                born.elapsed() < Duration::from_secs(30),
                "{label}: no progress for 30 s after restart {kill} ({} batches acknowledged)",
                acked.load(Ordering::SeqCst) - acked_at_birth
            );
            assert!(
                !clients.iter().any(|c| c.is_finished()),
                "{label}: a client stopped (panicked)"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every fifth time, an impatient stop: SIGTERM, then SIGKILL in
        // the middle of the graceful shutdown (its final move into the
        // tables, the emptying of the log).
        let termed_first = (kill % 5 == 4).then(|| {
            let after = rng.random_range(0..100);
            send_signal(&server.child, libc::SIGTERM);
            std::thread::sleep(Duration::from_millis(after));
            after
        });
        server.child.kill().expect("SIGKILL");
        let killed = Instant::now();
        server.child.wait().expect("reap the killed server");
        let lived_ms = millis(born.elapsed());
        let acked_in_life = acked.load(Ordering::SeqCst) - acked_at_birth;
        // Every fourth time, one more SIGKILL while the next server starts:
        // in the middle of opening the store or of replaying the log.
        let killed_starting = (kill % 4 == 3).then(|| {
            let after = rng.random_range(0..250);
            let mut starting = common::serve_command(&data, &format!("127.0.0.1:{port}"))
                .args(flags_of(kill + 1))
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::OpenOptions::new().append(true).open(&log).expect("server log"))
                .spawn()
                .expect("spawn fineport serve");
            std::thread::sleep(Duration::from_millis(after));
            starting.kill().expect("SIGKILL");
            starting.wait().expect("reap");
            after
        });
        let (next, next_flags) = start(kill + 1);
        lives.push(Life {
            kill_at,
            flags: std::mem::replace(&mut flags, next_flags),
            lived_ms,
            acked: acked_in_life,
            termed_first,
            killed_starting,
            restart_ms: millis(killed.elapsed()),
        });
        server = next;
        born = Instant::now();
    }
    // The last server takes some more, then the clients stop.
    let acked_at_birth = acked.load(Ordering::SeqCst);
    while acked.load(Ordering::SeqCst) - acked_at_birth < 20 {
        assert!(
            born.elapsed() < Duration::from_secs(30),
            "{label}: no progress at the end"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::SeqCst);
    let runs: Vec<ClientRun> = runtime.block_on(async {
        let mut runs = Vec::new();
        for client in clients {
            runs.push(client.await.expect("an import client panicked"));
        }
        runs
    });
    let import_secs = started.elapsed().as_secs_f64();

    let exported_at = Instant::now();
    let csv = export_all(&server.base, &export_token);
    let export_ms = millis(exported_at.elapsed());
    let batches: Vec<SentBatch> = runs.iter().flat_map(|r| r.batches.iter().cloned()).collect();
    let verdict = check_export(&csv, &batches);

    // ---- The figures.
    let count = |f: &dyn Fn(&SentBatch) -> bool| batches.iter().filter(|b| f(b)).count();
    let events =
        |f: &dyn Fn(&SentBatch) -> bool| -> usize { batches.iter().filter(|b| f(b)).map(|b| b.events.len()).sum() };
    let is_acked = |b: &SentBatch| b.fate == Fate::Acked;
    let refused: Vec<&String> = batches
        .iter()
        .filter_map(|b| match &b.fate {
            Fate::Refused(why) => Some(why),
            _ => None,
        })
        .collect();
    let (replays, replayed_batches) = log_count(&log, "storing what the import log holds", "batches");
    let (torn, torn_bytes) = log_count(&log, "ends with an incomplete record", "dropped_bytes");
    eprintln!(
        "{label}: {} kills (SIGKILL), each followed by a restart on the same data:",
        lives.len()
    );
    for (i, life) in lives.iter().enumerate() {
        eprintln!(
            "  kill {:>2}: at {:?}, after {:>4} ms alive and {:>3} batches acknowledged [{}]; {}{}listening again {:>4} ms later",
            i + 1,
            life.kill_at,
            life.lived_ms,
            life.acked,
            if life.flags.is_empty() { "defaults" } else { &life.flags },
            life.termed_first
                .map_or(String::new(), |ms| format!("SIGTERM {ms} ms before; ")),
            life.killed_starting
                .map_or(String::new(), |ms| format!("killed again {ms} ms into the restart; ")),
            life.restart_ms
        );
    }
    let plain_restarts: Vec<u64> = lives
        .iter()
        .filter(|l| l.killed_starting.is_none())
        .map(|l| l.restart_ms)
        .collect();
    eprintln!(
        "{label}: restart (kill to listening, recovery included), min / median / max: {}; \
         {} more kills during a restart; {} kills {} ms after a SIGTERM",
        spread(&plain_restarts),
        lives.iter().filter(|l| l.killed_starting.is_some()).count(),
        lives.iter().filter(|l| l.termed_first.is_some()).count(),
        lives
            .iter()
            .filter_map(|l| l.termed_first.map(|ms| ms.to_string()))
            .collect::<Vec<_>>()
            .join("/")
    );
    eprintln!(
        "{label}: batches sent {}: acknowledged {} ({} of them after a lost answer and a resend), \
         unknown {} (answer lost, given up: {} found whole, {} absent), refused {}",
        batches.len(),
        count(&is_acked),
        count(&|b| b.fate == Fate::Acked && b.lost > 0),
        count(&|b| b.fate == Fate::Unknown),
        verdict.unknown_stored,
        verdict.unknown_absent,
        refused.len()
    );
    eprintln!(
        "{label}: connections refused while down (retried): {}; resends after a lost answer: {}",
        runs.iter().map(|r| r.not_sent).sum::<usize>(),
        runs.iter().map(|r| r.resent).sum::<usize>()
    );
    eprintln!(
        "{label}: events sent {}, acknowledged {}, exported {} (rows checked one by one)",
        events(&|_| true),
        events(&is_acked),
        verdict.rows
    );
    if replays > 0 || torn > 0 {
        eprintln!(
            "{label}: starts that found the import log non-empty: {replays} ({replayed_batches} batches \
             stored again, moved or not); torn log records dropped: {torn} ({torn_bytes} bytes)"
        );
    }
    eprintln!(
        "{label}: imports and kills {import_secs:.1} s, the final export {export_ms} ms, total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    verdict.assert_clean();
    // A refusal is no crash's doing: every answer here is 20000 or lost.
    assert!(refused.is_empty(), "{label}: refused batches: {refused:?}");
    assert!(
        count(&is_acked) >= KILLS * 10,
        "{label}: too few batches acknowledged to mean anything"
    );
    drop(server);
}

/// DuckDB, in turn: the defaults; moves into the tables after every 64
/// events (kills land in DuckDB commits); moves of 64 events into one
/// transaction committed every 256 (kills land in open transactions and
/// their commits); no moves at all until the next start (everything is
/// replayed from the import log).
#[test]
fn twenty_sigkills_under_four_importing_clients() {
    sudden_death(
        "duckdb",
        &[],
        &[
            &[],
            &["--import-move-events", "64", "--import-move-idle-ms", "5"],
            &[
                "--import-move-events",
                "64",
                "--import-commit-events",
                "256",
                "--import-move-idle-ms",
                "600000",
            ],
            &["--import-move-events", "1000000", "--import-move-idle-ms", "600000"],
        ],
    );
}

/// The same against the cluster store (ClickHouse + PostgreSQL), on
/// databases of its own, dropped at the end.
#[test]
fn twenty_sigkills_on_the_cluster() {
    let Some((_databases, flags)) = cluster_databases("twenty_sigkills_on_the_cluster") else {
        return;
    };
    sudden_death("cluster", &flags, &[&[], &["--clickhouse-insert-linger-ms", "20"]]);
}

/// Drops a test's cluster databases at the end, whatever happens.
struct Databases(
    fineport_store::testing::TestCluster,
    fineport_store::cluster::ClusterOptions,
);

impl Drop for Databases {
    fn drop(&mut self) {
        self.0.drop_databases(&self.1);
    }
}

/// Fresh cluster databases for `test` and the `serve` flags that use them;
/// `None` (after saying so) without the cluster.
fn cluster_databases(test: &str) -> Option<(Databases, Vec<String>)> {
    let cluster = fineport_store::testing::TestCluster::from_env(test)?;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let options = runtime.block_on(cluster.fresh_databases());
    let flags = vec![
        format!("--clickhouse-url={}", options.clickhouse.urls.join(",")),
        format!("--clickhouse-database={}", options.clickhouse.database),
        format!("--postgres-url={}", options.postgres_url),
    ];
    Some((Databases(cluster, options), flags))
}

/// The same on the cluster with an import log (`--cluster-import-log`):
/// answers come from the log, and every other start moves nothing into
/// ClickHouse by itself (a move only for a read or at shutdown), so that
/// the kills find acknowledged events only in the log, which the next
/// start must store, each once.
#[test]
fn twenty_sigkills_on_the_cluster_with_an_import_log() {
    let test = "twenty_sigkills_on_the_cluster_with_an_import_log";
    let Some((_databases, mut flags)) = cluster_databases(test) else {
        return;
    };
    let log_dir = tempfile::tempdir().expect("tempdir");
    flags.push(format!(
        "--cluster-import-log={}",
        log_dir.path().join("import.log").display()
    ));
    sudden_death(
        "cluster with an import log",
        &flags,
        &[
            &[],
            &[
                "--cluster-import-move-events",
                "1000000",
                "--cluster-import-move-idle-ms",
                "3600000",
            ],
        ],
    );
}

// ---------------------------------------------------------------------------
// SIGTERM: a raw HTTP/1.1 export, to see exactly how its body ends.

/// An event export read straight off the socket, chunk by chunk.
struct RawExport {
    reader: BufReader<TcpStream>,
    body: Vec<u8>,
}

/// How a chunked body ended.
#[derive(Debug, PartialEq)]
enum BodyEnd {
    /// The final (zero-size) chunk and the blank line after it.
    Complete,
    /// The connection ended (or failed) before the final chunk.
    Broken(String),
}

impl RawExport {
    /// Sends the export request (no compression, `Connection: close`) and
    /// reads the answer's head: it must be a 200 with a chunked body.
    fn start(port: u16, export_token: &str) -> RawExport {
        let (from, to) = export_range();
        let body = json!({"events_condition_type": "all", "from_date": from, "to_date": to}).to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect for the export");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        write!(
            stream,
            "POST /api/v1/export/event?service_id={SERVICE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Authorization: Bearer {export_token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send the export request");
        let mut reader = BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("the answer's head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        assert!(head[0].starts_with("http/1.1 200"), "{head:?}");
        assert!(
            head.iter().any(|h| h == "transfer-encoding: chunked"),
            "a streamed (chunked) body: {head:?}"
        );
        RawExport {
            reader,
            body: Vec::new(),
        }
    }

    /// Reads the next chunk into `body`: `Ok(true)` for a data chunk,
    /// `Ok(false)` at the final chunk, `Err` when the body broke off.
    fn next_chunk(&mut self) -> Result<bool, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Err("end of stream before the final chunk".into()),
            Ok(_) if !line.ends_with("\r\n") => return Err(format!("cut in a chunk size line {line:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("not a chunk size: {line:?}"))?;
        if size == 0 {
            let mut blank = String::new();
            self.reader.read_line(&mut blank).map_err(|e| e.to_string())?;
            return if blank == "\r\n" {
                Ok(false)
            } else {
                Err(format!("the final chunk without its blank line: {blank:?}"))
            };
        }
        let start = self.body.len();
        self.body.resize(start + size + 2, 0);
        if let Err(e) = self.reader.read_exact(&mut self.body[start..]) {
            self.body.truncate(start);
            return Err(format!("cut inside a chunk: {e}"));
        }
        if &self.body[start + size..] != b"\r\n" {
            return Err("a chunk not followed by CRLF".into());
        }
        self.body.truncate(start + size);
        Ok(true)
    }

    /// Reads until `body` holds at least `bytes` (the body must not end first).
    fn read_at_least(&mut self, bytes: usize) {
        while self.body.len() < bytes {
            assert_eq!(
                self.next_chunk(),
                Ok(true),
                "the export ended after {} bytes",
                self.body.len()
            );
        }
    }

    /// Reads to the end; how the body ended.
    fn finish(&mut self) -> BodyEnd {
        loop {
            match self.next_chunk() {
                Ok(true) => {}
                Ok(false) => return BodyEnd::Complete,
                Err(e) => return BodyEnd::Broken(e),
            }
        }
    }
}

/// Whether a new connection to `port` is refused within `within`.
fn refuses_connections(port: u16, within: Duration) -> bool {
    let since = Instant::now();
    while since.elapsed() < within {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

/// Waits until `within` after `since` for `server` to exit; its exit code
/// and how long after `since` it exited.
fn wait_exit(server: &mut Server, since: Instant, within: Duration) -> Option<(Option<i32>, Duration)> {
    while since.elapsed() < within {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            return Some((status.code(), since.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A client importing small batches into `base` until its connection is
/// refused (the server stopped listening): what it sent, and how each ended.
fn spawn_trickle(base: String, token: String) -> std::thread::JoinHandle<Vec<SentBatch>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client");
            let url = format!("{base}/api/v1/events?service_id={SERVICE}");
            let mut batches = Vec::new();
            for seq in 0.. {
                let events: Vec<SentEvent> = (0..5)
                    .map(|i| SentEvent {
                        id: event_id(0xee, seq * 10 + i),
                        name: "death_tick",
                        n: (seq * 10 + i) as i64,
                    })
                    .collect();
                let user = seq % USERS;
                let fate = match attempt(&http, &url, &token, &batch_body(user, &events, None)).await {
                    Attempt::NotSent => break,
                    Attempt::Lost => Fate::Unknown,
                    Attempt::Answer(status, answer) if acknowledged(status, &answer) => Fate::Acked,
                    Attempt::Answer(status, answer) => Fate::Refused(format!("{status} {answer}")),
                };
                batches.push(SentBatch {
                    user,
                    events,
                    fate,
                    lost: 0,
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            batches
        })
    })
}

/// Events of the big export: 4,000 of 10 kB, a 40 MB CSV, far more than
/// the socket buffers between the server and a reader that stops.
const BIG_EVENTS: usize = 4_000;
const BLOB_BYTES: usize = 10_000;

#[test]
fn sigterm_finishes_what_fits_the_deadline_and_breaks_the_rest_visibly() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    // The import log's segments: `fineport.duckdb.import-log`, then `.1`, `.2`, …
    let import_log_bytes = || -> u64 {
        std::fs::read_dir(&data)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("fineport.duckdb.import-log")
                    })
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let _show = ShowLogOnFailure(log.clone());
    let port = free_port();
    // A deadline long enough for a 40 MB export read at once.
    const LONG: u64 = 20;
    // A deadline a stalled reader outlasts.
    const SHORT: u64 = 2;
    let long = format!("--shutdown-timeout-secs={LONG}");
    let short = format!("--shutdown-timeout-secs={SHORT}");
    let start = |flags: &[&str]| start_server(&data, port, flags, &log).expect("serve listens");

    let mut server = start(&[long.as_str()]);
    let (import_token, export_token) = create_service(&server);
    let blob = "b".repeat(BLOB_BYTES);
    let mut big: Vec<SentBatch> = Vec::new();
    for b in 0..BIG_EVENTS / 100 {
        let events: Vec<SentEvent> = (0..100)
            .map(|i| SentEvent {
                id: event_id(0xb1, b * 100 + i),
                name: "df_login",
                n: (b * 100 + i) as i64,
            })
            .collect();
        let (status, answer) = common::post(
            format!("{}/api/v1/events?service_id={SERVICE}", server.base),
            ("access_token", &import_token),
            batch_body(b % USERS, &events, Some(&blob)),
        );
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains("20000"), "{answer}");
        big.push(SentBatch {
            user: b % USERS,
            events,
            fate: Fate::Acked,
            lost: 0,
        });
    }

    // ---- 1. SIGTERM while an export streams and a client imports: the
    // export (read at once) finishes whole within the long deadline.
    let mut export = RawExport::start(port, &export_token);
    export.read_at_least(256 * 1024);
    let trickle = spawn_trickle(server.base.clone(), import_token.clone());
    std::thread::sleep(Duration::from_millis(300));
    let before_term = export.body.len();
    let term = Instant::now();
    send_signal(&server.child, libc::SIGTERM);
    assert!(
        refuses_connections(port, Duration::from_secs(2)),
        "a new connection is still accepted 2 s after SIGTERM"
    );
    let refused_after = term.elapsed();
    assert_eq!(
        export.finish(),
        BodyEnd::Complete,
        "the export within the deadline ends whole"
    );
    let streamed_after_term = export.body.len() - before_term;
    let (code, exit_after) = wait_exit(&mut server, term, Duration::from_secs(LONG + 10)).expect("the server exits");
    assert_eq!(code, Some(0), "SIGTERM: a clean stop");
    assert!(
        exit_after < Duration::from_secs(LONG),
        "the server waited for its deadline though nothing was left: {exit_after:?}"
    );
    let finished = check_export(&String::from_utf8(export.body.clone()).expect("UTF-8"), &big);
    finished.assert_clean();
    assert_eq!(finished.rows, BIG_EVENTS, "every row, to the last");
    let trickled = trickle.join().expect("the importing client");
    let log_after_term = import_log_bytes();
    assert_eq!(
        log_after_term, 0,
        "a clean stop moves every acknowledged import into the tables"
    );

    // ---- 2. SIGTERM while a reader stalls: at the short deadline the
    // export is cut, and its body ends without the final chunk.
    let restarted = Instant::now();
    let mut server = start(&[short.as_str()]);
    let restart_ms = millis(restarted.elapsed());
    let mut stalled = RawExport::start(port, &export_token);
    stalled.read_at_least(64 * 1024);
    let term = Instant::now();
    send_signal(&server.child, libc::SIGTERM);
    assert!(
        refuses_connections(port, Duration::from_secs(2)),
        "a new connection is still accepted 2 s after SIGTERM"
    );
    // The reader stalls until the server has exited.
    let (code, stalled_exit_after) = wait_exit(&mut server, term, Duration::from_secs(SHORT + 10))
        .expect("the server exits despite the stalled reader");
    assert_eq!(code, Some(0), "SIGTERM: a clean stop, even past the deadline");
    assert!(
        stalled_exit_after >= Duration::from_millis(SHORT * 1000 - 100),
        "the stalled export got its deadline: exited after {stalled_exit_after:?}"
    );
    assert!(
        stalled_exit_after <= Duration::from_secs(SHORT + 3),
        "the server exits within its deadline and a margin: {stalled_exit_after:?}"
    );
    let broken = stalled.finish();
    assert!(
        matches!(broken, BodyEnd::Broken(_)),
        "an export cut at the deadline must end without its final chunk, not look complete ({} bytes)",
        stalled.body.len()
    );
    let stalled_bytes = stalled.body.len();
    assert!(stalled_bytes < export.body.len(), "the stalled export was cut short");

    // ---- 3. Everything acknowledged is there, once; the two exports are
    // in the request log as they ended.
    let server = start(&[short.as_str()]);
    let mut all = big.clone();
    all.extend(trickled.iter().cloned());
    let verdict = check_export(&export_all(&server.base, &export_token), &all);
    verdict.assert_clean();
    // Newest first: this check's export (once the log is flushed, every
    // half second), the stalled one, the finished one.
    let logged_exports = || {
        let (ok, requests) = admin(&server, &["requests", SERVICE, "--limit", "1000"]);
        assert!(ok, "{requests}");
        let exports: Vec<(i64, String)> = requests["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .filter(|r| r["endpoint"].as_str().is_some_and(|e| e.contains("export")))
            .map(|r| {
                (
                    r["status"].as_i64().unwrap_or_default(),
                    r["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        exports
    };
    let mut exports = logged_exports();
    let since = Instant::now();
    while exports.len() < 3 && since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        exports = logged_exports();
    }
    let outcome = |message: &str| (200, message.to_owned());
    assert_eq!(
        exports,
        [outcome("ok"), outcome("client_connection_closed"), outcome("ok")],
        "the request log"
    );

    let trickle_acked = trickled.iter().filter(|b| b.fate == Fate::Acked).count();
    eprintln!(
        "sigterm: finishing export: SIGTERM after {} kB read, new connections refused {} ms later, \
         {} MB more streamed after SIGTERM, ended with its final chunk ({} rows); exit code 0 after {} ms \
         (deadline {LONG} s); import log after the stop: {log_after_term} bytes",
        before_term / 1024,
        millis(refused_after),
        streamed_after_term / (1024 * 1024),
        finished.rows,
        millis(exit_after)
    );
    eprintln!(
        "sigterm: importing client during the stop: {} batches, {trickle_acked} acknowledged, {} answer lost \
         ({} found whole, {} absent), {} refused; all acknowledged present once after a restart",
        trickled.len(),
        trickled.iter().filter(|b| b.fate == Fate::Unknown).count(),
        verdict.unknown_stored,
        verdict.unknown_absent,
        trickled.iter().filter(|b| matches!(b.fate, Fate::Refused(_))).count()
    );
    eprintln!(
        "sigterm: stalled export: exit code 0 after {} ms (deadline {SHORT} s); the reader then got {} kB \
         and {:?}; restart {restart_ms} ms; total {:.1} s",
        millis(stalled_exit_after),
        stalled_bytes / 1024,
        broken,
        started.elapsed().as_secs_f64()
    );
    assert!(trickle_acked > 0, "the importing client got through before SIGTERM");
}
