//! What an Ingress and its annotations ask of a site, written in the file: exact routes
//! and the tie rule, an origin with no servers (503 at once), allow/deny lists (403),
//! serving plain HTTP per route, a site with no certificate of its own (`tls: none`),
//! rewrites as the origin sees them, per-route body limits, fixed redirects.

use std::time::{Duration, Instant};

use http::Method;
use portcullis_tests::plain;
use portcullis_tests::scrape::metric;
use portcullis_tests::{
    Conn, GatewayBuilder, Resp, TestCa, TestOrigin, alert_received, bytes, collect,
};

const HOST: &str = "in.test";

async fn connect(gw: &portcullis_tests::TestGateway, ca: &TestCa) -> Conn {
    gw.client(&ca.root_der)
        .connect(HOST, &["http/1.1"])
        .await
        .unwrap()
}

/// A POST of `len` bytes on a connection of its own (a 413 may close it).
async fn post(gw: &portcullis_tests::TestGateway, ca: &TestCa, path: &str, len: usize) -> Resp {
    let mut conn = connect(gw, ca).await;
    let req = conn
        .request(HOST, path)
        .method(Method::POST)
        .body(bytes(vec![b'x'; len]))
        .unwrap();
    collect(conn.send(req).await.unwrap()).await
}

#[tokio::test]
async fn exact_routes_match_whole_paths_and_win_ties_with_prefixes() {
    let ca = TestCa::new("ingress CA");
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &[HOST],
            r#"respond: {body: fallback},
            routes: [
              {path: /foo, respond: {body: prefix}},
              {path: /foo, match: exact, respond: {body: exact}},
              {path: /foo/bar, match: exact, respond: {body: exact-bar}},
              {path: /old, match: exact, redirect: {to: "https://new.example/x", status: 301}}]"#,
        )
        .start()
        .await;
    let mut conn = connect(&gw, &ca).await;
    for (path, body) in [
        ("/foo", "exact"),
        ("/foo?q=1", "exact"),
        ("/foo/", "prefix"),
        ("/foo/x", "prefix"),
        ("/foo/bar", "exact-bar"),
        ("/foo/bar/", "prefix"),
        ("/foobar", "fallback"),
        ("/FOO", "fallback"),
    ] {
        assert_eq!(conn.get(HOST, path).await.text(), body, "{path}");
    }
    let moved = conn.get(HOST, "/old").await;
    assert_eq!(moved.status, 301);
    assert_eq!(moved.headers["location"], "https://new.example/x");
    assert_eq!(conn.get(HOST, "/old/x").await.text(), "fallback");
}

#[tokio::test]
async fn an_origin_with_no_servers_answers_503_at_once() {
    let ca = TestCa::new("ingress CA");
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &[HOST],
            "respond: {body: up}, routes: [{path: /empty, origin: {servers: []}}]",
        )
        .start()
        .await;
    let mut conn = connect(&gw, &ca).await;
    for _ in 0..3 {
        let start = Instant::now();
        let resp = conn.get(HOST, "/empty/x").await;
        assert!(start.elapsed() < Duration::from_secs(1), "not fast");
        assert_eq!(resp.status, 503);
        assert!(resp.text().contains("no servers"), "{}", resp.text());
        assert!(resp.headers.contains_key("retry-after"));
    }
    // The connection is fine, and the answers are counted as the route's.
    assert_eq!(conn.get(HOST, "/").await.text(), "up");
    let page = gw.scrape().await;
    let labels = [("site", HOST), ("route", "/empty"), ("code", "5xx")];
    assert_eq!(
        metric(&page, "portcullis_http_requests_total", &labels),
        3.0
    );
}

#[tokio::test]
async fn allow_and_deny_lists_refuse_with_403_before_the_origin() {
    let ca = TestCa::new("ingress CA");
    let origin = TestOrigin::http().await;
    let o = origin.addr;
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &[HOST],
            &format!(
                r#"origin: http://{o},
                routes: [
                  {{path: /denied, origin: http://{o}, deny: [127.0.0.0/8]}},
                  {{path: /elsewhere, origin: http://{o}, allow: [10.0.0.0/8]}},
                  {{path: /mine, origin: http://{o}, allow: [127.0.0.1/32]}},
                  {{path: /fixed, respond: {{body: no}}, allow: ['::1'], deny: [10.0.0.0/8]}},
                  {{path: /both, origin: http://{o}, allow: [127.0.0.0/8], deny: [127.0.0.1]}}]"#
            ),
        )
        .start()
        .await;
    let mut conn = connect(&gw, &ca).await;
    for path in ["/denied/x", "/elsewhere", "/fixed", "/both"] {
        let resp = conn.get(HOST, path).await;
        assert_eq!(resp.status, 403, "{path}: {}", resp.text());
    }
    // A forwarding header does not make the client someone else.
    let req = conn
        .request(HOST, "/elsewhere")
        .header("x-forwarded-for", "10.1.2.3")
        .body(portcullis_tests::empty())
        .unwrap();
    assert_eq!(collect(conn.send(req).await.unwrap()).await.status, 403);
    assert!(origin.seen().is_empty(), "nothing refused was forwarded");
    assert_eq!(conn.get(HOST, "/mine").await.status, 200);
    assert_eq!(conn.get(HOST, "/other").await.status, 200);
    assert_eq!(origin.seen().len(), 2);
    let page = gw.scrape().await;
    let labels = [("site", HOST), ("route", "/elsewhere"), ("code", "4xx")];
    assert_eq!(
        metric(&page, "portcullis_http_requests_total", &labels),
        2.0
    );
}

#[tokio::test]
async fn plain_http_is_served_or_redirected_as_the_route_says() {
    let ca = TestCa::new("ingress CA");
    let origin = TestOrigin::http().await;
    let o = origin.addr;
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &[HOST],
            &format!(
                "origin: http://{o}, hsts: true, routes: [{{path: /open, origin: http://{o}, plain_http: serve}}]"
            ),
        )
        .tls_site(
            &ca,
            &["open.test"],
            &format!(
                "origin: http://{o}, hsts: true, plain_http: serve, routes: [{{path: /login, origin: http://{o}, plain_http: redirect}}]"
            ),
        )
        .start()
        .await;
    let http = gw.http.unwrap();

    let served = plain::get(http, HOST, "/open/x?q=1").await;
    assert_eq!(served.status, 200, "{}", served.text);
    assert_eq!(served.body(), "ok GET /open/x?q=1");
    assert!(
        !served
            .head()
            .to_ascii_lowercase()
            .contains("strict-transport-security")
    );
    let seen = origin.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["host"], HOST);
    assert!(
        seen.headers["forwarded"]
            .to_str()
            .unwrap()
            .ends_with("proto=http")
    );
    // The rest of the site redirects, as before.
    let redirected = plain::get(http, HOST, "/other").await;
    assert_eq!(redirected.status, 308, "{}", redirected.text);

    // A site served over plain HTTP, but for one route; its fallback and unmatched paths.
    assert_eq!(plain::get(http, "open.test", "/").await.status, 200);
    assert_eq!(plain::get(http, "open.test", "/login").await.status, 308);
    // The same site over HTTPS says `https`.
    let resp = gw.client(&ca.root_der).get("open.test", "/x").await;
    assert_eq!(resp.status, 200);
    assert_eq!(origin.last().headers["x-forwarded-proto"], "https");
    // Unknown hosts: 404 as before.
    assert_eq!(plain::get(http, "nobody.test", "/").await.status, 404);
}

#[tokio::test]
async fn a_site_without_a_certificate_is_served_with_the_default_one() {
    let ca = TestCa::new("ingress CA");
    let builder = GatewayBuilder::new();
    // The default site's certificate also names the bare site (a wildcard would too).
    let (cert, key) = ca
        .leaf(&["main.test", "bare.test"])
        .write(builder.dir(), "main");
    let gw = builder
        .site(&format!(
            "{{hosts: [main.test], default: true, tls: {{cert: '{}', key: '{}'}}, respond: {{body: main}}}}",
            cert.display(),
            key.display()
        ))
        .site("{hosts: [bare.test], tls: none, respond: {body: bare}}")
        .start()
        .await;
    let client = gw.client(&ca.root_der);
    let mut conn = client.connect("bare.test", &["http/1.1"]).await.unwrap();
    let leaf = portcullis_tls::CertInfo::parse(&conn.peer_leaf).unwrap();
    assert_eq!(leaf.names, ["main.test", "bare.test"]);
    assert_eq!(conn.get("bare.test", "/").await.text(), "bare");

    // With no default site, its handshakes fail as an unclaimed name's do.
    let gw = GatewayBuilder::new()
        .tls_site(&ca, &["main.test"], "respond: {body: main}")
        .site("{hosts: [bare.test], tls: none, respond: {body: bare}}")
        .start()
        .await;
    let err = gw
        .client(&ca.root_der)
        .tls("bare.test", true, &["http/1.1"])
        .await
        .unwrap_err();
    assert_eq!(
        alert_received(&err),
        Some(rustls::AlertDescription::UnrecognisedName),
        "{err:?}"
    );
}

#[tokio::test]
async fn rewrites_are_what_the_origin_sees() {
    let ca = TestCa::new("ingress CA");
    let origin = TestOrigin::http().await;
    let o = origin.addr;
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &[HOST],
            &format!(
                r#"routes: [
                  {{path: /app, origin: http://{o}, rewrite: /}},
                  {{path: /v1/, origin: http://{o}, rewrite: /api/}},
                  {{path: /login, match: exact, origin: http://{o}, rewrite: /auth/login}}]"#
            ),
        )
        .start()
        .await;
    let mut conn = connect(&gw, &ca).await;
    for (sent, seen) in [
        ("/app/x?q=1", "/x?q=1"),
        ("/app", "/"),
        ("/app/", "/"),
        ("/app?q", "/?q"),
        ("/v1/users", "/api/users"),
        ("/login?next=/", "/auth/login?next=/"),
    ] {
        assert_eq!(conn.get(HOST, sent).await.status, 200, "{sent}");
        assert_eq!(origin.last().path, seen, "{sent}");
    }
}

#[tokio::test]
async fn a_route_s_body_limit_overrides_the_site_s() {
    let ca = TestCa::new("ingress CA");
    let origin = TestOrigin::http().await;
    let o = origin.addr;
    let gw = GatewayBuilder::new()
        .set("limits", "{max_body_size: 8KiB}")
        .tls_site(
            &ca,
            &[HOST],
            &format!(
                r#"origin: http://{o}, max_body_size: 2KiB,
                routes: [
                  {{path: /big, origin: http://{o}, rewrite: /upload, max_body_size: 4KiB}},
                  {{path: /small, origin: http://{o}, rewrite: /upload, max_body_size: 1KiB}},
                  {{path: /site, origin: http://{o}, rewrite: /upload}}]"#
            ),
        )
        .start()
        .await;
    for (path, len, want) in [
        ("/big", 3072, "received 3072"),
        ("/big", 5000, "413"),
        ("/small", 1500, "413"),
        ("/small", 1000, "received 1000"),
        ("/site", 3072, "413"),
        ("/site", 2048, "received 2048"),
    ] {
        let resp = post(&gw, &ca, path, len).await;
        let got = match resp.status.as_u16() {
            413 => "413".to_owned(),
            _ => resp.text(),
        };
        assert_eq!(got, want, "{path} {len}");
    }
}
