//! The demo service (`fineport serve --demo`, SPEC §5.1): a service `demo`
//! (timezone Asia/Seoul) filled with about 20,000 synthetic events of an
//! online shop over the last 30 days, for about 300 users.
//!
//! The data is built exactly as a client would send it: JSON bodies of at
//! most 100 events for one identity, in the shape of `POST /api/v1/events`
//! (SPEC §4), checked by the same [`validate_events`] the Import API uses,
//! then stored with the receipt time "now", so that every event's
//! `df_correction_datetime` is its own `event_datetime`.
//!
//! What it exercises: all 15 standard `df_` events in a plausible funnel
//! (home → list/search → product → cart → payment → purchase, with
//! wish-lists, shares, refunds, sign-ups, logins and logouts), items with
//! standard and custom item properties, custom events and custom event
//! properties of every taxonomy type, Korean text, values with commas,
//! double quotes and line breaks (CSV quoting), and identities with an
//! `external_id` for most users and an email only for some guests.
//!
//! The generator is seeded: the same clock gives the same events, ids
//! included (demos started at other times differ a little, as the sessions
//! lean towards Seoul evenings and end at the clock's "now").
//!
//! The service's tokens are shown only once by the admin API, so the demo
//! keeps them in `<data>/demo-tokens.json` (mode 0600) to print them again
//! at every start.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use chrono::{DateTime, Duration, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use fineport_contract::import::{validate_events, MAX_EVENTS_PER_REQUEST, MAX_ITEMS_PER_REQUEST};
use fineport_contract::taxonomy::{PropertyDef, TaxonomyDoc};
use fineport_contract::time::today_in;
use fineport_contract::types::PropertyType;
use fineport_contract::ServiceId;
use fineport_contract::Uuid;
use fineport_store::{Limits, Service};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::catalog::CatalogError;
use crate::SharedState;

/// The demo service's id.
pub const DEMO_SERVICE_ID: &str = "demo";
/// The file in the data directory that keeps the demo's tokens.
pub const TOKENS_FILE: &str = "demo-tokens.json";

const TIMEZONE: &str = "Asia/Seoul";
const DAYS: i64 = 30;
const USERS: usize = 300;
const TARGET_EVENTS: usize = 20_000;
const SEED: u64 = 0x00f1_e9a0_2d3e_3010;
/// Batches stored at the same time (the store commits them in groups).
const CONCURRENT_BATCHES: usize = 8;
/// Days of the export the printed `curl` command asks for (ending today).
const CURL_DAYS: i64 = 7;
/// The demo's audiences: gold members, and users who bought 3+ times.
const GOLD_AUDIENCE: &str = "gold01";
const BUYERS_AUDIENCE: &str = "buy3x0";
const NAMES: &[&str] = &[
    "김민준",
    "이서연",
    "박지호",
    "최하은",
    "정도윤",
    "강지우",
    "조서준",
    "윤하린",
    "장예준",
    "임수아",
];
const MEMBERSHIPS: &[&str] = &["gold", "silver", "silver", "bronze", "bronze", "bronze"];
const GENDERS: &[&str] = &["Male", "Female", "Female", "Male", "NonBinary", "Other"];

/// What [`ensure_demo`] did, and what a user needs to try the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoInfo {
    pub service_id: String,
    pub import_token: String,
    pub export_token: String,
    /// Whether the service was created (and filled) by this call.
    pub created: bool,
    /// Events stored by this call (0 when the service existed already).
    pub events: usize,
    /// First day of the export [`DemoInfo::curl_command`] asks for
    /// (today − 6 in the service's timezone).
    pub from_date: NaiveDate,
    /// Last day of that export: today in the service's timezone.
    pub to_date: NaiveDate,
}

impl DemoInfo {
    /// A ready-to-paste `curl` that exports the gold members' profiles
    /// (the demo's `gold01` audience) with their external ids.
    pub fn profile_curl_command(&self, base_url: &str) -> String {
        let body = json!({
            "properties_condition_type": "include",
            "properties": ["df_name", "df_membership", "df_push_optin"],
            "identities_condition_type": "all",
            "audience": GOLD_AUDIENCE,
        });
        self.curl(base_url, "/api/v1/export/userprofile", &body)
    }

    /// A ready-to-paste `curl` that exports the last 7 days of the demo's
    /// events as CSV from the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn curl_command(&self, base_url: &str) -> String {
        let body = json!({
            "events_condition_type": "all",
            "from_date": self.from_date.format("%Y-%m-%d").to_string(),
            "to_date": self.to_date.format("%Y-%m-%d").to_string(),
        });
        self.curl(base_url, "/api/v1/export/event", &body)
    }

    fn curl(&self, base_url: &str, path: &str, body: &Value) -> String {
        format!(
            "curl -sS -X POST '{base}{path}?service_id={id}' \\\n  \
             -H 'Authorization: Bearer {token}' \\\n  \
             -H 'Content-Type: application/json' \\\n  \
             -d '{body}'",
            base = base_url.trim_end_matches('/'),
            id = self.service_id,
            token = self.export_token,
        )
    }
}

/// Creates and fills the `demo` service unless it exists; either way
/// answers its tokens (kept in `<data_dir>/demo-tokens.json`).
pub async fn ensure_demo(state: &SharedState, data_dir: &Path) -> anyhow::Result<DemoInfo> {
    let now = state.clock.now();
    let (import_token, export_token, tz, created, events) = match state.catalog.service(DEMO_SERVICE_ID) {
        Some(view) => {
            let (import_token, export_token) = read_tokens(data_dir)?;
            (import_token, export_token, view.timezone, false, 0)
        }
        None => {
            let tz: Tz = TIMEZONE.parse().map_err(|e| anyhow!("timezone {TIMEZONE}: {e}"))?;
            let (import_token, export_token) = create(state, data_dir, now).await?;
            let events = fill(state, now, tz).await?;
            (import_token, export_token, tz, true, events)
        }
    };
    let to_date = today_in(tz, now);
    let from_date = to_date - Duration::days(CURL_DAYS - 1);
    Ok(DemoInfo {
        service_id: DEMO_SERVICE_ID.to_owned(),
        import_token,
        export_token,
        created,
        events,
        from_date,
        to_date,
    })
}

fn catalog_error(e: CatalogError) -> anyhow::Error {
    match e {
        CatalogError::NotFound(what) => anyhow!("{what}"),
        CatalogError::Conflict(why) => anyhow!("conflict: {why}"),
        CatalogError::Invalid(why) => anyhow!("invalid: {why}"),
        CatalogError::Store(e) => anyhow::Error::new(e).context("the store failed"),
    }
}

/// Creates the service, keeps its tokens, registers the custom taxonomy.
async fn create(state: &SharedState, data_dir: &Path, now: DateTime<Utc>) -> anyhow::Result<(String, String)> {
    let id = ServiceId::parse(DEMO_SERVICE_ID)?;
    let service = Service {
        service_id: id.clone(),
        name: "Demo shop".to_owned(),
        timezone: TIMEZONE.to_owned(),
        export_lookback_days: 30,
        auto_register: false,
        limits: Limits::default(),
        created_at: now,
    };
    let (import_token, export_token) = state
        .catalog
        .create_service(service)
        .await
        .map_err(catalog_error)
        .context("creating the demo service")?;
    // Kept before anything else can fail: the tokens are shown only once.
    write_tokens(data_dir, &import_token, &export_token)?;
    state
        .catalog
        .register(&id, &taxonomy())
        .await
        .map_err(catalog_error)
        .context("registering the demo taxonomy")?;
    Ok((import_token, export_token))
}

/// Generates, validates and stores the events. Returns how many were stored.
async fn fill(state: &SharedState, now: DateTime<Utc>, tz: Tz) -> anyhow::Result<usize> {
    let id = ServiceId::parse(DEMO_SERVICE_ID)?;
    let taxonomy = state
        .catalog
        .service(DEMO_SERVICE_ID)
        .ok_or_else(|| anyhow!("the demo service vanished"))?
        .taxonomy;
    let generator = Generator::new(now, tz);
    let profiles = generator.profiles();
    let bodies = generator.bodies();
    let mut batches = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        let batch = validate_events(body, &taxonomy, false)
            .map_err(|r| anyhow!("demo batch {i} is invalid ({}): {:?}", r.code.code(), r.problems))?;
        batches.push(batch);
    }
    let received_at_ms = now.timestamp_millis();
    let store = &state.store;
    let mut results = futures::stream::iter(batches)
        .map(|batch| store.insert_events(&id, batch, received_at_ms))
        .buffer_unordered(CONCURRENT_BATCHES);
    let mut events = 0;
    while let Some(result) = results.next().await {
        events += result.context("storing demo events")?.events;
    }
    tracing::info!(events, batches = bodies.len(), "demo events stored");
    for chunk in profiles.chunks(fineport_contract::profile::MAX_PROFILES_PER_REQUEST) {
        let batch = fineport_contract::profile::validate_profiles(&Value::Array(chunk.to_vec()), &taxonomy, false)
            .map_err(|r| anyhow!("demo profiles are invalid ({}): {:?}", r.code.code(), r.problems))?;
        store
            .update_profiles(&id, batch.updates)
            .await
            .context("storing demo profiles")?;
    }
    let today = today_in(tz, now);
    let audiences = [
        json!({"id": GOLD_AUDIENCE, "name": "Gold members",
               "rule": {"all": [{"property": "df_membership", "equals": "gold"}]}}),
        json!({"id": BUYERS_AUDIENCE, "name": "Bought 3+ times in the last 30 days",
               "rule": {"all": [{"event": "df_purchase", "min_count": 3,
                                 "from_date": (today - Duration::days(DAYS - 1)).to_string(), "to_date": today.to_string()}]}}),
    ];
    for audience in audiences {
        let audience = serde_json::from_value(audience)?;
        state
            .catalog
            .create_audience(&id, audience)
            .await
            .map_err(catalog_error)?;
    }
    tracing::info!(profiles = profiles.len(), "demo profiles and audiences stored");
    Ok(events)
}

fn tokens_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKENS_FILE)
}

fn write_tokens(data_dir: &Path, import_token: &str, export_token: &str) -> anyhow::Result<()> {
    let path = tokens_path(data_dir);
    let text = serde_json::to_string_pretty(&json!({"import_token": import_token, "export_token": export_token}))?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        // The mode above applies only to a new file.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read_tokens(data_dir: &Path) -> anyhow::Result<(String, String)> {
    let path = tokens_path(data_dir);
    let explain = || {
        format!(
            "the demo service exists but its tokens cannot be read from {}; tokens are stored hashed only, so \
             they cannot be shown again. Delete the data directory {} to create the demo afresh, or issue new \
             tokens with `fineport admin tokens reissue demo import|export`",
            path.display(),
            data_dir.display()
        )
    };
    let text = std::fs::read_to_string(&path).with_context(explain)?;
    let json: Value = serde_json::from_str(&text).with_context(explain)?;
    let token = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
    match (token("import_token"), token("export_token")) {
        (Some(import_token), Some(export_token)) => Ok((import_token, export_token)),
        _ => Err(anyhow!("{} lacks import_token or export_token", path.display())).with_context(explain),
    }
}

/// The custom names of the demo: two custom events and event properties of
/// every type, and two custom item properties.
fn taxonomy() -> TaxonomyDoc {
    let def = |name: &str, ty| PropertyDef {
        name: name.to_owned(),
        ty,
    };
    TaxonomyDoc {
        events: vec!["view_banner".into(), "apply_coupon".into(), "write_review".into()],
        event_properties: vec![
            def("banner_id", PropertyType::String),
            def("banner_position", PropertyType::Long),
            def("list_category", PropertyType::String),
            def("coupon_code", PropertyType::String),
            def("coupon_rate", PropertyType::Double),
            def("coupon_expires_at", PropertyType::Datetime),
            def("first_purchase", PropertyType::Boolean),
            def("delivery_date", PropertyType::Date),
            def("search_filters", PropertyType::StringArray),
            def("recommended_ids", PropertyType::LongArray),
            def("price_range", PropertyType::DoubleArray),
            def("review_text", PropertyType::String),
            def("review_rating", PropertyType::Long),
        ],
        item_properties: vec![
            def("color", PropertyType::String),
            def("size_options", PropertyType::StringArray),
        ],
        user_properties: vec![],
    }
}

/// A product of the demo shop.
struct Product {
    id: &'static str,
    name: &'static str,
    category1: &'static str,
    category2: &'static str,
    price: f64,
    colors: &'static [&'static str],
    sizes: &'static [&'static str],
}

const fn product(
    id: &'static str,
    name: &'static str,
    category1: &'static str,
    category2: &'static str,
    price: f64,
    colors: &'static [&'static str],
    sizes: &'static [&'static str],
) -> Product {
    Product {
        id,
        name,
        category1,
        category2,
        price,
        colors,
        sizes,
    }
}

const CLOTHES: &[&str] = &["S", "M", "L", "XL"];

static PRODUCTS: &[Product] = &[
    product(
        "P1001",
        "경량 패딩 점퍼",
        "패션",
        "아우터",
        89000.0,
        &["블랙", "네이비", "아이보리"],
        CLOTHES,
    ),
    product(
        "P1002",
        "울 블렌드 롱코트",
        "패션",
        "아우터",
        159000.0,
        &["카멜", "차콜"],
        &["M", "L"],
    ),
    product(
        "P1003",
        "\"오버핏\" 후드 티셔츠",
        "패션",
        "상의",
        49000.0,
        &["그레이", "블랙"],
        CLOTHES,
    ),
    product(
        "P1004",
        "스트라이프 셔츠, 린넨 100%",
        "패션",
        "상의",
        39000.0,
        &["블루", "화이트"],
        CLOTHES,
    ),
    product(
        "P1005",
        "와이드 데님 팬츠",
        "패션",
        "하의",
        45000.0,
        &["연청", "진청"],
        &["26", "28", "30", "32"],
    ),
    product(
        "P1006",
        "조거 팬츠 (기모)",
        "패션",
        "하의",
        29900.0,
        &["블랙", "멜란지"],
        CLOTHES,
    ),
    product("P2001", "수분 크림 50ml", "뷰티", "스킨케어", 32000.0, &[], &[]),
    product("P2002", "비타민C 세럼 30ml", "뷰티", "스킨케어", 27000.0, &[], &[]),
    product("P2003", "선크림 SPF50+, PA++++", "뷰티", "스킨케어", 18900.0, &[], &[]),
    product(
        "P2004",
        "벨벳 립 틴트",
        "뷰티",
        "메이크업",
        15000.0,
        &["#01 로즈", "#02 코랄", "#03 레드"],
        &[],
    ),
    product(
        "P2005",
        "쿠션 파운데이션 (리필 포함)",
        "뷰티",
        "메이크업",
        38000.0,
        &["21호", "23호"],
        &[],
    ),
    product("P3001", "제주 감귤 초콜릿 12입", "식품", "간식", 9900.0, &[], &[]),
    product("P3002", "수제 그래놀라 500g", "식품", "간식", 12900.0, &[], &[]),
    product("P3003", "콜드브루 원액 1L", "식품", "음료", 15900.0, &[], &[]),
    product("P3004", "유기농 녹차 티백 50개입", "식품", "음료", 11000.0, &[], &[]),
    product(
        "P4001",
        "무선 블루투스 이어폰",
        "디지털",
        "음향기기",
        79000.0,
        &["화이트", "블랙"],
        &[],
    ),
    product(
        "P4002",
        "노이즈캔슬링 헤드폰",
        "디지털",
        "음향기기",
        239000.0,
        &["실버", "미드나잇"],
        &[],
    ),
    product(
        "P4003",
        "고속 충전기 65W",
        "디지털",
        "액세서리",
        35000.0,
        &["화이트"],
        &[],
    ),
    product(
        "P4004",
        "스마트폰 케이스 \"투명\"",
        "디지털",
        "액세서리",
        12000.0,
        &["클리어", "스모크"],
        &["iPhone 15", "Galaxy S24"],
    ),
    product(
        "P5001",
        "스테인리스 텀블러 473ml",
        "리빙",
        "주방",
        25000.0,
        &["실버", "블랙", "민트"],
        &[],
    ),
    product("P5002", "무쇠 프라이팬 28cm", "리빙", "주방", 54000.0, &[], &[]),
    product(
        "P5003",
        "순면 차렵이불 세트, 퀸",
        "리빙",
        "침구",
        99000.0,
        &["화이트", "그레이"],
        &["Q", "K"],
    ),
    product("P5004", "메모리폼 베개", "리빙", "침구", 42000.0, &[], &[]),
    product(
        "P6001",
        "요가 매트 8mm",
        "스포츠",
        "요가",
        33000.0,
        &["퍼플", "그린"],
        &[],
    ),
    product("P6002", "폼롤러", "스포츠", "요가", 19800.0, &[], &[]),
];

const KEYWORDS: &[&str] = &[
    "패딩",
    "겨울 코트",
    "립 틴트",
    "선크림",
    "블루투스 이어폰",
    "텀블러",
    "\"무료배송\" 간식",
    "요가 매트, 8mm",
    "iPhone case",
    "차렵이불",
    "후드티",
];
const SEARCH_FILTERS: &[&str] = &["무료배송", "오늘출발", "4.5점 이상", "할인중", "새상품"];
const BANNERS: &[&str] = &[
    "winter_sale",
    "new_arrivals",
    "free_shipping",
    "membership_day",
    "app_only_deal",
];
const COUPONS: &[(&str, f64)] = &[("WELCOME10", 0.1), ("WINTER15", 0.15), ("VIP20", 0.2), ("APP5", 0.05)];
const PAYMENT_METHODS: &[&str] = &["신용카드", "카카오페이", "네이버페이", "토스페이", "무통장입금"];
const SHARING_CHANNELS: &[&str] = &["kakaotalk", "instagram", "facebook", "link_copy"];
const SIGN_CHANNELS: &[&str] = &["kakao", "naver", "apple", "email"];
const EMAIL_DOMAINS: &[&str] = &["example.com", "example.co.kr", "example.net"];
const REVIEWS: &[(&str, i64)] = &[
    ("배송이 빨라요, 포장도 꼼꼼했습니다.", 5),
    ("\"인생템\"이에요! 재구매 의사 100%", 5),
    ("사이즈가 조금 작아요.\n한 치수 크게 주문하세요.", 3),
    ("색감이 사진이랑 달라요, \"실물\"이 더 어두워요.\n그래도 만족합니다.", 4),
    ("그냥 그래요", 3),
    ("Great quality, fast shipping — 추천합니다", 5),
    ("가격 대비 최고\r\n다음에 또 살게요", 5),
    ("불량이 와서 교환했어요. 교환은 빨랐습니다", 2),
    ("별로예요", 1),
];

/// A user of the demo shop.
struct User {
    identity: Value,
    /// Has an external_id (a member), so logs in and may sign up.
    member: bool,
    /// Signed up within the 30 days.
    new_member: bool,
    /// Relative activity: how often the user is picked for a session.
    weight: f64,
}

/// One event before it becomes JSON.
struct Event {
    at_ms: i64,
    name: &'static str,
    properties: Map<String, Value>,
    items: Vec<Value>,
}

/// An event at an offset from the start of its session.
struct Step {
    offset_ms: i64,
    event: Event,
}

struct Generator {
    rng: StdRng,
    tz: Tz,
    now_ms: i64,
    start_ms: i64,
    users: Vec<User>,
    /// Events of each user, in the order they were generated.
    events: Vec<Vec<Event>>,
    total: usize,
    orders: u32,
}

impl Generator {
    fn new(now: DateTime<Utc>, tz: Tz) -> Generator {
        let mut rng = StdRng::seed_from_u64(SEED);
        let users = (0..USERS)
            .map(|i| {
                let member = rng.random_bool(0.85);
                let email = format!(
                    "{}{:04}@{}",
                    if member { "member" } else { "guest" },
                    i + 1,
                    EMAIL_DOMAINS.choose(&mut rng).unwrap_or(&"example.com")
                );
                let identity = if member {
                    let mut id = Map::new();
                    id.insert("external_id".into(), format!("user_{:04}", i + 1).into());
                    if rng.random_bool(0.6) {
                        id.insert("email".into(), email.into());
                    }
                    if rng.random_bool(0.3) {
                        id.insert(
                            "phone_no".into(),
                            format!(
                                "010-{:04}-{:04}",
                                rng.random_range(1000..10000),
                                rng.random_range(0..10000)
                            )
                            .into(),
                        );
                    }
                    Value::Object(id)
                } else {
                    json!({ "email": email })
                };
                // A long tail: most users visit now and then, a few very often.
                let weight = 1.0 / (0.08 + rng.random::<f64>());
                User {
                    identity,
                    member,
                    new_member: member && rng.random_bool(0.3),
                    weight,
                }
            })
            .collect();
        let now_ms = now.timestamp_millis();
        Generator {
            rng,
            tz,
            now_ms,
            start_ms: now_ms - DAYS * 86_400_000,
            users,
            events: (0..USERS).map(|_| Vec::new()).collect(),
            total: 0,
            orders: 0,
        }
    }

    /// One user-profile body per user: names, gender, membership and
    /// consents, from a generator of its own so the events stay the same.
    fn profiles(&self) -> Vec<Value> {
        let mut rng = StdRng::seed_from_u64(SEED ^ 0x5eed);
        let request_datetime = DateTime::from_timestamp_millis(self.now_ms).unwrap_or_default();
        let pick = |rng: &mut StdRng, list: &[&'static str]| list[rng.random_range(0..list.len())];
        self.users
            .iter()
            .map(|user| {
                let birth = format!(
                    "{}-{:02}-{:02}",
                    rng.random_range(1965..2006),
                    rng.random_range(1..13),
                    rng.random_range(1..29)
                );
                json!({
                    "identity": user.identity,
                    "request_datetime": request_datetime.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "user_properties": {
                        "df_name": pick(&mut rng, NAMES),
                        "df_gender": pick(&mut rng, GENDERS),
                        "df_birth": birth,
                        "df_membership": if user.member { pick(&mut rng, MEMBERSHIPS) } else { "none" },
                        "df_push_optin": rng.random_bool(0.7),
                        "df_push_ads_optin": rng.random_bool(0.4),
                        "df_sms_ads_optin": rng.random_bool(0.3),
                        "df_kakao_ads_optin": rng.random_bool(0.5),
                        "df_push_night_ads_optin": rng.random_bool(0.1),
                    }
                })
            })
            .collect()
    }

    /// The request bodies: each user's events in time order, in batches of
    /// at most 100 events and 100 items.
    fn bodies(mut self) -> Vec<Value> {
        let cumulative: Vec<f64> = self
            .users
            .iter()
            .scan(0.0, |sum, u| {
                *sum += u.weight;
                Some(*sum)
            })
            .collect();
        let total_weight = cumulative.last().copied().unwrap_or(1.0);
        while self.total < TARGET_EVENTS {
            let pick = self.rng.random::<f64>() * total_weight;
            let user = cumulative.partition_point(|&c| c <= pick).min(USERS - 1);
            self.session(user);
        }
        self.sign_ups();
        let mut bodies = Vec::new();
        let users = std::mem::take(&mut self.users);
        for (user, mut events) in users.iter().zip(std::mem::take(&mut self.events)) {
            events.sort_by_key(|e| e.at_ms);
            let mut first = true;
            for purchase in events.iter_mut().filter(|e| e.name == "df_purchase") {
                purchase.properties.insert("first_purchase".into(), first.into());
                first = false;
            }
            let mut events = events.into_iter().peekable();
            while events.peek().is_some() {
                let mut batch = Vec::new();
                let mut items = 0;
                while let Some(next) = events.peek() {
                    if batch.len() == MAX_EVENTS_PER_REQUEST || items + next.items.len() > MAX_ITEMS_PER_REQUEST {
                        break;
                    }
                    let e = events.next().expect("peeked");
                    items += e.items.len();
                    batch.push(self.event_json(e));
                }
                bodies.push(json!({"common": {"identity": user.identity.clone()}, "events": batch}));
            }
        }
        bodies
    }

    fn event_json(&mut self, e: Event) -> Value {
        let id: Uuid = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        let mut obj = Map::new();
        obj.insert("event_log_id".into(), id.to_string().into());
        obj.insert("event_name".into(), e.name.into());
        obj.insert("event_datetime".into(), self.wire_datetime(e.at_ms).into());
        if !e.properties.is_empty() {
            obj.insert("properties".into(), Value::Object(e.properties));
        }
        if !e.items.is_empty() {
            obj.insert("items".into(), Value::Array(e.items));
        }
        Value::Object(obj)
    }

    /// `yyyy-MM-ddTHH:mm:ss.SSS+09:00`, as a client in Seoul would send it.
    fn wire_datetime(&self, ms: i64) -> String {
        let utc = DateTime::from_timestamp_millis(ms).unwrap_or_default();
        utc.with_timezone(&self.tz)
            .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string()
    }

    fn local_date(&self, ms: i64) -> NaiveDate {
        DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .with_timezone(&self.tz)
            .date_naive()
    }

    /// A session start: any time in the 30 days, more often in the evening
    /// (Seoul time) than at night.
    fn session_start(&mut self) -> i64 {
        loop {
            let at = self.rng.random_range(self.start_ms..self.now_ms);
            let hour = DateTime::from_timestamp_millis(at)
                .unwrap_or_default()
                .with_timezone(&self.tz)
                .hour();
            let likelihood = match hour {
                0..=1 => 0.35,
                2..=6 => 0.08,
                7..=11 => 0.45,
                12..=13 => 0.8,
                14..=18 => 0.55,
                _ => 1.0,
            };
            if self.rng.random_bool(likelihood) {
                return at;
            }
        }
    }

    fn push(&mut self, user: usize, event: Event) {
        self.events[user].push(event);
        self.total += 1;
    }

    fn step(&mut self, steps: &mut Vec<Step>, name: &'static str, properties: Value, items: Vec<Value>) {
        let offset_ms = steps.last().map_or(0, |s| s.offset_ms) + self.rng.random_range(2_000..150_000);
        let properties = match properties {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        steps.push(Step {
            offset_ms,
            event: Event {
                at_ms: 0,
                name,
                properties,
                items,
            },
        });
    }

    fn product(&mut self) -> &'static Product {
        PRODUCTS.choose(&mut self.rng).expect("products")
    }

    /// One item of `p`, as sent in `items`.
    fn item(&mut self, p: &Product, quantity: i64) -> Value {
        let mut item = Map::new();
        item.insert("df_item_id".into(), p.id.into());
        item.insert("df_item_name".into(), p.name.into());
        item.insert("df_price".into(), p.price.into());
        item.insert("df_quantity".into(), quantity.into());
        item.insert("df_category1".into(), p.category1.into());
        item.insert("df_category2".into(), p.category2.into());
        if let Some(color) = p.colors.choose(&mut self.rng) {
            item.insert("color".into(), (*color).into());
        }
        if !p.sizes.is_empty() {
            item.insert("size_options".into(), json!(p.sizes));
        }
        if self.rng.random_bool(0.1) {
            item.insert("df_discount".into(), (p.price * 0.1).round().into());
        }
        Value::Object(item)
    }

    /// One visit of `user`: home, browsing, maybe a cart and a purchase.
    fn session(&mut self, user: usize) {
        let member = self.users[user].member;
        let mut steps = Vec::new();
        let logged_in = member && self.rng.random_bool(0.3);
        if logged_in {
            self.step(&mut steps, "df_login", json!({}), vec![]);
        }
        let recommended: Vec<i64> = (0..self.rng.random_range(3..=5))
            .map(|_| self.product().id[1..].parse::<i64>().unwrap_or(0))
            .collect();
        self.step(
            &mut steps,
            "df_view_home",
            json!({"recommended_ids": recommended}),
            vec![],
        );
        if self.rng.random_bool(0.35) {
            let banner = *BANNERS.choose(&mut self.rng).expect("banners");
            let position = self.rng.random_range(1..=5);
            self.step(
                &mut steps,
                "view_banner",
                json!({"banner_id": banner, "banner_position": position}),
                vec![],
            );
        }
        let mut cart: Vec<Value> = Vec::new();
        for _ in 0..self.rng.random_range(1..=4) {
            if self.rng.random_bool(0.45) {
                let keyword = *KEYWORDS.choose(&mut self.rng).expect("keywords");
                let n = self.rng.random_range(0..=2);
                let filters: Vec<&str> = SEARCH_FILTERS.choose_multiple(&mut self.rng, n).copied().collect();
                let low = f64::from(self.rng.random_range(0..5u32)) * 10_000.0;
                let high = low + f64::from(self.rng.random_range(1..20u32)) * 5_000.0 - 0.5;
                self.step(
                    &mut steps,
                    "df_view_search_result",
                    json!({"df_keyword": keyword, "search_filters": filters, "price_range": [low, high]}),
                    vec![],
                );
            } else {
                let p = self.product();
                let category = format!("{}/{}", p.category1, p.category2);
                self.step(&mut steps, "df_view_list", json!({"list_category": category}), vec![]);
            }
            for _ in 0..self.rng.random_range(0..=2) {
                let p = self.product();
                let item = self.item(p, 1);
                self.step(&mut steps, "df_view_product_details", json!({}), vec![item.clone()]);
                if self.rng.random_bool(0.08) {
                    self.step(&mut steps, "df_add_to_wishlist", json!({}), vec![item.clone()]);
                }
                if self.rng.random_bool(0.05) {
                    let channel = *SHARING_CHANNELS.choose(&mut self.rng).expect("channels");
                    self.step(
                        &mut steps,
                        "df_share_product",
                        json!({"df_sharing_channel": channel}),
                        vec![item.clone()],
                    );
                }
                if self.rng.random_bool(0.3) {
                    let quantity = if self.rng.random_bool(0.8) {
                        1
                    } else {
                        self.rng.random_range(2..=3)
                    };
                    let mut item = item;
                    item["df_quantity"] = quantity.into();
                    self.step(&mut steps, "df_add_to_cart", json!({}), vec![item.clone()]);
                    cart.push(item);
                }
            }
        }
        if !cart.is_empty() {
            if self.rng.random_bool(0.7) {
                self.step(&mut steps, "df_view_cart", json!({}), vec![]);
            }
            if cart.len() > 1 && self.rng.random_bool(0.2) {
                let removed = cart.remove(self.rng.random_range(0..cart.len()));
                self.step(&mut steps, "df_remove_cart", json!({}), vec![removed]);
            }
            if self.rng.random_bool(0.55) {
                self.checkout(&mut steps, cart);
            }
        }
        if logged_in && self.rng.random_bool(0.15) {
            self.step(&mut steps, "df_logout", json!({}), vec![]);
        }

        // Place the session so that it ends before now.
        let span = steps.last().map_or(0, |s| s.offset_ms);
        let start = self.session_start().min(self.now_ms - span - 1_000);
        let mut purchase = None;
        for step in steps {
            let mut event = step.event;
            event.at_ms = start + step.offset_ms;
            if event.name == "df_purchase" {
                let date = self.local_date(event.at_ms);
                self.orders += 1;
                let order_id = format!("ORD-{}-{:05}", date.format("%Y%m%d"), self.orders);
                let delivery = date + Duration::days(self.rng.random_range(1..=3));
                event.properties.insert("df_order_id".into(), order_id.clone().into());
                event
                    .properties
                    .insert("delivery_date".into(), delivery.format("%Y-%m-%d").to_string().into());
                purchase = Some((event.at_ms, order_id, event.items.clone()));
            }
            self.push(user, event);
        }
        if let Some((at, order_id, items)) = purchase {
            self.after_purchase(user, at, order_id, items);
        }
    }

    /// Coupon, payment and purchase steps. The order id, delivery date and
    /// `first_purchase` are set once the purchase has its time.
    fn checkout(&mut self, steps: &mut Vec<Step>, cart: Vec<Value>) {
        let subtotal: f64 = cart
            .iter()
            .map(|i| i["df_price"].as_f64().unwrap_or(0.0) * i["df_quantity"].as_f64().unwrap_or(1.0))
            .sum();
        let mut discount = 0.0;
        let mut coupon = None;
        if self.rng.random_bool(0.3) {
            let (code, rate) = *COUPONS.choose(&mut self.rng).expect("coupons");
            discount = (subtotal * rate / 10.0).round() * 10.0;
            // Expiry as UTC with `Z` (the events themselves carry +09:00).
            let expires = DateTime::from_timestamp_millis(self.now_ms).unwrap_or_default()
                + Duration::days(self.rng.random_range(3..60))
                - Duration::seconds(self.rng.random_range(0..86_400));
            let expires = expires.format("%Y-%m-%dT%H:%M:%S.000Z").to_string();
            self.step(
                steps,
                "apply_coupon",
                json!({"coupon_code": code, "coupon_rate": rate, "coupon_expires_at": expires}),
                vec![],
            );
            coupon = Some(code);
        }
        let method = *PAYMENT_METHODS.choose(&mut self.rng).expect("methods");
        self.step(
            steps,
            "df_add_payment_info",
            json!({"df_payment_method": method}),
            vec![],
        );
        let delivery = if subtotal >= 50_000.0 { 0.0 } else { 3_000.0 };
        let mut properties = json!({
            "df_payment_method": method,
            "df_total_purchase_amount": subtotal - discount + delivery,
            "df_delivery_charge": delivery,
            "df_discount": discount,
        });
        if let Some(code) = coupon {
            properties["coupon_code"] = code.into();
        }
        self.step(steps, "df_purchase", properties, cart);
    }

    /// Some purchases are refunded a few days later; some get a review.
    fn after_purchase(&mut self, user: usize, at: i64, order_id: String, items: Vec<Value>) {
        let day = 86_400_000;
        if self.rng.random_bool(0.07) {
            let refund_at = at + self.rng.random_range(day..4 * day);
            if refund_at < self.now_ms {
                let refunded = items
                    .iter()
                    .map(|i| i["df_price"].as_f64().unwrap_or(0.0) * i["df_quantity"].as_f64().unwrap_or(1.0))
                    .sum::<f64>();
                let properties = json!({"df_order_id": order_id, "df_total_refund_amount": refunded});
                let properties = properties.as_object().cloned().unwrap_or_default();
                self.push(
                    user,
                    Event {
                        at_ms: refund_at,
                        name: "df_refund",
                        properties,
                        items,
                    },
                );
                return;
            }
        }
        if self.rng.random_bool(0.3) {
            let review_at = at + self.rng.random_range(2 * day..8 * day);
            if review_at < self.now_ms {
                let (text, rating) = *REVIEWS.choose(&mut self.rng).expect("reviews");
                let item = items.choose(&mut self.rng).cloned().into_iter().collect();
                let properties = json!({"review_text": text, "review_rating": rating});
                let properties = properties.as_object().cloned().unwrap_or_default();
                self.push(
                    user,
                    Event {
                        at_ms: review_at,
                        name: "write_review",
                        properties,
                        items: item,
                    },
                );
            }
        }
    }

    /// New members sign up just before their first event.
    fn sign_ups(&mut self) {
        for user in 0..USERS {
            if !self.users[user].new_member {
                continue;
            }
            let Some(first) = self.events[user].iter().map(|e| e.at_ms).min() else {
                continue;
            };
            let channel = *SIGN_CHANNELS.choose(&mut self.rng).expect("channels");
            let at = (first - self.rng.random_range(1_000..30_000)).max(self.start_ms);
            let properties = json!({"df_sign_channel": channel})
                .as_object()
                .cloned()
                .unwrap_or_default();
            self.push(
                user,
                Event {
                    at_ms: at,
                    name: "df_sign_up",
                    properties,
                    items: vec![],
                },
            );
        }
    }
}
