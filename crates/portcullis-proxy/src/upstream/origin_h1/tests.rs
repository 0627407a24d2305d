//! The HTTP/1.1 client against a scripted origin: each connect hands the test the far end
//! of an in-memory pipe, and the test reads requests and writes responses byte for byte.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tower_service::Service;

use super::codec::{Chunk, Decoder, Step, parse_head, response_decoder};
use super::*;
use crate::upstream::pool::{OriginBody, OriginPool, PoolKey};
use crate::upstream::test_pipe::Pipe;

/// Connects to the test: every connection's origin end arrives on `accepted`.
#[derive(Clone)]
struct Scripted {
    tx: mpsc::UnboundedSender<DuplexStream>,
    connects: Arc<AtomicUsize>,
}

impl Service<PoolKey> for Scripted {
    type Response = TokioIo<Pipe>;
    type Error = OriginError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, OriginError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _key: PoolKey) -> Self::Future {
        let (client, server) = tokio::io::duplex(64 * 1024);
        self.connects.fetch_add(1, Ordering::SeqCst);
        let sent = self.tx.send(server);
        Box::pin(async move {
            sent.map_err(|_| OriginError::new(OriginFailureKind::Refused, "test over"))?;
            Ok(TokioIo::new(Pipe(client, false)))
        })
    }
}

struct Harness {
    pool: Arc<OriginPool<Scripted>>,
    accepted: mpsc::UnboundedReceiver<DuplexStream>,
    connects: Arc<AtomicUsize>,
}

impl Harness {
    fn new() -> Self {
        let (tx, accepted) = mpsc::unbounded_channel();
        let connects = Arc::new(AtomicUsize::new(0));
        let connector = Scripted {
            tx,
            connects: connects.clone(),
        };
        Self {
            pool: Arc::new(OriginPool::new(
                connector,
                Duration::from_secs(60),
                false,
                None,
                None,
            )),
            accepted,
            connects,
        }
    }

    fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// Sends `req` in a task of its own, so the test can play the origin meanwhile.
    fn send(
        &self,
        req: Request<ReplayBody>,
    ) -> tokio::task::JoinHandle<Result<Response<OriginBody>, OriginError>> {
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.request(&PoolKey::Shared, req).await })
    }

    /// Sends `req`, which must open a connection, and answers it with `bytes`: the result,
    /// and the origin's end of the connection.
    async fn answered(
        &mut self,
        req: Request<ReplayBody>,
        bytes: &[u8],
    ) -> (Result<Response<OriginBody>, OriginError>, DuplexStream) {
        let sent = self.send(req);
        let mut origin = self.accept().await;
        read_head(&mut origin).await;
        answer(&mut origin, bytes).await;
        (within(sent).await.expect("the request's task"), origin)
    }

    /// Sends `req`, which must go on the idle connection whose origin end is `origin`, and
    /// answers it with `bytes`.
    async fn answered_on(
        &mut self,
        origin: &mut DuplexStream,
        req: Request<ReplayBody>,
        bytes: &[u8],
    ) -> Result<Response<OriginBody>, OriginError> {
        let sent = self.send(req);
        read_head(origin).await;
        answer(origin, bytes).await;
        within(sent).await.expect("the request's task")
    }

    /// One GET answered with an empty 200 on a new connection, now idle; its origin end.
    async fn first_exchange(&mut self) -> DuplexStream {
        let empty = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (first, origin) = self.answered(get("/"), empty).await;
        assert_eq!(first.unwrap().status(), 200);
        origin
    }

    async fn accept(&mut self) -> DuplexStream {
        within(self.accepted.recv()).await.expect("a connection")
    }
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("the test timed out")
}

fn get(path: &str) -> Request<ReplayBody> {
    request(Method::GET, path)
}

fn request(method: Method, path: &str) -> Request<ReplayBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://origin{path}"))
        .header("host", "a.test")
        .body(ReplayBody::empty())
        .expect("a valid request")
}

/// Reads one request head from the origin's end of a connection.
async fn read_head(io: &mut DuplexStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = within(io.read(&mut byte)).await.expect("a readable pipe");
        assert_ne!(n, 0, "the client closed before a whole head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("an ASCII head")
}

async fn answer(io: &mut DuplexStream, bytes: &[u8]) {
    io.write_all(bytes).await.expect("a writable pipe");
}

async fn body_of(resp: Response<OriginBody>) -> (Bytes, Option<HeaderMap>) {
    let collected = within(resp.into_body().collect())
        .await
        .expect("a whole body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_chunked_response_with_trailers_is_decoded_and_its_connection_reused() {
    let mut h = Harness::new();
    let first = h.send(get("/x?q=1"));
    let mut origin = h.accept().await;
    let head = read_head(&mut origin).await;
    assert!(head.starts_with("GET /x?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("host: a.test\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    answer(
        &mut origin,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-check: yes\r\n\r\n",
    )
    .await;
    let resp = first.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let (body, trailers) = body_of(resp).await;
    assert_eq!(body, "hello world");
    assert_eq!(trailers.unwrap()["x-check"], "yes");

    let second = h.send(get("/y"));
    let head = read_head(&mut origin).await;
    assert!(head.starts_with("GET /y HTTP/1.1\r\n"), "{head}");
    answer(
        &mut origin,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let (body, _) = body_of(second.await.unwrap().unwrap()).await;
    assert_eq!(body, "ok");
    assert_eq!(h.connects(), 1, "both requests on one connection");
}

#[tokio::test]
async fn a_length_beside_a_transfer_coding_is_not_passed_on() {
    let mut h = Harness::new();
    let both = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n\
                 2\r\nok\r\n0\r\n\r\n";
    let (resp, _origin) = h.answered(get("/"), both).await;
    let resp = resp.unwrap();
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(body_of(resp).await.0, "ok");
}

#[tokio::test]
async fn a_body_delimited_by_the_close_is_read_whole_and_its_connection_not_reused() {
    let mut h = Harness::new();
    let (first, origin) = h
        .answered(get("/"), b"HTTP/1.1 200 OK\r\n\r\nall of it")
        .await;
    drop(origin);
    let (body, _) = body_of(first.unwrap()).await;
    assert_eq!(body, "all of it");

    let (second, _origin) = h
        .answered(get("/"), b"HTTP/1.1 204 No Content\r\n\r\n")
        .await;
    assert_eq!(second.unwrap().status(), 204);
    assert_eq!(h.connects(), 2);
}

#[tokio::test]
async fn head_and_304_answers_carry_no_body_whatever_their_length_says() {
    let mut h = Harness::new();
    let (head_req, mut origin) = h
        .answered(
            request(Method::HEAD, "/big"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        )
        .await;
    let resp = head_req.unwrap();
    assert_eq!(resp.headers()["content-length"], "100");
    assert!(resp.body().is_end_stream());

    let not_modified = b"HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n";
    let cached = h
        .answered_on(&mut origin, get("/cached"), not_modified)
        .await;
    assert_eq!(cached.unwrap().status(), 304);

    // Had either been read as having a body, this answer would be taken for it.
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter";
    let after = h.answered_on(&mut origin, get("/after"), ok).await;
    let (body, _) = body_of(after.unwrap()).await;
    assert_eq!(body, "after");
    assert_eq!(h.connects(), 1);
}

#[tokio::test]
async fn informational_answers_before_the_response_are_skipped() {
    let mut h = Harness::new();
    let (resp, _origin) = h
        .answered(
            get("/"),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
          HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("link").is_none());
    assert_eq!(body_of(resp).await.0, "ok");
}

#[tokio::test]
async fn a_connection_is_reused_only_after_its_body_is_complete() {
    let mut h = Harness::new();
    let half = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.";
    let (first, mut origin) = h.answered(get("/slow"), half).await;
    let mut body = first.unwrap().into_body();
    let frame = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "half.");

    // The first connection is still busy: another request gets a connection of its own.
    let mut other = h.first_exchange().await;

    answer(&mut origin, b"done!").await;
    let frame = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "done!");
    assert!(body.is_end_stream());
    assert_eq!(h.connects(), 2);

    // Both are idle now; the next two requests take them without a connect.
    let (a, b) = (h.send(get("/a")), h.send(get("/b")));
    for io in [&mut origin, &mut other] {
        read_head(io).await;
        answer(io, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    }
    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    assert_eq!(h.connects(), 2);
}

#[tokio::test]
async fn a_body_dropped_unfinished_closes_its_connection() {
    let mut h = Harness::new();
    let half = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.";
    let (first, mut origin) = h.answered(get("/"), half).await;
    drop(first.unwrap());
    let mut rest = Vec::new();
    let n = within(origin.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(n, 0, "the client closed the connection");
}

#[tokio::test]
async fn a_connection_the_origin_closed_while_idle_is_not_used() {
    let mut h = Harness::new();
    drop(h.first_exchange().await);

    // A POST: had it gone on the closed connection, it would fail rather than go again.
    let empty = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (second, _origin) = h.answered(request(Method::POST, "/"), empty).await;
    assert_eq!(second.unwrap().status(), 200);
    assert_eq!(h.connects(), 2);
}

/// The origin takes the request on a kept-alive connection, then closes it unanswered (its
/// keep-alive timeout passing as the request arrives).
#[tokio::test]
async fn an_idempotent_request_a_reused_connection_drops_goes_again_on_a_new_one() {
    let mut h = Harness::new();
    let mut origin = h.first_exchange().await;

    let again = h.send(get("/again"));
    read_head(&mut origin).await;
    drop(origin);
    let mut fresh = h.accept().await;
    let head = read_head(&mut fresh).await;
    assert!(head.starts_with("GET /again HTTP/1.1\r\n"), "{head}");
    answer(&mut fresh, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    assert_eq!(again.await.unwrap().unwrap().status(), 200);

    // A POST may have had an effect: it fails instead.
    let post = h.send(request(Method::POST, "/order"));
    read_head(&mut fresh).await;
    drop(fresh);
    let err = within(post).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), OriginFailureKind::Reset);
    assert_eq!(h.connects(), 2);
}

#[tokio::test]
async fn broken_answers_fail_as_resets() {
    for answer_bytes in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
    ] {
        let mut h = Harness::new();
        let resp = h.send(get("/"));
        let mut origin = h.accept().await;
        read_head(&mut origin).await;
        answer(&mut origin, answer_bytes).await;
        let err = within(resp).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), OriginFailureKind::Reset, "{answer_bytes:?}");
    }
}

#[tokio::test]
async fn a_response_head_past_the_limit_fails() {
    let mut h = Harness::new();
    let resp = h.send(get("/"));
    let mut origin = h.accept().await;
    read_head(&mut origin).await;
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    while head.len() <= codec::MAX_HEAD {
        head.extend_from_slice(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    // Written from a task: the client stops reading once it has seen too much.
    tokio::spawn(async move {
        let _ = origin.write_all(&head).await;
        let _ = origin.read_to_end(&mut Vec::new()).await;
    });
    let err = within(resp).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test]
async fn an_upgrade_hands_over_the_stream_and_what_came_behind_the_101() {
    let mut h = Harness::new();
    let req = Request::get("http://origin/ws")
        .header("host", "a.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(ReplayBody::empty())
        .unwrap();
    let resp = h.send(req);
    let mut origin = h.accept().await;
    let head = read_head(&mut origin).await;
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    answer(
        &mut origin,
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nearly",
    )
    .await;
    let resp = resp.await.unwrap().unwrap();
    assert_eq!(resp.status(), 101);
    let (mut io, ahead) = resp
        .extensions()
        .get::<OriginUpgrade>()
        .and_then(OriginUpgrade::take)
        .expect("the upgraded stream");
    assert_eq!(ahead, "early");
    io.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    within(origin.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ping");
}

/// Every way of splitting a chunked body over reads gives the same data and trailers.
#[test]
fn chunked_bodies_decode_the_same_however_they_arrive() {
    let wire =
        b"4\r\nwiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-t: 1\r\n\r\n";
    for split in 0..wire.len() {
        let mut decoder = Decoder::Chunked(Chunk::Size);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers, mut ended) = (Vec::new(), None, false);
        for part in [&wire[..split], &wire[split..]] {
            buf.extend_from_slice(part);
            loop {
                match decoder.decode(&mut buf).expect("a valid body") {
                    Step::Data(d) => {
                        data.extend_from_slice(&d);
                        decoder.settle(&mut buf).expect("a valid body");
                    }
                    Step::Trailers(t) => trailers = Some(t),
                    Step::End => {
                        ended = true;
                        break;
                    }
                    Step::More => break,
                }
            }
        }
        assert!(ended, "split at {split}");
        assert!(buf.is_empty(), "split at {split}");
        assert_eq!(data, b"wikipedia in\r\n\r\nchunks.", "split at {split}");
        assert_eq!(trailers.expect("trailers")["x-t"], "1", "split at {split}");
    }
}

/// Bare LFs end lines everywhere else in a chunked body; the empty line that ends it is no
/// different, and the body is complete without waiting for a byte after it.
#[test]
fn a_bare_lf_ends_the_trailer_section() {
    for wire in [&b"3\nabc\n0\n\n"[..], b"3\r\nabc\r\n0\r\nx-t: 1\n\n"] {
        let mut decoder = Decoder::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(wire);
        assert!(matches!(decoder.decode(&mut buf), Ok(Step::Data(d)) if d == "abc"));
        decoder.settle(&mut buf).unwrap();
        while !decoder.is_done() {
            match decoder.decode(&mut buf) {
                Ok(Step::Trailers(t)) => assert_eq!(t["x-t"], "1"),
                other => panic!("{other:?} for {wire:?}"),
            }
        }
        assert!(buf.is_empty(), "{wire:?}");
    }
}

#[test]
fn a_body_whose_end_has_arrived_is_complete_with_its_last_data() {
    let mut decoder = Decoder::Chunked(Chunk::Size);
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
    assert!(matches!(decoder.decode(&mut buf), Ok(Step::Data(d)) if d == "abc"));
    decoder.settle(&mut buf).unwrap();
    assert!(decoder.is_done());
    assert!(buf.is_empty());
}

#[test]
fn transfer_encoding_decides_over_content_length() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n"[..],
    );
    let head = parse_head(&mut buf).unwrap().unwrap();
    assert!(matches!(
        response_decoder(&Method::GET, &head),
        Ok(Decoder::Chunked(Chunk::Size))
    ));
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"[..]);
    let head = parse_head(&mut buf).unwrap().unwrap();
    assert!(response_decoder(&Method::GET, &head).unwrap().is_eof());
}

/// A response's header values must not keep the connection's read buffer alive: an HTTP/2
/// client's HPACK table holds the values it indexes for the client connection's life.
#[test]
fn header_values_do_not_share_the_read_buffer() {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    buf.extend_from_slice(b"HTTP/1.1 200 OK\r\nserver: origin\r\nx-id: 42\r\n\r\nbody");
    let read_buffer = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
    let head = parse_head(&mut buf).unwrap().unwrap();
    assert_eq!(head.headers["server"], "origin");
    assert_eq!(head.headers["x-id"], "42");
    for value in head.headers.values() {
        let at = value.as_bytes().as_ptr() as usize;
        assert!(
            !read_buffer.contains(&at),
            "{value:?} is a view into the read buffer"
        );
    }
    assert_eq!(&buf[..], b"body");
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    for (wire, keeps) in [
        (&b"HTTP/1.1 200 OK\r\n\r\n"[..], true),
        (b"HTTP/1.1 200 OK\r\nconnection: Close\r\n\r\n", false),
        (b"HTTP/1.0 200 OK\r\n\r\n", false),
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n", true),
    ] {
        let head = parse_head(&mut BytesMut::from(wire)).unwrap().unwrap();
        assert_eq!(head.keeps_alive(), keeps, "{wire:?}");
    }
}

#[test]
fn request_bodies_are_framed_as_hyper_frames_them() {
    let mut with_length = HeaderMap::new();
    with_length.insert("content-length", "12".parse().unwrap());
    let unknown = SizeHint::default();
    assert_eq!(
        codec::request_framing(&Method::POST, &with_length, false, &unknown),
        Framing::Length(12)
    );
    let none = HeaderMap::new();
    assert_eq!(
        codec::request_framing(&Method::POST, &none, false, &unknown),
        Framing::Chunked
    );
    assert_eq!(
        codec::request_framing(&Method::GET, &none, false, &unknown),
        Framing::Empty
    );
    assert_eq!(
        codec::request_framing(&Method::PUT, &none, false, &SizeHint::with_exact(7)),
        Framing::Length(7)
    );
    assert_eq!(
        codec::request_framing(&Method::POST, &none, true, &unknown),
        Framing::Empty
    );
    let mut head = Vec::new();
    codec::encode_head(&mut head, &Method::PUT, "/p", &none, Framing::Length(7));
    assert_eq!(head, b"PUT /p HTTP/1.1\r\ncontent-length: 7\r\n\r\n");
    let mut head = Vec::new();
    codec::encode_head(&mut head, &Method::POST, "/p", &none, Framing::Chunked);
    assert_eq!(
        head,
        b"POST /p HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

/// A head, a trailer section or a chunk-size line past its limit is refused whether it
/// arrives in one read or in several: a read that completes it must not let it through.
#[test]
fn limits_hold_however_the_bytes_arrive() {
    // Long fields, so the size is what trips, not the number of fields.
    let filler = [&b"x-filler: "[..], &[b'a'; 1000], b"\r\n"].concat();
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    while head.len() <= codec::MAX_HEAD {
        head.extend_from_slice(&filler);
    }
    head.extend_from_slice(b"\r\n");
    assert!(parse_head(&mut BytesMut::from(&head[..])).is_err());

    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() <= codec::MAX_HEAD {
        trailers.extend_from_slice(&filler);
    }
    trailers.extend_from_slice(b"\r\n");
    let mut decoder = Decoder::Chunked(Chunk::Size);
    assert!(decoder.decode(&mut BytesMut::from(&trailers[..])).is_err());

    let mut line = b"1;".to_vec();
    line.resize(codec::MAX_CHUNK_LINE + 1, b'x');
    line.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
    let mut decoder = Decoder::Chunked(Chunk::Size);
    assert!(decoder.decode(&mut BytesMut::from(&line[..])).is_err());
}

// Random and mutated responses: `fuzzing::tests::origin_response_smoke_run`.
