//! The admin API end to end: authentication, services, settings, taxonomy,
//! tokens and the request log.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    let service = fineport_store::Service {
        service_id: "shop".into(),
        name: "Shop".into(),
        timezone: "Asia/Seoul".into(),
        export_lookback_days: 30,
        auto_register: false,
        limits: Default::default(),
        created_at: default_now(),
    };
    let (_, export_token) = state.catalog.create_service(service).await.unwrap();
    let doc = serde_json::from_value(json!({"event_properties": [{"name": "stars", "type": "Long"}]})).unwrap();
    state.catalog.register("shop", &doc).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
