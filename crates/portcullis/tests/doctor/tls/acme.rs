//! `acme`: order state, directory and challenge path of a `tls: acme` site against pebble.

use std::time::{Duration, SystemTime};

use portcullis_acme::{SiteStatus, Storage, unix};
use portcullis_tests::{
    GatewayBuilder, Pebble, PebbleOptions, TestCa, TestOrigin, closed_port, ports, wait,
};

use super::{doctor, finding, parts, redirecting_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_answers_and_the_challenge_path_reaches_the_gateway() {
    let mut pebble = Pebble::new(PebbleOptions::default());
    let b = GatewayBuilder::new();
    let storage = b.dir().join("state");
    let https = ports::stable_port();
    let b = b
        .set(
            "listen",
            &format!("{{https: '{https}', http: '{}'}}", ports::stable_port()),
        )
        .set("storage", &format!("'{}'", storage.display()))
        .set("acme", &pebble.acme_yaml("challenge: http-01"))
        .site("{name: shop, hosts: [shop.test], tls: acme, respond: {body: shop}}");
    let gw = b.start().await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let store = Storage::new(&storage, &pebble.directory());
    wait::until(Duration::from_secs(30), "the certificate", || {
        let found = store.load_cert("shop").ok().flatten().is_some();
        async move { found.then_some(()) }
    })
    .await;

    let (code, r) = doctor(&gw.config_path, &[]).await;
    assert!(code >= 1, "{r:#}");
    let (status, _, _) = parts(finding(&r, "shop", "acme", "ACME directory answers"));
    assert_eq!(status, "ok");
    assert_eq!(
        finding(&r, "shop", "acme", "ACME directory")["subject"],
        pebble.directory()
    );
    let f = finding(&r, "shop", "acme", "challenge path");
    let (status, msg, _) = parts(f.clone());
    assert_eq!(status, "ok", "{f:#}");
    assert!(msg.contains("reaches the gateway"), "{msg}");
    assert!(
        f["subject"]
            .as_str()
            .unwrap()
            .starts_with("http://shop.test/.well-known/acme-challenge/"),
        "{f:#}"
    );
    let (status, msg, _) = parts(finding(&r, "shop", "acme", "is stored"));
    assert_eq!(status, "ok");
    assert!(
        msg.contains("shop.test") && msg.contains("last issued"),
        "{msg}"
    );
    drop(gw);

    // The same site with nothing answering on the plain listener's port: HTTP-01 fails.
    let closed = closed_port().await;
    let off = GatewayBuilder::new()
        .set(
            "listen",
            &format!("{{https: '{https}', http: '127.0.0.1:{closed}'}}"),
        )
        .set("storage", &format!("'{}'", storage.display()))
        .set("acme", &pebble.acme_yaml("challenge: http-01"))
        .site("{name: shop, hosts: [shop.test], tls: acme, respond: {body: shop}}");
    let config = off.write_config();
    let (code, r) = doctor(&config, &[]).await;
    assert_eq!(code, 2, "{r:#}");
    let (status, msg, fix) = parts(finding(&r, "shop", "acme", "challenge path"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("does not answer") && msg.contains("connection refused"),
        "{msg}"
    );
    assert!(fix.contains("port 80"), "{fix}");
    // The directory still answers.
    assert_eq!(
        finding(&r, "shop", "acme", "ACME directory")["status"],
        "ok"
    );

    // Another web server holds the plain port and redirects everything elsewhere.
    let other = redirecting_server("https://www.elsewhere.test/").await;
    let taken = GatewayBuilder::new()
        .set("listen", &format!("{{https: '{https}', http: '{other}'}}"))
        .set("storage", &format!("'{}'", storage.display()))
        .set("acme", &pebble.acme_yaml("challenge: http-01"))
        .site("{name: shop, hosts: [shop.test], tls: acme, respond: {body: shop}}");
    let config = taken.write_config();
    let (code, r) = doctor(&config, &[]).await;
    assert_eq!(code, 2, "{r:#}");
    let (status, msg, _) = parts(finding(&r, "shop", "acme", "challenge path"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("something other than this gateway")
            && msg.contains("https://www.elsewhere.test/"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_is_answered_by_the_gateway_and_not_by_another_tls_server() {
    let mut pebble = Pebble::new(PebbleOptions::default());
    let https = ports::stable_port();
    let b = GatewayBuilder::new()
        .set(
            "listen",
            &format!("{{https: '{https}', http: '{}'}}", ports::stable_port()),
        )
        .set("acme", &pebble.acme_yaml(""))
        .site("{name: shop, hosts: [shop.test], tls: acme, respond: {body: shop}}");
    let gw = b.start().await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let (_, r) = doctor(&gw.config_path, &[]).await;
    let (status, msg, _) = parts(finding(&r, "shop", "acme", "TLS-ALPN-01"));
    assert_eq!(status, "ok", "{msg}");
    assert!(msg.contains("acme-tls/1"), "{msg}");
    // HTTP-01, the fallback, is checked too.
    assert_eq!(
        finding(&r, "shop", "acme", "challenge path")["status"],
        "ok"
    );

    // Another TLS server holds the HTTPS port (a TLS-terminating proxy in front): the CA's
    // acme-tls/1 handshake never reaches the gateway.
    let other = TestOrigin::https(&TestCa::new("Proxy CA").leaf(&["shop.test"]), &[]).await;
    let proxied = GatewayBuilder::new()
        .set("listen", &format!("{{https: '{}', http: off}}", other.addr))
        .set("acme", &pebble.acme_yaml(""))
        .site("{name: shop, hosts: [shop.test], tls: acme, respond: {body: shop}}");
    let config = proxied.write_config();
    let (code, r) = doctor(&config, &[]).await;
    assert_eq!(code, 2, "{r:#}");
    let (status, msg, fix) = parts(finding(&r, "shop", "acme", "TLS-ALPN-01"));
    assert_eq!(status, "fail");
    assert!(msg.contains("without acme-tls/1"), "{msg}");
    assert!(fix.contains("http-01"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_and_an_unreachable_directory_are_reported() {
    let closed = closed_port().await;
    let directory = format!("https://127.0.0.1:{closed}/dir");
    let b = GatewayBuilder::new();
    let storage = b.dir().join("state");
    Storage::new(&storage, &directory).save_status(
        "shop",
        &SiteStatus {
            names: vec!["shop.test".into()],
            next_attempt: Some(unix(SystemTime::now() + Duration::from_secs(600))),
            last_error: Some("new-order step failed: rateLimited: too many certificates".into()),
            failures: 3,
            last_success: None,
        },
    );
    let b = b
        .set(
            "listen",
            &format!(
                "{{https: '{}', http: '{}'}}",
                ports::stable_port(),
                ports::stable_port()
            ),
        )
        .set("storage", &format!("'{}'", storage.display()))
        .set("acme", &format!("{{directory: '{directory}'}}"))
        .site("{name: shop, hosts: [shop.test], tls: acme, respond: {}}");
    let config = b.write_config();
    let (code, r) = doctor(&config, &[]).await;
    assert_eq!(code, 2, "{r:#}");
    let (status, msg, _) = parts(finding(&r, "shop", "acme", "the last order failed"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("rateLimited: too many certificates")
            && msg.contains("3 failure(s)")
            && msg.contains("next attempt"),
        "{msg}"
    );
    let f = finding(&r, "shop", "acme", "ACME directory");
    let (status, msg, fix) = parts(f.clone());
    assert_eq!(status, "fail");
    assert!(msg.contains("connection refused"), "{msg}");
    assert!(fix.contains("acme.directory"), "{fix}");
    assert_eq!(f["subject"], directory);
}
