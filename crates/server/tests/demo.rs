//! `serve --demo`: the demo service is created once, filled through the
//! real validation and store path, and its export is a valid CSV with the
//! promised variety (every standard event, items, Korean text, quoting).

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_service_exports_a_month_of_realistic_events() {
    let server = TestServer::start().await;
    let info = fineport_server::demo::ensure_demo(&server.state, server.dir())
        .await
        .expect("demo");
    assert!(info.created);
    assert!(info.events > 10_000, "{} events", info.events);
    let curl = info.curl_command(&server.base);
    assert!(
        curl.contains(&info.export_token) && curl.contains("service_id=demo"),
        "{curl}"
    );

    let svc = Svc {
        id: info.service_id.clone(),
        import_token: info.import_token.clone(),
        export_token: info.export_token.clone(),
    };
    let body = json!({"events_condition_type": "all", "from_date": "2026-10-26", "to_date": "2026-11-25"});
    let resp = server.export(&svc, body).await;
    assert_eq!(resp.status(), 200);
    let (header, rows) = parse_csv(&resp.text().await.unwrap());
    assert_eq!(rows.len(), info.events, "every demo event is in the last 30 days");
    let names: std::collections::BTreeSet<&str> = rows.iter().map(|r| cell(&header, r, "event_name")).collect();
    for standard in fineport_contract::taxonomy::STANDARD_EVENTS {
        assert!(names.contains(standard), "{standard} missing from the demo");
    }
    let all_cells: Vec<&String> = rows.iter().flatten().collect();
    assert!(
        all_cells
            .iter()
            .any(|c| c.chars().any(|ch| ('가'..='힣').contains(&ch))),
        "Korean text"
    );
    assert!(all_cells.iter().any(|c| c.contains('\n')), "a value with a newline");
    assert!(all_cells.iter().any(|c| c.contains('"')), "a value with a quote");
    assert!(
        rows.iter()
            .any(|r| cell(&header, r, "df_items_df_item_id").starts_with('[')),
        "items"
    );

    // The curl the server prints works as pasted.
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&curl)
        .output()
        .await
        .expect("sh");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(
        &header
            .iter()
            .map(|h| {
                if h.contains(',') {
                    format!("\"{h}\"")
                } else {
                    h.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    ));

    // The profile export of the gold audience works as pasted too.
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(info.profile_curl_command(&server.base))
        .output()
        .await
        .expect("sh");
    assert!(out.status.success());
    let (header, rows) = parse_csv(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        header,
        vec![
            "df_external_id",
            "df_membership",
            "df_name",
            "df_push_optin",
            "df_unified_id"
        ]
    );
    assert!(rows.len() > 10, "{} gold members", rows.len());
    assert!(rows.iter().all(|r| cell(&header, r, "df_membership") == "gold"));
    let (_, audiences) = server
        .admin(reqwest::Method::GET, "/admin/v1/services/demo/audiences", None)
        .await;
    assert_eq!(audiences["audiences"].as_array().map(Vec::len), Some(2));

    // A second start finds the service and its tokens.
    let again = fineport_server::demo::ensure_demo(&server.state, server.dir())
        .await
        .expect("demo again");
    assert!(!again.created);
    assert_eq!(again.export_token, info.export_token);
}
