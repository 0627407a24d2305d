//! A request body that can be offered to several attempts as long as none has read it:
//! a retry may only resend a request whose body has not started streaming.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::request_body::RequestBody;

/// The body one attempt sends.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    inner: Inner,
    hint: SizeHint,
}

#[derive(Debug)]
enum Inner {
    Empty,
    Direct(RequestBody),
    /// Taken from the slot on the first read; the slot is then empty for later attempts.
    Shared(Arc<Slot>, Option<RequestBody>),
}

type Slot = Mutex<Option<RequestBody>>;

/// Hands out the client's body to attempts, and tells whether one has read it.
#[derive(Debug)]
pub(crate) struct Replayable {
    slot: Option<Arc<Slot>>,
    hint: SizeHint,
}

impl Replayable {
    pub(crate) fn new(body: RequestBody) -> Self {
        let hint = body.size_hint();
        let slot = (!body.is_end_stream()).then(|| Arc::new(Mutex::new(Some(body))));
        Self { slot, hint }
    }

    /// The body for the next attempt.
    pub(crate) fn attempt(&self) -> ReplayBody {
        ReplayBody {
            inner: match &self.slot {
                None => Inner::Empty,
                Some(slot) => Inner::Shared(slot.clone(), None),
            },
            hint: self.hint,
        }
    }

    /// True while no attempt has started reading the body, so another may send it whole.
    pub(crate) fn untouched(&self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|s| s.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }
}

impl ReplayBody {
    /// A body for one attempt only, with no bookkeeping.
    pub(crate) fn direct(body: RequestBody) -> Self {
        let hint = body.size_hint();
        Self {
            inner: if body.is_end_stream() {
                Inner::Empty
            } else {
                Inner::Direct(body)
            },
            hint,
        }
    }

    /// No body (health checks).
    pub(crate) fn empty() -> Self {
        Self {
            inner: Inner::Empty,
            hint: SizeHint::with_exact(0),
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Direct(body) => Pin::new(body).poll_frame(cx),
            Inner::Shared(slot, taken) => {
                if taken.is_none() {
                    *taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
                match taken {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    // Another attempt took the body: this one cannot send it.
                    None => Poll::Ready(Some(Err("request body already sent".into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Direct(body) => body.is_end_stream(),
            Inner::Shared(_, Some(body)) => body.is_end_stream(),
            Inner::Shared(_, None) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Direct(body) | Inner::Shared(_, Some(body)) => body.size_hint(),
            _ => self.hint,
        }
    }
}
