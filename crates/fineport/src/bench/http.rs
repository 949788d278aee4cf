//! The bench's HTTP client side: creating the service, loading the data
//! through the Import API, and timing exports through the Export API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};

use super::server::{RssSampler, ADMIN_TOKEN};

/// The service the bench creates.
pub const SERVICE_ID: &str = "bench";

pub struct Tokens {
    pub import: String,
    pub export: String,
}

fn client() -> anyhow::Result<reqwest::Client> {
    // No compression: the bench measures the plain CSV stream.
    reqwest::Client::builder()
        .no_gzip()
        .no_zstd()
        .pool_max_idle_per_host(1)
        .build()
        .context("cannot build an HTTP client")
}

/// Creates the service (no look-back limit, generous limits) and registers
/// the taxonomy; returns its tokens.
pub async fn create_service(base: &str, taxonomy: &Value) -> anyhow::Result<Tokens> {
    let http = client()?;
    let created: Value = admin(
        &http,
        &format!("{base}/admin/v1/services"),
        &json!({
            "service_id": SERVICE_ID,
            "timezone": "UTC",
            "export_lookback_days": 0,
            "limits": {"export_per_hour": 100_000, "export_concurrency": 50, "events_per_minute": 100_000_000u64}
        }),
    )
    .await?;
    admin(
        &http,
        &format!("{base}/admin/v1/services/{SERVICE_ID}/taxonomy"),
        taxonomy,
    )
    .await?;
    let token = |k: &str| {
        created[k]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {k} in {created}"))
    };
    Ok(Tokens {
        import: token("import_token")?,
        export: token("export_token")?,
    })
}

async fn admin(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let resp = http.post(url).bearer_auth(ADMIN_TOKEN).json(body).send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url} answered {status}: {v}");
    }
    Ok(v)
}

/// Sends every body to `POST /api/v1/events` from `clients` concurrent
/// clients (one connection each); every answer must be `20000`, which the
/// server sends only after the commit. Returns the wall time.
pub async fn import_all(base: &str, token: &str, bodies: Vec<Bytes>, clients: usize) -> anyhow::Result<Duration> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/api/v1/events?service_id={SERVICE_ID}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (bodies, next, url, token) = (bodies.clone(), next.clone(), url.clone(), token.to_owned());
        let http = client()?;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                send_batch(&http, &url, &token, body.clone())
                    .await
                    .with_context(|| format!("import request {i}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.context("an import client panicked")??;
    }
    Ok(started.elapsed())
}

async fn send_batch(http: &reqwest::Client, url: &str, token: &str, body: Bytes) -> anyhow::Result<()> {
    let resp = http
        .post(url)
        .header("access_token", token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let answer: Value = resp.json().await?;
    if answer["code"] != "20000" {
        bail!("the server refused a batch: {answer}");
    }
    Ok(())
}

/// One timed export through the Export API.
#[derive(Debug, Clone, Copy)]
pub struct ExportRun {
    pub rows: u64,
    pub bytes: u64,
    pub first_byte: Duration,
    /// The first byte of the first of the runs: for the first export after
    /// the server's restart, the one that loads DuckDB's blocks.
    pub first_byte_first_run: Duration,
    pub total: Duration,
    /// The server's RSS just before the request, and its peak during it.
    pub rss_before: u64,
    pub rss_peak: u64,
    /// DuckDB's block cache (its `BASE_TABLE` and `METADATA` memory, from
    /// `/metrics`) just before the request and after it; 0 on the cluster.
    pub cache_before: u64,
    pub cache_after: u64,
}

impl ExportRun {
    /// How much the server's RSS grew during the export.
    pub fn rss_growth(&self) -> u64 {
        self.rss_peak.saturating_sub(self.rss_before)
    }
}

/// The bytes of DuckDB's block cache, read from the server's `/metrics`
/// (`fineport_engine_memory_bytes` with tags `BASE_TABLE` and
/// `METADATA`); 0 when there is none (the cluster).
pub async fn block_cache_bytes(base: &str) -> anyhow::Result<u64> {
    let text = client()?
        .get(format!("{base}/metrics"))
        .bearer_auth(super::server::ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("fineport_engine_memory_bytes{tag=\"BASE_TABLE\"}")
                || l.starts_with("fineport_engine_memory_bytes{tag=\"METADATA\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Runs one export and reads the whole body, counting bytes and lines.
/// No value of the synthetic data holds a line break, so rows = lines − 1.
pub async fn export(base: &str, token: &str, body: &Value, server_pid: u32) -> anyhow::Result<(ExportRun, Vec<u8>)> {
    let http = client()?;
    let url = format!("{base}/api/v1/export/event?service_id={SERVICE_ID}");
    let cache_before = block_cache_bytes(base).await?;
    let rss_before = super::server::rss_bytes(server_pid).unwrap_or(0);
    let sampler = RssSampler::start(server_pid);
    let started = Instant::now();
    let mut resp = http.post(&url).bearer_auth(token).json(body).send().await?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!("export answered {status}: {}", resp.text().await.unwrap_or_default());
    }
    let mut first_byte = None;
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut header = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        first_byte.get_or_insert_with(|| started.elapsed());
        if lines == 0 {
            header.extend_from_slice(&chunk[..chunk.iter().position(|&c| c == b'\n').unwrap_or(chunk.len())]);
        }
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|&&c| c == b'\n').count() as u64;
    }
    let total = started.elapsed();
    let rss_peak = sampler.finish();
    let cache_after = block_cache_bytes(base).await?;
    let first_byte = first_byte.unwrap_or(total);
    let run = ExportRun {
        rows: lines.saturating_sub(1),
        bytes,
        first_byte,
        first_byte_first_run: first_byte,
        total,
        rss_before,
        rss_peak,
        cache_before,
        cache_after,
    };
    Ok((run, header))
}
