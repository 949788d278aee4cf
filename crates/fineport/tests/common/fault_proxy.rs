//! A loopback HTTP/1.1 proxy in front of a real fineport that breaks
//! answers on purpose, so the clients are tested against the faults they
//! meet in the field rather than against a mock of fineport.
//!
//! Each request is read whole, given to the test's plan (its number, path
//! and body), and then answered as the plan says: passed through, cut
//! after some bytes of the answer, cut just before the final chunk (a body
//! that ends on a row boundary, so only the transport can tell), answered
//! with a 429 carrying DFINERY's rate-limit headers, with a 500, or held
//! for a while first. Every connection serves one request
//! (`Connection: close` both ways), so a fault never leaks into the next.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Pass, but close after this many bytes of the upstream answer
    /// (status line and headers included).
    CutAfter(usize),
    /// Pass everything but the final `0\r\n\r\n` chunk, then close.
    DropFinalChunk,
    /// 429 `too_many_api_requests` with `X-Rate-Limit-Remaining`, a reset
    /// `reset_in` from now and `Retry-After`.
    TooMany {
        remaining: u64,
        reset_in: Duration,
        retry_after: u64,
    },
    /// 429 `too_many_api_requests` without any rate-limit header.
    TooManyBare,
    /// 500 `unknown_error`.
    ServerError,
    /// 200 with an Import API `50000` body.
    ImportInternalError,
    /// Wait this long, then pass.
    Delay(Duration),
    /// Pass this many bytes of the answer, then hold the connection open
    /// this long without sending more (a stalled stream).
    Stall(usize, Duration),
}

/// One request as the plan sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0-based, in the order requests were read.
    pub index: usize,
    /// Path and query.
    pub target: String,
    pub body: String,
}

type Plan = dyn Fn(&Request) -> Fault + Send + Sync;

/// The running proxy; stops accepting when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    plan: Arc<Mutex<Arc<Plan>>>,
    log: Arc<Mutex<Vec<(Request, Fault, SystemTime)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`127.0.0.1:port`) as `plan` says.
    pub fn start(upstream: SocketAddr, plan: impl Fn(&Request) -> Fault + Send + Sync + 'static) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let plan: Arc<Mutex<Arc<Plan>>> = Arc::new(Mutex::new(Arc::new(plan)));
        let counter = Arc::new(Mutex::new(0usize));
        let (log2, stop2, plan2) = (log.clone(), stop.clone(), plan.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let Ok(plan) = plan2.lock().map(|p| p.clone()) else {
                    continue;
                };
                let (log, counter) = (log2.clone(), counter.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &*plan, &log, &counter);
                });
            }
        });
        FaultProxy { addr, plan, log, stop }
    }

    /// Replaces the plan (for connections accepted from now on) and clears
    /// the request log: the same address can play another scenario.
    pub fn set_plan(&self, plan: impl Fn(&Request) -> Fault + Send + Sync + 'static) {
        *self.plan.lock().unwrap() = Arc::new(plan);
        self.log.lock().unwrap().clear();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, with what was done to it and when it arrived.
    pub fn requests(&self) -> Vec<(Request, Fault, SystemTime)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request: head (up to the blank line) and a `Content-Length` body.
fn read_request(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&byte[..n]);
    }
    Ok((head, body))
}

fn serve(
    mut conn: TcpStream,
    upstream: SocketAddr,
    plan: &Plan,
    log: &Mutex<Vec<(Request, Fault, SystemTime)>>,
    counter: &Mutex<usize>,
) -> std::io::Result<()> {
    let (head, body) = read_request(&mut conn)?;
    let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let index = {
        let mut c = counter.lock().map_err(|_| std::io::ErrorKind::Other)?;
        *c += 1;
        *c - 1
    };
    let request = Request {
        index,
        target,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let fault = plan(&request);
    if let Ok(mut log) = log.lock() {
        log.push((request, fault.clone(), SystemTime::now()));
    }
    let canned = |status: &str, headers: String, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    };
    const TOO_MANY: &str = r#"{"result":"fail","message":"too_many_api_requests"}"#;
    let answer = match fault {
        Fault::TooMany {
            remaining,
            reset_in,
            retry_after,
        } => {
            let reset = (SystemTime::now() + reset_in)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let headers = format!(
                "X-Rate-Limit-Limit: 1H\r\nX-Rate-Limit-Remaining: {remaining}\r\nX-Rate-Limit-Reset: {reset}\r\nRetry-After: {retry_after}\r\n"
            );
            Some(canned("429 Too Many Requests", headers, TOO_MANY))
        }
        Fault::TooManyBare => Some(canned("429 Too Many Requests", String::new(), TOO_MANY)),
        Fault::ServerError => Some(canned(
            "500 Internal Server Error",
            String::new(),
            r#"{"result":"fail","message":"unknown_error"}"#,
        )),
        Fault::ImportInternalError => Some(canned(
            "200 OK",
            String::new(),
            r#"{"status":false,"code":"50000","message":"INTERNAL_SERVER_ERROR","data":null}"#,
        )),
        _ => None,
    };
    match answer {
        Some(answer) => conn.write_all(answer.as_bytes())?,
        None => {
            if let Fault::Delay(d) = fault {
                std::thread::sleep(d);
            }
            let mut up = TcpStream::connect(upstream)?;
            // One request per connection: ask upstream to close after it.
            let mut new_head = String::new();
            for line in head.split("\r\n") {
                if line.to_ascii_lowercase().starts_with("connection:") || line.is_empty() {
                    continue;
                }
                new_head.push_str(line);
                new_head.push_str("\r\n");
            }
            new_head.push_str("Connection: close\r\n\r\n");
            up.write_all(new_head.as_bytes())?;
            up.write_all(&body)?;
            let mut answer = Vec::new();
            up.read_to_end(&mut answer)?;
            let keep = match fault {
                Fault::CutAfter(n) => n.min(answer.len()),
                Fault::Stall(..) => 0,
                Fault::DropFinalChunk if answer.ends_with(b"0\r\n\r\n") => answer.len() - 5,
                _ => answer.len(),
            };
            conn.write_all(&answer[..keep])?;
            if let Fault::Stall(n, hold) = fault {
                conn.write_all(&answer[keep.min(n)..n.min(answer.len())])?;
                conn.flush()?;
                std::thread::sleep(hold);
                return Ok(());
            }
        }
    }
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}
