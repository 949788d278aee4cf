//! The `fineport` binary end to end: `serve --demo` on a real socket, then
//! `fineport admin …` against it, as a user would run them; and a server
//! killed with acknowledged imports still in its import log.

mod common;

use std::process::{Command, Stdio};

use common::{admin, metric, post, serve, serve_command, Server};

#[test]
fn serve_demo_then_administer_it_from_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), &[]);
    let (ok, list) = admin(&server, &["services", "list"]);
    assert!(ok, "{list}");
    assert_eq!(list["services"][0]["service_id"], "demo");

    let (ok, created) = admin(
        &server,
        &[
            "services",
            "create",
            "--id",
            "shop",
            "--timezone",
            "Asia/Seoul",
            "--export-per-hour",
            "7",
        ],
    );
    assert!(ok, "{created}");
    assert_eq!(created["limits"]["export_per_hour"], 7);
    assert!(created["export_token"].as_str().is_some_and(|t| t.len() == 64));
    let (ok, conflict) = admin(&server, &["services", "create", "--id", "shop"]);
    assert!(!ok);
    assert_eq!(conflict["error"], "conflict");

    let (ok, taxonomy) = admin(
        &server,
        &[
            "taxonomy",
            "add",
            "shop",
            "--event",
            "review",
            "--event-property",
            "stars:Long",
        ],
    );
    assert!(ok, "{taxonomy}");
    assert_eq!(taxonomy["added"]["events"], serde_json::json!(["review"]));
    let (ok, audience) = admin(
        &server,
        &["audiences", "create", "shop", "--name", "vips", "--external-id", "u1"],
    );
    assert!(ok, "{audience}");
    assert_eq!(audience["external_ids"], serde_json::json!(["u1"]));
    let (ok, audiences) = admin(&server, &["audiences", "list", "demo"]);
    assert!(ok);
    assert_eq!(audiences["audiences"].as_array().map(Vec::len), Some(2));

    let (ok, reissued) = admin(
        &server,
        &["tokens", "reissue", "shop", "export", "--reason", "leaked in a CI log"],
    );
    assert!(ok, "{reissued}");
    assert!(reissued["previous_valid_until"].is_string());
    let (ok, tokens) = admin(&server, &["tokens", "list", "shop"]);
    assert!(ok, "{tokens}");
    let newest = &tokens["tokens"][0];
    assert_eq!(
        (
            newest["kind"].as_str(),
            newest["state"].as_str(),
            newest["reason"].as_str()
        ),
        (Some("export"), Some("active"), Some("leaked in a CI log")),
        "{tokens}"
    );
    assert_eq!(tokens["tokens"].as_array().map(Vec::len), Some(3), "{tokens}");
    let new_token = reissued["token"].as_str().unwrap_or("no token");
    assert!(!tokens.to_string().contains(new_token), "never a token's value");
    let (ok, _) = admin(&server, &["tokens", "reissue", "shop", "export"]);
    assert!(!ok, "the cool-down refuses a second reissue");
    let (ok, log) = admin(&server, &["requests", "demo", "--limit", "5"]);
    assert!(ok && log["requests"].is_array());
    let (ok, log) = admin(&server, &["requests", "shop", "--outcome", "unauthorized_token"]);
    assert!(ok, "{log}");
    assert_eq!(log["requests"], serde_json::json!([]), "no refused export of shop");
    let (ok, stats) = admin(&server, &["stats", "shop", "--hours", "3", "--days", "2"]);
    assert!(ok, "{stats}");
    assert_eq!(
        (
            stats["hourly"].as_array().map(Vec::len),
            stats["daily"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2)),
        "{stats}"
    );
}

#[test]
fn acknowledged_imports_survive_a_killed_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("fineport.duckdb.import-log");
    // Nothing moves from the log into the tables until a read asks.
    let server = serve(
        dir.path(),
        &["--import-move-events", "1000000", "--import-move-idle-ms", "3600000"],
    );
    let (ok, created) = admin(&server, &["services", "create", "--id", "shop"]);
    assert!(ok, "{created}");
    let import_token = created["import_token"].as_str().expect("import token");
    let export_bearer = format!("Bearer {}", created["export_token"].as_str().expect("export token"));
    let import_auth = ("access_token", import_token);
    let ids = [
        "0b8f3c1e-0000-4000-8000-000000000001",
        "0b8f3c1e-0000-4000-8000-000000000002",
        "0b8f3c1e-0000-4000-8000-000000000003",
    ];
    // The server runs on the real clock: the day is yesterday (UTC, the
    // service's timezone), well inside the 30-day look-back whenever this runs.
    let day = (chrono::Utc::now().date_naive() - chrono::Days::new(1)).to_string();
    let event_datetime = format!("{day}T10:00:00Z");
    let events: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"event_log_id": id, "event_name": "df_login", "event_datetime": event_datetime}))
        .collect();
    let body = serde_json::json!({"common": {"identity": {"external_id": "u1"}}, "events": events});
    let import_url = |s: &Server| format!("{}/api/v1/events?service_id=shop", s.base);
    let (status, answer) = post(import_url(&server), import_auth, body.clone());
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("20000"), "{answer}");
    assert!(
        std::fs::metadata(&log).expect("import log").len() > 0,
        "the acknowledged events wait in the import log"
    );

    // SIGKILL: no shutdown, no final move.
    drop(server);
    let server = serve(dir.path(), &[]);
    assert_eq!(
        std::fs::metadata(&log).expect("import log").len(),
        0,
        "the restart stored the log and emptied it"
    );
    let export = |s: &Server| {
        let (status, csv) = post(
            format!("{}/api/v1/export/event?service_id=shop", s.base),
            ("authorization", &export_bearer),
            serde_json::json!({"events_condition_type": "all", "from_date": day, "to_date": day}),
        );
        assert_eq!(status, 200, "{csv}");
        for id in ids {
            assert_eq!(csv.lines().filter(|r| r.contains(id)).count(), 1, "{id} once in {csv}");
        }
        csv.lines().count() - 1
    };
    assert_eq!(
        export(&server),
        3,
        "the acknowledged events are stored after the restart"
    );
    // The same batch again (a client retrying) is stored once.
    let (status, _) = post(import_url(&server), import_auth, body);
    assert_eq!(status, 200);
    assert_eq!(export(&server), 3);
}

/// Sets the file-size limit (RLIMIT_FSIZE, bytes or "unlimited") of a
/// running process with util-linux's `prlimit`.
fn limit_file_size(pid: u32, soft: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={soft}:unlimited")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
}

/// SPEC §2.3: an export is never silently short. Acknowledged imports wait
/// in the import log; then no file of the server may grow (a full disk, or
/// here a file-size limit set on the running process), so they cannot be
/// moved into the tables: every export of the service answers 500
/// `query_error` instead of a short file. Nothing is lost: once the limit is
/// gone, every acknowledged event is exported, once. Meanwhile `/metrics`
/// shows them as the import log's backlog.
#[test]
fn exports_fail_visibly_while_a_file_size_limit_keeps_imports_out_of_the_tables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(
        dir.path(),
        &["--import-move-events", "1000000", "--import-move-idle-ms", "3600000"],
    );
    let (ok, created) = admin(&server, &["services", "create", "--id", "shop"]);
    assert!(ok, "{created}");
    let (ok, added) = admin(&server, &["taxonomy", "add", "shop", "--event-property", "blob:String"]);
    assert!(ok, "{added}");
    let import_token = created["import_token"].as_str().expect("import token").to_owned();
    let export_bearer = format!("Bearer {}", created["export_token"].as_str().expect("export token"));
    let day = (chrono::Utc::now().date_naive() - chrono::Days::new(1)).to_string();
    let blob = "x".repeat(30_000);
    let events: Vec<serde_json::Value> = (0..100)
        .map(|n| {
            serde_json::json!({"event_log_id": format!("0b8f3c1e-0000-4000-8000-{n:012}"), "event_name": "df_login",
                               "event_datetime": format!("{day}T10:00:00Z"), "properties": {"blob": blob}})
        })
        .collect();
    let body = serde_json::json!({"common": {"identity": {"external_id": "u1"}}, "events": events});
    let (status, answer) = post(
        format!("{}/api/v1/events?service_id=shop", server.base),
        ("access_token", &import_token),
        body,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("20000"), "{answer}");

    let export = |s: &Server| {
        post(
            format!("{}/api/v1/export/event?service_id=shop", s.base),
            ("authorization", &export_bearer),
            serde_json::json!({"events_condition_type": "all", "from_date": day, "to_date": day}),
        )
    };
    let pid = server.child.id();
    limit_file_size(pid, "0");
    for _ in 0..2 {
        let (status, body) = export(&server);
        assert_eq!(status, 500, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON failure body");
        assert_eq!(body["message"], "query_error", "{body}");
    }
    assert_eq!(metric(&server, "fineport_import_log_backlog_batches"), Some(1.0));
    assert_eq!(metric(&server, "fineport_import_log_backlog_events"), Some(100.0));
    assert!(metric(&server, "fineport_import_log_backlog_bytes").is_some_and(|b| b > 3_000_000.0));
    limit_file_size(pid, "unlimited");
    let (status, csv) = export(&server);
    assert_eq!(status, 200, "with room again the same server stores them: {csv}");
    assert_eq!(csv.lines().count(), 101, "every acknowledged event, once");
    for gauge in ["batches", "events", "bytes"] {
        let name = format!("fineport_import_log_backlog_{gauge}");
        assert_eq!(metric(&server, &name), Some(0.0), "{name}");
    }
    let (ok, log) = admin(&server, &["requests", "shop", "--limit", "10"]);
    assert!(ok, "{log}");
    let outcomes: Vec<(u64, &str)> = log["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|e| e["endpoint"] == "/api/v1/export/event")
        .map(|e| (e["status"].as_u64().unwrap_or(0), e["message"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        outcomes,
        [(200, "ok"), (500, "query_error"), (500, "query_error")],
        "{log}"
    );
}

/// Runs `fineport serve` on `data`, expecting it to refuse to start; returns
/// what it wrote to stderr. Fails if it is still running after a minute.
fn serve_refuses_to_start(data: &std::path::Path) -> String {
    let mut child = serve_command(data, "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fineport serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("fineport serve started on corrupt data instead of stopping");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    assert!(!status.success(), "{stderr}");
    stderr
}

/// Runs one statement on the stopped server's database; returns the rows changed.
fn corrupt(data: &std::path::Path, sql: &str) -> usize {
    let conn = duckdb::Connection::open(data.join("fineport.duckdb")).expect("open the database");
    conn.execute(sql, []).expect("corrupting statement")
}

/// Corrupt stored data stops the start with a message naming it, instead
/// of turning silently into UTC or 1970.
#[test]
fn corrupt_stored_settings_stop_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), &[]);
    let (ok, created) = admin(&server, &["services", "create", "--id", "shop"]);
    assert!(ok, "{created}");
    drop(server);

    let tz = |from: &str, to: &str| {
        format!("UPDATE services SET doc = replace(doc, '\"timezone\":\"{from}\"', '\"timezone\":\"{to}\"') WHERE service_id = 'shop'")
    };
    assert_eq!(corrupt(dir.path(), &tz("UTC", "Mars/Olympus")), 1);
    let stderr = serve_refuses_to_start(dir.path());
    assert!(
        stderr.contains("unknown timezone") && stderr.contains("Mars/Olympus") && stderr.contains("shop"),
        "{stderr}"
    );
    corrupt(dir.path(), &tz("Mars/Olympus", "UTC"));

    let created_ms =
        |ms: i64| format!("UPDATE tokens SET created_ms = {ms} WHERE service_id = 'shop' AND kind = 'export'");
    let kept: i64 = duckdb::Connection::open(dir.path().join("fineport.duckdb"))
        .expect("open")
        .query_row(
            "SELECT created_ms FROM tokens WHERE service_id = 'shop' AND kind = 'export'",
            [],
            |r| r.get(0),
        )
        .expect("created_ms");
    assert_eq!(corrupt(dir.path(), &created_ms(i64::MAX)), 1);
    let stderr = serve_refuses_to_start(dir.path());
    assert!(stderr.contains("impossible time"), "{stderr}");
    corrupt(dir.path(), &created_ms(kept));

    assert_eq!(
        corrupt(
            dir.path(),
            "UPDATE tokens SET service_id = 'Not a service' WHERE service_id = 'shop' AND kind = 'import'"
        ),
        1
    );
    let stderr = serve_refuses_to_start(dir.path());
    assert!(stderr.contains("Not a service"), "{stderr}");
    corrupt(
        dir.path(),
        "UPDATE tokens SET service_id = 'shop' WHERE service_id = 'Not a service'",
    );

    // Repaired, it starts again with the service as it was.
    let server = serve(dir.path(), &[]);
    let (ok, shop) = admin(&server, &["services", "show", "shop"]);
    assert!(ok, "{shop}");
    assert_eq!(shop["timezone"], "UTC");
}
