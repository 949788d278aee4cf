//! Connection hygiene over a raw socket: a client that sends nothing, half
//! a request head or half a body cannot hold a connection open.

mod common;

use std::time::Duration;

use common::*;
use fineport_server::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
