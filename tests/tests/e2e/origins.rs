//! Reaching origins: flexible (plaintext), full (TLS, unverified) and strict (verified) modes,
//! `server_name`, client certificates for authenticated origin pulls, the forwarding headers
//! an origin sees, and routes with their own origins.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_tests::{
    GatewayBuilder, Leaf, TestCa, TestGateway, TestOrigin, collect, empty, within_for,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Starts a gateway with one site, `a.test`, whose certificate comes from `edge`. `rest` is
/// given the config folder (to write CA roots and client certificates into) and returns the
/// rest of the site's YAML mapping (`origin`, `routes`).
async fn gateway(edge: &TestCa, rest: impl FnOnce(&std::path::Path) -> String) -> TestGateway {
    let b = GatewayBuilder::new();
    let rest = rest(b.dir());
    b.tls_site(edge, &["a.test"], &rest).start().await
}

/// How long the gateway may take to answer before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

/// Every value of header `name`, in order.
fn values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A TLS origin with `leaf` that records the SNI of every handshake and answers `named`.
/// `TestOrigin` does not expose the SNI, which is what `server_name` is meant to set.
async fn sni_recording_origin(
    leaf: &Leaf,
) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>, JoinHandle<()>) {
    portcullis_tests::init();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = config.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let Ok(start) = acceptor.await else { return };
                let sni = start.client_hello().server_name().map(str::to_owned);
                record.lock().unwrap().push(sni);
                let Ok(tls) = start.into_stream(config).await else {
                    return;
                };
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"named",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test]
async fn flexible_mode_forwards_plaintext_http() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| format!("origin: http://{}", origin.addr)).await;

    let resp = within_for(
        LIMIT,
        "flexible GET",
        gw.client(&edge.root_der).get("a.test", "/hello?x=1"),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok GET /hello?x=1");
    let seen = origin.last();
    assert_eq!(seen.path, "/hello?x=1");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(origin.connections(), 1);
}

#[tokio::test]
async fn full_mode_accepts_an_origin_certificate_nobody_trusts() {
    let edge = TestCa::new("edge CA");
    // Signed by a CA the gateway has never heard of, and for a name that is not the URL's.
    let untrusted = TestCa::new("untrusted origin CA");
    let origin = TestOrigin::https(&untrusted.leaf(&["origin.elsewhere"]), &["http/1.1"]).await;
    let gw = gateway(&edge, |_| {
        format!(
            "origin: {{url: 'https://127.0.0.1:{}', mode: full}}",
            origin.addr.port()
        )
    })
    .await;

    let resp = within_for(
        LIMIT,
        "full GET",
        gw.client(&edge.root_der).get("a.test", "/full"),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok GET /full");
    // The origin only speaks TLS, so its having seen the request proves TLS was used.
    assert_eq!(origin.last().path, "/full");
}

#[tokio::test]
async fn strict_mode_verifies_chain_and_name_and_maps_failures_to_502_or_526() {
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let stranger = TestCa::new("stranger CA");
    let good = TestOrigin::https(&origin_ca.leaf(&["127.0.0.1"]), &["http/1.1"]).await;
    let other_name = TestOrigin::https(&origin_ca.leaf(&["other.test"]), &["http/1.1"]).await;
    let plaintext = TestOrigin::http().await;
    let (good_port, other_port, plain_port) = (
        good.addr.port(),
        other_name.addr.port(),
        plaintext.addr.port(),
    );
    let gw = gateway(&edge, |dir| {
        let ca = origin_ca.write_root(dir, "origin-ca");
        let wrong = stranger.write_root(dir, "stranger-ca");
        let (ca, wrong) = (ca.display(), wrong.display());
        let route = |path: &str, port: u16, extra: &str| {
            format!(
                "{{path: {path}, origin: {{url: 'https://127.0.0.1:{port}', mode: strict{extra}}}}}"
            )
        };
        let routes = [
            route("/right", good_port, &format!(", ca: {ca}")),
            route("/wrong-ca", good_port, &format!(", ca: {wrong}")),
            route(
                "/wrong-ca-526",
                good_port,
                &format!(", ca: {wrong}, verify_failure_status: 526"),
            ),
            route(
                "/wrong-server-name",
                good_port,
                &format!(", ca: {ca}, server_name: wrong.test"),
            ),
            route(
                "/wrong-server-name-526",
                good_port,
                &format!(", ca: {ca}, server_name: wrong.test, verify_failure_status: 526"),
            ),
            route("/leaf-for-other-name", other_port, &format!(", ca: {ca}")),
            route(
                "/leaf-for-other-name-526",
                other_port,
                &format!(", ca: {ca}, verify_failure_status: 526"),
            ),
            // Not a certificate problem (the origin does not speak TLS at all): 502 even
            // with 526 configured.
            route(
                "/not-tls-526",
                plain_port,
                &format!(", ca: {ca}, verify_failure_status: 526"),
            ),
        ];
        format!("routes: [{}]", routes.join(", "))
    })
    .await;
    let client = gw.client(&edge.root_der);

    let right = within_for(LIMIT, "strict /right", client.get("a.test", "/right")).await;
    assert_eq!(right.status, 200);
    assert_eq!(right.text(), "ok GET /right");

    for (path, status) in [
        ("/wrong-ca", 502),
        ("/wrong-ca-526", 526),
        ("/wrong-server-name", 502),
        ("/wrong-server-name-526", 526),
        ("/leaf-for-other-name", 502),
        ("/leaf-for-other-name-526", 526),
        ("/not-tls-526", 502),
    ] {
        let resp = within_for(LIMIT, path, client.get("a.test", path)).await;
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
        assert!(
            resp.text().starts_with(&status.to_string()),
            "{path}: body {:?}",
            resp.text()
        );
    }
    // A failed verification never gets as far as sending the request.
    let paths: Vec<String> = good.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/right"]);
    assert!(other_name.seen().is_empty());
    // The plaintext origin received a TLS ClientHello, not an HTTP request it could route.
    assert!(plaintext.seen().is_empty());
}

#[tokio::test]
async fn server_name_sets_the_sni_and_the_name_verified() {
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    // The leaf is only for app.internal, not for the IP in the URL.
    let (addr, snis, task) = sni_recording_origin(&origin_ca.leaf(&["app.internal"])).await;
    let gw = gateway(&edge, |dir| {
        let ca = origin_ca.write_root(dir, "origin-ca");
        format!(
            "routes: [
               {{path: /named, origin: {{url: 'https://{addr}', ca: {ca}, server_name: app.internal}}}},
               {{path: /unnamed, origin: {{url: 'https://{addr}', ca: {ca}}}}}]",
            ca = ca.display()
        )
    })
    .await;
    let client = gw.client(&edge.root_der);

    let named = within_for(LIMIT, "/named", client.get("a.test", "/named")).await;
    assert_eq!(named.status, 200);
    assert_eq!(named.text(), "named");
    assert_eq!(*snis.lock().unwrap(), [Some("app.internal".to_owned())]);

    // Without server_name the gateway verifies the URL's IP, which the leaf does not name
    // (and sends no SNI, as for any IP).
    let unnamed = within_for(LIMIT, "/unnamed", client.get("a.test", "/unnamed")).await;
    assert_eq!(unnamed.status, 502);
    assert_eq!(
        *snis.lock().unwrap(),
        [Some("app.internal".to_owned()), None]
    );
    task.abort();
}

#[tokio::test]
async fn client_certificate_is_presented_to_origins_that_require_one() {
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let pull_ca = TestCa::new("origin pull CA");
    let other_ca = TestCa::new("other client CA");
    let origin = TestOrigin::https_requiring_client_cert(
        &origin_ca.leaf(&["127.0.0.1"]),
        &["http/1.1"],
        &pull_ca.root_der,
    )
    .await;
    let gw = gateway(&edge, |dir| {
        let ca = origin_ca.write_root(dir, "origin-ca");
        let (cert, key) = pull_ca.client_leaf("gateway").write(dir, "pull");
        let (other_cert, other_key) = other_ca.client_leaf("gateway").write(dir, "other");
        let url = format!("https://{}", origin.addr);
        format!(
            "routes: [
               {{path: /none, origin: {{url: '{url}', ca: {ca}}}}},
               {{path: /other, origin: {{url: '{url}', ca: {ca}, client_cert: {{cert: {oc}, key: {ok}}}}}}},
               {{path: /pull, origin: {{url: '{url}', ca: {ca}, client_cert: {{cert: {c}, key: {k}}}}}}}]",
            ca = ca.display(),
            c = cert.display(),
            k = key.display(),
            oc = other_cert.display(),
            ok = other_key.display(),
        )
    })
    .await;
    let client = gw.client(&edge.root_der);

    let none = within_for(LIMIT, "/none", client.get("a.test", "/none")).await;
    assert_eq!(none.status, 502, "{}", none.text());
    let other = within_for(LIMIT, "/other", client.get("a.test", "/other")).await;
    assert_eq!(other.status, 502, "{}", other.text());
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());

    let pull = within_for(LIMIT, "/pull", client.get("a.test", "/pull")).await;
    assert_eq!(pull.status, 200);
    assert_eq!(pull.text(), "ok GET /pull");
    let seen = origin.last();
    assert!(seen.client_cert);
    assert_eq!(seen.path, "/pull");
}

#[tokio::test]
async fn origin_sees_forwarding_headers_and_no_client_hop_by_hop_headers() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| format!("origin: http://{}", origin.addr)).await;
    let client = gw.client(&edge.root_der);
    let host = format!("a.test:{}", gw.https.port());

    // HTTP/1.1 client, sending forged forwarding headers and hop-by-hop headers.
    let mut conn = client.connect("a.test", &["http/1.1"]).await.unwrap();
    assert!(!conn.is_h2());
    let req = conn
        .request(&host, "/headers?q=1")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-foo")
        .header("x-foo", "listed in connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    let resp = within_for(LIMIT, "h1 /headers", async {
        collect(conn.send(req).await.unwrap()).await
    })
    .await;
    assert_eq!(resp.status, 200);
    let seen = origin.last();
    let h = &seen.headers;
    let all = |name: &str| values(h, name);
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-proto"), ["https"]);
    assert_eq!(all("x-forwarded-host"), [host.as_str()]);
    assert_eq!(all("host"), [host.as_str()]);
    assert_eq!(
        all("forwarded"),
        [format!("for=127.0.0.1;host=\"{host}\";proto=https").as_str()]
    );
    assert_eq!(
        all("via").last().map(String::as_str),
        Some("1.1 portcullis")
    );
    assert_eq!(all("x-end-to-end"), ["kept"]);
    for gone in ["connection", "x-foo", "keep-alive", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} reached the origin: {h:?}");
    }

    // HTTP/2 client: same forwarding headers, Via names HTTP/2.
    let mut conn = client.connect("a.test", &["h2"]).await.unwrap();
    assert!(conn.is_h2());
    let req = conn
        .request(&host, "/headers-h2")
        .header("x-forwarded-for", "6.6.6.6")
        .body(empty())
        .unwrap();
    let resp = within_for(LIMIT, "h2 /headers-h2", async {
        collect(conn.send(req).await.unwrap()).await
    })
    .await;
    assert_eq!(resp.status, 200);
    let seen = origin.last();
    assert_eq!(seen.path, "/headers-h2");
    let h = &seen.headers;
    let all = |name: &str| values(h, name);
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-proto"), ["https"]);
    assert_eq!(all("x-forwarded-host"), [host.as_str()]);
    assert_eq!(all("host"), [host.as_str()]);
    assert_eq!(
        all("forwarded"),
        [format!("for=127.0.0.1;host=\"{host}\";proto=https").as_str()]
    );
    assert_eq!(all("via").last().map(String::as_str), Some("2 portcullis"));
}

#[tokio::test]
async fn origin_hop_by_hop_response_headers_do_not_reach_the_client() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| format!("origin: http://{}", origin.addr)).await;
    let client = gw.client(&edge.root_der);

    for alpn in ["http/1.1", "h2"] {
        let mut conn = client.connect("a.test", &[alpn]).await.unwrap();
        let resp = within_for(LIMIT, "/hop", conn.get("a.test", "/hop")).await;
        assert_eq!(resp.status, 200, "{alpn}");
        assert_eq!(resp.text(), "hop", "{alpn}");
        assert_eq!(resp.headers["x-public"], "yes", "{alpn}");
        for gone in ["x-private", "keep-alive", "connection"] {
            assert!(
                !resp.headers.contains_key(gone),
                "{alpn}: {gone} reached the client: {:?}",
                resp.headers
            );
        }
    }
}

#[tokio::test]
async fn routes_forward_to_their_own_origins_and_strip_prefixes() {
    let edge = TestCa::new("edge CA");
    let site_origin = TestOrigin::http().await;
    let api = TestOrigin::http().await;
    let assets = TestOrigin::http().await;
    let gw = gateway(&edge, |_| {
        format!(
            "origin: http://{}, routes: [
               {{path: /api, strip_prefix: true, origin: http://{}}},
               {{path: /static/, origin: http://{}}}]",
            site_origin.addr, api.addr, assets.addr
        )
    })
    .await;
    let client = gw.client(&edge.root_der);
    let mut conn = client.connect("a.test", &["h2"]).await.unwrap();

    for (path, origin, seen_path) in [
        ("/api/users?id=7&x=y", &api, "/users?id=7&x=y"),
        ("/api?page=2", &api, "/?page=2"),
        ("/api", &api, "/"),
        ("/static/app.js?v=3", &assets, "/static/app.js?v=3"),
        ("/apix/users", &site_origin, "/apix/users"),
        ("/other?q", &site_origin, "/other?q"),
    ] {
        let resp = within_for(LIMIT, path, conn.get("a.test", path)).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.text(), format!("ok GET {seen_path}"), "{path}");
        assert_eq!(origin.last().path, seen_path, "{path}");
    }
    assert_eq!(api.seen().len(), 3);
    assert_eq!(assets.seen().len(), 1);
    assert_eq!(site_origin.seen().len(), 2);
}

#[tokio::test]
async fn sites_in_front_of_one_origin_share_its_connections_and_keep_their_host() {
    let edge = TestCa::new("edge CA");
    let origin_ca = TestCa::new("origin CA");
    let leaf = origin_ca.leaf(&["127.0.0.1"]);
    // flexible, full over HTTP/1.1, full over HTTP/2 (by ALPN).
    for (mode, alpn) in [
        ("flexible", None),
        ("full", Some("http/1.1")),
        ("full", Some("h2")),
    ] {
        let what = format!("{mode} {alpn:?}");
        let origin = match alpn {
            None => TestOrigin::http().await,
            Some(alpn) => TestOrigin::https(&leaf, &[alpn]).await,
        };
        let url = match alpn {
            None => format!("'http://{}'", origin.addr),
            Some(_) => format!("{{url: 'https://{}', mode: full}}", origin.addr),
        };
        let mut b = GatewayBuilder::new();
        let names = ["a.test", "b.test", "c.test", "d.test"];
        for name in names {
            b = b.tls_site(&edge, &[name], &format!("origin: {url}"));
        }
        let gw = b.start().await;
        let client = gw.client(&edge.root_der);
        // One request after another, each site in turn, twice: one origin connection is
        // enough for all of them (as with nginx's upstream keepalive), where a pool per
        // Host would open one per site.
        for round in 0..2 {
            for name in names {
                let resp = within_for(LIMIT, name, client.get(name, &format!("/{round}"))).await;
                assert_eq!(resp.status, 200, "{what} {name}");
                let seen = origin.last();
                let host = match alpn {
                    Some("h2") => seen.authority.clone(),
                    _ => seen.headers["host"].to_str().ok().map(str::to_owned),
                };
                assert_eq!(
                    host.as_deref(),
                    Some(name),
                    "{what}: the origin sees the site"
                );
                assert_eq!(seen.path, format!("/{round}"), "{what}");
            }
        }
        assert_eq!(
            origin.connections(),
            1,
            "{what}: one origin connection for every site"
        );
    }
}

#[tokio::test]
async fn max_connections_makes_requests_wait_for_a_free_connection() {
    let edge = TestCa::new("edge CA");
    let origin = TestOrigin::http().await;
    let gw = gateway(&edge, |_| {
        format!(
            "origin: {{url: 'http://{}', max_connections: 1}}",
            origin.addr
        )
    })
    .await;
    let client = gw.client(&edge.root_der);
    // Three slow requests at once, each on its own client connection: one origin
    // connection serves them one after another.
    let slow: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get("a.test", &format!("/slow/200?{i}")).await })
        })
        .collect();
    for r in slow {
        let resp = within_for(LIMIT, "slow request", r).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "slow done");
    }
    assert_eq!(origin.seen().len(), 3);
    assert_eq!(origin.connections(), 1, "max_connections: 1");
}
