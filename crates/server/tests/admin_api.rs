//! The admin API end to end: authentication, services, settings, taxonomy,
//! tokens and the request log.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn requires_the_admin_token() {
    let server = TestServer::start().await;
    for token in [None, Some("wrong")] {
        let mut req = server.http.get(server.url("/admin/v1/services"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
}

/// SPEC §5.2: every admin failure is `{"error","detail"}` JSON with a
/// proper status, whatever went wrong (routing, method, query, body, id).
async fn every_admin_error_is_json_with_error_and_detail() {
    let server = TestServer::start().await;
    server.service(json!({"service_id": "shop"})).await;
    /// method, path, body, status, error code, a part of the detail
    type Case = (
        Method,
        &'static str,
        Option<&'static str>,
        u16,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/admin/v1/nothing",
            None,
            404,
            "not_found",
            "/admin/v1/nothing",
        ),
        (Method::GET, "/no/such/path", None, 404, "not_found", "/no/such/path"),
        (
            Method::PUT,
            "/admin/v1/services",
            None,
            405,
            "method_not_allowed",
            "PUT",
        ),
        (
            Method::DELETE,
            "/admin/v1/services/shop",
            None,
            405,
            "method_not_allowed",
            "DELETE",
        ),
        (
            Method::GET,
            "/admin/v1/services/shop/requests?limit=abc",
            None,
            400,
            "invalid_request",
            "limit",
        ),
        (
            Method::GET,
            "/admin/v1/services/shop/requests?limt=5",
            None,
            400,
            "invalid_request",
            "limt",
        ),
        (
            Method::POST,
            "/admin/v1/services",
            Some("{not json"),
            400,
            "invalid_request",
            "JSON",
        ),
        (
            Method::GET,
            "/admin/v1/services/nosuch",
            None,
            404,
            "not_found",
            "no such service: \"nosuch\"",
        ),
        (
            Method::DELETE,
            "/admin/v1/services/shop/audiences/zzzzzz",
            None,
            404,
            "not_found",
            "no audience \"zzzzzz\"",
        ),
        (
            Method::DELETE,
            "/admin/v1/services/nosuch/audiences/zzzzzz",
            None,
            404,
            "not_found",
            "no such service",
        ),
        (
            Method::POST,
            "/admin/v1/services/shop/tokens/bogus/reissue",
            None,
            404,
            "not_found",
            "bogus",
        ),
    ];
    for (method, path, body, status, error, in_detail) in cases {
        let mut req = server
            .http
            .request(method.clone(), server.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], error, "{method} {path}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(in_detail)),
            "{method} {path}: {body}"
        );
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    }
    // A body over the limit is an admin error too, not plain text.
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(3 << 20));
    let resp = server
        .http
        .patch(server.url("/admin/v1/services/shop"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    // The DFINERY APIs answer a wrong method in their own dialects.
    let resp = server
        .http
        .get(server.url("/api/v1/export/event?service_id=shop"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "invalid_parameter", "{body}");
    let resp = server
        .http
        .get(server.url("/api/v1/events?service_id=shop"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "40000", "{body}");
}

async fn services_are_created_listed_read_and_changed() {
    let server = TestServer::start().await;
    let (status, created) = server.admin(Method::POST, "/admin/v1/services", Some(json!({}))).await;
    assert_eq!(status, 201);
    let id = created["service_id"].as_str().unwrap();
    assert_eq!(id.len(), 10);
    assert!(id.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    assert_eq!(created["timezone"], "UTC");
    assert_eq!(created["export_lookback_days"], 30);
    assert_eq!(created["auto_register"], false);
    assert_eq!(
        created["limits"],
        json!({"export_per_hour": 100, "export_concurrency": 5, "events_per_minute": 1_000_000,
               "identities_per_minute": 10_000, "profiles_per_minute": 10_000})
    );
    let (import, export) = (
        created["import_token"].as_str().unwrap(),
        created["export_token"].as_str().unwrap(),
    );
    assert!(
        import.len() >= 64 && export.len() >= 64 && import != export,
        "256-bit tokens"
    );

    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/v1/services",
            Some(json!({"service_id": "shop", "timezone": "Asia/Seoul", "limits": {"export_per_hour": 7}})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, dup) = server
        .admin(Method::POST, "/admin/v1/services", Some(json!({"service_id": "shop"})))
        .await;
    assert_eq!((status, dup["error"].as_str()), (409, Some("conflict")));
    for bad in [
        json!({"service_id": "Bad-Id"}),
        json!({"timezone": "Mars/Base"}),
        json!({"nonsense": 1}),
        json!({"limits": {"export_concurrency": 0}}),
    ] {
        let (status, body) = server
            .admin(Method::POST, "/admin/v1/services", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"], "invalid_request");
        assert!(body["detail"].as_str().is_some());
    }

    let (_, list) = server.admin(Method::GET, "/admin/v1/services", None).await;
    assert_eq!(list["services"].as_array().unwrap().len(), 2);
    let (status, shop) = server.admin(Method::GET, "/admin/v1/services/shop", None).await;
    assert_eq!(status, 200);
    assert_eq!(shop["limits"]["export_per_hour"], 7);
    assert!(shop.get("export_token").is_none(), "tokens are shown once, at creation");

    let (status, patched) = server
        .admin(
            Method::PATCH,
            "/admin/v1/services/shop",
            Some(json!({"export_lookback_days": 90, "limits": {"export_concurrency": 2}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["export_lookback_days"], 90);
    assert_eq!(patched["limits"]["export_concurrency"], 2);
    assert_eq!(patched["limits"]["export_per_hour"], 7, "other limits unchanged");
    let (status, _) = server.admin(Method::GET, "/admin/v1/services/nosuch", None).await;
    assert_eq!(status, 404);
}

async fn taxonomy_starts_standard_adds_idempotently_and_refuses_type_changes() {
    let server = TestServer::start().await;
    server.service(json!({"service_id": "shop"})).await;
    let (_, t) = server
        .admin(Method::GET, "/admin/v1/services/shop/taxonomy", None)
        .await;
    assert_eq!(t["events"].as_array().unwrap().len(), 15);
    assert!(t["item_properties"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "df_quantity", "type": "Long"})));
    assert!(t["user_properties"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "df_push_optin", "type": "Boolean"})));

    let add = json!({"events": ["review"], "event_properties": [{"name": "stars", "type": "Long"}]});
    let (status, first) = server
        .admin(Method::POST, "/admin/v1/services/shop/taxonomy", Some(add.clone()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["added"]["events"], json!(["review"]));
    let (status, again) = server
        .admin(Method::POST, "/admin/v1/services/shop/taxonomy", Some(add))
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["added"]["events"], json!([]));

    let conflict = json!({"event_properties": [{"name": "stars", "type": "Double"}]});
    let (status, body) = server
        .admin(Method::POST, "/admin/v1/services/shop/taxonomy", Some(conflict))
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    for bad in [
        json!({"events": ["df_custom"]}),
        json!({"event_properties": [{"name": "x", "type": "Integer"}]}),
    ] {
        let (status, _) = server
            .admin(Method::POST, "/admin/v1/services/shop/taxonomy", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}");
    }
}

async fn the_standard_taxonomy_lists_df_items_and_posts_back_as_a_no_op() {
    let server = TestServer::start().await;
    server.service(json!({"service_id": "shop"})).await;
    let (_, listed) = server
        .admin(Method::GET, "/admin/v1/services/shop/taxonomy", None)
        .await;
    let names: Vec<&str> = listed["event_properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        listed["event_properties"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "df_items", "type": "Array of Item"})),
        "{listed}"
    );
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "byte order");
    // The listing, posted back whole (or to a new service), adds nothing.
    let (status, again) = server
        .admin(Method::POST, "/admin/v1/services/shop/taxonomy", Some(listed.clone()))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["added"],
        json!({"events": [], "event_properties": [], "item_properties": [], "user_properties": []})
    );
    assert_eq!(again["taxonomy"], listed);
    // Array of Item is df_items' type alone, and df_items has no other.
    for bad in [
        json!({"event_properties": [{"name": "basket", "type": "Array of Item"}]}),
        json!({"item_properties": [{"name": "basket", "type": "Array of Item"}]}),
    ] {
        let (status, body) = server
            .admin(Method::POST, "/admin/v1/services/shop/taxonomy", Some(bad.clone()))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {body}"
        );
    }
    let (status, body) = server
        .admin(
            Method::POST,
            "/admin/v1/services/shop/taxonomy",
            Some(json!({"event_properties": [{"name": "df_items", "type": "String"}]})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

/// SPEC §1: a name whose export column would duplicate one the export
/// writes (a system column, or a column differing only in letter case) is
/// refused at registration, through the admin API and through auto_register.
async fn names_that_would_duplicate_an_export_column_are_refused() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "shop", "auto_register": true}))
        .await;
    server
        .taxonomy(
            &svc,
            json!({"event_properties": [{"name": "price", "type": "Long"}],
                   "item_properties": [{"name": "color", "type": "String"}],
                   "user_properties": [{"name": "tier", "type": "String"}]}),
        )
        .await;
    for (doc, column) in [
        (
            json!({"event_properties": [{"name": "event_name", "type": "String"}]}),
            "event_name",
        ),
        (
            json!({"event_properties": [{"name": "Event_Name", "type": "String"}]}),
            "event_name",
        ),
        (
            json!({"event_properties": [{"name": "PRICE", "type": "Long"}]}),
            "price",
        ),
        (
            json!({"item_properties": [{"name": "Color", "type": "String"}]}),
            "df_items_color",
        ),
        (json!({"user_properties": [{"name": "Tier", "type": "String"}]}), "tier"),
        // Two names of one request that differ only in case.
        (
            json!({"event_properties": [{"name": "size", "type": "Long"}, {"name": "Size", "type": "Long"}]}),
            "size",
        ),
    ] {
        let (status, body) = server
            .admin(Method::POST, "/admin/v1/services/shop/taxonomy", Some(doc.clone()))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("conflict")),
            "{doc}: {body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("{column:?}")), "{doc}: {detail}");
    }
    // Nothing of a refused request was registered.
    let (_, t) = server
        .admin(Method::GET, "/admin/v1/services/shop/taxonomy", None)
        .await;
    assert!(!t.to_string().contains("\"size\""), "{t}");
    // The same name in another export's namespace is fine: an item
    // property "price" is the column df_items_price.
    server
        .taxonomy(&svc, json!({"item_properties": [{"name": "price", "type": "Long"}]}))
        .await;

    // auto_register refuses it with 40001 and the reason, and stores nothing.
    let answer = server
        .import(
            &svc,
            events_body(
                "u1",
                vec![event(1, "df_login", "2026-11-25T01:00:00Z", json!({"event_name": "x"}))],
            ),
        )
        .await;
    assert_eq!(answer["code"], "40001", "{answer}");
    assert!(answer.to_string().contains("event_name"), "{answer}");
    let resp = server
        .export(
            &svc,
            json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"}),
        )
        .await;
    let text = resp.text().await.unwrap();
    assert_eq!(text.lines().count(), 1, "nothing stored: {text}");
    let header: Vec<&str> = text.trim_end().split(',').collect();
    let unique: std::collections::BTreeSet<String> = header.iter().map(|h| h.to_ascii_lowercase()).collect();
    assert_eq!(unique.len(), header.len(), "no column twice: {text}");
}

/// Opens the store at `path` without FINEPORT_ADMIN_TOKEN, as `serve` would.
async fn open_state(path: &std::path::Path) -> (fineport_server::SharedState, Option<String>) {
    let store = std::sync::Arc::new(fineport_store::duckdb::DuckDbStore::open(path, &Default::default()).unwrap());
    let parts = fineport_server::Parts {
        store,
        clock: std::sync::Arc::new(fineport_server::clock::ManualClock::new(default_now())),
        limiter: std::sync::Arc::new(fineport_server::limits::MemoryLimiter::default()),
        config: Default::default(),
        admin_token: None,
    };
    fineport_server::build_state(parts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_and_admin_token_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fineport.duckdb");
    let (state, generated) = open_state(&path).await;
    let admin_token = generated.expect("a first start generates the admin token");
    let shop = fineport_contract::ServiceId::parse("shop").unwrap();
    let service = fineport_store::Service {
        service_id: shop.clone(),
        name: "Shop".into(),
        timezone: "Asia/Seoul".into(),
        export_lookback_days: 30,
        auto_register: false,
        limits: Default::default(),
        created_at: default_now(),
    };
    let (_, export_token) = state.catalog.create_service(service).await.unwrap();
    let doc = serde_json::from_value(json!({"event_properties": [{"name": "stars", "type": "Long"}]})).unwrap();
    state.catalog.register(&shop, &doc).await.unwrap();
    drop(state);

    let (state, generated) = open_state(&path).await;
    assert!(generated.is_none(), "a restart keeps the admin token");
    assert_eq!(
        state.admin_token_hash,
        fineport_server::tokens::hash(&admin_token),
        "the admin token is kept, hashed"
    );
    let view = state.catalog.service("shop").expect("service after restart");
    assert_eq!(view.service.timezone, "Asia/Seoul");
    assert!(view.taxonomy.event_properties.contains_key("stars"));
    assert!(state
        .catalog
        .authenticate("shop", fineport_store::TokenKind::Export, &export_token, default_now())
        .is_some());
}

async fn the_request_log_records_every_api_request_without_tokens() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let body = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    server.export(&svc, body.clone()).await.text().await.unwrap();
    server
        .export_raw("/api/v1/export/event?service_id=shop", Some("bad"), body.to_string())
        .await;
    let log = server.requests(&svc).await;
    assert_eq!(log.len(), 2);
    let (newest, oldest) = (&log[0], &log[1]);
    assert_eq!(
        (newest["status"].as_u64(), newest["message"].as_str()),
        (Some(401), Some("unauthorized_token"))
    );
    assert_eq!(
        (oldest["status"].as_u64(), oldest["message"].as_str()),
        (Some(200), Some("ok"))
    );
    assert_eq!(oldest["endpoint"], "/api/v1/export/event");
    assert_eq!(oldest["ip"], "127.0.0.1");
    assert_eq!(oldest["rows"], 0);
    assert!(oldest["bytes"].as_u64().unwrap() > 0);
    assert!(oldest["token_id"].as_str().unwrap().starts_with("tok_"));
    assert!(newest["token_id"].is_null());
    for key in [
        "time",
        "endpoint",
        "status",
        "message",
        "ip",
        "user_agent",
        "token_id",
        "rows",
        "bytes",
        "duration_ms",
    ] {
        assert!(oldest.get(key).is_some(), "{key} in {oldest}");
    }
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains(&svc.export_token), "never the token itself");
}

/// `GET …/timezones`: every name a service accepts, sorted; each one
/// creates a service, a name outside the list does not.
async fn timezones_lists_every_accepted_name_sorted() {
    let server = TestServer::start().await;
    let (status, v) = server.admin(Method::GET, "/admin/v1/timezones", None).await;
    assert_eq!(status, 200, "{v}");
    let names: Vec<&str> = v["timezones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.len() > 400, "the IANA database: {}", names.len());
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, once each");
    for name in ["UTC", "Asia/Seoul", "Asia/Kathmandu", "America/St_Johns"] {
        assert!(names.contains(&name), "{name}");
    }
    for (i, name) in [names[0], names[names.len() / 2], names[names.len() - 1]]
        .into_iter()
        .enumerate()
    {
        let (status, body) = server
            .admin(
                Method::POST,
                "/admin/v1/services",
                Some(json!({"service_id": format!("tz{i}"), "timezone": name})),
            )
            .await;
        assert_eq!(status, 201, "{name}: {body}");
    }
    assert!(!names.contains(&"Asia/Nowhere"));
    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/v1/services",
            Some(json!({"timezone": "Asia/Nowhere"})),
        )
        .await;
    assert_eq!(status, 400);
}

/// `GET /admin/v1/services/shop/tokens`'s list; checks it never shows a hash.
async fn list_tokens(server: &TestServer) -> Vec<Value> {
    let (status, v) = server.admin(Method::GET, "/admin/v1/services/shop/tokens", None).await;
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    assert!(!text.contains("hash"), "{text}");
    v["tokens"].as_array().unwrap().clone()
}

/// `GET …/tokens` lists every token newest first with its state and the
/// reason given to its reissue, never a value or hash; the reason is
/// checked (≤ 500 characters) and survives a restart.
async fn tokens_are_listed_with_state_and_reissue_reason() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let listed = list_tokens(&server).await;
    assert_eq!(listed.len(), 2);
    for t in &listed {
        assert_eq!(
            (
                t["state"].as_str(),
                t["revoked"].as_bool(),
                &t["valid_until"],
                &t["reason"]
            ),
            (Some("active"), Some(false), &Value::Null, &Value::Null),
            "{t}"
        );
        assert_eq!(t["created_at"], "2026-11-25T03:00:00Z");
        assert!(t["token_id"].as_str().unwrap().starts_with("tok_"));
    }
    let kinds: std::collections::BTreeSet<&str> = listed.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["export", "import"].into());

    server.clock.advance(chrono::Duration::hours(1));
    let reissue = |kind: &str, body: Option<Value>| {
        let path = format!("/admin/v1/services/shop/tokens/{kind}/reissue");
        let server = &server;
        async move { server.admin(Method::POST, &path, body).await }
    };
    let (status, v) = reissue("export", Some(json!({"reason": "leaked in a CI log"}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["previous_valid_until"], "2026-12-09T04:00:00Z");
    let new_token = v["token"].as_str().unwrap().to_owned();
    // Too long (501 characters), or not a reason: refused, nothing issued.
    for bad in [
        json!({"reason": "x".repeat(501)}),
        json!({"why": "no"}),
        json!({"reason": 5}),
    ] {
        let (status, v) = reissue("import", Some(bad.clone())).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {v}"
        );
    }
    // 500 characters of two bytes each: characters are counted, not bytes.
    let long = "é".repeat(500);
    let (status, v) = reissue("import", Some(json!({"reason": long}))).await;
    assert_eq!(status, 200, "{v}");

    let listed = list_tokens(&server).await;
    assert_eq!(listed.len(), 4);
    assert!(!serde_json::to_string(&listed).unwrap().contains(&new_token));
    assert!(!serde_json::to_string(&listed).unwrap().contains(&svc.export_token));
    let summary = |listed: &[Value]| -> Vec<(String, String, Value)> {
        listed
            .iter()
            .map(|t| {
                (
                    t["kind"].as_str().unwrap().to_owned(),
                    t["state"].as_str().unwrap().to_owned(),
                    t["reason"].clone(),
                )
            })
            .collect()
    };
    let mut newest_two = summary(&listed[..2]);
    newest_two.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        newest_two,
        [
            ("export".into(), "active".into(), json!("leaked in a CI log")),
            ("import".into(), "active".into(), json!(long)),
        ]
    );
    let oldest_two = summary(&listed[2..]);
    assert!(
        oldest_two
            .iter()
            .all(|(_, state, reason)| state == "grace" && reason.is_null()),
        "{oldest_two:?}"
    );
    assert!(listed[2..].iter().all(|t| t["valid_until"] == "2026-12-09T04:00:00Z"));

    // After the grace period, and after a revoke; all of it read back after a restart.
    server.clock.advance(chrono::Duration::days(14));
    let (status, _) = server
        .admin(Method::DELETE, "/admin/v1/services/shop/tokens/import", None)
        .await;
    assert_eq!(status, 200);
    let server = server.restart().await;
    let listed = list_tokens(&server).await;
    let states: Vec<(String, String)> = summary(&listed).into_iter().map(|(k, s, _)| (k, s)).collect();
    let count = |kind: &str, state: &str| states.iter().filter(|(k, s)| k == kind && s == state).count();
    assert_eq!(
        (
            count("export", "active"),
            count("export", "expired"),
            count("import", "revoked")
        ),
        (1, 1, 2),
        "{states:?}"
    );
    let export = listed.iter().find(|t| t["state"] == "active").unwrap();
    assert_eq!(export["reason"], "leaked in a CI log");
    let (status, _) = server
        .admin(Method::GET, "/admin/v1/services/nosuch/tokens", None)
        .await;
    assert_eq!(status, 404);
}

/// Imports and exports at three moments of a Seoul service: 03:00Z and
/// 04:10Z on the 25th (the 25th in Seoul), 15:30Z (00:30 on the 26th in
/// Seoul). Returns the service.
async fn log_a_day_of_requests(server: &TestServer) -> Svc {
    let svc = server
        .service(json!({"service_id": "shop", "timezone": "Asia/Seoul", "auto_register": true}))
        .await;
    let events = |ids: std::ops::Range<u128>| {
        let list = ids
            .map(|n| event(n, "purchase", "2026-11-25T01:00:00Z", json!({})))
            .collect();
        events_body("u1", list)
    };
    let day = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    assert_eq!(server.import(&svc, events(0..2)).await["code"], "20000");
    server.import_raw("shop", Some("wrong"), events(0..1).to_string()).await;
    server.export(&svc, day.clone()).await.text().await.unwrap();
    server.clock.advance(chrono::Duration::minutes(70));
    assert_eq!(server.import(&svc, events(2..5)).await["code"], "20000");
    let refused = server.export(&svc, json!({"events_condition_type": "some"})).await;
    assert_eq!(refused.status(), 400);
    server.clock.advance(chrono::Duration::minutes(680));
    assert_eq!(server.import(&svc, events(5..6)).await["code"], "20000");
    server.export(&svc, day).await.text().await.unwrap();
    svc
}

/// `?outcome=` keeps only the entries with that exact message, filtered
/// in the store before the limit.
async fn the_request_log_filters_by_outcome_before_the_limit() {
    let server = TestServer::start().await;
    log_a_day_of_requests(&server).await;
    let log = |query: &'static str| {
        let server = &server;
        async move {
            let (status, v) = server
                .admin(Method::GET, &format!("/admin/v1/services/shop/requests{query}"), None)
                .await;
            assert_eq!(status, 200, "{query}: {v}");
            v["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["endpoint"].as_str().unwrap().to_owned(),
                        e["message"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let (imports, exports) = ("/api/v1/events".to_owned(), "/api/v1/export/event".to_owned());
    let ok = |e: &String| (e.clone(), "ok".to_owned());
    assert_eq!(
        log("?outcome=ok").await,
        [ok(&exports), ok(&imports), ok(&imports), ok(&exports), ok(&imports)]
    );
    assert_eq!(log("?outcome=ok&limit=2").await, [ok(&exports), ok(&imports)]);
    // The oldest refusal, though the newest entries are all something else.
    assert_eq!(
        log("?outcome=40201&limit=1").await,
        [(imports.clone(), "40201".to_owned())]
    );
    assert_eq!(
        log("?outcome=invalid_parameter").await,
        [(exports.clone(), "invalid_parameter".to_owned())]
    );
    assert_eq!(log("?outcome=OK").await, [], "exact, case and all");
    assert_eq!(log("?outcome=nosuch").await, []);
    assert_eq!(log("").await.len(), 7);
}

/// `GET …/stats`: every hour (UTC) and every day (the service's timezone)
/// of the range, oldest first, zeros included; requests of both APIs and
/// rows of complete exports per hour, events stored per day.
async fn stats_sum_the_request_log_per_hour_and_per_service_day() {
    let server = TestServer::start().await;
    log_a_day_of_requests(&server).await;
    let (status, v) = server
        .admin(Method::GET, "/admin/v1/services/shop/stats?hours=16&days=3", None)
        .await;
    assert_eq!(status, 200, "{v}");
    let hourly = v["hourly"].as_array().unwrap();
    assert_eq!(hourly.len(), 16);
    assert_eq!(hourly[0]["hour"], "2026-11-25T00:00:00Z");
    assert_eq!(hourly[15]["hour"], "2026-11-25T15:00:00Z", "the current hour last");
    for (i, h) in hourly.iter().enumerate() {
        let want = match i {
            3 => json!({"hour": "2026-11-25T03:00:00Z", "requests": 3, "export_rows": 2}),
            4 => json!({"hour": "2026-11-25T04:00:00Z", "requests": 2, "export_rows": 0}),
            15 => json!({"hour": "2026-11-25T15:00:00Z", "requests": 2, "export_rows": 6}),
            _ => json!({"hour": format!("2026-11-25T{i:02}:00:00Z"), "requests": 0, "export_rows": 0}),
        };
        assert_eq!(h, &want, "hour {i}");
    }
    assert_eq!(
        v["daily"],
        json!([
            {"day": "2026-11-24", "events": 0},
            {"day": "2026-11-25", "events": 5},
            {"day": "2026-11-26", "events": 1},
        ])
    );
    let (_, v) = server.admin(Method::GET, "/admin/v1/services/shop/stats", None).await;
    assert_eq!(
        (
            v["hourly"].as_array().unwrap().len(),
            v["daily"].as_array().unwrap().len()
        ),
        (48, 30),
        "the defaults"
    );
    let events: u64 = v["daily"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["events"].as_u64().unwrap())
        .sum();
    assert_eq!(events, 6);
    for bad in ["hours=0", "hours=721", "days=0", "days=367", "weeks=1", "hours=x"] {
        let (status, v) = server
            .admin(Method::GET, &format!("/admin/v1/services/shop/stats?{bad}"), None)
            .await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {v}"
        );
    }
    for good in ["hours=720&days=366", "hours=1&days=1"] {
        let (status, v) = server
            .admin(Method::GET, &format!("/admin/v1/services/shop/stats?{good}"), None)
            .await;
        assert_eq!(status, 200, "{good}: {v}");
    }
    let (status, _) = server.admin(Method::GET, "/admin/v1/services/nosuch/stats", None).await;
    assert_eq!(status, 404);
}

backend_suite!(
    the_request_log_filters_by_outcome_before_the_limit,
    stats_sum_the_request_log_per_hour_and_per_service_day,
    timezones_lists_every_accepted_name_sorted,
    tokens_are_listed_with_state_and_reissue_reason,
    requires_the_admin_token,
    every_admin_error_is_json_with_error_and_detail,
    services_are_created_listed_read_and_changed,
    taxonomy_starts_standard_adds_idempotently_and_refuses_type_changes,
    the_standard_taxonomy_lists_df_items_and_posts_back_as_a_no_op,
    names_that_would_duplicate_an_export_column_are_refused,
    the_request_log_records_every_api_request_without_tokens,
);
