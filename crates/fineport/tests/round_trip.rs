//! The clients' round trip (issue: "export from one fineport service,
//! import into another, export again"): `fineport export` of the demo
//! service, `fineport import` of that CSV into a new service with the same
//! taxonomy, `fineport export` of the copy. The event rows are identical
//! except `df_server_datetime` (the copy's receipt time); the user
//! profiles, exported with `df_external_id`, are identical byte for byte.

mod common;

use std::path::Path;
use std::process::Command;

use common::{admin, serve, Server, ADMIN_TOKEN, BIN};

fn fineport(server: &Server, args: &[&str], token: (&str, &str)) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--base-url", &server.base, "--plain"])
        .env(token.0, token.1)
        .env("FINEPORT_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run fineport");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "fineport {args:?} failed:\n{stderr}");
    stderr
}

/// The CSV's header and rows, with the column `drop` blanked.
fn rows(path: &Path, drop: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let skip = header.iter().position(|h| h == drop);
    let rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            r.iter()
                .enumerate()
                .map(|(i, cell)| {
                    if Some(i) == skip {
                        String::new()
                    } else {
                        cell.to_owned()
                    }
                })
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn export_import_export_gives_the_same_rows_but_the_receipt_time() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path(), &[]);
    let demo_export = server.demo_token("export");
    let (ok, demo) = admin(&server, &["services", "show", "demo"]);
    assert!(ok, "{demo}");
    let timezone = demo["timezone"].as_str().unwrap();
    let (ok, copy) = admin(&server, &["services", "create", "--id", "copy", "--timezone", timezone]);
    assert!(ok, "{copy}");
    let (copy_import, copy_export) = (
        copy["import_token"].as_str().unwrap().to_owned(),
        copy["export_token"].as_str().unwrap().to_owned(),
    );
    let dir = tempfile::tempdir().unwrap();
    let taxonomy = dir.path().join("taxonomy.json");
    let (ok, shown) = admin(&server, &["taxonomy", "show", "demo"]);
    assert!(ok);
    std::fs::write(&taxonomy, shown.to_string()).unwrap();
    let (ok, added) = admin(
        &server,
        &["taxonomy", "add", "copy", "--from-file", taxonomy.to_str().unwrap()],
    );
    assert!(ok, "{added}");

    // Events: the demo's 30 days out, into the copy, out again.
    let first = dir.path().join("demo.csv");
    let again = dir.path().join("copy.csv");
    let from_demo = [
        "export",
        "--service",
        "demo",
        "--last",
        "30d",
        "-o",
        first.to_str().unwrap(),
    ];
    let said = fineport(&server, &from_demo, ("FINEPORT_EXPORT_TOKEN", &demo_export));
    let (header, original) = rows(&first, "df_server_datetime");
    assert!(original.len() > 10_000, "the demo's month: {said}");
    // The days, from the summary's rows.
    let range: Vec<&str> = said
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|d| fineport_contract::time::parse_date(d).is_some())
        .collect();
    assert_eq!(range.len(), 30, "{said}");
    let (from, to) = (
        range.iter().min().unwrap().to_string(),
        range.iter().max().unwrap().to_string(),
    );
    let said = fineport(
        &server,
        &["import", "--service", "copy", first.to_str().unwrap()],
        ("FINEPORT_IMPORT_TOKEN", &copy_import),
    );
    let from_copy = [
        "export",
        "--service",
        "copy",
        "--from",
        &from,
        "--to",
        &to,
        "-o",
        again.to_str().unwrap(),
    ];
    fineport(&server, &from_copy, ("FINEPORT_EXPORT_TOKEN", &copy_export));
    let (header_again, copied) = rows(&again, "df_server_datetime");
    assert_eq!(header_again, header);
    assert_eq!(copied.len(), original.len(), "every event once: {said}");
    for (i, (a, b)) in original.iter().zip(&copied).enumerate() {
        assert_eq!(a, b, "row {i} differs beyond df_server_datetime");
    }

    // Profiles (with df_external_id): the same bytes.
    let profiles = dir.path().join("profiles.csv");
    let profiles_again = dir.path().join("profiles-copy.csv");
    let export_profiles = |service: &str, token: &str, out: &Path| {
        let args = [
            "export",
            "--service",
            service,
            "--profiles",
            "--external-id",
            "-o",
            out.to_str().unwrap(),
        ];
        fineport(&server, &args, ("FINEPORT_EXPORT_TOKEN", token));
    };
    export_profiles("demo", &demo_export, &profiles);
    fineport(
        &server,
        &["import", "--service", "copy", "--profiles", profiles.to_str().unwrap()],
        ("FINEPORT_IMPORT_TOKEN", &copy_import),
    );
    export_profiles("copy", &copy_export, &profiles_again);
    let (a, b) = (
        std::fs::read(&profiles).unwrap(),
        std::fs::read(&profiles_again).unwrap(),
    );
    assert!(
        a.len() > 1000 && a == b,
        "profiles differ:\n{}\n---\n{}",
        String::from_utf8_lossy(&a[..a.len().min(400)]),
        String::from_utf8_lossy(&b[..b.len().min(400)])
    );
}
