//! The `fineport` binary end to end: `serve --demo` on a real socket, then
//! `fineport admin …` against it, as a user would run them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_fineport");
const ADMIN_TOKEN: &str = "cli-test-admin-token";

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `fineport serve --demo` on a free port and waits for "listening on".
fn serve() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["serve", "--demo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(dir.path())
        .env("FINEPORT_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fineport serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("listening on") {
            break;
        }
    }
    assert!(
        printed.contains("curl -sS -X POST"),
        "serve --demo prints a curl: {printed}"
    );
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

fn admin(server: &Server, args: &[&str]) -> (bool, serde_json::Value) {
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

#[test]
fn serve_demo_then_administer_it_from_the_cli() {
    let server = serve();
    let (ok, list) = admin(&server, &["services", "list"]);
    assert!(ok, "{list}");
    assert_eq!(list["services"][0]["service_id"], "demo");

    let (ok, created) = admin(
        &server,
        &[
            "services",
            "create",
            "--id",
            "shop",
            "--timezone",
            "Asia/Seoul",
            "--export-per-hour",
            "7",
        ],
    );
    assert!(ok, "{created}");
    assert_eq!(created["limits"]["export_per_hour"], 7);
    assert!(created["export_token"].as_str().is_some_and(|t| t.len() == 64));
    let (ok, conflict) = admin(&server, &["services", "create", "--id", "shop"]);
    assert!(!ok);
    assert_eq!(conflict["error"], "conflict");

    let (ok, taxonomy) = admin(
        &server,
        &[
            "taxonomy",
            "add",
            "shop",
            "--event",
            "review",
            "--event-property",
            "stars:Long",
        ],
    );
    assert!(ok, "{taxonomy}");
    assert_eq!(taxonomy["added"]["events"], serde_json::json!(["review"]));
    let (ok, audience) = admin(
        &server,
        &["audiences", "create", "shop", "--name", "vips", "--external-id", "u1"],
    );
    assert!(ok, "{audience}");
    assert_eq!(audience["external_ids"], serde_json::json!(["u1"]));
    let (ok, audiences) = admin(&server, &["audiences", "list", "demo"]);
    assert!(ok);
    assert_eq!(audiences["audiences"].as_array().map(Vec::len), Some(2));

    let (ok, reissued) = admin(&server, &["tokens", "reissue", "shop", "export"]);
    assert!(ok, "{reissued}");
    assert!(reissued["previous_valid_until"].is_string());
    let (ok, _) = admin(&server, &["tokens", "reissue", "shop", "export"]);
    assert!(!ok, "the cool-down refuses a second reissue");
    let (ok, log) = admin(&server, &["requests", "demo", "--limit", "5"]);
    assert!(ok && log["requests"].is_array());
}
