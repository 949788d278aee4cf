//! The first correction time of each future-dated event (SPEC §2.2
//! "correction time"): an event whose client time is later than its
//! receipt is stored with correction = receipt, so a resend would get a
//! later correction than the first delivery. The memo keeps the first one,
//! atomically across processes, until it can no longer matter.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use fineport_contract::{ServiceId, Uuid};

use super::{pg_error, Postgres};
use crate::StoreError;

/// How long after its event time a memo is kept (ms): a resend can only
/// differ while the client time is still ahead of the clock, so a week is
/// ample for clocks that run fast.
const KEEP_AFTER_EVENT_MS: i64 = 7 * 24 * 3_600_000;

/// How often expired memos are deleted, at most (ms).
const PURGE_EVERY_MS: i64 = 3_600_000;

impl Postgres {
    /// Records the first correction time of future-dated events, atomically.
    ///
    /// `proposals` are `(event_log_id, correction_ms, event_datetime_ms)`
    /// of this batch's future-dated events (UTC ms; correction = the
    /// receipt time). Answers, for each id, the correction recorded first
    /// — by this call or by any earlier or concurrent one, in any process
    /// — which the caller stores instead of its proposal. An id proposed
    /// twice in one call counts its first proposal. Once an hour at most,
    /// memos whose event time is over a week before `now_ms` (the caller's
    /// clock, which gave the receipt times) are deleted. Errors:
    /// `Query`/`Internal` (see the module doc of [`super`]).
    pub async fn first_corrections(
        &self,
        service_id: &ServiceId,
        proposals: &[(Uuid, i64, i64)],
        now_ms: i64,
    ) -> Result<HashMap<Uuid, i64>, StoreError> {
        self.purge_expired(now_ms).await;
        if proposals.is_empty() {
            return Ok(HashMap::new());
        }
        // Each id once (ON CONFLICT may touch a row once per statement),
        // in id order so that concurrent callers lock rows in one order.
        let mut first: Vec<(Uuid, i64, i64)> = Vec::with_capacity(proposals.len());
        let mut seen = std::collections::HashSet::new();
        for proposal in proposals {
            if seen.insert(proposal.0) {
                first.push(*proposal);
            }
        }
        first.sort_unstable_by_key(|p| p.0);
        let ids: Vec<Uuid> = first.iter().map(|p| p.0).collect();
        let corrections: Vec<i64> = first.iter().map(|p| p.1).collect();
        let events: Vec<i64> = first.iter().map(|p| p.2).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "INSERT INTO first_corrections (service_id, event_log_id, correction_ms, event_ms) \
                 SELECT $1, id, correction, event FROM unnest($2::uuid[], $3::bigint[], $4::bigint[]) \
                 AS n(id, correction, event) \
                 ON CONFLICT (service_id, event_log_id) \
                 DO UPDATE SET correction_ms = first_corrections.correction_ms \
                 RETURNING event_log_id, correction_ms",
                &[&service_id.as_str(), &ids, &corrections, &events],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| Ok((row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?)))
            .collect()
    }

    /// Deletes expired memos if that was last done over [`PURGE_EVERY_MS`]
    /// ago; a failure is logged and retried next time.
    async fn purge_expired(&self, now_ms: i64) {
        let last = self.last_purge_ms.load(Ordering::Relaxed);
        if now_ms - last < PURGE_EVERY_MS
            || self
                .last_purge_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let result = match self.client().await {
            Ok(client) => client
                .execute(
                    "DELETE FROM first_corrections WHERE event_ms < $1",
                    &[&(now_ms - KEEP_AFTER_EVENT_MS)],
                )
                .await
                .map_err(pg_error),
            Err(e) => Err(e),
        };
        match result {
            Ok(n) => tracing::debug!(deleted = n, "deleted expired first-correction memos"),
            Err(e) => {
                self.last_purge_ms.store(last, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot delete expired first-correction memos");
            }
        }
    }
}
