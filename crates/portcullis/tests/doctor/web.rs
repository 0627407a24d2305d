//! The `http` and `mixed-content` checks: the real binary run against a
//! real gateway (in-process, on fixed loopback ports named in its config file) in front of a
//! real origin serving pages with active and passive mixed content, and sites that redirect,
//! serve plain HTTP by design, send HSTS or not, and an ACME challenge route.

#[path = "web/origin.rs"]
mod origin;

use std::path::Path;

use origin::PageOrigin;
use portcullis_tests::doctor::Doctor;
use portcullis_tests::ports::stable_port;
use portcullis_tests::{GatewayBuilder, TestCa, TestGateway};
use serde_json::Value;

/// Runs `portcullis doctor --config CONFIG --json --timeout 2s ARGS` to completion.
async fn doctor(config: &Path, args: &[&str]) -> Doctor {
    let config = config.to_owned();
    let mut all = vec!["--timeout".to_owned(), "2s".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        portcullis_tests::doctor::run(env!("CARGO_BIN_EXE_portcullis"), &[], &config, &args)
    })
    .await
    .unwrap()
}

/// A gateway on fixed loopback ports (the doctor reads them from the config file), and the
/// builder, whose folder holds the config and certificates until it is dropped (so the
/// doctor can still read them after the gateway stops).
async fn gateway(
    b: GatewayBuilder,
    http: bool,
) -> (TestGateway, std::path::PathBuf, GatewayBuilder) {
    let https = stable_port();
    let listen = if http {
        format!("{{https: '{https}', http: '{}'}}", stable_port())
    } else {
        format!("{{https: '{https}', http: off}}")
    };
    let b = b.set("listen", &listen);
    let config = b.write_config();
    let gw = TestGateway::from_file(&config)
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    (gw, config, b)
}

fn text(f: &Value, key: &str) -> String {
    f[key].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_content_is_listed_per_page_blocked_apart_from_upgradeable() {
    let origin = PageOrigin::start().await;
    let ca = TestCa::new("Doctor Web CA");
    let o = format!("origin: 'http://{}'", origin.addr);
    let b = GatewayBuilder::new();
    let b = b
        .tls_site(&ca, &["www.test"], &o)
        .tls_site(
            &ca,
            &["upgrade.test"],
            &format!("{o}, mixed_content: upgrade"),
        )
        .tls_site(&ca, &["apex.test", "www.apex.test"], &o)
        .tls_site(
            &ca,
            &["rewrite.test"],
            &format!(
                "{o}, mixed_content: rewrite, rewrite: {{hosts: [cdn.test, frames.test, forms.test]}}"
            ),
        )
        .tls_site(
            &ca,
            &["clean.test"],
            "respond: {body: '<html><img src=\"https://img.test/a.png\"></html>', \
             content_type: text/html}",
        );
    let (_gw, config, _dir) = gateway(b, true).await;

    let d = doctor(&config, &[]).await;

    // The start page: every blocked kind, then the upgradeable ones, each URL once.
    let start = d.finding("www.test", "mixed-content", "/");
    assert_eq!(start["status"], "fail", "{start:#}");
    assert_eq!(
        text(&start, "message"),
        "blocks 8 active: http://cdn.test/app.js (script), http://cdn.test/site.css \
         (stylesheet), http://cdn.test/imported.css (CSS @import), http://cdn.test/font.woff2 \
         (font), http://frames.test/widget (iframe), http://img.test/hero-2x.png (srcset), \
         http://img.test/wide.webp (srcset), http://forms.test/subscribe (form action); 4 passive (upgraded to HTTPS or loaded with a \
         warning): http://img.test/bg.png (CSS url()), http://img.test/hero.png (img), \
         http://img.test/banner.png (CSS url()), http://media.test/clip.mp4 (video)"
    );
    assert!(
        text(&start, "fix").contains("mixed_content: upgrade")
            && text(&start, "fix").contains("mixed_content: rewrite"),
        "{start:#}"
    );
    // The second page, reached by a relative link, with its own path.
    let second = d.finding("www.test", "mixed-content", "/docs/second");
    assert_eq!(second["status"], "fail", "{second:#}");
    assert_eq!(
        text(&second, "message"),
        "blocks 1 active: http://cdn.test/second.js (script); 1 passive (upgraded to HTTPS or \
         loaded with a warning): http://img.test/second.png (img)"
    );
    // A page with images only is a warning.
    let third = d.finding("www.test", "mixed-content", "/docs/third");
    assert_eq!(third["status"], "warn", "{third:#}");
    assert_eq!(
        text(&third, "message"),
        "1 passive (upgraded to HTTPS or loaded with a warning): http://img.test/third.png (img)"
    );
    // Nothing else: no URL from script text, https or relative, no other host's page.
    assert_eq!(
        d.of(Some("www.test"), "mixed-content").len(),
        3,
        "{:#}",
        d.json
    );
    let all = d.json.to_string();
    for absent in [
        "inscript.test",
        "secure.png",
        "local.png",
        "protocol-relative",
        "other.test",
    ] {
        assert!(!all.contains(absent), "{absent} reported:\n{:#}", d.json);
    }
    let paths = origin.paths();
    assert!(paths.iter().any(|p| p == "/logo.png"), "{paths:?}");
    assert!(!paths.iter().any(|p| p == "/elsewhere"), "{paths:?}");

    // The gateway adds upgrade-insecure-requests: the browser fetches them over HTTPS.
    let upgraded = d.finding("upgrade.test", "mixed-content", "/");
    assert_eq!(upgraded["status"], "ok", "{upgraded:#}");
    assert!(
        text(&upgraded, "message").starts_with(
            "12 http:// subresources, upgraded by the browser under the CSP the gateway adds"
        ),
        "{upgraded:#}"
    );

    // The gateway rewrote the listed hosts' URLs in attributes; what is left (a host not
    // listed, and CSS, which rewrite does not touch) is reported as left by rewrite.
    let rewritten = d.finding("rewrite.test", "mixed-content", "/");
    assert_eq!(rewritten["status"], "fail", "{rewritten:#}");
    let message = text(&rewritten, "message");
    assert!(
        message.starts_with("mixed_content: rewrite left these in the page")
            && message.contains("http://cdn.test/imported.css (CSS @import)")
            && message.contains("http://img.test/hero.png (img)"),
        "{rewritten:#}"
    );
    for gone in ["app.js", "site.css", "frames.test", "forms.test"] {
        assert!(
            !message.contains(gone),
            "{gone} still reported: {rewritten:#}"
        );
    }
    assert!(text(&rewritten, "fix").contains("`rewrite: {hosts: [...]}`"));

    // The start page redirects to another host of the site: followed, then crawled there.
    assert_eq!(
        d.of(Some("apex.test"), "mixed-content")
            .iter()
            .map(|f| (text(f, "subject"), text(f, "status")))
            .collect::<Vec<_>>(),
        [
            ("/", "fail"),
            ("/docs/second", "fail"),
            ("/docs/third", "warn")
        ]
        .map(|(s, t)| (s.to_owned(), t.to_owned()))
    );

    let clean = d.finding("clean.test", "mixed-content", "https://clean.test/");
    assert_eq!(clean["status"], "ok");
    assert_eq!(
        text(&clean, "message"),
        "1 page checked, no http:// subresources"
    );
    d.assert_exit_follows_findings(2);

    // --max-pages bounds the crawl: the start page only.
    let d = doctor(&config, &["--site", "www.test", "--max-pages", "1"]).await;
    assert_eq!(
        d.of(Some("www.test"), "mixed-content").len(),
        1,
        "{:#}",
        d.json
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_hsts_and_the_acme_path() {
    let origin = PageOrigin::start().await;
    let ca = TestCa::new("Doctor Web CA");
    let o = format!("origin: 'http://{}'", origin.addr);
    let acme_route =
        format!("routes: [{{path: /.well-known/acme-challenge/, plain_http: serve, {o}}}]");
    let b = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["secure.test"],
            &format!("hsts: {{max_age: 1d}}, respond: {{body: hi}}, {acme_route}"),
        )
        .tls_site(&ca, &["nohsts.test"], "respond: {body: hi}")
        .tls_site(
            &ca,
            &["served.test"],
            "plain_http: serve, respond: {body: hi}",
        )
        .tls_site(
            &ca,
            &["redirecting.test"],
            &format!("plain_http: serve, {o}"),
        );
    let (gw, config, _dir) = gateway(b, true).await;
    let port = gw.https.port();

    let d = doctor(&config, &[]).await;

    let redirect = d.finding("secure.test", "http", "http://secure.test/");
    assert_eq!(redirect["status"], "ok", "{redirect:#}");
    assert_eq!(
        text(&redirect, "message"),
        format!("redirects to HTTPS (308 to https://secure.test:{port}/)")
    );
    let hsts = d.finding("secure.test", "http", "https://secure.test/");
    assert_eq!(hsts["status"], "ok", "{hsts:#}");
    assert_eq!(
        text(&hsts, "message"),
        "Strict-Transport-Security: max-age=86400"
    );
    let acme = d.finding(
        "secure.test",
        "http",
        "http://secure.test/.well-known/acme-challenge/",
    );
    assert_eq!(acme["status"], "ok", "{acme:#}");
    assert!(
        text(&acme, "message")
            .starts_with("not redirected: GET /.well-known/acme-challenge/portcullis-doctor-")
            && text(&acme, "message").ends_with("answered 404 over plain HTTP"),
        "{acme:#}"
    );

    let no_hsts = d.finding("nohsts.test", "http", "https://nohsts.test/");
    assert_eq!(no_hsts["status"], "warn", "{no_hsts:#}");
    assert!(text(&no_hsts, "fix").contains("hsts: true"), "{no_hsts:#}");
    // Redirected by the gateway with everything else: only an ACME client outside the
    // gateway would mind, and the finding says what it needs.
    let acme = d.finding(
        "nohsts.test",
        "http",
        "http://nohsts.test/.well-known/acme-challenge/",
    );
    assert_eq!(acme["status"], "ok", "{acme:#}");
    assert!(
        text(&acme, "message").starts_with(&format!(
            "redirected to HTTPS with every other path (308 to https://nohsts.test:{port}/"
        )),
        "{acme:#}"
    );
    // Served over plain HTTP, and the origin redirects the challenge path elsewhere.
    let acme = d.finding(
        "redirecting.test",
        "http",
        "http://redirecting.test/.well-known/acme-challenge/",
    );
    assert_eq!(acme["status"], "warn", "{acme:#}");
    assert!(
        text(&acme, "message").contains(
            "is redirected by the origin (301 to https://www.redirecting.test/.well-known/"
        ),
        "{acme:#}"
    );
    assert!(text(&acme, "fix").contains("plain_http: serve"), "{acme:#}");
    // The origin's HSTS header: fine over HTTPS, out of place over plain HTTP.
    let sts = d.finding("redirecting.test", "http", "https://redirecting.test/");
    assert_eq!(sts["status"], "ok", "{sts:#}");
    assert_eq!(
        text(&sts, "message"),
        "Strict-Transport-Security: max-age=60 (sent by the origin)"
    );
    let plain: Vec<Value> = d
        .of(Some("redirecting.test"), "http")
        .into_iter()
        .filter(|f| f["subject"] == "http://redirecting.test/")
        .collect();
    assert_eq!(plain.len(), 2, "{plain:#?}");
    assert_eq!(plain[0]["status"], "ok", "{plain:#?}");
    assert_eq!(plain[1]["status"], "warn", "{plain:#?}");
    assert!(
        text(&plain[1], "message")
            .starts_with("the plain HTTP answer carries Strict-Transport-Security (max-age=60)"),
        "{plain:#?}"
    );

    let served = d.finding("served.test", "http", "http://served.test/");
    assert_eq!(served["status"], "ok", "{served:#}");
    assert_eq!(
        text(&served, "message"),
        "served over plain HTTP by design (plain_http: serve), answered 200"
    );
    d.assert_exit_follows_findings(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plain_listener_is_a_warning_and_a_stopped_gateway_is_said_once() {
    let ca = TestCa::new("Doctor Web CA");
    let b = GatewayBuilder::new().tls_site(&ca, &["a.test", "b.test"], "hsts: true, respond: {}");
    let (gw, config, _dir) = gateway(b, false).await;

    let d = doctor(&config, &[]).await;
    let off = d.finding("a.test", "http", "listen.http");
    assert_eq!(off["status"], "warn", "{off:#}");
    assert!(
        text(&off, "message")
            .starts_with("no plain HTTP listener: http:// links and typed addresses fail"),
        "{off:#}"
    );
    assert!(text(&off, "fix").contains("listen.http"), "{off:#}");
    for host in ["a.test", "b.test"] {
        let hsts = d.finding("a.test", "http", &format!("https://{host}/"));
        assert_eq!(hsts["status"], "ok", "{hsts:#}");
    }
    d.assert_exit_follows_findings(1);

    // The same config with the gateway stopped: one failure per listener and check.
    let https = gw.https;
    assert!(gw.stop().await);
    let d = doctor(&config, &[]).await;
    let http = d.of(Some("a.test"), "http");
    let refused: Vec<&Value> = http.iter().filter(|f| f["status"] == "fail").collect();
    assert_eq!(refused.len(), 1, "{:#}", d.json);
    assert_eq!(refused[0]["subject"], https.to_string());
    assert_eq!(
        text(refused[0], "message"),
        format!("nothing answers on {https}: is the gateway running?")
    );
    let mixed = d.finding("a.test", "mixed-content", &https.to_string());
    assert_eq!(mixed["status"], "fail", "{mixed:#}");
    d.assert_exit_follows_findings(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_configured_but_not_sent_fails() {
    let ca = TestCa::new("Doctor Web CA");
    let b = GatewayBuilder::new().tls_site(&ca, &["old.test"], "respond: {}");
    let (_gw, config, dir) = gateway(b, true).await;
    // The doctor reads a config with `hsts` the running gateway has not loaded.
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    yaml["sites"][0]["hsts"] = serde_yaml::Value::Bool(true);
    let newer = dir.dir().join("newer.yaml");
    std::fs::write(&newer, serde_yaml::to_string(&yaml).unwrap()).unwrap();

    let d = doctor(&newer, &[]).await;
    let hsts = d.finding("old.test", "http", "https://old.test/");
    assert_eq!(hsts["status"], "fail", "{hsts:#}");
    assert!(
        text(&hsts, "message").starts_with(
            "hsts is configured (max-age=31536000) but https://old.test/ answered 200 without \
             Strict-Transport-Security"
        ),
        "{hsts:#}"
    );
    d.assert_exit_follows_findings(2);
}
