//! Requests out of rows: `/api/v1/events` takes one identity per request
//! (`common.identity`), at most [`MAX_EVENTS_PER_REQUEST`] events and
//! [`MAX_ITEMS_PER_REQUEST`] items (SPEC §4), so events are grouped by
//! user. Memory is bounded: a user's group goes out when it is full, and
//! when more than the window's bound of events wait, the oldest groups go
//! out until half of it is left. Profiles are one request each.

use std::collections::{HashMap, VecDeque};

use fineport_contract::import::{MAX_EVENTS_PER_REQUEST, MAX_ITEMS_PER_REQUEST};
use serde_json::{Map, Value as Json};

use super::{Kind, Row};

/// How many events may wait for their user's group to fill.
pub const WINDOW_EVENTS: usize = 20_000;

/// One request's worth of rows: events of one identity, or one profile
/// (`identity: None`; the identity is in the body).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub identity: Option<Map<String, Json>>,
    pub rows: Vec<Row>,
}

impl Request {
    /// The JSON body: `{"common":{"identity":…},"events":[…]}`, or the
    /// profile's own `{"identity","user_properties","request_datetime"}`.
    pub fn body(&self) -> Json {
        match &self.identity {
            Some(identity) => {
                let events: Vec<Json> = self.rows.iter().map(|r| Json::Object(r.body.clone())).collect();
                serde_json::json!({"common": {"identity": identity}, "events": events})
            }
            None => self
                .rows
                .first()
                .map(|r| Json::Object(r.body.clone()))
                .unwrap_or(Json::Null),
        }
    }

    /// The same identity with `rows`.
    pub fn with_rows(&self, rows: Vec<Row>) -> Request {
        Request {
            identity: self.identity.clone(),
            rows,
        }
    }
}

struct Group {
    seq: u64,
    identity: Map<String, Json>,
    rows: Vec<Row>,
    items: usize,
}

/// Groups rows into [`Request`]s.
pub struct Batcher {
    kind: Kind,
    bound: usize,
    groups: HashMap<String, Group>,
    /// Groups by first arrival: `(seq, key)`; stale entries (the group went
    /// out since) are skipped.
    order: VecDeque<(u64, String)>,
    buffered: usize,
    seq: u64,
}

impl Batcher {
    /// A batcher holding at most about `bound` events.
    pub fn new(kind: Kind, bound: usize) -> Batcher {
        Batcher {
            kind,
            bound: bound.max(1),
            groups: HashMap::new(),
            order: VecDeque::new(),
            buffered: 0,
            seq: 0,
        }
    }

    /// Adds a row; returns the requests now ready.
    pub fn push(&mut self, identity: Map<String, Json>, row: Row) -> Vec<Request> {
        if self.kind == Kind::Profiles {
            return vec![Request {
                identity: None,
                rows: vec![row],
            }];
        }
        let mut ready = Vec::new();
        let key = identity_key(&identity);
        let full = self
            .groups
            .get(&key)
            .is_some_and(|g| g.rows.len() >= MAX_EVENTS_PER_REQUEST || g.items + row.items > MAX_ITEMS_PER_REQUEST);
        if full {
            ready.extend(self.take(&key));
        }
        let seq = self.seq;
        let group = self.groups.entry(key.clone()).or_insert_with(|| Group {
            seq,
            identity,
            rows: Vec::new(),
            items: 0,
        });
        if group.seq == seq {
            self.seq += 1;
            self.order.push_back((seq, key));
        }
        group.items += row.items;
        group.rows.push(row);
        self.buffered += 1;
        if self.buffered > self.bound {
            while self.buffered > self.bound / 2 {
                let Some((seq, key)) = self.order.pop_front() else {
                    break;
                };
                if self.groups.get(&key).is_some_and(|g| g.seq == seq) {
                    ready.extend(self.take(&key));
                }
            }
        }
        ready
    }

    /// Every group still waiting, oldest first.
    pub fn finish(mut self) -> Vec<Request> {
        let mut ready = Vec::new();
        while let Some((seq, key)) = self.order.pop_front() {
            if self.groups.get(&key).is_some_and(|g| g.seq == seq) {
                ready.extend(self.take(&key));
            }
        }
        ready
    }

    fn take(&mut self, key: &str) -> Option<Request> {
        let group = self.groups.remove(key)?;
        self.buffered -= group.rows.len();
        Some(Request {
            identity: Some(group.identity),
            rows: group.rows,
        })
    }
}

/// The same key for the same identifiers in any member order.
fn identity_key(identity: &Map<String, Json>) -> String {
    let mut pairs: Vec<(&String, &Json)> = identity.iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    serde_json::to_string(&pairs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Origin;
    use serde_json::json;

    fn row(n: u64, items: usize) -> Row {
        Row {
            origin: Origin {
                file: "f".into(),
                line: n,
            },
            event_log_id: None,
            items,
            body: Map::new(),
        }
    }

    fn id(user: &str) -> Map<String, Json> {
        match json!({"external_id": user}) {
            Json::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn groups_by_user_within_the_request_limits() {
        let mut b = Batcher::new(Kind::Events, 100_000);
        let mut out = Vec::new();
        for n in 0..250 {
            out.extend(b.push(id(if n % 2 == 0 { "a" } else { "b" }), row(n, 0)));
        }
        assert_eq!(out.len(), 2, "a and b each filled one request of 100");
        assert!(out.iter().all(|r| r.rows.len() == 100));
        out.extend(b.finish());
        assert_eq!(out.iter().map(|r| r.rows.len()).sum::<usize>(), 250);
        assert!(out.iter().all(|r| r.rows.len() <= 100));

        // Items: 60 + 60 > 100, so the second event starts a new request.
        let mut b = Batcher::new(Kind::Events, 100_000);
        assert!(b.push(id("a"), row(1, 60)).is_empty());
        let ready = b.push(id("a"), row(2, 60));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].rows.len(), 1);
        assert_eq!(b.finish()[0].rows[0].origin.line, 2);
    }

    #[test]
    fn memory_stays_bounded_and_identities_match_in_any_order() {
        let mut b = Batcher::new(Kind::Events, 10);
        let mut out = Vec::new();
        for n in 0..100 {
            out.extend(b.push(id(&format!("u{n}")), row(n, 0)));
            assert!(b.buffered <= 10);
        }
        out.extend(b.finish());
        assert_eq!(out.len(), 100);
        assert_eq!(out[0].rows[0].origin.line, 0, "oldest first");

        let one = json!({"external_id": "x", "email": "e"});
        let two = json!({"email": "e", "external_id": "x"});
        assert_eq!(
            identity_key(one.as_object().unwrap()),
            identity_key(two.as_object().unwrap())
        );
    }

    #[test]
    fn a_profile_is_a_request_of_its_own() {
        let mut b = Batcher::new(Kind::Profiles, 10);
        let ready = b.push(Map::new(), row(1, 0));
        assert_eq!(ready.len(), 1);
        assert!(ready[0].identity.is_none());
    }
}
