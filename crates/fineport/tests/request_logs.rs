//! What `fineport serve` writes to its log, as an operator sees it with
//! `RUST_LOG=info`: one line per API request, in the request's span, with
//! its id, the service, route, outcome, rows and bytes; never a token or a
//! body.
//! And `/metrics` through the binary, with `FINEPORT_METRICS_TOKEN`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{get, post, post_with_headers, serve_command, wait_until_listening, Server};
use serde_json::json;

const METRICS_TOKEN: &str = "request-logs-metrics-token";

/// The id the export sends in `x-request-id`.
const EXPORT_ID: &str = "follow-this-export.1";

/// A marker in the import's body, to look for in the log.
const BODY_MARKER: &str = "log-marker-user-7f3a";

/// The log lines (stderr) so far.
fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until a log line contains every one of `needles`.
fn wait_for_line(path: &std::path::Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines(path);
        if let Some(line) = lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?}:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_line_per_request_in_its_span_without_tokens_or_bodies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("stderr.log");
    let port = common::free_port();
    let mut child = serve_command(&dir.path().join("data"), &format!("127.0.0.1:{port}"))
        .arg("--demo")
        .env("RUST_LOG", "info")
        .env("FINEPORT_METRICS_TOKEN", METRICS_TOKEN)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn fineport serve");
    let printed = wait_until_listening(&mut child).unwrap_or_else(|p| panic!("serve stopped: {p}"));
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        printed,
    };
    let (export_token, import_token) = (server.demo_token("export"), server.demo_token("import"));

    // An import (its body carries the marker), then the demo's export.
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let event = json!({"event_log_id": "7f3a0000-0000-4000-8000-000000000001", "event_name": "df_login",
                       "event_datetime": now, "properties": {}});
    let import_body = json!({"common": {"identity": {"external_id": BODY_MARKER}}, "events": [event]});
    let import_bytes = serde_json::to_vec(&import_body).expect("JSON").len();
    let (status, answer) = post(
        format!("{}/api/v1/events?service_id=demo", server.base),
        ("access_token", &import_token),
        import_body,
    );
    assert_eq!(status, 200);
    assert!(answer.contains("20000"), "{answer}");
    let body = server
        .printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("-d '")?.strip_suffix('\'').map(str::to_owned))
        .expect("the demo's curl has a body");
    // The export names itself (as a proxy would), to be followed in the log.
    let (status, headers, csv) = post_with_headers(
        format!("{}/api/v1/export/event?service_id=demo", server.base),
        &[
            ("authorization", &format!("Bearer {export_token}")),
            ("x-request-id", EXPORT_ID),
        ],
        serde_json::from_str(&body).expect("JSON body"),
    );
    assert_eq!(status, 200, "{csv}");
    assert_eq!(headers["x-request-id"], EXPORT_ID);
    // Values may hold newlines: count records, not lines.
    let rows = csv::Reader::from_reader(csv.as_bytes()).records().count();
    assert!(rows > 100, "the demo has events in its curl's range");

    // Each request's line: the fields of its span, then the event.
    let line = wait_for_line(&log, &["route=/api/v1/export/event", "outcome=ok"]);
    for part in [
        &format!(
            " INFO request{{id=\"{EXPORT_ID}\" method=POST route=/api/v1/export/event service_id=\"demo\" outcome=ok "
        ),
        &format!(" status=200 rows={rows} bytes={}}}: ", csv.len()),
        ": fineport_server::request_log: request duration_ms=",
    ] {
        assert!(line.contains(part), "{part:?} is not in {line:?}");
    }
    let line = wait_for_line(&log, &["route=/api/v1/events", "outcome=ok"]);
    let part = format!(" status=200 rows=1 bytes={import_bytes}}}: ");
    assert!(line.contains(&part), "{part:?} is not in {line:?}");
    // The import sent no id: the server made one.
    let id = line
        .split_once("request{id=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no id in {line:?}"));
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");

    // /metrics through the binary: the metrics token opens it.
    assert_eq!(get(format!("{}/metrics", server.base), None).0, 401);
    let (status, text) = get(format!("{}/metrics", server.base), Some(METRICS_TOKEN));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("fineport_requests_total{")
            && l.contains("service_id=\"demo\"")
            && l.contains("endpoint=\"/api/v1/export/event\"")
            && l.contains("outcome=\"ok\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(text.contains("fineport_store_operation_seconds_bucket{"), "{text}");
    assert!(text.contains("fineport_import_log_backlog_events "), "{text}");

    // One line per request: nothing else at info is in a request's span
    // (admin requests and scrapes have none; tower-http's lines are debug).
    let lines = log_lines(&log);
    let in_span = |route: &str| lines.iter().filter(|l| l.contains(&format!("route={route} "))).count();
    assert_eq!(in_span("/api/v1/export/event"), 1, "{lines:#?}");
    assert_eq!(in_span("/api/v1/events"), 1, "{lines:#?}");
    assert_eq!(in_span("/metrics"), 0, "{lines:#?}");

    // No token, header or body anywhere in the log.
    let text = lines.join("\n");
    // An exported event's id: a cell of the CSV body.
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let column = reader
        .headers()
        .expect("a header")
        .iter()
        .position(|h| h == "df_event_log_id")
        .expect("df_event_log_id");
    let exported_id = reader.records().next().expect("a row").expect("a CSV record")[column].to_owned();
    for secret in [
        export_token.as_str(),
        import_token.as_str(),
        common::ADMIN_TOKEN,
        METRICS_TOKEN,
        BODY_MARKER,
        "events_condition_type",
        exported_id.as_str(),
        "authorization",
        "access_token",
    ] {
        assert!(!text.contains(secret), "the log shows {secret:?}:\n{text}");
    }
}
