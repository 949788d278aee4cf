//! The synthetic service of `fineport bench`: a seeded, deterministic month
//! of events, built as the JSON bodies a client sends to `POST /api/v1/events`.
//!
//! What it holds: the 15 standard `df_` events and 6 custom ones in a
//! plausible mix; 25 event properties (the 9 standard scalars and 16 custom
//! ones of every taxonomy type, arrays included); items (13 item properties,
//! standard and custom) on product events, about a fifth of all events;
//! Korean text, and values with commas and double quotes so the CSV encoder
//! has to quote. No value holds a line break, so every CSV line is one row
//! and the bench can count rows by counting `\n`.
//!
//! Events fall on the 30 UTC days from [`FIRST_DAY`]; each request
//! carries 100 events of one user (`external_id`), the last one fewer. In
//! [`Arrival::Live`] order (the default) requests come in time order, as
//! from a live app: request `b` of `n` holds a session in the `b/n`-th slice
//! of the month, and 3 % of events arrive late (up to 2 days, as from a
//! phone that was offline). [`Arrival::Shuffled`] spreads every event
//! uniformly over the month instead, the worst case for a store whose data
//! is not clustered by time. The same seed, size and order give the same bytes.

use fineport_contract::csv::push_json_string;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The first day of the synthetic month (UTC).
pub const FIRST_DAY: &str = "2025-09-01";
/// The last day of the synthetic month (UTC), inclusive.
pub const LAST_DAY: &str = "2025-09-30";
/// The day after [`LAST_DAY`].
pub const DAY_AFTER_LAST_DAY: &str = "2025-10-01";
/// The day the 1-day export asks for.
pub const ONE_DAY: &str = "2025-09-15";
/// A day before the data: its export has no rows.
pub const EMPTY_DAY: &str = "2025-08-15";
/// The day after [`ONE_DAY`].
pub const DAY_AFTER_ONE_DAY: &str = "2025-09-16";
/// Days in the synthetic month.
pub const DAYS: usize = 30;
/// Index of [`ONE_DAY`] in the month.
pub const ONE_DAY_INDEX: usize = 14;
/// 2025-09-01T00:00:00Z in milliseconds since the epoch.
const FIRST_DAY_MS: i64 = 1_756_684_800_000;
const DAY_MS: i64 = 86_400_000;
/// How the events of successive requests fall in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    /// Requests in time order, 3 % of events late by up to 2 days.
    Live,
    /// Every event on a uniformly random moment of the month.
    Shuffled,
}

/// How much each event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventSize {
    /// ~430 bytes of JSON per event: each of the 16 custom properties on
    /// about half of the events (45 export columns).
    Standard,
    /// ~660 bytes of JSON per event, as a busy app sends: 11 more custom
    /// properties (a user agent, a page URL and other long strings, every
    /// type), and each of the 27 custom properties on 55 % of the events,
    /// ~16 of them on an event besides the standard ones (56 export columns).
    Heavy,
}

impl EventSize {
    /// The custom event properties this profile registers and sends.
    fn custom_event_props(self) -> &'static [(&'static str, &'static str)] {
        match self {
            EventSize::Standard => &CUSTOM_EVENT_PROPS[..16],
            EventSize::Heavy => &CUSTOM_EVENT_PROPS,
        }
    }

    /// How often each custom property is on an event (a probability).
    fn presence(self) -> f64 {
        match self {
            EventSize::Standard => 0.5,
            EventSize::Heavy => 0.55,
        }
    }
}

/// Share of late events in [`Arrival::Live`] order, in percent.
const LATE_PERCENT: u32 = 3;
/// How late a late event may be.
const MAX_LATE_MS: i64 = 2 * DAY_MS;

/// Events per import request (the API's maximum).
pub const BATCH_EVENTS: usize = 100;
/// Items per import request (the API's maximum).
const MAX_BATCH_ITEMS: usize = 100;

/// The events the include-filter export asks for.
pub const FILTER_EVENTS: [&str; 3] = ["df_purchase", "df_add_to_cart", "view_content"];
/// The properties the include-filter export asks for.
pub const FILTER_PROPERTIES: [&str; 6] = [
    "df_order_id",
    "df_total_purchase_amount",
    "df_items_df_item_id",
    "df_items_df_price",
    "page_title",
    "tags",
];

/// Custom event properties: (name, wire type). The first 16 are the
/// standard profile's; [`EventSize::Heavy`] adds the rest.
const CUSTOM_EVENT_PROPS: [(&str, &str); 27] = [
    ("page_title", "String"),
    ("campaign", "String"),
    ("referrer", "String"),
    ("app_version", "String"),
    ("level", "Long"),
    ("session_seq", "Long"),
    ("coins", "Long"),
    ("score", "Double"),
    ("rating", "Double"),
    ("is_first", "Boolean"),
    ("logged_in", "Boolean"),
    ("last_seen_at", "Datetime"),
    ("promo_date", "Date"),
    ("tags", "Array of String"),
    ("slot_ids", "Array of Long"),
    ("prices_seen", "Array of Double"),
    ("user_agent", "String"),
    ("page_url", "String"),
    ("screen_name", "String"),
    ("device_model", "String"),
    ("locale", "String"),
    ("duration_ms", "Long"),
    ("scroll_depth", "Double"),
    ("push_enabled", "Boolean"),
    ("installed_at", "Datetime"),
    ("birth_date", "Date"),
    ("coupon_codes", "Array of String"),
];

const CUSTOM_ITEM_PROPS: [(&str, &str); 3] = [("color", "String"), ("size", "String"), ("is_sale", "Boolean")];

/// Events with their relative weights; the first 15 are the standard ones.
const EVENT_MIX: [(&str, u32); 21] = [
    ("df_view_home", 120),
    ("df_view_list", 80),
    ("df_view_product_details", 140),
    ("df_view_search_result", 60),
    ("df_add_to_cart", 60),
    ("df_view_cart", 40),
    ("df_remove_cart", 10),
    ("df_add_to_wishlist", 20),
    ("df_share_product", 10),
    ("df_add_payment_info", 20),
    ("df_purchase", 30),
    ("df_refund", 3),
    ("df_login", 40),
    ("df_logout", 20),
    ("df_sign_up", 7),
    ("view_content", 120),
    ("search_keyword", 50),
    ("play_video", 80),
    ("click_banner", 50),
    ("level_up", 20),
    ("claim_reward", 20),
];

const PRODUCTS: [&str; 12] = [
    "무선 이어폰 프로",
    "유기농 현미 10kg",
    "겨울 패딩 점퍼",
    "스테인리스 텀블러 500ml",
    "게이밍 키보드, 적축",
    "\"한정판\" 운동화",
    "아동용 그림책 세트",
    "캠핑 의자 2개입",
    "비타민C 1000mg",
    "노트북 거치대",
    "향수 50ml, 우디향",
    "전기 주전자",
];
const CATEGORIES: [&str; 8] = ["전자기기", "식품", "패션", "생활용품", "도서", "스포츠", "뷰티", "가구"];
const KEYWORDS: [&str; 8] = [
    "이어폰",
    "패딩",
    "텀블러",
    "운동화 세일",
    "캠핑",
    "vitamin",
    "선물, 추천",
    "노트북",
];
const TITLES: [&str; 6] = [
    "오늘의 특가",
    "신상품 소개",
    "이벤트 안내",
    "회원 전용 혜택",
    "Weekly \"Best\"",
    "홈",
];
const CAMPAIGNS: [&str; 5] = ["fall_sale", "chuseok,2025", "new_member", "push_0915", "kakao_ad"];
const REFERRERS: [&str; 4] = [
    "https://m.search.naver.com/",
    "https://www.google.com/",
    "kakaotalk",
    "",
];
const PAYMENT: [&str; 4] = ["credit_card", "kakao_pay", "naver_pay", "bank_transfer"];
const CHANNELS: [&str; 4] = ["kakao", "naver", "apple", "email"];
const COLORS: [&str; 5] = ["검정", "흰색", "네이비", "베이지", "red"];
const SIZES: [&str; 4] = ["S", "M", "L", "XL"];
const TAGS: [&str; 6] = ["신규", "추천", "할인", "베스트", "gift", "한정"];
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) KAKAOTALK 10.9.0",
    "Mozilla/5.0 (Linux; Android 15; SM-S928N; wv) Chrome/131.0 Mobile",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0.0.0",
    "shopapp/4.12.0 (Android 14; Galaxy A54, \"ko-KR\")",
];
const SCREENS: [&str; 6] = [
    "HomeFeed",
    "ProductDetail",
    "CartSheet",
    "SearchResults, filtered",
    "MyPage",
    "OrderComplete",
];
const DEVICES: [&str; 4] = ["iPhone16,2", "SM-S928N", "Pixel 9 Pro", "SM-A546N"];
const LOCALES: [&str; 3] = ["ko-KR", "en-US", "ja-JP"];

/// The taxonomy document the bench registers (standard names are
/// pre-registered in every service).
pub fn taxonomy(size: EventSize) -> Value {
    let props = |list: &[(&str, &str)]| -> Vec<Value> {
        list.iter()
            .map(|(name, ty)| json!({"name": name, "type": ty}))
            .collect()
    };
    let events: Vec<&str> = EVENT_MIX
        .iter()
        .map(|(name, _)| *name)
        .filter(|n| !n.starts_with("df_"))
        .collect();
    json!({
        "events": events,
        "event_properties": props(size.custom_event_props()),
        "item_properties": props(&CUSTOM_ITEM_PROPS),
    })
}

/// The import bodies and what they hold.
pub struct Dataset {
    /// One JSON body per request.
    pub bodies: Vec<Vec<u8>>,
    /// Events per UTC day of the month.
    pub per_day: [u64; DAYS],
    /// Events per day whose name is in [`FILTER_EVENTS`].
    pub filtered_per_day: [u64; DAYS],
    pub events: u64,
    pub items: u64,
}

/// Builds `events` events in bodies of 100, on `threads` threads.
/// Batch `b` depends only on `(seed, b)`, so the result does not depend on
/// the thread count.
pub fn generate(events: u64, seed: u64, arrival: Arrival, size: EventSize, threads: usize) -> Dataset {
    let batches = events.div_ceil(BATCH_EVENTS as u64) as usize;
    let users = (events / 40).max(100);
    let threads = threads.clamp(1, batches.max(1));
    let per_thread = batches.div_ceil(threads);
    let parts: Vec<Part> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut part = Part::default();
                    for b in (t * per_thread)..((t + 1) * per_thread).min(batches) {
                        let n = (events - (b * BATCH_EVENTS) as u64).min(BATCH_EVENTS as u64) as usize;
                        let slice = Slice::new(arrival, b, batches);
                        part.push_batch(seed, b, n, users, slice, size);
                    }
                    part
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a generator thread panicked"))
            .collect()
    });
    let mut data = Dataset {
        bodies: Vec::with_capacity(batches),
        per_day: [0; DAYS],
        filtered_per_day: [0; DAYS],
        events: 0,
        items: 0,
    };
    for part in parts {
        data.bodies.extend(part.bodies);
        for d in 0..DAYS {
            data.per_day[d] += part.per_day[d];
            data.filtered_per_day[d] += part.filtered_per_day[d];
        }
        data.events += part.events;
        data.items += part.items;
    }
    data
}

#[derive(Default)]
struct Part {
    bodies: Vec<Vec<u8>>,
    per_day: [u64; DAYS],
    filtered_per_day: [u64; DAYS],
    events: u64,
    items: u64,
}

impl Part {
    fn push_batch(&mut self, seed: u64, batch: usize, n: usize, users: u64, slice: Slice, size: EventSize) {
        let mut rng = StdRng::seed_from_u64(seed ^ (batch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let user = rng.random_range(0..users);
        let mut w = Json::default();
        w.raw(r#"{"common":{"identity":{"external_id":"#);
        w.string(&format!("user_{user:08}"));
        w.raw(r#"}},"events":["#);
        let mut items_left = MAX_BATCH_ITEMS;
        for i in 0..n {
            if i > 0 {
                w.raw(",");
            }
            let ev = event(&mut rng, &mut w, &mut items_left, slice, size);
            self.per_day[ev.day] += 1;
            if FILTER_EVENTS.contains(&ev.name) {
                self.filtered_per_day[ev.day] += 1;
            }
            self.items += ev.items as u64;
        }
        w.raw("]}");
        self.events += n as u64;
        self.bodies.push(w.out);
    }
}

/// The part of the month a request's events fall in.
#[derive(Debug, Clone, Copy)]
struct Slice {
    start_ms: i64,
    len_ms: i64,
    late: bool,
}

impl Slice {
    fn new(arrival: Arrival, batch: usize, batches: usize) -> Slice {
        let month = DAYS as i64 * DAY_MS;
        match arrival {
            Arrival::Shuffled => Slice {
                start_ms: FIRST_DAY_MS,
                len_ms: month,
                late: false,
            },
            Arrival::Live => {
                let len_ms = (month / batches as i64).max(1);
                Slice {
                    start_ms: FIRST_DAY_MS + month * batch as i64 / batches as i64,
                    len_ms,
                    late: true,
                }
            }
        }
    }

    /// A moment of the slice (or, for a late event, up to 2 days before it),
    /// never before the month.
    fn moment(self, rng: &mut StdRng) -> i64 {
        let mut ms = self.start_ms + rng.random_range(0..self.len_ms);
        if self.late && rng.random_ratio(LATE_PERCENT, 100) {
            ms -= rng.random_range(0..MAX_LATE_MS);
        }
        ms.max(FIRST_DAY_MS)
    }
}

struct EventInfo {
    name: &'static str,
    day: usize,
    items: usize,
}

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn event_name(rng: &mut StdRng) -> &'static str {
    let total: u32 = EVENT_MIX.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (name, weight) in EVENT_MIX {
        if x < weight {
            return name;
        }
        x -= weight;
    }
    EVENT_MIX[0].0
}

/// How many items an event of this name carries.
fn item_count(rng: &mut StdRng, name: &str) -> usize {
    match name {
        "df_view_product_details" | "df_add_to_wishlist" | "df_share_product" | "df_remove_cart" => 1,
        "df_add_to_cart" | "df_refund" => rng.random_range(1..=2),
        "df_view_cart" | "df_purchase" => rng.random_range(1..=4),
        _ => 0,
    }
}

/// Writes one event object; returns what the counters need.
fn event(rng: &mut StdRng, w: &mut Json, items_left: &mut usize, slice: Slice, size: EventSize) -> EventInfo {
    let name = event_name(rng);
    let ms = slice.moment(rng);
    let day = ((ms - FIRST_DAY_MS) / DAY_MS) as usize;
    let id: u128 = rng.random();
    let id = (id & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    w.raw(r#"{"event_log_id":""#);
    w.raw(&uuid_text(id));
    w.raw(r#"","event_name":"#);
    w.string(name);
    w.raw(r#","event_datetime":""#);
    w.datetime(ms);
    w.raw(r#"","properties":{"#);
    let mut props = Props { w, first: true };
    standard_props(rng, name, &mut props);
    custom_props(rng, ms, size, &mut props);
    w.raw("}");
    let items = item_count(rng, name).min(*items_left);
    *items_left -= items;
    if items > 0 {
        w.raw(r#","items":["#);
        for i in 0..items {
            if i > 0 {
                w.raw(",");
            }
            item(rng, w);
        }
        w.raw("]");
    }
    w.raw("}");
    EventInfo { name, day, items }
}

struct Props<'a> {
    w: &'a mut Json,
    first: bool,
}

impl Props<'_> {
    fn key(&mut self, name: &str) -> &mut Json {
        if !self.first {
            self.w.raw(",");
        }
        self.first = false;
        self.w.string(name);
        self.w.raw(":");
        self.w
    }
}

fn standard_props(rng: &mut StdRng, name: &str, p: &mut Props<'_>) {
    match name {
        "df_purchase" => {
            let order = format!("ORD-{:010}", rng.random_range(0..10_000_000_000u64));
            p.key("df_order_id").string(&order);
            p.key("df_payment_method").string(pick(rng, &PAYMENT));
            p.key("df_total_purchase_amount")
                .double(rng.random_range(1_000..500_000) as f64 * 10.0);
            p.key("df_delivery_charge")
                .double(if rng.random_bool(0.5) { 0.0 } else { 3000.0 });
            if rng.random_bool(0.3) {
                p.key("df_discount").double(rng.random_range(1..100) as f64 * 100.0);
            }
        }
        "df_refund" => {
            let order = format!("ORD-{:010}", rng.random_range(0..10_000_000_000u64));
            p.key("df_order_id").string(&order);
            p.key("df_total_refund_amount")
                .double(rng.random_range(1_000..100_000) as f64 * 10.0);
        }
        "df_view_search_result" => {
            p.key("df_keyword").string(pick(rng, &KEYWORDS));
        }
        "df_share_product" => {
            p.key("df_sharing_channel").string(pick(rng, &CHANNELS));
        }
        "df_sign_up" | "df_login" => {
            p.key("df_sign_channel").string(pick(rng, &CHANNELS));
        }
        _ => {}
    }
}

/// Each custom property is on [`EventSize::presence`] of the events.
fn custom_props(rng: &mut StdRng, ms: i64, size: EventSize, p: &mut Props<'_>) {
    for &(name, ty) in size.custom_event_props() {
        if !rng.random_bool(size.presence()) {
            continue;
        }
        let w = p.key(name);
        match (name, ty) {
            ("page_title", _) => w.string(pick(rng, &TITLES)),
            ("user_agent", _) => w.string(pick(rng, &USER_AGENTS)),
            ("page_url", _) => w.string(&format!(
                "https://m.shop.example.kr/p/{}?utm_source=kakao&ref=banner_{}",
                rng.random_range(100_000..999_999),
                rng.random_range(0..40)
            )),
            ("screen_name", _) => w.string(pick(rng, &SCREENS)),
            ("device_model", _) => w.string(pick(rng, &DEVICES)),
            ("locale", _) => w.string(pick(rng, &LOCALES)),
            ("campaign", _) => w.string(pick(rng, &CAMPAIGNS)),
            ("referrer", _) => w.string(pick(rng, &REFERRERS)),
            (_, "String") => w.string(&format!("{}.{}.{}", rng.random_range(1..4), rng.random_range(0..20), 0)),
            (_, "Long") => w.long(rng.random_range(-10..1_000_000)),
            (_, "Double") => w.double((rng.random_range(0..100_000) as f64) / 100.0),
            (_, "Boolean") => w.raw(if rng.random_bool(0.5) { "true" } else { "false" }),
            (_, "Datetime") => {
                w.raw("\"");
                w.datetime(ms - rng.random_range(0..30 * DAY_MS));
                w.raw("\"")
            }
            (_, "Date") => w.raw(&format!(
                "\"2025-{:02}-{:02}\"",
                rng.random_range(1..=12),
                rng.random_range(1..=28)
            )),
            (_, "Array of String") => {
                let n = rng.random_range(0..4);
                w.list(n, |w| {
                    let tag = pick(rng, &TAGS);
                    w.string(tag)
                })
            }
            (_, "Array of Long") => {
                let n = rng.random_range(0..5);
                w.list(n, |w| w.long(rng.random_range(0..10_000)))
            }
            _ => {
                let n = rng.random_range(0..4);
                w.list(n, |w| w.double(rng.random_range(100..100_000) as f64 * 10.0 + 0.5))
            }
        }
    }
}

fn item(rng: &mut StdRng, w: &mut Json) {
    let product = rng.random_range(0..PRODUCTS.len());
    w.raw(r#"{"df_item_id":"#);
    w.string(&format!("SKU-{:06}", product * 1000 + rng.random_range(0..1000)));
    w.raw(r#","df_item_name":"#);
    w.string(PRODUCTS[product]);
    w.raw(r#","df_price":"#);
    w.double(rng.random_range(10..5_000) as f64 * 100.0);
    w.raw(r#","df_quantity":"#);
    w.long(rng.random_range(1..4));
    if rng.random_bool(0.3) {
        w.raw(r#","df_discount":"#);
        w.double(rng.random_range(1..50) as f64 * 100.0);
    }
    w.raw(r#","df_category1":"#);
    w.string(CATEGORIES[product % CATEGORIES.len()]);
    w.raw(r#","df_category2":"#);
    w.string(pick(rng, &CATEGORIES));
    if rng.random_bool(0.6) {
        w.raw(r#","color":"#);
        w.string(pick(rng, &COLORS));
        w.raw(r#","size":"#);
        w.string(pick(rng, &SIZES));
    }
    w.raw(r#","is_sale":"#);
    w.raw(if rng.random_bool(0.2) { "true" } else { "false" });
    w.raw("}");
}

fn uuid_text(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A tiny JSON writer: the bodies are built without an intermediate tree.
#[derive(Default)]
struct Json {
    out: Vec<u8>,
}

impl Json {
    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn string(&mut self, s: &str) {
        push_json_string(&mut self.out, s);
    }

    fn long(&mut self, v: i64) {
        self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    fn double(&mut self, v: f64) {
        fineport_contract::csv::push_f64(&mut self.out, v);
    }

    fn datetime(&mut self, ms: i64) {
        fineport_contract::csv::push_datetime_ms(&mut self.out, ms);
    }

    fn list(&mut self, n: usize, mut each: impl FnMut(&mut Json)) {
        self.raw("[");
        for i in 0..n {
            if i > 0 {
                self.raw(",");
            }
            each(self);
        }
        self.raw("]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_valid_json() {
        let a = generate(250, 7, Arrival::Live, EventSize::Standard, 2);
        let b = generate(250, 7, Arrival::Live, EventSize::Standard, 1);
        assert_eq!(a.bodies, b.bodies);
        assert_eq!(a.bodies.len(), 3);
        assert_eq!(a.per_day.iter().sum::<u64>(), 250);
        for body in &a.bodies {
            let v: Value = serde_json::from_slice(body).expect("valid JSON");
            let events = v["events"].as_array().expect("events");
            assert!(events.len() <= BATCH_EVENTS);
            let items: usize = events.iter().map(|e| e["items"].as_array().map_or(0, Vec::len)).sum();
            assert!(items <= MAX_BATCH_ITEMS);
        }
        let shuffled = generate(250, 7, Arrival::Shuffled, EventSize::Standard, 2);
        assert_eq!(shuffled.per_day.iter().sum::<u64>(), 250);
        assert_ne!(shuffled.bodies, a.bodies);
        assert_eq!(format!("2025-09-{:02}", ONE_DAY_INDEX + 1), ONE_DAY);
    }

    #[test]
    fn heavy_events_weigh_about_600_bytes_and_use_their_own_properties() {
        let size = |s: EventSize| {
            let d = generate(2_000, 3, Arrival::Live, s, 2);
            d.bodies.iter().map(Vec::len).sum::<usize>() as f64 / d.events as f64
        };
        let (standard, heavy) = (size(EventSize::Standard), size(EventSize::Heavy));
        assert!((380.0..480.0).contains(&standard), "standard: {standard} B/event");
        assert!((550.0..700.0).contains(&heavy), "heavy: {heavy} B/event");
        let registered = |s: EventSize| taxonomy(s)["event_properties"].as_array().map_or(0, Vec::len);
        assert_eq!(
            (registered(EventSize::Standard), registered(EventSize::Heavy)),
            (16, 27)
        );
        let d = generate(300, 3, Arrival::Live, EventSize::Heavy, 1);
        let text = String::from_utf8(d.bodies.concat()).expect("UTF-8");
        assert!(text.contains("\"user_agent\"") && text.contains("\"coupon_codes\""));
    }
}
