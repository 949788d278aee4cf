//! The `event_log_id`s a service already holds: what makes event imports
//! idempotent.
//!
//! The writer thread keeps them in memory, one [`IdSet`] per service, loaded
//! from the event table the first time the service imports after a start.
//! An index in DuckDB would do the same job, but checking a few hundred ids
//! against it (a query with a primary-key insert per commit) was a third of
//! the writer's time per import, while a lookup here is a binary search.
//! Like the identity index, ids of a transaction are staged and only join
//! the set once it has committed.

use duckdb::Connection;
use fineport_contract::ServiceId;
use fineport_contract::Uuid;
use foldhash::HashSet;

use super::schema::all_events;
use crate::StoreError;

/// A set of 128-bit ids in about 16 bytes each: a sorted vector, plus a hash
/// set of the ids added since it was last sorted, folded in when it grows.
#[derive(Debug, Default)]
pub(crate) struct IdSet {
    sorted: Vec<u128>,
    recent: HashSet<u128>,
}

impl IdSet {
    /// Reads every `event_log_id` of a service's event tables.
    pub fn load(conn: &Connection, service_id: &ServiceId) -> Result<IdSet, StoreError> {
        let mut stmt = conn.prepare(&format!("SELECT event_log_id FROM {}", all_events(service_id)))?;
        let mut sorted = Vec::new();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let text = row.get_ref(0)?;
            let text = text
                .as_str()
                .map_err(|e| StoreError::internal(format!("event_log_id is not text: {e}")))?;
            let id = Uuid::try_parse(text)
                .map_err(|e| StoreError::internal(format!("stored event_log_id {text:?} is not a UUID: {e}")))?;
            sorted.push(id.as_u128());
        }
        sorted.sort_unstable();
        sorted.dedup();
        Ok(IdSet {
            sorted,
            recent: HashSet::default(),
        })
    }

    pub fn contains(&self, id: u128) -> bool {
        self.recent.contains(&id) || self.sorted.binary_search(&id).is_ok()
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Adds committed ids.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = u128>) {
        for id in ids {
            if self.sorted.binary_search(&id).is_err() {
                self.recent.insert(id);
            }
        }
        // Fold the hash set into the vector once it is an eighth of it: the
        // merge is linear, so its cost per added id stays constant.
        if self.recent.len() > 4096 && self.recent.len() * 8 > self.sorted.len() {
            let mut fresh: Vec<u128> = self.recent.drain().collect();
            fresh.sort_unstable();
            let old = std::mem::take(&mut self.sorted);
            self.sorted = merge(old, fresh);
        }
    }
}

fn merge(a: Vec<u128>, b: Vec<u128>) -> Vec<u128> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_added_id_across_folds() {
        let mut set = IdSet::default();
        let ids: Vec<u128> = (0..50_000u128)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
            .collect();
        for chunk in ids.chunks(700) {
            set.extend(chunk.iter().copied());
        }
        assert_eq!(set.len(), ids.len());
        assert!(ids.iter().all(|&id| set.contains(id)));
        assert!(!set.contains(7) && !set.contains(u128::MAX));
        // Adding again changes nothing.
        set.extend(ids[..10_000].iter().copied());
        set.extend(std::iter::repeat_n(0, 5000));
        assert!(set.contains(0));
        assert!(set.sorted.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn loads_the_ids_of_both_event_tables() {
        let conn = Connection::open_in_memory().expect("duckdb");
        conn.execute_batch(
            "CREATE TABLE \"events_s\" (event_log_id VARCHAR NOT NULL); \
             CREATE TABLE \"late_events_s\" (event_log_id VARCHAR NOT NULL)",
        )
        .expect("create");
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        conn.execute(
            "INSERT INTO \"events_s\" VALUES (?), (?), (?)",
            [a.to_string(), b.to_string(), a.to_string()],
        )
        .expect("insert");
        conn.execute("INSERT INTO \"late_events_s\" VALUES (?)", [c.to_string()])
            .expect("insert");
        let set = IdSet::load(&conn, &ServiceId::parse("s").unwrap()).expect("load");
        assert_eq!(set.len(), 3);
        assert!(set.contains(a.as_u128()) && set.contains(b.as_u128()) && set.contains(c.as_u128()));
        assert!(!set.contains(Uuid::new_v4().as_u128()));
    }
}
