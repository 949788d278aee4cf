//! How every backend hands an export over: its producer (DuckDB's blocking
//! thread, a ClickHouse or PostgreSQL task) sends the parts into a bounded
//! channel of [`CHANNEL_CHUNKS`], and the [`ExportStream`] its caller polls
//! reads them. The bound is the backpressure that keeps an export's memory
//! flat: a producer waits while its consumer is behind. Dropping the stream
//! closes the channel (the producer's next send fails) and drops the
//! backend's `stop`, whose own `Drop` stops the work at once (an interrupt,
//! an aborted task); the one place of this machinery for all backends.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::{ExportPart, ExportStream, StoreError};

/// Chunks in flight between an export's producer and its consumer.
pub(crate) const CHANNEL_CHUNKS: usize = 4;

/// One item of an export channel.
pub(crate) type Item = Result<ExportPart, StoreError>;

/// A bounded export channel: the producer's sender, and the receiver to
/// hand to [`stream`].
pub(crate) fn channel() -> (mpsc::Sender<Item>, mpsc::Receiver<Item>) {
    mpsc::channel(CHANNEL_CHUNKS)
}

/// The consumer's end of `rx` as an [`ExportStream`]; `stop` is dropped
/// with it (before the receiver).
pub(crate) fn stream<S: Send + 'static>(rx: mpsc::Receiver<Item>, stop: S) -> ExportStream {
    Box::pin(Receiver { _stop: stop, rx })
}

struct Receiver<S> {
    _stop: S,
    rx: mpsc::Receiver<Item>,
}

impl<S> Stream for Receiver<S> {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

// The stream never relies on being pinned in place.
impl<S> Unpin for Receiver<S> {}

/// Aborts a task when dropped: the `stop` of an export produced by a task
/// that stops only when told.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
