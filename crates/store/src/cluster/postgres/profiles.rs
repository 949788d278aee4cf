//! Profiles on PostgreSQL: identity resolution under the service's
//! advisory lock, profile deletes, newer-wins user-property upserts, and
//! the streaming user-profile export (SPEC §1, §2.4, §4).

use std::collections::HashMap;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use deadpool_postgres::Object;
use fineport_contract::import::Identity;
use fineport_contract::profile::{newest_values, AudienceFilter, CheckedCondition, ProfileExportPlan, ProfileUpdate};
use fineport_contract::{ServiceId, Tz};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::schema::LOCK_NAMESPACE;
use super::{pg_error, Postgres};
use crate::channel;
use crate::identity::{IdentityChange, IdentityMap, Staged};
use crate::profile_export::{InEvery, ProfileCsv, SortedIds};
use crate::{ExportPart, ExportStream, ExportSummary, StoreError, StoreErrorKind, CHUNK_BYTES};

/// Rows the export fetches from its portal at a time.
const FETCH_ROWS: i32 = 2_000;

/// Takes the service's identity lock for the rest of the transaction.
async fn lock_identities(client: &impl GenericClient, service_id: &ServiceId) -> Result<(), StoreError> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_NAMESPACE, &service_id.as_str()],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Resolves `identities` (in order) within the open transaction and writes
/// what they change: the lock, then the identifiers they name with their
/// profiles and the profiles they name by `df_unified_id`, then the
/// algorithm of [`crate::identity`], then its rows. An identity conflict is
/// an `Invalid` error, before anything is written (the caller's
/// transaction rolls back on drop).
async fn resolve(
    client: &impl GenericClient,
    service_id: &ServiceId,
    identities: &[&Identity],
) -> Result<Vec<String>, StoreError> {
    lock_identities(client, service_id).await?;
    let needed = IdentityMap::needed(identities.iter().copied());
    let (kinds, values): (Vec<&str>, Vec<&str>) = needed.identifiers.into_iter().unzip();
    let rows = client
        .query(
            "SELECT i.kind, i.value, i.unified_id, p.unified_id IS NOT NULL, p.external_id \
             FROM unnest($2::text[], $3::text[]) AS n(kind, value) \
             JOIN identifiers i ON i.service_id = $1 AND i.kind = n.kind AND i.value = n.value \
             LEFT JOIN profiles p ON p.service_id = i.service_id AND p.unified_id = i.unified_id",
            &[&service_id.as_str(), &kinds, &values],
        )
        .await
        .map_err(pg_error)?;
    let mut committed = IdentityMap::default();
    for row in rows {
        let kind: String = row.try_get(0).map_err(pg_error)?;
        let uid: String = row.try_get(2).map_err(pg_error)?;
        if row.try_get(3).map_err(pg_error)? {
            committed.insert_profile(uid.clone(), row.try_get(4).map_err(pg_error)?);
        }
        if !committed.insert_identifier(&kind, row.try_get(1).map_err(pg_error)?, uid) {
            return Err(StoreError::internal(format!("unknown identifier kind {kind:?}")));
        }
    }
    if !needed.unified_ids.is_empty() {
        let rows = client
            .query(
                "SELECT unified_id, external_id FROM profiles WHERE service_id = $1 AND unified_id = ANY($2::text[])",
                &[&service_id.as_str(), &needed.unified_ids],
            )
            .await
            .map_err(pg_error)?;
        for row in rows {
            committed.insert_profile(row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?);
        }
    }
    let mut staged = Staged::default();
    let uids = identities
        .iter()
        .map(|identity| staged.resolve(&committed, identity))
        .collect::<Result<Vec<_>, _>>()?;
    write_changes(client, service_id, staged.take_changes()).await?;
    Ok(uids)
}

/// Writes resolution's changes: new rows first, then updates (an
/// identifier moved twice ends with its last owner).
async fn write_changes(
    client: &impl GenericClient,
    service_id: &ServiceId,
    changes: Vec<IdentityChange>,
) -> Result<(), StoreError> {
    let (mut new_uids, mut new_exts) = (Vec::new(), Vec::new());
    let (mut merged_uids, mut merged_exts) = (Vec::new(), Vec::new());
    let (mut id_kinds, mut id_values, mut id_uids) = (Vec::new(), Vec::new(), Vec::new());
    let mut moved: HashMap<(&'static str, String), String> = HashMap::new();
    for change in changes {
        match change {
            IdentityChange::NewProfile {
                unified_id,
                external_id,
            } => {
                new_uids.push(unified_id);
                new_exts.push(external_id);
            }
            IdentityChange::MergedProfile {
                unified_id,
                external_id,
            } => {
                merged_uids.push(unified_id);
                merged_exts.push(external_id);
            }
            IdentityChange::NewIdentifier {
                kind,
                value,
                unified_id,
            } => {
                id_kinds.push(kind);
                id_values.push(value);
                id_uids.push(unified_id);
            }
            IdentityChange::MovedIdentifier {
                kind,
                value,
                unified_id,
            } => {
                moved.insert((kind, value), unified_id);
            }
        }
    }
    let service = service_id.as_str();
    if !new_uids.is_empty() {
        let now_ms = chrono::Utc::now().timestamp_millis();
        client
            .execute(
                "INSERT INTO profiles (service_id, unified_id, external_id, created_ms) \
             SELECT $1, uid, ext, $4 FROM unnest($2::text[], $3::text[]) AS n(uid, ext)",
                &[&service, &new_uids, &new_exts, &now_ms],
            )
            .await
            .map_err(pg_error)?;
    }
    if !id_kinds.is_empty() {
        client
            .execute(
                "INSERT INTO identifiers (service_id, kind, value, unified_id) \
             SELECT $1, kind, value, uid FROM unnest($2::text[], $3::text[], $4::text[]) AS n(kind, value, uid)",
                &[&service, &id_kinds, &id_values, &id_uids],
            )
            .await
            .map_err(pg_error)?;
    }
    if !merged_uids.is_empty() {
        client
            .execute(
                "UPDATE profiles p SET external_id = m.ext FROM unnest($2::text[], $3::text[]) AS m(uid, ext) \
             WHERE p.service_id = $1 AND p.unified_id = m.uid",
                &[&service, &merged_uids, &merged_exts],
            )
            .await
            .map_err(pg_error)?;
    }
    if !moved.is_empty() {
        let (mut kinds, mut values, mut uids) = (Vec::new(), Vec::new(), Vec::new());
        for ((kind, value), uid) in moved {
            kinds.push(kind);
            values.push(value);
            uids.push(uid);
        }
        client
            .execute(
                "UPDATE identifiers i SET unified_id = m.uid \
             FROM unnest($2::text[], $3::text[], $4::text[]) AS m(kind, value, uid) \
             WHERE i.service_id = $1 AND i.kind = m.kind AND i.value = m.value",
                &[&service, &kinds, &values, &uids],
            )
            .await
            .map_err(pg_error)?;
    }
    Ok(())
}

impl Postgres {
    /// Creates or updates the profile of `identity` (resolution with merge
    /// and moves, SPEC §1 "Unified profile"; see [`Staged::resolve`]).
    /// Returns its `df_unified_id`. Durable on return; resolutions of one
    /// service are serialized across processes (module doc).
    pub async fn upsert_identity(&self, service_id: &ServiceId, identity: Identity) -> Result<String, StoreError> {
        self.upsert_identities(service_id, &[&identity])
            .await?
            .pop()
            .ok_or_else(|| StoreError::internal("identity resolution answered nothing"))
    }

    /// [`Postgres::upsert_identity`] of each of `identities`, in order, in
    /// one transaction (what a move of the cluster's import log resolves
    /// at once): one `df_unified_id` per identity. One conflict fails all
    /// of them, with nothing written.
    pub async fn upsert_identities(
        &self,
        service_id: &ServiceId,
        identities: &[&Identity],
    ) -> Result<Vec<String>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let uids = resolve(&tx, service_id, identities).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(uids)
    }

    /// Deletes the profile with `external_id`, its identifiers and its
    /// properties, irreversibly; events stay. `false` if there was none.
    pub async fn delete_profile(&self, service_id: &ServiceId, external_id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        lock_identities(&tx, service_id).await?;
        let service = service_id.as_str();
        let Some(row) = tx
            .query_opt(
                "SELECT unified_id FROM identifiers WHERE service_id = $1 AND kind = 'external_id' AND value = $2",
                &[&service, &external_id],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(false);
        };
        let uid: String = row.try_get(0).map_err(pg_error)?;
        for sql in [
            "DELETE FROM identifiers WHERE service_id = $1 AND unified_id = $2",
            "DELETE FROM user_properties WHERE service_id = $1 AND unified_id = $2",
            "DELETE FROM profiles WHERE service_id = $1 AND unified_id = $2",
        ] {
            tx.execute(sql, &[&service, &uid]).await.map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    /// Applies profile updates (SPEC §4) atomically: resolves each
    /// identity, then upserts each property unless the stored value is
    /// newer (by request time, ms; a tie goes to the later write). Within
    /// the request, the later update of a tie wins. Durable on return.
    pub async fn update_profiles(&self, service_id: &ServiceId, updates: Vec<ProfileUpdate>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let identities: Vec<&Identity> = updates.iter().map(|u| &u.identity).collect();
        let uids = resolve(&tx, service_id, &identities).await?;
        // In key order, so that concurrent upserts lock rows in one order.
        let rows = newest_values(&updates, &uids);
        let (mut uids, mut names, mut cells, mut times) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((uid, name), (cell, ms)) in rows {
            uids.push(uid);
            names.push(name);
            cells.push(cell);
            times.push(ms);
        }
        if !uids.is_empty() {
            tx.execute(
                "INSERT INTO user_properties (service_id, unified_id, name, value, updated_ms) \
                 SELECT $1, uid, name, value, ms FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) \
                 AS n(uid, name, value, ms) \
                 ON CONFLICT (service_id, unified_id, name) DO UPDATE \
                 SET value = excluded.value, updated_ms = excluded.updated_ms \
                 WHERE excluded.updated_ms >= user_properties.updated_ms",
                &[&service_id.as_str(), &uids, &names, &cells, &times],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }

    /// Starts a user-profile export (SPEC §2.4) and returns its CSV as an
    /// [`ExportStream`]: the header, then one row per profile in ascending
    /// byte order of `df_unified_id`, the same bytes as the DuckDB backend,
    /// in ~[`CHUNK_BYTES`] chunks, then `End` with rows and bytes.
    ///
    /// `audience` restricts the profiles: `ExternalIds` and property
    /// conditions in SQL; the users of the i-th `Event` condition come as
    /// `event_users[i]` (ascending byte order, each once, e.g. from
    /// ClickHouse), and a profile is kept only if it is in every one of
    /// them (a streaming merge-join, [`InEvery`]). The timezone is not needed
    /// here (the event conditions' days are the event store's business).
    ///
    /// Memory stays flat: the query runs as a portal fetched
    /// [`FETCH_ROWS`] rows at a time, at most a few chunks ahead of the
    /// consumer. Errors: `Internal` at once if `event_users` does not
    /// match the event conditions; a failed query (`Query`) or lost
    /// connection (`Internal`) before any byte, as the stream's first
    /// item. Dropping the stream cancels the query and rolls back.
    pub async fn export_profiles(
        &self,
        service_id: &ServiceId,
        _timezone: Tz,
        plan: &ProfileExportPlan,
        audience: Option<&AudienceFilter>,
        event_users: Vec<SortedIds>,
    ) -> Result<ExportStream, StoreError> {
        let events = match audience {
            Some(AudienceFilter::All(conditions)) => conditions
                .iter()
                .filter(|c| matches!(c, CheckedCondition::Event { .. }))
                .count(),
            _ => 0,
        };
        if events != event_users.len() {
            return Err(StoreError::internal(format!(
                "the audience has {events} event conditions but {} user streams were given",
                event_users.len()
            )));
        }
        let query = ProfileQuery::new(service_id, plan, audience);
        let csv = ProfileCsv::new(plan);
        let mut client = self.client().await?;
        let (tx, rx) = channel::channel();
        tokio::spawn(async move {
            let mut sink = Sink { tx };
            let result = run_export(&mut client, &query, &csv, InEvery::new(event_users), &mut sink).await;
            if result.as_ref().is_err_and(|e| e.kind == StoreErrorKind::Cancelled) {
                // A cancel request may land late: never hand this
                // connection to another caller, close it.
                drop(Object::take(client));
            }
            let last = match result {
                Ok(summary) => Ok(ExportPart::End(summary)),
                Err(e) => Err(e),
            };
            let _ = sink.tx.send(last).await;
        });
        // No task abort on drop: the task must see the closed channel and
        // close its connection itself (above), never hand it back mid-query.
        Ok(channel::stream(rx, ()))
    }
}

/// The export's SQL and its parameters.
struct ProfileQuery {
    sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl ProfileQuery {
    fn new(service_id: &ServiceId, plan: &ProfileExportPlan, audience: Option<&AudienceFilter>) -> ProfileQuery {
        let names: Vec<String> = plan.properties.iter().map(|(n, _)| n.clone()).collect();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(service_id.to_string()), Box::new(names)];
        let mut restriction = String::new();
        match audience {
            None => {}
            Some(AudienceFilter::ExternalIds(ids)) => {
                params.push(Box::new(ids.clone()));
                restriction.push_str(&format!(" AND p.external_id = ANY(${}::text[])", params.len()));
            }
            Some(AudienceFilter::All(conditions)) => {
                for condition in conditions {
                    if let CheckedCondition::Property { property, cell } = condition {
                        params.push(Box::new(property.clone()));
                        params.push(Box::new(cell.clone()));
                        restriction.push_str(&format!(
                            " AND EXISTS (SELECT 1 FROM user_properties c WHERE c.service_id = p.service_id \
                             AND c.unified_id = p.unified_id AND c.name = ${} AND c.value = ${})",
                            params.len() - 1,
                            params.len()
                        ));
                    }
                }
            }
        }
        let sql = format!(
            "SELECT p.unified_id, p.external_id, up.name, up.value FROM profiles p \
             LEFT JOIN user_properties up ON up.service_id = p.service_id AND up.unified_id = p.unified_id \
             AND up.name = ANY($2::text[]) \
             WHERE p.service_id = $1{restriction} ORDER BY p.unified_id"
        );
        ProfileQuery { sql, params }
    }
}

/// The export task's end of the channel.
struct Sink {
    tx: mpsc::Sender<channel::Item>,
}

fn cancelled() -> StoreError {
    StoreError::new(StoreErrorKind::Cancelled, "the export stream was dropped")
}

/// The CSV being written: a buffer handed on in ~[`CHUNK_BYTES`] chunks.
/// The header waits in the buffer with the first rows, so a failing query
/// fails before any byte.
struct Out<'a> {
    buf: Vec<u8>,
    sink: &'a mut Sink,
    summary: ExportSummary,
}

impl Out<'_> {
    async fn end_row(&mut self) -> Result<(), StoreError> {
        self.buf.push(b'\n');
        self.summary.rows += 1;
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4));
        self.summary.bytes += chunk.len() as u64;
        self.sink
            .tx
            .send(Ok(ExportPart::Chunk(Bytes::from(chunk))))
            .await
            .map_err(|_| cancelled())
    }
}

/// One profile as its rows go by.
struct Current {
    unified_id: String,
    external_id: Option<String>,
    values: HashMap<String, String>,
}

/// Runs the export on its own connection, in a read-only transaction whose
/// portal is fetched a batch at a time. Stops (cancelling the running
/// fetch) as soon as the consumer is gone, with a `Cancelled` error.
async fn run_export(
    client: &mut Object,
    query: &ProfileQuery,
    csv: &ProfileCsv,
    mut in_every: InEvery,
    sink: &mut Sink,
) -> Result<ExportSummary, StoreError> {
    let cancel = client.cancel_token();
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    let params = query.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync));
    let portal = tx.bind_raw(query.sql.as_str(), params).await.map_err(pg_error)?;
    let closed = sink.tx.clone();
    let mut out = Out {
        buf: csv.header(),
        sink,
        summary: ExportSummary::default(),
    };
    let mut current: Option<Current> = None;
    'fetch: loop {
        let fetch = async {
            let rows = tx.query_portal_raw(&portal, FETCH_ROWS).await?;
            rows.collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        };
        let rows = tokio::select! {
            rows = fetch => rows.map_err(pg_error)?,
            () = closed.closed() => {
                if let Err(e) = cancel.cancel_query(NoTls).await {
                    tracing::warn!(error = %e, "cannot cancel an abandoned profile export");
                }
                return Err(cancelled());
            }
        };
        let last_batch = rows.len() < FETCH_ROWS as usize;
        for row in rows {
            let uid: &str = row.try_get(0).map_err(pg_error)?;
            if current.as_ref().is_none_or(|c| c.unified_id != uid) {
                if let Some(done) = current.take() {
                    if !write_profile(&mut out, csv, &mut in_every, done).await? {
                        break 'fetch;
                    }
                }
                current = Some(Current {
                    unified_id: uid.to_owned(),
                    external_id: row.try_get(1).map_err(pg_error)?,
                    values: HashMap::new(),
                });
            }
            let name: Option<String> = row.try_get(2).map_err(pg_error)?;
            let value: Option<String> = row.try_get(3).map_err(pg_error)?;
            if let (Some(c), Some(name), Some(value)) = (current.as_mut(), name, value) {
                c.values.insert(name, value);
            }
        }
        if last_batch {
            if let Some(done) = current.take() {
                write_profile(&mut out, csv, &mut in_every, done).await?;
            }
            break;
        }
    }
    out.flush().await?;
    let summary = out.summary;
    // Ends the read-only transaction (and its portal) at once; a failure
    // here cannot change what was exported.
    if let Err(e) = tx.commit().await {
        tracing::warn!(error = %e, "cannot end a profile export's transaction");
    }
    Ok(summary)
}

/// Writes `profile` if it is in every event condition's users. `false`
/// when no later profile can be (an event stream has ended): stop.
async fn write_profile(
    out: &mut Out<'_>,
    csv: &ProfileCsv,
    in_every: &mut InEvery,
    profile: Current,
) -> Result<bool, StoreError> {
    if in_every.contains(&profile.unified_id).await? {
        csv.push_row(
            &mut out.buf,
            &profile.unified_id,
            profile.external_id.as_deref(),
            &profile.values,
        );
        out.end_row().await?;
    }
    Ok(!in_every.exhausted())
}
