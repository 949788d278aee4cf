//! Which shard a row belongs to, so that the import log's moves go
//! straight to that shard's `events_local` instead of through the
//! Distributed table (requests answered on their own INSERT still go
//! through it, to be stored whole: `insert.rs`).
//!
//! An INSERT into the Distributed table makes its initiator parse every
//! row, hash it, split the block and forward the other shards' parts in
//! ClickHouse's native format, which those shards parse again: measured
//! during a heavy import on 2 shards, that forwarding (`DistrOutStrProc`,
//! and `TCPHandler` on the receiving shard) was ~19 % of the machine's CPU
//! beside ~5 % for parsing the HTTP body. fineport already holds each row's
//! sharding key, so it computes the Distributed table's own choice and
//! sends each shard its rows: the same row lands on the same shard as
//! before (old and new copies of an event still meet there, where
//! `ReplacingMergeTree` and the export's dedupe expect them), and
//! ClickHouse parses each row once.
//!
//! The Distributed table's choice (18.16's `DistributedBlockOutputStream`):
//! shard `slots[key % slots.len()]`, where `key` is the sharding
//! expression `cityHash64(service_id, event_log_id)` and `slots` lists each
//! shard, in `remote_servers` order, as many times as its weight.
//! `cityHash64` of several arguments hashes each with CityHash v1.0.2 and
//! folds them with CityHash's `Hash128to64`; the CityHash itself comes from
//! the `ch_cityhash102` crate, the fold is written here (the crate keeps
//! its own private), and a unit test pins both to values 18.16 computed.
//!
//! The URLs are matched to shards at open by asking each node which shard
//! of the cluster is local to it (`system.clusters.is_local`). When that
//! does not give one distinct shard per URL, each of one replica, with the
//! same shard list on every node (a URL that reaches no shard's node, two
//! that reach the same one, shards with replicas), the moves go through the
//! Distributed table too, and a warning at start says why.

use std::fmt;

/// One shard of fineport's cluster as a node's `system.clusters` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClusterRow {
    /// `shard_num`, from 1, in `remote_servers` order.
    pub shard_num: u32,
    /// `shard_weight`.
    pub weight: u32,
    /// `is_local` of one of its replicas: this node serves this shard.
    pub is_local: bool,
    /// How many replicas it lists.
    pub replicas: u32,
}

impl ClusterRow {
    /// Parses `SELECT shard_num, shard_weight, is_local … ORDER BY
    /// shard_num FORMAT TSV` into one row per shard (a shard's replicas
    /// are one row, local if any replica is); `None` for other text.
    pub fn parse_tsv(text: &str) -> Option<Vec<ClusterRow>> {
        let mut shards: Vec<ClusterRow> = Vec::new();
        for line in text.lines().filter(|line| !line.is_empty()) {
            let mut cells = line.split('\t');
            let row = ClusterRow {
                shard_num: cells.next()?.parse().ok()?,
                weight: cells.next()?.parse().ok()?,
                is_local: cells.next()? == "1",
                replicas: 1,
            };
            if cells.next().is_some() {
                return None;
            }
            match shards.last_mut() {
                Some(last) if last.shard_num == row.shard_num => {
                    last.is_local |= row.is_local;
                    last.replicas += 1;
                }
                _ => shards.push(row),
            }
        }
        Some(shards)
    }
}

/// Where the writer sends each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// To `events_local` on node `slots[key % slots.len()]` (an index into
    /// the URLs).
    Shards { slots: Vec<usize> },
    /// To the Distributed table on any node.
    Distributed,
}

/// Why the URLs could not be matched to shards.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unmatched(String);

impl fmt::Display for Unmatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Route {
    /// The route for nodes whose `system.clusters` shards are `listings`
    /// (one list per URL, in URL order): [`Route::Shards`] when every node
    /// lists the same shards and weights, each of one replica, and each
    /// node is local to one shard, every shard to one node; otherwise why
    /// not. (Where a shard has replicas, the Distributed table's
    /// `internal_replication` decides whether it writes one replica or
    /// each, and fineport leaves that to it.)
    pub fn from_listings(listings: &[Vec<ClusterRow>]) -> Result<Route, Unmatched> {
        let Some(first) = listings.first() else {
            return Err(Unmatched("no node".into()));
        };
        if let Some(shard) = first.iter().find(|shard| shard.replicas > 1) {
            return Err(Unmatched(format!("shard {} has replicas", shard.shard_num)));
        }
        let shards = |rows: &[ClusterRow]| rows.iter().map(|r| (r.shard_num, r.weight)).collect::<Vec<_>>();
        let mut node_of_shard = vec![None; first.len()];
        for (node, rows) in listings.iter().enumerate() {
            if shards(rows) != shards(first) {
                return Err(Unmatched(format!(
                    "node {} lists other shards or weights than node 1",
                    node + 1
                )));
            }
            let mut local = rows.iter().enumerate().filter(|(_, r)| r.is_local);
            let (Some((index, _)), None) = (local.next(), local.next()) else {
                return Err(Unmatched(format!(
                    "node {} is not local to exactly one shard of the cluster",
                    node + 1
                )));
            };
            if node_of_shard[index].replace(node).is_some() {
                return Err(Unmatched(format!("two URLs reach shard {}", first[index].shard_num)));
            }
        }
        let mut slots = Vec::new();
        for (index, row) in first.iter().enumerate() {
            match node_of_shard[index] {
                Some(node) => slots.extend(std::iter::repeat_n(node, row.weight as usize)),
                None => return Err(Unmatched(format!("no URL reaches shard {}", row.shard_num))),
            }
        }
        if slots.is_empty() {
            return Err(Unmatched("every shard has weight 0".into()));
        }
        Ok(Route::Shards { slots })
    }

    /// How many bodies an INSERT round fills: one per URL, or one.
    pub fn destinations(&self, nodes: usize) -> usize {
        match self {
            Route::Shards { .. } => nodes,
            Route::Distributed => 1,
        }
    }

    /// The body (URL index, or 0) of the row with these key columns.
    pub fn destination(&self, service_id: &str, event_log_id: &str) -> usize {
        match self {
            Route::Shards { slots } => {
                let key = city_hash64_pair(service_id.as_bytes(), event_log_id.as_bytes());
                slots[(key % slots.len() as u64) as usize]
            }
            Route::Distributed => 0,
        }
    }
}

/// ClickHouse's `cityHash64(a, b)` of two strings.
fn city_hash64_pair(a: &[u8], b: &[u8]) -> u64 {
    hash128_to_64(ch_cityhash102::cityhash64(a), ch_cityhash102::cityhash64(b))
}

/// CityHash's `Hash128to64(uint128(low, high))`, which ClickHouse uses to
/// combine the hashes of a function's arguments.
fn hash128_to_64(low: u64, high: u64) -> u64 {
    const MUL: u64 = 0x9ddf_ea08_eb38_2d69;
    let mut a = (low ^ high).wrapping_mul(MUL);
    a ^= a >> 47;
    let mut b = (high ^ a).wrapping_mul(MUL);
    b ^= b >> 47;
    b.wrapping_mul(MUL)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b7e5e5a-6f2c-4b7e-9a51-3f1b2c4d5e6f";

    #[test]
    fn city_hash_matches_clickhouse_18_16() {
        // `SELECT cityHash64('svc_1'), cityHash64(ID), cityHash64('svc_1', ID),
        // cityHash64('', ''), cityHash64(<75 bytes>, ID)` on 18.16.1.
        assert_eq!(ch_cityhash102::cityhash64(b"svc_1"), 5004479886984204157);
        assert_eq!(ch_cityhash102::cityhash64(ID.as_bytes()), 17398812221753194467);
        assert_eq!(city_hash64_pair(b"svc_1", ID.as_bytes()), 8238844902517759837);
        assert_eq!(city_hash64_pair(b"", b""), 857056678345777455);
        let long = b"a_much_longer_service_id_beyond_sixty_four_bytes_of_text_for_the_long_path";
        assert_eq!(city_hash64_pair(long, ID.as_bytes()), 11254992004029470382);
    }

    fn row(shard_num: u32, weight: u32, is_local: bool) -> ClusterRow {
        ClusterRow {
            shard_num,
            weight,
            is_local,
            replicas: 1,
        }
    }

    #[test]
    fn urls_in_any_order_map_to_their_shards_by_weight() {
        // URL 1 serves shard 2 (weight 2), URL 2 serves shard 1.
        let listings = [
            vec![row(1, 1, false), row(2, 2, true)],
            vec![row(1, 1, true), row(2, 2, false)],
        ];
        let route = Route::from_listings(&listings).expect("matched");
        assert_eq!(route, Route::Shards { slots: vec![1, 0, 0] });
        let key = city_hash64_pair(b"svc_1", ID.as_bytes());
        assert_eq!(route.destination("svc_1", ID), [1, 0, 0][(key % 3) as usize]);
        assert_eq!(route.destinations(2), 2);
    }

    #[test]
    fn unmatched_urls_fall_back_with_a_reason() {
        let same = [
            vec![row(1, 1, true), row(2, 1, false)],
            vec![row(1, 1, true), row(2, 1, false)],
        ];
        assert_eq!(
            Route::from_listings(&same).unwrap_err().to_string(),
            "two URLs reach shard 1"
        );
        let none = [vec![row(1, 1, false)]];
        assert!(Route::from_listings(&none).is_err());
        let differ = [
            vec![row(1, 1, true), row(2, 1, false)],
            vec![row(1, 2, false), row(2, 1, true)],
        ];
        assert!(Route::from_listings(&differ).is_err());
        assert_eq!(Route::Distributed.destination("svc_1", ID), 0);
        assert_eq!(Route::Distributed.destinations(2), 1);
    }

    #[test]
    fn parses_system_clusters() {
        assert_eq!(
            ClusterRow::parse_tsv("1\t1\t1\n2\t3\t0\n"),
            Some(vec![row(1, 1, true), row(2, 3, false)])
        );
        assert_eq!(ClusterRow::parse_tsv("1\t1\n"), None);
        // Two replicas of shard 1, the second on this node.
        assert_eq!(
            ClusterRow::parse_tsv("1\t1\t0\n1\t1\t1\n2\t1\t0\n"),
            Some(vec![
                ClusterRow {
                    replicas: 2,
                    ..row(1, 1, true)
                },
                row(2, 1, false)
            ])
        );
        let replicated = ClusterRow::parse_tsv("1\t1\t1\n1\t1\t0\n").expect("parsed");
        assert_eq!(
            Route::from_listings(&[replicated]).unwrap_err().to_string(),
            "shard 1 has replicas"
        );
    }
}
