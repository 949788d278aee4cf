//! Several fineport replicas on one cluster store behave as one (issue 12):
//! a catalog change made through one replica — a token revoked or
//! reissued, a service created or changed, a name registered, an audience
//! created or deleted — holds on the other within one second; the periodic
//! refresh brings what no announcement told; a watch whose connection was
//! killed recovers; and two replicas hit at the same moment for the same
//! new user make one profile, where the newest property value wins, and
//! pass a catalog check (a reissue's cool-down, a name's type, an audience
//! id) once.
//!
//! Every test runs two real servers ([`TestServer::replica`]) on the same
//! fresh ClickHouse and PostgreSQL databases, found through
//! `FINEPORT_TEST_CLICKHOUSE_URL` and `FINEPORT_TEST_POSTGRES_URL`: unset,
//! the tests say they were skipped; unset under `CI=true`, they fail.
//!
//! The one timed assertion is the contract itself: a change is seen on the
//! other replica within [`PROPAGATION`], measured on the real clock from the
//! moment the replica that made it answered. Those tests set the periodic
//! refresh to an hour, so that only the store's announcements can bring a
//! change that fast.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fineport_server::Config;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Barrier;

/// How soon a change made through one replica must hold on every other.
const PROPAGATION: Duration = Duration::from_secs(1);

/// How often a test asks the other replica whether the change arrived.
const POLL: Duration = Duration::from_millis(20);

/// A day of the servers' (manual) clock, for event and export dates.
const TODAY: &str = "2026-11-25";

/// A server and a replica of it on the same fresh cluster databases, both
/// with `config`; `None` (after saying so) without the cluster. The
/// replica is second: dropped first, before its owner drops the databases.
async fn two_replicas(test: &str, config: Config) -> Option<(TestServer, TestServer)> {
    let backend = Backend::cluster(test)?;
    let a = backend.run(TestServer::start_with(config, default_now())).await;
    let b = a.replica().await;
    Some((a, b))
}

/// Replicas that learn of changes only through the store's announcements:
/// the periodic refresh is an hour away.
async fn announced_only(test: &str) -> Option<(TestServer, TestServer)> {
    let config = Config {
        catalog_refresh_every: Duration::from_secs(3600),
        ..Config::default()
    };
    two_replicas(test, config).await
}

/// Polls `probe` every [`POLL`] from now until it holds, and asserts that
/// it held within [`PROPAGATION`] (measured when the successful probe
/// returned). Gives up after three times that.
async fn within_a_second<F, Fut>(what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            let took = start.elapsed();
            eprintln!("{what}: seen on the other replica after {took:?}");
            assert!(took <= PROPAGATION, "{what}: took {took:?}, more than {PROPAGATION:?}");
            return took;
        }
        assert!(
            start.elapsed() < PROPAGATION * 3,
            "{what}: still not seen on the other replica after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` until it holds (at most `patience`), for what a test
/// waits on without a contract on how soon.
async fn eventually<F, Fut>(what: &str, patience: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < patience, "{what}: not after {patience:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `server` knows the service `svc` (its admin API reads the
/// catalog in memory).
async fn knows(server: &TestServer, svc: &Svc) -> bool {
    let (status, _) = server
        .admin(Method::GET, &format!("/admin/v1/services/{}", svc.id), None)
        .await;
    status == 200
}

/// The HTTP status of an event export with `token` and an empty body:
/// 401 for a token the server refuses, 400 (`invalid_parameter`: no
/// required field) for one it takes. Uses no quota and runs no query.
async fn export_token_status(server: &TestServer, svc: &Svc, token: &str) -> u16 {
    server
        .export_raw(
            &format!("/api/v1/export/event?service_id={}", svc.id),
            Some(token),
            "{}".into(),
        )
        .await
        .status()
        .as_u16()
}

/// The Import API code of an event import with `token` and a body that is
/// not a batch: 40201 for a token the server refuses, 40001 for one it
/// takes. Stores nothing.
async fn import_token_code(server: &TestServer, svc: &Svc, token: &str) -> String {
    let resp = server.import_raw(&svc.id, Some(token), "{}".into()).await;
    let answer: Value = resp.json().await.expect("an Import API answer");
    answer["code"].as_str().unwrap_or_default().to_owned()
}

fn export_body(from: &str) -> Value {
    json!({"events_condition_type": "all", "from_date": from, "to_date": TODAY})
}

async fn profile_export(server: &TestServer, svc: &Svc, body: &Value) -> reqwest::Response {
    server
        .export_raw(
            &format!("/api/v1/export/userprofile?service_id={}", svc.id),
            Some(&svc.export_token),
            body.to_string(),
        )
        .await
}

/// Creates `body`'s service on `a` and waits until `b` knows it.
async fn service_on_both(a: &TestServer, b: &TestServer, body: Value) -> Svc {
    let svc = a.service(body).await;
    eventually("the new service", Duration::from_secs(10), || knows(b, &svc)).await;
    svc
}

fn ok() -> Value {
    json!({"status": true, "code": "20000", "message": "OK", "data": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_replica_within_a_second() {
    let Some((a, b)) = announced_only("a_revoked_token_is_refused_by_every_replica_within_a_second").await else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    assert_eq!(export_token_status(&b, &svc, &svc.export_token).await, 400);
    assert_eq!(import_token_code(&b, &svc, &svc.import_token).await, "40001");

    let (status, v) = a
        .admin(Method::DELETE, "/admin/v1/services/shop/tokens/export", None)
        .await;
    assert_eq!((status, &v), (200, &json!({"revoked": 1})));
    within_a_second("a revoked export token", || async {
        export_token_status(&b, &svc, &svc.export_token).await == 401
    })
    .await;

    let (status, _) = a
        .admin(Method::DELETE, "/admin/v1/services/shop/tokens/import", None)
        .await;
    assert_eq!(status, 200);
    within_a_second("a revoked import token", || async {
        import_token_code(&b, &svc, &svc.import_token).await == "40201"
    })
    .await;
    // And on the replica that revoked them, at once.
    assert_eq!(export_token_status(&a, &svc, &svc.export_token).await, 401);
    assert_eq!(import_token_code(&a, &svc, &svc.import_token).await, "40201");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_token_works_on_every_replica_within_a_second() {
    let Some((a, b)) = announced_only("a_reissued_token_works_on_every_replica_within_a_second").await else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    let (status, v) = a
        .admin(Method::POST, "/admin/v1/services/shop/tokens/export/reissue", None)
        .await;
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().expect("the new token").to_owned();
    within_a_second("a reissued export token", || async {
        export_token_status(&b, &svc, &token).await == 400
    })
    .await;
    // The previous one keeps working for its grace period, there too.
    assert_eq!(export_token_status(&b, &svc, &svc.export_token).await, 400);
    // The cool-down holds on the other replica as well.
    let (status, v) = b
        .admin(Method::POST, "/admin/v1/services/shop/tokens/export/reissue", None)
        .await;
    assert_eq!(status, 409, "{v}");

    let (status, v) = b
        .admin(Method::POST, "/admin/v1/services/shop/tokens/import/reissue", None)
        .await;
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().expect("the new token").to_owned();
    within_a_second("a reissued import token", || async {
        import_token_code(&a, &svc, &token).await == "40001"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_created_on_one_replica_is_usable_on_the_other() {
    let Some((a, b)) = announced_only("a_service_created_on_one_replica_is_usable_on_the_other").await else {
        return;
    };
    let svc = a.service(json!({"service_id": "shop"})).await;
    let login = event(1, "df_login", "2026-11-25T01:00:00Z", json!({}));
    within_a_second("a new service", || async {
        let resp = b
            .import_raw(
                &svc.id,
                Some(&svc.import_token),
                events_body("kim", vec![login.clone()]).to_string(),
            )
            .await;
        resp.json::<Value>().await.expect("an Import API answer") == ok()
    })
    .await;
    let resp = b.export(&svc, export_body(TODAY)).await;
    assert_eq!(resp.status(), 200);
    let (_, rows) = parse_csv(&resp.text().await.expect("CSV"));
    assert_eq!(rows.len(), 1);
    // Its id is taken on every replica.
    let (status, _) = b
        .admin(Method::POST, "/admin/v1/services", Some(json!({"service_id": "shop"})))
        .await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_on_one_replica_hold_on_the_other() {
    let Some((a, b)) = announced_only("settings_changed_on_one_replica_hold_on_the_other").await else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    let (status, v) = a
        .admin(
            Method::PATCH,
            "/admin/v1/services/shop",
            Some(json!({"export_lookback_days": 1, "limits": {"export_per_hour": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    within_a_second("new settings and limits", || async {
        let (_, v) = b.admin(Method::GET, "/admin/v1/services/shop", None).await;
        v["export_lookback_days"] == 1 && v["limits"]["export_per_hour"] == 1
    })
    .await;
    // The other replica applies them: the look-back, then the hourly quota.
    let resp = b.export(&svc, export_body("2026-11-20")).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["message"],
        "exceed_date_range_limit"
    );
    let resp = b.export(&svc, export_body(TODAY)).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("CSV");
    let resp = b.export(&svc, export_body(TODAY)).await;
    assert_eq!(resp.status(), 429);

    // A change made through the other replica starts from the first one's:
    // its limits stay.
    let (status, v) = b
        .admin(Method::PATCH, "/admin/v1/services/shop", Some(json!({"name": "Shop"})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["name"].clone(), v["limits"]["export_per_hour"].clone()),
        (json!("Shop"), json!(1))
    );
    within_a_second("a renamed service", || async {
        let (_, v) = a.admin(Method::GET, "/admin/v1/services/shop", None).await;
        v["name"] == "Shop" && v["export_lookback_days"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_registered_on_one_replica_are_accepted_by_the_other() {
    let Some((a, b)) = announced_only("names_registered_on_one_replica_are_accepted_by_the_other").await else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    a.taxonomy(
        &svc,
        json!({"events": ["promo"], "event_properties": [{"name": "code", "type": "String"}]}),
    )
    .await;
    let (on_b, shop) = (&b, &svc);
    let mut n = 0;
    within_a_second("a registered event and property", move || {
        n += 1;
        let promo = event(n, "promo", "2026-11-25T01:00:00Z", json!({"code": "X1"}));
        async move { on_b.import(shop, events_body("kim", vec![promo])).await == ok() }
    })
    .await;

    // Auto-registration through one replica binds the other.
    let auto = service_on_both(&a, &b, json!({"service_id": "auto", "auto_register": true})).await;
    let launch = event(100, "launch", "2026-11-25T01:00:00Z", json!({"color": "red"}));
    assert_eq!(a.import(&auto, events_body("kim", vec![launch])).await, ok());
    within_a_second("an auto-registered property", || async {
        let (_, v) = b.admin(Method::GET, "/admin/v1/services/auto/taxonomy", None).await;
        v["event_properties"]
            .as_array()
            .is_some_and(|p| p.contains(&json!({"name": "color", "type": "String"})))
    })
    .await;
    let clash = event(101, "launch", "2026-11-25T01:00:00Z", json!({"color": 5}));
    let answer = b.import(&auto, events_body("kim", vec![clash])).await;
    assert_eq!(answer["code"], "40001", "{answer}");
    let body = json!({"events_condition_type": "all", "properties_condition_type": "include",
                      "properties": ["color"], "from_date": TODAY, "to_date": TODAY});
    let resp = b.export(&auto, body).await;
    assert_eq!(resp.status(), 200);
    let (header, rows) = parse_csv(&resp.text().await.expect("CSV"));
    assert_eq!(rows.len(), 1);
    assert_eq!(cell(&header, &rows[0], "color"), "red");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_created_and_deleted_on_one_replica_follow_on_the_other() {
    let Some((a, b)) = announced_only("audiences_created_and_deleted_on_one_replica_follow_on_the_other").await else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    for user in ["kim", "lee"] {
        let body = json!({"identity": {"external_id": user}, "request_datetime": "2026-11-25T00:00:00Z"});
        let answer: Value = a
            .import_endpoint(&svc, "/api/v1/identities", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(answer, ok());
    }
    let (status, v) = a
        .admin(
            Method::POST,
            "/admin/v1/services/shop/audiences",
            Some(json!({"id": "vips01", "name": "vips", "external_ids": ["lee"]})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let body = json!({"properties_condition_type": "all", "identities_condition_type": "all", "audience": "vips01"});
    within_a_second("a new audience", || async {
        profile_export(&b, &svc, &body).await.status() == 200
    })
    .await;
    let resp = profile_export(&b, &svc, &body).await;
    let (header, rows) = parse_csv(&resp.text().await.expect("CSV"));
    let members: Vec<&str> = rows.iter().map(|r| cell(&header, r, "df_external_id")).collect();
    assert_eq!(members, ["lee"]);

    let (status, _) = a
        .admin(Method::DELETE, "/admin/v1/services/shop/audiences/vips01", None)
        .await;
    assert_eq!(status, 200);
    within_a_second("a deleted audience", || async {
        profile_export(&b, &svc, &body).await.status() == 400
    })
    .await;
    let (_, v) = b.admin(Method::GET, "/admin/v1/services/shop/audiences", None).await;
    assert_eq!(v["audiences"], json!([]));
}

/// A connection to the replicas' PostgreSQL database, for SQL a test runs
/// itself.
async fn sql(server: &TestServer) -> tokio_postgres::Client {
    let url = &server.cluster_options().expect("a cluster server").postgres_url;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_refresh_alone_brings_an_unannounced_change() {
    let config = Config {
        catalog_refresh_every: Duration::from_millis(300),
        ..Config::default()
    };
    let Some((a, b)) = two_replicas("the_periodic_refresh_alone_brings_an_unannounced_change", config).await else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    // Written straight into the store, as an operator would with psql: no
    // replica announces it.
    let db = sql(&a).await;
    let n = db
        .execute(
            "UPDATE tokens SET revoked = true WHERE service_id = 'shop' AND kind = 'export'",
            &[],
        )
        .await
        .expect("revoke by SQL");
    assert_eq!(n, 1);
    for server in [&a, &b] {
        eventually("an unannounced revoke", Duration::from_secs(10), || async {
            export_token_status(server, &svc, &svc.export_token).await == 401
        })
        .await;
    }
    assert_eq!(import_token_code(&b, &svc, &svc.import_token).await, "40001");
}

/// The process ids of the sessions listening for catalog changes on the
/// test's database.
async fn listeners(db: &tokio_postgres::Client) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database() ORDER BY pid",
        &[],
    )
    .await
    .expect("pg_stat_activity")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_watch_connection_is_recovered() {
    let Some((a, b)) = announced_only("a_killed_watch_connection_is_recovered").await else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    let db = sql(&a).await;
    eventually("one watch per replica", Duration::from_secs(10), || async {
        listeners(&db).await.len() == 2
    })
    .await;
    let before = listeners(&db).await;
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
            &[],
        )
        .await
        .expect("terminate the watches");
    assert_eq!(killed.len(), 2);
    eventually("two new watches", Duration::from_secs(10), || async {
        let now = listeners(&db).await;
        now.len() == 2 && now.iter().all(|pid| !before.contains(pid))
    })
    .await;

    let (status, _) = a
        .admin(Method::DELETE, "/admin/v1/services/shop/tokens/export", None)
        .await;
    assert_eq!(status, 200);
    within_a_second("a revoke after the watch came back", || async {
        export_token_status(&b, &svc, &svc.export_token).await == 401
    })
    .await;
}

/// Sends `on_a` through `a` and `on_b` through `b` at the same moment
/// (both tasks released by one barrier), each a list of (path, body) sent
/// concurrently with the service's import token; returns every answer.
async fn at_once(
    a: &TestServer,
    b: &TestServer,
    svc: &Svc,
    on_a: Vec<(&str, Value)>,
    on_b: Vec<(&str, Value)>,
) -> Vec<Value> {
    let barrier = Arc::new(Barrier::new(2));
    let send = |server: &TestServer, requests: Vec<(&str, Value)>| {
        let (http, base, svc, barrier) = (server.http.clone(), server.base.clone(), svc.clone(), barrier.clone());
        let requests: Vec<(String, Value)> = requests.into_iter().map(|(p, v)| (p.to_owned(), v)).collect();
        tokio::spawn(async move {
            barrier.wait().await;
            let sent = requests.into_iter().map(|(path, body)| {
                let request = http
                    .post(format!("{base}{path}?service_id={}", svc.id))
                    .header("access_token", &svc.import_token)
                    .json(&body);
                async move {
                    let resp = request.send().await.expect("import request");
                    assert_eq!(resp.status(), 200);
                    resp.json::<Value>().await.expect("an Import API answer")
                }
            });
            futures::future::join_all(sent).await
        })
    };
    let (from_a, from_b) = tokio::join!(send(a, on_a), send(b, on_b));
    let mut answers = from_a.expect("replica A's requests");
    answers.extend(from_b.expect("replica B's requests"));
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_new_user_through_two_replicas_at_once_is_one_profile_where_the_newest_wins() {
    let Some((a, b)) = two_replicas(
        "the_same_new_user_through_two_replicas_at_once_is_one_profile_where_the_newest_wins",
        Config::default(),
    )
    .await
    else {
        return;
    };
    let svc = service_on_both(&a, &b, json!({"service_id": "shop"})).await;
    a.taxonomy(
        &svc,
        json!({"user_properties": [{"name": "v", "type": "String"}, {"name": "who", "type": "String"}]}),
    )
    .await;
    eventually("the user properties", Duration::from_secs(10), || async {
        let (_, v) = b.admin(Method::GET, "/admin/v1/services/shop/taxonomy", None).await;
        v["user_properties"]
            .as_array()
            .is_some_and(|p| p.len() > 2 && p.contains(&json!({"name": "who", "type": "String"})))
    })
    .await;
    const ROUNDS: u128 = 20;
    const OLDER: &str = "2026-11-25T01:00:00Z";
    const NEWER: &str = "2026-11-25T02:00:00Z";
    for round in 0..ROUNDS {
        // A person known by an external_id, and an anonymous one known by
        // an email; which replica carries the newer value alternates.
        let person = format!("p{round}");
        let mail = format!("m{round}@race.test");
        let (a_at, b_at) = if round % 2 == 0 { (OLDER, NEWER) } else { (NEWER, OLDER) };
        fn value(at: &str) -> &'static str {
            if at == NEWER {
                "newer"
            } else {
                "older"
            }
        }
        let side = |at: &'static str, n: u128| {
            vec![
                (
                    "/api/v1/identities",
                    json!({"identity": {"external_id": person}, "request_datetime": at}),
                ),
                (
                    "/api/v1/events",
                    events_body(&person, vec![event(n, "df_login", "2026-11-25T01:00:00Z", json!({}))]),
                ),
                (
                    "/api/v1/user-profile",
                    json!({"identity": {"external_id": person}, "user_properties": {"v": value(at)}, "request_datetime": at}),
                ),
                (
                    "/api/v1/user-profile",
                    json!({"identity": {"email": mail}, "user_properties": {"v": value(at), "who": mail}, "request_datetime": at}),
                ),
            ]
        };
        let answers = at_once(&a, &b, &svc, side(a_at, 2 * round), side(b_at, 2 * round + 1)).await;
        for answer in answers {
            assert_eq!(answer, ok(), "round {round}");
        }
    }

    // Read through either replica: the same profiles.
    let body = json!({"properties_condition_type": "all", "identities_condition_type": "all"});
    let mut exports = Vec::new();
    for server in [&a, &b] {
        let resp = profile_export(server, &svc, &body).await;
        assert_eq!(resp.status(), 200);
        exports.push(resp.text().await.expect("CSV"));
    }
    assert_eq!(exports[0], exports[1]);
    let (header, rows) = parse_csv(&exports[0]);
    assert_eq!(rows.len() as u128, 2 * ROUNDS, "one profile per person: {rows:?}");
    for round in 0..ROUNDS {
        let person = format!("p{round}");
        let mail = format!("m{round}@race.test");
        let of_person: Vec<_> = rows
            .iter()
            .filter(|r| cell(&header, r, "df_external_id") == person)
            .collect();
        assert_eq!(of_person.len(), 1, "{person}: {of_person:?}");
        assert_eq!(cell(&header, of_person[0], "v"), "newer", "{person}");
        let of_mail: Vec<_> = rows.iter().filter(|r| cell(&header, r, "who") == mail).collect();
        assert_eq!(of_mail.len(), 1, "{mail}: {of_mail:?}");
        assert_eq!(cell(&header, of_mail[0], "v"), "newer", "{mail}");
        assert_eq!(cell(&header, of_mail[0], "df_external_id"), "", "{mail}");
    }
    // Each person's two events carry their one profile's id.
    let resp = a.export(&svc, export_body(TODAY)).await;
    assert_eq!(resp.status(), 200);
    let (event_header, events) = parse_csv(&resp.text().await.expect("CSV"));
    assert_eq!(events.len() as u128, 2 * ROUNDS);
    let profiles: std::collections::HashSet<&str> = rows.iter().map(|r| cell(&header, r, "df_unified_id")).collect();
    for e in &events {
        assert!(profiles.contains(cell(&event_header, e, "df_unified_id")), "{e:?}");
    }
}

/// Two admin requests at the same moment, one through each replica;
/// returns both HTTP statuses, sorted.
async fn admin_at_once(
    a: &TestServer,
    b: &TestServer,
    method: Method,
    path: &str,
    on_a: Option<Value>,
    on_b: Option<Value>,
) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(2));
    let send = |server: &TestServer, body: Option<Value>| {
        let mut request = server
            .http
            .request(method.clone(), server.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            request.send().await.expect("admin request").status().as_u16()
        })
    };
    let (x, y) = tokio::join!(send(a, on_a), send(b, on_b));
    let mut statuses = vec![x.expect("replica A's request"), y.expect("replica B's request")];
    statuses.sort_unstable();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_check_made_on_two_replicas_at_once_passes_once() {
    let Some((a, b)) = two_replicas(
        "a_catalog_check_made_on_two_replicas_at_once_passes_once",
        Config::default(),
    )
    .await
    else {
        return;
    };
    for round in 0..10 {
        let svc = service_on_both(&a, &b, json!({"service_id": format!("shop{round}")})).await;
        let service = |path: &str| format!("/admin/v1/services/{}{path}", svc.id);
        // A reissue's cool-down.
        let statuses = admin_at_once(&a, &b, Method::POST, &service("/tokens/export/reissue"), None, None).await;
        assert_eq!(statuses, [200, 409], "round {round}: two reissues");
        // A name's type.
        let as_type = |ty: &str| Some(json!({"user_properties": [{"name": "level", "type": ty}]}));
        let statuses = admin_at_once(
            &a,
            &b,
            Method::POST,
            &service("/taxonomy"),
            as_type("String"),
            as_type("Long"),
        )
        .await;
        assert_eq!(statuses, [200, 409], "round {round}: one name, two types");
        // An audience id.
        let audience = |name: &str| Some(json!({"id": "vips01", "name": name, "external_ids": []}));
        let statuses = admin_at_once(
            &a,
            &b,
            Method::POST,
            &service("/audiences"),
            audience("a"),
            audience("b"),
        )
        .await;
        assert_eq!(statuses, [201, 409], "round {round}: one audience id");
        // Both replicas end with the type that won.
        eventually("one type on both replicas", Duration::from_secs(10), || async {
            let (_, on_a) = a.admin(Method::GET, &service("/taxonomy"), None).await;
            let (_, on_b) = b.admin(Method::GET, &service("/taxonomy"), None).await;
            on_a["user_properties"] == on_b["user_properties"]
        })
        .await;
    }
}
