//! ACME against pebble: issuance through the gateway's own listeners, renewal, restarts,
//! badNonce, CA outages and External Account Binding.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use portcullis_tests::{GatewayBuilder, Pebble, PebbleOptions, TestClient, logs, wait};
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
