//! The streaming CSV body: the response body polls the store's
//! [`ExportStream`], which produces only as fast as the body drains it
//! (the backend bounds what is in flight, so memory stays flat however big
//! the export).
//!
//! The body owns the export's stream, its concurrency slot and its
//! request-log entry: when the stream ends with its `End`, it records the
//! outcome; when it is dropped early (the client went away, the write
//! timeout, the shutdown deadline), it drops the stream — which stops the
//! store's query — frees the slot at once and records
//! `client_connection_closed`. A store failure after the first
//! byte ends the body with an error, so hyper closes the connection without
//! the final chunk and the client sees a broken transfer, never a short file.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use fineport_contract::export::ExportOutcome;
use fineport_store::{ExportPart, ExportStream, RequestLogEntry};
use futures::{Stream, StreamExt};

use super::error::store_outcome;
use crate::limits::ExportPermit;
use crate::metrics::InFlight;
use crate::request_log::RequestLog;

/// Everything needed to close an export's books: its slot, its count in
/// `fineport_exports_in_flight`, its log entry and its request's span
/// (the body is polled, and dropped, outside it).
pub struct Ledger {
    pub log: RequestLog,
    pub entry: RequestLogEntry,
    pub started: Instant,
    pub permit: ExportPermit,
    pub in_flight: InFlight,
    pub span: tracing::Span,
}

impl Ledger {
    /// Records the outcome (`Ok` = complete) and frees the slot. Quota is
    /// given back for a failure on the server's side, not when the client left.
    pub fn close(mut self, status: u16, outcome: Result<(), ExportOutcome>, rows: Option<u64>, bytes: u64) {
        if matches!(outcome, Err(o) if o != ExportOutcome::ClientConnectionClosed) {
            self.permit.refund();
        }
        drop(self.permit);
        drop(self.in_flight);
        let mut entry = self.entry;
        entry.status = status;
        entry.message = match outcome {
            Ok(()) => "ok".into(),
            Err(o) => o.message().into(),
        };
        entry.rows = rows;
        entry.bytes = Some(bytes);
        entry.duration_ms = self.started.elapsed().as_millis() as u64;
        self.log.record(entry, &self.span);
    }
}

/// The response body of a streaming export: the store's [`ExportStream`],
/// with the first chunk already taken from it.
pub struct ExportBody {
    /// `None` once dropped (before the ledger is closed).
    pub stream: Option<ExportStream>,
    pub first: Option<Bytes>,
    pub ledger: Option<Ledger>,
    pub bytes_sent: u64,
}

impl ExportBody {
    fn chunk(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.bytes_sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(chunk)))
    }

    fn fail(&mut self, outcome: ExportOutcome, why: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        tracing::error!(error = %why, "export failed after its first byte; aborting the response");
        self.stream = None;
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
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match stream.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(ExportPart::Chunk(chunk)))) => self.chunk(chunk),
            Poll::Ready(Some(Ok(ExportPart::End(summary)))) => {
                self.stream = None;
                if let Some(ledger) = self.ledger.take() {
                    ledger.close(200, Ok(()), Some(summary.rows), self.bytes_sent);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let outcome = match store_outcome(&e) {
                    ExportOutcome::ClientConnectionClosed => ExportOutcome::UnknownError,
                    other => other,
                };
                self.fail(outcome, e.to_string())
            }
            // Never complete without `End`.
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
            // Dropping the store's stream interrupts its query; then the slot goes.
            self.stream = None;
            ledger.close(200, Err(ExportOutcome::ClientConnectionClosed), None, self.bytes_sent);
        }
    }
}

/// The first `limit` rows of an export (with its header), then `End` with
/// `rows = limit`; the rest is never read: the inner stream is dropped,
/// which stops the store's query. An export with fewer rows passes through
/// whole. Rows are found by the CSV's own quoting (SPEC §2.3: a newline
/// inside a quoted cell is data), as the one encoder writes it.
pub fn first_rows(inner: ExportStream, limit: u64) -> ExportStream {
    struct Cut {
        inner: Option<ExportStream>,
        in_quotes: bool,
        /// Records ended so far, the header included.
        records: u64,
        bytes: u64,
        limit: u64,
        done: Option<fineport_store::ExportSummary>,
    }
    let cut = Cut {
        inner: Some(inner),
        in_quotes: false,
        records: 0,
        bytes: 0,
        limit,
        done: None,
    };
    Box::pin(futures::stream::unfold(cut, |mut cut| async move {
        if let Some(summary) = cut.done.take() {
            return Some((Ok(ExportPart::End(summary)), cut));
        }
        let inner = cut.inner.as_mut()?;
        match inner.next().await? {
            Ok(ExportPart::Chunk(chunk)) => {
                let mut end = None;
                for (i, b) in chunk.iter().enumerate() {
                    match b {
                        b'"' => cut.in_quotes = !cut.in_quotes,
                        b'\n' if !cut.in_quotes => {
                            cut.records += 1;
                            if cut.records == cut.limit + 1 {
                                end = Some(i + 1);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let chunk = match end {
                    None => chunk,
                    Some(n) => {
                        cut.inner = None;
                        cut.done = Some(fineport_store::ExportSummary {
                            rows: cut.limit,
                            bytes: cut.bytes + n as u64,
                        });
                        chunk.slice(..n)
                    }
                };
                cut.bytes += chunk.len() as u64;
                Some((Ok(ExportPart::Chunk(chunk)), cut))
            }
            Ok(end @ ExportPart::End(_)) => {
                cut.inner = None;
                Some((Ok(end), cut))
            }
            Err(e) => {
                cut.inner = None;
                Some((Err(e), cut))
            }
        }
    }))
}
