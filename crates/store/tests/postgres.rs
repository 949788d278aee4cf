//! Cluster mode's PostgreSQL store against a real PostgreSQL.
//!
//! Set `FINEPORT_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:55433/postgres`); each test creates its
//! own database through it (`fp_test_<random>`) and drops it after, so the
//! tests run in parallel. Unset, the tests say they are skipped — unless
//! `CI=true`, where that is a failure.
//!
//! Where both backends implement a rule, the same calls run against
//! DuckDB (in memory) and PostgreSQL and their answers are compared.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use chrono::{TimeZone, Utc};
use fineport_contract::import::Identity;
use fineport_contract::profile::{AudienceFilter, CheckedCondition, ProfileExportPlan, ProfileUpdate};
use fineport_contract::taxonomy::Taxonomy;
use fineport_contract::types::PropertyType;
use fineport_contract::{ServiceId, Tz, Uuid};
use fineport_store::cluster::postgres::Postgres;
use fineport_store::duckdb::DuckDbStore;
use fineport_store::profile_export::SortedIds;
use fineport_store::{
    CatalogChange, CatalogWatch, ExportPart, ExportStream, Limits, RequestLogEntry, Service, Store, StoreError,
    StoreErrorKind, TokenKind, TokenRecord,
};
use futures::StreamExt;
use tokio_postgres::NoTls;

/// A database of one test, dropped (with its connections) when the test ends.
struct TestDb {
    server_url: String,
    name: String,
    url: String,
}

impl TestDb {
    /// A fresh database, or `None` (after saying so) when no PostgreSQL is configured.
    async fn create() -> Option<TestDb> {
        let server_url = fineport_store::testing::service_url(fineport_store::testing::POSTGRES_VAR, "postgres")?;
        let name = fineport_store::testing::TestCluster::database_name();
        let url = fineport_store::cluster::postgres::create_database(&server_url, &name)
            .await
            .expect("create the test database");
        Some(TestDb { server_url, name, url })
    }

    async fn open(&self) -> Postgres {
        Postgres::open(&self.url).await.expect("open the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, sql) = (
            self.server_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        // A runtime of its own: the test's may be gone or busy.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(admin(&url, &sql));
            }
        })
        .join();
    }
}

async fn admin(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to PostgreSQL");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = task.await;
}

fn service_id() -> ServiceId {
    ServiceId::parse("shop").unwrap()
}

fn service(taxonomy_note: &str) -> Service {
    Service {
        service_id: service_id(),
        name: format!("Shop {taxonomy_note}"),
        timezone: "Asia/Seoul".into(),
        export_lookback_days: 0,
        auto_register: true,
        limits: Limits::default(),
        created_at: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
    }
}

fn token(id: &str, kind: TokenKind, created_ms: i64) -> TokenRecord {
    TokenRecord {
        token_id: id.into(),
        service_id: service_id(),
        kind,
        hash: format!("hash-{id}"),
        created_at: Utc.timestamp_millis_opt(created_ms).unwrap(),
        by_reissue: false,
        valid_until: None,
        revoked: false,
        reason: None,
    }
}

fn taxonomy() -> Taxonomy {
    let mut t = Taxonomy::default();
    t.events.insert("purchase".into());
    t.event_properties.insert("price".into(), PropertyType::Double);
    t.item_properties.insert("sku".into(), PropertyType::String);
    for (name, ty) in [
        ("grade", PropertyType::String),
        ("age", PropertyType::Long),
        ("tags", PropertyType::StringArray),
    ] {
        t.user_properties.insert(name.into(), ty);
    }
    t
}

fn identity(external_id: Option<&str>, email: Option<&str>, phone_no: Option<&str>) -> Identity {
    Identity {
        external_id: external_id.map(Into::into),
        email: email.map(Into::into),
        phone_no: phone_no.map(Into::into),
        ..Identity::default()
    }
}

async fn unified_profile_count(db: &TestDb) -> i64 {
    let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .query_one("SELECT count(*) FROM profiles", &[])
        .await
        .unwrap()
        .get(0)
}

/// The whole CSV of an export, or its error.
async fn collect(mut stream: ExportStream) -> Result<(Vec<u8>, u64), StoreError> {
    let mut out = BytesMut::new();
    while let Some(part) = stream.next().await {
        match part? {
            ExportPart::Chunk(chunk) => out.extend_from_slice(&chunk),
            ExportPart::End(summary) => {
                assert_eq!(summary.bytes, out.len() as u64);
                return Ok((out.to_vec(), summary.rows));
            }
        }
    }
    panic!("the export ended without End");
}

fn plan(with_external_id: bool, properties: &[&str]) -> ProfileExportPlan {
    let all = taxonomy().user_properties;
    ProfileExportPlan {
        with_external_id,
        properties: properties.iter().map(|n| ((*n).to_owned(), all[*n])).collect(),
        audience: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_round_trip_and_conflicts() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    // Migrations are idempotent: a second process opens the same database.
    let other = db.open().await;
    let tokens = vec![
        token("t1", TokenKind::Import, 1_000),
        token("t2", TokenKind::Export, 2_000),
    ];
    pg.create_service(&service("a"), &tokens, &taxonomy()).await.unwrap();
    let err = other
        .create_service(&service("b"), &[], &Taxonomy::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Conflict);

    let mut changed = service("renamed");
    changed.limits.export_per_hour = 7;
    pg.update_service(&changed).await.unwrap();
    let mut missing = service("x");
    missing.service_id = ServiceId::parse("nowhere").unwrap();
    assert_eq!(
        pg.update_service(&missing).await.unwrap_err().kind,
        StoreErrorKind::NotFound
    );

    let mut reissued = tokens[1].clone();
    reissued.valid_until = Some(Utc.timestamp_millis_opt(9_000).unwrap());
    let fresh = TokenRecord {
        by_reissue: true,
        reason: Some("leaked in a CI log".into()),
        ..token("t3", TokenKind::Export, 3_000)
    };
    pg.save_tokens(&[reissued.clone(), fresh.clone()]).await.unwrap();

    let mut additions = fineport_contract::taxonomy::TaxonomyDoc::default();
    additions.events.push("refund".into());
    pg.register(&service_id(), &additions).await.unwrap();
    pg.register(&service_id(), &additions).await.unwrap();

    let audience = fineport_contract::profile::Audience {
        id: "vip001".into(),
        name: "VIPs".into(),
        external_ids: Some(vec!["kim".into()]),
        rule: None,
    };
    pg.save_audience(&service_id(), &audience).await.unwrap();
    pg.save_audience(&service_id(), &audience).await.unwrap();
    pg.set_setting("admin_token_hash", "abc").await.unwrap();
    pg.set_setting("admin_token_hash", "def").await.unwrap();

    let catalog = other.load_catalog().await.unwrap();
    assert_eq!(catalog.services, vec![changed]);
    assert_eq!(catalog.tokens, vec![tokens[0].clone(), reissued, fresh]);
    let mut expected = taxonomy();
    expected.events.insert("refund".into());
    assert_eq!(catalog.taxonomies[&service_id()], expected);
    assert_eq!(catalog.audiences, vec![(service_id(), audience)]);
    assert_eq!(other.setting("admin_token_hash").await.unwrap().as_deref(), Some("def"));
    assert_eq!(other.setting("nothing").await.unwrap(), None);

    // One service's part: the same records (the only service here).
    let one = other.load_service(&service_id()).await.unwrap();
    assert_eq!(
        (one.services, one.tokens, one.taxonomies, one.audiences),
        (catalog.services, catalog.tokens, catalog.taxonomies, catalog.audiences)
    );
    let none = other.load_service(&ServiceId::parse("nowhere").unwrap()).await.unwrap();
    assert!(none.services.is_empty() && none.tokens.is_empty() && none.taxonomies.is_empty());

    assert!(pg.delete_audience(&service_id(), "vip001").await.unwrap());
    assert!(!pg.delete_audience(&service_id(), "vip001").await.unwrap());
}

/// The next change of `watch`, within a generous bound (a missing one
/// fails rather than hangs).
async fn next_change(watch: &mut CatalogWatch) -> CatalogChange {
    tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
        .await
        .expect("a catalog change within 10 s")
        .expect("the watch does not end")
}

fn other_service(id: &str) -> Service {
    Service {
        service_id: ServiceId::parse(id).unwrap(),
        ..service(id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_watch_hears_each_committed_change_of_every_process() {
    let Some(db) = TestDb::create().await else { return };
    let (watcher, writer) = (db.open().await, db.open().await);
    let mut watch = watcher.watch_catalog().await.unwrap();
    assert_eq!(
        next_change(&mut watch).await,
        CatalogChange::Resync,
        "first, once listening"
    );
    let shop = CatalogChange::Service(service_id());

    writer.create_service(&service("a"), &[], &taxonomy()).await.unwrap();
    assert_eq!(next_change(&mut watch).await, shop);
    writer.update_service(&service("b")).await.unwrap();
    assert_eq!(next_change(&mut watch).await, shop);
    writer
        .save_tokens(&[token("t1", TokenKind::Import, 1_000)])
        .await
        .unwrap();
    assert_eq!(next_change(&mut watch).await, shop);
    let mut additions = fineport_contract::taxonomy::TaxonomyDoc::default();
    additions.events.push("refund".into());
    writer.register(&service_id(), &additions).await.unwrap();
    assert_eq!(next_change(&mut watch).await, shop);
    let audience = fineport_contract::profile::Audience {
        id: "vip001".into(),
        name: "VIPs".into(),
        external_ids: Some(vec!["kim".into()]),
        rule: None,
    };
    writer.save_audience(&service_id(), &audience).await.unwrap();
    assert_eq!(next_change(&mut watch).await, shop);
    assert!(writer.delete_audience(&service_id(), "vip001").await.unwrap());
    assert_eq!(next_change(&mut watch).await, shop);

    // What changed nothing or was rolled back is never announced: the next
    // change heard is the one of another service made after them.
    assert!(!writer.delete_audience(&service_id(), "vip001").await.unwrap());
    writer
        .create_service(&service("again"), &[], &taxonomy())
        .await
        .unwrap_err();
    writer.update_service(&other_service("nowhere")).await.unwrap_err();
    // The watcher's own writes are announced to it as well.
    watcher
        .create_service(&other_service("mall"), &[], &taxonomy())
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut watch).await,
        CatalogChange::Service(ServiceId::parse("mall").unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_connection_is_killed_listens_again_and_resyncs() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    let mut watch = pg.watch_catalog().await.unwrap();
    assert_eq!(next_change(&mut watch).await, CatalogChange::Resync);
    admin(
        &db.url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
    )
    .await;
    assert_eq!(next_change(&mut watch).await, CatalogChange::Resync, "listening again");
    pg.create_service(&service("a"), &[], &taxonomy()).await.unwrap();
    assert_eq!(next_change(&mut watch).await, CatalogChange::Service(service_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_lock_of_a_service_is_held_by_one_process_at_a_time() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    let shop = service_id();
    let held = a.lock_catalog(&shop).await.unwrap();
    let waiting = {
        let (b, shop) = (b.clone(), shop.clone());
        tokio::spawn(async move { b.lock_catalog(&shop).await })
    };
    // Another service's lock is free meanwhile.
    b.lock_catalog(&ServiceId::parse("mall").unwrap())
        .await
        .unwrap()
        .release()
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "granted while another process holds it");
    held.release().await;
    let second = waiting.await.unwrap().unwrap();
    // A lock dropped without being given back (a cancelled change) is
    // given back by closing its connection.
    drop(second);
    let third = tokio::time::timeout(std::time::Duration::from_secs(10), a.lock_catalog(&shop))
        .await
        .expect("a dropped lock is given back")
        .unwrap();
    third.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_an_internal_error() {
    let err = Postgres::open("postgres://postgres@127.0.0.1:1/none")
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, StoreErrorKind::Internal, "{err}");
}

type Upsert<'a> = Box<dyn Fn(Identity) -> Pin<Box<dyn Future<Output = String> + Send + 'a>> + 'a>;
type Delete<'a> = Box<dyn Fn(&'static str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> + 'a>;

/// The identity cases of SPEC §1, run through `upsert` and `delete`:
/// answers each case's profile as a label (`p0`, `p1`, … in order of
/// first appearance), so that two storages can be compared.
async fn identity_cases(upsert: Upsert<'_>, delete: Delete<'_>) -> Vec<String> {
    let mut labels: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    let mut label = |uid: String| {
        let n = labels.len();
        out.push(labels.entry(uid).or_insert_with(|| format!("p{n}")).clone());
    };
    // Anonymous by email, then identified: the anonymous profile takes the external_id.
    label(upsert(identity(None, Some("kim@x"), None)).await);
    label(upsert(identity(Some("kim"), Some("kim@x"), None)).await);
    // The email moves to another external_id; lookups without one follow it.
    label(upsert(identity(Some("lee"), Some("kim@x"), None)).await);
    label(upsert(identity(None, Some("kim@x"), None)).await);
    label(upsert(identity(Some("kim"), None, None)).await);
    // Lookup order: email before phone_no.
    label(upsert(identity(None, None, Some("010"))).await);
    label(upsert(identity(None, Some("kim@x"), Some("010"))).await);
    // A phone-only anonymous profile is merged through its phone.
    label(upsert(identity(Some("park"), None, Some("010"))).await);
    // Deleted, then re-created: a new profile.
    assert!(delete("kim").await);
    assert!(!delete("kim").await);
    label(upsert(identity(Some("kim"), None, None)).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_resolution_is_the_same_on_both_storages() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    let duck = DuckDbStore::open_in_memory().unwrap();
    let sid = service_id();
    duck.create_service(&service("d"), &[], &taxonomy()).await.unwrap();
    pg.create_service(&service("p"), &[], &taxonomy()).await.unwrap();
    let on_duck = identity_cases(
        Box::new(|i| Box::pin(async { duck.upsert_identity(&sid, i).await.unwrap() })),
        Box::new(|e| Box::pin(async { duck.delete_profile(&sid, e).await.unwrap() })),
    )
    .await;
    let on_pg = identity_cases(
        Box::new(|i| Box::pin(async { pg.upsert_identity(&sid, i).await.unwrap() })),
        Box::new(|e| Box::pin(async { pg.delete_profile(&sid, e).await.unwrap() })),
    )
    .await;
    assert_eq!(on_duck, ["p0", "p0", "p1", "p1", "p0", "p2", "p1", "p2", "p3"]);
    assert_eq!(on_pg, on_duck);
}

type TryUpsert<'a> =
    Box<dyn Fn(&'static str, Identity) -> Pin<Box<dyn Future<Output = Result<String, StoreError>> + Send + 'a>> + 'a>;

const U: &str = "0b4e6f0c-1f3a-4c33-9a53-5c8f1b2d3e4f";
const V: &str = "7d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";
const W: &str = "11111111-2222-4333-8444-555555555555";

fn by_uid(uid: &str, external_id: Option<&str>) -> Identity {
    Identity {
        df_unified_id: Some(Uuid::try_parse(uid).unwrap()),
        external_id: external_id.map(Into::into),
        ..Identity::default()
    }
}

/// fineport's decision "D" (`df_unified_id` on the Import API) run through
/// `upsert` on services `shop` and `mall`: each case's unified id, or
/// `Err` for a refusal (which must be an `Invalid` error).
async fn unified_id_cases(upsert: TryUpsert<'_>) -> Vec<Result<String, ()>> {
    let mut out = Vec::new();
    let mut case = |answer: Result<String, StoreError>| {
        out.push(answer.map_err(|e| assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}")));
    };
    // Created with exactly that id; again: the same.
    case(upsert("shop", by_uid(U, None)).await);
    case(upsert("shop", by_uid(U, None)).await);
    // The anonymous U takes a free external_id, which then leads to U.
    case(upsert("shop", by_uid(U, Some("kim"))).await);
    case(upsert("shop", identity(Some("kim"), None, None)).await);
    case(upsert("shop", by_uid(U, Some("kim"))).await);
    // A new V created holding a free external_id.
    case(upsert("shop", by_uid(V, Some("lee"))).await);
    // Conflicts: U holds kim; kim belongs to U (V existing, W not).
    case(upsert("shop", by_uid(U, Some("lee"))).await);
    case(upsert("shop", by_uid(V, Some("kim"))).await);
    case(upsert("shop", by_uid(W, Some("kim"))).await);
    // The same U in another service: another profile, free to hold lee.
    case(upsert("mall", by_uid(U, Some("lee"))).await);
    case(upsert("mall", identity(Some("lee"), None, None)).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_ids_name_profiles_the_same_on_both_storages() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    let duck = DuckDbStore::open_in_memory().unwrap();
    for svc in [service("d"), other_service("mall")] {
        duck.create_service(&svc, &[], &taxonomy()).await.unwrap();
        pg.create_service(&svc, &[], &taxonomy()).await.unwrap();
    }
    let sid = |s: &str| ServiceId::parse(s).unwrap();
    let on_duck = unified_id_cases(Box::new(|s, i| {
        let duck = &duck;
        Box::pin(async move { duck.upsert_identity(&sid(s), i).await })
    }))
    .await;
    let on_pg = unified_id_cases(Box::new(|s, i| {
        let pg = &pg;
        Box::pin(async move { pg.upsert_identity(&sid(s), i).await })
    }))
    .await;
    let ok = |uid: &str| Ok(uid.to_owned());
    assert_eq!(
        on_duck,
        [
            ok(U),
            ok(U),
            ok(U),
            ok(U),
            ok(U),
            ok(V),
            Err(()),
            Err(()),
            Err(()),
            ok(U),
            ok(U)
        ]
    );
    assert_eq!(on_pg, on_duck);

    // A batch of profile updates whose second one conflicts stores nothing.
    let update = |identity: Identity, grade: &str| ProfileUpdate {
        identity,
        properties: vec![("grade".into(), grade.into())],
        request_ms: 10,
    };
    let batch = vec![
        update(by_uid(W, Some("park")), "gold"),
        update(by_uid(W, Some("kim")), "gold"),
    ];
    let err = duck.update_profiles(&sid("shop"), batch.clone()).await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Invalid, "{err}");
    let err = pg.update_profiles(&sid("shop"), batch).await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Invalid, "{err}");
    let batch = vec![
        update(by_uid(U, None), "gold"),
        update(by_uid(V, Some("lee")), "silver"),
    ];
    duck.update_profiles(&sid("shop"), batch.clone()).await.unwrap();
    pg.update_profiles(&sid("shop"), batch).await.unwrap();

    // The profile exports: exactly these ids, the same bytes on both.
    for (service, expected) in [
        (
            "shop",
            format!("df_external_id,df_unified_id,grade\nkim,{U},gold\nlee,{V},silver\n"),
        ),
        ("mall", format!("df_external_id,df_unified_id,grade\nlee,{U},\n")),
    ] {
        let plan = plan(true, &["grade"]);
        let d = collect(duck.export_profiles(&sid(service), Tz::UTC, &plan, None).await.unwrap())
            .await
            .unwrap();
        let p = collect(
            pg.export_profiles(&sid(service), Tz::UTC, &plan, None, Vec::new())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&d.0), expected, "{service}");
        assert_eq!(String::from_utf8_lossy(&p.0), expected, "{service}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_from_two_processes_never_split_a_user() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    a.create_service(&service("a"), &[], &taxonomy()).await.unwrap();
    let sid = service_id();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let sid = sid.clone();
        // Half anonymous (email only), half identified: all one user.
        let id = if i % 4 < 2 {
            identity(None, Some("kim@x"), None)
        } else {
            identity(Some("kim"), Some("kim@x"), None)
        };
        tasks.push(tokio::spawn(async move { store.upsert_identity(&sid, id).await }));
    }
    let mut uids = Vec::new();
    for task in tasks {
        uids.push(task.await.unwrap().unwrap());
    }
    uids.dedup();
    assert_eq!(uids.len(), 1, "{uids:?}");
    assert_eq!(unified_profile_count(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_property_wins_under_concurrency() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    a.create_service(&service("a"), &[], &taxonomy()).await.unwrap();
    let sid = service_id();
    let mut tasks = Vec::new();
    // Request times out of order; the one at 1_000_000 + 37 is the newest.
    for i in 0..40i64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let sid = sid.clone();
        let ms = 1_000_000 + (i * 17) % 41;
        let update = ProfileUpdate {
            identity: identity(Some("kim"), None, None),
            properties: vec![("grade".into(), format!("g{ms}"))],
            request_ms: ms,
        };
        tasks.push(tokio::spawn(
            async move { store.update_profiles(&sid, vec![update]).await },
        ));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let newest = (0..40i64).map(|i| 1_000_000 + (i * 17) % 41).max().unwrap();
    let (csv, rows) = collect(
        a.export_profiles(&sid, Tz::UTC, &plan(true, &["grade"]), None, Vec::new())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(rows, 1);
    let text = String::from_utf8(csv).unwrap();
    assert!(text.starts_with("df_external_id,df_unified_id,grade\nkim,"), "{text}");
    assert!(text.ends_with(&format!(",g{newest}\n")), "{text}");
    // An older update after the fact changes nothing.
    let old = ProfileUpdate {
        identity: identity(Some("kim"), None, None),
        properties: vec![("grade".into(), "old".into())],
        request_ms: 5,
    };
    b.update_profiles(&sid, vec![old]).await.unwrap();
    let (again, _) = collect(
        a.export_profiles(&sid, Tz::UTC, &plan(true, &["grade"]), None, Vec::new())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8(again).unwrap(), text);
}

/// The callers' clock in the memo tests: before every event time used, so
/// no memo expires whatever today's date.
const NOW_MS: i64 = 0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_all_get_the_first_correction() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    let sid = service_id();
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let mut tasks = Vec::new();
    for caller in 0..10i64 {
        let store = if caller % 2 == 0 { a.clone() } else { b.clone() };
        let (sid, ids) = (sid.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            // Each caller proposes its own correction, ids in its own order.
            let mut proposals: Vec<(Uuid, i64, i64)> =
                ids.iter().map(|id| (*id, 1_000 + caller, 9_000_000_000_000)).collect();
            proposals.rotate_left(caller as usize * 5);
            store.first_corrections(&sid, &proposals, NOW_MS).await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().unwrap());
    }
    assert_eq!(answers[0].len(), ids.len());
    assert!(answers.iter().all(|a| *a == answers[0]));
    // Later callers get the same; another service has its own memo.
    let late = a.first_corrections(&sid, &[(ids[0], 99, 0)], NOW_MS).await.unwrap();
    assert_eq!(late[&ids[0]], answers[0][&ids[0]]);
    let elsewhere = ServiceId::parse("other").unwrap();
    assert_eq!(
        a.first_corrections(&elsewhere, &[(ids[0], 99, 0), (ids[0], 98, 0)], NOW_MS)
            .await
            .unwrap()[&ids[0]],
        99
    );
    assert!(a.first_corrections(&sid, &[], NOW_MS).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_export_has_the_bytes_of_duckdb() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    let duck = DuckDbStore::open_in_memory().unwrap();
    let sid = service_id();
    duck.create_service(&service("d"), &[], &taxonomy()).await.unwrap();
    pg.create_service(&service("p"), &[], &taxonomy()).await.unwrap();

    // The same calls on both; profiles get random ids, so PostgreSQL's are
    // then renamed to DuckDB's to compare bytes (order included).
    let people = [
        identity(Some("kim"), Some("kim@x"), None),
        identity(Some("lee, \"the\" one"), None, Some("010")),
        identity(None, Some("anon@x"), None),
        identity(Some("park"), None, None),
        identity(Some("choi"), None, None),
    ];
    let mut renames = Vec::new();
    for person in &people {
        let d = duck.upsert_identity(&sid, person.clone()).await.unwrap();
        let p = pg.upsert_identity(&sid, person.clone()).await.unwrap();
        renames.push((p, d));
    }
    let updates = vec![
        ProfileUpdate {
            identity: people[0].clone(),
            properties: vec![("grade".into(), "gold".into()), ("age".into(), "41".into())],
            request_ms: 10,
        },
        ProfileUpdate {
            identity: people[1].clone(),
            properties: vec![
                ("grade".into(), "line\nbreak, \"quoted\"".into()),
                ("tags".into(), "[\"a\",\"b\"]".into()),
            ],
            request_ms: 10,
        },
        ProfileUpdate {
            identity: identity(None, Some("anon@x"), None),
            properties: vec![("grade".into(), "silver".into()), ("age".into(), "한국어".into())],
            request_ms: 10,
        },
        ProfileUpdate {
            identity: people[0].clone(),
            properties: vec![("grade".into(), "older".into())],
            request_ms: 9,
        },
        ProfileUpdate {
            identity: people[4].clone(),
            properties: vec![("grade".into(), "gold".into())],
            request_ms: 10,
        },
    ];
    duck.update_profiles(&sid, updates.clone()).await.unwrap();
    pg.update_profiles(&sid, updates).await.unwrap();
    rename_profiles(&db, &renames).await;

    let gold = AudienceFilter::All(vec![CheckedCondition::Property {
        property: "grade".into(),
        cell: "gold".into(),
    }]);
    let listed = AudienceFilter::ExternalIds(vec!["park".into(), "lee, \"the\" one".into(), "nobody".into()]);
    let cases: Vec<(ProfileExportPlan, Option<&AudienceFilter>)> = vec![
        (plan(true, &["age", "grade", "tags"]), None),
        (plan(false, &["grade"]), None),
        (plan(true, &[]), None),
        (plan(true, &["grade", "tags"]), Some(&gold)),
        (plan(false, &["age"]), Some(&listed)),
    ];
    for (plan, audience) in cases {
        let d = collect(duck.export_profiles(&sid, Tz::UTC, &plan, audience).await.unwrap())
            .await
            .unwrap();
        let p = collect(
            pg.export_profiles(&sid, Tz::UTC, &plan, audience, Vec::new())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&p.0),
            String::from_utf8_lossy(&d.0),
            "{plan:?} {audience:?}"
        );
        assert_eq!(p.1, d.1);
    }
}

/// Gives PostgreSQL's profiles the ids `(from, to)` says.
async fn rename_profiles(db: &TestDb, renames: &[(String, String)]) {
    let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    for (from, to) in renames {
        for table in ["profiles", "identifiers", "user_properties"] {
            client
                .execute(
                    &format!("UPDATE {table} SET unified_id = $2 WHERE unified_id = $1"),
                    &[from, to],
                )
                .await
                .unwrap();
        }
    }
}

fn sorted(ids: &[&str]) -> SortedIds {
    let ids: Vec<Result<String, StoreError>> = ids.iter().map(|s| Ok((*s).to_owned())).collect();
    futures::stream::iter(ids).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_conditions_keep_the_users_in_every_stream() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    pg.create_service(&service("p"), &[], &taxonomy()).await.unwrap();
    let sid = service_id();
    let mut uids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let uid = pg
            .upsert_identity(&sid, identity(Some(name), None, None))
            .await
            .unwrap();
        uids.push((uid, name));
    }
    uids.sort();
    // All gold but the last in id order.
    for (i, (_, name)) in uids.iter().enumerate() {
        let update = ProfileUpdate {
            identity: identity(Some(name), None, None),
            properties: vec![("grade".into(), if i == 3 { "x" } else { "gold" }.into())],
            request_ms: 1,
        };
        pg.update_profiles(&sid, vec![update]).await.unwrap();
    }
    let event = |name: &str| CheckedCondition::Event {
        event: name.into(),
        min_count: 1,
        from_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        to_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
    };
    let audience = AudienceFilter::All(vec![
        event("purchase"),
        CheckedCondition::Property {
            property: "grade".into(),
            cell: "gold".into(),
        },
        event("login"),
    ]);
    // Users 0, 1, 3 purchased; 1, 2, 3 logged in (and ids of no profile); 3 is not gold.
    let u = |i: usize| uids[i].0.as_str();
    let purchased = sorted(&[u(0), u(1), u(3)]);
    let logged_in = sorted(&["0", u(1), u(2), u(3), "zzzz"]);
    let (csv, rows) = collect(
        pg.export_profiles(
            &sid,
            Tz::UTC,
            &plan(true, &[]),
            Some(&audience),
            vec![purchased, logged_in],
        )
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        format!("df_external_id,df_unified_id\n{},{}\n", uids[1].1, uids[1].0)
    );
    // A stream count that does not match the conditions is refused.
    let err = pg
        .export_profiles(&sid, Tz::UTC, &plan(true, &[]), Some(&audience), Vec::new())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, StoreErrorKind::Internal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_streams_in_chunks_and_stops_when_dropped() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    let sid = service_id();
    admin(
        &db.url,
        "INSERT INTO profiles SELECT 'shop', md5(i::text), 'user' || i, 0 FROM generate_series(1, 20000) i",
    )
    .await;
    let mut stream = pg
        .export_profiles(&sid, Tz::UTC, &plan(true, &[]), None, Vec::new())
        .await
        .unwrap();
    let Some(Ok(ExportPart::Chunk(first))) = stream.next().await else {
        panic!("no first chunk")
    };
    assert!(first.starts_with(b"df_external_id,df_unified_id\n"));
    assert!(first.len() >= fineport_store::CHUNK_BYTES && first.len() < 2 * fineport_store::CHUNK_BYTES);
    drop(stream);
    // The export's query and transaction end: no session is left in it.
    let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut left = -1;
    for _ in 0..100 {
        left = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND query LIKE '%FROM profiles p%' AND state <> 'idle'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "the dropped export is still running");
    let (csv, rows) = collect(
        pg.export_profiles(&sid, Tz::UTC, &plan(true, &[]), None, Vec::new())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(rows, 20_000);
    let lines: Vec<&[u8]> = csv.split(|&b| b == b'\n').skip(1).filter(|l| !l.is_empty()).collect();
    assert!(lines
        .windows(2)
        .all(|w| w[0].split(|&b| b == b',').nth(1) < w[1].split(|&b| b == b',').nth(1)));
    // The pool is still usable after the dropped export.
    pg.set_setting("k", "v").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_answers_the_newest_first() {
    let Some(db) = TestDb::create().await else { return };
    let pg = db.open().await;
    let entry = |ms: i64, service: &str, endpoint: &str| RequestLogEntry {
        time: Utc.timestamp_millis_opt(ms).unwrap(),
        service_id: service.into(),
        endpoint: endpoint.into(),
        status: 200,
        message: "ok".into(),
        ip: "127.0.0.1".into(),
        user_agent: "test".into(),
        token_id: Some("t1".into()),
        rows: Some(3),
        bytes: None,
        duration_ms: 12,
    };
    pg.append_request_log(vec![entry(1_000, "shop", "first"), entry(3_000, "shop", "same-ms-1")])
        .await
        .unwrap();
    pg.append_request_log(vec![
        entry(3_000, "shop", "same-ms-2"),
        entry(2_000, "shop", "middle"),
        entry(9_000, "other", "elsewhere"),
    ])
    .await
    .unwrap();
    pg.append_request_log(Vec::new()).await.unwrap();
    let recent = pg.recent_requests(&service_id(), 3, None).await.unwrap();
    let endpoints: Vec<&str> = recent.iter().map(|e| e.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["same-ms-2", "same-ms-1", "middle"]);
    assert_eq!(recent[0], entry(3_000, "shop", "same-ms-2"));
    assert_eq!(pg.recent_requests(&service_id(), 10, None).await.unwrap().len(), 4);
}

/// A database made before tokens kept a reason (no `reason` column) opens:
/// the migration adds the column, its tokens read without one, and a
/// reason saved afterwards is kept.
#[tokio::test]
async fn a_database_from_before_token_reasons_opens_and_keeps_reasons() {
    let Some(db) = TestDb::create().await else { return };
    admin(
        &db.url,
        "CREATE TABLE services (service_id text COLLATE \"C\" PRIMARY KEY, doc text NOT NULL);
         CREATE TABLE tokens (token_id text COLLATE \"C\" PRIMARY KEY, service_id text COLLATE \"C\" NOT NULL,
             kind text NOT NULL, hash text NOT NULL, created_ms bigint NOT NULL, by_reissue boolean NOT NULL,
             valid_until_ms bigint, revoked boolean NOT NULL);
         INSERT INTO tokens VALUES ('old', 'shop', 'export', 'hash-old', 1000, false, NULL, false);",
    )
    .await;
    let pg = db.open().await;
    let old = token("old", TokenKind::Export, 1_000);
    let catalog = pg.load_catalog().await.unwrap();
    assert_eq!(catalog.tokens, vec![old.clone()], "read without a reason");
    let reasoned = TokenRecord {
        reason: Some("rotated by policy".into()),
        ..token("new", TokenKind::Export, 2_000)
    };
    pg.save_tokens(std::slice::from_ref(&reasoned)).await.unwrap();
    drop(pg);
    let catalog = db.open().await.load_catalog().await.unwrap();
    assert_eq!(catalog.tokens, vec![old, reasoned]);
}
