//! Mixed content as a user's browser judges it: headless Chromium, trusting the test CA as a
//! user who added it would, loads a page through the gateway that pulls its script and its
//! image over `http://`. With `mixed_content: off` Chromium blocks the script and says so on
//! its console; with `upgrade` and `rewrite` everything loads over HTTPS with no
//! mixed-content message.

use portcullis_tests::chromium::{Browser, Outcome, PIXEL_PNG, PageOrigin, PageReport};
use portcullis_tests::{GatewayBuilder, TestCa, TestGateway};

/// What the browser saw of the page, and the origin behind the gateway.
struct Visit {
    report: PageReport,
    /// `document.title` after the load: `script ran` once the script ran.
    title: String,
    /// The image's `naturalWidth`: 0 unless it loaded.
    image_width: u64,
    /// The `src` attributes of the page as the browser parsed it (the image's, the
    /// script's): what the gateway delivered.
    sources: Vec<String>,
    origin: PageOrigin,
    _gateway: TestGateway,
}

/// Opens `https://app.test/` through a gateway whose site sets `mixed_content: mode`; the
/// page asks for `http://app.test/app.js` and `http://app.test/pixel.png`, as a site on
/// ports 443 and 80 would. The browser takes app.test's port 443 to the gateway's HTTPS
/// listener and port 80 to its HTTP listener.
async fn visit(mode: &str) -> Visit {
    let ca = TestCa::new("browser CA");
    let origin = PageOrigin::start().await;
    let gateway = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["app.test"],
            &format!("origin: 'http://{}', mixed_content: {mode}", origin.addr),
        )
        .start()
        .await;
    origin.put(
        "/",
        "text/html; charset=utf-8",
        "<!doctype html><html><head><title>not yet</title>\n\
         <link rel=icon href=\"data:,\"></head><body>\n\
         <img id=pixel src=\"http://app.test/pixel.png\">\n\
         <script src=\"http://app.test/app.js\"></script>\n\
         </body></html>\n",
    );
    origin.put(
        "/app.js",
        "text/javascript",
        "document.title = 'script ran'; console.log('script ran');\n",
    );
    origin.put("/pixel.png", "image/png", PIXEL_PNG);
    let ca_pem = ca.write_root(gateway.dir(), "browser-ca");

    let mut browser = browser(&ca_pem, &gateway).await;
    let report = browser.load("https://app.test/").await;
    // A valid certificate, as a user who trusts the CA sees it: no error, an answer.
    assert_eq!(report.main_error, None, "{report:#?}");
    assert_eq!(report.main_status, Some(200), "{report:#?}");
    assert_eq!(
        report.main_security_state.as_deref(),
        Some("secure"),
        "{report:#?}"
    );
    assert!(report.loaded, "no load event: {report:#?}");
    let title = browser.evaluate("document.title").await;
    let image_width = browser
        .evaluate("document.getElementById('pixel').naturalWidth")
        .await;
    let sources = browser
        .evaluate("[...document.querySelectorAll('[src]')].map(e => e.getAttribute('src'))")
        .await;
    Visit {
        sources: serde_json::from_value(sources).unwrap(),
        title: title.as_str().unwrap_or_default().to_owned(),
        image_width: image_width.as_u64().unwrap_or_default(),
        report,
        origin,
        _gateway: gateway,
    }
}

/// A browser trusting the CA in `ca_pem`, taking app.test:443 and app.test:80 to the
/// gateway's listeners.
async fn browser(ca_pem: &std::path::Path, gateway: &TestGateway) -> Browser {
    let map = [
        ("app.test:443", gateway.https),
        ("app.test:80", gateway.http.unwrap()),
    ];
    Browser::launch(ca_pem, &map).await
}

/// Everything over HTTPS and nothing for the browser to complain about.
fn assert_all_https(visit: &Visit) {
    let report = &visit.report;
    assert!(
        report.mixed_content_messages().is_empty(),
        "{:#?}",
        report.console
    );
    assert_eq!(visit.title, "script ran", "{report:#?}");
    assert!(
        report
            .console
            .contains(&("log".to_owned(), "script ran".to_owned())),
        "{report:#?}"
    );
    assert!(visit.image_width > 0, "the image did not load: {report:#?}");
    assert!(!report.requests.is_empty());
    for request in &report.requests {
        assert!(request.url.starts_with("https://"), "{report:#?}");
        assert_eq!(request.mixed_content_type, "none", "{report:#?}");
        assert_eq!(request.outcome, Outcome::Status(200), "{report:#?}");
    }
    for path in ["/app.js", "/pixel.png"] {
        assert_eq!(report.requests_ending(path).len(), 1, "{path}: {report:#?}");
        assert!(visit.origin.asked().iter().any(|p| p == path), "{path}");
    }
}

/// Without the setting, Chromium blocks the script (active mixed content) and says so; the
/// page's own code never runs. It warns about the image (passive mixed content, which
/// Chromium upgrades by itself since version 86).
#[tokio::test]
async fn mixed_content_off_chromium_blocks_the_http_script() {
    let visit = visit("off").await;
    let report = &visit.report;
    let said = |level: &str, path: &str| {
        report
            .console
            .iter()
            .any(|(l, text)| l == level && text.contains("Mixed Content") && text.contains(path))
    };
    assert!(said("error", "/app.js"), "{:#?}", report.console);
    assert!(said("warning", "/pixel.png"), "{:#?}", report.console);
    let script = report.requests_ending("/app.js");
    assert!(
        script.iter().any(|r| r.url.starts_with("http://")
            && r.mixed_content_type == "blockable"
            && matches!(&r.outcome, Outcome::Failed { blocked_reason: Some(why), .. } if why == "mixed-content")),
        "{report:#?}"
    );
    assert_eq!(
        visit.title, "not yet",
        "the blocked script ran: {report:#?}"
    );
    assert!(
        !visit.origin.asked().iter().any(|p| p == "/app.js"),
        "the blocked script reached the origin"
    );
}

/// `mixed_content: upgrade`: the page's `http://` script and image load over HTTPS, and
/// Chromium has nothing to say about mixed content. The page is delivered as written: the
/// browser does the upgrading.
#[tokio::test]
async fn mixed_content_upgrade_chromium_loads_everything_over_https() {
    let visit = visit("upgrade").await;
    assert_all_https(&visit);
    assert_eq!(visit.sources.len(), 2);
    assert!(
        visit.sources.iter().all(|s| s.starts_with("http://")),
        "{:?}",
        visit.sources
    );
}

/// `mixed_content: rewrite`: the same, with the URLs rewritten in the page itself.
#[tokio::test]
async fn mixed_content_rewrite_chromium_loads_everything_over_https() {
    let visit = visit("rewrite").await;
    assert_all_https(&visit);
    assert_eq!(visit.sources.len(), 2);
    assert!(
        visit.sources.iter().all(|s| s.starts_with("https://")),
        "{:?}",
        visit.sources
    );
}

/// The control for every test above: the browser trusts what the user trusts and no more.
/// A CA the user never added gives a certificate error and no page.
#[tokio::test]
async fn chromium_refuses_the_gateway_certificate_from_a_ca_it_does_not_trust() {
    let ca = TestCa::new("browser CA");
    let gateway = GatewayBuilder::new()
        .tls_site(&ca, &["app.test"], "respond: {body: hello}")
        .start()
        .await;
    let other = TestCa::new("another CA").write_root(gateway.dir(), "another-ca");
    let mut browser = browser(&other, &gateway).await;
    let report = browser.load("https://app.test/").await;
    assert_eq!(
        report.main_error.as_deref(),
        Some("net::ERR_CERT_AUTHORITY_INVALID"),
        "{report:#?}"
    );
    assert_eq!(report.main_status, None, "{report:#?}");
}
