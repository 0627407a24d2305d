//! The release and re-arm of an HTTP/1.1 connection, in paused time over in-memory streams:
//! when a [`Stretch`] lets go of hyper's connection, that the stream then carries on under
//! a new one, and that bytes hyper read ahead are served first. (The end-to-end suites cover
//! the same over real sockets with real sleeps.)

use std::convert::Infallible;
use std::sync::Mutex;

use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use prometheus::Registry;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::oneshot;

use super::*;
use crate::conn::{ConnTracker, Drain, OpenGuard};
use crate::headers::ClientAddr;
use crate::metrics::ProxyMetrics;

type Answer = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// hyper's HTTP/1.1 server as the listener sets it up (no header timer of hyper's own).
fn builder() -> http1::Builder {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new()).header_read_timeout(None);
    h1
}

/// A service that answers each request with its path, keeping the clock's books as a
/// request's `Exchange` does; a request for `/wait` is answered when `gate` opens.
fn service(
    clock: &Arc<ConnClock>,
    gate: Option<oneshot::Receiver<()>>,
) -> impl HttpService<Incoming, ResBody = Full<Bytes>, Error = Infallible, Future = Answer> + Unpin + use<>
{
    let clock = clock.clone();
    let gate = Arc::new(Mutex::new(gate));
    service_fn(move |req: Request<Incoming>| -> Answer {
        clock.begin_request(false);
        let clock = clock.clone();
        let gate = gate
            .lock()
            .unwrap()
            .take()
            .filter(|_| req.uri().path() == "/wait");
        let path = Bytes::copy_from_slice(req.uri().path().as_bytes());
        Box::pin(async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            clock.end_request();
            Ok(Response::new(Full::new(path)))
        })
    })
}

/// One hyper connection over `stream`, as `serve` makes them.
fn stretch<T, S>(stream: T, service: S, clock: &Arc<ConnClock>) -> Pin<Box<Stretch<TokioIo<T>, S>>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: HttpService<Incoming, ResBody = Full<Bytes>, Error = Infallible>,
{
    Box::pin(Stretch {
        conn: Some(builder().serve_connection(TokioIo::new(stream), service)),
        clock: clock.clone(),
        release: Box::pin(tokio::time::sleep(RELEASE_AFTER)),
        armed: false,
        begun: clock.begun(),
        closing: false,
    })
}

/// `f`, while the connection is served; the connection must not end meanwhile.
async fn while_served<F: Future, C: Future + Unpin>(conn: &mut C, f: F) -> F::Output {
    tokio::select! {
        biased;
        out = f => out,
        _ = conn => panic!("the connection ended while the client waited"),
    }
}

/// Reads one response whose body is `body`; returns the whole response.
async fn response(client: &mut DuplexStream, body: &str) -> String {
    let end = format!("\r\n\r\n{body}");
    let mut got = Vec::new();
    while !got.ends_with(end.as_bytes()) {
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response to {body}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: example.com\r\n\r\n")
}

#[tokio::test(start_paused = true)]
async fn a_quiet_connection_is_released_after_release_after_and_not_before() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let clock = Arc::new(ConnClock::new(true));
    let stream = Rewind::new(ClockedIo::new(server, clock.clone()));
    let mut conn = stretch(stream, service(&clock, None), &clock);
    client.write_all(get("/1").as_bytes()).await.unwrap();
    let resp = while_served(&mut conn, response(&mut client, "/1")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let quiet = Instant::now();
    let early = tokio::time::timeout(RELEASE_AFTER - Duration::from_millis(1), conn.as_mut());
    assert!(early.await.is_err(), "released before {RELEASE_AFTER:?}");
    let Ok((parts, released)) = conn.await else {
        panic!("hyper failed instead of letting go");
    };
    let after = quiet.elapsed();
    assert!(released, "released, not finished");
    assert!(
        (RELEASE_AFTER..RELEASE_AFTER + Duration::from_millis(5)).contains(&after),
        "released {after:?} into the quiet"
    );
    assert!(
        parts.read_buf.is_empty(),
        "hyper read nothing past the request"
    );

    // Re-armed: the same stream, under a new hyper connection, serves the next request and
    // is released again once quiet.
    let mut stream = parts.io.into_inner();
    stream.rewind(parts.read_buf);
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.write_all(get("/2").as_bytes()).await.unwrap();
    let mut conn = stretch(stream, parts.service, &clock);
    let resp = while_served(&mut conn, response(&mut client, "/2")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let quiet = Instant::now();
    let Ok((_, released)) = conn.await else {
        panic!("hyper failed instead of letting go");
    };
    assert!(released);
    assert!(
        quiet.elapsed() >= RELEASE_AFTER,
        "released early the second time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_is_not_released_while_a_request_is_in_flight() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let clock = Arc::new(ConnClock::new(true));
    let (open, gate) = oneshot::channel();
    let stream = Rewind::new(ClockedIo::new(server, clock.clone()));
    let mut conn = stretch(stream, service(&clock, Some(gate)), &clock);
    client.write_all(get("/wait").as_bytes()).await.unwrap();
    let busy = tokio::time::timeout(Duration::from_secs(10), conn.as_mut());
    assert!(busy.await.is_err(), "released with a request in flight");
    open.send(()).unwrap();
    let resp = while_served(&mut conn, response(&mut client, "/wait")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let quiet = Instant::now();
    let Ok((_, released)) = conn.await else {
        panic!("hyper failed instead of letting go");
    };
    assert!(released);
    assert!(
        quiet.elapsed() >= RELEASE_AFTER,
        "the quiet counts from the response"
    );
}

#[tokio::test(start_paused = true)]
async fn bytes_hyper_read_ahead_are_served_first_by_the_next_connection() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let clock = Arc::new(ConnClock::new(true));
    let (open, gate) = oneshot::channel();
    let stream = Rewind::new(ClockedIo::new(server, clock.clone()));
    let mut conn = stretch(stream, service(&clock, Some(gate)), &clock);
    // Two requests in one write: hyper reads both, and serves the first.
    let pipelined = format!("{}{}", get("/wait"), get("/2"));
    client.write_all(pipelined.as_bytes()).await.unwrap();
    let first = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx).is_pending()));
    assert!(first.await, "the first request waits for its answer");
    // Told to finish (as a drain does), hyper ends after the first, with the second unread.
    GracefulConn::graceful_shutdown(conn.as_mut());
    open.send(()).unwrap();
    let Ok((parts, released)) = conn.await else {
        panic!("hyper failed instead of finishing");
    };
    assert!(!released, "finished, not released");
    assert_eq!(&parts.read_buf[..], get("/2").as_bytes());
    let resp = response(&mut client, "/wait").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let mut stream = parts.io.into_inner();
    stream.rewind(parts.read_buf);
    let mut conn = stretch(stream, parts.service, &clock);
    let resp = while_served(&mut conn, response(&mut client, "/2")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// The gateway's end of an in-memory client connection, with what [`ClientIo`] asks of a
/// socket: readiness without reading, kept by reading ahead into `peeked`.
struct MemIo {
    inner: Mutex<(DuplexStream, Vec<u8>)>,
}

impl AsyncRead for MemIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (io, peeked) = self.get_mut().inner.get_mut().unwrap();
        if !peeked.is_empty() {
            let n = peeked.len().min(buf.remaining());
            buf.put_slice(&peeked[..n]);
            peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner.get_mut().unwrap().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner.get_mut().unwrap().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner.get_mut().unwrap().0).poll_shutdown(cx)
    }
}

impl ClientIo for MemIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.inner.lock().unwrap();
        let (io, peeked) = &mut *inner;
        if !peeked.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut buf = [0u8; 1024];
        let mut read = ReadBuf::new(&mut buf);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        peeked.extend_from_slice(read.filled());
        Poll::Ready(Ok(()))
    }

    fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self).poll_read(cx, buf)
    }

    fn try_read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read = ReadBuf::new(buf);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) => Ok(read.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn serve_carries_a_connection_across_releases_until_the_client_closes() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let io = MemIo {
        inner: Mutex::new((server, Vec::new())),
    };
    let metrics = ProxyMetrics::new(&Registry::new()).unwrap();
    let tracker = Arc::new(ConnTracker::default());
    let permit = tracker.acquire([127, 0, 0, 1].into(), 10, None).unwrap();
    let drain = Drain::new();
    let mut watcher = drain.watcher();
    let clock = Arc::new(ConnClock::new(true));
    let conn = ConnInfo {
        peer: ([127, 0, 0, 1], 40000).into(),
        local: ([127, 0, 0, 1], 443).into(),
        tls: true,
        sni: None,
        client: ClientAddr::new([127, 0, 0, 1].into(), false),
        _drain: watcher.clone(),
        clock: clock.clone(),
        max_resets: 100,
        _open: OpenGuard::new(&metrics.listener("https"), permit),
        upgrade: Mutex::new(None),
    };
    let timeouts = (Duration::from_secs(10), Duration::from_secs(60));
    let svc = service(&clock, None);
    let builder = builder();
    let served = tokio::spawn(async move {
        let out = serve(&builder, io, svc, &conn, &mut watcher, &timeouts).await;
        matches!(out, Supervised::Done(Ok(())))
    });
    for (i, path) in ["/1", "/2", "/3"].into_iter().enumerate() {
        client.write_all(get(path).as_bytes()).await.unwrap();
        let resp = response(&mut client, path).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        // Far past RELEASE_AFTER and short of the idle timeout: released, then re-armed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!served.is_finished(), "closed after request {i}");
    }
    assert_eq!(clock.begun(), 3);
    drop(client);
    assert!(served.await.unwrap(), "ended as closed by the client");
}
