//! The request log (SPEC §5.2): one entry per API request, buffered in
//! memory and written to the store in batches, so logging never costs a
//! request its own commit. Reading the log flushes it first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fineport_store::{RequestLogEntry, Store};

#[derive(Clone)]
pub struct RequestLog {
    store: Arc<dyn Store>,
    buffer: Arc<Mutex<Vec<RequestLogEntry>>>,
    /// Serialises flushes so that entries reach the store in order.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

impl RequestLog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        RequestLog {
            store,
            buffer: Arc::default(),
            flushing: Arc::default(),
        }
    }

    /// Starts the background task that flushes every `every`.
    pub fn spawn_flusher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                log.flush().await;
            }
        })
    }

    pub fn record(&self, entry: RequestLogEntry) {
        tracing::info!(
            service_id = %entry.service_id,
            endpoint = %entry.endpoint,
            status = entry.status,
            outcome = %entry.message,
            rows = entry.rows,
            bytes = entry.bytes,
            duration_ms = entry.duration_ms,
            "request"
        );
        self.buffer.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
    }

    /// Writes everything recorded so far.
    pub async fn flush(&self) {
        let _order = self.flushing.lock().await;
        let entries = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.store.append_request_log(entries.clone()).await {
            // Kept for the next flush (the store may only be full for now),
            // within a bound: the oldest entries go first.
            let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::replace(&mut *buffer, entries);
            buffer.extend(newer);
            let dropped = buffer.len().saturating_sub(MAX_UNWRITTEN);
            buffer.drain(..dropped);
            tracing::error!(error = %e, kept = buffer.len(), dropped, "cannot write the request log; retrying at the next flush");
        }
    }
}

/// Request-log entries kept in memory while the store cannot take them.
const MAX_UNWRITTEN: usize = 100_000;
