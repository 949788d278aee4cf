//! What the binary's end-to-end tests share: a free loopback port, a
//! `fineport serve --demo` child on it, `fineport admin` against it, and
//! (in `fault_proxy`) a proxy that breaks answers on purpose.
#![allow(dead_code)]

pub mod fault_proxy;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A loopback port free right now (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Reads the stdout (piped) of a `fineport serve` child until it prints
/// `listening on`, and returns all it printed; from then on a thread keeps
/// draining it, so the server never blocks on a full pipe. `Err` with what
/// it printed if its stdout ended first (it stopped).
pub fn wait_until_listening(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.take().expect("a piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("listening on") {
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(printed);
        }
    }
    Err(printed)
}

pub const BIN: &str = env!("CARGO_BIN_EXE_fineport");
pub const ADMIN_TOKEN: &str = "cli-test-admin-token";

pub struct Server {
    pub child: Child,
    pub base: String,
    /// What `serve` printed up to "listening on" (tokens, the demo's curl).
    pub printed: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fineport serve` on `listen` over the data directory `data`, with the
/// test's admin token.
pub fn serve_command(data: &std::path::Path, listen: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", listen])
        .arg("--data")
        .arg(data)
        .env("FINEPORT_ADMIN_TOKEN", ADMIN_TOKEN);
    // The embedded store, whatever the caller's environment says.
    for var in ["FINEPORT_CLICKHOUSE_URL", "FINEPORT_POSTGRES_URL"] {
        command.env_remove(var);
    }
    command
}

/// Starts `fineport serve` (without the demo) on `127.0.0.1:port` over
/// `data` with `extra` flags, its log (stderr, at `RUST_LOG=info`) appended
/// to `log`, and waits for "listening on". `Err` with what it printed when
/// it stopped first (it is reaped then). The same port may be given again
/// once the previous server on it was killed: tokio listens with
/// `SO_REUSEADDR`, so its connections in TIME_WAIT do not block the bind.
pub fn start_server(
    data: &std::path::Path,
    port: u16,
    extra: &[&str],
    log: &std::path::Path,
) -> Result<Server, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the server log");
    let mut child = serve_command(data, &format!("127.0.0.1:{port}"))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn fineport serve");
    match wait_until_listening(&mut child) {
        Ok(printed) => Ok(Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            printed,
        }),
        Err(printed) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(printed)
        }
    }
}

/// Sends `signal` (`libc::SIGTERM`, `libc::SIGKILL`, …) to `child`.
pub fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) with the pid of our own child, not yet reaped.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// Starts `fineport serve --demo` on a free port and waits for "listening on".
pub fn serve(data: &std::path::Path, extra: &[&str]) -> Server {
    let port = free_port();
    let mut child = serve_command(data, &format!("127.0.0.1:{port}"))
        .arg("--demo")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fineport serve");
    let printed =
        wait_until_listening(&mut child).unwrap_or_else(|printed| panic!("serve stopped before listening: {printed}"));
    assert!(
        printed.contains("curl -sS -X POST"),
        "serve --demo prints a curl: {printed}"
    );
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        printed,
    }
}

pub fn admin(server: &Server, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["admin", "--url", &server.base, "--admin-token", ADMIN_TOKEN])
        .args(args)
        .output()
        .expect("run fineport admin");
    let text = if out.status.success() { out.stdout } else { out.stderr };
    (
        out.status.success(),
        serde_json::from_slice(&text).unwrap_or(serde_json::Value::Null),
    )
}

impl Server {
    /// The demo service's export token, as `serve --demo` printed it.
    pub fn demo_token(&self, kind: &str) -> String {
        let prefix = format!("{kind} token");
        self.printed
            .lines()
            .find(|l| l.trim_start().starts_with(&prefix))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no {kind} token in: {}", self.printed))
            .to_owned()
    }
}

/// POSTs `body` to `url` with `token` in `header` (the Import API reads
/// `access_token`, the Export API `Authorization: Bearer`); returns
/// (status, body).
pub fn post(url: String, header: (&str, &str), body: serde_json::Value) -> (u16, String) {
    let (status, _, text) = post_with_headers(url, &[header], body);
    (status, text)
}

/// POSTs `body` as JSON with `headers`; returns (status, headers, body).
pub fn post_with_headers(
    url: String,
    headers: &[(&str, &str)],
    body: serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut req = reqwest::Client::new().post(url).json(&body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.expect("request");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.expect("body"))
    })
}

/// GETs `url`, with `token` as a bearer token if given; returns (status, body).
pub fn get(url: String, token: Option<&str>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    })
}

/// The value of the unlabelled metric `name` in a `/metrics` scrape of
/// `server` (with the admin token).
pub fn metric(server: &Server, name: &str) -> Option<f64> {
    let (status, text) = get(format!("{}/metrics", server.base), Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
