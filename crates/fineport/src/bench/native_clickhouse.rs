//! The cluster's reference: ClickHouse's own `SELECT … FORMAT CSVWithNames`
//! of the same rows and columns as a fineport export, over the same HTTP
//! interface fineport reads, on the Distributed table (so both shards work,
//! as they do for fineport). The body is read to the end and counted, as the
//! bench client counts fineport's.
//!
//! ClickHouse writes its own spellings (timestamps as the stored epoch
//! milliseconds, every string quoted), so the bytes differ a little; the
//! rows, columns and order do not. It runs one query for the whole range:
//! the memory bound that makes fineport query day by day is not its
//! concern here.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::NaiveDate;
use futures::StreamExt;

use super::http::SERVICE_ID;
use super::native::{NativeRun, Query};

/// The system columns: CSV name → column of `events`.
const SYSTEM: [(&str, &str); 8] = [
    ("df_unified_id", "unified_id"),
    ("event_name", "event_name"),
    ("df_api_version", "api_version"),
    ("df_server_datetime", "server_ms"),
    ("df_correction_datetime", "correction_ms"),
    ("df_event_log_id", "event_log_id"),
    ("df_event_datetime", "event_ms"),
    ("df_platform", "platform"),
];

pub struct ClickHouseNative {
    http: reqwest::Client,
    url: String,
    database: String,
}

impl ClickHouseNative {
    pub fn new(url: &str, database: &str) -> anyhow::Result<ClickHouseNative> {
        Ok(ClickHouseNative {
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(1))
                .build()?,
            url: url.to_owned(),
            database: database.to_owned(),
        })
    }

    /// The SELECT expression of a CSV column of fineport's header.
    fn column(name: &str) -> String {
        match SYSTEM.iter().find(|(n, _)| *n == name) {
            Some((_, col)) => (*col).to_string(),
            None => format!("prop_values[indexOf(prop_keys, '{name}')] AS `{name}`"),
        }
    }

    /// Runs one query and reads its whole answer; returns its size and time.
    pub async fn select(&self, q: &Query<'_>) -> anyhow::Result<NativeRun> {
        let ms = |day: &str| -> anyhow::Result<i64> {
            let date = NaiveDate::parse_from_str(day, "%Y-%m-%d").with_context(|| format!("bad day {day}"))?;
            Ok(date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis())
        };
        let select: Vec<String> = q.header.split(',').map(Self::column).collect();
        let filter = q.events.map_or(String::new(), |names| {
            let list: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
            format!(" AND event_name IN ({})", list.join(", "))
        });
        let order = if q.ordered {
            " ORDER BY correction_ms, event_log_id"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {} FROM {}.events WHERE service_id = '{SERVICE_ID}' AND correction_ms >= {} \
             AND correction_ms < {}{filter}{order} FORMAT CSVWithNames",
            select.join(", "),
            self.database,
            ms(q.from_day)?,
            ms(q.until_day)?,
        );
        let started = Instant::now();
        let resp = self
            .http
            .post(&self.url)
            .body(sql.clone())
            .send()
            .await
            .context("ClickHouse query")?;
        if !resp.status().is_success() {
            let status = resp.status();
            bail!(
                "ClickHouse answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let mut bytes = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            bytes += chunk.context("reading ClickHouse's answer")?.len() as u64;
        }
        Ok(NativeRun {
            bytes,
            total: started.elapsed(),
        })
    }
}
