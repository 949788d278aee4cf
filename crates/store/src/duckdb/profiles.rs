//! Profiles on DuckDB: identity upserts and deletes, user-property updates
//! that never let an older update overwrite a newer one, audiences, and the
//! streaming user-profile export.
//!
//! User properties are rows of `user_properties` holding each value as its
//! CSV cell text (see `fineport_contract::profile::cell_text`). The export
//! joins them to `profiles` ordered by `df_unified_id` and folds each
//! profile's rows into one CSV row as they stream by, so memory stays flat.

use std::collections::HashMap;

use duckdb::arrow::array::{Array, StringArray};
use duckdb::types::Value as Sql;
use duckdb::{params, params_from_iter, Connection};
use fineport_contract::import::Identity;
use fineport_contract::profile::{newest_values, AudienceFilter, CheckedCondition, ProfileExportPlan, ProfileUpdate};
use fineport_contract::time::day_bounds_ms;
use fineport_contract::ServiceId;
use fineport_contract::Tz;

use super::export::{query_error, Out};
use super::identity::{Identities, Staged};
use super::schema::all_events;
use super::stream::Sink;
use super::writer::WriterState;
use crate::profile_export::ProfileCsv;
use crate::{ExportSummary, StoreError};

/// Resolves identities within the open transaction and writes what they
/// create; the index changes apply after the commit.
fn resolve(
    state: &mut WriterState,
    service_id: &ServiceId,
    identities: &[&Identity],
) -> Result<Vec<String>, StoreError> {
    let mut staged = state.pending.take().unwrap_or_default();
    // A conflict fails the whole job: its transaction rolls back and the
    // staged changes are dropped with `staged`.
    let uids = identities
        .iter()
        .map(|identity| state.identities.resolve(&mut staged, service_id, identity))
        .collect::<Result<Vec<_>, _>>()?;
    Identities::write(&state.conn, &mut staged, chrono::Utc::now().timestamp_millis())?;
    state.pending = Some(staged);
    Ok(uids)
}

pub(crate) fn upsert_identity(
    state: &mut WriterState,
    service_id: &ServiceId,
    identity: &Identity,
) -> Result<String, StoreError> {
    let mut uids = resolve(state, service_id, &[identity])?;
    uids.pop()
        .ok_or_else(|| StoreError::internal("identity resolution answered nothing"))
}

pub(crate) fn delete_profile(
    state: &mut WriterState,
    service_id: &ServiceId,
    external_id: &str,
) -> Result<bool, StoreError> {
    let Some(uid) = state.identities.by_external_id(service_id, external_id) else {
        return Ok(false);
    };
    let mut staged = Staged::default();
    Identities::delete(&state.conn, &mut staged, service_id, &uid)?;
    state.pending = Some(staged);
    Ok(true)
}

pub(crate) fn update_profiles(
    state: &mut WriterState,
    service_id: &ServiceId,
    updates: &[ProfileUpdate],
) -> Result<(), StoreError> {
    let identities: Vec<&Identity> = updates.iter().map(|u| &u.identity).collect();
    let uids = resolve(state, service_id, &identities)?;
    let latest = newest_values(updates, &uids);
    // One set-based upsert through a staging table: row-by-row upserts
    // cost DuckDB milliseconds each.
    let conn = &state.conn;
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS stage_user_properties \
         (service_id VARCHAR, unified_id VARCHAR, name VARCHAR, value VARCHAR, updated_ms BIGINT); \
         DELETE FROM stage_user_properties;",
    )?;
    {
        let mut app = conn.appender_to_catalog_and_db("stage_user_properties", "temp", "main")?;
        for ((uid, name), (cell, ms)) in &latest {
            app.append_row(params![service_id.as_str(), uid, name, cell, ms])?;
        }
        app.flush()?;
    }
    conn.execute_batch(
        "INSERT INTO user_properties SELECT * FROM stage_user_properties \
         ON CONFLICT (service_id, unified_id, name) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms \
         WHERE excluded.updated_ms >= user_properties.updated_ms",
    )?;
    Ok(())
}

/// The `WHERE` restriction of an audience and its parameters.
fn audience_sql(
    service_id: &ServiceId,
    timezone: Tz,
    audience: Option<&AudienceFilter>,
    params: &mut Vec<Sql>,
) -> String {
    let list = |items: &[String]| Sql::List(items.iter().cloned().map(Sql::Text).collect());
    match audience {
        None => String::new(),
        Some(AudienceFilter::ExternalIds(ids)) => {
            params.push(list(ids));
            " AND list_contains(CAST(? AS VARCHAR[]), p.external_id)".to_string()
        }
        Some(AudienceFilter::All(conditions)) => conditions
            .iter()
            .map(|c| match c {
                CheckedCondition::Event { event, min_count, from_date, to_date } => {
                    let (start, _) = day_bounds_ms(*from_date, timezone);
                    let (_, end) = day_bounds_ms(*to_date, timezone);
                    params.push(Sql::Text(event.clone()));
                    params.push(Sql::BigInt(i64::from(*min_count)));
                    format!(
                        " AND p.unified_id IN (SELECT unified_id FROM {} WHERE event_name = ? \
                         AND correction_ts >= make_timestamp({}::BIGINT) AND correction_ts < make_timestamp({}::BIGINT) \
                         GROUP BY unified_id HAVING count(*) >= ?)",
                        all_events(service_id),
                        start * 1000,
                        end * 1000
                    )
                }
                CheckedCondition::Property { property, cell } => {
                    params.push(Sql::Text(service_id.to_string()));
                    params.push(Sql::Text(property.clone()));
                    params.push(Sql::Text(cell.clone()));
                    " AND p.unified_id IN (SELECT unified_id FROM user_properties \
                     WHERE service_id = ? AND name = ? AND value = ?)"
                        .to_string()
                }
            })
            .collect(),
    }
}

pub(crate) fn export(
    conn: &Connection,
    service_id: &ServiceId,
    timezone: Tz,
    plan: &ProfileExportPlan,
    audience: Option<&AudienceFilter>,
    sink: &mut Sink,
) -> Result<ExportSummary, StoreError> {
    let interrupt = conn.interrupt_handle();
    sink.set_interrupt(move || interrupt.interrupt())?;
    let csv = ProfileCsv::new(plan);
    let names: Vec<String> = plan.properties.iter().map(|(n, _)| n.clone()).collect();

    let mut params = Vec::new();
    let join = if names.is_empty() {
        "LEFT JOIN (SELECT NULL::VARCHAR AS unified_id, NULL::VARCHAR AS name, NULL::VARCHAR AS value) up ON false"
            .to_string()
    } else {
        params.push(Sql::List(names.iter().cloned().map(Sql::Text).collect()));
        "LEFT JOIN user_properties up ON up.service_id = p.service_id AND up.unified_id = p.unified_id \
         AND list_contains(CAST(? AS VARCHAR[]), up.name)"
            .to_string()
    };
    params.push(Sql::Text(service_id.to_string()));
    let restriction = audience_sql(service_id, timezone, audience, &mut params);
    let sql = format!(
        "SELECT p.unified_id, p.external_id, up.name, up.value FROM profiles p {join} \
         WHERE p.service_id = ?{restriction} ORDER BY p.unified_id"
    );

    let mut out = Out::new(csv.header(), sink);
    let mut stmt = conn.prepare(&sql).map_err(query_error)?;
    let stream = stmt
        .stream_arrow(params_from_iter(params.iter()))
        .map_err(query_error)?;
    let mut current: Option<(String, Option<String>)> = None;
    let mut values: HashMap<String, String> = HashMap::new();
    for batch in stream {
        let batch = batch.map_err(query_error)?;
        let strings = |i: usize| {
            batch.column(i).as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                StoreError::internal(format!(
                    "unexpected profile column type {}",
                    batch.column(i).data_type()
                ))
            })
        };
        let (uids, exts, props, vals) = (strings(0)?, strings(1)?, strings(2)?, strings(3)?);
        for row in 0..batch.num_rows() {
            let uid = uids.value(row);
            if current.as_ref().is_none_or(|(u, _)| u != uid) {
                if let Some(done) = current.take() {
                    write_row(&mut out, &csv, &done, &values)?;
                    values.clear();
                }
                let ext = (!exts.is_null(row)).then(|| exts.value(row).to_owned());
                current = Some((uid.to_owned(), ext));
            }
            if !props.is_null(row) && !vals.is_null(row) {
                values.insert(props.value(row).to_owned(), vals.value(row).to_owned());
            }
        }
    }
    if let Some(done) = current.take() {
        write_row(&mut out, &csv, &done, &values)?;
    }
    out.flush()?;
    Ok(out.summary)
}

fn write_row(
    out: &mut Out<'_>,
    csv: &ProfileCsv,
    (uid, ext): &(String, Option<String>),
    values: &HashMap<String, String>,
) -> Result<(), StoreError> {
    csv.push_row(&mut out.buf, uid, ext.as_deref(), values);
    out.end_row()
}
