//! The streaming CSV body: a blocking store export feeds a bounded channel,
//! the response body drains it.
//!
//! The bound gives backpressure, so memory stays flat however big the
//! export. The body owns the export's concurrency slot and its request-log
//! entry: when it ends, it records the outcome; when it is dropped early
//! (the client went away), it interrupts the query, frees the slot at once
//! and records `client_connection_closed`. A store failure after the first
//! byte ends the body with an error, so hyper closes the connection without
//! the final chunk and the client sees a broken transfer, never a short file.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use fineport_contract::export::ExportOutcome;
use fineport_store::{ExportSink, ExportSummary, RequestLogEntry, StoreError};
use futures::Stream;
use tokio::sync::mpsc;

use super::error::store_outcome;
use crate::limits::ExportPermit;
use crate::request_log::RequestLog;

/// Chunks in flight between the store and the socket (each ~64 KiB).
pub const CHANNEL_CHUNKS: usize = 4;

pub enum Msg {
    Chunk(Vec<u8>),
    Done(Result<ExportSummary, StoreError>),
}

pub type InterruptSlot = Arc<Mutex<Option<Box<dyn Fn() + Send + Sync>>>>;

pub fn interrupt(slot: &InterruptSlot) {
    if let Some(f) = slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        f();
    }
}

/// The store's side of the channel.
pub struct ChannelSink {
    pub tx: mpsc::Sender<Msg>,
    pub interrupt: InterruptSlot,
}

impl ExportSink for ChannelSink {
    fn send(&mut self, chunk: Vec<u8>) -> bool {
        self.tx.blocking_send(Msg::Chunk(chunk)).is_ok()
    }

    fn set_interrupt(&mut self, interrupt: Box<dyn Fn() + Send + Sync>) {
        *self.interrupt.lock().unwrap_or_else(|p| p.into_inner()) = Some(interrupt);
    }
}

/// Everything needed to close an export's books: its slot and its log entry.
pub struct Ledger {
    pub log: RequestLog,
    pub entry: RequestLogEntry,
    pub started: Instant,
    pub permit: ExportPermit,
}

impl Ledger {
    /// Records the outcome (`Ok` = complete) and frees the slot. Quota is
    /// given back for a failure on the server's side, not when the client left.
    pub fn close(mut self, status: u16, outcome: Result<(), ExportOutcome>, rows: Option<u64>, bytes: u64) {
        if matches!(outcome, Err(o) if o != ExportOutcome::ClientConnectionClosed) {
            self.permit.refund();
        }
        drop(self.permit);
        let mut entry = self.entry;
        entry.status = status;
        entry.message = match outcome {
            Ok(()) => "ok".into(),
            Err(o) => o.message().into(),
        };
        entry.rows = rows;
        entry.bytes = Some(bytes);
        entry.duration_ms = self.started.elapsed().as_millis() as u64;
        self.log.record(entry);
    }
}

/// The response body of a streaming export.
pub struct ExportBody {
    pub rx: mpsc::Receiver<Msg>,
    pub first: Option<Vec<u8>>,
    pub interrupt: InterruptSlot,
    pub ledger: Option<Ledger>,
    pub bytes_sent: u64,
}

impl ExportBody {
    fn chunk(&mut self, chunk: Vec<u8>) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.bytes_sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(Bytes::from(chunk))))
    }

    fn fail(&mut self, outcome: ExportOutcome, why: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        tracing::error!(error = %why, "export failed after its first byte; aborting the response");
        if let Some(ledger) = self.ledger.take() {
            // Mid-stream the status line is long gone: the log says 200 + what happened.
            ledger.close(200, Err(outcome), None, self.bytes_sent);
        }
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
}

impl Stream for ExportBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return self.chunk(first);
        }
        if self.ledger.is_none() {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Msg::Chunk(chunk))) => self.chunk(chunk),
            Poll::Ready(Some(Msg::Done(Ok(summary)))) => {
                if let Some(ledger) = self.ledger.take() {
                    ledger.close(200, Ok(()), Some(summary.rows), self.bytes_sent);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Msg::Done(Err(e)))) => {
                let outcome = match store_outcome(&e) {
                    ExportOutcome::ClientConnectionClosed => ExportOutcome::UnknownError,
                    other => other,
                };
                self.fail(outcome, e.to_string())
            }
            Poll::Ready(None) => self.fail(
                ExportOutcome::UnknownError,
                "the export stopped without finishing".into(),
            ),
        }
    }
}

impl Drop for ExportBody {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger.take() {
            interrupt(&self.interrupt);
            ledger.close(200, Err(ExportOutcome::ClientConnectionClosed), None, self.bytes_sent);
        }
    }
}
