//! The whole cluster topology on loopback, as an operator runs it: two
//! ClickHouse shards, PostgreSQL and Redis (from `scripts/cluster`), two
//! `fineport serve` processes sharing them, and HAProxy in front (issue 12,
//! SPEC §3 "Limits hold across all replicas").
//!
//! One test, in phases, with 50 parallel clients, a third through the
//! balancer and a third straight to each replica:
//! 1. imports, during which replica A is killed with `kill -9`; a client
//!    whose request failed sends the same batch again through the other
//!    replica. Afterwards every acknowledged event is exported exactly once.
//! 2. exports at once: exactly 5 are admitted across both replicas while
//!    they stream; the others get 429 with `Retry-After: 1`.
//! 3. a replica killed mid-export: its slot is free again within one lease.
//! 4. exports until the hour's quota is used: exactly 100 in the hour.
//!
//! The only 5xx allowed are HAProxy's 502/503 for requests that were in
//! flight on the killed replica (documented in docs/cluster.md); every other
//! phase must see none.
//!
//! Needs FINEPORT_TEST_CLICKHOUSE_URL, FINEPORT_TEST_POSTGRES_URL,
//! FINEPORT_TEST_REDIS_URL and FINEPORT_TEST_HAPROXY (the haproxy binary);
//! `scripts/cluster start` prints them.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{free_port, wait_until_listening};
use fineport_store::cluster::ClusterOptions;
use fineport_store::testing::{service_url, TestCluster, REDIS_VAR};
use serde_json::{json, Value};
use tokio::sync::Barrier;

const BIN: &str = env!("CARGO_BIN_EXE_fineport");
const ADMIN_TOKEN: &str = "topology-admin-token";
const SERVICE: &str = "topo";
const HAPROXY_VAR: &str = "FINEPORT_TEST_HAPROXY";
/// The replicas' export lease: a killed replica's slot is free within it.
const LEASE: Duration = Duration::from_millis(3000);
const CLIENTS: usize = 50;
/// Import phase: each client sends this many batches of this many events.
const BATCHES: usize = 6;
const BATCH: usize = 100;

/// One `fineport serve` process on a fixed port, so that it can be killed
/// and started again where the balancer expects it.
struct Replica {
    name: &'static str,
    port: u16,
    args: Vec<String>,
    data: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.data.join(format!("{}.log", self.name))).expect("log file");
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(&self.args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data")
            .arg(&self.data)
            .env("FINEPORT_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log);
        for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("FINEPORT_") && !k.starts_with("FINEPORT_TEST_"))
        {
            command.env_remove(var);
        }
        let mut child = command.spawn().expect("spawn fineport serve");
        if let Err(printed) = wait_until_listening(&mut child) {
            panic!(
                "replica {} stopped before listening:\n{printed}\n(log: {})",
                self.name,
                self.data.display()
            );
        }
        self.child = Some(child);
    }

    /// `kill -9`: no shutdown, no release of anything it holds.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Balancer {
    child: Child,
    port: u16,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in front of the replicas: round robin, health checks on
/// `/health` every 200 ms (down after 2 failures), and a request whose
/// connection to a replica could not be made is sent to the other one.
fn start_balancer(haproxy: &str, dir: &Path, replicas: &[&Replica]) -> Balancer {
    let port = free_port();
    let servers: String = replicas
        .iter()
        .map(|r| format!("  server {} 127.0.0.1:{} check\n", r.name, r.port))
        .collect();
    let config = format!(
        "global\n  maxconn 2000\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  \
         retries 2\n  option redispatch\n\
         frontend fineport\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
         backend replicas\n  balance roundrobin\n  option httpchk GET /health\n  \
         default-server inter 200ms fall 2 rise 1\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("haproxy.cfg");
    let log = std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
    let child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn haproxy");
    Balancer { child, port }
}

/// Drops the test's databases at the end, whatever happens.
struct Databases {
    cluster: TestCluster,
    options: ClusterOptions,
}

impl Drop for Databases {
    fn drop(&mut self) {
        self.cluster.drop_databases(&self.options);
    }
}

/// On a failure, shows what the replicas and the balancer logged.
struct ShowLogsOnFailure(PathBuf);

impl Drop for ShowLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for name in ["a/a.log", "b/b.log", "haproxy.log"] {
            let log = std::fs::read_to_string(self.0.join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {name} (last {} lines)", tail.len());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

#[derive(Clone)]
struct Tokens {
    import: String,
    export: String,
}

/// A client that asks for no compression: an export of 30 MB then stays
/// 30 MB on the wire, far more than the socket buffers between a replica
/// and a client that does not read, so a held export keeps its slot.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_zstd()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

async fn wait_healthy(url: &str) {
    let client = http();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{url}/health")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became healthy");
}

/// What a client saw for one request: the HTTP status (0: no answer).
#[derive(Default)]
struct Tally {
    statuses: Mutex<BTreeMap<u16, usize>>,
}

impl Tally {
    fn add(&self, status: u16) {
        *self.statuses.lock().expect("tally").entry(status).or_default() += 1;
    }

    fn take(&self) -> BTreeMap<u16, usize> {
        std::mem::take(&mut *self.statuses.lock().expect("tally"))
    }
}

fn export_body(properties: Value, from: &str, to: &str) -> Value {
    json!({
        "events_condition_type": "all",
        "properties_condition_type": "include",
        "properties": properties,
        "from_date": from,
        "to_date": to,
    })
}

async fn send_export(
    client: &reqwest::Client,
    base: &str,
    tokens: &Tokens,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/api/v1/export/event?service_id={SERVICE}"))
        .bearer_auth(&tokens.export)
        .json(body)
        .send()
        .await
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Exports admitted (200), by the hour they were counted in
/// (`X-Rate-Limit-Reset`).
type Admitted = Arc<Mutex<HashMap<String, usize>>>;

fn count_admitted(admitted: &Admitted, resp: &reqwest::Response) {
    let hour = header(resp, "x-rate-limit-reset").unwrap_or_default();
    *admitted.lock().expect("admitted").entry(hour).or_default() += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_behind_haproxy_behave_as_one() {
    let test = "two_replicas_behind_haproxy_behave_as_one";
    let Some(cluster) = TestCluster::from_env(test) else {
        return;
    };
    let Some(redis) = service_url(REDIS_VAR, test) else {
        return;
    };
    let Some(haproxy) = service_url(HAPROXY_VAR, test) else {
        return;
    };
    let databases = Databases {
        options: cluster.fresh_databases().await,
        cluster,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogsOnFailure(dir.path().to_owned());
    let options = &databases.options;
    let args = vec![
        format!("--clickhouse-url={}", options.clickhouse.urls.join(",")),
        format!("--clickhouse-database={}", options.clickhouse.database),
        format!("--postgres-url={}", options.postgres_url),
        format!("--redis-url={redis}"),
        format!("--redis-key-prefix=fp-topology-{}:", options.clickhouse.database),
        format!("--redis-lease-ms={}", LEASE.as_millis()),
        "--shutdown-timeout-secs=2".to_owned(),
    ];
    let mut replicas: Vec<Replica> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let data = dir.path().join(name);
            std::fs::create_dir_all(&data).expect("data dir");
            Replica {
                name,
                port: free_port(),
                args: args.clone(),
                data,
                child: None,
            }
        })
        .collect();
    replicas[0].start();
    let (a_url, b_url) = (replicas[0].url(), replicas[1].url());
    let admin = http();
    // The service and its taxonomy, made through replica A before B starts
    // (replica B learns of changes made later through the catalog watch,
    // which tests/replicas.rs in the server crate covers).
    let created: Value = admin
        .post(format!("{a_url}/admin/v1/services"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"service_id": SERVICE, "timezone": "UTC"}))
        .send()
        .await
        .expect("create service")
        .json()
        .await
        .expect("service json");
    let tokens = Tokens {
        import: created["import_token"].as_str().expect("import token").to_owned(),
        export: created["export_token"].as_str().expect("export token").to_owned(),
    };
    let registered = admin
        .post(format!("{a_url}/admin/v1/services/{SERVICE}/taxonomy"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"event_properties": [{"name": "blob", "type": "String"}, {"name": "n", "type": "Long"}]}))
        .send()
        .await
        .expect("taxonomy");
    assert!(registered.status().is_success(), "{:?}", registered.text().await);
    replicas[1].start();
    let balancer = start_balancer(&haproxy, dir.path(), &[&replicas[0], &replicas[1]]);
    let lb_url = format!("http://127.0.0.1:{}", balancer.port);
    wait_healthy(&lb_url).await;

    // Every export's 200, by the hour it was counted in.
    let admitted: Admitted = Arc::default();

    // ---- 1. imports through every door, replica A killed in the middle.
    let blob = "x".repeat(1000);
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let tally = Arc::new(Tally::default());
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let door = [lb_url.clone(), a_url.clone(), b_url.clone()][c % 3].clone();
        let fallback = if c % 3 == 2 { a_url.clone() } else { b_url.clone() };
        let (tokens, blob) = (tokens.clone(), blob.clone());
        let (acknowledged, sent, tally, progress, start) = (
            acknowledged.clone(),
            sent.clone(),
            tally.clone(),
            progress.clone(),
            start.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = http();
            start.wait().await;
            for batch in 0..BATCHES {
                let at = (Utc::now() - chrono::Duration::minutes(2))
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                let events: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        json!({
                            "event_log_id": fineport_contract::Uuid::new_v4().to_string(),
                            "event_name": "df_login",
                            "event_datetime": at,
                            "properties": {"blob": blob, "n": (c * BATCHES + batch) * BATCH + i},
                        })
                    })
                    .collect();
                let ids: Vec<String> = events
                    .iter()
                    .map(|e| e["event_log_id"].as_str().unwrap_or_default().to_owned())
                    .collect();
                sent.lock().expect("sent").extend(ids.iter().cloned());
                let body = json!({"common": {"identity": {"external_id": format!("user{c}")}}, "events": events});
                // The first door, then (after a failure) the other replica,
                // as a client with a retry policy does.
                let mut acked = false;
                for (attempt, base) in [&door, &fallback, &fallback, &fallback].into_iter().enumerate() {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let answer = client
                        .post(format!("{base}/api/v1/events?service_id={SERVICE}"))
                        .header("access_token", &tokens.import)
                        .json(&body)
                        .send()
                        .await;
                    let Ok(resp) = answer else {
                        tally.add(0);
                        continue;
                    };
                    let status = resp.status().as_u16();
                    tally.add(status);
                    let json: Value = resp.json().await.unwrap_or(Value::Null);
                    if status == 200 && json["code"] == "20000" {
                        acked = true;
                        break;
                    }
                    assert!(
                        status >= 500 || json["code"] == "50000",
                        "an import refused for a reason other than a replica's death: {status} {json}"
                    );
                }
                assert!(acked, "client {c}: batch {batch} never acknowledged");
                acknowledged.lock().expect("acked").extend(ids);
                progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    start.wait().await;
    // Kill A once about a third of the batches are in.
    while progress.load(std::sync::atomic::Ordering::SeqCst) < CLIENTS * BATCHES / 3
        && !clients.iter().any(|c| c.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replicas[0].kill9();
    for c in clients {
        c.await.expect("import client");
    }
    let import_statuses = tally.take();
    println!("imports: {import_statuses:?} (0 = no answer)");
    for status in import_statuses.keys() {
        assert!(
            [0, 200, 502, 503].contains(status),
            "imports saw {status}: only a dead replica's 502/503 or dropped connection may appear"
        );
    }
    replicas[0].start();
    wait_healthy(&a_url).await;

    // Every acknowledged event, exactly once; nothing that was never sent.
    let today = Utc::now().date_naive();
    let (from, to) = ((today - chrono::Days::new(1)).to_string(), today.to_string());
    let export = send_export(&http(), &lb_url, &tokens, &export_body(json!(["n"]), &from, &to))
        .await
        .expect("export");
    assert_eq!(export.status(), 200);
    count_admitted(&admitted, &export);
    let csv = export.text().await.expect("the whole export");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let column = reader
        .headers()
        .expect("header")
        .iter()
        .position(|h| h == "df_event_log_id")
        .expect("df_event_log_id column");
    let mut exported: HashMap<String, usize> = HashMap::new();
    for row in reader.records() {
        *exported.entry(row.expect("row")[column].to_owned()).or_default() += 1;
    }
    let acknowledged = acknowledged.lock().expect("acked").clone();
    let sent = sent.lock().expect("sent").clone();
    assert_eq!(acknowledged.len(), CLIENTS * BATCHES * BATCH);
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !exported.contains_key(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let doubled: Vec<(&String, &usize)> = exported.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} events exported twice, e.g. {:?}",
        doubled.len(),
        doubled.first()
    );
    assert!(
        exported.keys().all(|id| sent.contains(id)),
        "an event no client sent was exported"
    );
    println!(
        "imports: {} acknowledged, {} exported, each once",
        acknowledged.len(),
        exported.len()
    );

    // ---- 2. 50 exports at once: five stream, the rest are told to retry.
    let big = export_body(json!(["blob"]), &from, &to);
    let decided = Arc::new(Barrier::new(CLIENTS + 1));
    let release = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let door = [lb_url.clone(), a_url.clone(), b_url.clone()][c % 3].clone();
        let (tokens, big, decided, release) = (tokens.clone(), big.clone(), decided.clone(), release.clone());
        let admitted = admitted.clone();
        clients.push(tokio::spawn(async move {
            let resp = send_export(&http(), &door, &tokens, &big).await.expect("an answer");
            let status = resp.status().as_u16();
            let retry_after = header(&resp, "retry-after");
            if status == 200 {
                count_admitted(&admitted, &resp);
            }
            let released = release.notified();
            decided.wait().await;
            // Holding the unread 200s until every client has its answer.
            released.await;
            drop(resp);
            (status, retry_after)
        }));
    }
    decided.wait().await;
    release.notify_waiters();
    let mut statuses: BTreeMap<(u16, Option<String>), usize> = BTreeMap::new();
    for c in clients {
        *statuses.entry(c.await.expect("export client")).or_default() += 1;
    }
    println!("50 exports at once: {statuses:?}");
    assert_eq!(statuses.get(&(200, None)), Some(&5), "{statuses:?}");
    assert_eq!(statuses.get(&(429, Some("1".into()))), Some(&45), "{statuses:?}");

    // ---- 3. a replica killed mid-export frees its slot within one lease.
    let mut held = Vec::new();
    for door in [&a_url, &b_url, &b_url, &b_url, &b_url] {
        let client = http();
        let resp = loop {
            // The five slots of phase 2 are being freed as their clients close.
            let resp = send_export(&client, door, &tokens, &big).await.expect("an answer");
            if resp.status() == 200 {
                break resp;
            }
            assert_eq!(resp.status(), 429);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        count_admitted(&admitted, &resp);
        held.push(resp);
    }
    let refused = send_export(&http(), &b_url, &tokens, &big).await.expect("an answer");
    assert_eq!(
        (refused.status().as_u16(), header(&refused, "retry-after")),
        (429, Some("1".into()))
    );
    replicas[0].kill9();
    let killed = Instant::now();
    let client = http();
    let freed = loop {
        let resp = send_export(&client, &b_url, &tokens, &big).await.expect("an answer");
        if resp.status() == 200 {
            break resp;
        }
        assert_eq!(resp.status(), 429);
        assert!(killed.elapsed() < LEASE * 3, "the dead replica's slot is still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let waited = killed.elapsed();
    println!("a slot held by a replica killed mid-export was free again {waited:?} later (lease {LEASE:?})");
    assert!(waited <= LEASE + Duration::from_millis(1500), "freed after {waited:?}");
    count_admitted(&admitted, &freed);
    drop(freed);
    drop(held);
    replicas[0].start();
    wait_healthy(&a_url).await;
    wait_healthy(&lb_url).await;

    // ---- 4. exports until the hour's quota is spent: 100 in the hour.
    let small = export_body(
        json!(["n"]),
        &(today - chrono::Days::new(5)).to_string(),
        &(today - chrono::Days::new(5)).to_string(),
    );
    let tally = Arc::new(Tally::default());
    let quota_reset: Arc<Mutex<Option<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let door = [lb_url.clone(), a_url.clone(), b_url.clone()][c % 3].clone();
        let (tokens, small, tally, admitted, quota_reset) = (
            tokens.clone(),
            small.clone(),
            tally.clone(),
            admitted.clone(),
            quota_reset.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = http();
            loop {
                let resp = send_export(&client, &door, &tokens, &small).await.expect("an answer");
                let status = resp.status().as_u16();
                tally.add(status);
                match status {
                    200 => {
                        count_admitted(&admitted, &resp);
                        let body = resp.text().await.expect("a complete small export");
                        // A day with no events: the header line alone.
                        assert!(body.contains("df_event_log_id") && body.lines().count() == 1, "{body}");
                    }
                    429 if header(&resp, "retry-after").as_deref() == Some("1") => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    429 => {
                        assert_eq!(header(&resp, "x-rate-limit-remaining").as_deref(), Some("0"));
                        *quota_reset.lock().expect("reset") = header(&resp, "x-rate-limit-reset");
                        return;
                    }
                    other => panic!("an export answered {other}"),
                }
            }
        }));
    }
    for c in clients {
        c.await.expect("quota client");
    }
    println!("exports until the quota: {:?}", tally.take());
    let admitted = admitted.lock().expect("admitted").clone();
    let hour = quota_reset.lock().expect("reset").clone().expect("a quota refusal");
    println!("exports admitted by hour (X-Rate-Limit-Reset): {admitted:?}");
    for (reset, n) in &admitted {
        assert!(*n <= 100, "{n} exports admitted in the hour ending {reset}");
    }
    assert_eq!(admitted.get(&hour), Some(&100), "the hour that ran out: {admitted:?}");
    drop(balancer);
    drop(replicas);
    drop(databases);
}
