//! The one response rule that keeps a keep-alive connection honest.
//!
//! [`close_unless_body_read`] is a middleware for every route. When a
//! response is produced while its request body was not read to the end, the
//! rest of that body is still on the wire, in front of whatever the client
//! sends next; hyper then drops the connection after the response without
//! saying so, and a client that reuses it fails. The middleware adds
//! `Connection: close` to such a response, so the client knows.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::CONNECTION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

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
