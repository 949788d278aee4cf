//! The user-profile export (SPEC §2.4) as every backend writes it: the CSV
//! of one row per profile ([`ProfileCsv`]), and the audience rule that keeps
//! only users who did every event condition ([`InEvery`], a streaming
//! merge-join over sorted unified ids).
//!
//! A backend streams its profiles in ascending byte order of
//! `df_unified_id` with their property values, and hands each profile to
//! [`ProfileCsv::push_row`]; the bytes are the same whichever backend wrote
//! them.

use std::collections::HashMap;
use std::pin::Pin;

use fineport_contract::csv;
use fineport_contract::profile::{ProfileExportPlan, EXTERNAL_ID_COLUMN, UNIFIED_ID_COLUMN};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::StoreError;

/// What one CSV column of a profile row holds.
enum ProfileColumn {
    UnifiedId,
    ExternalId,
    Property(String),
}

/// The CSV layout of a user-profile export: its columns in byte order of
/// their names (see [`ProfileExportPlan::headers`]).
pub struct ProfileCsv {
    headers: Vec<String>,
    columns: Vec<ProfileColumn>,
}

impl ProfileCsv {
    pub fn new(plan: &ProfileExportPlan) -> ProfileCsv {
        let headers = plan.headers();
        let columns = headers
            .iter()
            .map(|h| match h.as_str() {
                UNIFIED_ID_COLUMN => ProfileColumn::UnifiedId,
                EXTERNAL_ID_COLUMN if plan.with_external_id => ProfileColumn::ExternalId,
                name => ProfileColumn::Property(name.to_owned()),
            })
            .collect();
        ProfileCsv { headers, columns }
    }

    /// The header line, `\n`-terminated.
    pub fn header(&self) -> Vec<u8> {
        let mut line = Vec::new();
        csv::push_line(&mut line, &self.headers);
        line
    }

    /// Appends one profile's cells to `out`, comma-separated, **without**
    /// the line end. `values` maps property name → CSV cell text (as
    /// stored, see `fineport_contract::profile::cell_text`); a property the
    /// profile lacks, like a missing external_id, is an empty cell.
    pub fn push_row(
        &self,
        out: &mut Vec<u8>,
        unified_id: &str,
        external_id: Option<&str>,
        values: &HashMap<String, String>,
    ) {
        for (i, column) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let cell = match column {
                ProfileColumn::UnifiedId => Some(unified_id),
                ProfileColumn::ExternalId => external_id,
                ProfileColumn::Property(name) => values.get(name).map(String::as_str),
            };
            if let Some(cell) = cell {
                csv::push_field(out, cell.as_bytes());
            }
        }
    }
}

/// A stream of unified ids in strictly ascending byte order, each once:
/// the users of one event condition of an audience (from the event store).
pub type SortedIds = BoxStream<'static, Result<String, StoreError>>;

/// Whether a unified id is in every one of several [`SortedIds`] streams,
/// asked for ids in ascending order: a merge-join that reads each stream
/// once, only as far as the ids asked about, holding one id per stream.
/// With no streams, every id is in all of them.
pub struct InEvery {
    streams: Vec<Cursor>,
}

/// One stream and the first id of it not yet passed.
struct Cursor {
    stream: SortedIds,
    head: Option<String>,
    /// The stream has ended: no id from here on is in it.
    ended: bool,
}

impl Cursor {
    /// Reads past every id below `id`; whether the stream holds `id`.
    async fn holds(&mut self, id: &str) -> Result<bool, StoreError> {
        loop {
            if let Some(head) = &self.head {
                if head.as_str() >= id {
                    return Ok(head == id);
                }
            }
            if self.ended {
                return Ok(false);
            }
            match Pin::new(&mut self.stream).next().await.transpose()? {
                Some(next) => {
                    if self.head.as_ref().is_some_and(|head| next <= *head) {
                        return Err(StoreError::internal(format!(
                            "event users are not in ascending order: {next:?} after {:?}",
                            self.head
                        )));
                    }
                    self.head = Some(next);
                }
                None => {
                    self.ended = true;
                    self.head = None;
                }
            }
        }
    }
}

impl InEvery {
    pub fn new(streams: Vec<SortedIds>) -> InEvery {
        InEvery {
            streams: streams
                .into_iter()
                .map(|stream| Cursor {
                    stream,
                    head: None,
                    ended: false,
                })
                .collect(),
        }
    }

    /// Whether `id` is in every stream. Ids must be asked in ascending byte
    /// order (a repeated id is answered again); an id below one asked
    /// before may be answered wrongly. Errors: a stream's own error, or
    /// `Internal` for a stream out of order.
    pub async fn contains(&mut self, id: &str) -> Result<bool, StoreError> {
        for cursor in &mut self.streams {
            if !cursor.holds(id).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// No id above those asked so far can be in every stream (one of them
    /// has ended): an export may stop reading profiles.
    pub fn exhausted(&self) -> bool {
        self.streams.iter().any(|c| c.ended)
    }
}

/// The ids in every one of `streams`, ascending: [`InEvery`] as a stream,
/// driven by the first of them (none → an empty stream).
pub fn intersect(mut streams: Vec<SortedIds>) -> impl Stream<Item = Result<String, StoreError>> + Send {
    let first = (!streams.is_empty()).then(|| streams.remove(0));
    let rest = InEvery::new(streams);
    futures::stream::unfold((first, rest), |(first, mut rest)| async move {
        let mut first = first?;
        loop {
            let id = match first.next().await? {
                Ok(id) => id,
                Err(e) => return Some((Err(e), (None, rest))),
            };
            match rest.contains(&id).await {
                Ok(true) => return Some((Ok(id), (Some(first), rest))),
                Ok(false) if rest.exhausted() => return None,
                Ok(false) => {}
                Err(e) => return Some((Err(e), (None, rest))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> SortedIds {
        let owned: Vec<Result<String, StoreError>> = list.iter().map(|s| Ok((*s).to_owned())).collect();
        futures::stream::iter(owned).boxed()
    }

    async fn collect(streams: Vec<SortedIds>) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let stream = intersect(streams);
        futures::pin_mut!(stream);
        while let Some(id) = stream.next().await {
            out.push(id?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn the_intersection_keeps_ids_in_every_stream() {
        let got = collect(vec![
            ids(&["a", "b", "c", "d", "f"]),
            ids(&["b", "c", "e", "f"]),
            ids(&["0", "c", "f", "g"]),
        ])
        .await
        .unwrap();
        assert_eq!(got, vec!["c", "f"]);
        assert_eq!(
            collect(vec![ids(&["a"]), ids(&[])]).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(collect(vec![]).await.unwrap(), Vec::<String>::new());
        // Byte order: "B" < "a".
        assert_eq!(
            collect(vec![ids(&["B", "a"]), ids(&["B", "a"])]).await.unwrap(),
            vec!["B", "a"]
        );
    }

    #[tokio::test]
    async fn membership_reads_only_as_far_as_asked_and_notices_the_end() {
        let mut every = InEvery::new(vec![ids(&["b", "d"]), ids(&["a", "b", "c", "d"])]);
        assert!(!every.contains("a").await.unwrap());
        assert!(every.contains("b").await.unwrap());
        assert!(every.contains("b").await.unwrap());
        assert!(!every.contains("c").await.unwrap());
        assert!(!every.exhausted());
        assert!(every.contains("d").await.unwrap());
        assert!(!every.contains("e").await.unwrap());
        assert!(every.exhausted());
        assert!(InEvery::new(Vec::new()).contains("x").await.unwrap());
    }

    #[tokio::test]
    async fn a_stream_out_of_order_or_failing_is_an_error() {
        let mut every = InEvery::new(vec![ids(&["b", "a"])]);
        assert!(!every.contains("a").await.unwrap());
        assert!(every.contains("c").await.is_err());
        let failing: SortedIds = futures::stream::iter(vec![Err(StoreError::query("gone"))]).boxed();
        let err = collect(vec![ids(&["a"]), failing]).await.unwrap_err();
        assert_eq!(err.message, "gone");
    }
}
