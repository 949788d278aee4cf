//! `fineport import` end to end: the real binary against a real
//! `fineport serve` on loopback, checked through the real Export API.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{admin, post, serve, Server, ADMIN_TOKEN, BIN};
use serde_json::{json, Value};

/// A service on `server` with `extra` settings; (import token, export token).
fn create_service(server: &Server, id: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["services", "create", "--id", id];
    args.extend_from_slice(extra);
    let (ok, created) = admin(server, &args);
    assert!(ok, "{created}");
    (
        created["import_token"].as_str().expect("import token").to_owned(),
        created["export_token"].as_str().expect("export token").to_owned(),
    )
}

/// `fineport import --plain` of `files` into `service`, plus `extra` flags.
fn import(server: &Server, service: &str, token: &str, extra: &[&str], files: &[&Path]) -> Output {
    Command::new(BIN)
        .args(["import", "--plain", "--base-url", &server.base, "--service", service])
        .args(["--import-token", token])
        .args(extra)
        .args(files)
        .env_remove("FINEPORT_ADMIN_TOKEN")
        .output()
        .expect("run fineport import")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Yesterday (UTC, every test service's timezone): inside the look-back whenever this runs.
fn day() -> String {
    (chrono::Utc::now().date_naive() - chrono::Days::new(1)).to_string()
}

/// The service's event export of [`day`], through the Export API.
fn export(server: &Server, service: &str, export_token: &str) -> String {
    let (status, csv) = post(
        format!("{}/api/v1/export/event?service_id={service}", server.base),
        ("authorization", &format!("Bearer {export_token}")),
        json!({"events_condition_type": "all", "from_date": day(), "to_date": day()}),
    );
    assert_eq!(status, 200, "{csv}");
    csv
}

fn event_id(n: usize) -> String {
    format!("0b8f3c1e-0000-4000-8000-{n:012}")
}

/// `n` events of three users, one line each; every tenth a purchase with items.
fn events_jsonl(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        let mut event = json!({
            "identity": {"external_id": format!("user-{}", i % 3)},
            "event_log_id": event_id(i),
            "event_name": "df_login",
            "event_datetime": format!("{}T10:{:02}:{:02}Z", day(), i / 60 % 60, i % 60),
        });
        if i % 10 == 0 {
            event["event_name"] = json!("df_purchase");
            event["properties"] = json!({"df_order_id": format!("{i}"), "df_total_purchase_amount": 15000.0});
            event["items"] = json!([{"df_item_id": "a", "df_price": 1.5}, {"df_item_id": "b", "df_quantity": 2}]);
        }
        text.push_str(&event.to_string());
        text.push('\n');
    }
    text
}

#[test]
fn jsonl_lands_once_and_a_rerun_stores_nothing_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&dir.path().join("data"), &[]);
    let (import_token, export_token) = create_service(&server, "shop", &[]);
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, events_jsonl(250)).expect("write");

    for run in 0..2 {
        let out = import(&server, "shop", &import_token, &[], &[&file]);
        assert!(out.status.success(), "run {run}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("250 events read, 250 stored, 0 rejected"),
            "{}",
            stderr(&out)
        );
        assert!(
            !dir.path().join("events.jsonl.rejects.jsonl").exists(),
            "no rejects, no file"
        );
        let csv = export(&server, "shop", &export_token);
        assert_eq!(csv.lines().count(), 251, "every event once after run {run}");
        for i in [0, 125, 249] {
            assert_eq!(csv.matches(&event_id(i)).count(), 1, "{i}");
        }
        assert!(
            csv.contains(r#""[""a"",""b""]""#),
            "items arrive as they were sent: {}",
            csv.lines().nth(1).unwrap_or("")
        );
    }
}

/// A profile export and an event export load into another service as
/// they were: the same users (`df_unified_id`), the same typed cells.
#[test]
fn an_export_loads_back_into_another_service_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&dir.path().join("data"), &[]);
    let (import_token, export_token) = create_service(&server, "src", &[]);
    let (ok, added) = admin(&server, &["taxonomy", "add", "src", "--event-property", "code:String"]);
    assert!(ok, "{added}");
    let mut text = events_jsonl(120);
    // A String property that looks like a number must stay a string.
    text.push_str(
        &json!({"identity": {"external_id": "user-0"}, "event_log_id": event_id(999), "event_name": "df_login",
                "event_datetime": format!("{}T23:00:00Z", day()), "properties": {"code": "0123"}})
        .to_string(),
    );
    let jsonl = dir.path().join("events.jsonl");
    std::fs::write(&jsonl, text).expect("write");
    let out = import(&server, "src", &import_token, &[], &[&jsonl]);
    assert!(out.status.success(), "{}", stderr(&out));
    let source_csv = export(&server, "src", &export_token);
    let csv_file = dir.path().join("src_events.csv");
    std::fs::write(&csv_file, &source_csv).expect("write");

    let (dst_import, dst_export) = create_service(&server, "dst", &[]);
    // Without the taxonomy, CSV is refused before anything is sent.
    let out = import(&server, "dst", &dst_import, &[], &[&csv_file]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--admin-token"), "{}", stderr(&out));
    // A column the target lacks: a clear error naming it, nothing sent.
    let out = import(
        &server,
        "dst",
        &dst_import,
        &["--admin-token", ADMIN_TOKEN],
        &[&csv_file],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("code") && stderr(&out).contains("fineport admin taxonomy add"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        export(&server, "dst", &dst_export).lines().count(),
        1,
        "nothing was sent"
    );

    let (ok, added) = admin(&server, &["taxonomy", "add", "dst", "--event-property", "code:String"]);
    assert!(ok, "{added}");
    let out = import(
        &server,
        "dst",
        &dst_import,
        &["--admin-token", ADMIN_TOKEN],
        &[&csv_file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let target_csv = export(&server, "dst", &dst_export);
    assert_eq!(
        without_server_datetime(&target_csv),
        without_server_datetime(&source_csv),
        "the same rows, users and cells"
    );
    assert!(
        target_csv.lines().any(|l| l.split(',').any(|cell| cell == "0123")),
        "a numeric-looking String stays a string: {target_csv}"
    );

    // Profiles: the profile export loads back too.
    let profiles = |service: &str, token: &str| {
        let (status, csv) = post(
            format!("{}/api/v1/export/userprofile?service_id={service}", server.base),
            ("authorization", &format!("Bearer {token}")),
            json!({"properties_condition_type": "all", "identities_condition_type": "all"}),
        );
        assert_eq!(status, 200, "{csv}");
        csv
    };
    let profile_body = json!({"identity": {"external_id": "user-1"}, "user_properties": {"df_membership": "gold", "df_push_optin": true},
                              "request_datetime": format!("{}T10:00:00Z", day())});
    let (status, answer) = post(
        format!("{}/api/v1/user-profile?service_id=src", server.base),
        ("access_token", &import_token),
        profile_body,
    );
    assert!(status == 200 && answer.contains("20000"), "{answer}");
    let source_profiles = profiles("src", &export_token);
    let profile_file = dir.path().join("src_userprofile.csv");
    std::fs::write(&profile_file, &source_profiles).expect("write");
    let out = import(
        &server,
        "dst",
        &dst_import,
        &["--profiles", "--admin-token", ADMIN_TOKEN],
        &[&profile_file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(profiles("dst", &dst_export), source_profiles);
}

/// The CSV without its `df_server_datetime` column (the time of receipt,
/// which a re-import cannot keep).
fn without_server_datetime(csv: &str) -> Vec<Vec<String>> {
    let mut reader = ::csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().expect("header").clone();
    let skip = headers.iter().position(|h| h == "df_server_datetime");
    let keep = |record: &::csv::StringRecord| -> Vec<String> {
        record
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, c)| c.to_owned())
            .collect()
    };
    std::iter::once(keep(&headers))
        .chain(reader.records().map(|r| keep(&r.expect("record"))))
        .collect()
}

#[test]
fn invalid_events_are_reported_with_the_reason_and_the_rest_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&dir.path().join("data"), &[]);
    let (import_token, export_token) = create_service(&server, "shop", &[]);
    let mut lines: Vec<String> = events_jsonl(5).lines().map(str::to_owned).collect();
    let mut unknown: Value = serde_json::from_str(&lines[1]).expect("json");
    unknown["event_name"] = json!("not_registered");
    lines[1] = unknown.to_string();
    let mut wrong_type: Value = serde_json::from_str(&lines[3]).expect("json");
    wrong_type["properties"] = json!({"df_total_purchase_amount": "lots"});
    lines[3] = wrong_type.to_string();
    lines.push("not json".into());
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");

    let out = import(&server, "shop", &import_token, &[], &[&file]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let rejects_path = dir.path().join("events.jsonl.rejects.jsonl");
    assert!(
        stderr(&out).contains("3 rejected") && stderr(&out).contains(&rejects_path.display().to_string()),
        "{}",
        stderr(&out)
    );
    let rejects: Vec<Value> = std::fs::read_to_string(&rejects_path)
        .expect("the rejects file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let mut by_line: Vec<(u64, Value, Value, String)> = rejects
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap_or(0),
                r["event_log_id"].clone(),
                r["code"].clone(),
                r["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    by_line.sort_by_key(|r| r.0);
    assert_eq!(by_line.len(), 3, "{rejects:?}");
    assert_eq!(
        (by_line[0].0, &by_line[0].1, &by_line[0].2),
        (2, &json!(event_id(1)), &json!("40001"))
    );
    assert!(by_line[0].3.contains("not_registered"), "{by_line:?}");
    assert_eq!((by_line[1].0, &by_line[1].1), (4, &json!(event_id(3))));
    assert!(by_line[1].3.contains("df_total_purchase_amount"), "{by_line:?}");
    assert_eq!(
        (by_line[2].0, &by_line[2].2),
        (6, &Value::Null),
        "unreadable, never sent"
    );
    assert!(rejects.iter().all(|r| r["file"] == file.display().to_string()));

    let csv = export(&server, "shop", &export_token);
    assert_eq!(csv.lines().count(), 4, "the three valid events: {csv}");
}

#[test]
fn the_per_minute_limit_is_waited_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&dir.path().join("data"), &[]);
    let (import_token, export_token) = create_service(&server, "shop", &["--events-per-minute", "150"]);
    let file = dir.path().join("events.jsonl");
    // 250 events need two windows of 150, whatever second of the minute this starts at.
    std::fs::write(&file, events_jsonl(250)).expect("write");
    let out = import(&server, "shop", &import_token, &["--concurrency", "2"], &[&file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("per-minute limit reached (40401): waiting until"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("250 stored, 0 rejected"), "{}", stderr(&out));
    assert_eq!(export(&server, "shop", &export_token).lines().count(), 251);
}

#[test]
fn a_refused_token_stops_at_once_with_a_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&dir.path().join("data"), &[]);
    let (_, export_token) = create_service(&server, "shop", &[]);
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, events_jsonl(10)).expect("write");
    let out = import(&server, "shop", &export_token, &[], &[&file]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("40201") && stderr(&out).contains("hint: pass the service's import token"),
        "{}",
        stderr(&out)
    );
    let out = import(&server, "nosuch", &export_token, &[], &[&file]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("40101"), "{}", stderr(&out));
}

/// Through a proxy that cuts answers, answers 500, 50000 and 429: every
/// failure is retried or waited out, and every event is stored once.
#[test]
fn through_cut_connections_500s_50000s_and_429s_every_event_is_stored_once() {
    use common::fault_proxy::{Fault, FaultProxy};
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(&dir.path().join("data"), &[]);
    let (import_token, export_token) = create_service(&server, "shop", &[]);
    let upstream: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().expect("address");
    let proxy = FaultProxy::start(upstream, |request| match request.index % 5 {
        // The server stores the batch; its answer is lost on the way.
        0 => Fault::CutAfter(20),
        1 => Fault::ServerError,
        2 => Fault::ImportInternalError,
        3 => Fault::TooMany {
            remaining: 0,
            reset_in: Duration::from_secs(1),
            retry_after: 1,
        },
        _ => Fault::Pass,
    });
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, events_jsonl(300)).expect("write");
    let out = Command::new(BIN)
        .args(["import", "--plain", "--base-url", &proxy.url(), "--service", "shop"])
        .args(["--import-token", &import_token, "--retries", "10"])
        .arg(&file)
        .output()
        .expect("run fineport import");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("300 stored, 0 rejected"), "{err}");
    assert!(
        err.contains("HTTP 500") && err.contains("50000"),
        "each failure is said: {err}"
    );
    assert!(err.contains("40401"), "the 429 is waited out: {err}");
    let csv = export(&server, "shop", &export_token);
    assert_eq!(csv.lines().count(), 301, "every event once");
    for i in 0..300 {
        assert_eq!(csv.matches(&event_id(i)).count(), 1, "{i}");
    }
    assert!(proxy.requests().len() >= 5, "the faults were met");
}
