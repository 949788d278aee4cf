//! An export on DuckDB as an [`ExportStream`]: the export runs on a
//! blocking thread (DuckDB's API is blocking) and hands its chunks over a
//! bounded channel to the stream its caller polls.
//!
//! The bound (`channel.rs`: a few chunks of ~64 KiB) gives backpressure:
//! the thread waits while the consumer is behind, so memory stays flat
//! however big the export. Dropping the stream interrupts the running
//! query (through the callback the export registered with
//! [`Sink::set_interrupt`]) and closes the channel, so the thread stops at
//! its next query step or chunk and ends. The thread always says how it
//! ended: [`ExportPart::End`] or an error as its last item; if it cannot
//! (it panicked, the runtime is shutting down), the stream ends without
//! `End`, which its consumer takes as a failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::channel::{self, Item};
use crate::{ExportPart, ExportStream, ExportSummary, StoreError, StoreErrorKind};

/// The export thread's end of the channel.
pub(crate) struct Sink {
    tx: mpsc::Sender<Item>,
    interrupt: Arc<Interrupt>,
}

impl Sink {
    /// Hands one chunk on, waiting while the channel is full. `false` when
    /// the stream has been dropped: the export should stop.
    pub fn send(&mut self, chunk: Vec<u8>) -> bool {
        self.tx.blocking_send(Ok(ExportPart::Chunk(Bytes::from(chunk)))).is_ok()
    }

    /// Registers how to interrupt the export's queries when the stream is
    /// dropped. A `Cancelled` error if it already has been: do not start.
    pub fn set_interrupt(&mut self, interrupt: impl Fn() + Send + Sync + 'static) -> Result<(), StoreError> {
        let mut state = self.interrupt.lock();
        if state.cancelled {
            return Err(cancelled());
        }
        state.callback = Some(Box::new(interrupt));
        Ok(())
    }
}

/// The error of an export whose stream was dropped.
pub(crate) fn cancelled() -> StoreError {
    StoreError::new(StoreErrorKind::Cancelled, "the export stream was dropped")
}

/// The interrupt shared by the thread (which registers and clears it) and
/// the stream (which fires it when dropped).
#[derive(Default)]
struct Interrupt(Mutex<InterruptState>);

#[derive(Default)]
struct InterruptState {
    /// The stream has been dropped.
    cancelled: bool,
    callback: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Interrupt {
    fn lock(&self) -> std::sync::MutexGuard<'_, InterruptState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs `export` on a blocking thread and returns its CSV as a stream.
/// `export` writes into the [`Sink`] it is given and returns the summary;
/// it registers its interrupt before its first query. Call it from within
/// the async runtime.
pub(crate) fn spawn(
    export: impl FnOnce(&mut Sink) -> Result<ExportSummary, StoreError> + Send + 'static,
) -> ExportStream {
    let (tx, rx) = channel::channel();
    let interrupt = Arc::new(Interrupt::default());
    let mut sink = Sink {
        tx,
        interrupt: interrupt.clone(),
    };
    // Detached: the stream, not a join handle, is how the thread is stopped.
    drop(tokio::task::spawn_blocking(move || {
        let result = catch_unwind(AssertUnwindSafe(|| export(&mut sink)))
            .unwrap_or_else(|_| Err(StoreError::internal("the export panicked")));
        // Its connections are done with: nothing left to interrupt.
        sink.interrupt.lock().callback = None;
        let _ = sink.tx.blocking_send(result.map(ExportPart::End));
    }));
    channel::stream(rx, InterruptOnDrop(interrupt))
}

/// The stream's `stop`: interrupts the running query, if any; the channel
/// closes as the stream goes, so the thread's next send fails and it ends.
struct InterruptOnDrop(Arc<Interrupt>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.cancelled = true;
        if let Some(interrupt) = state.callback.take() {
            interrupt();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_then_end() {
        let mut stream = spawn(|sink| {
            sink.set_interrupt(|| {})?;
            assert!(sink.send(b"a,b\n".to_vec()));
            Ok(ExportSummary { rows: 0, bytes: 4 })
        });
        assert_eq!(
            stream.next().await.map(|r| r.ok()),
            Some(Some(ExportPart::Chunk(Bytes::from_static(b"a,b\n"))))
        );
        assert_eq!(
            stream.next().await.map(|r| r.ok()),
            Some(Some(ExportPart::End(ExportSummary { rows: 0, bytes: 4 })))
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_stream_interrupts_and_ends_the_thread() {
        let interrupted = Arc::new(AtomicBool::new(false));
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let flag = interrupted.clone();
        let mut stream = spawn(move |sink| {
            sink.set_interrupt(move || flag.store(true, Ordering::SeqCst))?;
            // Sends until the consumer has gone (the channel holds a few).
            let mut sent = 0;
            while sink.send(vec![b'x'; 10]) {
                sent += 1;
            }
            let _ = ended_tx.send(sent);
            Err(cancelled())
        });
        assert!(matches!(stream.next().await, Some(Ok(ExportPart::Chunk(_)))));
        drop(stream);
        let sent = ended_rx.await.expect("the thread ended");
        assert!(sent <= 1 + channel::CHANNEL_CHUNKS, "{sent}");
        assert!(interrupted.load(Ordering::SeqCst));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_an_error_never_an_end() {
        let mut stream = spawn(|_| panic!("boom"));
        let e = stream.next().await.expect("an item").expect_err("an error");
        assert_eq!(e.kind, StoreErrorKind::Internal);
        assert!(stream.next().await.is_none());
    }
}
