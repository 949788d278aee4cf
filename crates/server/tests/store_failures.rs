//! An export is never silently short: while acknowledged imports cannot be
//! moved from the import log into the tables (here DuckDB's memory limit;
//! the file-size limit is in `crates/fineport/tests/cli.rs`, on the real
//! binary), event and profile exports answer 500 `query_error` before their
//! first byte and the request log says so; once the store can take them
//! (here: the limit raised while the server runs), every acknowledged event
//! is exported, once.

mod common;

use common::*;
use fineport_server::Config;
use fineport_store::duckdb::DuckDbOptions;
use serde_json::{json, Value};

/// 100 events of 90 KB each: acknowledged (the import log takes them), but
/// more than an 8 MB DuckDB can insert in one transaction.
fn heavy_events() -> Value {
    let blob = "x".repeat(90_000);
    let events = (0..100)
        .map(|n| event(n, "df_login", "2026-11-25T01:00:00Z", json!({"blob": blob})))
        .collect();
    events_body("u1", events)
}

async fn assert_query_error(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.expect("JSON failure body");
    assert_eq!(body["result"], "fail", "{body}");
    assert_eq!(body["message"], "query_error", "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_fail_while_acknowledged_imports_cannot_be_stored() {
    let options = DuckDbOptions {
        memory_limit: Some("8MB".into()),
        ..store_options(1)
    };
    let config = Config {
        import_body_limit: 16 << 20,
        ..Config::default()
    };
    let server = TestServer::start_with_store(config, options).await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let other = server.service(json!({"service_id": "other"})).await;
    server
        .taxonomy(&svc, json!({"event_properties": [{"name": "blob", "type": "String"}]}))
        .await;
    let answer = server.import(&svc, heavy_events()).await;
    assert_eq!(answer["code"], "20000", "acknowledged once in the import log: {answer}");

    let day = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let body = assert_query_error(server.export(&svc, day.clone()).await).await;
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a detail says why: {body}"
    );
    let profiles = server
        .export_raw(
            &format!("/api/v1/export/userprofile?service_id={}", svc.id),
            Some(&svc.export_token),
            json!({"properties_condition_type": "all"}).to_string(),
        )
        .await;
    assert_query_error(profiles).await;
    // Another service, whose imports are all stored, still exports.
    assert_eq!(server.export(&other, day.clone()).await.status(), 200);

    // With memory again, the same server stores them: every acknowledged
    // event is exported, once, and nothing was lost.
    server.duckdb().set_memory_limit("1GB").expect("raise the memory limit");
    let resp = server.export(&svc, day).await;
    assert_eq!(resp.status(), 200);
    let (_, rows) = parse_csv(&resp.text().await.unwrap());
    assert_eq!(rows.len(), 100);

    let log = server.requests(&svc).await;
    let exports: Vec<(&str, u64, &str)> = log
        .iter()
        .filter(|e| e["endpoint"].as_str().is_some_and(|p| p.starts_with("/api/v1/export/")))
        .map(|e| {
            (
                e["endpoint"].as_str().unwrap(),
                e["status"].as_u64().unwrap(),
                e["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        exports,
        [
            ("/api/v1/export/event", 200, "ok"),
            ("/api/v1/export/userprofile", 500, "query_error"),
            ("/api/v1/export/event", 500, "query_error"),
        ]
    );
}
