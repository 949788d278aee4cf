//! The web console's server side over real sockets: its files and their
//! headers, sign-in (the cookie's flags, never the token), the admin API
//! through a session (cookie and `X-CSRF-Token` together, never the
//! cookie alone), expiry by the server's clock, sign-out, and the bound
//! on failed sign-ins. The pages themselves are driven in a real browser
//! by `tests/console/` (scripts/test).

mod common;

use common::{TestServer, ADMIN_TOKEN};
use fineport_server::clock::Clock;
use fineport_server::console::session::{FAILURE_WINDOW, MAX_FAILURES, SESSION_LIFETIME};
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A signed-in console: the cookie's value and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

/// The `Set-Cookie` header of an answer.
fn set_cookie(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(SET_COOKIE)
        .expect("a Set-Cookie header")
        .to_str()
        .expect("ASCII")
        .to_owned()
}

async fn sign_in(server: &TestServer, token: &str) -> reqwest::Response {
    server
        .http
        .post(server.url("/console/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("POST /console/session")
}

async fn signed_in(server: &TestServer) -> Session {
    let resp = sign_in(server, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 200);
    let cookie = set_cookie(&resp);
    let value = cookie
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("fineport_console="))
        .expect("the fineport_console cookie")
        .to_owned();
    let body: Value = resp.json().await.expect("JSON");
    Session {
        cookie: value,
        csrf: body["csrf_token"].as_str().expect("csrf_token").to_owned(),
    }
}

/// `GET /console/session` with the given `Cookie` header.
async fn get_session(server: &TestServer, cookie: Option<&str>) -> reqwest::Response {
    let mut req = server.http.get(server.url("/console/session"));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    req.send().await.expect("GET")
}

/// `GET /admin/v1/services` with the given cookie and CSRF header.
async fn list_services(server: &TestServer, cookie: Option<&str>, csrf: Option<&str>) -> (StatusCode, Value) {
    let mut req = server.http.get(server.url("/admin/v1/services"));
    if let Some(c) = cookie {
        req = req.header(COOKIE, format!("other=1; fineport_console={c}"));
    }
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    let resp = req.send().await.expect("GET /admin/v1/services");
    let status = resp.status();
    (status, resp.json().await.expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_files_are_served_with_their_types_and_a_strict_policy() {
    let server = TestServer::start().await;
    for (path, media_type, needle) in [
        ("/console", "text/html", "<main"),
        ("/console/", "text/html", "/console/app.js"),
        ("/console/app.js", "text/javascript", "X-CSRF-Token"),
        ("/console/app.css", "text/css", "@media"),
    ] {
        let resp = server.http.get(server.url(path)).send().await.expect("GET");
        assert_eq!(resp.status(), 200, "{path}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            header("content-type").starts_with(media_type),
            "{path}: {}",
            header("content-type")
        );
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        let body = resp.text().await.expect("text");
        assert!(body.contains(needle), "{path} lacks {needle:?}");
        if media_type == "text/html" {
            // No inline script (the policy would block it anyway): every
            // <script> names its file.
            for tag in body.split("<script").skip(1) {
                assert!(tag.trim_start().starts_with("src="), "an inline script in {path}");
            }
            assert!(!body.contains(" style="), "an inline style in {path}");
        }
    }
    let resp = server
        .http
        .get(server.url("/console/nosuch.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sets_a_strict_http_only_cookie_that_is_never_the_token() {
    let server = TestServer::start().await;
    let resp = sign_in(&server, "not-the-token").await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get(SET_COOKIE).is_none());
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"], "unauthorized");
    assert!(body["detail"].is_string());
    for bad in ["{}", "not json", r#"{"token":"x","more":1}"#] {
        let resp = server
            .http
            .post(server.url("/console/session"))
            .header(CONTENT_TYPE, "application/json")
            .body(bad)
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 400, "{bad}");
    }

    let resp = sign_in(&server, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let cookie = set_cookie(&resp);
    let mut parts = cookie.split("; ");
    let value = parts
        .next()
        .and_then(|kv| kv.strip_prefix("fineport_console="))
        .expect("the session cookie");
    assert_eq!(value.len(), 64, "{cookie}");
    assert!(!cookie.contains(ADMIN_TOKEN), "the cookie holds the token: {cookie}");
    let flags: Vec<&str> = parts.collect();
    assert_eq!(
        flags,
        [
            "Path=/",
            "HttpOnly",
            "SameSite=Strict",
            &format!("Max-Age={}", SESSION_LIFETIME.num_seconds())
        ]
    );
    let body: Value = resp.json().await.expect("JSON");
    let csrf = body["csrf_token"].as_str().expect("csrf_token");
    assert_eq!(csrf.len(), 64);
    assert_ne!(csrf, value);
    let expires = common::at(body["expires_at"].as_str().expect("expires_at"));
    assert_eq!(expires, server.clock.now() + SESSION_LIFETIME);

    // Another sign-in is another session.
    let other = signed_in(&server).await;
    assert_ne!(other.cookie, value);
    assert_ne!(other.csrf, csrf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_the_cookie_only_with_its_csrf_token() {
    let server = TestServer::start().await;
    let s = signed_in(&server).await;
    let other = signed_in(&server).await;
    for (cookie, csrf, why) in [
        (Some(s.cookie.as_str()), None, "X-CSRF-Token"),
        (Some(s.cookie.as_str()), Some("wrong"), "does not match"),
        (Some(s.cookie.as_str()), Some(other.csrf.as_str()), "does not match"),
        (Some(s.csrf.as_str()), Some(s.csrf.as_str()), "sign in again"),
        (None, Some(s.csrf.as_str()), "admin token"),
    ] {
        let (status, body) = list_services(&server, cookie, csrf).await;
        assert_eq!(status, 401, "{cookie:?} {csrf:?}: {body}");
        assert_eq!(body["error"], "unauthorized");
        assert!(body["detail"].as_str().unwrap_or_default().contains(why), "{body}");
    }
    let (status, body) = list_services(&server, Some(&s.cookie), Some(&s.csrf)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["services"], json!([]));

    // Writes too: a service created through the session.
    let resp = server
        .http
        .post(server.url("/admin/v1/services"))
        .header(COOKIE, format!("fineport_console={}", s.cookie))
        .header("x-csrf-token", &s.csrf)
        .json(&json!({"service_id": "shop"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 201);
    let (_, body) = list_services(&server, None, None).await;
    assert_eq!(body["error"], "unauthorized");

    // A reload recovers the CSRF token from the cookie alone.
    let resp = get_session(&server, Some(&format!("fineport_console={}", s.cookie))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["csrf_token"], s.csrf.as_str());
    for cookie in [None, Some("fineport_console=nosuch")] {
        assert_eq!(get_session(&server, cookie).await.status(), 401, "{cookie:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_by_the_servers_clock() {
    let server = TestServer::start().await;
    let s = signed_in(&server).await;
    server.clock.advance(SESSION_LIFETIME - chrono::Duration::seconds(1));
    let (status, _) = list_services(&server, Some(&s.cookie), Some(&s.csrf)).await;
    assert_eq!(status, 200);
    server.clock.advance(chrono::Duration::seconds(1));
    let (status, body) = list_services(&server, Some(&s.cookie), Some(&s.csrf)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("expired"),
        "{body}"
    );
    let resp = get_session(&server, Some(&format!("fineport_console={}", s.cookie))).await;
    assert_eq!(resp.status(), 401);
    assert!(server.state.sessions.is_empty(), "the expired session was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_needs_the_csrf_token_and_ends_the_session() {
    let server = TestServer::start().await;
    let s = signed_in(&server).await;
    let other = signed_in(&server).await;
    let delete = |csrf: Option<&str>| {
        let mut req = server
            .http
            .delete(server.url("/console/session"))
            .header(COOKIE, format!("fineport_console={}", s.cookie));
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    for csrf in [None, Some("wrong"), Some(other.csrf.as_str())] {
        let resp = delete(csrf).await.expect("DELETE");
        assert_eq!(resp.status(), 401, "{csrf:?}");
    }
    let (status, _) = list_services(&server, Some(&s.cookie), Some(&s.csrf)).await;
    assert_eq!(status, 200, "a refused sign-out ends nothing");

    let resp = delete(Some(&s.csrf)).await.expect("DELETE");
    assert_eq!(resp.status(), 204);
    let cookie = set_cookie(&resp);
    assert!(cookie.starts_with("fineport_console=;"), "{cookie}");
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    let (status, _) = list_services(&server, Some(&s.cookie), Some(&s.csrf)).await;
    assert_eq!(status, 401);
    let resp = delete(Some(&s.csrf)).await.expect("DELETE");
    assert_eq!(resp.status(), 401, "signed out twice");
    let (status, _) = list_services(&server, Some(&other.cookie), Some(&other.csrf)).await;
    assert_eq!(status, 200, "the other session lives on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_bounded_per_address() {
    let server = TestServer::start().await;
    for _ in 0..MAX_FAILURES {
        let resp = sign_in(&server, "guess").await;
        assert_eq!(resp.status(), 401);
    }
    // Refused without a look at the token, the right one included.
    for token in ["guess", ADMIN_TOKEN] {
        let resp = sign_in(&server, token).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "60");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"], "too_many_requests");
    }
    // The admin token itself still opens the admin API.
    let resp = server
        .http
        .get(server.url("/admin/v1/services"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    server.clock.advance(FAILURE_WINDOW);
    let resp = sign_in(&server, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 200, "a new window");
}
