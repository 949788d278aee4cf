//! Connection hygiene over a raw socket: a client that sends nothing, half
//! a request head or half a body, or stops reading its answer, cannot hold
//! a connection (or an export slot) open; connections beyond the cap wait
//! to be accepted; shutdown has a deadline; and a refused request leaves
//! its keep-alive connection usable, or is answered `Connection: close`.

mod common;

use std::time::Duration;

use common::*;
use fineport_server::Config;
use fineport_store::Store;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Generous next to the 300 ms the server is given: the test is about the
/// connection being closed at all, not about when.
const PATIENCE: Duration = Duration::from_secs(15);

async fn quick_server() -> TestServer {
    let config = Config {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    TestServer::start_with(config, default_now()).await
}

/// Everything the server sends until it closes the connection.
async fn until_closed(socket: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut received))
        .await
        .expect("the server must close the connection")
        .expect("read");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_request_heads_are_cut_off() {
    let server = quick_server().await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /api/v1/events?service_id=shop HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    until_closed(&mut silent).await;
    until_closed(&mut half).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let server = quick_server().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_the_bad_request_answer() {
    let server = quick_server().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/events?service_id={} HTTP/1.1\r\nHost: x\r\naccess_token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{{\"events\"",
        svc.id, svc.import_token
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""code":"40000""#), "{answer}");
}

/// Patience for what takes a big import and an export first.
const LONG_PATIENCE: Duration = Duration::from_secs(60);

/// One HTTP/1.1 answer as read off the socket, the chunked encoding undone.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON answer")
    }
}

/// One keep-alive connection driven by hand: requests are written as bytes,
/// answers are read in order.
struct Raw {
    conn: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(server: &TestServer) -> Raw {
        let socket = TcpStream::connect(server.addr).await.expect("connect");
        Raw {
            conn: BufReader::new(socket),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.conn.get_mut().write_all(bytes).await.expect("write the request");
    }

    /// The next answer; panics if the server closes the connection (or
    /// does not answer) first.
    async fn answer(&mut self) -> Answer {
        tokio::time::timeout(PATIENCE, self.read_answer())
            .await
            .expect("the server must answer")
            .expect("the connection must stay open for the answer")
    }

    async fn read_answer(&mut self) -> std::io::Result<Answer> {
        let closed = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the answer");
        let mut line = String::new();
        if self.conn.read_line(&mut line).await? == 0 {
            return Err(closed());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not a status line: {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.conn.read_line(&mut line).await? == 0 {
                return Err(closed());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                line.clear();
                if self.conn.read_line(&mut line).await? == 0 {
                    return Err(closed());
                }
                let size = usize::from_str_radix(line.trim_end(), 16)
                    .map_err(|_| std::io::Error::other(format!("not a chunk size: {line:?}")))?;
                if size == 0 {
                    line.clear();
                    self.conn.read_line(&mut line).await?;
                    break;
                }
                let start = answer.body.len();
                answer.body.resize(start + size + 2, 0);
                self.conn.read_exact(&mut answer.body[start..]).await?;
                answer.body.truncate(start + size);
            }
        } else if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().map_err(std::io::Error::other)?;
            answer.body.resize(length, 0);
            self.conn.read_exact(&mut answer.body).await?;
        } else {
            self.conn.read_to_end(&mut answer.body).await?;
        }
        Ok(answer)
    }

    /// Waits until the server closes the connection (cleanly or with a
    /// reset); panics if it has not within [`PATIENCE`].
    async fn closed(&mut self) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, self.conn.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the server must close the connection");
    }
}

/// A POST request as bytes, with a `Content-Length` of `body`.
fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// An export body of `size` bytes or more: JSON padded with a field the
/// server never reads when it refuses the request. Bigger than what hyper
/// reads together with the request head, so only reading the body makes the
/// connection usable again.
fn padded_export_body(size: usize) -> Vec<u8> {
    json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25",
           "pad": "x".repeat(size)})
    .to_string()
    .into_bytes()
}

fn export_path(svc: &Svc) -> String {
    format!("/api/v1/export/event?service_id={}", svc.id)
}

/// A service with one event on 2026-11-25.
async fn service_with_an_event(server: &TestServer) -> Svc {
    let svc = server.service(json!({"service_id": "shop"})).await;
    let answer = server
        .import(
            &svc,
            events_body("u", vec![event(1, "df_login", "2026-11-25T01:00:00Z", json!({}))]),
        )
        .await;
    assert_eq!(answer["code"], "20000", "{answer}");
    svc
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn one_day() -> Vec<u8> {
    json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"})
        .to_string()
        .into_bytes()
}

/// Asserts a complete CSV export answer holding test event 1.
fn assert_csv_with_event_1(answer: &Answer) {
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = String::from_utf8_lossy(&answer.body);
    assert!(text.contains(&event_id(1)), "{text}");
    assert_eq!(
        answer.header("connection"),
        None,
        "a complete request keeps its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_export_leaves_its_keep_alive_connection_usable() {
    let server = TestServer::start().await;
    let svc = service_with_an_event(&server).await;
    let mut conn = Raw::connect(&server).await;
    conn.send(&post(
        &export_path(&svc),
        &[("Authorization", "Bearer wrong")],
        &padded_export_body(40_000),
    ))
    .await;
    let refused = conn.answer().await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.json()["message"], "unauthorized_token");

    conn.send(&post(
        &export_path(&svc),
        &[("Authorization", &bearer(&svc.export_token))],
        &one_day(),
    ))
    .await;
    assert_csv_with_event_1(&conn.answer().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_import_leaves_its_keep_alive_connection_usable() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    // Never parsed when refused; far more than hyper reads with the head.
    let big = json!({"events": [], "pad": "x".repeat(200_000)})
        .to_string()
        .into_bytes();
    let mut conn = Raw::connect(&server).await;

    conn.send(&post(
        "/api/v1/events?service_id=nosuch",
        &[("access_token", "x")],
        &big,
    ))
    .await;
    let unknown_service = conn.answer().await;
    assert_eq!(unknown_service.json()["code"], "40101", "{unknown_service:?}");

    let path = format!("/api/v1/events?service_id={}", svc.id);
    conn.send(&post(&path, &[("access_token", "wrong")], &big)).await;
    let wrong_token = conn.answer().await;
    assert_eq!(wrong_token.json()["code"], "40201", "{wrong_token:?}");

    let valid = events_body("u", vec![event(1, "df_login", "2026-11-25T01:00:00Z", json!({}))]);
    conn.send(&post(
        &path,
        &[("access_token", &svc.import_token)],
        valid.to_string().as_bytes(),
    ))
    .await;
    let stored = conn.answer().await;
    assert_eq!(stored.json()["code"], "20000", "{stored:?}");
    assert_eq!(stored.header("connection"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_a_refused_one_is_answered() {
    let server = TestServer::start().await;
    let svc = service_with_an_event(&server).await;
    let mut both = post(
        &export_path(&svc),
        &[("Authorization", "Bearer wrong")],
        &padded_export_body(40_000),
    );
    both.extend(post(
        &export_path(&svc),
        &[("Authorization", &bearer(&svc.export_token))],
        &one_day(),
    ));
    let mut conn = Raw::connect(&server).await;
    conn.send(&both).await;
    assert_eq!(conn.answer().await.status, 401);
    assert_csv_with_event_1(&conn.answer().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_body_is_over_the_limit_closes_the_connection() {
    let server = TestServer::start().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    // A body declared far over the 64 KiB export limit, of which only the
    // start is sent: it cannot be read, so the connection cannot be kept.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000\r\n\r\n{{\"pad\":\"",
        export_path(&svc)
    );
    let mut conn = Raw::connect(&server).await;
    conn.send(head.as_bytes()).await;
    conn.send(&[b'x'; 1000]).await;
    let refused = conn.answer().await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
    conn.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_body_stalls_closes_the_connection() {
    let server = quick_server().await;
    let svc = server.service(json!({"service_id": "shop"})).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"pad\":\"",
        export_path(&svc)
    );
    let mut conn = Raw::connect(&server).await;
    conn.send(head.as_bytes()).await;
    let refused = conn.answer().await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
    conn.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_refusal_with_an_unread_body_closes_the_connection() {
    let server = TestServer::start().await;
    let mut conn = Raw::connect(&server).await;
    let auth = bearer(ADMIN_TOKEN);
    conn.send(format!("GET /admin/v1/services HTTP/1.1\r\nHost: test\r\nAuthorization: {auth}\r\n\r\n").as_bytes())
        .await;
    let listed = conn.answer().await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(
        listed.header("connection"),
        None,
        "a complete request keeps its connection"
    );

    // The admin middleware refuses without reading the body: the safety
    // net says so rather than dropping the connection silently.
    conn.send(
        b"POST /admin/v1/services HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer wrong\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"service_id\"",
    )
    .await;
    let refused = conn.answer().await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
    conn.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_export_slot() {
    let config = Config {
        write_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let server = TestServer::start_with(config, default_now()).await;
    let svc = server.service(json!({"service_id": "slow"})).await;
    let (status, v) = server
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/v1/services/{}", svc.id),
            Some(json!({"limits": {"export_concurrency": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    import_big(&server, &svc, 2000).await;
    let day = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});

    // Reads 64 KiB and stops, with a 4 KiB receive buffer: the rest of the
    // ~20 MB waits on the server, in the only export slot.
    let mut stalled = StalledExport::start(&server, &svc, &day).await;

    // Refused (429) while the stalled export holds the slot; answered once
    // the server has given up writing to it.
    let deadline = tokio::time::Instant::now() + LONG_PATIENCE;
    loop {
        let resp = server.export(&svc, day.clone()).await;
        match resp.status().as_u16() {
            200 => {
                let (_, rows) = parse_csv(&resp.text().await.expect("the whole export"));
                assert_eq!(rows.len(), 2000);
                break;
            }
            429 => {}
            other => panic!("unexpected status {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled export never gave its slot back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = wait_for_log(&server, &svc, "client_connection_closed", 1).await;
    assert_eq!(closed[0]["status"], 200);
    let received = stalled.read_until_closed(LONG_PATIENCE).await;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        !ends_with_last_chunk(&received),
        "the cut export must be a broken transfer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let config = Config {
        max_connections: 2,
        ..Config::default()
    };
    let server = TestServer::start_with(config, default_now()).await;
    let health = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut first = Raw::connect(&server).await;
    first.send(health).await;
    assert_eq!(first.answer().await.status, 200);
    let mut second = Raw::connect(&server).await;
    second.send(health).await;
    assert_eq!(second.answer().await.status, 200);

    // Both stay open (keep-alive, idle). The third connection completes in
    // the kernel's backlog, but the server does not take it.
    let mut third = Raw::connect(&server).await;
    third.send(health).await;
    let early = tokio::time::timeout(Duration::from_secs(1), third.read_answer()).await;
    assert!(early.is_err(), "answered beyond the cap: {early:?}");

    drop(first);
    assert_eq!(third.answer().await.status, 200);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stalled_export_at_its_deadline() {
    let config = Config {
        shutdown_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let mut server = TestServer::start_with(config, default_now()).await;
    let svc = server.service(json!({"service_id": "slow"})).await;
    import_big(&server, &svc, 2000).await;
    let day = json!({"events_condition_type": "all", "from_date": "2026-11-25", "to_date": "2026-11-25"});
    let mut stalled = StalledExport::start(&server, &svc, &day).await;

    let stopped = server.stop_within(LONG_PATIENCE).await;
    let stopped = stopped.expect("serve must return once the shutdown deadline has passed");
    stopped.expect("serve ends without an error");

    let received = stalled.read_until_closed(LONG_PATIENCE).await;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        !ends_with_last_chunk(&received),
        "an export cut at shutdown must be a broken transfer"
    );
    // The request log was written before serve returned.
    let log = server
        .faults
        .recent_requests(
            &fineport_contract::ServiceId::parse(&svc.id).expect("service id"),
            100,
            None,
        )
        .await
        .expect("request log");
    assert!(log.iter().any(|e| e.message == "client_connection_closed"), "{log:?}");
}

/// Every answer carries `x-request-id`: the client's own when it is a
/// plain token of at most 64 characters, else one the server made, so a
/// client cannot forge a log line's fields through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_its_request() {
    let server = TestServer::start().await;
    let id_of = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-request-id")
            .map(|v| v.to_str().expect("ASCII").to_owned())
            .expect("x-request-id")
    };
    let made = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let long = "a".repeat(65);
    for path in ["/health", "/no/such/path", "/api/v1/export/event?service_id=none"] {
        let send = |id: Option<&str>| {
            let mut req = if path.starts_with("/api/") {
                server.http.post(server.url(path)).body("{}")
            } else {
                server.http.get(server.url(path))
            };
            if let Some(id) = id {
                req = req.header("x-request-id", id);
            }
            req.send()
        };
        let resp = send(Some("job-7.day_2026-11-25")).await.expect("request");
        assert_eq!(id_of(&resp), "job-7.day_2026-11-25", "{path}");
        let (first, second) = (send(None).await.expect("request"), send(None).await.expect("request"));
        let (first, second) = (id_of(&first), id_of(&second));
        assert!(
            made(&first) && made(&second) && first != second,
            "{path}: {first} {second}"
        );
        for forged in ["a\" outcome=ok", "a b", "", long.as_str(), "é"] {
            let resp = send(Some(forged)).await;
            // Some of these reqwest itself refuses to send.
            if let Ok(resp) = resp {
                assert!(made(&id_of(&resp)), "{path}: {forged:?} was taken");
            }
        }
    }
}
