//! The console's sessions, kept in this process's memory: who signed in
//! with the admin token, until when, and with which CSRF token; and how
//! many failed sign-ins each client address made lately.
//!
//! - A session id is 256 bits from the operating system's CSPRNG (through
//!   `rand`'s `ThreadRng`, a ChaCha generator seeded by it), sent once in
//!   the cookie and kept here only as its SHA-256, so a dump of this
//!   memory gives no usable cookie. A lookup hashes the presented id; the
//!   map is keyed by that hash (what an attacker could learn from the
//!   lookup's timing is about a hash of a 256-bit random value, nothing).
//! - The CSRF token is 256 other random bits, kept as is (the console
//!   reads it again after a reload through `GET /console/session`; it is
//!   worth nothing without the cookie) and compared in constant time.
//! - A session ends at its expiry ([`SESSION_LIFETIME`] after sign-in, by
//!   the server's injected clock) or at sign-out. At most [`MAX_SESSIONS`]
//!   are kept: each sign-in first drops the expired ones, then, if still
//!   full, the one that expires soonest.
//! - Failed sign-ins are counted per client IP address in windows of
//!   [`FAILURE_WINDOW`]: after [`MAX_FAILURES`] in a window, that address
//!   is refused until the window ends, without the token being checked.
//!   At most [`MAX_TRACKED_ADDRESSES`] addresses are tracked; when that
//!   many have failed within their windows, unknown addresses are refused
//!   too (a flood from many addresses pauses console sign-in for a minute;
//!   the admin API's bearer token keeps working).
//!
//! Several replicas do not share sessions: see ARCHITECTURE.md.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::hours(8);
/// The most sessions kept at once.
pub const MAX_SESSIONS: usize = 1_000;
/// Failed sign-ins one address may make within a [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window over which failed sign-ins are counted.
pub const FAILURE_WINDOW: Duration = Duration::minutes(1);
/// The most client addresses whose failures are tracked at once.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// A session as the client sees it: the cookie's value (only at sign-in),
/// the CSRF token and the expiry.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The session id, for the cookie: 64 hex digits.
    pub id: String,
    /// The value `X-CSRF-Token` must carry: 64 hex digits.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

struct Session {
    csrf_token: String,
    expires_at: DateTime<Utc>,
}

/// Failed sign-ins of one address within the window that began at `since`.
struct Failures {
    since: DateTime<Utc>,
    count: u32,
}

/// Every live session, and recent failed sign-ins.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a session at `now`, making room as the module docs say.
    pub fn create(&self, now: DateTime<Utc>) -> Issued {
        let issued = Issued {
            id: random_hex(),
            csrf_token: random_hex(),
            expires_at: now + SESSION_LIFETIME,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS {
            let soonest = sessions.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| *k);
            if let Some(k) = soonest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            key(&issued.id),
            Session {
                csrf_token: issued.csrf_token.clone(),
                expires_at: issued.expires_at,
            },
        );
        issued
    }

    /// The live session `id` names at `now` (its `id` field is empty: the
    /// id is not kept). An expired one is dropped and `None`.
    pub fn find(&self, id: &str, now: DateTime<Utc>) -> Option<Issued> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(id);
        match sessions.get(&k) {
            Some(s) if s.expires_at > now => Some(Issued {
                id: String::new(),
                csrf_token: s.csrf_token.clone(),
                expires_at: s.expires_at,
            }),
            Some(_) => {
                sessions.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Whether `id` names a live session at `now` whose CSRF token is
    /// `csrf` (compared in constant time).
    pub fn verify(&self, id: &str, csrf: &str, now: DateTime<Utc>) -> bool {
        self.find(id, now)
            .is_some_and(|s| bool::from(s.csrf_token.as_bytes().ct_eq(csrf.as_bytes())))
    }

    /// Forgets session `id`; whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&key(id)).is_some()
    }

    /// How many sessions are kept (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `ip` may try to sign in at `now` (see the module docs).
    pub fn may_try(&self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&ip) {
            Some(f) if f.since + FAILURE_WINDOW > now => f.count < MAX_FAILURES,
            Some(_) => true,
            None => {
                if failures.len() >= MAX_TRACKED_ADDRESSES {
                    failures.retain(|_, f| f.since + FAILURE_WINDOW > now);
                }
                failures.len() < MAX_TRACKED_ADDRESSES
            }
        }
    }

    /// Counts a failed sign-in of `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: DateTime<Utc>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED_ADDRESSES {
            failures.retain(|_, f| f.since + FAILURE_WINDOW > now);
        }
        if failures.len() >= MAX_TRACKED_ADDRESSES && !failures.contains_key(&ip) {
            return;
        }
        let f = failures.entry(ip).or_insert(Failures { since: now, count: 0 });
        if f.since + FAILURE_WINDOW <= now {
            *f = Failures { since: now, count: 0 };
        }
        f.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a valid instant")
    }

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires_and_not_after_removal() {
        let sessions = Sessions::new();
        let s = sessions.create(t0());
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf_token);
        assert!(sessions.verify(&s.id, &s.csrf_token, t0()));
        assert!(!sessions.verify(&s.id, &s.id, t0()), "the id is not the CSRF token");
        assert!(!sessions.verify(&s.csrf_token, &s.csrf_token, t0()));
        let later = t0() + SESSION_LIFETIME - Duration::seconds(1);
        assert_eq!(sessions.find(&s.id, later).map(|f| f.expires_at), Some(s.expires_at));
        assert!(sessions.find(&s.id, t0() + SESSION_LIFETIME).is_none());
        assert!(sessions.is_empty(), "an expired session is dropped when met");
        let s = sessions.create(t0());
        assert!(sessions.remove(&s.id));
        assert!(!sessions.remove(&s.id));
        assert!(sessions.find(&s.id, t0()).is_none());
    }

    #[test]
    fn sessions_are_bounded_expired_ones_first_then_the_soonest_to_expire() {
        let sessions = Sessions::new();
        let first = sessions.create(t0());
        for i in 1..MAX_SESSIONS {
            sessions.create(t0() + Duration::seconds(i as i64));
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let newest = sessions.create(t0() + Duration::seconds(MAX_SESSIONS as i64));
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let now = t0() + Duration::seconds(MAX_SESSIONS as i64);
        assert!(
            sessions.find(&first.id, now).is_none(),
            "the soonest to expire made room"
        );
        assert!(sessions.find(&newest.id, now).is_some());
        // Once all but the newest have expired, a sign-in drops them all.
        let much_later = newest.expires_at - Duration::seconds(1);
        sessions.create(much_later);
        assert_eq!(sessions.len(), 2);
    }

    #[test]
    fn failed_sign_ins_are_bounded_per_address_and_window() {
        let sessions = Sessions::new();
        let ip: IpAddr = "192.0.2.1".parse().expect("an address");
        let other: IpAddr = "192.0.2.2".parse().expect("an address");
        for _ in 0..MAX_FAILURES {
            assert!(sessions.may_try(ip, t0()));
            sessions.failed(ip, t0());
        }
        assert!(!sessions.may_try(ip, t0()));
        assert!(!sessions.may_try(ip, t0() + FAILURE_WINDOW - Duration::seconds(1)));
        assert!(sessions.may_try(other, t0()));
        assert!(sessions.may_try(ip, t0() + FAILURE_WINDOW));
        sessions.failed(ip, t0() + FAILURE_WINDOW);
        assert!(
            sessions.may_try(ip, t0() + FAILURE_WINDOW),
            "a new window counts from one"
        );
    }
}
