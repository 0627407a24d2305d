//! Abuse protection at the edge: connection caps, slowloris, header vs idle timeouts,
//! HTTP/2 rapid reset and stream limits, and request body size limits. Attacks are held open
//! while an ordinary client is served, and each cut-off is checked in `/metrics`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::{
    ClientBody, GatewayBuilder, Resp, TestCa, TestClient, TestGateway, TestOrigin, bytes, collect,
    connect_from, empty, logs, scrape, wait, within_for,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const HOST: &str = "l.test";

/// A gateway with one site, `l.test`, under `limits`; `rest` is the rest of the site's YAML
/// mapping (its `origin`, `max_body_size`).
async fn gateway(ca: &TestCa, limits: &str, rest: &str) -> TestGateway {
    GatewayBuilder::new()
        .set("limits", limits)
        .tls_site(ca, &[HOST], rest)
        .start()
        .await
}

/// The sum of the samples of `name` carrying every label in `labels`, from the admin
/// listener's `/metrics`.
async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape::metric(&scrape::scrape(admin).await, name, labels)
}

/// Reads until the peer closes (a response such as 408 may come first); the bytes read.
async fn read_until_closed(io: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// An HTTP/1.1 connection whose end can be watched: the request sender and the task driving
/// the connection, which finishes when the gateway closes it.
async fn h1(client: &TestClient) -> (http1::SendRequest<ClientBody>, JoinHandle<()>) {
    let tls = client.tls(HOST, true, &["http/1.1"]).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

/// GET `path` on an HTTP/1.1 connection.
async fn get1(sender: &mut http1::SendRequest<ClientBody>, path: &str) -> Resp {
    within_for(Duration::from_secs(10), path, async {
        sender.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", HOST)
            .body(empty())
            .unwrap();
        collect(sender.send_request(req).await.unwrap()).await
    })
    .await
}

/// An HTTP/2 connection: a sender (clone it for concurrent requests) and the connection task.
async fn h2(client: &TestClient) -> (http2::SendRequest<ClientBody>, JoinHandle<()>) {
    let tls = client.tls(HOST, true, &["h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

fn get2(path: &str) -> Request<ClientBody> {
    Request::get(format!("https://{HOST}{path}"))
        .version(Version::HTTP_2)
        .body(empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_slowloris_connections_do_not_starve_a_normal_client() {
    const SILENT: usize = 300;
    const PARTIAL_HELLO: usize = 300;
    const PARTIAL_HEAD: usize = 400;
    const ALL: usize = SILENT + PARTIAL_HELLO + PARTIAL_HEAD;
    let ca = TestCa::new("limits CA");
    let origin = TestOrigin::http().await;
    // Unlimited per IP (every client here is 127.0.0.1), and timeouts long enough that the
    // attackers stay connected for the whole test.
    let gw = gateway(
        &ca,
        "{max_connections_per_ip: 0, header_read_timeout: 30s, handshake_timeout: 30s}",
        &format!("origin: http://{}", origin.addr),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let https = gw.https;
    let open = within_for(
        Duration::from_secs(60),
        "opening the attackers (the gateway must go on accepting while they stall)",
        async {
            // TCP connections that say nothing, and ones that stall inside the ClientHello.
            let raw: Vec<TcpStream> = futures_util::stream::iter(0..SILENT + PARTIAL_HELLO)
                .map(|i| async move {
                    let mut tcp = TcpStream::connect(https).await?;
                    if i >= SILENT {
                        // A handshake record header, announcing a body that never comes.
                        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await?;
                    }
                    Ok::<_, std::io::Error>(tcp)
                })
                .buffer_unordered(64)
                .try_collect()
                .await
                .unwrap();
            // Completed handshakes, then half a request head.
            let heads: Vec<_> = futures_util::stream::iter(0..PARTIAL_HEAD)
                .map(|i| {
                    let client = client.clone();
                    async move {
                        let mut tls = client.tls(HOST, true, &["http/1.1"]).await?;
                        tls.write_all(
                            format!("GET /slow/{i} HTTP/1.1\r\nHost: {HOST}\r\nX-A: ").as_bytes(),
                        )
                        .await?;
                        tls.flush().await?;
                        Ok::<_, std::io::Error>(tls)
                    }
                })
                .buffer_unordered(16)
                .try_collect()
                .await
                .unwrap();
            (raw, heads)
        },
    )
    .await;
    let (raw, mut heads) = open;
    assert_eq!(raw.len() + heads.len(), ALL);
    wait::until(
        Duration::from_secs(30),
        "the gateway to hold every attacking connection",
        || async { (gw.gateway.open_connections() >= ALL).then_some(()) },
    )
    .await;

    // A normal client is served promptly, again and again, while the attack goes on.
    for i in 0..5 {
        let start = Instant::now();
        let resp = within_for(
            Duration::from_secs(10),
            "a normal request during the attack",
            client.get(HOST, &format!("/normal/{i}")),
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), format!("ok GET /normal/{i}"));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "request {i} took {:?}",
            start.elapsed()
        );
        // The slow ones trickle another byte of their header line.
        for tls in &mut heads {
            tls.write_all(b"a").await.unwrap();
            tls.flush().await.unwrap();
        }
    }
    // The attackers were still connected throughout, none of their requests got through.
    assert!(
        gw.gateway.open_connections() >= ALL,
        "only {} connections open",
        gw.gateway.open_connections()
    );
    assert!(origin.seen().iter().all(|s| s.path.starts_with("/normal/")));

    drop(raw);
    drop(heads);
    wait::until(
        Duration::from_secs(30),
        "every connection to be closed",
        || async { (gw.gateway.open_connections() == 0).then_some(()) },
    )
    .await;
}

/// With `cap` connections open (and working), one more is closed at once, the open ones go
/// on, and closing one makes room for a new one.
async fn cap_is_enforced(limits: &str, cap: usize, reason: &str) {
    let ca = TestCa::new("limits CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&ca, limits, &format!("origin: http://{}", origin.addr)).await;
    let admin = gw.admin.unwrap();
    let client = gw.client(&ca.root_der);
    let mut conns = Vec::new();
    for i in 0..cap {
        let mut conn = client.connect(HOST, &["http/1.1"]).await.unwrap();
        assert_eq!(conn.get(HOST, &format!("/open/{i}")).await.status, 200);
        conns.push(conn);
    }
    assert_eq!(gw.gateway.open_connections(), cap);

    // One more: the TLS handshake fails (the gateway closes the socket unread).
    let refused = within_for(
        Duration::from_secs(10),
        "the over-limit handshake",
        client.tls(HOST, true, &["http/1.1"]),
    )
    .await;
    assert!(refused.is_err(), "connection {} was accepted", cap + 1);
    // The cap covers the plain HTTP listener too.
    let mut plain = TcpStream::connect(gw.http.unwrap()).await.unwrap();
    plain
        .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = within_for(
        Duration::from_secs(10),
        "the over-limit plain connection to close",
        read_until_closed(&mut plain),
    )
    .await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    wait::until(Duration::from_secs(10), "the refusals counted", || async {
        let https = metric(
            admin,
            "portcullis_connections_rejected_total",
            &[("listener", "https"), ("reason", reason)],
        )
        .await;
        let http = metric(
            admin,
            "portcullis_connections_rejected_total",
            &[("listener", "http"), ("reason", reason)],
        )
        .await;
        (https == 1.0 && http == 1.0).then_some(())
    })
    .await;

    // The open connections are untouched.
    for (i, conn) in conns.iter_mut().enumerate() {
        let resp = conn.get(HOST, &format!("/still/{i}")).await;
        assert_eq!(resp.text(), format!("ok GET /still/{i}"));
    }

    // Closing one makes room for exactly one.
    drop(conns.remove(0));
    wait::until(Duration::from_secs(10), "a place to be freed", || async {
        (gw.gateway.open_connections() == cap - 1).then_some(())
    })
    .await;
    let mut conn = client.connect(HOST, &["http/1.1"]).await.unwrap();
    assert_eq!(conn.get(HOST, "/new").await.text(), "ok GET /new");
    conns.push(conn);
    assert!(client.tls(HOST, true, &["http/1.1"]).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_per_ip_cap_are_refused_without_disturbing_others() {
    cap_is_enforced("{max_connections_per_ip: 5}", 5, "max_connections_per_ip").await;
}

/// Behind a NAT or a load balancer without the PROXY protocol every client has the same
/// address: by default there is no per-address cap to reset them.
#[tokio::test(flavor = "multi_thread")]
async fn by_default_one_address_may_open_more_than_512_connections() {
    const CONNS: usize = 600;
    let ca = TestCa::new("limits CA");
    let gw = gateway(&ca, "{}", "respond: {body: ok}").await;
    let http = gw.http.unwrap();
    // Silent connections, cut off by `header_read_timeout` (10 s) if the test fails.
    let conns: Vec<TcpStream> = within_for(
        Duration::from_secs(30),
        "opening the connections",
        futures_util::stream::iter(0..CONNS)
            .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 4).into(), http))
            .buffer_unordered(64)
            .collect(),
    )
    .await;
    wait::until(
        Duration::from_secs(10),
        "every connection from one address to be held",
        || async { (gw.gateway.open_connections() >= CONNS).then_some(()) },
    )
    .await;
    let refused = metric(
        gw.admin.unwrap(),
        "portcullis_connections_rejected_total",
        &[("reason", "max_connections_per_ip")],
    )
    .await;
    assert_eq!(refused, 0.0);
    drop(conns);
    wait::until(
        Duration::from_secs(30),
        "the connections to close",
        || async { (gw.gateway.open_connections() == 0).then_some(()) },
    )
    .await;
}

/// With a cap set, a refusal is counted, and the first one of each address is logged with
/// the setting's name so the operator finds it.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_ip_refusal_is_counted_and_logged_once_per_address() {
    let ca = TestCa::new("limits CA");
    let gw = gateway(&ca, "{max_connections_per_ip: 2}", "respond: {body: ok}").await;
    let http = gw.http.unwrap();
    let mut held = Vec::new();
    for (from, refusals) in [("127.0.0.2", 3), ("127.0.0.3", 1)] {
        for _ in 0..2 {
            held.push(connect_from(from.parse().unwrap(), http).await);
        }
        wait::until(Duration::from_secs(10), "the connections held", || async {
            (gw.gateway.open_connections() == held.len()).then_some(())
        })
        .await;
        for _ in 0..refusals {
            let mut refused = connect_from(from.parse().unwrap(), http).await;
            refused
                .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
                .await
                .ok();
            let answer = within_for(
                Duration::from_secs(10),
                "the refused connection to close",
                read_until_closed(&mut refused),
            )
            .await;
            assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        }
    }
    wait::until(Duration::from_secs(10), "the refusals counted", || async {
        let n = metric(
            gw.admin.unwrap(),
            "portcullis_connections_rejected_total",
            &[("listener", "http"), ("reason", "max_connections_per_ip")],
        )
        .await;
        (n == 4.0).then_some(())
    })
    .await;
    for from in ["127.0.0.2", "127.0.0.3"] {
        let peer = format!("peer={from}");
        logs::wait_for(
            Duration::from_secs(10),
            &["limits.max_connections_per_ip", &peer],
        )
        .await;
        // The whole binary's log: only this address, not one it is the start of.
        let lines: Vec<String> = logs::lines_with(&["limits.max_connections_per_ip", &peer])
            .into_iter()
            .filter(|l| l.split(' ').any(|field| field == peer))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_total_cap_are_refused_without_disturbing_others() {
    cap_is_enforced(
        "{max_connections: 3, max_connections_per_ip: 0}",
        3,
        "max_connections",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_outlives_the_header_timeout_but_not_the_idle_timeout() {
    let ca = TestCa::new("limits CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(
        &ca,
        "{header_read_timeout: 500ms, idle_timeout: 3s}",
        &format!("origin: http://{}", origin.addr),
    )
    .await;
    let admin = gw.admin.unwrap();
    let client = gw.client(&ca.root_der);

    // Two keep-alive connections that each complete a request, then go idle.
    let (mut a, a_task) = h1(&client).await;
    let (mut b, b_task) = h1(&client).await;
    assert_eq!(get1(&mut a, "/a1").await.status, 200);
    let a_idle = Instant::now();
    assert_eq!(get1(&mut b, "/b1").await.status, 200);
    let b_idle = Instant::now();

    // A third sends half a request head and stalls.
    let mut c = client.tls(HOST, true, &["http/1.1"]).await.unwrap();
    let c_start = Instant::now();
    c.write_all(format!("GET /c HTTP/1.1\r\nHost: {HOST}\r\nX-Half: ").as_bytes())
        .await
        .unwrap();
    c.flush().await.unwrap();
    let answer = within_for(
        Duration::from_secs(10),
        "the half head to be cut off",
        read_until_closed(&mut c),
    )
    .await;
    let c_closed = c_start.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        c_closed >= Duration::from_millis(300) && c_closed < Duration::from_millis(2900),
        "the half head was cut off after {c_closed:?}, want about 500 ms"
    );
    // The idle ones, idle for longer than the header timeout by now, are still there.
    assert!(!a_task.is_finished() && !b_task.is_finished());

    // A, idle for ~1.5 s (three header timeouts), still serves.
    tokio::time::sleep_until((a_idle + Duration::from_millis(1500)).into()).await;
    assert!(
        !a_task.is_finished(),
        "closed after {:?} idle",
        a_idle.elapsed()
    );
    assert_eq!(get1(&mut a, "/a2").await.text(), "ok GET /a2");
    let a_idle = Instant::now();

    // B, idle ever since, is closed at the idle timeout; A, used since, outlives it.
    within_for(
        Duration::from_secs(10),
        "the idle connection to close",
        b_task,
    )
    .await
    .unwrap();
    let b_closed = b_idle.elapsed();
    assert!(
        b_closed >= Duration::from_millis(2500),
        "the idle connection was closed after {b_closed:?}, want about 3 s"
    );
    assert!(
        !a_task.is_finished(),
        "A closed though used {:?} ago",
        a_idle.elapsed()
    );
    within_for(
        Duration::from_secs(10),
        "the other idle connection to close",
        a_task,
    )
    .await
    .unwrap();
    assert!(a_idle.elapsed() >= Duration::from_millis(2500));

    // Only the half head counts as a header timeout; idle closes are not refusals.
    assert_eq!(
        metric(
            admin,
            "portcullis_connections_rejected_total",
            &[("reason", "header_timeout")]
        )
        .await,
        1.0
    );
    assert!(origin.seen().iter().all(|s| s.path != "/c"));
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_rapid_reset_gets_the_connection_closed_while_others_are_served() {
    const MAX_RESETS: usize = 50;
    let ca = TestCa::new("limits CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(
        &ca,
        &format!("{{h2_max_resets: {MAX_RESETS}}}"),
        &format!("origin: http://{}", origin.addr),
    )
    .await;
    let admin = gw.admin.unwrap();
    let client = gw.client(&ca.root_der);
    let (mut attacker, attack_conn) = h2(&client).await;
    let mut bystander = client.connect(HOST, &["h2"]).await.unwrap();
    assert!(bystander.is_h2());
    let attacks = || {
        origin
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/slow/"))
            .count()
    };

    // Each stream is reset as soon as the gateway is working on it (its request has reached
    // the origin), so each is a reset the gateway's handler sees, not one h2 drops unseen.
    let mut streams = 0;
    for i in 0..MAX_RESETS * 4 {
        if attack_conn.is_finished() || attacker.ready().await.is_err() {
            break;
        }
        let before = attacks();
        let pending = attacker.send_request(get2(&format!("/slow/5000?stream={i}")));
        streams += 1;
        wait::until(
            Duration::from_secs(10),
            "the stream to reach the origin",
            || async { (attacks() > before || attack_conn.is_finished()).then_some(()) },
        )
        .await;
        drop(pending); // RST_STREAM(CANCEL)
        if i == MAX_RESETS / 2 {
            let resp = within_for(
                Duration::from_secs(10),
                "the bystander during the flood",
                bystander.get(HOST, "/bystander"),
            )
            .await;
            assert_eq!(resp.text(), "ok GET /bystander");
        }
    }
    within_for(
        Duration::from_secs(10),
        "the attacking connection to be closed",
        attack_conn,
    )
    .await
    .unwrap();
    assert!(
        streams > MAX_RESETS && streams <= MAX_RESETS + 5,
        "the connection was closed after {streams} streams, limit {MAX_RESETS} resets"
    );
    wait::until(Duration::from_secs(10), "the cut-off counted", || async {
        let n = metric(
            admin,
            "portcullis_connections_rejected_total",
            &[("listener", "https"), ("reason", "h2_rapid_reset")],
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
    // Neither the bystander nor new clients are affected.
    assert_eq!(bystander.get(HOST, "/after").await.text(), "ok GET /after");
    assert_eq!(client.get(HOST, "/new").await.text(), "ok GET /new");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_streams_over_the_concurrency_limit_are_queued_not_refused() {
    let ca = TestCa::new("limits CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(
        &ca,
        "{h2_max_concurrent_streams: 2}",
        &format!("origin: http://{}", origin.addr),
    )
    .await;
    let (sender, _conn) = h2(&gw.client(&ca.root_der)).await;
    // One request first, so the server's SETTINGS have arrived before the test proper.
    let warm = within_for(
        Duration::from_secs(10),
        "the first request",
        sender.clone().send_request(get2("/warm")),
    )
    .await
    .unwrap();
    assert_eq!(warm.status(), 200);

    let request = |path: String| {
        let mut sender = sender.clone();
        tokio::spawn(async move {
            sender.ready().await.unwrap();
            let resp = collect(sender.send_request(get2(&path)).await.unwrap()).await;
            (resp.status, Instant::now())
        })
    };
    let long: Vec<_> = (0..2)
        .map(|i| request(format!("/slow/2000?long={i}")))
        .collect();
    wait::until(
        Duration::from_secs(10),
        "both long requests at the origin",
        || async {
            let n = origin
                .seen()
                .iter()
                .filter(|s| s.path.contains("long="))
                .count();
            (n == 2).then_some(())
        },
    )
    .await;
    let long_started = Instant::now();
    let short: Vec<_> = (0..2)
        .map(|i| request(format!("/slow/1?short={i}")))
        .collect();

    let short = within_for(
        Duration::from_secs(30),
        "the queued requests",
        futures_util::future::join_all(short),
    )
    .await;
    let long = within_for(
        Duration::from_secs(30),
        "the long requests",
        futures_util::future::join_all(long),
    )
    .await;
    for (status, _) in long.iter().chain(&short).map(|r| r.as_ref().unwrap()) {
        assert_eq!(*status, StatusCode::OK);
    }
    // Both streams were taken, so the short requests waited for a long one to end.
    for (_, done) in short.iter().map(|r| r.as_ref().unwrap()) {
        let waited = done.duration_since(long_started);
        assert!(
            waited >= Duration::from_millis(1000),
            "a third stream was served after {waited:?}, alongside two 2 s streams"
        );
    }
}

/// `n` bytes in 256-byte frames with no declared length (chunked on HTTP/1.1).
fn chunked(n: usize) -> ClientBody {
    let frames = (0..n.div_ceil(256)).map(move |i| {
        let len = 256.min(n - i * 256);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![b'c'; len])))
    });
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// POST `body` to `/upload` on `host` over a fresh HTTP/1.1 connection.
async fn upload(client: &TestClient, host: &str, body: ClientBody) -> Resp {
    let mut conn = client.connect(host, &["http/1.1"]).await.unwrap();
    let req = conn
        .request(host, "/upload")
        .method(Method::POST)
        .body(body)
        .unwrap();
    within_for(Duration::from_secs(10), "an upload", async {
        collect(conn.send(req).await.unwrap()).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_over_the_limit_get_413() {
    let ca = TestCa::new("limits CA");
    let origin = TestOrigin::http().await;
    // `small.test` has its own 1 KiB limit; `plain.test` takes the global 3 KiB.
    let gw = GatewayBuilder::new()
        .set("limits", "{max_body_size: 3KiB}")
        .tls_site(
            &ca,
            &["small.test"],
            &format!("origin: http://{}, max_body_size: 1KiB", origin.addr),
        )
        .tls_site(
            &ca,
            &["plain.test"],
            &format!("origin: http://{}", origin.addr),
        )
        .start()
        .await;
    let client = gw.client(&ca.root_der);
    let uploads = || origin.seen().iter().filter(|s| s.path == "/upload").count();

    // Declared too large: refused before anything is sent to the origin.
    let resp = upload(&client, "small.test", bytes(vec![b'x'; 2048])).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    // Under the limit: forwarded whole (and only it reaches the origin).
    let resp = upload(&client, "small.test", bytes(vec![b'x'; 512])).await;
    assert_eq!(resp.text(), "received 512");
    assert_eq!(uploads(), 1);
    // Streamed with no length: cut off where it passes the limit.
    let resp = upload(&client, "small.test", chunked(4096)).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    let resp = upload(&client, "small.test", chunked(1024)).await;
    assert_eq!(resp.text(), "received 1024");

    // The global default applies where the site sets none.
    let resp = upload(&client, "plain.test", bytes(vec![b'x'; 2048])).await;
    assert_eq!(resp.text(), "received 2048");
    let resp = upload(&client, "plain.test", chunked(3072)).await;
    assert_eq!(resp.text(), "received 3072");
    let before = uploads();
    let resp = upload(&client, "plain.test", bytes(vec![b'x'; 4096])).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(uploads(), before);
    let resp = upload(&client, "plain.test", chunked(8192)).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
}

/// A raw HTTP/2 client (the `h2` crate) sending HEADERS and RST_STREAM back to back, as the
/// CVE-2023-44487 attack does: whichever guard trips first (h2's own for streams reset
/// before they are accepted, or the gateway's count of abandoned requests), the connection
/// is closed and counted, and others are served.
#[tokio::test(flavor = "multi_thread")]
async fn a_raw_headers_then_reset_flood_is_cut_off_and_counted() {
    let ca = TestCa::new("limits CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(
        &ca,
        "{h2_max_resets: 100}",
        &format!("origin: http://{}", origin.addr),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let tls = client.tls(HOST, true, &["h2"]).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut sent = 0;
    for i in 0..10_000 {
        let req = Request::get(format!("https://{HOST}/slow/5000?flood={i}"))
            .body(())
            .unwrap();
        match sender.send_request(req, true) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
        if i % 64 == 0 {
            tokio::task::yield_now().await;
            if driver.is_finished() {
                break;
            }
        }
    }
    let ended = within_for(
        Duration::from_secs(10),
        "the flooding connection to end",
        driver,
    )
    .await
    .unwrap();
    assert!(
        ended.is_err(),
        "the connection should end with an error, not cleanly"
    );
    assert!(sent < 10_000, "the gateway never stopped the flood");
    wait::until(Duration::from_secs(10), "the cut-off counted", || async {
        let n = metric(
            gw.admin.unwrap(),
            "portcullis_connections_rejected_total",
            &[("listener", "https"), ("reason", "h2_rapid_reset")],
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
    assert_eq!(client.get(HOST, "/after").await.text(), "ok GET /after");
}
