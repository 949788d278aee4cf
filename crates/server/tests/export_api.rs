//! The Export API end to end: a real server on a real socket over a real
//! DuckDB file. Every detailed response, the CSV contract cell by cell, the
//! look-back rule in a service timezone, tokens, limits and the streaming
//! failure semantics.

mod common;

use common::*;
use fineport_store::failing::FailPoint;
use serde_json::{json, Value};

fn all_events(from: &str, to: &str) -> Value {
    json!({"events_condition_type": "all", "from_date": from, "to_date": to})
}

/// Asserts a failure answer: status, `{"result":"fail","message":…}` and,
/// when present, a human-readable `detail` string and nothing else.
async fn assert_failure(resp: reqwest::Response, status: u16, message: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status for {message}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.expect("JSON failure body");
    let mut without_detail = body.clone();
    if let Some(obj) = without_detail.as_object_mut() {
        if let Some(detail) = obj.remove("detail") {
            assert!(
                detail.as_str().is_some_and(|d| !d.is_empty()),
                "detail must be a non-empty string: {body}"
            );
        }
    }
    assert_eq!(
        without_detail,
        json!({"result": "fail", "message": message}),
        "body: {body}"
    );
    body
}

fn rate_remaining(resp: &reqwest::Response) -> u64 {
    resp.headers()["x-rate-limit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn seoul_service(server: &TestServer) -> Svc {
    server
        .service(json!({"service_id": "shop", "timezone": "Asia/Seoul"}))
        .await
}

async fn invalid_parameter_for_every_malformed_request() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    // missing service_id: checked before the token
    let resp = server
        .export_raw(
            "/api/v1/export/event",
            None,
            all_events("2026-11-20", "2026-11-25").to_string(),
        )
        .await;
    assert_failure(resp, 400, "invalid_parameter").await;

    let bad_bodies = [
        "not json".to_string(),
        "[]".to_string(),
        json!({"events_condition_type": "all", "from_date": "2026-11-20"}).to_string(),
        json!({"events_condition_type": "All", "from_date": "2026-11-20", "to_date": "2026-11-21"}).to_string(),
        json!({"events_condition_type": "include", "events": [], "from_date": "2026-11-20", "to_date": "2026-11-21"}).to_string(),
        json!({"events_condition_type": "all", "from_date": "2026-11-31", "to_date": "2026-12-01"}).to_string(),
        json!({"events_condition_type": "all", "from_date": "2026-11-22", "to_date": "2026-11-21"}).to_string(),
        json!({"events_condition_type": "all", "from_date": "2026-11-20", "to_date": "2026-11-21", "limit": 5}).to_string(),
        json!({"events_condition_type": "include", "events": ["no_such_event"], "from_date": "2026-11-20", "to_date": "2026-11-21"}).to_string(),
        json!({"events_condition_type": "all", "properties_condition_type": "include", "properties": ["nope"],
               "from_date": "2026-11-20", "to_date": "2026-11-21"}).to_string(),
        "x".repeat(70_000),
        // Which to_date was meant cannot be known.
        r#"{"events_condition_type":"all","from_date":"2026-11-20","to_date":"2026-11-21","to_date":"2026-11-25"}"#
            .to_string(),
    ];
    for body in bad_bodies {
        let resp = server
            .export_raw(
                &format!("/api/v1/export/event?service_id={}", svc.id),
                Some(&svc.export_token),
                body.clone(),
            )
            .await;
        assert!(resp.headers().contains_key("x-rate-limit-remaining"));
        assert_failure(resp, 400, "invalid_parameter").await;
    }
    // No refused request used quota.
    let resp = server.export(&svc, all_events("2026-11-20", "2026-11-25")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(rate_remaining(&resp), 99);
}

async fn unauthorized_token_for_every_wrong_credential() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    let other = server.service(json!({"service_id": "other"})).await;
    let body = all_events("2026-11-20", "2026-11-25").to_string();
    let path = format!("/api/v1/export/event?service_id={}", svc.id);
    let cases: Vec<(String, Option<&str>)> = vec![
        (path.clone(), None),
        (path.clone(), Some("not-a-token")),
        (path.clone(), Some(svc.import_token.as_str())),
        (path.clone(), Some(other.export_token.as_str())),
        (
            "/api/v1/export/event?service_id=nosuch".into(),
            Some(svc.export_token.as_str()),
        ),
    ];
    for (p, token) in cases {
        let resp = server.export_raw(&p, token, body.clone()).await;
        assert_failure(resp, 401, "unauthorized_token").await;
    }
    // A malformed Authorization header (not Bearer).
    let resp = server
        .http
        .post(server.url(&path))
        .header("authorization", format!("Token {}", svc.export_token))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_failure(resp, 401, "unauthorized_token").await;
    // The token is checked before the body.
    let resp = server.export_raw(&path, Some("wrong"), "not json".into()).await;
    assert_failure(resp, 401, "unauthorized_token").await;
    // Two tokens, or none, after the scheme.
    for value in [format!("Bearer {0} {0}", svc.export_token), "Bearer ".into()] {
        let resp = server
            .http
            .post(server.url(&path))
            .header("authorization", value)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_failure(resp, 401, "unauthorized_token").await;
    }
}

/// RFC 9110 §11.1: the scheme name is case-insensitive.
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    let path = format!("/api/v1/export/event?service_id={}", svc.id);
    for scheme in ["Bearer", "bearer", "BEARER", "bEARER"] {
        let resp = server
            .http
            .post(server.url(&path))
            .header("authorization", format!("{scheme} {}", svc.export_token))
            .header("content-type", "application/json")
            .body(all_events("2026-11-20", "2026-11-25").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
        let admin = server
            .http
            .get(server.url("/admin/v1/services"))
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(admin.status(), 200, "{scheme} on the admin API");
    }
}

async fn lookback_is_counted_in_the_service_timezone() {
    // 16:00 UTC on the 25th is 01:00 on the 26th in Seoul.
    let server = TestServer::start_with(Default::default(), at("2026-11-25T16:00:00Z")).await;
    let seoul = seoul_service(&server).await;
    let utc = server.service(json!({"service_id": "utc"})).await;
    // Seoul's today is 11-26: today-30 = 10-27 allowed, 10-26 refused.
    let ok = server.export(&seoul, all_events("2026-10-27", "2026-10-27")).await;
    assert_eq!(ok.status(), 200);
    let refused = server.export(&seoul, all_events("2026-10-26", "2026-10-27")).await;
    let body = assert_failure(refused, 400, "exceed_date_range_limit").await;
    assert!(body["detail"].as_str().unwrap().contains("2026-10-27"));
    // In UTC it is still the 25th, so 10-26 is today-30 and allowed.
    assert_eq!(
        server
            .export(&utc, all_events("2026-10-26", "2026-10-26"))
            .await
            .status(),
        200
    );
    assert_failure(
        server.export(&utc, all_events("2026-10-25", "2026-10-26")).await,
        400,
        "exceed_date_range_limit",
    )
    .await;
    // invalid_parameter is checked before the look-back.
    let both = json!({"events_condition_type": "bogus", "from_date": "2020-01-01", "to_date": "2020-01-02"});
    assert_failure(server.export(&seoul, both).await, 400, "invalid_parameter").await;
    // A look-back of 0 is unlimited.
    let (status, _) = server
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/services/shop",
            Some(json!({"export_lookback_days": 0})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        server
            .export(&seoul, all_events("2020-01-01", "2020-01-02"))
            .await
            .status(),
        200
    );
}

const CUSTOM_TAXONOMY: &str = r#"{
    "events": ["review"],
    "event_properties": [
        {"name": "comment", "type": "String"}, {"name": "stars", "type": "Long"}, {"name": "score", "type": "Double"},
        {"name": "verified", "type": "Boolean"}, {"name": "shipped_at", "type": "Datetime"}, {"name": "birthday", "type": "Date"},
        {"name": "tags", "type": "Array of String"}, {"name": "codes", "type": "Array of Long"}, {"name": "weights", "type": "Array of Double"}
    ],
    "item_properties": [{"name": "color", "type": "String"}, {"name": "sizes", "type": "Array of String"}]
}"#;

async fn csv_matches_what_was_imported_cell_by_cell() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    server
        .taxonomy(&svc, serde_json::from_str(CUSTOM_TAXONOMY).unwrap())
        .await;
    let tricky = "한글, \"인용\"\n둘째 줄";
    let first = json!({
        "event_log_id": event_id(1), "event_name": "review", "event_datetime": "2026-11-25T09:30:00.123+09:00",
        "properties": {
            "comment": tricky, "stars": -5, "score": 4.5, "verified": true,
            "shipped_at": "2026-11-24T23:59:59.9Z", "birthday": "1990-02-28",
            "tags": ["a,b", "c\"d", "가"], "codes": [1, -2], "weights": [1, 0.25], "df_order_id": "o-1"
        }
    });
    let second = json!({
        "event_log_id": event_id(2), "event_name": "df_purchase", "event_datetime": "2026-11-25T01:00:00Z",
        "properties": {"df_total_purchase_amount": 15000, "tags": []},
        "items": [
            {"df_item_id": "sku-1", "df_price": 7500.0, "df_quantity": 2, "color": "빨강", "sizes": ["S", "M"]},
            {"df_item_id": "sku-2", "df_price": 0.1}
        ]
    });
    let answer = server.import(&svc, events_body("user-1", vec![first, second])).await;
    assert_eq!(
        answer,
        json!({"status": true, "code": "20000", "message": "OK", "data": true})
    );

    let resp = server.export(&svc, all_events("2026-11-25", "2026-11-25")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"shop_events_2026-11-25_2026-11-25.csv\""
    );
    assert_eq!(resp.headers()["x-rate-limit-limit"], "1H");
    let text = resp.text().await.unwrap();
    assert!(!text.starts_with('\u{feff}'), "no BOM");
    assert!(!text.contains("\r\n"), "LF line ends");
    let (header, rows) = parse_csv(&text);
    assert_eq!(rows.len(), 2);

    // Row order: correction time first (01:00Z before 00:30Z+9 = 2026-11-25T00:30:00.123Z).
    let (r1, r2) = (&rows[0], &rows[1]);
    assert_eq!(cell(&header, r1, "df_event_log_id"), event_id(1));
    assert_eq!(cell(&header, r2, "df_event_log_id"), event_id(2));

    assert_eq!(cell(&header, r1, "event_name"), "review");
    assert_eq!(cell(&header, r1, "comment"), tricky);
    assert_eq!(cell(&header, r1, "stars"), "-5");
    assert_eq!(cell(&header, r1, "score"), "4.5");
    assert_eq!(cell(&header, r1, "verified"), "true");
    assert_eq!(cell(&header, r1, "shipped_at"), "2026-11-24T23:59:59.900Z");
    assert_eq!(cell(&header, r1, "birthday"), "1990-02-28");
    assert_eq!(cell(&header, r1, "tags"), r#"["a,b","c\"d","가"]"#);
    assert_eq!(cell(&header, r1, "codes"), "[1,-2]");
    assert_eq!(cell(&header, r1, "weights"), "[1.0,0.25]");
    assert_eq!(cell(&header, r1, "df_order_id"), "o-1");
    assert_eq!(cell(&header, r1, "df_event_datetime"), "2026-11-25T00:30:00.123Z");
    assert_eq!(cell(&header, r1, "df_correction_datetime"), "2026-11-25T00:30:00.123Z");
    assert_eq!(cell(&header, r1, "df_server_datetime"), "2026-11-25T03:00:00.000Z");
    assert_eq!(cell(&header, r1, "df_platform"), "HTTP_API");
    assert_eq!(cell(&header, r1, "df_api_version"), "v1");
    assert_eq!(
        cell(&header, r1, "df_items_df_item_id"),
        "",
        "no items: empty item cells"
    );
    assert_eq!(cell(&header, r1, "df_total_purchase_amount"), "");
    let uid = cell(&header, r1, "df_unified_id");
    assert_eq!(uid.len(), 36, "a UUID: {uid}");
    assert_eq!(cell(&header, r2, "df_unified_id"), uid, "one identity, one profile");

    assert_eq!(cell(&header, r2, "df_total_purchase_amount"), "15000.0");
    assert_eq!(cell(&header, r2, "tags"), "[]");
    assert_eq!(cell(&header, r2, "comment"), "");
    assert_eq!(cell(&header, r2, "df_items_df_item_id"), r#"["sku-1","sku-2"]"#);
    assert_eq!(cell(&header, r2, "df_items_df_price"), "[7500.0,0.1]");
    assert_eq!(cell(&header, r2, "df_items_df_quantity"), "[2,null]");
    assert_eq!(cell(&header, r2, "df_items_color"), r#"["빨강",null]"#);
    assert_eq!(cell(&header, r2, "df_items_sizes"), r#"[["S","M"],null]"#);
    assert_eq!(cell(&header, r2, "df_items_df_category1"), "[null,null]");

    // Columns: every registered property, byte order, no df_items itself.
    let mut sorted = header.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(header, sorted);
    assert!(!header.contains(&"df_items".to_string()));
    assert_eq!(header.len(), 8 + 9 + 9 + 12);
    // The raw bytes: RFC 4180 quoting of the tricky cell.
    assert!(text.contains("\"한글, \"\"인용\"\"\n둘째 줄\""));
}

async fn filters_select_events_and_columns() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    let events = vec![
        event(1, "df_login", "2026-11-25T01:00:00Z", json!({})),
        event(2, "df_purchase", "2026-11-25T01:00:01Z", json!({"df_order_id": "o"})),
        event(3, "df_logout", "2026-11-25T01:00:02Z", json!({})),
    ];
    server.import(&svc, events_body("u", events)).await;
    let body = json!({"events_condition_type": "include", "events": ["df_login", "df_logout"],
                      "properties_condition_type": "include", "properties": ["df_order_id", "df_items_df_price"],
                      "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let (header, rows) = parse_csv(&server.export(&svc, body).await.text().await.unwrap());
    assert_eq!(
        header,
        vec![
            "df_api_version",
            "df_correction_datetime",
            "df_event_datetime",
            "df_event_log_id",
            "df_items_df_price",
            "df_order_id",
            "df_platform",
            "df_server_datetime",
            "df_unified_id",
            "event_name"
        ]
    );
    let names: Vec<&str> = rows.iter().map(|r| cell(&header, r, "event_name")).collect();
    assert_eq!(names, vec!["df_login", "df_logout"]);

    let body = json!({"events_condition_type": "exclude", "events": ["df_login"],
                      "properties_condition_type": "exclude", "properties": ["df_items"],
                      "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let (header, rows) = parse_csv(&server.export(&svc, body).await.text().await.unwrap());
    assert!(header.iter().all(|h| !h.starts_with("df_items_")));
    assert!(header.contains(&"df_keyword".to_string()));
    let names: Vec<&str> = rows.iter().map(|r| cell(&header, r, "event_name")).collect();
    assert_eq!(names, vec!["df_purchase", "df_logout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_sorted_on_their_keys_and_by_duckdb_give_the_same_bytes() {
    // 3,000 events in random order at 600 instants of one day, ~5 each;
    // one server sorts the day as one slice on its keys, the other minute
    // by minute in DuckDB (every minute with rows has more than 2).
    let whole_day = TestServer::start_with_slice_cells(1_500_000).await;
    let hourly = TestServer::start().await;
    let mut seed: u64 = 7;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let batches: Vec<Value> = (0..30)
        .map(|b| {
            let events = (0..100)
                .map(|i| {
                    let second = next(600) * 120;
                    let time = format!(
                        "2026-11-25T{:02}:{:02}:{:02}Z",
                        second / 3600,
                        second / 60 % 60,
                        second % 60
                    );
                    event(
                        u128::from(next(1 << 40)) << 20 | (b * 100 + i),
                        "df_login",
                        &time,
                        json!({}),
                    )
                })
                .collect();
            events_body(&format!("user{b}"), events)
        })
        .collect();
    let mut exports = Vec::new();
    for server in [&whole_day, &hourly] {
        server.clock.advance(chrono::Duration::hours(20));
        let svc = server.service(json!({"service_id": "order", "timezone": "UTC"})).await;
        for body in &batches {
            assert_eq!(server.import(&svc, body.clone()).await["code"], "20000");
        }
        let resp = server.export(&svc, all_events("2026-11-25", "2026-11-25")).await;
        exports.push(resp.text().await.unwrap());
    }
    // The same rows in the same order; unified ids are each server's own.
    let without_unified_id = |text: &str| {
        let (header, rows) = parse_csv(text);
        let unified = header.iter().position(|h| h == "df_unified_id").unwrap();
        let mut rows = rows;
        rows.iter_mut().for_each(|r| drop(r.remove(unified)));
        rows
    };
    assert_eq!(without_unified_id(&exports[0]), without_unified_id(&exports[1]));
    let (header, rows) = parse_csv(&exports[0]);
    assert_eq!(rows.len(), 3000);
    let keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                cell(&header, r, "df_correction_datetime"),
                cell(&header, r, "df_event_log_id"),
            )
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "not in (time, id) order");
    assert!(keys.windows(2).any(|w| w[0].0 == w[1].0), "no tie on time was tested");
}

async fn rows_are_ordered_by_correction_time_then_event_log_id_across_days() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    // Imported out of order; 11-23 22:00Z is 11-24 07:00 in Seoul.
    let events = vec![
        event(9, "df_login", "2026-11-24T05:00:00Z", json!({})),
        event(3, "df_login", "2026-11-24T05:00:00Z", json!({})),
        event(7, "df_login", "2026-11-23T22:00:00Z", json!({})),
        event(1, "df_login", "2026-11-24T16:00:00Z", json!({})),
        event(5, "df_login", "2026-11-23T14:00:00Z", json!({})),
    ];
    server.import(&svc, events_body("u", events)).await;
    let text = server
        .export(&svc, all_events("2026-11-24", "2026-11-25"))
        .await
        .text()
        .await
        .unwrap();
    let (header, rows) = parse_csv(&text);
    let ids: Vec<&str> = rows.iter().map(|r| cell(&header, r, "df_event_log_id")).collect();
    // 11-23T14:00Z is 11-23 23:00 in Seoul: outside the range.
    assert_eq!(ids, vec![event_id(7), event_id(3), event_id(9), event_id(1)]);
    // The same request gives the same bytes.
    let again = server
        .export(&svc, all_events("2026-11-24", "2026-11-25"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, again);
    // Only 11-24 in Seoul.
    let (_, rows) = parse_csv(
        &server
            .export(&svc, all_events("2026-11-24", "2026-11-24"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(rows.len(), 3);
}

async fn an_empty_range_is_the_header_line_alone() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    let body = json!({"events_condition_type": "all", "properties_condition_type": "include",
                      "properties": ["df_keyword"], "from_date": "2026-11-01", "to_date": "2026-11-02"});
    let text = server.export(&svc, body).await.text().await.unwrap();
    assert_eq!(
        text,
        "df_api_version,df_correction_datetime,df_event_datetime,df_event_log_id,df_keyword,df_platform,df_server_datetime,df_unified_id,event_name\n"
    );
}

async fn a_future_event_is_corrected_to_the_receipt_time() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    server
        .import(
            &svc,
            events_body("u", vec![event(1, "df_login", "2026-12-25T00:00:00Z", json!({}))]),
        )
        .await;
    let (header, rows) = parse_csv(
        &server
            .export(&svc, all_events("2026-11-25", "2026-11-25"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(cell(&header, &rows[0], "df_event_datetime"), "2026-12-25T00:00:00.000Z");
    assert_eq!(
        cell(&header, &rows[0], "df_correction_datetime"),
        "2026-11-25T03:00:00.000Z"
    );
}

async fn reissued_tokens_keep_working_for_the_grace_period_and_revoke_is_immediate() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    let (status, v) = server
        .admin(
            reqwest::Method::POST,
            "/admin/v1/services/shop/tokens/export/reissue",
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["previous_valid_until"], "2026-12-09T03:00:00Z");
    let new = Svc {
        export_token: v["token"].as_str().unwrap().to_owned(),
        ..svc.clone()
    };
    let body = all_events("2026-11-25", "2026-11-25");
    assert_eq!(
        server.export(&svc, body.clone()).await.status(),
        200,
        "old token in its grace period"
    );
    assert_eq!(server.export(&new, body.clone()).await.status(), 200);
    // A second reissue within a day is refused.
    let (status, _) = server
        .admin(
            reqwest::Method::POST,
            "/admin/v1/services/shop/tokens/export/reissue",
            None,
        )
        .await;
    assert_eq!(status, 409);
    server.clock.advance(chrono::Duration::days(14));
    assert_failure(server.export(&svc, body.clone()).await, 401, "unauthorized_token").await;
    assert_eq!(server.export(&new, body.clone()).await.status(), 200);
    let (status, _) = server
        .admin(reqwest::Method::DELETE, "/admin/v1/services/shop/tokens/export", None)
        .await;
    assert_eq!(status, 200);
    assert_failure(server.export(&new, body).await, 401, "unauthorized_token").await;
}

async fn hourly_quota_refuses_with_headers_and_resets_on_the_hour() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "q", "limits": {"export_per_hour": 2}}))
        .await;
    let body = all_events("2026-11-25", "2026-11-25");
    let first = server.export(&svc, body.clone()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(rate_remaining(&first), 1);
    let reset = at("2026-11-25T04:00:00Z").timestamp_millis().to_string();
    assert_eq!(first.headers()["x-rate-limit-reset"], reset.as_str());
    assert_eq!(rate_remaining(&server.export(&svc, body.clone()).await), 0);
    let refused = server.export(&svc, body.clone()).await;
    assert_eq!(refused.headers()["retry-after"], "3600");
    assert_eq!(refused.headers()["x-rate-limit-limit"], "1H");
    assert_eq!(rate_remaining(&refused), 0);
    assert_failure(refused, 429, "too_many_api_requests").await;
    server.clock.advance(chrono::Duration::hours(1));
    assert_eq!(server.export(&svc, body).await.status(), 200);
}

async fn concurrency_limit_refuses_and_disconnects_free_their_slots() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "c", "limits": {"export_concurrency": 2}}))
        .await;
    import_big(&server, &svc, 2000).await;
    let body = all_events("2026-11-25", "2026-11-25");

    // Two exports in flight (their bodies unread) hold both slots.
    let a = server.export(&svc, body.clone()).await;
    let b = server.export(&svc, body.clone()).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let refused = server.export(&svc, body.clone()).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_failure(refused, 429, "too_many_api_requests").await;
    // The server frees a slot as soon as it sees the connection close.
    drop((a, b));
    wait_for_log(&server, &svc, "client_connection_closed", 2).await;

    // Many disconnects in a row, each after the first chunk...
    for i in 0..8 {
        let mut resp = server.export(&svc, body.clone()).await;
        assert_eq!(resp.status(), 200, "disconnect {i}");
        assert!(resp.chunk().await.unwrap().is_some());
        drop(resp);
        wait_for_log(&server, &svc, "client_connection_closed", 3 + i).await;
    }
    let closed = wait_for_log(&server, &svc, "client_connection_closed", 10).await;
    assert!(closed.iter().all(|e| e["status"] == 200));
    // ...and the full concurrency is still there, and a full export completes.
    let x = server.export(&svc, body.clone()).await;
    let y = server.export(&svc, body.clone()).await;
    assert_eq!((x.status().as_u16(), y.status().as_u16()), (200, 200));
    let (_, rows) = parse_csv(&x.text().await.unwrap());
    assert_eq!(rows.len(), 2000);
    drop(y);
}

async fn an_export_is_one_snapshot_though_imports_land_while_it_streams() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "snap", "timezone": "UTC"})).await;
    // Late in the day, so that no event below is in the future (a future
    // event's correction time is the time it was received).
    server.clock.advance(chrono::Duration::hours(20));
    // 20 MB at 01:00 (far more than the socket buffers), then one event at
    // 03:00 and one at 05:00: the harness cuts a slice per minute with rows,
    // so the export's slices are [00:00, 03:00), [03:00, 05:00), [05:00, 24:00).
    import_big(&server, &svc, 2000).await;
    let early = vec![
        event(5001, "df_login", "2026-11-25T03:00:00Z", json!({})),
        event(5002, "df_login", "2026-11-25T05:00:00Z", json!({})),
    ];
    server.import(&svc, events_body("u", early)).await;
    let day = all_events("2026-11-25", "2026-11-25");

    // The export stalls inside its first slice: its client stops reading,
    // with a receive buffer too small for the kernel to take much of it.
    let mut stalled = StalledExport::start(&server, &svc, &day).await;

    // Meanwhile events land in every slice, and another export (a read)
    // makes the writer move them into the table.
    let late = vec![
        event(6001, "df_login", "2026-11-25T01:00:00Z", json!({})),
        event(6002, "df_login", "2026-11-25T04:00:00Z", json!({})),
        event(6003, "df_login", "2026-11-25T07:00:00Z", json!({})),
    ];
    let answer = server.import(&svc, events_body("u", late)).await;
    assert_eq!(answer["code"], "20000", "{answer}");
    let (_, fresh) = parse_csv(&server.export(&svc, day.clone()).await.text().await.unwrap());
    assert_eq!(fresh.len(), 2005);

    // The stalled export goes on as of its start: no event imported after.
    let text = stalled.finish().await;
    let (header, rows) = parse_csv(&text);
    assert_eq!(rows.len(), 2002);
    let ids: Vec<&str> = rows.iter().map(|r| cell(&header, r, "df_event_log_id")).collect();
    assert_eq!(ids[2000..], [event_id(5001), event_id(5002)]);
}

async fn a_store_failure_mid_stream_breaks_the_transfer_visibly() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    import_big(&server, &svc, 300).await;
    server
        .faults
        .inject_export_failure(Some(FailPoint::AfterBytes(1 << 20)));
    let resp = server.export(&svc, all_events("2026-11-25", "2026-11-25")).await;
    assert_eq!(resp.status(), 200, "the failure comes after the first byte");
    let body = resp.bytes().await;
    assert!(
        body.is_err(),
        "the client must see an incomplete body, not a short file"
    );
    let failed = wait_for_log(&server, &svc, "query_error", 1).await;
    assert_eq!(failed[0]["status"], 200);
    server.faults.inject_export_failure(None);

    // With curl too: a transfer error, not a clean end.
    server
        .faults
        .inject_export_failure(Some(FailPoint::AfterBytes(1 << 20)));
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {}", svc.export_token),
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &all_events("2026-11-25", "2026-11-25").to_string(),
        ])
        .arg(server.url(&format!("/api/v1/export/event?service_id={}", svc.id)))
        .output()
        .await
        .expect("curl is installed (scripts/test installs it)");
    assert!(!out.status.success(), "curl must report a transfer error");
    server.faults.inject_export_failure(None);
}

async fn failures_before_the_first_byte_are_500_and_use_no_quota() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    let body = all_events("2026-11-25", "2026-11-25");
    server.faults.inject_export_failure(Some(FailPoint::BeforeFirstByte));
    let resp = server.export(&svc, body.clone()).await;
    assert_eq!(rate_remaining(&resp), 100);
    let failure = assert_failure(resp, 500, "query_error").await;
    assert_eq!(
        failure,
        json!({"result": "fail", "message": "query_error", "detail": "injected failure before the first byte"}),
        "a query error says what failed"
    );
    server
        .faults
        .inject_export_failure(Some(FailPoint::InternalBeforeFirstByte));
    let failure = assert_failure(server.export(&svc, body.clone()).await, 500, "unknown_error").await;
    assert_eq!(failure, json!({"result": "fail", "message": "unknown_error"}));
    server.faults.inject_export_failure(None);
    let ok = server.export(&svc, body).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(rate_remaining(&ok), 99, "the failed requests used no quota");
    ok.text().await.unwrap(); // the log entry is written when the stream ends
    let log = server.requests(&svc).await;
    let statuses: Vec<(u64, &str)> = log
        .iter()
        .map(|e| (e["status"].as_u64().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        vec![(200, "ok"), (500, "unknown_error"), (500, "query_error")]
    );
}

async fn exports_compress_by_accept_encoding() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    import_big(&server, &svc, 200).await;
    let plain = server
        .export(&svc, all_events("2026-11-25", "2026-11-25"))
        .await
        .bytes()
        .await
        .unwrap();
    for encoding in ["gzip", "zstd"] {
        let resp = server
            .http
            .post(server.url("/api/v1/export/event?service_id=shop"))
            .bearer_auth(&svc.export_token)
            .header("accept-encoding", encoding)
            .header("content-type", "application/json")
            .body(all_events("2026-11-25", "2026-11-25").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-encoding"], encoding);
        let compressed = resp.bytes().await.unwrap();
        assert!(
            compressed.len() < plain.len() / 2,
            "{encoding}: {} vs {}",
            compressed.len(),
            plain.len()
        );
        let decoded = match encoding {
            "gzip" => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut out).unwrap();
                out
            }
            _ => zstd::decode_all(&compressed[..]).unwrap(),
        };
        assert_eq!(decoded, plain, "{encoding} decodes to the same bytes");
    }
}

async fn a_range_of_centuries_costs_only_the_days_that_hold_events() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "long", "export_lookback_days": 0}))
        .await;
    let events = vec![
        event(1, "df_login", "2026-11-20T01:00:00Z", json!({})),
        event(2, "df_login", "2026-11-25T01:00:00Z", json!({})),
    ];
    server.import(&svc, events_body("u", events)).await;
    // One query per day of 1100 years would not finish in any reasonable time.
    let resp = server.export(&svc, all_events("1900-01-01", "2999-12-31")).await;
    assert_eq!(resp.status(), 200);
    let (_, rows) = parse_csv(&resp.text().await.unwrap());
    assert_eq!(rows.len(), 2);
}

/// The look-back setting is bounded by the admin API, and the rule's
/// arithmetic cannot overflow whatever the dates (no 500 for any export).
async fn lookback_settings_are_bounded_and_never_overflow() {
    let server = TestServer::start().await;
    let svc = seoul_service(&server).await;
    let path = format!("/admin/v1/services/{}", svc.id);
    for days in [36_501u64, u64::from(u32::MAX)] {
        let (status, body) = server
            .admin(
                reqwest::Method::PATCH,
                &path,
                Some(json!({"export_lookback_days": days})),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        assert!(body["detail"].as_str().unwrap().contains("36500"), "{body}");
    }
    let (status, body) = server
        .admin(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"export_lookback_days": 36_500})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_failure(
        server.export(&svc, all_events("0001-01-01", "0001-01-02")).await,
        400,
        "exceed_date_range_limit",
    )
    .await;
    let ok = server.export(&svc, all_events("1930-01-01", "1930-01-02")).await;
    assert_eq!(ok.status(), 200);
    for (from, to) in [("9999-12-30", "9999-12-31"), ("2026-11-25", "9999-12-31")] {
        let resp = server.export(&svc, all_events(from, to)).await;
        assert_eq!(resp.status(), 200, "{from}..{to}");
        assert_eq!(resp.text().await.unwrap().lines().count(), 1, "{from}..{to}");
    }
}

/// POST to an admin export (`/admin/v1/services/shop/export/{what}{query}`)
/// with `token` as the bearer.
async fn admin_export(server: &TestServer, what: &str, query: &str, token: &str, body: &Value) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/admin/v1/services/shop/export/{what}{query}")))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("admin export")
}

/// The admin exports are the Export API's (same admission, bytes and
/// errors, logged under its endpoints) behind the admin token, and
/// `?limit=N` ends the CSV after N rows — counted by CSV records, so a
/// newline inside a quoted cell does not end a row.
async fn admin_exports_are_the_export_api_with_a_row_limit() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "shop", "timezone": "Asia/Seoul", "auto_register": true}))
        .await;
    let events = (0..5u128)
        .map(|n| {
            let note = if n == 0 { "two\nlines, \"quoted\"" } else { "plain" };
            event(n, "purchase", &format!("2026-11-25T0{n}:00:00Z"), json!({"note": note}))
        })
        .collect();
    assert_eq!(server.import(&svc, events_body("u1", events)).await["code"], "20000");
    let day = all_events("2026-11-25", "2026-11-25");
    let via_api = server.export(&svc, day.clone()).await.text().await.unwrap();
    let resp = admin_export(&server, "event", "", ADMIN_TOKEN, &day).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), via_api, "the same bytes");
    let (header, rows) = parse_csv(&via_api);
    assert_eq!(rows.len(), 5);
    assert!(via_api.contains("two\nlines"), "a newline inside a cell: {via_api}");

    for limit in [1u64, 2, 5, 1000] {
        let resp = admin_export(&server, "event", &format!("?limit={limit}"), ADMIN_TOKEN, &day).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let (h, r) = parse_csv(&text);
        let n = limit.min(5) as usize;
        assert_eq!((&h, r.as_slice()), (&header, &rows[..n]), "limit {limit}");
        let logged = &server.requests(&svc).await[0];
        assert_eq!(
            (
                logged["endpoint"].as_str(),
                logged["message"].as_str(),
                logged["rows"].as_u64()
            ),
            (Some("/api/v1/export/event"), Some("ok"), Some(n as u64)),
            "limit {limit}: {logged}"
        );
        assert_eq!(logged["bytes"].as_u64(), Some(text.len() as u64));
        assert!(logged["token_id"].is_null());
    }

    // The Export API's refusals, in its dialect, logged.
    let query_refusals = ["?limit=0", "?limit=1001", "?limit=x", "?rows=1"];
    for query in query_refusals {
        assert_failure(
            admin_export(&server, "event", query, ADMIN_TOKEN, &day).await,
            400,
            "invalid_parameter",
        )
        .await;
    }
    assert_failure(
        admin_export(
            &server,
            "event",
            "",
            ADMIN_TOKEN,
            &json!({"events_condition_type": "some"}),
        )
        .await,
        400,
        "invalid_parameter",
    )
    .await;
    assert_failure(
        admin_export(
            &server,
            "event",
            "",
            ADMIN_TOKEN,
            &all_events("2025-01-01", "2025-01-01"),
        )
        .await,
        400,
        "exceed_date_range_limit",
    )
    .await;
    let refused = server.requests(&svc).await;
    assert_eq!(refused[0]["message"], "exceed_date_range_limit");
    assert_eq!(refused[1]["message"], "invalid_parameter");
    // Only the admin token opens it.
    for token in [svc.export_token.as_str(), "wrong"] {
        let resp = admin_export(&server, "event", "", token, &day).await;
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }

    let profiles = json!({"properties_condition_type": "all", "identities_condition_type": "all"});
    let resp = admin_export(&server, "userprofile", "?limit=1", ADMIN_TOKEN, &profiles).await;
    assert_eq!(resp.status(), 200);
    let (_, rows) = parse_csv(&resp.text().await.unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(server.requests(&svc).await[0]["endpoint"], "/api/v1/export/userprofile");

    // The service's hourly quota counts them: 7 admitted so far (1 by the Export API).
    let (status, _) = server
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/services/shop",
            Some(json!({"limits": {"export_per_hour": 7}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_failure(
        admin_export(&server, "event", "?limit=1", ADMIN_TOKEN, &day).await,
        429,
        "too_many_api_requests",
    )
    .await;
}

backend_suite!(
    admin_exports_are_the_export_api_with_a_row_limit,
    invalid_parameter_for_every_malformed_request,
    unauthorized_token_for_every_wrong_credential,
    the_bearer_scheme_is_accepted_in_any_case,
    lookback_is_counted_in_the_service_timezone,
    csv_matches_what_was_imported_cell_by_cell,
    filters_select_events_and_columns,
    rows_are_ordered_by_correction_time_then_event_log_id_across_days,
    an_empty_range_is_the_header_line_alone,
    a_future_event_is_corrected_to_the_receipt_time,
    reissued_tokens_keep_working_for_the_grace_period_and_revoke_is_immediate,
    hourly_quota_refuses_with_headers_and_resets_on_the_hour,
    concurrency_limit_refuses_and_disconnects_free_their_slots,
    an_export_is_one_snapshot_though_imports_land_while_it_streams,
    a_store_failure_mid_stream_breaks_the_transfer_visibly,
    failures_before_the_first_byte_are_500_and_use_no_quota,
    exports_compress_by_accept_encoding,
    a_range_of_centuries_costs_only_the_days_that_hold_events,
    lookback_settings_are_bounded_and_never_overflow,
);
