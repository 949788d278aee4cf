//! Users matching an audience event-count rule, streamed in unified-id
//! order.
//!
//! One `GROUP BY unified_id HAVING uniqExact(event_log_id) >= n` on the
//! Distributed table: counting distinct `event_log_id`s makes the count
//! immune to resends that merges have not removed yet. Each row starts
//! with a fixed 4-byte marker: an error text that 18.16 appends after a
//! failure (`Code: …`) could otherwise read as a plausible length-prefixed
//! id, while it can never start with the marker.

use std::sync::Arc;

use fineport_contract::ServiceId;
use futures::Stream;

use super::response::Rows;
use super::{literal, new_query_id, Inner, KillOnDrop};
use crate::StoreError;

/// The marker at the start of every row (its bytes are not ASCII).
const ROW_MARKER: u32 = 0xF1E2_D3C4;

/// Starts the query; see [`super::ClickHouse::users_with_events`].
pub(crate) async fn with_events(
    inner: Arc<Inner>,
    service_id: &ServiceId,
    event: &str,
    min_count: u32,
    from_ms: i64,
    to_ms: i64,
) -> Result<impl Stream<Item = Result<String, StoreError>> + Send + 'static, StoreError> {
    let sql = format!(
        "SELECT toUInt32({ROW_MARKER}), unified_id FROM {} WHERE service_id = '{}' AND event_name = {} \
         AND correction_ms >= {from_ms} AND correction_ms < {to_ms} GROUP BY unified_id \
         HAVING uniqExact(event_log_id) >= {min_count} ORDER BY unified_id FORMAT RowBinary",
        inner.events_table,
        service_id.as_str(),
        literal(event)
    );
    let node = inner.pick_node();
    let query_id = new_query_id("users");
    let max_time = inner.options.max_execution_secs.to_string();
    let params = [
        ("query_id", query_id.as_str()),
        ("max_execution_time", max_time.as_str()),
    ];
    let guard = KillOnDrop::new(inner.clone(), node, query_id.clone());
    let response = inner.post(node, &params, sql).await?;
    let state = State {
        rows: Rows::new(response, inner.nodes[node].clone()),
        guard,
        last: None,
        done: false,
    };
    Ok(futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        let item = state.next().await;
        match &item {
            Ok(None) => {
                state.guard.disarm();
                return None;
            }
            Err(_) => state.done = true,
            Ok(Some(_)) => {}
        }
        Some((item.map(Option::unwrap_or_default), state))
    }))
}

/// The stream's state: the response, and the last id for the order check.
struct State {
    rows: Rows,
    guard: KillOnDrop,
    last: Option<Vec<u8>>,
    done: bool,
}

impl State {
    /// The next id; `None` at the end.
    async fn next(&mut self) -> Result<Option<String>, StoreError> {
        let Some((marker, id)) = self.rows.next(|c| Some((c.u32()?, c.str()?))).await? else {
            return Ok(None);
        };
        let id = &self.rows.buf()[id];
        if marker != ROW_MARKER {
            return Err(self.rows.failure("a row without its marker").await);
        }
        if self.last.as_deref().is_some_and(|last| id <= last) {
            return Err(self.rows.failure("unified ids out of order").await);
        }
        let Ok(text) = std::str::from_utf8(id) else {
            return Err(self.rows.failure("a unified id that is not UTF-8").await);
        };
        let text = text.to_string();
        self.last = Some(id.to_vec());
        Ok(Some(text))
    }
}
