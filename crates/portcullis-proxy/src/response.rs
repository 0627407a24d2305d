//! The response body the gateway sends: fixed bytes or an origin's stream, passed through
//! frame by frame (never buffered). It carries the request's [`Exchange`], which records
//! metrics and the access log line when the response ends. (The request body towards an
//! origin is `upstream::request_body`.)

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};

use crate::conn::ConnInfo;
use crate::metrics::RouteMetrics;
use crate::rewrite::Chain;
use crate::upstream::{InFlight, OriginBody};

/// What a response body's stream fails with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `tracing` target of access log lines; filter it with `RUST_LOG=portcullis::access=off`.
pub const ACCESS_LOG_TARGET: &str = "portcullis::access";

/// Body of every response the gateway sends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    exchange: Option<Exchange>,
    /// Counts the origin server's request in flight until the response is finished.
    _in_flight: Option<InFlight>,
}

#[derive(Debug)]
enum Kind {
    Bytes(Option<Bytes>),
    Origin(OriginBody),
    /// `mixed_content: rewrite`: another body, rewritten frame by frame.
    Rewrite(Box<Rewriting>),
}

/// A body passed through the HTML rewriter: each frame in gives (at most) one frame out,
/// the CPU work done inline; trailers follow the last rewritten bytes.
#[derive(Debug)]
struct Rewriting {
    inner: Kind,
    chain: Chain,
    /// Trailers held back while the last bytes go out.
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl Rewriting {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(t) = self.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let out = match std::task::ready!(self.inner.poll_frame(cx)) {
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.chain.push(&data),
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.done = true;
                        self.chain.finish()
                    }
                },
                None => {
                    self.done = true;
                    self.chain.finish()
                }
            };
            match out {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                Err(e) => {
                    self.done = true;
                    self.trailers = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl Kind {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Kind::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Origin(body) => Pin::new(body).poll_frame(cx),
            Kind::Rewrite(r) => r.poll_frame(cx),
        }
    }
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
            exchange: None,
            _in_flight: None,
        }
    }

    /// An origin's response body; `in_flight` is released when it ends.
    pub(crate) fn origin(body: OriginBody, in_flight: Option<InFlight>) -> Self {
        Self {
            kind: Kind::Origin(body),
            exchange: None,
            _in_flight: in_flight,
        }
    }

    /// From now on the body goes through `chain` (`mixed_content: rewrite`).
    pub(crate) fn rewrite(&mut self, chain: Chain) {
        let inner = std::mem::replace(&mut self.kind, Kind::Bytes(None));
        self.kind = Kind::Rewrite(Box::new(Rewriting {
            inner,
            chain,
            trailers: None,
            done: false,
        }));
    }

    /// Hands the request's bookkeeping to the body, to be finished when it ends.
    pub(crate) fn attach(&mut self, exchange: Exchange) {
        self.exchange = Some(exchange);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = this.kind.poll_frame(cx);
        if let (Some(log), Poll::Ready(Some(Ok(f)))) =
            (this.exchange.as_mut().and_then(|e| e.log.as_mut()), &frame)
            && let Some(data) = f.data_ref()
        {
            log.bytes += data.len() as u64;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Bytes(b) => b.is_none(),
            Kind::Origin(body) => body.is_end_stream(),
            Kind::Rewrite(r) => r.done && r.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Origin(body) => body.size_hint(),
            Kind::Rewrite(_) => SizeHint::default(),
        }
    }
}

/// One request from arrival to the end of its response. Created when the request arrives;
/// moved into the response body once there is one. Dropping it ends the request for the
/// connection's clock, records the route's metrics and writes the access log line. Dropped
/// without a response, the client gave up on it (an HTTP/2 reset), which counts towards
/// `limits.h2_max_resets`.
#[derive(Debug)]
pub(crate) struct Exchange {
    conn: Arc<ConnInfo>,
    start: Instant,
    pub(crate) route: Option<Arc<RouteMetrics>>,
    pub(crate) status: u16,
    pub(crate) log: Option<Box<AccessLog>>,
    pub(crate) responded: bool,
}

impl Exchange {
    /// `body`: a request body follows the head.
    pub(crate) fn begin(conn: Arc<ConnInfo>, log: Option<Box<AccessLog>>, body: bool) -> Self {
        conn.clock.begin_request(body);
        Self {
            conn,
            start: Instant::now(),
            route: None,
            status: 0,
            log,
            responded: false,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.conn.clock.end_request();
        if !self.responded {
            if self.conn.clock.note_reset(self.conn.max_resets) {
                self.conn.clock.abuse.notify_one();
            }
            return;
        }
        if let Some(route) = &self.route {
            route.observe(self.status, self.start.elapsed().as_secs_f64());
        }
        if let Some(log) = &mut self.log {
            log.status = self.status;
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
