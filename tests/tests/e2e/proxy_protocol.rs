//! PROXY protocol at both ends: accepted from trusted load balancers (v1 and v2) and refused
//! from anyone else; sent to origins that ask for it, one connection per client; and
//! `trusted_proxies` deciding whether forwarding headers are kept.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_proxy::{ProxyAddrs, ProxyHeader, encode_v1, encode_v2, read_header};
use portcullis_tests::{
    GatewayBuilder, Resp, TestCa, TestGateway, TestOrigin, collect, empty, within_for,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const LISTEN_TRUSTING_LOOPBACK: &str =
    "{https: 127.0.0.1:0, http: 127.0.0.1:0, proxy_protocol: {trusted: [127.0.0.1/32]}}";

struct Setup {
    gw: TestGateway,
    root: rustls_pki_types::CertificateDer<'static>,
}

/// A gateway with site `a.test` (certificate from a test CA) forwarding to `origin`, with
/// `listen` and any extra top-level keys.
async fn setup(origin: &str, listen: &str, extra: &[(&str, &str)]) -> Setup {
    let ca = TestCa::new("edge");
    let mut b = GatewayBuilder::new().set("listen", listen);
    for (k, v) in extra {
        b = b.set(k, v);
    }
    let gw = b
        .tls_site(&ca, &["a.test"], &format!("origin: {origin}"))
        .start()
        .await;
    Setup {
        gw,
        root: ca.root_der.clone(),
    }
}

impl Setup {
    /// GET `/` over TLS after writing `prefix` on the bare TCP connection.
    async fn get_after(&self, prefix: &[u8], headers: &[(&str, &str)]) -> std::io::Result<Resp> {
        let mut tcp = TcpStream::connect(self.gw.https).await?;
        tcp.write_all(prefix).await?;
        let mut conn = self
            .gw
            .client(&self.root)
            .connect_over(tcp, "a.test", &["http/1.1"])
            .await?;
        let mut req = conn.request("a.test", "/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = conn
            .send(req.body(empty()).unwrap())
            .await
            .map_err(std::io::Error::other)?;
        Ok(collect(resp).await)
    }
}

fn addrs(source: &str, destination: &str) -> ProxyAddrs {
    ProxyAddrs {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    }
}

/// How long the gateway may take to answer before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_trusted_load_balancer_s_client_address_is_used_v1_and_v2() {
    let origin = TestOrigin::http().await;
    let s = setup(
        &format!("'http://{}'", origin.addr),
        LISTEN_TRUSTING_LOOPBACK,
        &[],
    )
    .await;
    for (header, client) in [
        (
            encode_v1(&addrs("203.0.113.7:40000", "192.0.2.1:443")),
            "203.0.113.7",
        ),
        (
            encode_v2(&addrs("[2001:db8::9]:40001", "[2001:db8::1]:443")),
            "2001:db8::9",
        ),
    ] {
        let resp = within_for(
            LIMIT,
            "request after a PROXY header",
            s.get_after(&header, &[]),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = origin.last();
        assert_eq!(seen.headers["x-forwarded-for"], client);
    }
    // The header is required from a trusted peer: none means no connection.
    let refused = within_for(LIMIT, "TLS without a PROXY header", s.get_after(b"", &[])).await;
    assert!(
        refused.is_err(),
        "a trusted peer got through without a header"
    );
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_is_refused() {
    let origin = TestOrigin::http().await;
    let s = setup(
        &format!("'http://{}'", origin.addr),
        "{https: 127.0.0.1:0, http: 127.0.0.1:0, proxy_protocol: {trusted: [10.0.0.0/8]}}",
        &[],
    )
    .await;
    let header = encode_v2(&addrs("203.0.113.7:40000", "192.0.2.1:443"));
    let forged = within_for(
        LIMIT,
        "TLS after a forged header",
        s.get_after(&header, &[]),
    )
    .await;
    assert!(
        forged.is_err(),
        "a PROXY header from an untrusted peer was accepted"
    );
    // Without the header, the peer is an ordinary client.
    let resp = within_for(LIMIT, "plain TLS", s.get_after(b"", &[]))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(origin.last().headers["x-forwarded-for"], "127.0.0.1");
}

/// An origin that reads a PROXY header on every connection, records it, then serves
/// HTTP/1.1 answering with the source address it was given.
struct ProxyReadingOrigin {
    addr: SocketAddr,
    headers: Arc<Mutex<Vec<ProxyHeader>>>,
    task: JoinHandle<()>,
}

impl Drop for ProxyReadingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProxyReadingOrigin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let headers = Arc::new(Mutex::new(Vec::new()));
        let seen = headers.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(header) = read_header(&mut tcp, Duration::from_secs(5)).await else {
                        return;
                    };
                    seen.lock().unwrap().push(header);
                    let body = match header {
                        ProxyHeader::Proxied(a) => a.source.to_string(),
                        ProxyHeader::Local => "local".to_owned(),
                    };
                    let svc = service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            headers,
            task,
        }
    }
}

#[tokio::test]
async fn origins_get_the_client_address_in_a_proxy_header_one_connection_per_client() {
    for version in ["v1", "v2"] {
        let origin = ProxyReadingOrigin::start().await;
        let s = setup(
            &format!(
                "{{url: 'http://{}', proxy_protocol: {version}, health: {{active: {{interval: 100ms}}}}}}",
                origin.addr
            ),
            LISTEN_TRUSTING_LOOPBACK,
            &[],
        )
        .await;
        let mut bodies = Vec::new();
        for client in ["203.0.113.7:40000", "198.51.100.3:40001"] {
            let header = encode_v1(&addrs(client, "192.0.2.1:443"));
            // Two requests per client connection would share one origin connection; each
            // client connection here is new, so each needs its own origin connection.
            let resp = within_for(
                LIMIT,
                "request to a PROXY origin",
                s.get_after(&header, &[]),
            )
            .await
            .unwrap();
            assert_eq!(resp.status, 200, "{version}: {}", resp.text());
            bodies.push(resp.text());
        }
        assert_eq!(
            bodies,
            ["203.0.113.7:40000", "198.51.100.3:40001"],
            "{version}"
        );
        // Health checks speak PROXY too, as LOCAL: they are the gateway's own connections.
        portcullis_tests::wait::until(Duration::from_secs(10), "a health check", || async {
            origin
                .headers
                .lock()
                .unwrap()
                .contains(&ProxyHeader::Local)
                .then_some(())
        })
        .await;
        let proxied: Vec<_> = origin
            .headers
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| match h {
                ProxyHeader::Proxied(a) => Some(a.source.to_string()),
                ProxyHeader::Local => None,
            })
            .collect();
        assert_eq!(
            proxied,
            ["203.0.113.7:40000", "198.51.100.3:40001"],
            "{version}"
        );
    }
}

#[tokio::test]
async fn trusted_proxies_keep_forwarding_headers_others_do_not() {
    let origin = TestOrigin::http().await;
    let sent = [
        ("x-forwarded-for", "198.51.100.1"),
        ("forwarded", "for=198.51.100.1"),
    ];
    let untrusted = setup(
        &format!("'http://{}'", origin.addr),
        "{https: 127.0.0.1:0, http: 127.0.0.1:0}",
        &[("trusted_proxies", "[10.0.0.0/8]")],
    )
    .await;
    untrusted.get_after(b"", &sent).await.unwrap();
    let seen = origin.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        seen.headers["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=127.0.0.1;")
    );

    let trusted = setup(
        &format!("'http://{}'", origin.addr),
        "{https: 127.0.0.1:0, http: 127.0.0.1:0}",
        &[("trusted_proxies", "[127.0.0.1]")],
    )
    .await;
    trusted.get_after(b"", &sent).await.unwrap();
    let seen = origin.last();
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    assert!(
        seen.headers["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=198.51.100.1, for=127.0.0.1;"),
        "{:?}",
        seen.headers["forwarded"]
    );
}
