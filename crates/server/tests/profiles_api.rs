//! Users end to end: identities, deletes, user profiles, identity
//! resolution, the user-profile export and audiences.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const T0: &str = "2026-11-25T00:00:00Z";

async fn post(server: &TestServer, svc: &Svc, path: &str, body: Value) -> (reqwest::header::HeaderMap, Value) {
    let resp = server.import_endpoint(svc, path, &body).await;
    let headers = resp.headers().clone();
    (headers, resp.json().await.unwrap())
}

async fn identities(server: &TestServer, svc: &Svc, identity: Value) -> Value {
    post(
        server,
        svc,
        "/api/v1/identities",
        json!({"identity": identity, "request_datetime": T0}),
    )
    .await
    .1
}

async fn profile(server: &TestServer, svc: &Svc, identity: Value, properties: Value, at: &str) -> Value {
    let body = json!({"identity": identity, "user_properties": properties, "request_datetime": at});
    post(server, svc, "/api/v1/user-profile", body).await.1
}

async fn profile_export(server: &TestServer, svc: &Svc, body: Value) -> (Vec<String>, Vec<Vec<String>>) {
    let resp = server
        .export_raw(
            &format!("/api/v1/export/userprofile?service_id={}", svc.id),
            Some(&svc.export_token),
            body.to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("shop_userprofile_"));
    parse_csv(&resp.text().await.unwrap())
}

fn everything() -> Value {
    json!({"properties_condition_type": "all", "identities_condition_type": "all"})
}

/// external_id → df_unified_id, from a profile export.
async fn unified_ids(server: &TestServer, svc: &Svc) -> std::collections::BTreeMap<String, String> {
    let (header, rows) = profile_export(server, svc, everything()).await;
    rows.iter()
        .map(|r| {
            (
                cell(&header, r, "df_external_id").to_owned(),
                cell(&header, r, "df_unified_id").to_owned(),
            )
        })
        .collect()
}

fn ok() -> Value {
    json!({"status": true, "code": "20000", "message": "OK", "data": true})
}

async fn every_result_code_of_the_user_endpoints() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "shop", "limits": {"identities_per_minute": 3, "profiles_per_minute": 2}}))
        .await;
    assert_eq!(identities(&server, &svc, json!({"external_id": "u1"})).await, ok());

    let raw = |path: &str, token: Option<&str>, body: &str| {
        let mut req = server
            .http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.header("access_token", t);
        }
        req.send()
    };
    for path in [
        "/api/v1/identities",
        "/api/v1/identities/delete",
        "/api/v1/user-profile",
    ] {
        let url = format!("{path}?service_id=shop");
        let code = |v: &Value| v["code"].as_str().unwrap().to_owned();
        let v: Value = raw(&url, Some(&svc.import_token), "{bad")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(code(&v), "40000", "{path}");
        let v: Value = raw(&format!("{path}?service_id=nosuch"), Some(&svc.import_token), "{}")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(code(&v), "40101", "{path}");
        let v: Value = raw(&url, Some(&svc.export_token), "{}")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(code(&v), "40201", "{path}");
        let missing_time = json!({"identity": {"external_id": "u1"}, "user_properties": {}}).to_string();
        let v: Value = raw(&url, Some(&svc.import_token), &missing_time)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (code(&v), v["message"].as_str()),
            ("40001".into(), Some("VALIDATION_FAILURE")),
            "{path}: {v}"
        );
    }
    let no_external = json!({"identity": {"email": "a@b.c"}, "request_datetime": T0});
    assert_eq!(
        post(&server, &svc, "/api/v1/identities/delete", no_external).await.1["code"],
        "40001"
    );
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"identity": {"external_id": format!("u{i}")}, "user_properties": {}, "request_datetime": T0}))
        .collect();
    let (_, v) = post(&server, &svc, "/api/v1/user-profile", Value::Array(many)).await;
    assert_eq!(
        (v["code"].as_str(), v["message"].as_str()),
        (Some("40403"), Some("TOO_MANY_USER_PROFILES"))
    );

    // identities: 3 requests a minute (the delete shares the counter).
    assert_eq!(identities(&server, &svc, json!({"external_id": "u2"})).await, ok());
    let (headers, v) = post(
        &server,
        &svc,
        "/api/v1/identities/delete",
        json!({"identity": {"external_id": "u2"}, "request_datetime": T0}),
    )
    .await;
    assert_eq!(v, ok());
    assert_eq!(headers["x-rate-limit-limit"], "1m");
    assert_eq!(headers["x-rate-limit-remaining"], "0");
    let (headers, v) = post(
        &server,
        &svc,
        "/api/v1/identities",
        json!({"identity": {"external_id": "u3"}, "request_datetime": T0}),
    )
    .await;
    assert_eq!(v["code"], "40401");
    assert_eq!(headers["retry-after"], "60");
    // profiles: 2 requests a minute, counted apart from identities.
    assert_eq!(
        profile(&server, &svc, json!({"external_id": "u1"}), json!({"df_name": "a"}), T0).await,
        ok()
    );
    assert_eq!(
        profile(&server, &svc, json!({"external_id": "u1"}), json!({"df_name": "b"}), T0).await,
        ok()
    );
    assert_eq!(
        profile(&server, &svc, json!({"external_id": "u1"}), json!({"df_name": "c"}), T0).await["code"],
        "40401"
    );
}

/// The profile export (`df_unified_id`, `df_external_id`, `df_name`) of
/// any service, rows in export order.
async fn profile_rows(server: &TestServer, svc: &Svc) -> Vec<(String, String, String)> {
    let body = json!({"properties_condition_type": "include", "properties": ["df_name"],
                      "identities_condition_type": "all"});
    let resp = server
        .export_raw(
            &format!("/api/v1/export/userprofile?service_id={}", svc.id),
            Some(&svc.export_token),
            body.to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (header, rows) = parse_csv(&resp.text().await.unwrap());
    rows.iter()
        .map(|r| {
            let c = |name| cell(&header, r, name).to_owned();
            (c("df_unified_id"), c("df_external_id"), c("df_name"))
        })
        .collect()
}

/// fineport's decision "D": `/user-profile` and `/identities` may name the
/// profile by `df_unified_id`, alone or with an external_id only. The
/// profile export gives the same ids back; a contradiction is 40001 and
/// the request (all of its profiles) stores nothing; `/identities/delete`
/// refuses it; the same id in two services is two profiles.
async fn profiles_named_by_df_unified_id_round_trip() {
    const U: &str = "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f";
    const V: &str = "7d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";
    const W: &str = "11111111-2222-4333-8444-555555555555";
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let code = |v: &Value| v["code"].as_str().unwrap_or_default().to_owned();
    let reason = |v: &Value| v["data"][0]["reason"].as_str().unwrap_or_default().to_owned();

    let answer = profile(
        &server,
        &svc,
        json!({"df_unified_id": U, "external_id": "x"}),
        json!({"df_name": "Kim"}),
        T0,
    )
    .await;
    assert_eq!(answer, ok());
    // Braced upper case names the same profile; V alone is a new anonymous one.
    let braced = format!("{{{}}}", V.to_uppercase());
    assert_eq!(identities(&server, &svc, json!({"df_unified_id": braced})).await, ok());
    let expected = vec![
        (U.to_owned(), "x".to_owned(), "Kim".to_owned()),
        (V.to_owned(), String::new(), String::new()),
    ];
    assert_eq!(profile_rows(&server, &svc).await, expected);

    // Conflicts: V with U's external_id, U with another external_id, and a
    // list whose second profile conflicts (the first, new W, is not stored).
    let conflicts = [
        json!({"identity": {"df_unified_id": V, "external_id": "x"}, "user_properties": {"df_name": "Lee"}, "request_datetime": T0}),
        json!({"identity": {"df_unified_id": U, "external_id": "y"}, "user_properties": {"df_name": "Lee"}, "request_datetime": T0}),
        json!([
            {"identity": {"df_unified_id": W, "external_id": "z"}, "user_properties": {"df_name": "Park"}, "request_datetime": T0},
            {"identity": {"df_unified_id": W, "external_id": "x"}, "user_properties": {"df_name": "Park"}, "request_datetime": T0},
        ]),
    ];
    for body in conflicts {
        let answer = post(&server, &svc, "/api/v1/user-profile", body.clone()).await.1;
        assert_eq!(code(&answer), "40001", "{body}: {answer}");
        assert!(reason(&answer).contains("external_id"), "{answer}");
    }
    let answer = identities(&server, &svc, json!({"df_unified_id": U, "external_id": "y"})).await;
    assert_eq!(code(&answer), "40001", "{answer}");
    // Invalid: not a UUID, combined with another identifier, and on delete.
    for identity in [
        json!({"df_unified_id": "0b4e6f0c-1f3a"}),
        json!({"df_unified_id": U, "phone_no": "010"}),
    ] {
        let answer = identities(&server, &svc, identity.clone()).await;
        assert_eq!(code(&answer), "40001", "{identity}: {answer}");
        assert!(reason(&answer).contains("df_unified_id"), "{answer}");
        let answer = profile(&server, &svc, identity.clone(), json!({"df_name": "Choi"}), T0).await;
        assert_eq!(code(&answer), "40001", "{identity}: {answer}");
    }
    let delete = json!({"identity": {"external_id": "x", "df_unified_id": U}, "request_datetime": T0});
    let answer = post(&server, &svc, "/api/v1/identities/delete", delete).await.1;
    assert_eq!(code(&answer), "40001", "{answer}");
    assert_eq!(profile_rows(&server, &svc).await, expected, "nothing was stored");

    // An anonymous V takes a free external_id; its events follow it.
    let answer = profile(
        &server,
        &svc,
        json!({"df_unified_id": V, "external_id": "y"}),
        json!({"df_name": "Lee"}),
        T0,
    )
    .await;
    assert_eq!(answer, ok());
    assert_eq!(
        server
            .import(
                &svc,
                events_body("y", vec![event(1, "df_login", "2026-11-25T01:00:00Z", json!({}))])
            )
            .await,
        ok()
    );
    let resp = server
        .export(
            &svc,
            json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"}),
        )
        .await;
    let (header, rows) = parse_csv(&resp.text().await.unwrap());
    assert_eq!(cell(&header, &rows[0], "df_unified_id"), V);

    // Another service: U there is another profile, free to hold "y".
    let mall = server.service(json!({"service_id": "mall"})).await;
    let answer = profile(
        &server,
        &mall,
        json!({"df_unified_id": U, "external_id": "y"}),
        json!({"df_name": "Other"}),
        T0,
    )
    .await;
    assert_eq!(answer, ok());
    assert_eq!(
        profile_rows(&server, &mall).await,
        vec![(U.to_owned(), "y".to_owned(), "Other".to_owned())]
    );
    assert_eq!(
        profile_rows(&server, &svc).await,
        vec![
            (U.to_owned(), "x".to_owned(), "Kim".to_owned()),
            (V.to_owned(), "y".to_owned(), "Lee".to_owned()),
        ]
    );
}

async fn identities_merge_move_and_delete() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    // An anonymous visitor, known by email, then identified: one profile.
    let anon = json!({"common": {"identity": {"email": "kim@example.com"}}, "events": [event(1, "df_login", "2026-11-25T01:00:00Z", json!({}))]});
    assert_eq!(server.import(&svc, anon).await, ok());
    assert_eq!(
        identities(&server, &svc, json!({"external_id": "kim", "email": "kim@example.com"})).await,
        ok()
    );
    let ids = unified_ids(&server, &svc).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let kim = ids["kim"].clone();

    // The email moves to another external_id: events by email now go there.
    assert_eq!(
        identities(&server, &svc, json!({"external_id": "lee", "email": "kim@example.com"})).await,
        ok()
    );
    let moved = json!({"common": {"identity": {"email": "kim@example.com"}}, "events": [event(2, "df_login", "2026-11-25T01:00:01Z", json!({}))]});
    assert_eq!(server.import(&svc, moved).await, ok());
    let ids = unified_ids(&server, &svc).await;
    let lee = ids["lee"].clone();
    assert_ne!(kim, lee);

    // Deleted, then re-created: a new profile; past events keep the old id.
    let del = json!({"identity": {"external_id": "kim"}, "request_datetime": T0});
    assert_eq!(post(&server, &svc, "/api/v1/identities/delete", del).await.1, ok());
    assert!(!unified_ids(&server, &svc).await.contains_key("kim"));
    assert_eq!(
        server
            .import(
                &svc,
                events_body("kim", vec![event(3, "df_login", "2026-11-25T01:00:02Z", json!({}))])
            )
            .await,
        ok()
    );
    let new_kim = unified_ids(&server, &svc).await["kim"].clone();
    assert_ne!(new_kim, kim);

    let body = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let (header, rows) = parse_csv(&server.export(&svc, body).await.text().await.unwrap());
    let uids: Vec<&str> = rows.iter().map(|r| cell(&header, r, "df_unified_id")).collect();
    assert_eq!(uids, vec![kim.as_str(), lee.as_str(), new_kim.as_str()]);
}

async fn an_older_profile_update_does_not_overwrite_a_newer_one() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let who = json!({"external_id": "u1"});
    assert_eq!(
        profile(
            &server,
            &svc,
            who.clone(),
            json!({"df_membership": "gold", "df_name": "김"}),
            "2026-11-25T10:00:00Z"
        )
        .await,
        ok()
    );
    assert_eq!(
        profile(
            &server,
            &svc,
            who.clone(),
            json!({"df_membership": "silver"}),
            "2026-11-25T09:00:00Z"
        )
        .await,
        ok()
    );
    let (h, rows) = profile_export(&server, &svc, everything()).await;
    assert_eq!(cell(&h, &rows[0], "df_membership"), "gold");
    assert_eq!(
        profile(
            &server,
            &svc,
            who.clone(),
            json!({"df_membership": "bronze"}),
            "2026-11-25T11:00:00Z"
        )
        .await,
        ok()
    );
    let (h, rows) = profile_export(&server, &svc, everything()).await;
    assert_eq!(cell(&h, &rows[0], "df_membership"), "bronze");
    assert_eq!(cell(&h, &rows[0], "df_name"), "김");
}

async fn profile_export_columns_and_cells() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    server
        .taxonomy(
            &svc,
            json!({"user_properties": [{"name": "score", "type": "Double"}, {"name": "tags", "type": "Array of String"},
                                                  {"name": "joined", "type": "Date"}]}),
        )
        .await;
    let props = json!({"df_name": "홍길동, \"길동\"", "df_push_optin": true, "score": 3, "tags": ["a", "b"], "joined": "2026-01-31"});
    assert_eq!(
        profile(&server, &svc, json!({"external_id": "u1"}), props, T0).await,
        ok()
    );
    assert_eq!(
        profile(
            &server,
            &svc,
            json!({"email": "anon@example.com"}),
            json!({"df_gender": "Female"}),
            T0
        )
        .await,
        ok()
    );

    let (header, rows) = profile_export(&server, &svc, everything()).await;
    let mut sorted = header.clone();
    sorted.sort();
    assert_eq!(header, sorted);
    assert_eq!(header.len(), 2 + 9 + 3);
    assert_eq!(rows.len(), 2);
    let uids: Vec<&str> = rows.iter().map(|r| cell(&header, r, "df_unified_id")).collect();
    let mut ordered = uids.clone();
    ordered.sort();
    assert_eq!(uids, ordered, "ordered by df_unified_id");
    let u1 = rows
        .iter()
        .find(|r| cell(&header, r, "df_external_id") == "u1")
        .unwrap();
    assert_eq!(cell(&header, u1, "df_name"), "홍길동, \"길동\"");
    assert_eq!(cell(&header, u1, "df_push_optin"), "true");
    assert_eq!(cell(&header, u1, "score"), "3.0");
    assert_eq!(cell(&header, u1, "tags"), r#"["a","b"]"#);
    assert_eq!(cell(&header, u1, "joined"), "2026-01-31");
    assert_eq!(cell(&header, u1, "df_gender"), "");
    let anon = rows
        .iter()
        .find(|r| cell(&header, r, "df_external_id").is_empty())
        .unwrap();
    assert_eq!(cell(&header, anon, "df_gender"), "Female");

    let body = json!({"properties_condition_type": "include", "properties": ["score", "df_name"]});
    let (header, _) = profile_export(&server, &svc, body).await;
    assert_eq!(
        header,
        vec!["df_name", "df_unified_id", "score"],
        "no identities unless asked"
    );
    let body = json!({"properties_condition_type": "exclude", "properties": ["score"],
                      "identities_condition_type": "include", "identities": ["df_external_id"]});
    let (header, _) = profile_export(&server, &svc, body).await;
    assert!(header.contains(&"df_external_id".to_string()) && !header.contains(&"score".to_string()));

    for bad in [
        json!({"properties_condition_type": "include", "properties": ["nope"]}),
        json!({"properties_condition_type": "all", "identities_condition_type": "include", "identities": ["email"]}),
        json!({"properties_condition_type": "all", "audience": "zzzzzz"}),
        json!({}),
    ] {
        let resp = server
            .export_raw(
                "/api/v1/export/userprofile?service_id=shop",
                Some(&svc.export_token),
                bad.to_string(),
            )
            .await;
        assert_eq!(resp.status(), 400, "{bad}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["message"], "invalid_parameter");
    }
}

async fn audiences_select_the_users_their_rules_describe() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "shop", "timezone": "Asia/Seoul"}))
        .await;
    // u1: 2 purchases, gold. u2: 2 purchases, silver. u3: 1 purchase, gold. u4: 3 purchases, one outside the range, gold.
    let purchases = [("u1", 2, "gold"), ("u2", 2, "silver"), ("u3", 1, "gold")];
    let mut n = 0;
    for (user, count, membership) in purchases {
        let events = (0..count)
            .map(|_| {
                n += 1;
                event(n, "df_purchase", "2026-11-20T03:00:00Z", json!({}))
            })
            .collect();
        assert_eq!(server.import(&svc, events_body(user, events)).await, ok());
        assert_eq!(
            profile(
                &server,
                &svc,
                json!({"external_id": user}),
                json!({"df_membership": membership}),
                T0
            )
            .await,
            ok()
        );
    }
    // u4's second purchase is on 11-10 in Seoul (11-09T16:00Z), before the rule's range.
    let u4 = vec![
        event(100, "df_purchase", "2026-11-20T03:00:00Z", json!({})),
        event(101, "df_purchase", "2026-11-09T16:00:00Z", json!({})),
    ];
    assert_eq!(server.import(&svc, events_body("u4", u4)).await, ok());
    assert_eq!(
        profile(
            &server,
            &svc,
            json!({"external_id": "u4"}),
            json!({"df_membership": "gold"}),
            T0
        )
        .await,
        ok()
    );

    let rule = json!({"name": "gold buyers", "rule": {"all": [
        {"event": "df_purchase", "min_count": 2, "from_date": "2026-11-11", "to_date": "2026-11-25"},
        {"property": "df_membership", "equals": "gold"}]}});
    let (status, created) = server
        .admin(Method::POST, "/admin/v1/services/shop/audiences", Some(rule))
        .await;
    assert_eq!(status, 201, "{created}");
    let rule_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(rule_id.len(), 6);
    let (status, created) = server
        .admin(
            Method::POST,
            "/admin/v1/services/shop/audiences",
            Some(json!({"id": "vips01", "name": "vips", "external_ids": ["u2", "u3", "nobody"]})),
        )
        .await;
    assert_eq!((status, created["id"].as_str()), (201, Some("vips01")));
    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/v1/services/shop/audiences",
            Some(json!({"id": "vips01", "name": "again", "external_ids": []})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = server
        .admin(Method::POST, "/admin/v1/services/shop/audiences", Some(json!({"name": "bad", "rule": {"all": [{"event": "nope", "min_count": 1, "from_date": "2026-11-01", "to_date": "2026-11-02"}]}})))
        .await;
    assert_eq!(status, 400);

    let members = |audience: &str| {
        let body = json!({"properties_condition_type": "include", "properties": ["df_membership"],
                          "identities_condition_type": "all", "audience": audience});
        let server = &server;
        let svc = &svc;
        async move {
            let (header, rows) = profile_export(server, svc, body).await;
            let mut ids: Vec<String> = rows
                .iter()
                .map(|r| cell(&header, r, "df_external_id").to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(members(&rule_id).await, vec!["u1"]);
    assert_eq!(members("vips01").await, vec!["u2", "u3"]);

    let (_, list) = server
        .admin(Method::GET, "/admin/v1/services/shop/audiences", None)
        .await;
    assert_eq!(list["audiences"].as_array().unwrap().len(), 2);
    let sizes: std::collections::BTreeMap<&str, u64> = list["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes, [(rule_id.as_str(), 1), ("vips01", 2)].into(), "{list}");
    // The size is the audience now: u3 becomes a profile of two purchases in range.
    let more = vec![event(200, "df_purchase", "2026-11-21T03:00:00Z", json!({}))];
    assert_eq!(server.import(&svc, events_body("u3", more)).await, ok());
    let (_, list) = server
        .admin(Method::GET, "/admin/v1/services/shop/audiences", None)
        .await;
    let rule_size = list["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == rule_id.as_str())
        .unwrap()["size"]
        .clone();
    assert_eq!(rule_size, 2, "{list}");
    let (status, _) = server
        .admin(Method::DELETE, "/admin/v1/services/shop/audiences/vips01", None)
        .await;
    assert_eq!(status, 200);
    let resp = server
        .export_raw(
            "/api/v1/export/userprofile?service_id=shop",
            Some(&svc.export_token),
            json!({"properties_condition_type": "all", "audience": "vips01"}).to_string(),
        )
        .await;
    assert_eq!(resp.status(), 400, "a deleted audience is unknown");
}

async fn both_exports_share_the_hourly_quota() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "shop", "limits": {"export_per_hour": 2}}))
        .await;
    let events = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    assert_eq!(server.export(&svc, events.clone()).await.status(), 200);
    let resp = server
        .export_raw(
            "/api/v1/export/userprofile?service_id=shop",
            Some(&svc.export_token),
            everything().to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-rate-limit-remaining"], "0");
    assert_eq!(
        resp.text().await.unwrap(),
        "df_external_id,df_unified_id\n".replace("df_external_id,df_unified_id", &{
            let mut h: Vec<String> = vec!["df_external_id".into(), "df_unified_id".into()];
            h.extend(
                fineport_contract::taxonomy::STANDARD_USER_PROPERTIES
                    .iter()
                    .map(|(n, _)| n.to_string()),
            );
            h.sort();
            h.join(",")
        })
    );
    let refused = server
        .export_raw(
            "/api/v1/export/userprofile?service_id=shop",
            Some(&svc.export_token),
            everything().to_string(),
        )
        .await;
    assert_eq!(refused.status(), 429);
    assert_eq!(server.export(&svc, events).await.status(), 429);
    let wrong = server
        .export_raw(
            "/api/v1/export/userprofile?service_id=shop",
            Some(&svc.import_token),
            everything().to_string(),
        )
        .await;
    assert_eq!(wrong.status(), 401);
}

backend_suite!(
    every_result_code_of_the_user_endpoints,
    identities_merge_move_and_delete,
    an_older_profile_update_does_not_overwrite_a_newer_one,
    profile_export_columns_and_cells,
    audiences_select_the_users_their_rules_describe,
    both_exports_share_the_hourly_quota,
    profiles_named_by_df_unified_id_round_trip,
);
