//! What the cluster must prove beside the behaviour suite that runs on both
//! backends: the same imports give the same export bytes on DuckDB and on
//! the cluster, and a ClickHouse shard that is down makes imports fail with
//! nothing acknowledged and exports fail loudly, never short.
//!
//! The cluster is found by URL (`FINEPORT_TEST_CLICKHOUSE_URL`,
//! `FINEPORT_TEST_POSTGRES_URL`): unset, these tests say they were skipped;
//! unset under `CI=true`, they fail.

mod common;

use common::*;
use fineport_store::testing::TestCluster;
use serde_json::{json, Value};

const RANGE_FROM: &str = "2026-10-27";
const RANGE_TO: &str = "2026-11-25";

/// A small deterministic generator (no dependency, same data on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const TAXONOMY: &str = r#"{
    "events": ["review", "df_purchase", "df_login"],
    "event_properties": [
        {"name": "comment", "type": "String"}, {"name": "stars", "type": "Long"}, {"name": "score", "type": "Double"},
        {"name": "verified", "type": "Boolean"}, {"name": "shipped_at", "type": "Datetime"}, {"name": "birthday", "type": "Date"},
        {"name": "tags", "type": "Array of String"}, {"name": "codes", "type": "Array of Long"}, {"name": "weights", "type": "Array of Double"}
    ],
    "item_properties": [{"name": "color", "type": "String"}, {"name": "sizes", "type": "Array of String"}],
    "user_properties": [{"name": "tier", "type": "String"}, {"name": "visits", "type": "Long"}]
}"#;

/// The requests both servers get, in order: (path, body).
fn requests() -> Vec<(&'static str, Value)> {
    let mut rng = Lcg(7);
    let texts = [
        "plain",
        "한글, \"인용\"\n둘째 줄",
        "a,b",
        "",
        " space ",
        "x\r\ny",
        "\"",
        "ünï",
    ];
    let names = ["review", "df_purchase", "df_login"];
    let mut out = Vec::new();
    let mut n: u128 = 0;
    for request in 0..60u64 {
        let user = format!("user-{}", rng.next(12));
        let mut events = Vec::new();
        for _ in 0..(1 + rng.next(15)) {
            n += 1;
            // Anywhere in the month (New York time crosses the end of DST on
            // 11-01), some in the future of the clock (03:00Z on 11-25).
            let day = 27 + rng.next(31) as u32;
            let (month, day) = if day > 31 { (11, day - 31) } else { (10, day) };
            let future = rng.next(10) == 0;
            let datetime = if future {
                format!("2026-11-25T{:02}:{:02}:00.5Z", 4 + rng.next(18), rng.next(60))
            } else {
                format!(
                    "2026-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                    rng.next(24),
                    rng.next(60),
                    rng.next(60),
                    rng.next(1000)
                )
            };
            let mut properties = serde_json::Map::new();
            let mut maybe = |name: &str, value: Value, rng: &mut Lcg| {
                if rng.next(3) > 0 {
                    properties.insert(name.into(), value);
                }
            };
            maybe("comment", json!(texts[rng.next(8) as usize]), &mut rng);
            maybe("stars", json!(rng.next(11) as i64 - 5), &mut rng);
            maybe(
                "score",
                json!([0.1, 4.5, 15000.0, -0.0, 1e21, 1.5e-7][rng.next(6) as usize]),
                &mut rng,
            );
            maybe("verified", json!(rng.next(2) == 0), &mut rng);
            maybe("shipped_at", json!("2026-11-24T23:59:59.9+09:00"), &mut rng);
            maybe("birthday", json!("1990-02-28"), &mut rng);
            maybe("tags", json!(["a,b", "c\"d", "가"]), &mut rng);
            maybe("codes", json!([1, -2]), &mut rng);
            maybe("weights", json!([1, 0.25]), &mut rng);
            let name = names[rng.next(3) as usize];
            let mut e = json!({"event_log_id": event_id(n), "event_name": name, "event_datetime": datetime,
                               "properties": properties});
            if name == "df_purchase" && rng.next(2) == 0 {
                e["items"] = json!([
                    {"df_item_id": "sku-1", "df_price": 7500.0, "df_quantity": 2, "color": "빨강", "sizes": ["S", "M"]},
                    {"df_item_id": "sku,2", "df_price": 0.1}
                ]);
            }
            events.push(e);
        }
        // A resend of an earlier request's events, some future-dated.
        if request % 7 == 6 {
            let again: Vec<Value> = out
                .iter()
                .rev()
                .find_map(|(path, body): &(&str, Value)| (*path == "/api/v1/events").then(|| body["events"].clone()))
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            events.extend(again);
        }
        out.push((
            "/api/v1/events",
            json!({"common": {"identity": {"external_id": user, "email": format!("{user}@example.com")}}, "events": events}),
        ));
        if request % 5 == 0 {
            let tier = ["gold", "silver, \"x\""][rng.next(2) as usize];
            out.push((
                "/api/v1/user-profile",
                json!({"identity": {"external_id": user}, "request_datetime": "2026-11-25T02:00:00Z",
                       "user_properties": {"tier": tier, "visits": rng.next(100)}}),
            ));
        }
        if request == 30 {
            // An item property registered mid-way: earlier events have no cell for it.
            out.push((
                "taxonomy",
                json!({"item_properties": [{"name": "late", "type": "Long"}], "event_properties": [{"name": "later", "type": "String"}]}),
            ));
        }
    }
    // Anonymous profiles reached by email, then joined by an external_id.
    out.push((
        "/api/v1/identities",
        json!({"identity": {"email": "anon@example.com"}, "request_datetime": "2026-11-25T02:00:00Z"}),
    ));
    out.push((
        "/api/v1/identities",
        json!({"identity": {"external_id": "late-joiner", "email": "anon@example.com"}, "request_datetime": "2026-11-25T02:00:00Z"}),
    ));
    out
}

/// Runs every request on `server` and returns (event export, profile
/// export of everyone, profile export of an audience with an event rule).
async fn exports(server: &TestServer) -> (String, String, String) {
    let svc = server
        .service(json!({"service_id": "shop", "timezone": "America/New_York", "export_lookback_days": 90}))
        .await;
    server.taxonomy(&svc, serde_json::from_str(TAXONOMY).unwrap()).await;
    for (path, body) in requests() {
        if path == "taxonomy" {
            server.taxonomy(&svc, body).await;
            continue;
        }
        let answer: Value = server.import_endpoint(&svc, path, &body).await.json().await.unwrap();
        assert_eq!(answer["code"], "20000", "{path}: {answer}");
    }
    let (status, created) = server
        .admin(
            reqwest::Method::POST,
            "/admin/v1/services/shop/audiences",
            Some(json!({"name": "buyers", "rule": {"all": [
                {"event": "df_purchase", "min_count": 3, "from_date": RANGE_FROM, "to_date": RANGE_TO},
                {"event": "review", "min_count": 1, "from_date": "2026-11-01", "to_date": RANGE_TO}]}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let audience = created["id"].as_str().unwrap().to_owned();

    let text = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    let events = text(
        server
            .export(
                &svc,
                json!({"events_condition_type": "all", "from_date": RANGE_FROM, "to_date": RANGE_TO}),
            )
            .await,
    )
    .await;
    let profile = |body: Value| {
        server.export_raw(
            "/api/v1/export/userprofile?service_id=shop",
            Some(&svc.export_token),
            body.to_string(),
        )
    };
    let everyone =
        text(profile(json!({"properties_condition_type": "all", "identities_condition_type": "all"})).await).await;
    let members = text(
        profile(json!({"properties_condition_type": "all", "identities_condition_type": "all", "audience": audience}))
            .await,
    )
    .await;
    (events, everyone, members)
}

/// `text` with every df_unified_id replaced by the external_id (or email
/// order) of its profile: unified ids are random UUIDs, the one thing two
/// stores cannot share. Profile exports are ordered by unified id, so their
/// rows are compared sorted after the replacement; the order itself is
/// checked by the behaviour suite on each backend.
fn comparable(text: &str, everyone: &str) -> Vec<String> {
    let (header, rows) = parse_csv(everyone);
    let mut names = std::collections::HashMap::new();
    for row in &rows {
        let uid = cell(&header, row, "df_unified_id").to_owned();
        let ext = cell(&header, row, "df_external_id").to_owned();
        names.insert(uid, if ext.is_empty() { "anonymous".to_owned() } else { ext });
    }
    let mut replaced = text.to_owned();
    for (uid, name) in &names {
        replaced = replaced.replace(uid.as_str(), &format!("<{name}>"));
    }
    replaced.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_the_cluster_export_the_same_bytes() {
    let Some(cluster) = TestCluster::from_env("duckdb_and_the_cluster_export_the_same_bytes") else {
        return;
    };
    let duckdb = Backend::DuckDb.run(TestServer::start()).await;
    let on_cluster = Backend::Cluster(cluster).run(TestServer::start()).await;
    let (d_events, d_everyone, d_members) = exports(&duckdb).await;
    let (c_events, c_everyone, c_members) = exports(&on_cluster).await;

    let (_, rows) = parse_csv(&d_events);
    assert!(rows.len() > 400, "the data set is not trivial: {} rows", rows.len());
    assert!(parse_csv(&d_members).1.len() >= 2, "the audience holds users");
    assert_eq!(d_events.len(), c_events.len(), "event export sizes");
    let (d_lines, c_lines) = (comparable(&d_events, &d_everyone), comparable(&c_events, &c_everyone));
    if let Some(i) = (0..d_lines.len().max(c_lines.len())).find(|&i| d_lines.get(i) != c_lines.get(i)) {
        panic!(
            "event exports differ from line {i}:\nDuckDB:  {:?}\ncluster: {:?}",
            d_lines.get(i),
            c_lines.get(i)
        );
    }
    for (d, c) in [(&d_everyone, &c_everyone), (&d_members, &c_members)] {
        assert_eq!(d.len(), c.len(), "profile export sizes");
        let mut d_lines = comparable(d, &d_everyone);
        let mut c_lines = comparable(c, &c_everyone);
        d_lines.sort();
        c_lines.sort();
        assert_eq!(d_lines, c_lines, "profile export lines");
    }
}

/// A store whose Distributed table is over `fineport_broken` (shard 1 and
/// a shard where nothing listens, see scripts/cluster): both shards of the
/// test cluster answer, but every read or write through the Distributed
/// table needs the missing one.
async fn broken_cluster_server(test: &str) -> Option<TestServer> {
    let cluster = TestCluster::from_env(test)?;
    let mut options = cluster.fresh_databases().await;
    options.clickhouse.cluster = "fineport_broken".into();
    Some(TestServer::start_on_cluster(cluster, options).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_is_down_fails_imports_and_exports_loudly() {
    let Some(server) = broken_cluster_server("a_shard_that_is_down_fails_imports_and_exports_loudly").await else {
        return;
    };
    let svc = server.service(json!({"service_id": "shop"})).await;
    // 40 events: some hash to the shard that is down.
    let events: Vec<Value> = (0..40)
        .map(|i| event(i, "df_login", "2026-11-25T01:00:00Z", json!({})))
        .collect();
    let resp = server
        .import_raw(&svc.id, Some(&svc.import_token), events_body("u1", events).to_string())
        .await;
    assert_eq!(resp.status(), 200, "the Import API answers failures in its body");
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["code"], "50000", "{answer}");
    assert_eq!(answer["status"], false, "{answer}");

    let resp = server
        .export(
            &svc,
            json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"}),
        )
        .await;
    assert_eq!(resp.status(), 500, "never a short export with 200");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["result"], "fail");
    assert_eq!(body["message"], "query_error");
    wait_for_log(&server, &svc, "query_error", 1).await;
}

/// ClickHouse 18.16 reports a query that fails after its first block as
/// HTTP 200 with the error text appended and a clean end: fineport must
/// see it and break its own response, never end it as if complete. The
/// export is stalled (the client stops reading) so that its ClickHouse
/// query is mid-stream, killed from outside, then read to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_query_killed_mid_export_breaks_the_transfer() {
    let Some(cluster) = TestCluster::from_env("a_clickhouse_query_killed_mid_export_breaks_the_transfer") else {
        return;
    };
    let server = Backend::Cluster(cluster.clone()).run(TestServer::start()).await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    // 4,000 events of ~10 KB on one day: one query of ~40 MB, more than
    // every buffer between ClickHouse and the stalled client holds.
    import_big(&server, &svc, 4000).await;
    let body = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let mut stalled = StalledExport::start(&server, &svc, &body).await;
    let database = &server.cluster_options().expect("a cluster server").clickhouse.database;
    let kill = format!("KILL QUERY WHERE query_id LIKE 'fineport-export-%' AND query LIKE '%{database}.events%'");
    let mut killed = String::new();
    for shard in &cluster.clickhouse_urls {
        let resp = server.http.post(shard).body(kill.clone()).send().await.unwrap();
        assert!(resp.status().is_success());
        killed.push_str(&resp.text().await.unwrap());
    }
    assert!(
        !killed.trim().is_empty(),
        "the export's query was running when it was killed"
    );
    let received = stalled.read_until_closed(std::time::Duration::from_secs(60)).await;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        !ends_with_last_chunk(&received),
        "a killed query must break the transfer, not end it"
    );
    let failed = wait_for_log(&server, &svc, "query_error", 1).await;
    assert_eq!(failed[0]["status"], 200, "logged with what the client got");
}

/// PostgreSQL unreachable (cut between fineport and a real server): the
/// catalog is in memory, so requests are still authenticated, and event
/// exports, which read ClickHouse only, go on; whatever needs PostgreSQL
/// fails cleanly — imports answer 50000 with nothing stored, profile
/// exports 500, admin changes 500 — and the request log waits in memory.
/// Once it is back, the pool reconnects by itself and nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_keeps_event_exports_and_fails_the_rest_cleanly() {
    let Some(cluster) = TestCluster::from_env("postgres_unreachable_keeps_event_exports_and_fails_the_rest_cleanly")
    else {
        return;
    };
    let mut options = cluster.fresh_databases().await;
    let relay = common::relay::Relay::start(common::relay::Relay::host_port(&options.postgres_url)).await;
    options.postgres_url = relay.url_through(&options.postgres_url);
    let server = TestServer::start_on_cluster(cluster, options).await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let day = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let batch = |from: u128| -> Value {
        let events = (from..from + 10)
            .map(|i| event(i, "df_login", "2026-11-25T01:00:00Z", json!({})))
            .collect();
        events_body("u1", events)
    };
    assert_eq!(server.import(&svc, batch(0)).await["code"], "20000");

    relay.cut();
    let resp = server.export(&svc, day.clone()).await;
    assert_eq!(resp.status(), 200, "event exports need ClickHouse only");
    let (_, rows) = parse_csv(&resp.text().await.unwrap());
    assert_eq!(rows.len(), 10);
    let answer = server.import(&svc, batch(100)).await;
    assert_eq!(answer["code"], "50000", "{answer}");
    let profiles = server
        .export_raw(
            &format!("/api/v1/export/userprofile?service_id={}", svc.id),
            Some(&svc.export_token),
            json!({"properties_condition_type": "all", "properties": []}).to_string(),
        )
        .await;
    assert_eq!(profiles.status(), 500);
    assert_eq!(profiles.json::<Value>().await.unwrap()["result"], "fail");
    let (status, _) = server
        .admin(
            reqwest::Method::POST,
            "/admin/v1/services",
            Some(json!({"service_id": "other"})),
        )
        .await;
    assert_eq!(status, 500);

    relay.restore();
    let mut answer = Value::Null;
    for _ in 0..100 {
        answer = server.import(&svc, batch(100)).await;
        if answer["code"] == "20000" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(answer["code"], "20000", "PostgreSQL is back: {answer}");
    let resp = server.export(&svc, day).await;
    let (_, rows) = parse_csv(&resp.text().await.unwrap());
    assert_eq!(
        rows.len(),
        20,
        "the failed import stored nothing; its retry stored each event once"
    );
    // The request log kept what happened during the outage.
    wait_for_log(&server, &svc, "50000", 1).await;
}
