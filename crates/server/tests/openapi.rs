//! The OpenAPI document at `/openapi.json` against the server that serves
//! it: the same endpoints (no route undocumented, no operation unserved),
//! and every answer of a tour through every operation, success and
//! failure, conforms to what the document says of it: a documented status,
//! its media type, a body valid against its schema, and the
//! `X-Rate-Limit-*` headers on the DFINERY APIs (SPEC §2–§5).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{event, events_body, TestServer, ADMIN_TOKEN};
use fineport_store::failing::FailPoint;
use reqwest::Method;
use serde_json::{json, Value};

/// Every endpoint fineport serves (SPEC §2.1, §4, §5.2, the console's
/// sessions and the operations' own; the console's static files are not
/// an API and not in the document). A route added without its operation, or the other
/// way round, fails `the_document_lists_every_endpoint`.
const ENDPOINTS: &[&str] = &[
    "POST /api/v1/export/event",
    "POST /api/v1/export/userprofile",
    "POST /api/v1/events",
    "POST /api/v1/identities",
    "POST /api/v1/identities/delete",
    "POST /api/v1/user-profile",
    "GET /admin/v1/timezones",
    "GET /admin/v1/services",
    "POST /admin/v1/services",
    "GET /admin/v1/services/{id}",
    "PATCH /admin/v1/services/{id}",
    "GET /admin/v1/services/{id}/tokens",
    "POST /admin/v1/services/{id}/tokens/{kind}/reissue",
    "DELETE /admin/v1/services/{id}/tokens/{kind}",
    "GET /admin/v1/services/{id}/taxonomy",
    "POST /admin/v1/services/{id}/taxonomy",
    "GET /admin/v1/services/{id}/requests",
    "GET /admin/v1/services/{id}/stats",
    "POST /admin/v1/services/{id}/export/event",
    "POST /admin/v1/services/{id}/export/userprofile",
    "GET /admin/v1/services/{id}/audiences",
    "POST /admin/v1/services/{id}/audiences",
    "DELETE /admin/v1/services/{id}/audiences/{aid}",
    "POST /console/session",
    "GET /console/session",
    "DELETE /console/session",
    "GET /health",
    "GET /openapi.json",
    "GET /metrics",
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn document(server: &TestServer) -> Value {
    let resp = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.expect("the document is JSON")
}

/// `"METHOD /path"` → the operation object.
fn operations(doc: &Value) -> BTreeMap<String, Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            ops.insert(format!("{} {path}", method.to_uppercase()), op.clone());
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_endpoint() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<String> = operations(&doc).into_keys().collect();
    let expected: BTreeSet<String> = ENDPOINTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, expected, "the document and the endpoints differ");

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["export_token"]["scheme"], "bearer");
    assert_eq!(schemes["import_token"]["in"], "header");
    assert_eq!(schemes["import_token"]["name"], "access_token");
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
    assert_eq!(schemes["metrics_token"]["scheme"], "bearer");
    for (name, op) in operations(&doc) {
        let security = op["security"][0]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>());
        let want = if name.contains("/api/v1/export/") {
            Some(vec!["export_token".to_string()])
        } else if name.contains("/api/v1/") {
            Some(vec!["import_token".to_string()])
        } else if name.contains("/admin/") || name == "GET /metrics" {
            Some(vec!["admin_token".to_string()])
        } else {
            None
        };
        assert_eq!(security, want, "{name}: security");
        if name == "GET /metrics" {
            assert_eq!(
                op["security"][1],
                json!({"metrics_token": []}),
                "{name}: the second scheme"
            );
        }
    }
    // The seven detailed responses, each under DFINERY's status.
    let export = &doc["paths"]["/api/v1/export/event"]["post"]["responses"];
    for (status, messages) in [
        ("400", json!(["invalid_parameter", "exceed_date_range_limit"])),
        ("401", json!(["unauthorized_token"])),
        ("429", json!(["too_many_api_requests"])),
        ("500", json!(["query_error", "unknown_error"])),
    ] {
        let schema = &export[status]["content"]["application/json"]["schema"];
        assert_eq!(schema["properties"]["message"]["enum"], messages, "{status}");
    }
    assert!(export["429"]["headers"]["Retry-After"].is_object());
    let codes = &doc["components"]["schemas"]["ImportAnswerBody"]["properties"]["code"]["enum"];
    assert_eq!(
        codes,
        &json!(["20000", "40000", "40001", "40101", "40201", "40401", "40402", "40403", "50000"])
    );
    // Bounds the server enforces are the document's.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ServicePatch"]["properties"]["export_lookback_days"]["maximum"],
        json!(fineport_contract::export::MAX_LOOKBACK_DAYS)
    );
}

/// A path of the document with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "shop")
        .replace("{kind}", "export")
        .replace("{aid}", "nosuch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_no_other_method() {
    let server = TestServer::start().await;
    server.service(json!({"service_id": "shop"})).await;
    let doc = document(&server).await;
    let ops = operations(&doc);
    for (path, _) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let resp = server
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).expect("method"),
                    server.url(&concrete(path)),
                )
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let name = format!("{method} {path}");
            if ops.contains_key(&name) {
                assert!(
                    status != 405 && !body.contains("no endpoint"),
                    "{name} is documented but not served: {status} {body}"
                );
            } else {
                assert_eq!(status, 405, "{name} is served but not documented: {body}");
            }
        }
    }
}

/// Checks answers against the document.
struct Conformance {
    doc: Value,
    ops: BTreeMap<String, Value>,
    /// `"METHOD /path"` → the statuses seen.
    seen: BTreeMap<String, BTreeSet<u16>>,
}

impl Conformance {
    /// Sends `request`, documented as `op`, and checks its answer; returns
    /// the status and the body.
    async fn check(&mut self, op: &str, request: reqwest::RequestBuilder) -> (u16, String) {
        let operation = self
            .ops
            .get(op)
            .unwrap_or_else(|| panic!("{op} is not in the document"));
        let resp = request.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("body");
        let documented = &operation["responses"][status.to_string()];
        assert!(documented.is_object(), "{op}: {status} is not documented: {body}");
        if status == 204 {
            assert!(body.is_empty(), "{op}: 204 with a body: {body}");
            assert!(documented["content"].is_null(), "{op}: 204 documents a body");
            self.seen.entry(op.to_owned()).or_default().insert(status);
            return (status, body);
        }
        let content = documented["content"].as_object().expect("a documented body");
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (_, media) = content
            .iter()
            .find(|(documented, _)| content_type.starts_with(documented.as_str()))
            .unwrap_or_else(|| panic!("{op} {status}: content type {content_type:?} is not among {content:?}"));
        if content_type.starts_with("application/json") {
            let mut root = media["schema"].clone();
            root["components"] = self.doc["components"].clone();
            let validator = jsonschema::validator_for(&root).expect("a valid JSON schema");
            let instance: Value = serde_json::from_str(&body).expect("a JSON body");
            let errors: Vec<String> = validator.iter_errors(&instance).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{op} {status}: {body}\nbreaks the document: {errors:?}"
            );
        }
        assert!(
            documented["headers"]["X-Request-Id"].is_object(),
            "{op} {status}: X-Request-Id is not documented"
        );
        let id = headers.get("x-request-id").map(|v| v.as_bytes().to_vec());
        assert!(
            id.is_some_and(|id| fineport_server::request_log::RequestId::accepts(&id)),
            "{op} {status}: no request id"
        );
        if op.contains(" /api/v1/") {
            for header in ["x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset"] {
                assert!(headers.contains_key(header), "{op} {status}: no {header}");
            }
        }
        self.seen.entry(op.to_owned()).or_default().insert(status);
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_conforms_to_the_document() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let mut c = Conformance {
        ops: operations(&doc),
        doc,
        seen: BTreeMap::new(),
    };
    let http = &server.http;
    let url = |p: &str| server.url(p);
    let admin = |method: Method, p: &str| http.request(method, url(p)).bearer_auth(ADMIN_TOKEN);

    // Services.
    let (_, created) = c
        .check(
            "POST /admin/v1/services",
            admin(Method::POST, "/admin/v1/services").json(&json!({"service_id": "shop", "timezone": "Asia/Seoul"})),
        )
        .await;
    let created: Value = serde_json::from_str(&created).expect("JSON");
    let export_token = created["export_token"].as_str().expect("export token").to_owned();
    let import_token = created["import_token"].as_str().expect("import token").to_owned();
    c.check("POST /admin/v1/services", admin(Method::POST, "/admin/v1/services"))
        .await;
    c.check(
        "POST /admin/v1/services",
        admin(Method::POST, "/admin/v1/services").json(&json!({"service_id": "shop"})),
    )
    .await;
    c.check(
        "POST /admin/v1/services",
        admin(Method::POST, "/admin/v1/services").json(&json!({"colour": "red"})),
    )
    .await;
    c.check(
        "POST /admin/v1/services",
        http.post(url("/admin/v1/services")).bearer_auth("wrong"),
    )
    .await;
    c.check("GET /admin/v1/services", admin(Method::GET, "/admin/v1/services"))
        .await;
    c.check(
        "GET /admin/v1/services/{id}",
        admin(Method::GET, "/admin/v1/services/shop"),
    )
    .await;
    c.check(
        "GET /admin/v1/services/{id}",
        admin(Method::GET, "/admin/v1/services/nosuch"),
    )
    .await;
    c.check(
        "GET /admin/v1/services/{id}",
        admin(Method::GET, "/admin/v1/services/NOT-AN-ID"),
    )
    .await;
    c.check(
        "PATCH /admin/v1/services/{id}",
        admin(Method::PATCH, "/admin/v1/services/shop").json(&json!({"name": "The shop"})),
    )
    .await;
    c.check(
        "PATCH /admin/v1/services/{id}",
        admin(Method::PATCH, "/admin/v1/services/shop").json(&json!({"export_lookback_days": -1})),
    )
    .await;

    // Taxonomy.
    let taxonomy = json!({
        "events": ["purchase"],
        "event_properties": [{"name": "price", "type": "Double"}],
        "item_properties": [{"name": "sku", "type": "String"}],
        "user_properties": [{"name": "tier", "type": "String"}],
    });
    let taxonomy_path = "/admin/v1/services/shop/taxonomy";
    c.check(
        "POST /admin/v1/services/{id}/taxonomy",
        admin(Method::POST, taxonomy_path).json(&taxonomy),
    )
    .await;
    c.check(
        "POST /admin/v1/services/{id}/taxonomy",
        admin(Method::POST, taxonomy_path).json(&json!({"event_properties": [{"name": "price", "type": "Long"}]})),
    )
    .await;
    c.check(
        "GET /admin/v1/services/{id}/taxonomy",
        admin(Method::GET, taxonomy_path),
    )
    .await;

    // The Import API: success and each refusal.
    let import = |path: &str, token: Option<&str>, service: &str, body: String| {
        let mut req = http
            .post(url(&format!("{path}?service_id={service}")))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.header("access_token", t);
        }
        req
    };
    let it = Some(import_token.as_str());
    let mut purchase = event(1, "purchase", "2026-11-25T01:00:00.000Z", json!({"price": 9.5}));
    purchase["items"] = json!([{"sku": "a"}]);
    let events = events_body("u1", vec![purchase]);
    let ev = "POST /api/v1/events";
    let valid = events.to_string();
    for (token, service, body) in [
        (it, "shop", valid.clone()),
        (it, "shop", json!({"events": []}).to_string()),
        (it, "shop", "not json".to_string()),
        (Some("wrong"), "shop", events.to_string()),
        (it, "nosuch", events.to_string()),
    ] {
        let first = token == it && service == "shop" && body == valid;
        let (_, answer) = c.check(ev, import("/api/v1/events", token, service, body)).await;
        if first {
            assert!(answer.contains("\"20000\""), "{answer}");
        }
    }
    let identity = json!({"identity": {"external_id": "u2"}, "request_datetime": "2026-11-25T01:00:00Z"});
    for body in [identity.clone(), json!({"identity": {}})] {
        c.check(
            "POST /api/v1/identities",
            import("/api/v1/identities", it, "shop", body.to_string()),
        )
        .await;
        c.check(
            "POST /api/v1/identities/delete",
            import("/api/v1/identities/delete", it, "shop", body.to_string()),
        )
        .await;
    }
    for body in [
        json!({"identity": {"external_id": "u1"}, "user_properties": {"tier": "gold"}, "request_datetime": "2026-11-25T01:00:00Z"}),
        json!({"identity": {"external_id": "u1"}, "user_properties": {"tier": 3}, "request_datetime": "2026-11-25T01:00:00Z"}),
    ] {
        c.check(
            "POST /api/v1/user-profile",
            import("/api/v1/user-profile", it, "shop", body.to_string()),
        )
        .await;
    }

    // The Export API: success and each detailed response.
    let export = |path: &str, token: &str, body: Value| {
        http.post(url(&format!("{path}?service_id=shop")))
            .header("content-type", "application/json")
            .bearer_auth(token)
            .body(body.to_string())
    };
    let day = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let ee = "POST /api/v1/export/event";
    let (status, csv) = c
        .check(ee, export("/api/v1/export/event", &export_token, day.clone()))
        .await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("df_api_version,"), "{csv}");
    assert_eq!(csv.lines().count(), 2, "the header and the one event imported: {csv}");
    for body in [
        json!({"events_condition_type": "some"}),
        json!({"events_condition_type": "all", "from_date": "2025-01-01", "to_date": "2026-11-25"}),
    ] {
        c.check(ee, export("/api/v1/export/event", &export_token, body)).await;
    }
    c.check(ee, export("/api/v1/export/event", "wrong", day.clone())).await;
    server.faults.inject_export_failure(Some(FailPoint::BeforeFirstByte));
    c.check(ee, export("/api/v1/export/event", &export_token, day.clone()))
        .await;
    server.faults.inject_export_failure(None);
    let ep = "POST /api/v1/export/userprofile";
    for body in [
        json!({"properties_condition_type": "all", "identities": ["df_external_id"], "identities_condition_type": "include"}),
        json!({"properties_condition_type": "include", "properties": ["nosuch"]}),
    ] {
        c.check(ep, export("/api/v1/export/userprofile", &export_token, body))
            .await;
    }
    let ae = "POST /admin/v1/services/{id}/export/event";
    for (query, body) in [("?limit=1", day.clone()), ("", day.clone()), ("?limit=0", day.clone())] {
        c.check(
            ae,
            admin(Method::POST, &format!("/admin/v1/services/shop/export/event{query}")).json(&body),
        )
        .await;
    }
    c.check(ae, http.post(url("/admin/v1/services/shop/export/event")).json(&day))
        .await;
    let ap = "POST /admin/v1/services/{id}/export/userprofile";
    for body in [
        json!({"properties_condition_type": "all"}),
        json!({"properties_condition_type": "include", "properties": ["nosuch"]}),
    ] {
        c.check(
            ap,
            admin(Method::POST, "/admin/v1/services/shop/export/userprofile?limit=1").json(&body),
        )
        .await;
    }
    c.check(
        "PATCH /admin/v1/services/{id}",
        admin(Method::PATCH, "/admin/v1/services/shop").json(&json!({"limits": {"export_per_hour": 1}})),
    )
    .await;
    let (status, _) = c
        .check(
            ep,
            export(
                "/api/v1/export/userprofile",
                &export_token,
                json!({"properties_condition_type": "all"}),
            ),
        )
        .await;
    assert_eq!(status, 429);

    // The request log.
    let log = "GET /admin/v1/services/{id}/requests";
    for query in ["?limit=5", "?limit=0", "?limit=x", "", "?outcome=ok&limit=2"] {
        c.check(
            log,
            admin(Method::GET, &format!("/admin/v1/services/shop/requests{query}")),
        )
        .await;
    }

    for query in ["", "?hours=1&days=366", "?hours=0", "?days=x"] {
        c.check(
            "GET /admin/v1/services/{id}/stats",
            admin(Method::GET, &format!("/admin/v1/services/shop/stats{query}")),
        )
        .await;
    }

    // Audiences.
    let audiences = "/admin/v1/services/shop/audiences";
    for body in [
        json!({"id": "vip001", "name": "VIP", "external_ids": ["u1"]}),
        json!({"name": "buyers", "rule": {"all": [{"event": "purchase", "min_count": 1, "from_date": "2026-11-01", "to_date": "2026-11-25"}, {"property": "tier", "equals": "gold"}]}}),
        json!({"id": "vip001", "name": "again", "external_ids": []}),
        json!({"name": "bad", "rule": {"all": [{"property": "nosuch", "equals": 1}]}}),
    ] {
        c.check(
            "POST /admin/v1/services/{id}/audiences",
            admin(Method::POST, audiences).json(&body),
        )
        .await;
    }
    c.check("GET /admin/v1/services/{id}/audiences", admin(Method::GET, audiences))
        .await;
    for _ in 0..2 {
        c.check(
            "DELETE /admin/v1/services/{id}/audiences/{aid}",
            admin(Method::DELETE, &format!("{audiences}/vip001")),
        )
        .await;
    }

    // Tokens.
    let reissue = "POST /admin/v1/services/{id}/tokens/{kind}/reissue";
    for (kind, body) in [
        ("export", json!({"reason": "rotation"})),
        ("export", json!({})),
        ("nosuch", json!({})),
        ("import", json!({"reason": "x".repeat(501)})),
    ] {
        c.check(
            reissue,
            admin(Method::POST, &format!("/admin/v1/services/shop/tokens/{kind}/reissue")).json(&body),
        )
        .await;
    }
    c.check(
        reissue,
        admin(Method::POST, "/admin/v1/services/shop/tokens/import/reissue"),
    )
    .await;
    for service in ["shop", "nosuch"] {
        c.check(
            "GET /admin/v1/services/{id}/tokens",
            admin(Method::GET, &format!("/admin/v1/services/{service}/tokens")),
        )
        .await;
    }
    for kind in ["import", "nosuch"] {
        c.check(
            "DELETE /admin/v1/services/{id}/tokens/{kind}",
            admin(Method::DELETE, &format!("/admin/v1/services/shop/tokens/{kind}")),
        )
        .await;
    }

    c.check("GET /admin/v1/timezones", admin(Method::GET, "/admin/v1/timezones"))
        .await;

    // The console's sessions.
    let session = "/console/session";
    let cs = "POST /console/session";
    c.check(cs, http.post(url(session)).json(&json!({"token": "wrong"})))
        .await;
    c.check(cs, http.post(url(session)).body("not json")).await;
    let resp = http
        .post(url(session))
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .expect("sign in");
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .expect("ASCII")
        .split(';')
        .next()
        .expect("the cookie")
        .to_owned();
    let csrf: Value = resp.json().await.expect("JSON");
    let csrf = csrf["csrf_token"].as_str().expect("csrf_token").to_owned();
    c.check(cs, http.post(url(session)).json(&json!({"token": ADMIN_TOKEN})))
        .await;
    for with_cookie in [true, false] {
        let mut req = http.get(url(session));
        if with_cookie {
            req = req.header("cookie", &cookie);
        }
        c.check("GET /console/session", req).await;
    }
    for with_csrf in [false, true] {
        let mut req = http.delete(url(session)).header("cookie", &cookie);
        if with_csrf {
            req = req.header("x-csrf-token", &csrf);
        }
        c.check("DELETE /console/session", req).await;
    }

    c.check("GET /health", http.get(url("/health"))).await;
    c.check("GET /openapi.json", http.get(url("/openapi.json"))).await;
    let (status, text) = c.check("GET /metrics", http.get(url("/metrics"))).await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = c.check("GET /metrics", admin(Method::GET, "/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.contains("fineport_requests_total{"), "{text}");

    // Every operation was toured, with the answers the tour aims at.
    let toured: BTreeSet<&String> = c.seen.keys().collect();
    let all: BTreeSet<&String> = c.ops.keys().collect();
    assert_eq!(toured, all, "operations the tour missed");
    let seen = |op: &str| c.seen[op].iter().copied().collect::<Vec<_>>();
    assert_eq!(seen("POST /admin/v1/services"), [201, 400, 401, 409]);
    assert_eq!(seen(ee), [200, 400, 401, 500]);
    assert_eq!(seen(ep), [200, 400, 429]);
    assert_eq!(seen(reissue), [200, 400, 404, 409]);
    assert_eq!(seen(log), [200, 400]);
    assert_eq!(seen(cs), [200, 400, 401]);
    assert_eq!(seen("GET /console/session"), [200, 401]);
    assert_eq!(seen("DELETE /console/session"), [204, 401]);
}
