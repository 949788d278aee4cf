//! The ClickHouse events backend against a real cluster.
//!
//! Set `FINEPORT_TEST_CLICKHOUSE_URL` to the shards' HTTP URLs, comma
//! separated (e.g. `http://127.0.0.1:38123,http://127.0.0.1:48123`), whose
//! `remote_servers` define the cluster `fineport` over exactly those
//! shards. Unset, each test prints that it was skipped (and fails under
//! `CI=true`). Every test works in its own database `fp_test_<hex>` and
//! drops it at the end, so they run in parallel.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fineport_contract::cells::StoredEvent;
use fineport_contract::export::{EventExportPlan, EventExportRequest};
use fineport_contract::import::{validate_events, EventBatch};
use fineport_contract::taxonomy::Taxonomy;
use fineport_contract::types::PropertyType;
use fineport_contract::{ServiceId, Tz, Uuid};
use fineport_store::cluster::clickhouse::{Backing, ClickHouse, ClickHouseOptions, EventRow};
use fineport_store::duckdb::DuckDbStore;
use fineport_store::{ExportPart, ExportStream, ExportSummary, Limits, Service, Store, StoreError, StoreErrorKind};
use futures::StreamExt;
use serde_json::json;

/// A test's own database on the cluster; dropped by [`Cluster::finish`].
struct Cluster {
    urls: Vec<String>,
    options: ClickHouseOptions,
    ch: ClickHouse,
    http: reqwest::Client,
}

impl Cluster {
    /// `None` (skipped) when no cluster is configured.
    async fn open(tune: impl FnOnce(&mut ClickHouseOptions)) -> Option<Cluster> {
        let urls = fineport_store::testing::service_url(fineport_store::testing::CLICKHOUSE_VAR, "clickhouse")?;
        let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
        let mut options = ClickHouseOptions {
            urls: urls.clone(),
            database: format!("fp_test_{}", &Uuid::new_v4().simple().to_string()[..12]),
            ..ClickHouseOptions::default()
        };
        tune(&mut options);
        let ch = ClickHouse::open(&options).await.expect("open the cluster");
        Some(Cluster {
            urls,
            options,
            ch,
            http: reqwest::Client::new(),
        })
    }

    /// Another handle on the same database with other tuning.
    async fn reopen(&self, tune: impl FnOnce(&mut ClickHouseOptions)) -> ClickHouse {
        let mut options = self.options.clone();
        tune(&mut options);
        ClickHouse::open(&options).await.expect("reopen")
    }

    fn db(&self) -> &str {
        &self.options.database
    }

    /// Runs `sql` on shard `node`; its response as text.
    async fn sql(&self, node: usize, sql: &str) -> String {
        let response = self
            .http
            .post(&self.urls[node])
            .body(sql.to_string())
            .send()
            .await
            .expect("ClickHouse answers");
        let status = response.status();
        let text = response.text().await.expect("text");
        assert!(status.is_success(), "{sql}: {status} {text}");
        text
    }

    /// Queries of this test's database still running on any shard.
    async fn running_queries(&self) -> u64 {
        let mut n = 0;
        for node in 0..self.urls.len() {
            let sql = format!(
                "SELECT count() FROM system.processes WHERE query LIKE '%{}.%' AND query NOT LIKE '%system.processes%'",
                self.db()
            );
            n += self.sql(node, &sql).await.trim().parse::<u64>().expect("a count");
        }
        n
    }

    async fn finish(self) {
        for node in 0..self.urls.len() {
            self.sql(node, &format!("DROP DATABASE IF EXISTS {}", self.db())).await;
        }
    }
}

/// What an export stream yielded.
struct Received {
    csv: Vec<u8>,
    chunks: usize,
    end: Option<Result<ExportSummary, StoreError>>,
}

async fn receive(mut stream: ExportStream) -> Received {
    let mut received = Received {
        csv: Vec::new(),
        chunks: 0,
        end: None,
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(ExportPart::Chunk(chunk)) => {
                received.chunks += 1;
                received.csv.extend_from_slice(&chunk);
            }
            Ok(ExportPart::End(summary)) => {
                received.end = Some(Ok(summary));
                break;
            }
            Err(e) => {
                received.end = Some(Err(e));
                break;
            }
        }
    }
    received
}

fn service_id() -> ServiceId {
    ServiceId::parse("shop").expect("service id")
}

/// Standard taxonomy plus custom events and properties of every type.
fn taxonomy() -> Taxonomy {
    let mut t = Taxonomy::standard();
    t.events.insert("visit".into());
    for (name, ty) in [
        ("note", PropertyType::String),
        ("count", PropertyType::Long),
        ("ratio", PropertyType::Double),
        ("flag", PropertyType::Boolean),
        ("seen_at", PropertyType::Datetime),
        ("birthday", PropertyType::Date),
        ("tags", PropertyType::StringArray),
        ("nums", PropertyType::LongArray),
        ("scores", PropertyType::DoubleArray),
    ] {
        t.event_properties.insert(name.into(), ty);
    }
    t.item_properties.insert("color".into(), PropertyType::String);
    t
}

fn plan(body: serde_json::Value) -> EventExportPlan {
    EventExportRequest::parse(&body)
        .expect("valid request")
        .plan(&taxonomy())
        .expect("valid plan")
}

fn all_events(from: &str, to: &str) -> EventExportPlan {
    plan(json!({"events_condition_type": "all", "from_date": from, "to_date": to}))
}

/// `n` events of user `user` from `start` (RFC 3339), one per `step_ms`,
/// with awkward values and, on every third, items.
fn events_body(user: &str, start_ms: i64, step_ms: i64, n: usize, seed: usize) -> serde_json::Value {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let k = seed * 1000 + i;
            let at = chrono::DateTime::from_timestamp_millis(start_ms + i as i64 * step_ms)
                .expect("time")
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            let mut properties = serde_json::Map::new();
            if k.is_multiple_of(2) {
                properties.insert("note".into(), json!(format!("한글, \"q\" {k}\nline")));
            }
            if k % 3 != 1 {
                properties.insert("count".into(), json!(k as i64 - 500));
                properties.insert(
                    "ratio".into(),
                    json!(k as f64 * 1000.0 + if k.is_multiple_of(2) { 0.0 } else { 0.25 }),
                );
            }
            if k.is_multiple_of(5) {
                properties.insert("flag".into(), json!(k.is_multiple_of(10)));
                properties.insert("seen_at".into(), json!("2026-10-10T09:08:07.006+09:00"));
                properties.insert("birthday".into(), json!("1999-12-31"));
                properties.insert("tags".into(), json!(["a,b", "c\"d", ""]));
                properties.insert("nums".into(), json!([1, -2, 3]));
                properties.insert("scores".into(), json!([1.0, 0.5]));
            }
            let mut event = json!({
                "event_log_id": Uuid::new_v4().to_string(),
                "event_name": if k.is_multiple_of(4) { "df_purchase" } else { "visit" },
                "event_datetime": at,
                "properties": properties,
            });
            if k.is_multiple_of(3) {
                event["items"] = json!([
                    {"df_item_id": format!("i{k}"), "df_price": 1.5, "color": "red,blue"},
                    {"df_item_id": "x", "df_quantity": 2}
                ]);
            }
            event
        })
        .collect();
    json!({"common": {"identity": {"external_id": user}}, "events": events})
}

fn batch(body: &serde_json::Value) -> EventBatch {
    validate_events(body, &taxonomy(), false).expect("valid events")
}

/// The rows the import path would store for `batch`.
fn rows(batch: &EventBatch, received_at_ms: i64, unified_id: &str) -> Vec<EventRow> {
    let taxonomy = taxonomy();
    batch
        .events
        .iter()
        .map(|e| {
            StoredEvent::from_import(
                service_id(),
                e,
                received_at_ms,
                unified_id.to_string(),
                taxonomy.item_properties.keys().map(String::as_str),
            )
        })
        .collect()
}

const MS_2026_11_01_KST: i64 = 1_793_458_800_000; // 2026-11-01T00:00+09:00
const RECEIVED: i64 = 1_795_000_000_000; // 2026-11-18, after every event

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_byte_identical_to_duckdb_with_resends_deduplicated() {
    let Some(cluster) = Cluster::open(|_| {}).await else {
        return;
    };
    let duck = DuckDbStore::open_in_memory().expect("duckdb");
    let service = Service {
        service_id: service_id(),
        name: "shop".into(),
        timezone: "Asia/Seoul".into(),
        export_lookback_days: 0,
        auto_register: false,
        limits: Limits::default(),
        created_at: chrono::Utc::now(),
    };
    duck.create_service(&service, &[], &taxonomy()).await.expect("service");
    let tz: Tz = "Asia/Seoul".parse().expect("tz");

    // Three days (and the edges: the first event at local midnight, some
    // just before the range), two users, one batch resent later.
    let bodies = [
        events_body("alice", MS_2026_11_01_KST - 3_600_000, 997_001, 100, 1),
        events_body("bob", MS_2026_11_01_KST, 1_303_007, 100, 2),
        events_body("alice", MS_2026_11_01_KST + 86_400_000 * 2 - 50_000, 1_000, 100, 3),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let batch = batch(body);
        let uid = duck
            .upsert_identity(&service_id(), batch.identity.clone())
            .await
            .expect("uid");
        let received = RECEIVED + i as i64;
        cluster
            .ch
            .insert(rows(&batch, received, &uid))
            .await
            .expect("durable insert");
        duck.insert_events(&service_id(), batch, received)
            .await
            .expect("duckdb insert");
    }
    // The resend: its own INSERT (its own parts), received later.
    let resend = batch(&bodies[1]);
    let uid = duck
        .upsert_identity(&service_id(), resend.identity.clone())
        .await
        .expect("uid");
    cluster
        .ch
        .insert(rows(&resend, RECEIVED + 60_000, &uid))
        .await
        .expect("resend");
    duck.insert_events(&service_id(), resend, RECEIVED + 60_000)
        .await
        .expect("resend");
    assert_eq!(cluster.ch.stats().inserts, 4, "separate INSERTs");
    let stored = cluster
        .sql(0, &format!("SELECT count() FROM {}.events", cluster.db()))
        .await;
    assert_eq!(stored.trim(), "400", "the resend is stored, not yet merged away");

    let per_day = cluster.reopen(|o| o.export_rows_per_query = 1).await;
    let plans = [
        all_events("2026-11-01", "2026-11-03"),
        all_events("2026-10-31", "2026-11-30"),
        plan(json!({
            "events": ["visit"], "events_condition_type": "include",
            "properties": ["note", "df_items", "tags"], "properties_condition_type": "include",
            "from_date": "2026-11-01", "to_date": "2026-11-02"
        })),
        plan(json!({
            "events": ["visit"], "events_condition_type": "exclude",
            "properties": ["note"], "properties_condition_type": "exclude",
            "from_date": "2026-11-02", "to_date": "2026-11-03"
        })),
    ];
    for plan in &plans {
        let expected = receive(duck.export_events(&service_id(), tz, plan).await.expect("duck")).await;
        let expected_end = expected.end.expect("duck ended").expect("duck export");
        assert!(expected_end.rows > 0);
        if std::env::var("FINEPORT_TEST_SHOW").is_ok() {
            eprintln!(
                "{}",
                String::from_utf8_lossy(&expected.csv[..expected.csv.len().min(3000)])
            );
        }
        for ch in [&cluster.ch, &per_day] {
            let got = receive(ch.export(&service_id(), tz, plan).await.expect("started")).await;
            let end = got.end.expect("ended").expect("export");
            assert_eq!(
                String::from_utf8_lossy(&got.csv),
                String::from_utf8_lossy(&expected.csv),
                "{plan:?}"
            );
            assert_eq!(end, expected_end);
            assert_eq!(end.bytes, got.csv.len() as u64);
        }
    }
    // The per-day handle queried each of the first plan's three days alone.
    let before = per_day.stats().export_queries;
    receive(per_day.export(&service_id(), tz, &plans[0]).await.expect("started")).await;
    assert_eq!(per_day.stats().export_queries - before, 3);
    // An empty range is the header alone.
    let empty = all_events("2020-01-01", "2020-01-31");
    let got = receive(cluster.ch.export(&service_id(), tz, &empty).await.expect("started")).await;
    assert_eq!(got.csv, empty.header_line());
    assert_eq!(got.end.expect("ended").expect("ok").rows, 0);
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_share_a_few_inserts() {
    let Some(cluster) = Cluster::open(|o| o.insert_linger = Duration::from_millis(100)).await else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..60 {
        let ch = cluster.ch.clone();
        let body = events_body(&format!("user{i}"), MS_2026_11_01_KST + i * 10_000, 7, 10, i as usize);
        tasks.push(tokio::spawn(async move {
            ch.insert(rows(&batch(&body), RECEIVED, "u")).await
        }));
    }
    for task in tasks {
        task.await.expect("joined").expect("inserted");
    }
    let stats = cluster.ch.stats();
    assert_eq!(stats.inserted_rows, 600);
    assert!(stats.inserts <= 6, "60 callers took {} INSERTs", stats.inserts);
    let got = receive(
        cluster
            .ch
            .export(&service_id(), Tz::UTC, &all_events("2026-10-31", "2026-11-01"))
            .await
            .expect("started"),
    )
    .await;
    assert_eq!(got.end.expect("ended").expect("export").rows, 600);
    cluster.finish().await;
}

/// Checks that each shard's `events_local` holds exactly the rows its
/// Distributed table would have sent it (`cityHash64(service_id,
/// event_log_id)` modulo the shard count; every weight is 1 on the test
/// cluster), and `total` rows in all.
async fn assert_rows_on_their_shards(cluster: &Cluster, total: u64) {
    let mut stored = 0;
    for node in 0..cluster.urls.len() {
        let sql = format!(
            "SELECT shard_num, shard_weight FROM system.clusters WHERE cluster = '{}' AND is_local FORMAT TSV",
            cluster.options.cluster
        );
        let shard = cluster.sql(node, &sql).await;
        assert!(shard.trim().ends_with("\t1"), "weight 1: {shard}");
        let index: u64 = shard
            .split('\t')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("shard_num");
        let counts = cluster
            .sql(
                node,
                &format!(
                    "SELECT count(), countIf(cityHash64(service_id, event_log_id) % {} != {}) FROM {}.events_local FORMAT TSV",
                    cluster.urls.len(),
                    index - 1,
                    cluster.db()
                ),
            )
            .await;
        let (rows, strays) = counts.trim().split_once('\t').expect("two counts");
        assert_eq!(strays, "0", "rows on the wrong shard at node {node}");
        let rows: u64 = rows.parse().expect("count");
        assert!(rows > 0, "node {node} got none of {total} rows");
        stored += rows;
    }
    assert_eq!(stored, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_go_to_the_shard_the_distributed_table_would_pick() {
    let Some(cluster) = Cluster::open(|_| {}).await else {
        return;
    };
    assert!(cluster.ch.inserts_to_shards(), "the test cluster's URLs are its shards");
    // A request answered on its INSERT: one INSERT through the Distributed
    // table, which stores it whole even if fineport dies mid-round.
    let body = events_body("u", MS_2026_11_01_KST, 1000, 100, 1);
    cluster.ch.insert(super_rows(&body)).await.expect("inserted");
    let answered = batch(&events_body("t", MS_2026_11_01_KST, 1000, 100, 4));
    let answered_events: Vec<_> = answered.events.iter().collect();
    let items: Vec<String> = taxonomy().item_properties.keys().cloned().collect();
    let mut rows = cluster.ch.import_rows(Backing::Answer);
    rows.push_request(&service_id(), &answered_events, RECEIVED, "t", &items, |e| {
        e.event_datetime_ms
    });
    cluster.ch.insert_import_rows(rows).await.expect("inserted");
    assert_eq!(
        cluster.ch.stats().shard_inserts,
        0,
        "answered rows go through the Distributed table"
    );
    // The import log's move: one INSERT per shard, straight to events_local.
    let mut bulk = cluster.ch.import_rows(Backing::ImportLog);
    let moved = batch(&events_body("v", MS_2026_11_01_KST, 1000, 100, 2));
    let events: Vec<_> = moved.events.iter().collect();
    bulk.push_request(&service_id(), &events, RECEIVED, "v", &items, |e| e.event_datetime_ms);
    cluster.ch.insert_import_rows(bulk).await.expect("inserted");
    let stats = cluster.ch.stats();
    assert_eq!(stats.inserts, 3, "one round each");
    assert_eq!(stats.shard_inserts, cluster.urls.len() as u64, "one INSERT per shard");
    assert_rows_on_their_shards(&cluster, 300).await;

    // URLs that cannot be matched to shards (both reach shard 1's node):
    // through the Distributed table, to the same shards.
    let distributed = cluster.reopen(|o| o.urls = vec![o.urls[0].clone(); o.urls.len()]).await;
    assert!(!distributed.inserts_to_shards());
    let fallback = batch(&events_body("w", MS_2026_11_01_KST, 1000, 100, 3));
    let events: Vec<_> = fallback.events.iter().collect();
    let mut bulk = distributed.import_rows(Backing::ImportLog);
    bulk.push_request(&service_id(), &events, RECEIVED, "w", &items, |e| e.event_datetime_ms);
    distributed.insert_import_rows(bulk).await.expect("inserted");
    assert_eq!(distributed.stats().shard_inserts, 0);
    assert_rows_on_their_shards(&cluster, 400).await;
    cluster.finish().await;
}

/// Local midnight of a New York date, in UTC ms.
fn ny(date: &str, hms: &str) -> i64 {
    let tz: Tz = "America/New_York".parse().expect("tz");
    let local = chrono::NaiveDateTime::parse_from_str(&format!("{date} {hms}"), "%Y-%m-%d %H:%M:%S%.3f").expect("time");
    local
        .and_local_timezone(tz)
        .single()
        .expect("one instant")
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_follow_the_service_timezone_across_dst() {
    let Some(cluster) = Cluster::open(|o| o.export_rows_per_query = 1).await else {
        return;
    };
    let tz: Tz = "America/New_York".parse().expect("tz");
    // 2026-03-08 has 23 hours in New York (02:00 EST → 03:00 EDT).
    let times = [
        ("before", ny("2026-03-06", "23:59:59.999")),
        ("d1-start", ny("2026-03-07", "00:00:00.000")),
        ("d1-end", ny("2026-03-07", "23:59:59.999")),
        ("d2-start", ny("2026-03-08", "00:00:00.000")),
        ("d2-0159", ny("2026-03-08", "01:59:59.999")),
        ("d2-0300", ny("2026-03-08", "03:00:00.000")),
        ("d2-end", ny("2026-03-08", "23:59:59.999")),
        ("d3-start", ny("2026-03-09", "00:00:00.000")),
        ("after", ny("2026-03-10", "00:00:00.000")),
    ];
    let mut rows = Vec::new();
    for (i, (name, ms)) in times.iter().enumerate() {
        let mut body = events_body("u", *ms, 1, 1, 1);
        body["events"][0]["event_log_id"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
        body["events"][0]["properties"] = json!({"note": name});
        rows.extend(super_rows(&body));
    }
    cluster.ch.insert(rows).await.expect("insert");
    let plan = plan(json!({
        "events_condition_type": "all", "properties": ["note"], "properties_condition_type": "include",
        "from_date": "2026-03-07", "to_date": "2026-03-09"
    }));
    let got = receive(cluster.ch.export(&service_id(), tz, &plan).await.expect("started")).await;
    got.end.expect("ended").expect("export");
    let notes: Vec<String> = String::from_utf8(got.csv)
        .expect("UTF-8")
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().expect("the note column").to_string())
        .collect();
    assert_eq!(
        notes,
        ["d1-start", "d1-end", "d2-start", "d2-0159", "d2-0300", "d2-end", "d3-start"]
    );
    assert_eq!(cluster.ch.stats().export_queries, 3, "one query per day");
    cluster.finish().await;
}

fn super_rows(body: &serde_json::Value) -> Vec<EventRow> {
    rows(&batch(body), RECEIVED, "u")
}

/// Fills day 2026-11-01 (UTC) with `n` rows straight from ClickHouse.
async fn fill_day(cluster: &Cluster, n: u64) {
    let sql = format!(
        "INSERT INTO {db}.events (service_id, correction_ms, event_log_id, server_ms, event_ms, unified_id, \
         event_name, api_version, platform, prop_keys, prop_values, item_count) \
         SELECT 'shop', 1793491200000 + number * 10, toString(generateUUIDv4()), 1795000000000, \
         1793491200000 + number * 10, 'u', 'visit', 'v1', 'HTTP_API', ['note'], \
         [concat('a fairly long note to make the rows wider ', toString(number))], 0 FROM system.numbers LIMIT {n}",
        db = cluster.db()
    );
    cluster
        .sql(0, &format!("{sql} SETTINGS insert_distributed_sync = 1"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_killed_mid_stream_is_an_error_not_an_end() {
    let Some(cluster) = Cluster::open(|_| {}).await else {
        return;
    };
    fill_day(&cluster, 400_000).await;
    let plan = all_events("2026-11-01", "2026-11-01");
    let mut stream = cluster.ch.export(&service_id(), Tz::UTC, &plan).await.expect("started");
    let first = stream.next().await.expect("an item").expect("the first chunk");
    assert!(matches!(first, ExportPart::Chunk(_)));
    for node in 0..cluster.urls.len() {
        // The initiator's query (its remote parts have ClickHouse's ids).
        let kill = format!(
            "KILL QUERY WHERE query_id LIKE 'fineport-export-%' AND query LIKE '%{}.events %'",
            cluster.db()
        );
        cluster.sql(node, &kill).await;
    }
    let rest = receive(stream).await;
    let e = rest.end.expect("the stream says how it ended").expect_err("killed");
    assert_eq!(e.kind, StoreErrorKind::Query);
    assert!(e.message.contains("cancel") || e.message.contains("Code:"), "{e}");
    eprintln!("killed mid-stream after {} chunks: {e}", rest.chunks + 1);
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_stops_its_query() {
    let Some(cluster) = Cluster::open(|_| {}).await else {
        return;
    };
    fill_day(&cluster, 400_000).await;
    let plan = all_events("2026-11-01", "2026-11-01");
    // Once mid-stream, once while ClickHouse still sorts.
    for read_first_chunk in [true, false] {
        let mut stream = cluster.ch.export(&service_id(), Tz::UTC, &plan).await.expect("started");
        if read_first_chunk {
            stream.next().await.expect("an item").expect("the first chunk");
        } else {
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        }
        assert!(cluster.running_queries().await > 0, "the query was running");
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(5);
        while cluster.running_queries().await > 0 {
            assert!(Instant::now() < deadline, "the query still runs 5 s after the drop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shard_fails_inserts_and_exports_before_any_byte() {
    let Some(cluster) = Cluster::open(|_| {}).await else {
        return;
    };
    // A shard that is not there at all: refused at open.
    let mut options = cluster.options.clone();
    options.urls[1] = "http://127.0.0.1:1".into();
    let e = ClickHouse::open(&options).await.err().expect("refused");
    assert_eq!(e.kind, StoreErrorKind::Query, "{e}");

    // A shard whose table is gone answers every query with an error.
    for node in 0..cluster.urls.len() {
        cluster
            .sql(node, &format!("DROP TABLE {}.events_local", cluster.db()))
            .await;
    }
    let body = events_body("u", MS_2026_11_01_KST, 1000, 20, 1);
    let e = cluster.ch.insert(super_rows(&body)).await.expect_err("insert fails");
    assert_eq!(e.kind, StoreErrorKind::Internal, "{e}");
    assert!(e.message.contains("events_local"), "ClickHouse's text: {e}");
    let plan = all_events("2026-11-01", "2026-11-02");
    let mut stream = cluster.ch.export(&service_id(), Tz::UTC, &plan).await.expect("started");
    let first = stream.next().await.expect("an item");
    let e = first.expect_err("fails before the first byte");
    assert_eq!(e.kind, StoreErrorKind::Query, "{e}");
    assert!(stream.next().await.is_none());
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_with_events_counts_distinct_events_in_id_order() {
    let Some(cluster) = Cluster::open(|_| {}).await else {
        return;
    };
    let at = MS_2026_11_01_KST;
    let mut rows = Vec::new();
    // u3: 3 purchases (one resent), u1: 2, u2: 1, u4: 3 but one outside.
    for (uid, n, offset) in [
        ("u3", 3, 0),
        ("u1", 2, 0),
        ("u2", 1, 0),
        ("u4", 2, 0),
        ("u4", 1, 86_400_000),
    ] {
        let mut body = events_body(uid, at + offset, 1000, n, 0);
        for e in body["events"].as_array_mut().expect("events") {
            e["event_name"] = json!("df_purchase");
        }
        rows.extend(rows_for(&body, uid));
    }
    let resend: Vec<EventRow> = rows.iter().filter(|r| r.unified_id == "u3").take(1).cloned().collect();
    cluster.ch.insert(rows).await.expect("insert");
    cluster.ch.insert(resend).await.expect("resend");
    let ch = &cluster.ch;
    let users = |min| async move {
        ch.users_with_events(&service_id(), "df_purchase", min, at, at + 86_400_000)
            .await
            .expect("started")
            .map(|id| id.expect("an id"))
            .collect::<Vec<String>>()
            .await
    };
    assert_eq!(users(1).await, ["u1", "u2", "u3", "u4"]);
    assert_eq!(users(2).await, ["u1", "u3", "u4"]);
    assert_eq!(users(3).await, ["u3"]);
    assert!(users(4).await.is_empty());
    let none: BTreeSet<String> = cluster
        .ch
        .users_with_events(&service_id(), "it's \\ 'x'", 1, at, at + 86_400_000)
        .await
        .expect("an odd name is only a value")
        .map(|id| id.expect("an id"))
        .collect()
        .await;
    assert!(none.is_empty());
    cluster.finish().await;
}

fn rows_for(body: &serde_json::Value, uid: &str) -> Vec<EventRow> {
    rows(&batch(body), RECEIVED, uid)
}
