//! `origin`: which modes each origin server answers in, against the configured one.

use portcullis_tests::{GatewayBuilder, TestCa, TestOrigin, closed_port};

use super::{doctor, finding, parts, redirecting_server};

/// A plain HTTP origin behind PROXY protocol v2: it answers only connections that start
/// with a v2 header, as a server configured for it does.
async fn proxy_v2_origin() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if conn.read_exact(&mut head).await.is_err() || &head[..12] != SIGNATURE {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                let mut rest = vec![0u8; len + 4096];
                let _ = conn.read(&mut rest).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_origin_is_probed_in_every_mode_and_compared_with_its_configured_one() {
    let ca = TestCa::new("Doctor Origin CA");
    let plain = TestOrigin::http().await;
    let self_signed = TestOrigin::https(&TestCa::self_signed(&["127.0.0.1"]), &["http/1.1"]).await;
    let wrong_name =
        TestOrigin::https(&ca.leaf(&["app.internal", "api.internal"]), &["http/1.1"]).await;
    let good = TestOrigin::https(&ca.leaf(&["127.0.0.1"]), &["http/1.1"]).await;
    let client = ca.client_leaf("puller");
    let pulls = TestOrigin::https_requiring_client_cert(
        &ca.leaf(&["127.0.0.1"]),
        &["http/1.1"],
        &ca.root_der,
    )
    .await;
    let looping = redirecting_server("https://loop.test/").await;
    let refused = closed_port().await;
    let behind_proxy = proxy_v2_origin().await;
    let h2_only = TestOrigin::https(&ca.leaf(&["127.0.0.1"]), &["h2"]).await;
    let grpc = TestOrigin::http().await;
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let expired = TestOrigin::https(
        &ca.leaf_valid(&["127.0.0.1"], now - 30 * day, now - day),
        &["http/1.1"],
    )
    .await;

    let b = GatewayBuilder::new();
    let root = ca.write_root(b.dir(), "origin-ca");
    let (client_cert, client_key) = client.write(b.dir(), "puller");
    let site = |b: GatewayBuilder, name: &str, origin: String| {
        b.tls_site(
            &ca,
            &[&format!("{name}.test")],
            &format!("name: {name}, origin: {origin}"),
        )
    };
    let b = site(
        b,
        "plain",
        format!("{{url: 'https://{}', mode: full}}", plain.addr),
    );
    let b = site(b, "selfsigned", format!("'https://{}'", self_signed.addr));
    let b = site(b, "wrongname", format!("'https://{}'", wrong_name.addr));
    let b = site(
        b,
        "good",
        format!("{{url: 'https://{}', ca: '{}'}}", good.addr, root.display()),
    );
    let b = site(
        b,
        "weak",
        format!("{{url: 'https://{}', mode: full}}", good.addr),
    );
    let b = site(b, "loop", format!("'http://{looping}'"));
    let b = site(b, "refused", format!("'http://127.0.0.1:{refused}'"));
    let b = site(
        b,
        "h2",
        format!(
            "{{url: 'https://{}', ca: '{}'}}",
            h2_only.addr,
            root.display()
        ),
    );
    let b = site(
        b,
        "expired",
        format!(
            "{{url: 'https://{}', ca: '{}'}}",
            expired.addr,
            root.display()
        ),
    );
    let b = site(
        b,
        "h2c",
        format!("{{url: 'http://{}', h2c: true}}", grpc.addr),
    );
    let b = site(
        b,
        "proxied",
        format!("{{url: 'http://{behind_proxy}', proxy_protocol: v2}}"),
    );
    let b = site(
        b,
        "nopull",
        format!("{{url: 'https://{}', mode: full}}", pulls.addr),
    );
    let b = site(
        b,
        "pull",
        format!(
            "{{url: 'https://{}', ca: '{}', client_cert: {{cert: '{}', key: '{}'}}}}",
            pulls.addr,
            root.display(),
            client_cert.display(),
            client_key.display()
        ),
    );
    let config = b.write_config();
    let (code, r) = doctor(&config, &[("SSL_CERT_FILE", &root)]).await;
    assert_eq!(code, 2, "{r:#}");

    let (status, msg, fix) = parts(finding(&r, "plain", "origin", "configured `full`"));
    assert_eq!(status, "fail");
    assert!(msg.contains("`flexible` works"), "{msg}");
    assert!(msg.contains("plain HTTP, not TLS"), "{msg}");
    assert!(fix.contains(&format!("http://{}", plain.addr)), "{fix}");
    assert_eq!(
        finding(&r, "plain", "origin", "configured")["subject"],
        format!("https://{}", plain.addr)
    );

    let (status, msg, fix) = parts(finding(&r, "selfsigned", "origin", "configured `strict`"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("strict: unknown CA: the certificate is self-signed"),
        "{msg}"
    );
    assert!(msg.contains("`full` works"), "{msg}");
    assert!(fix.contains("mode: full"), "{fix}");

    let (status, msg, _) = parts(finding(&r, "wrongname", "origin", "configured `strict`"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains(
            "name mismatch: the certificate is for app.internal, api.internal, not `127.0.0.1`"
        ),
        "{msg}"
    );

    let (status, msg, _) = parts(finding(&r, "good", "origin", "`strict` works"));
    assert_eq!(status, "ok");
    assert!(msg.contains("verified against the origin's `ca`"), "{msg}");

    let (status, msg, fix) = parts(finding(&r, "weak", "origin", "but `strict` works"));
    assert_eq!(status, "warn");
    assert!(
        msg.contains("verified against the system's trust store"),
        "{msg}"
    );
    assert!(fix.contains("mode: strict"), "{fix}");

    let (status, msg, fix) = parts(finding(&r, "loop", "origin", "redirect loop"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("the origin redirects to HTTPS") && msg.contains("https://loop.test/"),
        "{msg}"
    );
    assert!(
        fix.contains("full") && fix.contains("strict") && fix.contains("HTTPS redirect"),
        "{fix}"
    );

    let (status, msg, _) = parts(finding(&r, "refused", "origin", "cannot be reached"));
    assert_eq!(status, "fail");
    assert!(msg.contains("connection refused"), "{msg}");

    // An origin speaking only HTTP/2 over TLS, and one speaking h2c, as the gateway would.
    let (status, msg, _) = parts(finding(&r, "h2", "origin", "`strict` works"));
    assert_eq!(status, "ok");
    assert!(msg.contains("HTTP/2 negotiated"), "{msg}");
    let (status, msg, _) = parts(finding(&r, "h2c", "origin", "`flexible` works"));
    assert_eq!(status, "ok");
    assert!(msg.contains("h2c"), "{msg}");

    let (status, msg, _) = parts(finding(&r, "expired", "origin", "configured `strict`"));
    assert_eq!(status, "fail");
    assert!(msg.contains("strict: the certificate expired on"), "{msg}");

    // The PROXY header the gateway sends is sent by the probes too.
    let (status, msg, _) = parts(finding(&r, "proxied", "origin", "`flexible` works"));
    assert_eq!(status, "ok");
    assert!(msg.contains("answered 200"), "{msg}");

    let (status, msg, fix) = parts(finding(&r, "nopull", "origin", "configured `full`"));
    assert_eq!(status, "fail");
    assert!(msg.contains("wants a client certificate"), "{msg}");
    assert!(msg.contains("certificate_required"), "{msg}");
    assert!(fix.contains("client_cert"), "{fix}");
    let (status, msg, _) = parts(finding(&r, "pull", "origin", "`strict` works"));
    assert_eq!(status, "ok");
    assert!(msg.contains("client certificate"), "{msg}");
}
