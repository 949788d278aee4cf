//! `GET /metrics` end to end: a few known requests, then a scrape over
//! HTTP, parsed strictly as Prometheus's text format, with the exact
//! count of each; who may scrape.

mod common;

use std::collections::BTreeMap;

use common::*;
use fineport_server::metrics::MetricsAccess;
use fineport_server::Config;
use serde_json::{json, Value};

backend_suite!(
    every_request_is_counted_by_outcome,
    an_export_is_in_flight_until_its_body_ends,
    metrics_take_a_token_unless_public
);

/// One sample line of the text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus's text format (version 0.0.4) strictly: every line
/// is a `# HELP`, a `# TYPE` (once per family, before its samples) or a
/// sample `name{label="value",…} value`, with label values escaped as the
/// format says; anything else fails the test.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("HELP without text: {line:?}"));
            assert!(valid_name(name), "{line:?}");
            assert!(!help.is_empty(), "{line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("TYPE without type: {line:?}"));
            assert!(valid_name(name), "{line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "two TYPE lines for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "an unknown comment: {line:?}");
        let sample = parse_sample(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(&sample.name);
        assert!(types.contains_key(family), "{} has no TYPE line before it", sample.name);
        samples.push(sample);
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn not_a_sample(line: &str) -> ! {
    panic!("not a sample line: {line:?}")
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| not_a_sample(line));
    let name = &line[..name_end];
    if !valid_name(name) {
        not_a_sample(line);
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"").unwrap_or_else(|| not_a_sample(line));
            let label = &rest[..eq];
            if !valid_name(label) || label.contains(':') {
                not_a_sample(line);
            }
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    None => not_a_sample(line),
                    Some((i, '"')) => break eq + 2 + i + 1,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => not_a_sample(line),
                    },
                    Some((_, '\n')) => not_a_sample(line),
                    Some((_, c)) => value.push(c),
                }
            };
            assert!(labels.insert(label.to_owned(), value).is_none(), "{line:?}");
            rest = &rest[end..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.strip_prefix(' ').unwrap_or_else(|| not_a_sample(line)).split(' ');
    let value = match fields.next().unwrap_or_else(|| not_a_sample(line)) {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| not_a_sample(line)),
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().unwrap_or_else(|_| not_a_sample(line));
    }
    if fields.next().is_some() {
        not_a_sample(line);
    }
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// A scrape: every sample, by name and exact label set.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the sample `name` with exactly `labels`, if there is one.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears {} times", found.len());
        found.first().copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}; samples of {name}: {:?}", self.named(name)))
    }

    fn named(&self, name: &str) -> Vec<&Sample> {
        self.0.iter().filter(|s| s.name == name).collect()
    }
}

/// `GET /metrics` with `token`: (status, body).
async fn get_metrics(server: &TestServer, token: Option<&str>) -> (u16, String, String) {
    let mut req = server.http.get(server.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, resp.text().await.expect("body"))
}

async fn scrape(server: &TestServer) -> Scrape {
    let (status, content_type, text) = get_metrics(server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    Scrape(parse_exposition(&text))
}

fn login(n: u128) -> Value {
    event(n, "df_login", "2026-11-25T01:00:00Z", json!({}))
}

const EVENTS: &str = "/api/v1/events";
const EXPORT: &str = "/api/v1/export/event";

async fn every_request_is_counted_by_outcome() {
    let server = TestServer::start().await;
    let svc = server
        .service(json!({"service_id": "shop", "limits": {"events_per_minute": 5, "export_per_hour": 1}}))
        .await;
    let id = svc.id.as_str();
    let on_duckdb = matches!(Backend::current(), Backend::DuckDb);

    // Imports: 20000 (3 events), 40001, 40201, 40401 (3 more than the 5 a minute).
    let answer = server
        .import(&svc, events_body("u1", (1..4).map(login).collect()))
        .await;
    assert_eq!(answer["code"], "20000", "{answer}");
    let mut bad = login(10);
    bad["event_datetime"] = json!("yesterday");
    assert_eq!(server.import(&svc, events_body("u1", vec![bad])).await["code"], "40001");
    let good = events_body("u1", vec![login(20)]).to_string();
    let r = server.import_raw(id, Some("wrong"), good).await;
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "40201");
    let answer = server
        .import(&svc, events_body("u1", (30..33).map(login).collect()))
        .await;
    assert_eq!(answer["code"], "40401", "{answer}");

    // The 3 events are acknowledged; on DuckDB they wait in the import log
    // until a read needs them (the harness's move policy).
    let metrics = scrape(&server).await;
    if on_duckdb {
        assert_eq!(metrics.value("fineport_import_log_backlog_batches", &[]), 1.0);
        assert_eq!(metrics.value("fineport_import_log_backlog_events", &[]), 3.0);
        assert!(metrics.value("fineport_import_log_backlog_bytes", &[]) > 0.0);
        // DuckDB's own memory, by tag: every tag is there, in use or not.
        let tags = metrics.named("fineport_engine_memory_bytes");
        assert!(tags.len() >= 10, "{tags:?}");
        assert!(metrics.value("fineport_engine_memory_bytes", &[("tag", "BASE_TABLE")]) >= 0.0);
    } else {
        // The cluster's import log moves after 20 ms idle: the backlog is
        // reported (0 or 1 batch by now); without a log there is none.
        let with_log = matches!(Backend::current(), Backend::ClusterImportLog(_));
        let backlog = metrics.named("fineport_import_log_backlog_batches");
        assert_eq!(backlog.is_empty(), !with_log, "{backlog:?}");
        if with_log {
            assert!(metrics.value("fineport_import_log_backlog_batches", &[]) <= 1.0);
        }
        assert!(metrics.named("fineport_engine_memory_bytes").is_empty());
    }

    // Exports: ok, invalid_parameter, unauthorized_token (a service's and
    // an unknown one's), then too_many_api_requests (1 an hour).
    let body = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let resp = server.export(&svc, body.clone()).await;
    assert_eq!(resp.status(), 200);
    let csv = resp.bytes().await.unwrap();
    let (_, rows) = parse_csv(std::str::from_utf8(&csv).unwrap());
    assert_eq!(rows.len(), 3);
    let resp = server.export(&svc, json!({"from_date": "yesterday"})).await;
    assert_eq!(resp.status(), 400);
    let path = format!("{EXPORT}?service_id={id}");
    let resp = server.export_raw(&path, Some("wrong"), body.to_string()).await;
    assert_eq!(resp.status(), 401);
    let resp = server
        .export_raw(&format!("{EXPORT}?service_id=nosuch"), Some("x"), body.to_string())
        .await;
    assert_eq!(resp.status(), 401);
    let resp = server.export(&svc, body.clone()).await;
    assert_eq!(resp.status(), 429);
    // A path no route serves.
    let resp = server.http.get(server.url("/no/such/path")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    let metrics = scrape(&server).await;
    let requests = |endpoint: &str, service: &str, outcome: &str, status: &str| {
        metrics.value(
            "fineport_requests_total",
            &[
                ("endpoint", endpoint),
                ("service_id", service),
                ("outcome", outcome),
                ("status", status),
            ],
        )
    };
    for code in ["ok", "40001", "40201", "40401"] {
        assert_eq!(requests(EVENTS, id, code, "200"), 1.0, "{code}");
    }
    assert_eq!(requests(EXPORT, id, "ok", "200"), 1.0);
    assert_eq!(requests(EXPORT, id, "invalid_parameter", "400"), 1.0);
    assert_eq!(requests(EXPORT, id, "unauthorized_token", "401"), 1.0);
    assert_eq!(requests(EXPORT, id, "too_many_api_requests", "429"), 1.0);
    // An unknown service is no label of its own.
    assert_eq!(requests(EXPORT, "", "unauthorized_token", "401"), 1.0);
    let total: f64 = metrics.named("fineport_requests_total").iter().map(|s| s.value).sum();
    assert_eq!(total, 9.0, "{:?}", metrics.named("fineport_requests_total"));
    assert!(metrics
        .named("fineport_requests_total")
        .iter()
        .all(|s| ["", id].contains(&s.labels["service_id"].as_str())));

    let by_service = [("endpoint", EXPORT), ("service_id", id)];
    assert_eq!(metrics.value("fineport_export_rows_total", &by_service), 3.0);
    assert_eq!(
        metrics.value("fineport_export_bytes_total", &by_service),
        csv.len() as f64
    );
    assert_eq!(
        metrics.value("fineport_import_events_total", &[("service_id", id)]),
        3.0
    );
    for counter in ["events", "exports"] {
        assert_eq!(
            metrics.value(
                "fineport_limiter_refusals_total",
                &[("service_id", id), ("counter", counter)]
            ),
            1.0,
            "{counter}"
        );
    }
    assert_eq!(metrics.value("fineport_exports_in_flight", &[]), 0.0);
    if on_duckdb {
        // The export moved the acknowledged events into the tables.
        for gauge in ["batches", "events", "bytes"] {
            assert_eq!(
                metrics.value(&format!("fineport_import_log_backlog_{gauge}"), &[]),
                0.0,
                "{gauge}"
            );
        }
    }

    // Request durations by endpoint, store operations by operation.
    assert_eq!(
        metrics.value("fineport_request_duration_seconds_count", &[("endpoint", EVENTS)]),
        4.0
    );
    assert_eq!(
        metrics.value("fineport_request_duration_seconds_count", &[("endpoint", EXPORT)]),
        5.0
    );
    for operation in ["insert_events", "export_events", "load_catalog", "create_service"] {
        let labels = [("operation", operation), ("result", "ok")];
        let count = metrics.value("fineport_store_operation_seconds_count", &labels);
        assert!(count >= 1.0, "{operation}");
        let inf = [("operation", operation), ("result", "ok"), ("le", "+Inf")];
        assert_eq!(metrics.value("fineport_store_operation_seconds_bucket", &inf), count);
        let buckets = metrics
            .named("fineport_store_operation_seconds_bucket")
            .into_iter()
            .filter(|s| s.labels["operation"] == operation)
            .count();
        assert_eq!(buckets, fineport_server::metrics::BUCKETS.len() + 1, "{operation}");
    }

    // Every HTTP response by route template: a path no route serves is `other`.
    let http = |route: &str, status: &str| {
        metrics
            .get("fineport_http_requests_total", &[("route", route), ("status", status)])
            .unwrap_or(0.0)
    };
    assert_eq!(http(EVENTS, "200"), 4.0);
    assert_eq!(http(EXPORT, "200"), 1.0);
    assert_eq!(http(EXPORT, "401"), 2.0);
    assert_eq!(http("other", "404"), 1.0);
    assert_eq!(http("/metrics", "200"), 1.0, "the first scrape");
    assert_eq!(http("/admin/v1/services", "201"), 1.0);
    assert!(metrics
        .named("fineport_http_requests_total")
        .iter()
        .all(|s| !s.labels["route"].contains("no/such")));
    assert_eq!(
        metrics.value("fineport_http_request_duration_seconds_count", &[("route", EVENTS)]),
        4.0
    );
    assert_eq!(
        metrics.value("fineport_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
}

/// `fineport_exports_in_flight` counts an export while its body streams,
/// and its rows and bytes land when it ends.
async fn an_export_is_in_flight_until_its_body_ends() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "big"})).await;
    import_big(&server, &svc, 2000).await;
    let day = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let by_service = [("endpoint", EXPORT), ("service_id", svc.id.as_str())];

    // The client has read 64 KiB of ~20 MB and stops: the export waits.
    let mut stalled = StalledExport::start(&server, &svc, &day).await;
    let during = scrape(&server).await;
    assert_eq!(during.value("fineport_exports_in_flight", &[]), 1.0);
    assert_eq!(during.get("fineport_export_rows_total", &by_service), None);

    let csv = stalled.finish().await;
    let (_, rows) = parse_csv(&csv);
    assert_eq!(rows.len(), 2000);
    // The books close when the body's stream ends, just after its last byte.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let after = scrape(&server).await;
        if after.get("fineport_export_rows_total", &by_service).is_some() {
            break after;
        }
        assert!(tokio::time::Instant::now() < deadline, "the export was never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(after.value("fineport_exports_in_flight", &[]), 0.0);
    assert_eq!(after.value("fineport_export_rows_total", &by_service), 2000.0);
    assert_eq!(
        after.value("fineport_export_bytes_total", &by_service),
        csv.len() as f64
    );
}

async fn metrics_take_a_token_unless_public() {
    // By default: the admin token, nothing else.
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    for token in [None, Some("wrong"), Some(svc.export_token.as_str())] {
        let (status, _, body) = get_metrics(&server, token).await;
        assert_eq!(status, 401, "{token:?}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    assert_eq!(get_metrics(&server, Some(ADMIN_TOKEN)).await.0, 200);
    drop(server);

    // A metrics token opens /metrics and nothing else; the admin token still does.
    let config = Config {
        metrics_access: MetricsAccess::Token {
            sha256: fineport_server::tokens::hash("scraper-token"),
        },
        ..Config::default()
    };
    let server = TestServer::start_with(config, default_now()).await;
    assert_eq!(get_metrics(&server, Some("scraper-token")).await.0, 200);
    assert_eq!(get_metrics(&server, Some(ADMIN_TOKEN)).await.0, 200);
    assert_eq!(get_metrics(&server, None).await.0, 401);
    let resp = server
        .http
        .get(server.url("/admin/v1/services"))
        .bearer_auth("scraper-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    drop(server);

    // Public: anyone.
    let config = Config {
        metrics_access: MetricsAccess::Public,
        ..Config::default()
    };
    let server = TestServer::start_with(config, default_now()).await;
    let (status, _, text) = get_metrics(&server, None).await;
    assert_eq!(status, 200);
    parse_exposition(&text);
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total A help.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n,}\",y=\"\"} 3\n\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let samples = parse_exposition(good);
    assert_eq!(samples[0].labels["x"], "q\"\\\n,}");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!(samples[1].labels["le"], "+Inf");
    assert_eq!(samples[1].value, 1.0);
    for bad in [
        "a 1",                                  // no TYPE
        "# TYPE a counter\na{x=\"1} 1",         // unterminated value
        "# TYPE a counter\na{x=1} 1",           // unquoted
        "# TYPE a counter\na{x=\"\\t\"} 1",     // unknown escape
        "# TYPE a counter\na 1 2 3",            // extra field
        "# TYPE a counter\na one",              // not a number
        "# TYPE a counter\n# TYPE a counter\n", // TYPE twice
        "# TYPE 1a counter\n",                  // bad name
        "# COMMENT a\n",                        // unknown comment
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}
