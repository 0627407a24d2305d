//! Protocols across the gateway: HTTP/2 and HTTP/1.1 on either side independently,
//! WebSocket upgrades, pooled origin connections, large bodies streamed both ways, and
//! HTTP/1.1 keep-alive connections that give their buffers back while idle.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use portcullis_tests::{
    ClientBody, Conn, GatewayBuilder, Resp, TestCa, TestGateway, TestOrigin, bytes, collect, wait,
    within_for,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Longer than an idle HTTP/1.1 connection keeps its buffers (50 ms) before it is released.
const PAST_RELEASE: Duration = Duration::from_millis(300);

/// Starts a gateway with one site, `a.test`, whose certificate comes from `edge`. `rest` is
/// given the config folder (to write CA roots into) and returns the rest of the site's YAML
/// mapping (`origin`, `routes`).
async fn gateway(edge: &TestCa, rest: impl FnOnce(&std::path::Path) -> String) -> TestGateway {
    gateway_from(GatewayBuilder::new(), edge, rest).await
}

/// As [`gateway`], from a builder with top-level keys already set (`limits`).
async fn gateway_from(
    b: GatewayBuilder,
    edge: &TestCa,
    rest: impl FnOnce(&std::path::Path) -> String,
) -> TestGateway {
    let rest = rest(b.dir());
    b.tls_site(edge, &["a.test"], &rest).start().await
}

/// How long the gateway may take to answer before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);

/// Sends `body` as a POST to `path` and reads the whole response.
async fn post(conn: &mut Conn, path: &str, body: ClientBody) -> Resp {
    let req = conn
        .request("a.test", path)
        .method(Method::POST)
        .body(body)
        .unwrap();
    collect(conn.send(req).await.unwrap()).await
}

/// `n` bytes in 64 KiB frames with no declared length (chunked on HTTP/1.1).
fn streamed(n: usize) -> ClientBody {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let frames = (0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..len)))
    });
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn h2_clients_reach_http1_origins() {
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let tls_h1 = TestOrigin::https(&origin_ca.leaf(&["127.0.0.1"]), &["http/1.1"]).await;
    let plain = TestOrigin::http().await;
    let gw = gateway(&edge, |dir| {
        format!(
            "origin: http://{}, routes: [{{path: /tls, origin: {{url: 'https://{}', ca: {}}}}}]",
            plain.addr,
            tls_h1.addr,
            origin_ca.write_root(dir, "origin-ca").display()
        )
    })
    .await;
    let mut conn = gw
        .client(&edge.root_der)
        .connect("a.test", &["h2", "http/1.1"])
        .await
        .unwrap();
    assert!(conn.is_h2());

    for (path, origin) in [("/tls/x", &tls_h1), ("/plain/y", &plain)] {
        let resp = within_for(LIMIT, path, conn.get("a.test", path)).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.version, Version::HTTP_2, "{path}");
        assert_eq!(resp.text(), format!("ok GET {path}"));
        let seen = origin.last();
        assert_eq!(seen.path, path);
        assert_eq!(seen.version, Version::HTTP_11, "{path}");
    }
}

#[tokio::test]
async fn http1_clients_reach_h2_origins_in_full_and_strict_mode() {
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let h2 = TestOrigin::https(&origin_ca.leaf(&["127.0.0.1"]), &["h2"]).await;
    let gw = gateway(&edge, |dir| {
        format!(
            "routes: [
               {{path: /full, origin: {{url: 'https://{addr}', mode: full}}}},
               {{path: /strict, origin: {{url: 'https://{addr}', mode: strict, ca: {ca}}}}}]",
            addr = h2.addr,
            ca = origin_ca.write_root(dir, "origin-ca").display()
        )
    })
    .await;
    let mut conn = gw
        .client(&edge.root_der)
        .connect("a.test", &["http/1.1"])
        .await
        .unwrap();
    assert!(!conn.is_h2());

    for path in ["/full/a", "/strict/b"] {
        let resp = within_for(LIMIT, path, conn.get("a.test", path)).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.version, Version::HTTP_11, "{path}");
        assert_eq!(resp.text(), format!("ok GET {path}"));
        let seen = h2.last();
        assert_eq!(seen.path, path);
        assert_eq!(seen.version, Version::HTTP_2, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echoes_through_the_gateway_beside_ordinary_requests() {
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let plain = TestOrigin::http().await;
    // Offers h2 first: the upgrade must still reach it over HTTP/1.1.
    let tls = TestOrigin::https(&origin_ca.leaf(&["127.0.0.1"]), &["h2", "http/1.1"]).await;
    let gw = gateway(&edge, |dir| {
        format!(
            "origin: http://{}, routes: [{{path: /tls, strip_prefix: true, origin: {{url: 'https://{}', ca: {}}}}}]",
            plain.addr,
            tls.addr,
            origin_ca.write_root(dir, "origin-ca").display()
        )
    })
    .await;
    let client = gw.client(&edge.root_der);

    for (url, origin) in [("wss://a.test/ws", &plain), ("wss://a.test/tls/ws", &tls)] {
        let stream = client.tls("a.test", true, &["http/1.1"]).await.unwrap();
        let (mut ws, resp) = within_for(LIMIT, url, tokio_tungstenite::client_async(url, stream))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101, "{url}");
        let seen = origin.last();
        assert_eq!(seen.path, "/ws", "{url}");
        assert_eq!(seen.version, Version::HTTP_11, "{url}");
        assert_eq!(seen.headers["upgrade"], "websocket", "{url}");

        // An ordinary request on another connection while the tunnel is open and busy.
        let echo = async {
            ws.send(Message::text("hello through the gateway"))
                .await
                .unwrap();
            let text = ws.next().await.unwrap().unwrap();
            ws.send(Message::binary(vec![0u8, 1, 2, 254, 255]))
                .await
                .unwrap();
            let binary = ws.next().await.unwrap().unwrap();
            (text, binary)
        };
        let (echoed, plain_resp) = within_for(LIMIT, url, async {
            tokio::join!(echo, client.get("a.test", "/alongside"))
        })
        .await;
        assert_eq!(
            echoed,
            (
                Message::text("hello through the gateway"),
                Message::binary(vec![0u8, 1, 2, 254, 255])
            ),
            "{url}"
        );
        assert_eq!(plain_resp.status, 200);
        assert_eq!(plain_resp.text(), "ok GET /alongside");

        // The tunnel is still open after the other request finished.
        let big = "x".repeat(100_000);
        within_for(LIMIT, url, ws.send(Message::text(big.clone())))
            .await
            .unwrap();
        let back = within_for(LIMIT, url, ws.next()).await.unwrap().unwrap();
        assert_eq!(back, Message::text(big), "{url}");
        within_for(LIMIT, url, ws.close(None)).await.unwrap();
    }
}

#[tokio::test]
async fn origin_connections_are_pooled_across_client_connections() {
    const REQUESTS: usize = 20;
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let plain = TestOrigin::http().await;
    let tls_h1 = TestOrigin::https(&origin_ca.leaf(&["127.0.0.1"]), &["http/1.1"]).await;
    let tls_h2 = TestOrigin::https(&origin_ca.leaf(&["127.0.0.1"]), &["h2"]).await;
    let gw = gateway(&edge, |dir| {
        let ca = origin_ca.write_root(dir, "origin-ca");
        format!(
            "origin: http://{}, routes: [
               {{path: /h1, origin: {{url: 'https://{}', ca: {ca}}}}},
               {{path: /h2, origin: {{url: 'https://{}', ca: {ca}}}}}]",
            plain.addr,
            tls_h1.addr,
            tls_h2.addr,
            ca = ca.display()
        )
    })
    .await;
    let client = gw.client(&edge.root_der);

    for (prefix, origin) in [("/plain", &plain), ("/h1", &tls_h1), ("/h2", &tls_h2)] {
        for i in 0..REQUESTS {
            let path = format!("{prefix}/{i}");
            // `get` opens a fresh client connection every time.
            let resp = within_for(LIMIT, &path, client.get("a.test", &path)).await;
            assert_eq!(resp.status, 200, "{path}");
            assert_eq!(resp.text(), format!("ok GET {path}"));
        }
        assert_eq!(origin.seen().len(), REQUESTS, "{prefix}");
        assert!(
            origin.connections() <= 2,
            "{prefix}: {REQUESTS} requests used {} origin connections",
            origin.connections()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways_on_h1_and_h2() {
    const SIZE: usize = 3 * 1024 * 1024 + 123;
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let plain = TestOrigin::http().await;
    let tls_h2 = TestOrigin::https(&origin_ca.leaf(&["127.0.0.1"]), &["h2"]).await;
    let gw = gateway(&edge, |dir| {
        format!(
            "origin: http://{}, routes: [{{path: /h2, strip_prefix: true, origin: {{url: 'https://{}', ca: {}}}}}]",
            plain.addr,
            tls_h2.addr,
            origin_ca.write_root(dir, "origin-ca").display()
        )
    })
    .await;
    let client = gw.client(&edge.root_der);

    for alpn in ["http/1.1", "h2"] {
        let mut conn = client.connect("a.test", &[alpn]).await.unwrap();
        assert_eq!(conn.is_h2(), alpn == "h2");
        for (prefix, origin, origin_version) in [
            ("", &plain, Version::HTTP_11),
            ("/h2", &tls_h2, Version::HTTP_2),
        ] {
            let what = format!("{alpn} client via {prefix:?}");
            let upload = format!("{prefix}/upload");

            let fixed = within_for(
                LIMIT,
                &what,
                post(&mut conn, &upload, bytes(vec![b'u'; SIZE])),
            )
            .await;
            assert_eq!(fixed.status, 200, "{what}");
            assert_eq!(fixed.text(), format!("received {SIZE}"), "{what}");
            assert_eq!(origin.last().version, origin_version, "{what}");

            let chunked = within_for(LIMIT, &what, post(&mut conn, &upload, streamed(SIZE))).await;
            assert_eq!(chunked.status, 200, "{what}");
            assert_eq!(chunked.text(), format!("received {SIZE}"), "{what}");

            let down = within_for(
                LIMIT,
                &what,
                conn.get("a.test", &format!("{prefix}/bytes/{SIZE}")),
            )
            .await;
            assert_eq!(down.status, 200, "{what}");
            assert_eq!(down.body.len(), SIZE, "{what}");
            assert!(down.body.iter().all(|&b| b == b'x'), "{what}");
        }
    }
}

/// An origin may answer before it has read the request body (a 413 to an upload it never
/// reads): the answer reaches the client at once and the next request finds a working
/// origin connection. `/deaf` goes to an origin that answers and then neither reads nor
/// closes, so an upload larger than the sockets' buffers is answered only if the gateway
/// reads the response while the request body is still going out. An HTTP/1.1 client still
/// writing when the answer comes finishes its upload into the edge's lingering close.
#[tokio::test(flavor = "multi_thread")]
async fn an_origin_answering_before_the_upload_ends_is_heard_at_once() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let deaf = DeafOrigin::start().await;
    let gw = gateway(&edge, |_| {
        format!(
            "origin: http://{}, routes: [{{path: /deaf, origin: http://{}}}]",
            origin.addr, deaf.addr
        )
    })
    .await;
    let client = gw.client(&edge.root_der);
    let uploads = [
        ("http/1.1", "/early", 3 * 1024 * 1024),
        ("http/1.1", "/deaf", 32 * 1024 * 1024),
        ("h2", "/early", 3 * 1024 * 1024),
        ("h2", "/deaf", 32 * 1024 * 1024),
    ];
    for (alpn, path, size) in uploads {
        for body in [bytes(vec![b'u'; size]), streamed(size)] {
            let what = format!("{alpn} client, {size} bytes to {path}");
            let mut conn = client.connect("a.test", &[alpn]).await.unwrap();
            let early = within_for(LIMIT, &what, post(&mut conn, path, body)).await;
            assert_eq!(early.status, 413, "{what}");
            assert_eq!(early.text(), "too large", "{what}");
            let mut conn = client.connect("a.test", &[alpn]).await.unwrap();
            let next = within_for(LIMIT, &what, conn.get("a.test", "/after")).await;
            assert_eq!(next.status, 200, "{what}");
            assert_eq!(next.text(), "ok GET /after", "{what}");
        }
    }
}

/// A client that writes its whole request before it reads (most do) still hears an answer
/// sent before the request ended: an origin's early 413, the gateway's own 413 for a body
/// over `max_body_size`, and hyper's 431 for a head that never ends. Once the answer is out
/// the edge reads and discards what the client still sends before it closes (lingering
/// close, as nginx does): closing with the request unread would reset the connection, and
/// the client would see the reset, not the answer.
#[tokio::test(flavor = "multi_thread")]
async fn an_http1_client_writing_its_whole_upload_first_still_hears_an_early_answer() {
    const SIZE: usize = 32 * 1024 * 1024;
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = GatewayBuilder::new()
        .tls_site(
            &edge,
            &["a.test"],
            &format!("origin: http://{}", origin.addr),
        )
        .tls_site(
            &edge,
            &["small.test"],
            &format!("origin: http://{}, max_body_size: 1KiB", origin.addr),
        )
        .start()
        .await;
    let client = gw.client(&edge.root_der);
    let upload = |host: &str, path: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {SIZE}\r\n\r\n")
    };
    let cases = [
        (
            "a.test",
            upload("a.test", "/early"),
            "413 Payload Too Large",
        ),
        (
            "small.test",
            upload("small.test", "/upload"),
            "413 Payload Too Large",
        ),
        // SIZE bytes of a header value, after the head's first line.
        (
            "a.test",
            "GET / HTTP/1.1\r\nhost: a.test\r\nx-long: ".to_owned(),
            "431 Request Header Fields Too Large",
        ),
    ];
    for (host, head, answer) in cases {
        let what = format!("{host}: {answer}");
        let mut tls = client.tls(host, true, &["http/1.1"]).await.unwrap();
        let chunk = vec![b'u'; 64 * 1024];
        let upload = async {
            tls.write_all(head.as_bytes()).await?;
            for _ in 0..SIZE / chunk.len() {
                tls.write_all(&chunk).await?;
            }
            tls.flush().await
        };
        within_for(LIMIT, &what, upload).await.unwrap_or_else(|e| {
            panic!("{what}: the upload failed before its answer was read: {e}")
        });
        let (status, _) = within_for(LIMIT, &what, read_response(&mut tls)).await;
        assert_eq!(status, format!("HTTP/1.1 {answer}"), "{what}");
    }
}

/// A lingering close is bounded: the connection closes once its client has sent nothing for
/// 5 s (nginx's `lingering_timeout`), and at once when the gateway drains.
#[tokio::test(flavor = "multi_thread")]
async fn a_lingering_connection_ends_when_its_client_goes_quiet_or_on_shutdown() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| format!("origin: http://{}", origin.addr)).await;
    let client = gw.client(&edge.root_der);
    // Answered early, then still being written to.
    let answered_early = || async {
        let mut tls = client.tls("a.test", true, &["http/1.1"]).await.unwrap();
        let head = "POST /early HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100000000\r\n\r\n";
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&[b'u'; 256 * 1024]).await.unwrap();
        let (status, _) = within_for(LIMIT, "answer", read_response(&mut tls)).await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
        // Discarded, not refused.
        within_for(LIMIT, "more", tls.write_all(&[b'u'; 1024 * 1024]))
            .await
            .unwrap();
        assert_eq!(gw.gateway.open_connections(), 1);
        tls
    };

    let quiet = answered_early().await;
    wait::until(
        Duration::from_secs(15),
        "the quiet lingering connection to close",
        || async { (gw.gateway.open_connections() == 0).then_some(()) },
    )
    .await;
    drop(quiet);

    let _lingering = answered_early().await;
    let started = std::time::Instant::now();
    assert!(
        within_for(LIMIT, "drain", gw.stop()).await,
        "drain did not finish"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the drain waited for a lingering connection"
    );
}

/// A connection with nothing more to come from its client closes at once, without the
/// lingering close (as nginx's `lingering_close on`): a client that asked for the close
/// after a request without a body, or after a body the origin read to its end, and a
/// connection closed for being idle. Each client here keeps its socket open and says
/// nothing, so a lingering close would hold its connection for 5 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_with_nothing_more_to_come_closes_without_lingering() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let b = GatewayBuilder::new().set("limits", "{idle_timeout: 1s}");
    let gw = gateway_from(b, &edge, |_| format!("origin: http://{}", origin.addr)).await;
    let client = gw.client(&edge.root_der);
    let gw = &gw;
    let closed_soon = |what: String| async move {
        wait::until(Duration::from_secs(3), &what, || async {
            (gw.gateway.open_connections() == 0).then_some(())
        })
        .await;
    };
    let requests = [
        (
            "GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
            "ok GET /",
        ),
        (
            "POST /upload HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
            "received 5",
        ),
        (
            "POST /upload HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "received 5",
        ),
    ];
    for (request, answer) in requests {
        let mut tls = client.tls("a.test", true, &["http/1.1"]).await.unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let (status, body) = within_for(LIMIT, answer, read_response(&mut tls)).await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", answer)
        );
        let mut rest = Vec::new();
        within_for(LIMIT, answer, tls.read_to_end(&mut rest))
            .await
            .unwrap();
        closed_soon(format!("the connection after {answer:?} to close")).await;
        drop(tls);
    }
    // Kept alive, then idle past the idle timeout.
    let mut tls = client.tls("a.test", true, &["http/1.1"]).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = within_for(LIMIT, "keep-alive", read_response(&mut tls)).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    closed_soon("the idle connection to close".to_owned()).await;
}

/// When an origin answers an HTTP/1.1 upload before it has the whole body, the gateway reads
/// and throws away the rest of a small upload (up to 256 KiB, as Go's `net/http` does), so
/// the client's connection carries its next request; a larger rest still ends the
/// connection after the answer. Here the rest is sent only once the answer is in, so none of
/// it can have arrived when the answer ends.
#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_to_a_small_upload_keeps_the_connection() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| format!("origin: http://{}", origin.addr)).await;
    let client = gw.client(&edge.root_der);
    for (rest, kept) in [(63 * 1024, true), (1024 * 1024, false)] {
        let what = format!("{rest} bytes after the answer");
        let mut tls = client.tls("a.test", true, &["http/1.1"]).await.unwrap();
        let head = format!(
            "POST /early HTTP/1.1\r\nhost: a.test\r\ncontent-length: {}\r\n\r\n",
            1024 + rest
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&[b'u'; 1024]).await.unwrap();
        let (status, _) = within_for(LIMIT, &what, read_response(&mut tls)).await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large", "{what}");
        within_for(LIMIT, &what, tls.write_all(&vec![b'u'; rest]))
            .await
            .unwrap();
        tls.write_all(b"GET /next HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .await
            .unwrap();
        if kept {
            let (status, body) = within_for(LIMIT, &what, read_response(&mut tls)).await;
            assert_eq!(
                (status.as_str(), body.as_str()),
                ("HTTP/1.1 200 OK", "ok GET /next")
            );
        } else {
            let mut after = Vec::new();
            let _ = within_for(LIMIT, &what, tls.read_to_end(&mut after)).await;
            assert!(after.is_empty(), "{what}: an answer after the close");
        }
    }
}

/// Answers every request with a 413 as soon as its head is in, then holds the connection
/// open without reading from it, until dropped.
struct DeafOrigin {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DeafOrigin {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match sock.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let answer =
                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large";
                let _ = sock.write_all(answer).await;
                held.push(sock);
            }
        });
        Self { addr, task }
    }
}

impl Drop for DeafOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// After the switch the socket belongs to the tunnel: it stays counted as an open client
/// connection (for the caps and the gauge) and the idle timeout, which is about HTTP
/// keep-alive, does not close it.
#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_stays_counted_and_outlives_the_idle_timeout() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let b = GatewayBuilder::new().set("limits", "{idle_timeout: 1s, header_read_timeout: 1s}");
    let gw = gateway_from(b, &edge, |_| format!("origin: http://{}", origin.addr)).await;
    let stream = gw
        .client(&edge.root_der)
        .tls("a.test", true, &["http/1.1"])
        .await
        .unwrap();
    let (mut ws, _) = within_for(
        LIMIT,
        "ws",
        tokio_tungstenite::client_async("wss://a.test/ws", stream),
    )
    .await
    .unwrap();
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    let mut rounds = 0;
    while std::time::Instant::now() < until {
        assert_eq!(gw.gateway.open_connections(), 1, "round {rounds}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        within_for(LIMIT, "echo", ws.send(Message::text("still here")))
            .await
            .unwrap();
        let back = within_for(LIMIT, "echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(back, Message::text("still here"));
        rounds += 1;
    }
    assert!(rounds >= 5);
    drop(ws);
    wait::until(
        Duration::from_secs(10),
        "the tunnel to be released",
        || async { (gw.gateway.open_connections() == 0).then_some(()) },
    )
    .await;
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`; returns its head's
/// status line and its body.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (String, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, String::from_utf8(body).unwrap())
}

/// An idle HTTP/1.1 connection gives its HTTP buffers back and is served again when the
/// client sends: ordinary requests, pipelined ones, a head split across the idle time, and
/// a WebSocket upgrade, all on the same TLS connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_released_while_idle_serves_again() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| format!("origin: http://{}", origin.addr)).await;
    let client = gw.client(&edge.root_der);
    let mut tls = client.tls("a.test", true, &["http/1.1"]).await.unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: a.test\r\n\r\n");

    tls.write_all(get("/one").as_bytes()).await.unwrap();
    let (status, body) = within_for(LIMIT, "first", read_response(&mut tls)).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok GET /one")
    );

    // Pipelined after the connection was released.
    tokio::time::sleep(PAST_RELEASE).await;
    let two = get("/two") + &get("/three");
    tls.write_all(two.as_bytes()).await.unwrap();
    for path in ["/two", "/three"] {
        let (status, body) = within_for(LIMIT, path, read_response(&mut tls)).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert_eq!(body, format!("ok GET {path}"));
    }

    // A head that stops half-way, then goes on after more than the release time: the
    // connection is not idle while a head is arriving, and no byte of it is lost.
    tokio::time::sleep(PAST_RELEASE).await;
    let four = get("/four");
    let (first, rest) = four.split_at(10);
    tls.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(PAST_RELEASE).await;
    tls.write_all(rest.as_bytes()).await.unwrap();
    let (status, body) = within_for(LIMIT, "/four", read_response(&mut tls)).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok GET /four")
    );

    // A WebSocket on the released connection: the tunnel gets the client's stream.
    tokio::time::sleep(PAST_RELEASE).await;
    let (mut ws, resp) = within_for(
        LIMIT,
        "upgrade",
        tokio_tungstenite::client_async("wss://a.test/ws", tls),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("after a rest")).await.unwrap();
    let echoed = within_for(LIMIT, "echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("after a rest"));
    ws.close(None).await.unwrap();
    let paths: Vec<String> = origin.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/one", "/two", "/three", "/four", "/ws"]);
}

/// A released connection is still drained: on shutdown it is closed at once, with a TLS
/// close_notify (a clean end of stream, not a cut connection).
#[tokio::test(flavor = "multi_thread")]
async fn a_released_connection_closes_cleanly_on_shutdown() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| format!("origin: http://{}", origin.addr)).await;
    let client = gw.client(&edge.root_der);
    let mut tls = client.tls("a.test", true, &["http/1.1"]).await.unwrap();
    tls.write_all(b"GET /one HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = within_for(LIMIT, "request", read_response(&mut tls)).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    tokio::time::sleep(PAST_RELEASE).await;

    let started = std::time::Instant::now();
    assert!(
        within_for(LIMIT, "drain", gw.stop()).await,
        "drain did not finish"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain waited on an idle connection"
    );
    let mut rest = Vec::new();
    let read = within_for(LIMIT, "close", tls.read_to_end(&mut rest)).await;
    assert_eq!(read.unwrap(), 0, "expected close_notify and nothing else");
}
