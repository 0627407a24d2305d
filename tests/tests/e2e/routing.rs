//! Sites and routes: Host must match the SNI's site (421), plain HTTP redirects only
//! configured hosts, fixed responses, longest-prefix routes, HSTS.

use portcullis_tests::{GatewayBuilder, TestCa, TestGateway, plain};

async fn two_sites(ca: &TestCa) -> TestGateway {
    GatewayBuilder::new()
        .tls_site(
            ca,
            &["a.test", "*.a.test"],
            r#"hsts: {max_age: 600, include_subdomains: true},
            respond: {body: "a root\n"},
            routes: [
              {path: /api, respond: {status: 201, body: api, content_type: application/json}},
              {path: /api/v2, respond: {status: 202, body: v2}},
              {path: /down, respond: {status: 503, body: "back soon"}}]"#,
        )
        .tls_site(
            ca,
            &["b.test"],
            "routes: [{path: /only, respond: {body: only}}]",
        )
        .start()
        .await
}

#[tokio::test]
async fn host_must_belong_to_the_sites_of_the_sni() {
    let ca = TestCa::new("routing CA");
    let gw = two_sites(&ca).await;
    let client = gw.client(&ca.root_der);

    for alpn in [&["http/1.1"][..], &["h2"][..]] {
        let mut conn = client.connect("a.test", alpn).await.unwrap();
        assert_eq!(conn.get("a.test", "/").await.text(), "a root\n");
        // Same site through its wildcard: fine.
        assert_eq!(conn.get("x.a.test", "/").await.status, 200);
        // Another site's host on this connection: misdirected.
        let resp = conn.get("b.test", "/only").await;
        assert_eq!(resp.status, 421, "alpn {alpn:?}");
        // A host nobody claims (there is no default site).
        assert_eq!(conn.get("c.test", "/").await.status, 421);
        // The connection is still usable after a 421.
        assert_eq!(conn.get("a.test:8443", "/").await.status, 200);
    }
    // b.test on its own connection is fine.
    assert_eq!(client.get("b.test", "/only").await.text(), "only");
}

#[tokio::test]
async fn routes_pick_the_longest_prefix_and_answer_fixed_responses() {
    let ca = TestCa::new("routing CA");
    let gw = two_sites(&ca).await;
    let client = gw.client(&ca.root_der);
    let mut conn = client.connect("a.test", &["h2"]).await.unwrap();

    let api = conn.get("a.test", "/api/users?x=1").await;
    assert_eq!((api.status.as_u16(), api.text().as_str()), (201, "api"));
    assert_eq!(api.headers["content-type"], "application/json");
    let v2 = conn.get("a.test", "/api/v2/x").await;
    assert_eq!((v2.status.as_u16(), v2.text().as_str()), (202, "v2"));
    // Prefixes match whole segments: /apix is not under /api.
    assert_eq!(conn.get("a.test", "/apix").await.text(), "a root\n");
    let down = conn.get("a.test", "/down").await;
    assert_eq!(
        (down.status.as_u16(), down.text().as_str()),
        (503, "back soon")
    );
    assert_eq!(down.headers["content-type"], "text/plain; charset=utf-8");

    // HSTS on every response of the site, including fixed and error responses.
    for resp in [&api, &down] {
        assert_eq!(
            resp.headers["strict-transport-security"],
            "max-age=600; includeSubDomains"
        );
    }
    // A site with routes but no fallback answers 404 elsewhere, with no HSTS configured.
    let mut b = client.connect("b.test", &["http/1.1"]).await.unwrap();
    let missing = b.get("b.test", "/nothing").await;
    assert_eq!(missing.status, 404);
    assert!(missing.headers.get("strict-transport-security").is_none());
}

#[tokio::test]
async fn plain_http_redirects_configured_hosts_only() {
    let ca = TestCa::new("routing CA");
    let gw = two_sites(&ca).await;
    let http = gw.http.unwrap();
    let https_port = gw.https.port();

    let resp = plain::exchange(
        http,
        "GET /path/x?q=1&r=2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
        "{resp}"
    );
    assert!(
        resp.contains(&format!(
            "location: https://a.test:{https_port}/path/x?q=1&r=2\r\n"
        )),
        "{resp}"
    );

    // The port the client used on :80 is dropped; wildcard hosts are configured hosts.
    let resp = plain::exchange(
        http,
        "GET / HTTP/1.1\r\nHost: x.a.test:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.contains(&format!("location: https://x.a.test:{https_port}/\r\n")),
        "{resp}"
    );

    // Any other host: 404, never a redirect (no open redirect).
    for host in [
        "evil.example",
        "a.test.evil.example",
        "b.test.",
        "x.y.a.test",
    ] {
        let resp = plain::exchange(
            http,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        if host == "b.test." {
            // A trailing dot names the same host.
            assert!(resp.starts_with("HTTP/1.1 308"), "{host}: {resp}");
        } else {
            assert!(resp.starts_with("HTTP/1.1 404"), "{host}: {resp}");
            assert!(!resp.contains("location:"), "{host}: {resp}");
        }
    }
    let resp = plain::exchange(http, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn admin_reports_health_and_readiness() {
    let ca = TestCa::new("routing CA");
    let gw = two_sites(&ca).await;
    let admin = gw.admin.unwrap();
    let health = plain::exchange(
        admin,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let ready = plain::exchange(
        admin,
        "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"),
        "{ready}"
    );
}

/// `mixed_content: upgrade`: the site's HTML over HTTPS asks browsers to upgrade its
/// `http://` subresources (`Content-Security-Policy: upgrade-insecure-requests`, merged
/// into the origin's policy: tested beside the merge in `portcullis-proxy`); other content
/// types, plain HTTP and sites without the setting are left alone. `rewrite:` settings
/// without `mixed_content: rewrite` would do nothing, and are refused by key
/// (`mixed_content.rs` tests `rewrite` itself).
#[tokio::test]
async fn mixed_content_upgrade_asks_browsers_to_upgrade_subresources_of_html_over_https() {
    let ca = TestCa::new("mixed content CA");
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["m.test"],
            r#"mixed_content: upgrade,
            respond: {body: "<img src=http://m.test/a.png>", content_type: "text/html; charset=utf-8"},
            plain_http: serve,
            routes: [{path: /data, respond: {body: "{}", content_type: application/json}}]"#,
        )
        .tls_site(
            &ca,
            &["plain.test"],
            r#"respond: {body: "<p>", content_type: text/html}"#,
        )
        .start()
        .await;
    let client = gw.client(&ca.root_der);
    for alpn in ["h2", "http/1.1"] {
        let mut conn = client.connect("m.test", &[alpn]).await.unwrap();
        let page = conn.get("m.test", "/").await;
        assert_eq!(
            page.headers["content-security-policy"], "upgrade-insecure-requests",
            "{alpn}"
        );
        let data = conn.get("m.test", "/data").await;
        assert!(data.headers.get("content-security-policy").is_none());
    }
    let other = client.get("plain.test", "/").await;
    assert!(other.headers.get("content-security-policy").is_none());
    // Over plain HTTP the page is not mixed content: nothing added.
    let resp = plain::get(gw.http.unwrap(), "m.test", "/").await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert!(
        !resp
            .head()
            .to_ascii_lowercase()
            .contains("content-security-policy"),
        "{}",
        resp.text
    );

    let refused = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["r.test"],
            "mixed_content: upgrade, rewrite: {hosts: [cdn.test]}, respond: {}",
        )
        .try_start()
        .await;
    let Err(portcullis::StartError::Config(problems)) = refused else {
        panic!("`rewrite:` without `mixed_content: rewrite` must be refused by key")
    };
    assert!(
        problems.iter().any(|p| p.key == "sites[0].rewrite"),
        "{problems:?}"
    );
}
