//! `fineport export` against a real `fineport serve --demo`, through a
//! loopback proxy that cuts streams, drops final chunks, answers 429 and
//! 500, and stalls: the client must end with the same bytes as one clean
//! request every time, wait out the hour without asking again, stop at a
//! refusal, and resume after being killed.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{Duration as Days, NaiveDate, Utc};
use common::fault_proxy::{Fault, FaultProxy};
use common::{admin, serve, Server, ADMIN_TOKEN, BIN};

/// `n` whole days ending yesterday in the demo service's timezone (its
/// demo data covers the last 30 days).
fn last_days(server: &Server, n: i64) -> (NaiveDate, NaiveDate) {
    let (ok, service) = admin(server, &["services", "show", "demo"]);
    assert!(ok, "{service}");
    let tz = fineport_contract::time::parse_timezone(service["timezone"].as_str().unwrap()).unwrap();
    let yesterday = fineport_contract::time::today_in(tz, Utc::now()) - Days::days(1);
    (yesterday - Days::days(n - 1), yesterday)
}

/// The whole range in one clean request, straight to the server: what
/// every client run must reproduce byte for byte.
fn reference(server: &Server, token: &str, from: NaiveDate, to: NaiveDate) -> Vec<u8> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let answer = reqwest::Client::new()
            .post(format!("{}/api/v1/export/event?service_id=demo", server.base))
            .bearer_auth(token)
            .json(&serde_json::json!({"events_condition_type":"all","from_date":from.to_string(),"to_date":to.to_string()}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.bytes().await.unwrap().to_vec()
    })
}

fn export(base: &str, token: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["export", "--base-url", base, "--service", "demo", "--plain"])
        .args(args)
        .env("FINEPORT_EXPORT_TOKEN", token)
        .env_remove("FINEPORT_ADMIN_TOKEN")
        .stdin(Stdio::null());
    command
}

/// A fresh `serve --demo`: its data directory (kept alive by the caller),
/// the server, the export token, and the last `days` whole days.
fn demo(days: i64) -> (tempfile::TempDir, Server, String, (NaiveDate, NaiveDate)) {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path(), &[]);
    let token = server.demo_token("export");
    let range = last_days(&server, days);
    (data, server, token, range)
}

/// `fineport export` of `range` from `base` with `extra` flags: the
/// outcome and what it said on stderr.
fn export_range(base: &str, token: &str, (from, to): (NaiveDate, NaiveDate), extra: &[&str]) -> (Output, String) {
    let range = range_args(from, to);
    let mut args: Vec<&str> = range.iter().map(String::as_str).collect();
    args.extend(extra);
    let result = run(&mut export(base, token, &args));
    let stderr = text(&result.stderr);
    (result, stderr)
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run fineport export")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn range_args(from: NaiveDate, to: NaiveDate) -> Vec<String> {
    vec!["--from".into(), from.to_string(), "--to".into(), to.to_string()]
}

fn upstream(server: &Server) -> std::net::SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

/// The `from_date` of an export request's body.
fn day_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|b| b["from_date"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn an_export_through_every_fault_ends_with_the_bytes_of_one_clean_request() {
    let (_data, server, token, (from, to)) = demo(8);
    let expected = reference(&server, &token, from, to);
    assert!(expected.len() > 100_000, "the demo has rows to cut");

    // Each day's first five attempts fail, each in its own way.
    let attempts = Mutex::new(HashMap::<String, usize>::new());
    let proxy = FaultProxy::start(upstream(&server), move |request| {
        let mut attempts = attempts.lock().unwrap();
        let n = attempts.entry(day_of(&request.body)).or_default();
        *n += 1;
        match *n {
            1 => Fault::CutAfter(3000),
            2 => Fault::DropFinalChunk,
            3 => Fault::ServerError,
            4 => Fault::TooMany {
                remaining: 90,
                reset_in: Duration::from_secs(1800),
                retry_after: 1,
            },
            5 => Fault::TooManyBare,
            _ => Fault::Pass,
        }
    });
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("range.csv");
    let (result, stderr) = export_range(
        &proxy.url(),
        &token,
        (from, to),
        &["--retries", "5", "-o", file.to_str().unwrap()],
    );
    assert!(result.status.success(), "{stderr}");
    let got = std::fs::read(&file).unwrap();
    assert!(
        got == expected,
        "{} bytes vs {} expected\n{stderr}",
        got.len(),
        expected.len()
    );
    // Three retries a day (the two 429s are waits, not retries), each said.
    assert!(stderr.contains("the stream broke"), "{stderr}");
    assert!(stderr.contains("HTTP 500"), "{stderr}");
    assert!(stderr.contains("total"), "a summary: {stderr}");
    let requests = proxy.requests();
    assert_eq!(requests.len(), 8 * 6, "six attempts a day");
    assert!(!out.path().join("range.csv.parts").exists(), "the parts are cleaned up");
}

#[test]
fn a_used_up_hour_is_waited_out_without_asking_again_and_the_plan_is_said() {
    let (_data, server, token, (from, to)) = demo(3);
    let proxy = FaultProxy::start(upstream(&server), |request| {
        if request.index == 0 {
            Fault::TooMany {
                remaining: 0,
                reset_in: Duration::from_secs(3),
                retry_after: 3,
            }
        } else {
            Fault::Pass
        }
    });
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.csv");
    // Five slots, but the first request goes alone: one refusal, not five.
    let (result, stderr) = export_range(&proxy.url(), &token, (from, to), &["-o", file.to_str().unwrap()]);
    assert!(result.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 days need 3 export calls; 0 left this hour"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hourly export quota used up: waiting until"),
        "{stderr}"
    );
    let requests = proxy.requests();
    assert_eq!(requests.len(), 4, "one refusal, then one call a day: {requests:?}");
    let waited = requests[1].2.duration_since(requests[0].2).unwrap();
    assert!(
        waited >= Duration::from_millis(2500),
        "nothing was sent before the reset ({waited:?})"
    );
    assert_eq!(std::fs::read(&file).unwrap(), reference(&server, &token, from, to));
}

#[test]
fn refusals_stop_at_once_with_the_servers_detail_and_a_hint() {
    let (_data, server, token, (from, to)) = demo(3);
    let proxy = FaultProxy::start(upstream(&server), |_| Fault::Pass);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.csv");
    let args = range_args(from, to);
    let mut base: Vec<&str> = args.iter().map(String::as_str).collect();
    base.extend(["-o", file.to_str().unwrap()]);

    let mut bad_name = base.clone();
    bad_name.extend(["--properties", "no_such_property"]);
    let result = run(&mut export(&proxy.url(), &token, &bad_name));
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 400 invalid_parameter"), "{stderr}");
    assert!(stderr.contains("no_such_property"), "the server's detail: {stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    assert!(
        proxy.requests().len() <= 3,
        "no retries of a refusal: {:?}",
        proxy.requests()
    );

    let result = run(&mut export(&proxy.url(), "not-the-token", &base));
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("HTTP 401 unauthorized_token") && stderr.contains("FINEPORT_EXPORT_TOKEN"),
        "{stderr}"
    );

    let old = (from - Days::days(60)).to_string();
    let mut too_old = vec!["--from", old.as_str(), "--to", args[3].as_str()];
    too_old.extend(["-o", file.to_str().unwrap()]);
    let result = run(&mut export(&proxy.url(), &token, &too_old));
    let stderr = text(&result.stderr);
    assert!(
        stderr.contains("exceed_date_range_limit") && stderr.contains("look-back"),
        "{stderr}"
    );
    assert!(!file.exists(), "no output after a refusal");
    assert!(!out.path().join("x.csv.parts").exists(), "nor an empty parts directory");
}

#[test]
fn days_whose_columns_differ_cannot_share_one_header() {
    let (_data, server, token, (from, to)) = demo(3);
    let base = server.base.clone();
    let last = to.to_string();
    // A property is registered while the export runs, before its last day.
    let proxy = FaultProxy::start(upstream(&server), move |request| {
        if day_of(&request.body) == last {
            let out = Command::new(BIN)
                .args(["admin", "--url", &base, "--admin-token", ADMIN_TOKEN])
                .args(["taxonomy", "add", "demo", "--event-property", "zz_new_column:String"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        Fault::Pass
    });
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.csv");
    let (result, stderr) = export_range(
        &proxy.url(),
        &token,
        (from, to),
        &["--concurrency", "1", "-o", file.to_str().unwrap()],
    );
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("differ") && stderr.contains("--split daily"),
        "{stderr}"
    );
    assert!(!file.exists());
}

/// Starts an export whose stderr is read by a thread; the lines so far.
fn spawn_export(command: &mut Command) -> (Child, std::sync::Arc<Mutex<Vec<String>>>) {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn export");
    let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn done_days(state: &Path) -> usize {
    std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|s| s["done"].as_object().map(|d| d.len()))
        .unwrap_or(0)
}

#[test]
fn a_killed_or_interrupted_export_resumes_with_only_the_missing_days() {
    let (_data, server, token, (from, to)) = demo(6);
    let expected = reference(&server, &token, from, to);
    let late = (from + Days::days(3)).to_string();
    // Days from the fourth on stall mid-stream: the run can only finish three.
    let proxy = FaultProxy::start(upstream(&server), move |request| {
        if day_of(&request.body) >= late {
            Fault::Stall(2000, Duration::from_secs(60))
        } else {
            Fault::Pass
        }
    });
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("six.csv");
    let parts = out.path().join("six.csv.parts");
    let args = range_args(from, to);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--concurrency", "2", "-o", file.to_str().unwrap()]);

    for signal in [libc::SIGKILL, libc::SIGINT] {
        let (mut child, lines) = spawn_export(&mut export(&proxy.url(), &token, &args));
        wait_for("three finished days and a stalled one", Duration::from_secs(30), || {
            // The second run starts from the first's state: wait until it
            // has cleaned up and stalled on its own.
            let started = signal == libc::SIGKILL || lines.lock().unwrap().iter().any(|l| l.contains("resuming"));
            started
                && done_days(&parts.join("state.json")) == 3
                && std::fs::read_dir(&parts)
                    .unwrap()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        });
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(!file.exists(), "no output from an unfinished run");
        if signal == libc::SIGINT {
            assert_eq!(status.code(), Some(130), "{:?}", lines.lock().unwrap());
            let partials: Vec<_> = std::fs::read_dir(&parts)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .collect();
            assert!(partials.is_empty(), "Ctrl-C leaves no half-written part: {partials:?}");
            assert!(lines.lock().unwrap().iter().any(|l| l.contains("interrupted")));
        }
    }

    // The third run meets no faults: it fetches only the missing days.
    proxy.set_plan(|_| Fault::Pass);
    let direct = &proxy;
    let result = run(&mut export(&direct.url(), &token, &args));
    let stderr = text(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming: 3 of 6 days done by an earlier run"),
        "{stderr}"
    );
    let mut asked: Vec<String> = direct.requests().iter().map(|(r, ..)| day_of(&r.body)).collect();
    asked.sort();
    // A day may be asked twice: the server can still hold the concurrency
    // slot of an export the interrupted run left (429, then a retry).
    asked.dedup();
    let missing: Vec<String> = (3..6).map(|i| (from + Days::days(i)).to_string()).collect();
    assert_eq!(asked, missing, "{stderr}");
    assert!(
        std::fs::read(&file).unwrap() == expected,
        "the resumed file equals one clean request"
    );
    assert!(!parts.exists());
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn gzip_zstd_stdout_and_daily_files_hold_the_same_bytes_and_daily_runs_fetch_only_new_days() {
    let (_data, server, token, (from, to)) = demo(4);
    let expected = reference(&server, &token, from, to);
    let out = tempfile::tempdir().unwrap();
    let range = range_args(from, to);
    let range: Vec<&str> = range.iter().map(String::as_str).collect();
    let with = |extra: &[&str]| {
        let mut args = range.clone();
        args.extend(extra);
        let result = run(&mut export(&server.base, &token, &args));
        assert!(result.status.success(), "{}", text(&result.stderr));
        result.stdout
    };

    let gz = out.path().join("x.csv.gz");
    with(&["--gzip", "-o", gz.to_str().unwrap()]);
    assert!(gunzip(&std::fs::read(&gz).unwrap()) == expected);
    let zst = out.path().join("x.csv.zst");
    with(&["--zstd", "-o", zst.to_str().unwrap()]);
    assert!(zstd::decode_all(&std::fs::read(&zst).unwrap()[..]).unwrap() == expected);
    assert!(with(&["-o", "-"]) == expected, "stdout");
    // A reader that leaves early (`| head`) is not a failure.
    let command = format!(
        "{BIN} export --plain --base-url {} --service demo --from {from} --to {to} -o - | head -c 100 > /dev/null",
        server.base
    );
    let piped = Command::new("bash")
        .args(["-o", "pipefail", "-c", &command])
        .env("FINEPORT_EXPORT_TOKEN", &token)
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert!(!text(&piped.stderr).contains("error"), "{}", text(&piped.stderr));
    let mut args = range.clone();
    args.extend(["--gzip", "-o", gz.to_str().unwrap()]);
    let refused = run(&mut export(&server.base, &token, &args));
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("--force"),
        "an existing output is kept"
    );
    assert!(gunzip(&std::fs::read(&gz).unwrap()) == expected);
    with(&["--gzip", "--force", "-o", gz.to_str().unwrap()]);

    // One file per day; with the timezone known every day is over, so a
    // second run through a counting proxy asks for nothing.
    let daily = out.path().join("daily");
    let proxy = FaultProxy::start(upstream(&server), |_| Fault::Pass);
    let mut args = range.clone();
    args.extend([
        "--split",
        "daily",
        "--gzip",
        "-o",
        daily.to_str().unwrap(),
        "--admin-token",
        ADMIN_TOKEN,
    ]);
    let daily_run = || {
        let result = run(&mut export(&proxy.url(), &token, &args));
        assert!(result.status.success(), "{}", text(&result.stderr));
    };
    daily_run();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&daily)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4);
    let mut joined = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let day = gunzip(&std::fs::read(f).unwrap());
        let body_start = if i == 0 {
            0
        } else {
            day.iter().position(|b| *b == b'\n').unwrap() + 1
        };
        joined.extend_from_slice(&day[body_start..]);
    }
    assert!(joined == expected, "the daily files add up to the range");
    proxy.set_plan(|_| Fault::Pass);
    daily_run();
    // Only the admin API's service read went through the proxy.
    let exports = proxy
        .requests()
        .iter()
        .filter(|(r, ..)| r.target.contains("/export/"))
        .count();
    assert_eq!(exports, 0, "every day was done");
}

#[test]
fn the_real_servers_hourly_quota_is_planned_for_and_asked_once() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path(), &[]);
    let token = server.demo_token("export");
    let (ok, answer) = admin(&server, &["services", "update", "demo", "--export-per-hour", "2"]);
    assert!(ok, "{answer}");
    let (from, to) = last_days(&server, 4);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.csv");
    let args = range_args(from, to);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend([
        "--concurrency",
        "1",
        "--admin-token",
        ADMIN_TOKEN,
        "-o",
        file.to_str().unwrap(),
    ]);
    let (mut child, lines) = spawn_export(&mut export(&server.base, &token, &args));
    wait_for("the wait for the next hour", Duration::from_secs(30), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("quota used up: waiting until"))
    });
    // A few seconds more: a client that loops would ask again and again.
    std::thread::sleep(Duration::from_secs(3));
    let said = lines.lock().unwrap().join("\n");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130), "{said}");
    assert!(said.contains("4 days need 4 export calls; 1 left this hour"), "{said}");
    let (ok, log) = admin(&server, &["requests", "demo", "--limit", "50"]);
    assert!(ok);
    let outcomes: Vec<&str> = log["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["endpoint"].as_str().is_some_and(|e| e.contains("export")))
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    let refused = outcomes.iter().filter(|m| **m == "too_many_api_requests").count();
    let ok = outcomes.iter().filter(|m| **m == "ok").count();
    // After the second export the headers said 0 left: the client waits
    // for the reset without asking (a refusal would be wasted).
    assert_eq!((ok, refused), (2, 0), "two exports, then a wait: {outcomes:?}");
}
