//! HTTP/1.1 client connections, served by hyper one stretch at a time.
//!
//! A hyper connection keeps an 8 KiB read buffer and an 8 KiB header buffer for as long as
//! it lives, idle or not: most of what an idle keep-alive connection costs. So once a
//! connection has sat idle for [`RELEASE_AFTER`], with everything it sent flushed, its hyper
//! connection is ended without closing the client's, and the socket is watched with no
//! buffers at all; when the client sends again a new hyper connection picks up where the
//! old one stopped (nginx frees its request buffers between requests the same way).
//!
//! Ending hyper's connection ourselves also means a switch of protocols (WebSocket) takes
//! the client's stream from here, rather than from hyper's upgrade machinery, and that the
//! stream outlives hyper's connection when it closes: it lingers (see [`linger`]).
//!
//! What this relies on from hyper's HTTP/1.1 server (checked against hyper 1.12, the
//! version the root `Cargo.toml` pins with `~`; `h1/release_tests.rs` fails if one of
//! these stops holding):
//! - `Connection::poll_without_shutdown` is ready once hyper is done with the connection
//!   (the client closed, keep-alive is off, or `graceful_shutdown` was called), without
//!   shutting the stream down, so `into_parts` hands the stream back open.
//! - `graceful_shutdown` between requests ends the connection at once and writes nothing;
//!   during a request it finishes that exchange first.
//! - `Parts::read_buf` holds every byte hyper read and did not use (a pipelined request),
//!   which [`Rewind`] serves before the stream's own.
//! - hyper reads the stream only while polled, and parses a request head only from what it
//!   read: with no request begun since a stretch started (the clock's count), hyper holds
//!   nothing of the client's.
//! - With `header_read_timeout(None)` hyper runs no timer of its own on an idle
//!   connection; the connection's clock times heads and idleness instead.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tracing::trace;

use crate::conn::{ClockedIo, ConnClock, ConnInfo, DrainWatch, GracefulConn, Supervised};

/// How long an HTTP/1.1 connection sits idle before its buffers are freed. Serving a
/// released connection again costs about a third of a request's work (a new hyper
/// connection, its buffers, timers), so a busy connection must not pay it: at 50 ms only
/// clients sending fewer than 20 requests a second on a connection do, and their idle
/// connections hold no buffers after a moment; keep-alive times are seconds to minutes.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_millis(50);

/// How long closing a finished connection (TLS close_notify, then FIN) may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a closed connection goes on reading what its client still sends, at most, and
/// how long the client may pause meanwhile: nginx's `lingering_time` and
/// `lingering_timeout`.
const LINGER_FOR: Duration = Duration::from_secs(30);
const LINGER_QUIET: Duration = Duration::from_secs(5);

/// A client's byte stream: TCP, or TLS over TCP.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the socket has something to read (or has failed, or reached its end).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads from the socket itself, below TLS, into `buf`: bytes to throw away.
    fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>;

    /// As `poll_read_raw`, without waiting: `WouldBlock` when nothing has arrived.
    fn try_read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

impl ClientIo for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self).poll_read(cx, buf)
    }

    fn try_read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

impl ClientIo for Box<TlsStream<TcpStream>> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper read until the stream had nothing more; whatever TLS holds is an incomplete
        // record, so only new bytes on the socket can make a request.
        self.get_ref().0.poll_read_ready(cx)
    }

    fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }

    fn try_read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.get_ref().0.try_read(buf)
    }
}

/// Serves an HTTP/1.1 connection until it closes, is cut off, or switches protocols
/// (the stream then goes to the tunnel waiting in `conn`).
pub(crate) async fn serve<T, S, B>(
    builder: &http1::Builder,
    io: T,
    mut service: S,
    conn: &ConnInfo,
    watcher: &mut DrainWatch,
    // By reference: an `async fn` stores its arguments twice (see `listener::connection`).
    timeouts: &(Duration, Duration),
) -> Supervised<Result<(), String>>
where
    T: ClientIo,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let clock = &conn.clock;
    // A tunnel waiting for the stream holds `conn`, where its sender sits: however this
    // ends, the sender goes, so such a tunnel ends too instead of holding the connection.
    let _unclaimed = Unclaimed(conn);
    let mut stream = Rewind::new(ClockedIo::new(io, clock.clone()));
    loop {
        let stretch = Stretch {
            conn: Some(builder.serve_connection(TokioIo::new(stream), service)),
            clock: clock.clone(),
            release: Box::pin(tokio::time::sleep(RELEASE_AFTER)),
            armed: false,
            begun: clock.begun(),
            closing: false,
        };
        // Boxed: a released connection waits in `parked`, without this future's state.
        let supervised = Box::pin(watcher.supervise(Box::pin(stretch), clock, *timeouts));
        let (parts, released) = match supervised.await {
            Supervised::Done(Ok(done)) => done,
            Supervised::Done(Err((e, parts))) => {
                // hyper may have answered (400, 431) before it failed, with the client
                // still sending the head it refused.
                let mut stream = parts.io.into_inner();
                close(&mut stream, watcher, true).await;
                return Supervised::Done(Err(e.to_string()));
            }
            Supervised::HeadTimeout => return Supervised::HeadTimeout,
            Supervised::Abusive => return Supervised::Abusive,
        };
        stream = parts.io.into_inner();
        stream.rewind(parts.read_buf);
        service = parts.service;
        if let Some(tunnel) = conn.take_upgrade() {
            let _ = tunnel.send(Box::new(stream));
            return Supervised::Done(Ok(()));
        }
        if !released || !parked(&stream, clock, watcher, timeouts.1).await {
            // A request body hyper did not read to its end (an answer that did not wait for
            // the upload) or bytes read past the last request: the client may be sending.
            let sending = clock.body_unread() || !stream.pre.is_empty();
            close(&mut stream, watcher, sending).await;
            return Supervised::Done(Ok(()));
        }
        trace!("client sent again; serving the released connection");
    }
}

/// Closes a connection hyper is done with: TLS close_notify and FIN (what hyper does when it
/// finishes a connection itself), then a lingering close if the client may still be
/// `sending`, or has sent bytes nobody read.
///
/// Otherwise the socket closes at once, as nginx's does (`lingering_close on`): a client
/// that asked for the close, or sat idle until the idle timeout, has nothing more to send,
/// and lingering would hold its connection (and its place under the connection caps) until
/// it closes its side or goes quiet for [`LINGER_QUIET`].
async fn close<T: ClientIo>(
    stream: &mut Rewind<ClockedIo<T>>,
    watcher: &DrainWatch,
    sending: bool,
) {
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, stream.shutdown()).await;
    let io = stream.inner.get_mut();
    // One byte is enough to tell; it would be thrown away with the rest.
    if !sending && !matches!(io.try_read_raw(&mut [0u8; 1]), Ok(1)) {
        return;
    }
    // Boxed: the connection's task is not sized for a state it is in only at its end.
    Box::pin(linger(io, watcher)).await;
}

/// Reads and drops what the client still sends, until it closes its side, pauses for
/// [`LINGER_QUIET`], [`LINGER_FOR`] has passed or the drain starts.
///
/// A connection closed with bytes unread in its receive buffer is reset by the kernel, and
/// the reset can reach the client before it has read the answer. That is the usual end of
/// an answer given before the request was read to its end: a 413 or a 401 to an upload, a
/// 400 or 431 to a broken head. A client that writes its whole upload before it reads (most
/// do) would see its write fail instead of the answer; nginx lingers the same way.
async fn linger<T: ClientIo>(io: &mut T, watcher: &DrainWatch) {
    // On the heap and only now: an open connection holds no such buffer.
    let mut buf = vec![0u8; 16 * 1024];
    let discard = async {
        loop {
            let mut read = ReadBuf::new(&mut buf);
            let got = std::future::poll_fn(|cx| io.poll_read_raw(cx, &mut read));
            match tokio::time::timeout(LINGER_QUIET, got).await {
                Ok(Ok(())) if !read.filled().is_empty() => {}
                // The client closed or failed, or went quiet.
                _ => return,
            }
        }
    };
    tokio::select! {
        () = discard => {}
        () = tokio::time::sleep(LINGER_FOR) => {}
        () = watcher.signalled() => {}
    }
}

/// Drops the hand-over to a tunnel if the stream never got to it.
struct Unclaimed<'a>(&'a ConnInfo);

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        drop(self.0.take_upgrade());
    }
}

/// Waits, holding no HTTP buffers, until the client sends again (true), the drain starts
/// or the connection has been idle for the idle timeout (false). This future is what an
/// idle connection holds, so it waits on a timer of its own rather than the clock's
/// watchdog (twice the size, for the request heads a released connection is not reading).
async fn parked<T: ClientIo>(
    stream: &Rewind<ClockedIo<T>>,
    clock: &ConnClock,
    watcher: &DrainWatch,
    idle: Duration,
) -> bool {
    if !stream.pre.is_empty() {
        return true;
    }
    trace!("idle; HTTP buffers released");
    let readable = std::future::poll_fn(|cx| stream.inner.get_ref().poll_read_ready(cx));
    tokio::select! {
        ready = readable => ready.is_ok(),
        () = watcher.signalled() => false,
        () = tokio::time::sleep_until(clock.idle_until(idle)) => false,
    }
}

/// One hyper connection over the client's stream, ended without closing the stream: when
/// either side is done, or when it has been idle for [`RELEASE_AFTER`] (released).
struct Stretch<I, S: HttpService<Incoming>> {
    conn: Option<http1::Connection<I, S>>,
    clock: Arc<ConnClock>,
    /// Fires `RELEASE_AFTER` into a quiet spell (or earlier, for an older spell).
    release: Pin<Box<Sleep>>,
    /// `release` is set and polled.
    armed: bool,
    /// The clock's count of requests begun when this stretch started.
    begun: u32,
    /// hyper was told to finish: the connection closes rather than being released.
    closing: bool,
}

impl<I, S, B> Future for Stretch<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// hyper's parts, and whether the connection was released rather than finished; or
    /// hyper's error, with its parts all the same (the stream, for its close).
    type Output = Result<(http1::Parts<I, S>, bool), (hyper::Error, http1::Parts<I, S>)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.poll_conn(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Ok((this.take_parts(), false))),
            Poll::Ready(Err(e)) => return Poll::Ready(Err((e, this.take_parts()))),
            Poll::Pending => {}
        }
        // hyper waits for the client: released once that has lasted RELEASE_AFTER with no
        // request in flight, none arriving and nothing left unsent.
        if this.closing {
            return Poll::Pending;
        }
        let Some(since) = this.clock.quiet_since() else {
            return Poll::Pending;
        };
        // The timer is set once and moved only when it fires before the current quiet spell
        // is old enough, so a busy connection pays a few loads per request, not a timer.
        let due = since + RELEASE_AFTER;
        if !this.armed {
            this.armed = true;
            this.release.as_mut().reset(due);
        } else if !this.release.is_elapsed() {
            return Poll::Pending;
        } else if Instant::now() < due {
            this.release.as_mut().reset(due);
        }
        ready!(this.release.as_mut().poll(cx));
        if this.clock.begun() == this.begun {
            // Woken by its client, which sent no request: hyper has read nothing.
            return Poll::Ready(Ok((this.take_parts(), true)));
        }
        // Between requests hyper ends the connection at once, sending nothing. If it is
        // still busy after all (a request body the response did not wait for), it finishes
        // that first and the connection closes, as it would have anyway.
        this.closing = true;
        if let Some(conn) = this.conn.as_mut() {
            Pin::new(conn).graceful_shutdown();
        }
        match ready!(this.poll_conn(cx)) {
            Ok(()) => Poll::Ready(Ok((this.take_parts(), true))),
            Err(e) => Poll::Ready(Err((e, this.take_parts()))),
        }
    }
}

impl<I, S, B> Stretch<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Ready when hyper is done with the connection and has flushed what it wrote.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a stretch is not polled after it ended");
        ready!(conn.poll_without_shutdown(cx))?;
        // Done by hyper's reckoning, but its last bytes may still be in its write buffer,
        // which goes with it: polling again flushes (the failed flush registered the wake).
        if self.clock.write_blocked() {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn take_parts(&mut self) -> http1::Parts<I, S> {
        self.conn.take().expect("a stretch ends once").into_parts()
    }
}

impl<I, S, B> GracefulConn for Stretch<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.closing = true;
        if let Some(conn) = this.conn.as_mut() {
            Pin::new(conn).graceful_shutdown();
        }
    }
}

/// A stream with bytes read ahead of it (by a finished hyper connection) given back.
pub(crate) struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(inner: T) -> Self {
        Self {
            pre: Bytes::new(),
            inner,
        }
    }

    /// Puts `front` back before whatever is still unread. The bytes are copied: `front` is
    /// a view into the finished connection's read buffer and would keep all of it alive.
    fn rewind(&mut self, front: Bytes) {
        if front.is_empty() {
            return;
        }
        let mut both = BytesMut::with_capacity(front.len() + self.pre.len());
        both.extend_from_slice(&front);
        both.extend_from_slice(&self.pre);
        self.pre = both.freeze();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pre.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.pre.len().min(buf.remaining());
        buf.put_slice(&this.pre[..n]);
        this.pre.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod release_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A released connection's whole HTTP/1.1 state is `serve`'s future waiting in
    /// `parked`: it stays small (464 bytes with the clock's watchdog and a `watch` channel's
    /// wait for the drain).
    #[tokio::test]
    async fn a_parked_connection_waits_in_little_memory() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let clock = Arc::new(ConnClock::new(true));
        let stream = Rewind::new(ClockedIo::new(tcp, clock.clone()));
        let drain = crate::conn::Drain::new();
        let watcher = drain.watcher();
        let waiting = parked(&stream, &clock, &watcher, Duration::from_secs(60));
        let size = std::mem::size_of_val(&waiting);
        assert!(size <= 320, "a parked connection waits in {size} bytes");
    }

    #[tokio::test]
    async fn rewound_bytes_come_first_in_order() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind::new(a);
        b.write_all(b"!").await.unwrap();
        r.rewind(Bytes::from_static(b"lo"));
        r.rewind(Bytes::from_static(b"hel"));
        let mut got = [0u8; 6];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello!");
    }
}
