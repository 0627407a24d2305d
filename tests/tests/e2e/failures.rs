//! What users see when things go wrong: dead, slow or resetting origins get fast 502/504;
//! slow or malformed clients get 4xx or are cut off without disturbing anyone else.

use std::time::{Duration, Instant};

use portcullis_tests::{GatewayBuilder, TestCa, TestGateway, TestOrigin, closed_port, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn gateway(ca: &TestCa, origin: &str, limits: &str) -> TestGateway {
    GatewayBuilder::new()
        .set("limits", limits)
        .tls_site(ca, &["f.test"], &format!("origin: {origin}"))
        .start()
        .await
}

#[tokio::test]
async fn refused_origin_is_a_fast_502() {
    let ca = TestCa::new("failures CA");
    let port = closed_port().await;
    let gw = gateway(&ca, &format!("http://127.0.0.1:{port}"), "{}").await;
    let start = Instant::now();
    let resp = gw.client(&ca.root_der).get("f.test", "/").await;
    assert_eq!(resp.status, 502);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn origin_that_resets_is_a_502() {
    let ca = TestCa::new("failures CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Reads the request, then closes without answering.
    let task = tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            drop(tcp);
        }
    });
    let gw = gateway(&ca, &format!("http://{addr}"), "{}").await;
    let resp = gw.client(&ca.root_der).get("f.test", "/").await;
    assert_eq!(resp.status, 502);
    task.abort();
}

#[tokio::test]
async fn connect_timeout_is_a_504() {
    let ca = TestCa::new("failures CA");
    // Accepts TCP but never answers the TLS handshake, so connect (TCP + TLS) stalls.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let gw = gateway(
        &ca,
        &format!("{{url: https://{addr}, mode: full, timeouts: {{connect: 300ms}}}}"),
        "{}",
    )
    .await;
    let start = Instant::now();
    let resp = gw.client(&ca.root_der).get("f.test", "/").await;
    assert_eq!(resp.status, 504);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    task.abort();
}

#[tokio::test]
async fn response_header_timeout_is_a_504() {
    let ca = TestCa::new("failures CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(
        &ca,
        &format!(
            "{{url: http://{}, timeouts: {{response_header: 300ms}}}}",
            origin.addr
        ),
        "{}",
    )
    .await;
    let client = gw.client(&ca.root_der);
    assert_eq!(client.get("f.test", "/slow/5000").await.status, 504);
    // A fast request to the same origin is unaffected.
    assert_eq!(client.get("f.test", "/fast").await.text(), "ok GET /fast");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let ca = TestCa::new("failures CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(
        &ca,
        &format!("http://{}", origin.addr),
        "{header_read_timeout: 500ms, handshake_timeout: 500ms}",
    )
    .await;
    let client = gw.client(&ca.root_der);

    // Slowloris: a TLS connection that sends half a request head and stalls.
    let mut slow = client.tls("f.test", true, &["http/1.1"]).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: f.test\r\nX-Slow: ")
        .await
        .unwrap();
    slow.flush().await.unwrap();
    // A TCP connection that never starts the TLS handshake.
    let mut silent = tokio::net::TcpStream::connect(gw.https).await.unwrap();

    // Meanwhile, a normal client is served.
    assert_eq!(client.get("f.test", "/normal").await.status, 200);

    let closed = |n: std::io::Result<usize>| matches!(n, Ok(0) | Err(_));
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .unwrap();
    // hyper may answer 408 before closing; either way the connection ends.
    if let Ok(n) = n
        && n > 0
    {
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
        let rest = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
            .await
            .unwrap();
        assert!(closed(rest));
    }
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .unwrap();
    assert!(closed(n), "the handshake-less connection should be closed");
    assert_eq!(client.get("f.test", "/after").await.status, 200);
}

#[tokio::test]
async fn oversized_and_malformed_requests_get_4xx() {
    let ca = TestCa::new("failures CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(
        &ca,
        &format!("http://{}", origin.addr),
        "{max_header_size: 16KiB}",
    )
    .await;
    let client = gw.client(&ca.root_der);

    let mut tls = client.tls("f.test", true, &["http/1.1"]).await.unwrap();
    let big = "a".repeat(32 * 1024);
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: f.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let mut tls = client.tls("f.test", true, &["http/1.1"]).await.unwrap();
    tls.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // The gateway is not a forward proxy: CONNECT is refused, even for a configured host.
    let mut tls = client.tls("f.test", true, &["http/1.1"]).await.unwrap();
    tls.write_all(b"CONNECT f.test:443 HTTP/1.1\r\nHost: f.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");

    // No request made it to the origin, and the gateway still serves.
    assert!(origin.seen().is_empty());
    assert_eq!(client.get("f.test", "/ok").await.status, 200);
    wait::until(
        Duration::from_secs(5),
        "origin to see the request",
        || async { (origin.seen().len() == 1).then_some(()) },
    )
    .await;
}
