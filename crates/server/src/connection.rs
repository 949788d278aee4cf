//! What every accepted connection gets before hyper serves it, and the one
//! response rule that keeps a keep-alive connection honest.
//!
//! - [`prepare`]: TCP keepalive on the socket, so that a peer that vanished
//!   (cable pulled, host gone) is noticed even while nothing is in flight,
//!   e.g. while an export waits for a long query (hyper watches the read
//!   side during a response and drops it on the error); and
//!   a write-progress timeout, so that a client that stops reading cannot
//!   hold its connection (and an export's concurrency slot) forever.
//! - [`close_unless_body_read`]: a middleware for every route. When a
//!   response is produced while its request body was not read to the end,
//!   the rest of that body is still on the wire, in front of whatever the
//!   client sends next; hyper then drops the connection after the response
//!   without saying so, and a client that reuses it fails. The middleware
//!   adds `Connection: close` to such a response, so the client knows.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::CONNECTION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;

/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the kernel resets the connection: a dead
/// peer is noticed ~90 s after the last thing it sent or acknowledged.
const KEEPALIVE_RETRIES: u32 = 3;

/// An accepted socket as hyper serves it: with a write timeout.
pub type ServedStream = Pin<Box<TimeoutStream<TcpStream>>>;

/// Turns on TCP keepalive on `stream` and wraps it so that a write which
/// makes no progress for `write_timeout` fails with `TimedOut`.
///
/// The timeout starts when the socket stops accepting bytes and is reset by
/// every byte it accepts: a slow reader is served at its own pace, one that
/// stopped reading loses the connection. hyper then drops the response body,
/// which for an export interrupts the query, frees its slot and logs
/// `client_connection_closed`. A socket whose keepalive cannot be set is
/// still served (the write timeout bounds it), with a warning.
pub fn prepare(stream: TcpStream, write_timeout: Duration) -> ServedStream {
    if let Err(e) = set_keepalive(&stream) {
        tracing::warn!(error = %e, "cannot set TCP keepalive on a connection");
    }
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(write_timeout));
    Box::pin(stream)
}

fn set_keepalive(stream: &TcpStream) -> io::Result<()> {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Adds `Connection: close` to a response whose request body was not read
/// to its end (a refusal before the body, a body over the limit or too
/// slow). A body that was read, or a request without one, changes nothing.
///
/// Handlers that refuse a request early drain its body first when they can
/// ([`drain_body`](crate::state::drain_body)); this is the safety net for
/// every other route, the admin API's authentication included.
pub async fn close_unless_body_read(request: Request, next: Next) -> Response {
    let read = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| Body::new(TrackedBody::new(body, read.clone())));
    let mut response = next.run(request).await;
    if !read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records, in `read`, when it has been read to its end.
struct TrackedBody {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl TrackedBody {
    fn new(inner: Body, read: Arc<AtomicBool>) -> Self {
        if http_body::Body::is_end_stream(&inner) {
            read.store(true, Ordering::Release);
        }
        TrackedBody { inner, read }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keepalive settings reach the socket (a client cannot see them,
    /// so this is checked on the accepted socket itself).
    #[tokio::test]
    async fn accepted_sockets_get_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        set_keepalive(&accepted).expect("set keepalive");
        let socket = SockRef::from(&accepted);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"), KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"), KEEPALIVE_RETRIES);
    }
}
