//! HTTP/1.1 to origin servers, driven by the request's own task.
//!
//! hyper's client runs every origin connection as a task of its own: a request goes to it
//! through a channel, its response comes back through a oneshot, and each hop wakes the
//! other task (about 14k of the 42k instructions a proxied request cost, plus a 10.8 KiB
//! request channel and an 8 KiB buffer held by every pooled connection). Here the
//! request's task writes the head, reads the response head while the request body is
//! still going out (an origin may answer early), and the response body reads the
//! connection as the client takes it; when the body ends, the connection goes back to its
//! pool. A connection is plain data while it waits in the pool: no task, no buffers.
//!
//! Upgrades (`101 Switching Protocols`) hand the stream and whatever was read past the
//! head to the caller as an [`OriginUpgrade`] in the response's extensions.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::replay::ReplayBody;
use crate::error::{OriginError, OriginFailureKind};
use crate::headers::wants_upgrade;
use crate::io::BoxedIo;

use super::pool::Ended;

pub(crate) mod codec;
#[cfg(test)]
mod tests;

use codec::{CHUNK_END, Decoder, Framing, Head, LAST_CHUNK, Step};

/// How much a read asks for at least; hyper's read buffer starts at the same.
const READ_CHUNK: usize = 8 * 1024;
/// A request body chunk this small rides in the head's write.
const COALESCE: usize = 16 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/1.1 connection to an origin server, between requests or serving one.
pub(crate) struct H1Conn(Box<State>);

struct State {
    io: BoxedIo,
    /// Bytes read past what has been used.
    buf: BytesMut,
    /// The connection's place in its pool, and the way back there.
    lease: Ended,
}

/// Why a request got no response.
pub(crate) enum SendError {
    /// A reused connection turned out closed before the origin answered, and the request
    /// (idempotent, no body) may go to another connection as it is.
    Stale(Box<Request<ReplayBody>>),
    Failed(OriginError),
}

/// The origin side of an upgraded connection: the stream and the bytes read past the
/// `101` head, for the tunnel to pass on first.
#[derive(Clone)]
pub(crate) struct OriginUpgrade(Arc<Mutex<Option<(BoxedIo, Bytes)>>>);

impl OriginUpgrade {
    pub(crate) fn take(&self) -> Option<(BoxedIo, Bytes)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl H1Conn {
    pub(crate) fn new(io: BoxedIo, lease: Ended) -> Self {
        Self(Box::new(State {
            io,
            buf: BytesMut::new(),
            lease,
        }))
    }

    /// Whether the connection still looks usable: nothing has arrived on it (a close, a
    /// TLS alert, stray bytes) since its last response. Reads only what the socket says
    /// is there (tokio clears readiness on every short read), so a live connection costs
    /// no system call here.
    pub(crate) fn poll_usable(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.0.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.0.io)
            .poll_read(cx, &mut probe)
            .is_pending()
    }

    /// Lets go of the read buffer while the connection waits in the pool.
    pub(crate) fn shed(&mut self) {
        if self.0.buf.is_empty() {
            self.0.buf = BytesMut::new();
        }
    }

    /// Back to the pool it came from (or closed, if the pool is gone).
    fn release(self) {
        let Some(pool) = self.0.lease.pool() else {
            return;
        };
        let key = self.0.lease.key().clone();
        pool.give_back(&key, self);
    }

    /// Sends `req` (its URI absolute or origin-form; the path is what goes on the wire)
    /// and reads the response head. `reused`: the connection served a request before, so
    /// the origin may have closed it meanwhile.
    pub(crate) async fn send(
        mut self,
        req: Request<ReplayBody>,
        reused: bool,
    ) -> Result<Response<H1Body>, SendError> {
        let upgrade = wants_upgrade(req.headers(), Version::HTTP_11);
        let framing = codec::request_framing(
            req.method(),
            req.headers(),
            req.body().is_end_stream(),
            &req.body().size_hint(),
        );
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut head = Vec::new();
        codec::encode_head(&mut head, req.method(), target, req.headers(), framing);
        let (parts, body) = req.into_parts();
        // A request with no body that never got an answer on a reused connection can go
        // again elsewhere as it is (what nginx does for idempotent methods).
        let retry = reused && framing == Framing::Empty && parts.method.is_idempotent();
        let (sent, kept) = match framing {
            Framing::Empty => (None, Some(body)),
            _ => (Some(body), None),
        };
        let mut writer = Writer::new(head, sent, framing);
        let mut read_any = false;
        let head = poll_fn(|cx| self.poll_head(cx, &mut writer, &mut read_any, upgrade)).await;
        let head = match head {
            Ok(head) => head,
            Err(_) if retry && !read_any => {
                let body = kept.unwrap_or_else(ReplayBody::empty);
                return Err(SendError::Stale(Box::new(Request::from_parts(parts, body))));
            }
            Err(e) => return Err(SendError::Failed(e)),
        };
        // A request not sent whole (still going out, or failed) leaves the connection in no
        // state to reuse; one still going out carries on beside the response body.
        let sent_whole = writer.state == WriteState::Done;
        let writer = match writer.state {
            WriteState::Done | WriteState::Failed => None,
            _ => Some(Box::new(writer)),
        };
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        if upgrade && head.status == StatusCode::SWITCHING_PROTOCOLS {
            *resp.headers_mut() = head.headers;
            let State { io, buf, .. } = *self.0;
            resp.extensions_mut()
                .insert(OriginUpgrade(Arc::new(Mutex::new(Some((
                    io,
                    buf.freeze(),
                ))))));
            return Ok(resp.map(|()| H1Body::done()));
        }
        let decoder = codec::response_decoder(&parts.method, &head)
            .map_err(|e| SendError::Failed(invalid(e)))?;
        let reuse = !upgrade && head.keeps_alive() && !decoder.is_eof() && sent_whole;
        let mut headers = head.headers;
        // The body is framed by its transfer coding; a length beside it would frame the
        // client's copy wrongly (RFC 9112 §6.3: a proxy removes it).
        if headers.contains_key(http::header::TRANSFER_ENCODING) {
            headers.remove(http::header::CONTENT_LENGTH);
        }
        *resp.headers_mut() = headers;
        let mut body = H1Body {
            conn: Some(self),
            decoder,
            writer,
            reuse,
        };
        if body.decoder.is_done() {
            body.finish();
        }
        Ok(resp.map(|()| body))
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut Writer,
        read_any: &mut bool,
        upgrade: bool,
    ) -> Poll<Result<Head, OriginError>> {
        let state = &mut *self.0;
        // The origin may answer before it has the whole body (an early 413, say): the
        // write can wait, the read must not.
        if writer.state == WriteState::Failed {
            // Already failed: only the response is left to read.
        } else if let Poll::Ready(Err(e)) = writer.poll(cx, &mut state.io) {
            match e {
                WriteError::Body(e) => {
                    return Poll::Ready(Err(OriginError::new(
                        OriginFailureKind::Reset,
                        format!("request body: {e}"),
                    )));
                }
                // Whatever the origin answered still counts.
                WriteError::Io(e) => writer.failure = Some(e),
            }
        }
        loop {
            match codec::parse_head(&mut state.buf) {
                Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS && !upgrade => {
                    return Poll::Ready(Err(OriginError::new(
                        OriginFailureKind::Reset,
                        "the origin switched protocols unasked",
                    )));
                }
                // 100 Continue, 103 Early Hints and the like come before the answer.
                Ok(Some(head))
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue;
                }
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(invalid(e))),
            }
            match ready!(read_more(cx, state)) {
                Ok(0) => {
                    let why = match writer.failure.take() {
                        Some(e) => format!("writing the request: {e}"),
                        None if state.buf.is_empty() => {
                            "connection closed before the response".to_owned()
                        }
                        None => "connection closed inside the response head".to_owned(),
                    };
                    return Poll::Ready(Err(OriginError::new(OriginFailureKind::Reset, why)));
                }
                Ok(_) => *read_any = true,
                Err(e) => {
                    return Poll::Ready(Err(OriginError::new(
                        OriginFailureKind::Reset,
                        format!("reading the response: {e}"),
                    )));
                }
            }
        }
    }
}

fn invalid(e: codec::CodecError) -> OriginError {
    OriginError::new(OriginFailureKind::Reset, e.to_string())
}

/// Reads what the connection has into the buffer: `Ok(0)` at its end.
fn read_more(cx: &mut Context<'_>, state: &mut State) -> Poll<io::Result<usize>> {
    if state.buf.capacity() == 0 {
        // A pooled connection sheds its buffer (`shed`); a fresh one is a plain allocation,
        // where `reserve` on an empty buffer takes the reallocating path (about 400
        // instructions more, once per request).
        state.buf = BytesMut::with_capacity(READ_CHUNK);
    } else if state.buf.capacity() - state.buf.len() < READ_CHUNK / 4 {
        state.buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut state.io), cx, &mut state.buf)
}

enum WriteError {
    Io(io::Error),
    /// The client's body failed (it went away, or passed the size limit).
    Body(BoxError),
}

#[derive(Debug, PartialEq, Eq)]
enum WriteState {
    /// Bytes queued or the body still streaming.
    Writing,
    Flushing,
    Done,
    Failed,
}

/// The request on its way out: the head, then the body framed as `framing` says.
struct Writer {
    head: Option<Vec<u8>>,
    queue: VecDeque<Bytes>,
    body: Option<ReplayBody>,
    framing: Framing,
    /// Body bytes still owed under `Content-Length`.
    owed: u64,
    state: WriteState,
    /// A write that failed, kept to explain a response that then never came.
    failure: Option<io::Error>,
}

impl Writer {
    fn new(head: Vec<u8>, body: Option<ReplayBody>, framing: Framing) -> Self {
        Self {
            head: Some(head),
            queue: VecDeque::new(),
            body,
            framing,
            owed: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            state: WriteState::Writing,
            failure: None,
        }
    }

    /// Writes until everything is out (`Ready(Ok)`), or the body or the connection has
    /// nothing more for now.
    fn poll(&mut self, cx: &mut Context<'_>, io: &mut BoxedIo) -> Poll<Result<(), WriteError>> {
        match self.state {
            WriteState::Done => return Poll::Ready(Ok(())),
            WriteState::Failed => {
                return Poll::Ready(Err(WriteError::Io(io::Error::other("write failed"))));
            }
            _ => {}
        }
        let result = self.poll_inner(cx, io);
        match &result {
            Poll::Ready(Ok(())) => self.state = WriteState::Done,
            Poll::Ready(Err(_)) => self.state = WriteState::Failed,
            Poll::Pending => {}
        }
        result
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut BoxedIo,
    ) -> Poll<Result<(), WriteError>> {
        if let Some(mut head) = self.head.take() {
            // A small first chunk of body that is there already goes in the same write.
            if let Some(Poll::Ready(frame)) = self.body.as_mut().map(|b| poll_body(b, cx)) {
                match self.frame(frame)? {
                    Some(data) if data.len() <= COALESCE => self.framed(&mut head, &data),
                    Some(data) => {
                        self.queue.push_back(Bytes::from(head));
                        self.push_framed(data);
                        head = Vec::new();
                    }
                    None => {}
                }
            }
            if !head.is_empty() {
                self.queue.push_front(Bytes::from(head));
            }
        }
        loop {
            while let Some(front) = self.queue.front_mut() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, front)).map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                front.advance(n);
                if front.is_empty() {
                    self.queue.pop_front();
                }
            }
            if self.state == WriteState::Flushing {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                return Poll::Ready(Ok(()));
            }
            let Some(body) = self.body.as_mut() else {
                self.state = WriteState::Flushing;
                continue;
            };
            let frame = match poll_body(body, cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Everything so far goes out before waiting for more of the body.
                    ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                    return Poll::Pending;
                }
            };
            if let Some(data) = self.frame(frame)? {
                self.push_framed(data);
            }
        }
    }

    /// Takes in one body frame: its data, or `None` (trailers are dropped, as hyper's
    /// client drops them without a `Trailer` header, which is hop-by-hop); the body's end
    /// queues the last chunk.
    fn frame(
        &mut self,
        frame: Option<Result<Frame<Bytes>, BoxError>>,
    ) -> Result<Option<Bytes>, WriteError> {
        match frame {
            None => {
                self.body = None;
                match self.framing {
                    Framing::Chunked => self.queue.push_back(Bytes::from_static(LAST_CHUNK)),
                    Framing::Length(_) if self.owed > 0 => {
                        return Err(WriteError::Body(
                            "request body shorter than its Content-Length".into(),
                        ));
                    }
                    _ => {}
                }
                Ok(None)
            }
            Some(Err(e)) => Err(WriteError::Body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => Ok(None),
                Ok(data) => {
                    if let Framing::Length(_) = self.framing {
                        self.owed = self.owed.checked_sub(data.len() as u64).ok_or_else(|| {
                            WriteError::Body("request body longer than its Content-Length".into())
                        })?;
                    }
                    Ok(Some(data))
                }
                Err(_trailers) => Ok(None),
            },
        }
    }

    fn framed(&self, out: &mut Vec<u8>, data: &[u8]) {
        if self.framing == Framing::Chunked {
            out.extend_from_slice(&codec::chunk_header(data.len()));
            out.extend_from_slice(data);
            out.extend_from_slice(CHUNK_END);
        } else {
            out.extend_from_slice(data);
        }
    }

    fn push_framed(&mut self, data: Bytes) {
        if self.framing == Framing::Chunked {
            self.queue
                .push_back(Bytes::from(codec::chunk_header(data.len())));
            self.queue.push_back(data);
            self.queue.push_back(Bytes::from_static(CHUNK_END));
        } else {
            self.queue.push_back(data);
        }
    }
}

fn poll_body(
    body: &mut ReplayBody,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Pin::new(body).poll_frame(cx)
}

/// A response body read from an origin's HTTP/1.1 connection. The connection goes back to
/// its pool the moment the body is complete, and is closed if the body is dropped before.
pub(crate) struct H1Body {
    conn: Option<H1Conn>,
    decoder: Decoder,
    /// The rest of a request body the origin answered before it had it whole.
    writer: Option<Box<Writer>>,
    /// The connection may serve another request once this body is complete.
    reuse: bool,
}

impl H1Body {
    fn done() -> Self {
        Self {
            conn: None,
            decoder: Decoder::Length(0),
            writer: None,
            reuse: false,
        }
    }

    /// The body is complete: the connection goes back to the pool if it can serve
    /// another request, and is closed otherwise.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Bytes past the response, or a request not sent whole, leave the connection in
        // no known state.
        if self.reuse && self.writer.is_none() && conn.0.buf.is_empty() {
            conn.release();
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let state = &mut *conn.0;
        if let Some(writer) = this.writer.as_mut() {
            match writer.poll(cx, &mut state.io) {
                Poll::Ready(Ok(())) => this.writer = None,
                // The response is still worth reading; the connection is not.
                Poll::Ready(Err(_)) => {
                    this.writer = None;
                    this.reuse = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let step = this.decoder.decode(&mut state.buf).map_err(invalid)?;
            match step {
                Step::Data(data) => {
                    this.decoder.settle(&mut state.buf).map_err(invalid)?;
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::More => {}
            }
            match ready!(read_more(cx, state)) {
                Ok(0) if this.decoder.is_eof() => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(OriginError::new(
                        OriginFailureKind::Reset,
                        "the origin closed the connection inside the response body",
                    )))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.conn.is_none() {
            return SizeHint::with_exact(0);
        }
        self.decoder.size_hint()
    }
}

impl Drop for H1Body {
    /// A body dropped unread (a health check, a client gone) keeps its connection when
    /// the rest of it has arrived already.
    fn drop(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if !self.reuse || self.writer.is_some() {
            return;
        }
        let buf = &mut conn.0.buf;
        loop {
            match self.decoder.decode(buf) {
                Ok(Step::Data(_) | Step::Trailers(_)) => {}
                Ok(Step::End) => {
                    self.finish();
                    return;
                }
                Ok(Step::More) | Err(_) => return,
            }
        }
    }
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("decoder", &self.decoder)
            .field("reuse", &self.reuse)
            .finish_non_exhaustive()
    }
}
