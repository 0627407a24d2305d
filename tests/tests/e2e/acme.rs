//! ACME against pebble: issuance through the gateway's own listeners, renewal, restarts,
//! badNonce, CA outages and External Account Binding.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use portcullis_tests::plain::{self, PlainResponse};
use portcullis_tests::{GatewayBuilder, Pebble, PebbleOptions, TestClient, logs, wait};
use portcullis_tls::CertInfo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Waits until a handshake for `name`, trusting only pebble's issuing root, succeeds; returns
/// the served leaf.
async fn wait_for_verified_cert(
    addr: std::net::SocketAddr,
    pebble: &Pebble,
    name: &str,
) -> CertificateDer<'static> {
    let root = CertificateDer::from_pem_slice(pebble.issuing_root().await.as_bytes()).unwrap();
    let client = TestClient::new(addr, &root);
    wait::until(
        Duration::from_secs(30),
        &format!("a certificate for {name}"),
        || {
            let client = client.clone();
            async move {
                let conn = client.connect(name, &["http/1.1"]).await.ok()?;
                Some(conn.peer_leaf)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_issues_a_certificate_through_the_gateway() {
    let mut pebble = Pebble::new(PebbleOptions::default());
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site("{hosts: [alpn.test, www.alpn.test], tls: acme, respond: {body: alpn}}")
        .start()
        .await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let leaf = wait_for_verified_cert(gw.https, &pebble, "www.alpn.test").await;
    let info = portcullis_tls::CertInfo::parse(&leaf).unwrap();
    assert_eq!(info.names, ["alpn.test", "www.alpn.test"]);
    logs::wait_for(
        Duration::from_secs(5),
        &["certificate issued", "alpn.test", "TlsAlpn01"],
    )
    .await;
}

/// pebble's issuing root for this run (a new one at every pebble start).
async fn issuing_root(pebble: &Pebble) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pebble.issuing_root().await.as_bytes()).unwrap()
}

fn serial(leaf: &CertificateDer<'_>) -> String {
    CertInfo::parse(leaf).unwrap().serial
}

/// The `site=` field of a log line, with the separator so `site=a` does not match `site=ab`.
fn site_field(site: &str) -> String {
    format!("site={site} ")
}

/// Captured log lines with `message` for `site`.
fn site_lines(message: &str, site: &str) -> Vec<String> {
    logs::lines_with(&[message, &site_field(site)])
}

/// Waits for a log line with `message` for `site`.
async fn wait_for_site_line(limit: Duration, message: &str, site: &str) -> String {
    logs::wait_for(limit, &[message, &site_field(site)]).await
}

/// Waits until a verified handshake for `name` (trusting only `root`) presents a leaf whose
/// serial `accept` takes; returns that serial.
async fn wait_for_serial(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    name: &str,
    limit: Duration,
    accept: impl Fn(&str) -> bool,
) -> String {
    let client = TestClient::new(addr, root);
    let accept = &accept;
    wait::until(
        limit,
        &format!("an accepted certificate for {name}"),
        || {
            let client = client.clone();
            async move {
                let conn = client.connect(name, &["http/1.1"]).await.ok()?;
                Some(serial(&conn.peer_leaf)).filter(|s| accept(s))
            }
        },
    )
    .await
}

/// `/readyz` on the admin listener: status and body.
async fn readyz(admin: SocketAddr) -> (u16, String) {
    let resp = plain::get(admin, "localhost", "/readyz").await;
    (resp.status, resp.body().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_issues_a_certificate_through_the_plain_listener() {
    let site = "e2e-http01";
    let mut pebble = Pebble::new(PebbleOptions::default());
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml("challenge: http-01"))
        .site(&format!(
            "{{name: {site}, hosts: [h01.test, www.h01.test], tls: acme, respond: {{body: h01}}}}"
        ))
        .start()
        .await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = issuing_root(&pebble).await;
    wait_for_serial(
        gw.https,
        &root,
        "www.h01.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;

    let issued = wait_for_site_line(Duration::from_secs(5), "certificate issued", site).await;
    assert!(issued.contains("challenge=Http01"), "{issued}");
    // The verified connection reaches the site, and the certificate covers both names.
    let mut conn = gw
        .client(&root)
        .connect("h01.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        CertInfo::parse(&conn.peer_leaf).unwrap().names,
        ["h01.test", "www.h01.test"]
    );
    assert_eq!(conn.get("h01.test", "/").await.text(), "h01");
    // pebble really validated over HTTP, on the plain listener's port.
    let log = pebble.log();
    let fetched = format!(":{}/.well-known/acme-challenge/", gw.http.unwrap().port());
    assert!(
        log.contains("Attempting to validate w/ HTTP") && log.contains(&fetched),
        "{log}"
    );
}

/// The HTTP-01 tokens pebble fetched, from its log ("Attempting to validate w/ HTTP: URL").
fn validated_tokens(pebble_log: &str) -> Vec<String> {
    const PATH: &str = "/.well-known/acme-challenge/";
    let mut tokens: Vec<String> = pebble_log
        .lines()
        .filter_map(|l| l.split_once(PATH))
        .map(|(_, rest)| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .collect();
    tokens.sort();
    tokens.dedup();
    tokens
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_answers_are_withdrawn_once_the_order_is_done() {
    let site = "e2e-withdrawn";
    let mut pebble = Pebble::new(PebbleOptions::default());
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml("challenge: http-01"))
        .site(&format!(
            "{{name: {site}, hosts: [gone.test], tls: acme, respond: {{body: gone}}}}"
        ))
        .start()
        .await;
    let http = gw.http.unwrap();
    pebble.start(http.port(), gw.https.port()).await;
    let root = issuing_root(&pebble).await;
    wait_for_serial(
        gw.https,
        &root,
        "gone.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    wait_for_site_line(Duration::from_secs(5), "certificate issued", site).await;

    // pebble fetched these paths and got the key authorization (validation succeeded). Now
    // the same paths get what any other path gets: a redirect for a site's host, 404 for
    // an unknown host, never the answer.
    let log = pebble.log();
    let tokens = validated_tokens(&log);
    assert!(
        !tokens.is_empty(),
        "no HTTP-01 validation in pebble's log:\n{log}"
    );
    for token in &tokens {
        let path = format!("/.well-known/acme-challenge/{token}");
        let PlainResponse { status, text } = plain::get(http, "gone.test", &path).await;
        assert_eq!(status, 308, "{text}");
        assert!(!text.contains(&format!("{token}.")), "{text}");
        let PlainResponse { status, text } = plain::get(http, "unclaimed.test", &path).await;
        assert_eq!(status, 404, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_swaps_the_certificate_under_an_open_keep_alive_connection() {
    let site = "e2e-renewal";
    let mut pebble = Pebble::new(PebbleOptions {
        validity_secs: Some(24),
        ..Default::default()
    });
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site(&format!(
            "{{name: {site}, hosts: [renew.test], tls: acme, respond: {{body: renew}}}}"
        ))
        .start()
        .await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = issuing_root(&pebble).await;
    let first = wait_for_serial(
        gw.https,
        &root,
        "renew.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;

    let client = gw.client(&root);
    let mut open = client.connect("renew.test", &["http/1.1"]).await.unwrap();
    assert!(!open.is_h2());
    assert_eq!(serial(&open.peer_leaf), first);
    assert_eq!(open.get("renew.test", "/").await.text(), "renew");

    // Renewal is due when a third of the 24 s lifetime remains. Meanwhile the open
    // connection keeps being used (about every 250 ms), so it never sits idle long enough
    // for the server's header-read timeout to end it.
    let open = tokio::sync::Mutex::new((open, tokio::time::Instant::now(), 1u32));
    let open = &open;
    let first_ref = first.as_str();
    let client = &client;
    let second = wait::until(
        Duration::from_secs(40),
        "a renewed certificate on a fresh handshake",
        move || async move {
            let mut state = open.lock().await;
            let (conn, last, sent) = &mut *state;
            if last.elapsed() >= Duration::from_millis(250) {
                assert_eq!(conn.get("renew.test", "/").await.text(), "renew");
                *last = tokio::time::Instant::now();
                *sent += 1;
            }
            if site_lines("certificate issued", site).len() < 2 {
                return None;
            }
            let fresh = client.connect("renew.test", &["http/1.1"]).await.ok()?;
            Some(serial(&fresh.peer_leaf)).filter(|s| s != first_ref)
        },
    )
    .await;
    assert_ne!(second, first);

    // The connection made on the first certificate still works after the swap.
    let mut state = open.lock().await;
    let (conn, _, sent) = &mut *state;
    assert_eq!(serial(&conn.peer_leaf), first);
    for _ in 0..5 {
        assert_eq!(conn.get("renew.test", "/").await.text(), "renew");
    }
    assert!(*sent >= 3, "only {sent} requests before the swap");
    let stats = gw.acme.as_ref().unwrap().stats();
    assert!(stats.orders_succeeded.load(Ordering::Relaxed) >= 2);
    let renewing = site_lines("ordering a certificate", site);
    assert!(
        renewing.iter().any(|l| l.contains("renewing=true")),
        "{renewing:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_serves_the_stored_certificate_without_ordering() {
    let site = "e2e-restart";
    let mut pebble = Pebble::new(PebbleOptions::default());
    let state = tempfile::tempdir().unwrap();
    let build = |pebble: &Pebble| {
        GatewayBuilder::new()
            .set("acme", &pebble.acme_yaml(""))
            .set("storage", &format!("'{}'", state.path().display()))
            .site(&format!(
                "{{name: {site}, hosts: [keep.test], tls: acme, respond: {{body: keep}}}}"
            ))
    };
    let gw = build(&pebble).start().await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = issuing_root(&pebble).await;
    let issued = wait_for_serial(
        gw.https,
        &root,
        "keep.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    let status_file = gw
        .acme
        .as_ref()
        .unwrap()
        .storage()
        .root()
        .join("sites")
        .join(site)
        .join("status.json");
    gw.stop().await;
    let orders_before = site_lines("ordering a certificate", site).len();
    assert_eq!(orders_before, 1);
    // Every status write replaces the file (a new inode): how the restarted manager's first
    // renewal check shows, whatever it decides.
    let first_run_inode = std::fs::metadata(&status_file).unwrap().ino();

    let gw = build(&pebble).start().await;
    // The very first handshake gets the stored certificate, verified.
    let mut conn = gw
        .client(&root)
        .connect("keep.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(serial(&conn.peer_leaf), issued);
    assert_eq!(conn.get("keep.test", "/").await.text(), "keep");

    // Once the new manager has run its first check, it has not ordered and has not failed.
    let manager = gw.acme.clone().unwrap();
    wait::until(
        Duration::from_secs(10),
        "the restarted manager's first renewal check",
        || {
            let status_file = &status_file;
            async move {
                let now = std::fs::metadata(status_file).ok()?.ino();
                (now != first_run_inode).then_some(())
            }
        },
    )
    .await;
    let status = manager.storage().load_status(site).unwrap();
    assert_eq!((status.failures, status.last_error), (0, None));
    let next = status.next_attempt.unwrap();
    assert!(next > portcullis_acme::unix(SystemTime::now()), "{next}");
    assert_eq!(manager.stats().orders_succeeded.load(Ordering::Relaxed), 0);
    assert_eq!(manager.stats().orders_failed.load(Ordering::Relaxed), 0);
    assert_eq!(
        site_lines("ordering a certificate", site).len(),
        orders_before,
        "the restarted gateway ordered although its stored certificate is good"
    );
    assert!(manager.waiting().is_empty(), "{:?}", manager.waiting());
    // The account stored by the first run was reused, not created again.
    let directory = pebble.directory();
    assert_eq!(
        logs::lines_with(&["created ACME account", &directory]).len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn issuance_survives_pebble_rejecting_30_percent_of_nonces() {
    let site = "e2e-nonce";
    let mut pebble = Pebble::new(PebbleOptions {
        nonce_reject_percent: 30,
        ..Default::default()
    });
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site(&format!(
            "{{name: {site}, hosts: [nonce.test, www.nonce.test, api.nonce.test], tls: acme, respond: {{}}}}"
        ))
        .start()
        .await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = issuing_root(&pebble).await;
    wait_for_serial(
        gw.https,
        &root,
        "api.nonce.test",
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    // pebble does not log the rejections themselves; at least make sure it was told to
    // reject (the flow signs well over ten requests, so some were refused).
    let log = pebble.log();
    assert!(
        log.contains("Configured to reject 30% of good nonces"),
        "{log}"
    );
    wait_for_site_line(Duration::from_secs(5), "certificate issued", site).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_outage_keeps_the_old_certificate_until_renewal_succeeds() {
    let site = "e2e-outage";
    let mut pebble = Pebble::new(PebbleOptions {
        validity_secs: Some(30),
        ..Default::default()
    });
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site(&format!(
            "{{name: {site}, hosts: [outage.test], tls: acme, respond: {{}}}}"
        ))
        .start()
        .await;
    let (http, https) = (gw.http.unwrap().port(), gw.https.port());
    pebble.start(http, https).await;
    let old_root = issuing_root(&pebble).await;
    let first = wait_for_serial(
        gw.https,
        &old_root,
        "outage.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    pebble.stop();

    // Renewal comes due about 20 s after issuance and fails; the old certificate stays.
    // (Failures before the first issuance say `serving=false`.)
    let failed = logs::wait_for(
        Duration::from_secs(30),
        &[
            "ACME failed; backing off",
            &site_field(site),
            "serving=true",
        ],
    )
    .await;
    assert!(failed.contains("retry_in_s="), "{failed}");
    let conn = gw
        .client(&old_root)
        .connect("outage.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(serial(&conn.peer_leaf), first);

    // The CA comes back knowing no account: the manager makes a new one and renews.
    pebble.start(http, https).await;
    let new_root = issuing_root(&pebble).await;
    assert_ne!(new_root, old_root);
    let second = wait_for_serial(
        gw.https,
        &new_root,
        "outage.test",
        Duration::from_secs(30),
        |s| s != first,
    )
    .await;
    assert_ne!(second, first);
    let accounts = logs::lines_with(&["created ACME account", &pebble.directory()]);
    assert_eq!(accounts.len(), 2, "{accounts:#?}");
}

/// pebble's example EAB key (base64url).
const EAB_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
/// A well-formed key pebble does not know.
const WRONG_EAB_KEY: &str = "Qm9ndXMta2V5LWZvci10ZXN0cy1vbmx5LW5vdC1rbm93bi10by1wZWJibGUtMDAx";

#[tokio::test(flavor = "multi_thread")]
async fn external_account_binding_with_the_right_key_gets_a_certificate_and_a_wrong_one_none() {
    let (good_site, bad_site) = ("e2e-eab-good", "e2e-eab-bad");
    let mut pebble = Pebble::new(PebbleOptions {
        eab_keys: vec![("kid-1".into(), EAB_KEY.into())],
        ..Default::default()
    });
    let good = GatewayBuilder::new()
        .set(
            "acme",
            &pebble.acme_yaml(&format!("eab: {{kid: kid-1, hmac_key: {EAB_KEY}}}")),
        )
        .site(&format!(
            "{{name: {good_site}, hosts: [eab-good.test], tls: acme, respond: {{}}}}"
        ))
        .start()
        .await;
    pebble
        .start(good.http.unwrap().port(), good.https.port())
        .await;
    let root = issuing_root(&pebble).await;
    wait_for_serial(
        good.https,
        &root,
        "eab-good.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;

    // Started once pebble answers, so its failure is pebble's refusal, not an outage.
    let bad = GatewayBuilder::new()
        .set(
            "acme",
            &pebble.acme_yaml(&format!("eab: {{kid: kid-1, hmac_key: {WRONG_EAB_KEY}}}")),
        )
        .site(&format!(
            "{{name: {bad_site}, hosts: [eab-bad.test], tls: acme, respond: {{}}}}"
        ))
        .start()
        .await;
    let failed = wait_for_site_line(
        Duration::from_secs(20),
        "ACME failed; backing off",
        bad_site,
    )
    .await;
    assert!(failed.contains("step=account"), "{failed}");
    assert!(failed.contains("External Account Binding"), "{failed}");
    // pebble's refusal of the binding, not a connection problem.
    assert!(
        failed.contains("problem=\"urn:ietf:params:acme:error:unauthorized\""),
        "{failed}"
    );

    let (status, body) = readyz(bad.admin.unwrap()).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "site {bad_site}: waiting for its ACME certificate (no certificate yet)"
        )),
        "{body}"
    );
    assert!(body.contains("External Account Binding"), "{body}");
    let stats = bad.acme.as_ref().unwrap().stats();
    assert_eq!(stats.orders_succeeded.load(Ordering::Relaxed), 0);
    assert!(site_lines("certificate issued", bad_site).is_empty());
    assert!(site_lines("ordering a certificate", bad_site).is_empty());
    // Nothing is served for the name: no certificate at all, so no verified handshake.
    assert!(
        bad.client(&root)
            .connect("eab-bad.test", &["http/1.1"])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_fallback_serves_until_the_acme_certificate_arrives() {
    let site = "e2e-fallback";
    let mut pebble = Pebble::new(PebbleOptions::default());
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site(&format!(
            "{{name: {site}, hosts: [fb.test], tls: {{acme: true, fallback: local}}, respond: {{body: fb}}}}"
        ))
        .start()
        .await;
    let admin = gw.admin.unwrap();

    // Before the CA is up: the local CA's certificate, and ready while waiting.
    let local = gw.local_ca_root();
    let mut conn = gw
        .client(&local)
        .connect("fb.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(conn.get("fb.test", "/").await.text(), "fb");
    let local_serial = serial(&conn.peer_leaf);
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!(
            "site {site}: waiting for its ACME certificate (serving the local fallback)"
        )),
        "{body}"
    );

    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = issuing_root(&pebble).await;
    let acme_serial = wait_for_serial(gw.https, &root, "fb.test", Duration::from_secs(30), |_| {
        true
    })
    .await;
    assert_ne!(acme_serial, local_serial);
    assert!(
        gw.client(&local)
            .connect("fb.test", &["http/1.1"])
            .await
            .is_err(),
        "the local certificate is still served"
    );
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(site), "{body}");
}
