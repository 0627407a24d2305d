//! ACME against pebble, beyond first issuance: HTTP-01, renewal under an open connection,
//! restarts with stored certificates, badNonce storms, CA outages, External Account Binding,
//! and the local fallback with readiness.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use portcullis_tests::{
    GatewayBuilder, Pebble, PebbleOptions, TestClient, TestGateway, logs, wait,
};
use portcullis_tls::CertInfo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn pebble_root(pebble: &Pebble) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pebble.issuing_root().await.as_bytes()).unwrap()
}

/// Waits until a verified handshake for `name` (trusting `root`) gives a leaf accepted by
/// `accept`; returns that leaf's serial.
async fn wait_for_cert(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    name: &str,
    limit: Duration,
    accept: impl Fn(&CertInfo) -> bool,
) -> String {
    let client = TestClient::new(addr, root);
    wait::until(limit, &format!("a certificate for {name}"), || {
        let client = client.clone();
        let info = async move {
            let conn = client.connect(name, &["http/1.1"]).await.ok()?;
            CertInfo::parse(&conn.peer_leaf).ok()
        };
        let accept = &accept;
        async move { info.await.filter(|i| accept(i)).map(|i| i.serial) }
    })
    .await
}

/// The serial of whatever leaf `name` gets, without verifying it.
async fn served_serial(gw: &TestGateway, name: &str) -> String {
    let tls = insecure_tls(gw.https, name).await;
    let (_, session) = tls.get_ref();
    CertInfo::parse(&session.peer_certificates().unwrap()[0])
        .unwrap()
        .serial
}

async fn insecure_tls(
    addr: SocketAddr,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_issues_a_certificate_through_the_plain_listener() {
    let mut pebble = Pebble::new(PebbleOptions::default());
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml("challenge: http-01"))
        .site("{name: h01, hosts: [h01.test], tls: acme, respond: {body: h01}}")
        .start()
        .await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = pebble_root(&pebble).await;
    wait_for_cert(gw.https, &root, "h01.test", Duration::from_secs(30), |_| {
        true
    })
    .await;
    let issued = logs::wait_for(Duration::from_secs(5), &["certificate issued", "site=h01"]).await;
    assert!(issued.contains("Http01"), "{issued}");
    assert_eq!(gw.client(&root).get("h01.test", "/").await.text(), "h01");

    // The answer is withdrawn once the order is done: the challenge path on a configured host
    // is redirected like any other path.
    let mut tcp = tokio::net::TcpStream::connect(gw.http.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /.well-known/acme-challenge/anything HTTP/1.1\r\nHost: h01.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_swaps_the_certificate_under_an_open_connection() {
    let mut pebble = Pebble::new(PebbleOptions {
        validity_secs: Some(24),
        ..Default::default()
    });
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        // The connection idles across the renewal; HTTP/1.1 idle time counts against the
        // header read timeout (10 s by default).
        .set("limits", "{header_read_timeout: 60s}")
        .site("{name: renew, hosts: [renew.test], tls: acme, respond: {body: renew}}")
        .start()
        .await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = pebble_root(&pebble).await;
    let first = wait_for_cert(
        gw.https,
        &root,
        "renew.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;

    let client = gw.client(&root);
    let mut open = client.connect("renew.test", &["http/1.1"]).await.unwrap();
    assert_eq!(CertInfo::parse(&open.peer_leaf).unwrap().serial, first);
    assert_eq!(open.get("renew.test", "/").await.text(), "renew");

    // Renewal is due when a third of the 24 s lifetime remains.
    let second = wait_for_cert(
        gw.https,
        &root,
        "renew.test",
        Duration::from_secs(30),
        |i| i.serial != first,
    )
    .await;
    assert_ne!(first, second);
    // The connection made on the first certificate still works after the swap.
    for _ in 0..3 {
        assert_eq!(open.get("renew.test", "/").await.text(), "renew");
    }
    assert!(
        gw.acme
            .as_ref()
            .unwrap()
            .stats()
            .orders_succeeded
            .load(Ordering::Relaxed)
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_serves_stored_certificates_without_ordering() {
    let mut pebble = Pebble::new(PebbleOptions::default());
    let state = tempfile::tempdir().unwrap();
    let build = |pebble: &Pebble| {
        GatewayBuilder::new()
            .set("acme", &pebble.acme_yaml(""))
            .set("storage", &format!("'{}'", state.path().display()))
            .site("{name: keep, hosts: [keep.test], tls: acme, respond: {body: keep}}")
    };
    let gw = build(&pebble).start().await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = pebble_root(&pebble).await;
    let serial = wait_for_cert(
        gw.https,
        &root,
        "keep.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    assert!(gw.stop().await);
    let orders_before = logs::lines_with(&["ordering a certificate", "site=keep"]).len();
    let directory = pebble.directory();
    let accounts = || logs::lines_with(&["created ACME account", &directory]).len();
    assert_eq!(accounts(), 1);

    let gw = build(&pebble).start().await;
    // Served at once: the very first handshake gets the stored certificate.
    assert_eq!(served_serial(&gw, "keep.test").await, serial);
    logs::wait_for(
        Duration::from_secs(5),
        &["serving the stored ACME certificate", "site=keep"],
    )
    .await;
    // Give the manager time to run its first check; it must not order.
    let manager = gw.acme.clone().unwrap();
    wait::until(Duration::from_secs(10), "the first renewal check", || {
        let path = state.path().to_owned();
        async move {
            let s = portcullis_acme::Storage::new(&path, &pebble_directory(&path));
            s.load_status("keep")
                .and_then(|st| st.next_attempt)
                .filter(|t| *t > portcullis_acme::unix(std::time::SystemTime::now()) + 86_400)
        }
    })
    .await;
    assert_eq!(manager.stats().orders_succeeded.load(Ordering::Relaxed), 0);
    // The stored account was reused, not created again.
    assert_eq!(accounts(), 1);
    assert_eq!(
        logs::lines_with(&["ordering a certificate", "site=keep"]).len(),
        orders_before
    );
}

/// The directory URL recorded in a storage folder (one directory per test here).
fn pebble_directory(state: &std::path::Path) -> String {
    let entry = std::fs::read_dir(state.join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let key = entry.file_name().into_string().unwrap();
    // `127.0.0.1_PORT_dir` back to the URL Storage keys it from.
    let mut parts = key.splitn(3, '_');
    let (host, port, path) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    format!("https://{host}:{port}/{path}")
}

#[tokio::test(flavor = "multi_thread")]
async fn issuance_survives_pebble_rejecting_30_percent_of_nonces() {
    let mut pebble = Pebble::new(PebbleOptions {
        nonce_reject_percent: 30,
        ..Default::default()
    });
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site("{name: nonce, hosts: [nonce.test, www.nonce.test], tls: acme, respond: {}}")
        .start()
        .await;
    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = pebble_root(&pebble).await;
    wait_for_cert(
        gw.https,
        &root,
        "www.nonce.test",
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    assert!(
        pebble.log().contains("badNonce") || pebble.log().contains("nonce"),
        "pebble should have rejected some nonces"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_outage_keeps_the_old_certificate_until_renewal_succeeds() {
    let mut pebble = Pebble::new(PebbleOptions {
        validity_secs: Some(30),
        ..Default::default()
    });
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site("{name: outage, hosts: [outage.test], tls: acme, respond: {}}")
        .start()
        .await;
    let (http, https) = (gw.http.unwrap().port(), gw.https.port());
    pebble.start(http, https).await;
    let root = pebble_root(&pebble).await;
    let first = wait_for_cert(
        gw.https,
        &root,
        "outage.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    pebble.stop();

    // Renewal comes due (~20 s) and fails; the log shows the backoff, the old one is served.
    let failure = logs::wait_for(
        Duration::from_secs(30),
        &["ACME failed; backing off", "site=outage", "serving=true"],
    )
    .await;
    assert!(failure.contains("retry_in_s="), "{failure}");
    assert_eq!(served_serial(&gw, "outage.test").await, first);

    // Back up (a new pebble that knows no account): renewal succeeds.
    pebble.start(http, https).await;
    let root = pebble_root(&pebble).await;
    let second = wait_for_cert(
        gw.https,
        &root,
        "outage.test",
        Duration::from_secs(30),
        |i| i.serial != first,
    )
    .await;
    assert_ne!(first, second);
}

const EAB_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
const WRONG_KEY: &str = "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH";

#[tokio::test(flavor = "multi_thread")]
async fn external_account_binding_right_key_works_wrong_key_is_refused() {
    let mut pebble = Pebble::new(PebbleOptions {
        eab_keys: vec![("kid-1".into(), EAB_KEY.into())],
        ..Default::default()
    });
    let good = GatewayBuilder::new()
        .set(
            "acme",
            &pebble.acme_yaml(&format!("eab: {{kid: kid-1, hmac_key: {EAB_KEY}}}")),
        )
        .site("{name: eab-good, hosts: [eab-good.test], tls: acme, respond: {}}")
        .start()
        .await;
    pebble
        .start(good.http.unwrap().port(), good.https.port())
        .await;
    let root = pebble_root(&pebble).await;
    wait_for_cert(
        good.https,
        &root,
        "eab-good.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;

    // pebble validates against the first gateway's ports only; the second never gets that far.
    let bad = GatewayBuilder::new()
        .set(
            "acme",
            &pebble.acme_yaml(&format!("eab: {{kid: kid-1, hmac_key: {WRONG_KEY}}}")),
        )
        .site("{name: eab-bad, hosts: [eab-bad.test], tls: acme, respond: {}}")
        .start()
        .await;
    let line = logs::wait_for(
        Duration::from_secs(20),
        &["ACME failed", "site=eab-bad", "step=account"],
    )
    .await;
    assert!(line.contains("External Account Binding"), "{line}");
    let (status, body) = admin_get(bad.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("site eab-bad: waiting for its ACME certificate (no certificate yet)"),
        "{body}"
    );
    assert!(body.contains("External Account Binding"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_fallback_serves_until_the_acme_certificate_arrives() {
    let mut pebble = Pebble::new(PebbleOptions::default());
    let gw = GatewayBuilder::new()
        .set("acme", &pebble.acme_yaml(""))
        .site(
            "{name: fb, hosts: [fb.test], tls: {acme: true, fallback: local}, respond: {body: fb}}",
        )
        .start()
        .await;
    // Before the CA is reachable: the local CA's certificate, ready but waiting.
    let local = gw.local_ca_root();
    assert_eq!(gw.client(&local).get("fb.test", "/").await.text(), "fb");
    let (status, body) = admin_get(gw.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("site fb: waiting for its ACME certificate (serving the local fallback)"),
        "{body}"
    );

    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let root = pebble_root(&pebble).await;
    wait_for_cert(gw.https, &root, "fb.test", Duration::from_secs(30), |_| {
        true
    })
    .await;
    let (status, body) = admin_get(gw.admin.unwrap(), "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}
