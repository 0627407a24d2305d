//! The request body sent to an origin: the client's stream, cut off at the site's size
//! limit, with faults on the client's side told to the request's handler; an HTTP/1.1 body
//! the answer did not wait for is read to its end so the connection can carry on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::conn::ConnClock;

/// How much of an HTTP/1.1 request body the answer did not wait for (an origin's early 401
/// or 413, a failed origin) is read and thrown away, and for how long at most, so that the
/// client's connection can carry its next request. Go's `net/http` reads up to 256 KiB the
/// same way; past either bound the connection closes after the answer, lingering.
const DISCARD_UP_TO: u64 = 256 * 1024;
const DISCARD_FOR: Duration = Duration::from_secs(2);

/// The request body sent to an origin: the client's stream, cut off with an error once it
/// passes the site's size limit.
#[derive(Debug)]
pub(crate) struct RequestBody {
    /// `None` only once dropped.
    inner: Option<Incoming>,
    /// Bytes the client may still send, when the site limits them.
    limit: Option<u64>,
    /// Told when the body fails on the client's side; `None` when there is no body.
    fault: Option<Arc<BodyFault>>,
    /// The connection's clock and the request's number on it, told when the body has been
    /// read to its end (so its close need not linger); `None` once told, or when there was
    /// no body to read or the request is an HTTP/2 stream.
    reading: Option<(Arc<ConnClock>, u32)>,
}

/// The client sent more than `max_body_size`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the limit")]
pub(crate) struct BodyTooLarge;

/// How a request body failed on the client's side, if it did. Shared by the body and the
/// request's handler: an attempt that failed because the client's body did (bad chunked
/// framing, a short body, a reset stream, a client gone) is the client's fault, answered
/// with a 4xx, and never counted against the origin.
#[derive(Debug, Default)]
pub(crate) struct BodyFault(AtomicU8);

/// What [`BodyFault`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    /// More than the size limit: 413.
    TooLarge,
    /// Malformed, cut short, or reset by the client: 400.
    Broken,
}

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;

    /// The first fault stays: a body cut off at the limit fails again when read after.
    fn set(&self, fault: ClientFault) {
        let v = match fault {
            ClientFault::TooLarge => Self::TOO_LARGE,
            ClientFault::Broken => Self::BROKEN,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn get(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            Self::TOO_LARGE => Some(ClientFault::TooLarge),
            Self::BROKEN => Some(ClientFault::Broken),
            _ => None,
        }
    }
}

impl RequestBody {
    /// The body of the request being handled on the connection `clock` keeps. Only an
    /// HTTP/1.1 body is tracked (the clock marked it unread when its request began): the
    /// connection's next request comes after it.
    pub(crate) fn new(inner: Incoming, clock: &Arc<ConnClock>) -> Self {
        let reading = clock.body_unread().then(|| (clock.clone(), clock.begun()));
        // A request without a body cannot fail on the client's side: no allocation.
        let fault = (!inner.is_end_stream()).then(Arc::default);
        Self {
            inner: Some(inner),
            limit: None,
            fault,
            reading,
        }
    }

    /// Limits the body to `max` bytes; more fails it as [`ClientFault::TooLarge`].
    pub(crate) fn limited(mut self, max: u64) -> Self {
        self.limit = Some(max);
        self
    }

    /// Where the client's faults with this body are told.
    pub(crate) fn fault(&self) -> Option<Arc<BodyFault>> {
        self.fault.clone()
    }

    fn failed(&self, fault: ClientFault) {
        if let Some(f) = &self.fault {
            f.set(fault);
        }
    }

    fn ended(&mut self) {
        if let Some((clock, number)) = self.reading.take() {
            clock.body_read(number);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => {
                this.failed(ClientFault::Broken);
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                this.ended();
                return Poll::Ready(None);
            }
            Poll::Pending => return Poll::Pending,
        };
        if let (Some(left), Some(data)) = (&mut this.limit, frame.data_ref()) {
            match left.checked_sub(data.len() as u64) {
                Some(rest) => *left = rest,
                None => {
                    this.failed(ClientFault::TooLarge);
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
            }
        }
        // Whoever reads it may stop at the last frame, without asking for the end.
        if inner.is_end_stream() {
            this.ended();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    /// An HTTP/1.1 body dropped before its end, but for one over the size limit, is read to
    /// its end in a task of its own, within [`DISCARD_UP_TO`] and [`DISCARD_FOR`]: hyper
    /// would otherwise close the connection after the answer (it reads only what has
    /// arrived already), and the client would need a new one for its next request.
    fn drop(&mut self) {
        let (Some((clock, number)), Some(body)) = (self.reading.take(), self.inner.take()) else {
            return;
        };
        // A body over the limit, or one that failed, has nothing left worth reading.
        if self.fault.as_ref().is_some_and(|f| f.get().is_some()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        clock.begin_discard();
        runtime.spawn(discard(body, clock, number));
    }
}

/// Reads the rest of `body` and throws it away; the connection's clock hears whether it
/// reached the end within bounds, and that the connection is no longer busy with it.
async fn discard(mut body: Incoming, clock: Arc<ConnClock>, number: u32) {
    let mut left = DISCARD_UP_TO;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => return false,
            }
        }
        true
    };
    let whole = matches!(tokio::time::timeout(DISCARD_FOR, read).await, Ok(true));
    // Dropped unfinished, the body makes hyper close the connection (lingering, since the
    // clock still says the body is unread).
    drop(body);
    if whole {
        clock.body_read(number);
    }
    clock.end_request();
}
