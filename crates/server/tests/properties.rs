//! Property tests over real sockets: one server with two seeded services
//! (taxonomy of every type, events, profiles, audiences; one of them with
//! `auto_register`), then arbitrary bytes, arbitrary JSON, valid bodies and
//! bodies mutated from valid ones POSTed to each Export and Import API
//! endpoint with valid tokens. Every answer is one of the documented
//! shapes and never a 5xx: an export refusal is `{"result":"fail",
//! "message":…}` with the status SPEC §2.2 gives that message, a 200 export
//! is CSV with a header, an import answer is HTTP 200 with SPEC §4's body
//! and one of its codes. The server answers normally afterwards and its
//! request log holds no failure of its own.
//!
//! Cases are drawn at random (`PROPTEST_CASES` sets how many per endpoint);
//! a failing case is shrunk, printed, and its seed kept in
//! `proptest-regressions/properties.txt`, replayed first on the next run.
//! The server's data grows across cases, so a shrunk case is replayed
//! against a server in a later state than the one it failed on.

mod common;
#[path = "../../contract/tests/strategies/mod.rs"]
mod strategies;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use common::*;
use fineport_contract::export::ExportOutcome;
use fineport_contract::import::ImportCode;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use serde_json::{json, Value as Json};
use strategies::{
    any_json, damaged, delete_body, event_export_body, identities_body, near_valid, profile_body, profile_export_body,
    taxonomy_doc, CUSTOM_EVENT,
};

/// Cases per endpoint unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 500;

const EXPORT_EVENT: &str = "/api/v1/export/event";
const EXPORT_PROFILE: &str = "/api/v1/export/userprofile";
const EVENTS: &str = "/api/v1/events";
const IDENTITIES: &str = "/api/v1/identities";
const DELETE: &str = "/api/v1/identities/delete";
const USER_PROFILE: &str = "/api/v1/user-profile";

/// The services' today: `default_now()` is 2026-11-25 in UTC and in Seoul.
fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
}

const AUDIENCES: [&str; 2] = ["aud001", "aud002"];

/// One request of a case: which service, which `Content-Type`, which bytes.
#[derive(Clone)]
struct Request {
    kind: &'static str,
    auto_register: bool,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} body to the {} service, Content-Type {:?}:\nb\"{}\"",
            self.kind,
            if self.auto_register { "auto_register" } else { "plain" },
            self.content_type,
            self.body.escape_ascii()
        )
    }
}

/// Arbitrary bytes, arbitrary JSON, valid bodies, valid bodies mutated,
/// and valid JSON text cut short or with a byte changed.
fn request(valid: BoxedStrategy<Json>) -> impl Strategy<Value = Request> {
    let text = |s: BoxedStrategy<Json>| s.prop_map(|j| j.to_string().into_bytes());
    let body = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(|b| ("bytes", b)),
        2 => text(any_json().boxed()).prop_map(|b| ("any JSON", b)),
        4 => text(near_valid(valid.clone()).boxed()).prop_map(|b| ("near-valid", b)),
        2 => text(valid.clone()).prop_map(|b| ("valid", b)),
        1 => valid.prop_flat_map(|j| damaged(j.to_string())).prop_map(|b| ("damaged", b)),
    ];
    let content_type = prop_oneof![
        16 => Just(Some("application/json")),
        2 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("Application/JSON")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ];
    (body, any::<bool>(), content_type).prop_map(|((kind, body), auto_register, content_type)| Request {
        kind,
        auto_register,
        content_type,
        body,
    })
}

struct Services {
    plain: Svc,
    auto: Svc,
}

impl Services {
    fn pick(&self, auto_register: bool) -> &Svc {
        if auto_register {
            &self.auto
        } else {
            &self.plain
        }
    }
}

/// Both services: the taxonomy of every type, audiences, and data drawn
/// from the valid generators with a fixed seed.
async fn seed(server: &TestServer) -> Services {
    let limits = json!({"export_per_hour": 1_000_000, "events_per_minute": 1_000_000_000u64,
                        "identities_per_minute": 1_000_000, "profiles_per_minute": 1_000_000});
    let plain = server
        .service(json!({"service_id": "shop", "timezone": "Asia/Seoul", "limits": limits}))
        .await;
    let auto = server
        .service(json!({"service_id": "auto", "auto_register": true, "limits": limits}))
        .await;
    let mut runner = TestRunner::deterministic();
    for svc in [&plain, &auto] {
        server.taxonomy(svc, taxonomy_doc()).await;
        for audience in [
            json!({"id": AUDIENCES[0], "name": "list", "external_ids": ["ext-0", "ext-1", "nobody"]}),
            json!({"id": AUDIENCES[1], "name": "rule", "rule": {"all": [
                {"event": CUSTOM_EVENT, "min_count": 1, "from_date": "2026-10-01", "to_date": "2026-11-25"},
                {"property": "up_long", "equals": 5}]}}),
        ] {
            let (status, body) = server
                .admin(
                    reqwest::Method::POST,
                    &format!("/admin/v1/services/{}/audiences", svc.id),
                    Some(audience),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let mut stored = 0;
        for (path, strategy) in [
            (EVENTS, strategies::events_body(today()).boxed()),
            (IDENTITIES, identities_body().boxed()),
            (USER_PROFILE, profile_body().boxed()),
        ] {
            for _ in 0..15 {
                let body = strategy.new_tree(&mut runner).unwrap().current();
                let answer: Json = server.import_endpoint(svc, path, &body).await.json().await.unwrap();
                match answer["code"].as_str() {
                    Some("20000") => stored += 1,
                    // An external_id and a df_unified_id may name two profiles.
                    Some("40001") => {}
                    _ => panic!("seeding {path}: {answer} for {body}"),
                }
            }
        }
        assert!(stored >= 25, "seeded {stored} of 45 requests");
    }
    Services { plain, auto }
}

/// POSTs `req` to `path` of its service with a valid token.
async fn send(
    server: &TestServer,
    services: &Services,
    path: &str,
    req: &Request,
) -> Result<reqwest::Response, TestCaseError> {
    let svc = services.pick(req.auto_register);
    let mut builder = server
        .http
        .post(server.url(&format!("{path}?service_id={}", svc.id)))
        .body(req.body.clone());
    builder = if path.starts_with("/api/v1/export/") {
        builder.bearer_auth(&svc.export_token)
    } else {
        builder.header("access_token", &svc.import_token)
    };
    if let Some(ct) = req.content_type {
        builder = builder.header("content-type", ct);
    }
    let sent = tokio::time::timeout(Duration::from_secs(30), builder.send())
        .await
        .map_err(|_| TestCaseError::fail("no answer within 30 s"))?;
    sent.map_err(|e| TestCaseError::fail(format!("request failed: {e}")))
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Every API answer carries the rate-limit headers (SPEC §3).
fn assert_rate_headers(resp: &reqwest::Response) -> Result<(), TestCaseError> {
    for name in ["x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset"] {
        prop_assert!(header(resp, name).is_some(), "no {} header", name);
    }
    Ok(())
}

/// Checks an Export API answer; returns its label (`200`, `400 invalid_parameter`).
async fn check_export(
    server: &TestServer,
    services: &Services,
    path: &str,
    req: &Request,
) -> Result<String, TestCaseError> {
    let resp = send(server, services, path, req).await?;
    let status = resp.status().as_u16();
    prop_assert!(status < 500, "HTTP {}", status);
    assert_rate_headers(&resp)?;
    let content_type = header(&resp, "content-type").unwrap_or_default().to_owned();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("the body of a {status} did not arrive whole: {e}")))?;
    if status == 200 {
        prop_assert!(content_type.starts_with("text/csv"), "200 with {}", content_type);
        let text = std::str::from_utf8(&bytes).map_err(|e| TestCaseError::fail(format!("CSV not UTF-8: {e}")))?;
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| TestCaseError::fail(format!("CSV header: {e}")))?
            .iter()
            .map(str::to_owned)
            .collect();
        prop_assert!(headers.iter().any(|h| h == "df_unified_id"), "header {:?}", headers);
        let mut sorted = headers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(&headers, &sorted, "columns unique, in byte order");
        for record in reader.records() {
            let record = record.map_err(|e| TestCaseError::fail(format!("CSV row: {e}")))?;
            prop_assert_eq!(record.len(), headers.len());
        }
        return Ok("200 CSV".into());
    }
    let body: Json = serde_json::from_slice(&bytes).map_err(|_| {
        TestCaseError::fail(format!(
            "{status} body is not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        ))
    })?;
    let obj = body
        .as_object()
        .ok_or_else(|| TestCaseError::fail(format!("{status} body {body}")))?;
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    prop_assert!(
        keys == ["result", "message"] || keys == ["result", "message", "detail"],
        "keys {:?}",
        keys
    );
    prop_assert_eq!(&body["result"], "fail");
    if let Some(detail) = obj.get("detail") {
        prop_assert!(detail.as_str().is_some_and(|d| !d.is_empty()), "detail {}", detail);
    }
    let message = body["message"].as_str().unwrap_or_default();
    let outcome = ExportOutcome::ALL
        .into_iter()
        .find(|o| o.message() == message)
        .ok_or_else(|| TestCaseError::fail(format!("undocumented message {message:?}")))?;
    prop_assert_eq!(status, outcome.http_status(), "{}", message);
    // With valid tokens, limits far off and a healthy store, only the body
    // and the look-back can refuse.
    prop_assert!(
        matches!(
            outcome,
            ExportOutcome::InvalidParameter | ExportOutcome::ExceedDateRangeLimit
        ),
        "{} {}",
        status,
        body
    );
    Ok(format!("{status} {message}"))
}

/// Checks an Import API answer; returns its code.
async fn check_import(
    server: &TestServer,
    services: &Services,
    path: &str,
    req: &Request,
    allowed: &[ImportCode],
) -> Result<String, TestCaseError> {
    let resp = send(server, services, path, req).await?;
    prop_assert_eq!(resp.status().as_u16(), 200);
    assert_rate_headers(&resp)?;
    prop_assert!(
        header(&resp, "content-type").is_some_and(|c| c.starts_with("application/json")),
        "content-type {:?}",
        header(&resp, "content-type")
    );
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("body: {e}")))?;
    let body: Json = serde_json::from_slice(&bytes)
        .map_err(|_| TestCaseError::fail(format!("body is not JSON: {:?}", String::from_utf8_lossy(&bytes))))?;
    let keys: Vec<&str> = body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    prop_assert_eq!(keys, vec!["status", "code", "message", "data"], "{}", body);
    let code = body["code"].as_str().unwrap_or_default();
    let import_code = ImportCode::ALL
        .into_iter()
        .find(|c| c.code() == code)
        .ok_or_else(|| TestCaseError::fail(format!("undocumented code in {body}")))?;
    prop_assert!(allowed.contains(&import_code), "{}", body);
    prop_assert_eq!(&body["message"], import_code.message());
    prop_assert_eq!(&body["status"], import_code == ImportCode::Ok);
    if import_code == ImportCode::Ok {
        prop_assert_eq!(
            &body,
            &json!({"status": true, "code": "20000", "message": "OK", "data": true})
        );
    } else if let Some(problems) = body["data"].as_array() {
        prop_assert!(!problems.is_empty(), "{}", body);
        for p in problems {
            let p = p
                .as_object()
                .ok_or_else(|| TestCaseError::fail(format!("problem {p}")))?;
            prop_assert!(p.keys().all(|k| k == "index" || k == "reason"), "{:?}", p);
            prop_assert!(
                p.get("reason").and_then(Json::as_str).is_some_and(|r| !r.is_empty()),
                "{:?}",
                p
            );
            prop_assert!(p.get("index").is_none_or(Json::is_u64), "{:?}", p);
        }
    } else {
        prop_assert!(body["data"].is_null(), "{}", body);
    }
    Ok(format!("{code} {}", import_code.message()))
}

/// One endpoint: its path, its valid bodies, and the codes it may answer.
struct Endpoint {
    path: &'static str,
    valid: BoxedStrategy<Json>,
    /// `None` for an export endpoint.
    import_codes: Option<Vec<ImportCode>>,
}

fn endpoints() -> Vec<Endpoint> {
    use ImportCode::{BadRequest, Ok, TooManyEvents, TooManyUserProfiles, ValidationFailure};
    let audiences = AUDIENCES.iter().map(|a| a.to_string()).collect();
    vec![
        Endpoint {
            path: EXPORT_EVENT,
            valid: event_export_body(today()).boxed(),
            import_codes: None,
        },
        Endpoint {
            path: EXPORT_PROFILE,
            valid: profile_export_body(audiences).boxed(),
            import_codes: None,
        },
        Endpoint {
            path: EVENTS,
            valid: strategies::events_body(today()).boxed(),
            import_codes: Some(vec![Ok, BadRequest, ValidationFailure, TooManyEvents]),
        },
        Endpoint {
            path: IDENTITIES,
            valid: identities_body().boxed(),
            import_codes: Some(vec![Ok, BadRequest, ValidationFailure]),
        },
        Endpoint {
            path: DELETE,
            valid: delete_body().boxed(),
            import_codes: Some(vec![Ok, BadRequest, ValidationFailure]),
        },
        Endpoint {
            path: USER_PROFILE,
            valid: profile_body().boxed(),
            import_codes: Some(vec![Ok, BadRequest, ValidationFailure, TooManyUserProfiles]),
        },
    ]
}

#[test]
fn every_endpoint_answers_any_body_with_a_documented_answer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::start());
    let services = rt.block_on(seed(&server));
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default().cases
    } else {
        CASES
    };
    let mut report = Vec::new();
    for endpoint in endpoints() {
        let started = Instant::now();
        let answers: RefCell<BTreeMap<String, u32>> = RefCell::default();
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
                "proptest-regressions/properties.txt",
            ))),
            ..Config::default()
        });
        let result = runner.run(&request(endpoint.valid.clone()), |req| {
            let label = rt.block_on(async {
                match &endpoint.import_codes {
                    None => check_export(&server, &services, endpoint.path, &req).await,
                    Some(codes) => check_import(&server, &services, endpoint.path, &req, codes).await,
                }
            })?;
            *answers.borrow_mut().entry(label).or_default() += 1;
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, req)) => panic!("{}: {why}\nminimal failing input: {req:?}", endpoint.path),
            Err(TestError::Abort(why)) => panic!("{}: aborted: {why}", endpoint.path),
        }
        report.push(format!(
            "{} — {cases} cases in {:.1} s: {:?}",
            endpoint.path,
            started.elapsed().as_secs_f64(),
            answers.into_inner()
        ));
    }
    for line in &report {
        eprintln!("{line}");
    }

    // The server still answers, normally.
    rt.block_on(async {
        let svc = &services.plain;
        let ok = server
            .import(
                svc,
                events_body_for("after", json!({"ev_string": "still here", "ev_double": 1.5})),
            )
            .await;
        assert_eq!(ok["code"], "20000", "{ok}");
        let resp = server
            .export(
                svc,
                json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"}),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let (header, rows) = parse_csv(&resp.text().await.unwrap());
        assert!(rows.iter().any(|r| cell(&header, r, "ev_string") == "still here"));
        // Nothing the server logged was a failure of its own.
        for svc in [&services.plain, &services.auto] {
            for entry in server.requests(svc).await {
                let status = entry["status"].as_u64().unwrap_or_default();
                let message = entry["message"].as_str().unwrap_or_default();
                assert!(
                    status < 500 && !["50000", "query_error", "unknown_error"].contains(&message),
                    "{entry}"
                );
            }
        }
    });
}

/// An `/api/v1/events` body of one `custom_event` now for `external_id`.
fn events_body_for(external_id: &str, properties: Json) -> Json {
    common::events_body(
        external_id,
        vec![
            json!({"event_log_id": fineport_contract::Uuid::new_v4().to_string(), "event_name": CUSTOM_EVENT,
                    "event_datetime": "2026-11-25T01:00:00Z", "properties": properties}),
        ],
    )
}
