//! The response body the edge sends: fixed bytes or an origin's stream, passed through frame
//! by frame (never buffered), counting bytes for the access log line written when it ends.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// `tracing` target of access log lines; filter it with `RUST_LOG=portcullis::access=off`.
pub const ACCESS_LOG_TARGET: &str = "portcullis::access";

/// Body of every response the gateway sends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    log: Option<Box<AccessLog>>,
}

#[derive(Debug)]
enum Kind {
    Bytes(Option<Bytes>),
    Origin(Incoming),
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self::bytes(Bytes::new())
    }

    /// A body of fixed bytes.
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Self {
            kind: Kind::Bytes((!b.is_empty()).then_some(b)),
            log: None,
        }
    }

    pub(crate) fn origin(body: Incoming) -> Self {
        Self {
            kind: Kind::Origin(body),
            log: None,
        }
    }

    pub(crate) fn set_log(&mut self, log: Option<Box<AccessLog>>) {
        self.log = log;
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Origin(body) => Pin::new(body).poll_frame(cx),
        };
        if let (Some(log), Poll::Ready(Some(Ok(f)))) = (&mut this.log, &frame) {
            if let Some(data) = f.data_ref() {
                log.bytes += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Bytes(b) => b.is_none(),
            Kind::Origin(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Origin(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.emit();
        }
    }
}

/// One access log line, filled in as the request is handled and written when the response
/// body is finished (or abandoned), so `bytes` and `duration_ms` cover the whole exchange.
#[derive(Debug)]
pub(crate) struct AccessLog {
    pub(crate) start: Instant,
    pub(crate) peer: IpAddr,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) host: Option<Authority>,
    pub(crate) site: Option<Arc<str>>,
    pub(crate) origin: Option<Arc<str>>,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
}

impl AccessLog {
    /// Whether access logging is on; checked once per request so a disabled log costs
    /// nothing else.
    pub(crate) fn enabled() -> bool {
        tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO)
    }

    fn emit(&self) {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            peer = %self.peer,
            site = self.site.as_deref().unwrap_or("-"),
            host = self.host.as_ref().map_or("-", Authority::as_str),
            method = %self.method,
            path = self.uri.path(),
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.start.elapsed().as_micros() as f64 / 1000.0,
            origin = self.origin.as_deref().unwrap_or("-"),
            "request"
        );
    }
}
