//! The Import API's `/api/v1/events` end to end: every result code with its
//! exact JSON, atomic batches, idempotency, group commit, limits.

mod common;

use common::*;
use serde_json::{json, Value};

fn ok() -> Value {
    json!({"status": true, "code": "20000", "message": "OK", "data": true})
}

/// Asserts a refusal: code, message, and a list of problems in `data`.
fn assert_code(answer: &Value, code: &str, message: &str) {
    assert_eq!(answer["status"], false, "{answer}");
    assert_eq!(answer["code"], code, "{answer}");
    assert_eq!(answer["message"], message, "{answer}");
    let problems = answer["data"]
        .as_array()
        .unwrap_or_else(|| panic!("data lists the problems: {answer}"));
    assert!(!problems.is_empty());
    assert!(
        problems
            .iter()
            .all(|p| p["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "{answer}"
    );
    assert_eq!(
        answer.as_object().unwrap().len(),
        4,
        "exactly status, code, message, data: {answer}"
    );
}

/// The export of 2026-11-25 (the test clock's today), parsed: (header, rows).
async fn export_today(server: &TestServer, svc: &Svc) -> (Vec<String>, Vec<Vec<String>>) {
    let body = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let resp = server.export(svc, body).await;
    assert_eq!(resp.status(), 200);
    parse_csv(&resp.text().await.unwrap())
}

async fn exported_ids(server: &TestServer, svc: &Svc) -> Vec<String> {
    let (header, rows) = export_today(server, svc).await;
    rows.iter()
        .map(|r| cell(&header, r, "df_event_log_id").to_owned())
        .collect()
}

fn login(n: u128) -> Value {
    event(n, "df_login", "2026-11-25T01:00:00Z", json!({}))
}

async fn every_result_code_with_its_exact_json() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "shop", "limits": {"events_per_minute": 150}}))
        .await;
    let good = events_body("u1", vec![login(1)]).to_string();

    let answer: Value = server
        .import_raw(&svc.id, Some(&svc.import_token), good.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer, ok());

    let r = server
        .import_raw(&svc.id, Some(&svc.import_token), "{not json".into())
        .await;
    assert_eq!(r.status(), 200);
    assert_code(&r.json().await.unwrap(), "40000", "BAD_REQUEST");

    let mut bad = login(2);
    bad["event_datetime"] = json!("yesterday");
    let answer = server.import(&svc, events_body("u1", vec![login(3), bad])).await;
    assert_code(&answer, "40001", "VALIDATION_FAILURE");
    assert_eq!(answer["data"][0]["index"], 1);
    assert!(answer["data"][0]["reason"].as_str().unwrap().contains("event_datetime"));

    for service_id in ["", "nosuch"] {
        let r = server
            .import_raw(service_id, Some(&svc.import_token), good.clone())
            .await;
        assert_code(&r.json().await.unwrap(), "40101", "INVALID_SERVICE_ID");
    }
    for token in [None, Some("wrong"), Some(svc.export_token.as_str())] {
        let r = server.import_raw(&svc.id, token, good.clone()).await;
        assert_code(&r.json().await.unwrap(), "40201", "INVALID_TOKEN");
    }

    let many: Vec<Value> = (100..201).map(login).collect();
    assert_code(
        &server.import(&svc, events_body("u1", many)).await,
        "40402",
        "TOO_MANY_EVENTS",
    );

    // 150 per minute: 1 used, 100 more fit, the next 100 do not.
    let hundred: Vec<Value> = (300..400).map(login).collect();
    assert_eq!(server.import(&svc, events_body("u1", hundred)).await, ok());
    let r = server
        .import_raw(
            &svc.id,
            Some(&svc.import_token),
            events_body("u1", (400..500).map(login).collect()).to_string(),
        )
        .await;
    assert_eq!(r.headers()["x-rate-limit-limit"], "1m");
    assert_eq!(r.headers()["x-rate-limit-remaining"], "49");
    assert_eq!(r.headers()["retry-after"], "60");
    assert_code(&r.json().await.unwrap(), "40401", "TOO_MANY_REQUEST");
    server.clock.advance(chrono::Duration::minutes(1));
    let r = server
        .import_raw(
            &svc.id,
            Some(&svc.import_token),
            events_body("u1", (400..500).map(login).collect()).to_string(),
        )
        .await;
    assert_eq!(r.headers()["x-rate-limit-remaining"], "50");
    assert_eq!(r.json::<Value>().await.unwrap(), ok());

    let log = server.requests(&svc).await;
    let messages: Vec<&str> = log.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(messages[..3], ["ok", "40401", "ok"]);
    assert!(log
        .iter()
        .all(|e| e["endpoint"] == "/api/v1/events" && e["status"] == 200));
}

/// SPEC §4 and DFINERY's documented success body, byte for byte, on every
/// Import API endpoint: a client that compares the text must accept it.
async fn every_import_endpoint_answers_dfinerys_success_body_byte_for_byte() {
    const SUCCESS: &str = r#"{"status":true,"code":"20000","message":"OK","data":true}"#;
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let calls = [
        ("/api/v1/events", events_body("u1", vec![login(1)])),
        (
            "/api/v1/identities",
            json!({"identity": {"external_id": "u1", "email": "u1@example.com"},
                   "request_datetime": "2026-11-25T00:00:00Z"}),
        ),
        (
            "/api/v1/user-profile",
            json!({"identity": {"external_id": "u1"}, "user_properties": {"df_name": "Kim"},
                   "request_datetime": "2026-11-25T00:00:00Z"}),
        ),
        (
            "/api/v1/identities/delete",
            json!({"identity": {"external_id": "u1"}, "request_datetime": "2026-11-25T00:00:01Z"}),
        ),
    ];
    for (path, body) in calls {
        let resp = server
            .http
            .post(server.url(&format!("{path}?service_id={}", svc.id)))
            .header("access_token", &svc.import_token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        assert_eq!(resp.text().await.unwrap(), SUCCESS, "{path}");
    }
}

async fn a_store_failure_is_50000_and_stores_nothing() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    server.faults.inject_write_failure(true);
    let failed = server
        .import_endpoint(&svc, "/api/v1/events", &events_body("u1", vec![login(1), login(2)]))
        .await;
    // A failed request uses none of the minute's events.
    assert_eq!(failed.headers()["x-rate-limit-remaining"], "1000000");
    assert_code(&failed.json().await.unwrap(), "50000", "INTERNAL_SERVER_ERROR");
    let profile = json!({"identity": {"external_id": "u1"}, "user_properties": {"df_name": "x"},
                         "request_datetime": "2026-11-25T00:00:00Z"});
    let r = server.import_endpoint(&svc, "/api/v1/user-profile", &profile).await;
    assert_code(&r.json().await.unwrap(), "50000", "INTERNAL_SERVER_ERROR");
    server.faults.inject_write_failure(false);
    assert!(exported_ids(&server, &svc).await.is_empty());
    let stored = server
        .import_endpoint(&svc, "/api/v1/events", &events_body("u1", vec![login(1)]))
        .await;
    assert_eq!(stored.headers()["x-rate-limit-remaining"], "999999");
    assert_eq!(stored.json::<Value>().await.unwrap(), ok());
    assert_eq!(exported_ids(&server, &svc).await, vec![event_id(1)]);
}

async fn a_batch_with_one_invalid_event_stores_nothing() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let mut unknown = login(2);
    unknown["event_name"] = json!("not_registered");
    let mut too_many_items = login(3);
    too_many_items["items"] = Value::Array((0..101).map(|i| json!({"df_item_id": format!("{i}")})).collect());
    for bad in [unknown, too_many_items] {
        let answer = server.import(&svc, events_body("u1", vec![login(1), bad])).await;
        assert_code(&answer, "40001", "VALIDATION_FAILURE");
    }
    let no_identity = json!({"events": [login(1)]});
    assert_code(&server.import(&svc, no_identity).await, "40001", "VALIDATION_FAILURE");
    assert!(exported_ids(&server, &svc).await.is_empty());
}

async fn resent_events_are_acknowledged_and_stored_once() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let body = events_body("u1", vec![login(1), login(2), login(1)]);
    assert_eq!(server.import(&svc, body.clone()).await, ok());
    assert_eq!(server.import(&svc, body).await, ok());
    assert_eq!(
        server.import(&svc, events_body("u1", vec![login(2), login(3)])).await,
        ok()
    );
    assert_eq!(
        exported_ids(&server, &svc).await,
        vec![event_id(1), event_id(2), event_id(3)]
    );
}

async fn events_resent_after_a_restart_are_stored_once() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    assert_eq!(
        server.import(&svc, events_body("u1", vec![login(1), login(2)])).await,
        ok()
    );
    let server = server.restart().await;
    let body = events_body("u1", vec![login(2), login(1), login(3)]);
    assert_eq!(server.import(&svc, body.clone()).await, ok());
    assert_eq!(server.import(&svc, body).await, ok());
    assert_eq!(
        exported_ids(&server, &svc).await,
        vec![event_id(1), event_id(2), event_id(3)]
    );
}

async fn concurrent_requests_are_all_stored() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let mut tasks = Vec::new();
    for client in 0..16u128 {
        let (http, url, token) = (
            server.http.clone(),
            server.url("/api/v1/events?service_id=shop"),
            svc.import_token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for batch in 0..5u128 {
                let events = (0..20).map(|i| login(client * 1000 + batch * 100 + i)).collect();
                let body = events_body(&format!("user-{client}"), events);
                let answer: Value = http
                    .post(&url)
                    .header("access_token", &token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(answer["code"], "20000", "{answer}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ids = exported_ids(&server, &svc).await;
    assert_eq!(ids.len(), 16 * 5 * 20);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "same correction time: ordered by event_log_id");
}

async fn auto_register_learns_new_names_with_their_types() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "auto", "auto_register": true}))
        .await;
    let e = event(
        1,
        "coupon_used",
        "2026-11-25T01:00:00Z",
        json!({"coupon": "WELCOME", "amount": 3000}),
    );
    assert_eq!(server.import(&svc, events_body("u1", vec![e])).await, ok());
    let (_, taxonomy) = server
        .admin(reqwest::Method::GET, "/admin/v1/services/auto/taxonomy", None)
        .await;
    assert!(taxonomy["events"].as_array().unwrap().contains(&json!("coupon_used")));
    assert!(taxonomy["event_properties"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "amount", "type": "Long"})));
    // The learned type now binds: a string is no Long.
    let e = event(2, "coupon_used", "2026-11-25T01:00:00Z", json!({"amount": "lots"}));
    assert_code(
        &server.import(&svc, events_body("u1", vec![e])).await,
        "40001",
        "VALIDATION_FAILURE",
    );
    let (header, rows) = export_today(&server, &svc).await;
    assert_eq!(cell(&header, &rows[0], "amount"), "3000");
    assert_eq!(cell(&header, &rows[0], "coupon"), "WELCOME");
}

async fn identities_resolve_to_one_profile_per_user() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let anonymous = json!({"common": {"identity": {"email": "a@example.com"}}, "events": [login(1)]});
    assert_eq!(server.import(&svc, anonymous).await, ok());
    // The external_id joins the anonymous profile reached by its email.
    let joined =
        json!({"common": {"identity": {"external_id": "ext-1", "email": "a@example.com"}}, "events": [login(2)]});
    assert_eq!(server.import(&svc, joined).await, ok());
    assert_eq!(server.import(&svc, events_body("ext-1", vec![login(3)])).await, ok());
    assert_eq!(server.import(&svc, events_body("ext-2", vec![login(4)])).await, ok());
    let (header, rows) = export_today(&server, &svc).await;
    let uids: Vec<&str> = rows.iter().map(|r| cell(&header, r, "df_unified_id")).collect();
    assert_eq!(uids[0], uids[1]);
    assert_eq!(uids[1], uids[2]);
    assert_ne!(uids[2], uids[3]);
}

/// fineport's decision "D": `common.identity` may name the profile by
/// `df_unified_id` (any UUID form; exported lowercase, hyphenated), alone
/// or with an external_id only, so that an event export is imported again
/// into the same profiles. A pair that contradicts the stored identities is
/// 40001 and stores nothing; unified ids are per service.
async fn events_name_their_profile_by_df_unified_id() {
    const U: &str = "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f";
    const V: &str = "7d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let body = |identity: Value, events: Vec<Value>| json!({"common": {"identity": identity}, "events": events});

    // Alone, in upper case: the profile is created with exactly that id.
    let answer = server
        .import(
            &svc,
            body(json!({"df_unified_id": U.to_uppercase()}), vec![login(1), login(2)]),
        )
        .await;
    assert_eq!(answer, ok());
    // With a free external_id: the anonymous U takes it; the external_id
    // alone then leads to U.
    let with_kim = body(json!({"df_unified_id": U, "external_id": "kim"}), vec![login(3)]);
    assert_eq!(server.import(&svc, with_kim.clone()).await, ok());
    assert_eq!(server.import(&svc, events_body("kim", vec![login(4)])).await, ok());
    // Resent (through either path): acknowledged, stored once.
    assert_eq!(server.import(&svc, with_kim).await, ok());
    let resend = body(json!({"df_unified_id": U, "external_id": "kim"}), vec![login(1)]);
    assert_eq!(server.import(&svc, resend).await, ok());

    // Conflicts: 40001 with the reason, nothing stored.
    for (identity, why) in [
        (
            json!({"df_unified_id": V, "external_id": "kim"}),
            "belongs to another profile",
        ),
        (
            json!({"df_unified_id": U, "external_id": "lee"}),
            "holds another external_id",
        ),
    ] {
        let answer = server.import(&svc, body(identity.clone(), vec![login(5)])).await;
        assert_code(&answer, "40001", "VALIDATION_FAILURE");
        let reason = answer["data"][0]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{identity}: {answer}");
    }
    // Invalid identities: 40001, nothing stored.
    for (identity, why) in [
        (json!({"df_unified_id": "not-a-uuid"}), "must be a UUID"),
        (json!({"df_unified_id": 7}), "must be a string"),
        (
            json!({"df_unified_id": U, "email": "a@x"}),
            "may be combined only with external_id",
        ),
    ] {
        let answer = server.import(&svc, body(identity.clone(), vec![login(6)])).await;
        assert_code(&answer, "40001", "VALIDATION_FAILURE");
        let reason = answer["data"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains(why) && reason.contains("df_unified_id"),
            "{identity}: {answer}"
        );
    }

    let (header, rows) = export_today(&server, &svc).await;
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (cell(&header, r, "df_event_log_id"), cell(&header, r, "df_unified_id")))
        .collect();
    let expected: Vec<String> = (1..=4).map(event_id).collect();
    assert_eq!(
        got,
        expected.iter().map(|id| (id.as_str(), U)).collect::<Vec<_>>(),
        "events 5 and 6 were refused"
    );

    // Another service: the same U is another, unrelated profile.
    let other = server.service(json!({"service_id": "mall"})).await;
    let answer = server
        .import(
            &other,
            body(json!({"df_unified_id": U, "external_id": "lee"}), vec![login(7)]),
        )
        .await;
    assert_eq!(answer, ok());
    let (header, rows) = export_today(&server, &other).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(cell(&header, &rows[0], "df_unified_id"), U);
    assert_eq!(exported_ids(&server, &svc).await.len(), 4);
}

/// DFINERY requires `Content-Type: application/json`; fineport refuses a
/// missing or other media type on both DFINERY APIs (40000 on the Import
/// API, 400 `invalid_parameter` on the Export API), with a detail that says
/// what to send, and stores nothing.
async fn a_body_must_be_sent_as_application_json() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let good = events_body("u1", vec![login(1)]).to_string();
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut req = server
            .http
            .post(server.url("/api/v1/events?service_id=shop"))
            .header("access_token", &svc.import_token)
            .body(good.clone());
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let answer: Value = req.send().await.unwrap().json().await.unwrap();
        assert_code(&answer, "40000", "BAD_REQUEST");
        assert!(
            answer["data"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{answer}"
        );

        let mut req = server
            .http
            .post(server.url("/api/v1/export/event?service_id=shop"))
            .bearer_auth(&svc.export_token)
            .body(
                json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"}).to_string(),
            );
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{content_type:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["message"], "invalid_parameter", "{body}");
        assert!(body["detail"].as_str().unwrap().contains("application/json"), "{body}");
    }
    assert!(exported_ids(&server, &svc).await.is_empty(), "nothing stored");
    let answer = server
        .http
        .post(server.url("/api/v1/events?service_id=shop"))
        .header("access_token", &svc.import_token)
        .header("content-type", "Application/JSON; charset=UTF-8")
        .body(good)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(answer, ok(), "parameters and letter case are fine");
}

/// SPEC §4: `event_log_id` is the idempotency key. A resend with other
/// content is acknowledged and the first version is kept (decided: a retry
/// must never change stored history; a different event needs a new id).
/// Here the resend has another name, user and properties, and the same
/// `event_datetime`; a future-dated resend is received later, so it would
/// get a later correction time if the first one were not kept.
async fn a_resend_with_other_content_keeps_the_first_version() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let first = event(
        1,
        "df_purchase",
        "2026-11-25T01:00:00Z",
        json!({"df_order_id": "first"}),
    );
    let second = event(1, "df_refund", "2026-11-25T01:00:00Z", json!({"df_order_id": "second"}));
    // Future-dated: the clock says 03:00Z, the client 05:00Z.
    let future = event(2, "df_login", "2026-11-25T05:00:00Z", json!({"df_order_id": "first"}));
    let future_again = event(2, "df_logout", "2026-11-25T05:00:00Z", json!({"df_order_id": "second"}));
    assert_eq!(server.import(&svc, events_body("u1", vec![first, future])).await, ok());
    server.clock.advance(chrono::Duration::minutes(30));
    assert_eq!(
        server.import(&svc, events_body("u2", vec![second, future_again])).await,
        ok()
    );
    let (header, rows) = export_today(&server, &svc).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(cell(&header, &rows[0], "event_name"), "df_purchase");
    assert_eq!(cell(&header, &rows[0], "df_order_id"), "first");
    assert_eq!(cell(&header, &rows[1], "event_name"), "df_login");
    assert_eq!(
        cell(&header, &rows[1], "df_correction_datetime"),
        "2026-11-25T03:00:00.000Z"
    );
    assert_eq!(cell(&header, &rows[1], "df_order_id"), "first");
}

/// The same with another past `event_datetime`: DuckDB keeps the first
/// version. The cluster does not run this test: it keys events by
/// correction time and dedupes equal keys, so an id reused with another
/// past time is stored and exported as a second event (ARCHITECTURE.md,
/// "Decisions": keeping every id of every event to catch that would put one
/// PostgreSQL row per event on the import path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_another_past_datetime_keeps_the_first_version_on_duckdb() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let first = event(
        1,
        "df_purchase",
        "2026-11-25T01:00:00Z",
        json!({"df_order_id": "first"}),
    );
    let second = event(1, "df_refund", "2026-11-25T02:00:00Z", json!({"df_order_id": "second"}));
    assert_eq!(server.import(&svc, events_body("u1", vec![first])).await, ok());
    assert_eq!(server.import(&svc, events_body("u2", vec![second])).await, ok());
    let (header, rows) = export_today(&server, &svc).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(cell(&header, &rows[0], "event_name"), "df_purchase");
    assert_eq!(cell(&header, &rows[0], "df_order_id"), "first");
}

/// Strings are kept byte for byte, control characters included, except
/// U+0000 (NUL), which PostgreSQL's `COPY` and text type cannot hold: it is
/// refused with 40001 and the reason, in values and identifiers alike.
/// A body in which an object repeats a key is refused whole, `40001` with
/// the key and its position, on every import endpoint: which value was
/// meant cannot be known, and keeping one would drop the other silently.
async fn a_repeated_key_is_refused_with_its_position() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    server
        .taxonomy(&svc, json!({"event_properties": [{"name": "note", "type": "String"}]}))
        .await;
    let body = |properties: &str| {
        format!(
            r#"{{"common":{{"identity":{{"external_id":"u1"}}}},"events":[{{"event_log_id":"{}","event_name":"df_login","event_datetime":"2026-11-25T01:00:00Z","properties":{properties}}}]}}"#,
            event_id(1)
        )
    };
    for properties in [
        r#"{"note":"first","note":"second"}"#,
        // The same key once escaped: keys are compared decoded.
        r#"{"note":"first","n\u006fte":"second"}"#,
    ] {
        let answer: Value = server
            .import_raw(&svc.id, Some(&svc.import_token), body(properties))
            .await
            .json()
            .await
            .unwrap();
        assert_code(&answer, "40001", "VALIDATION_FAILURE");
        let reason = answer["data"][0]["reason"].as_str().unwrap();
        assert!(reason.contains(r#"repeated key "note" at line 1 column"#), "{reason}");
    }
    for path in ["/api/v1/identities", "/api/v1/user-profile"] {
        let r = server
            .http
            .post(server.url(&format!("{path}?service_id={}", svc.id)))
            .header("access_token", &svc.import_token)
            .header("content-type", "application/json")
            .body(r#"{"identity":{"external_id":"u1","external_id":"u2"}}"#)
            .send()
            .await
            .unwrap();
        assert_code(&r.json().await.unwrap(), "40001", "VALIDATION_FAILURE");
    }
    assert!(exported_ids(&server, &svc).await.is_empty(), "nothing stored");
    let answer: Value = server
        .import_raw(&svc.id, Some(&svc.import_token), body(r#"{"note":"once"}"#))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer, ok());
    let (header, rows) = export_today(&server, &svc).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(cell(&header, &rows[0], "note"), "once");
}

async fn nul_is_refused_and_other_control_characters_are_kept() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    server
        .taxonomy(
            &svc,
            json!({"event_properties": [{"name": "note", "type": "String"},
                                                     {"name": "tags", "type": "Array of String"}]}),
        )
        .await;
    let refused = [
        events_body(
            "u1",
            vec![event(1, "df_login", "2026-11-25T01:00:00Z", json!({"note": "a\u{0}b"}))],
        ),
        events_body(
            "u1",
            vec![event(
                2,
                "df_login",
                "2026-11-25T01:00:00Z",
                json!({"tags": ["ok", "\u{0}"]}),
            )],
        ),
        events_body("u\u{0}1", vec![event(3, "df_login", "2026-11-25T01:00:00Z", json!({}))]),
    ];
    for body in refused {
        let answer = server.import(&svc, body.clone()).await;
        assert_code(&answer, "40001", "VALIDATION_FAILURE");
        assert!(answer.to_string().contains("NUL"), "{answer}");
    }
    let kept = "tab\there\r\nbell\u{7}esc\u{1b}del\u{7f},\"quoted\"";
    let answer = server
        .import(
            &svc,
            events_body(
                "u1",
                vec![event(4, "df_login", "2026-11-25T01:00:00Z", json!({"note": kept}))],
            ),
        )
        .await;
    assert_eq!(answer, ok());
    let (header, rows) = export_today(&server, &svc).await;
    assert_eq!(rows.len(), 1, "only the event without NUL");
    assert_eq!(cell(&header, &rows[0], "note"), kept);
}

backend_suite!(
    every_result_code_with_its_exact_json,
    every_import_endpoint_answers_dfinerys_success_body_byte_for_byte,
    a_store_failure_is_50000_and_stores_nothing,
    a_batch_with_one_invalid_event_stores_nothing,
    resent_events_are_acknowledged_and_stored_once,
    events_resent_after_a_restart_are_stored_once,
    concurrent_requests_are_all_stored,
    auto_register_learns_new_names_with_their_types,
    identities_resolve_to_one_profile_per_user,
    a_body_must_be_sent_as_application_json,
    a_resend_with_other_content_keeps_the_first_version,
    nul_is_refused_and_other_control_characters_are_kept,
    a_repeated_key_is_refused_with_its_position,
    events_name_their_profile_by_df_unified_id,
);
