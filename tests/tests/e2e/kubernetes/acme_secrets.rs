//! ACME into a Secret: the gateway's ACME manager gets a certificate from pebble, the
//! controller's driver stores it in the Ingress's Secret in the fake API server, and a
//! second replica seeded from that Secret serves it without ordering again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use portcullis_k8s::{AcmeSecrets, IssuedCertificate, ObjectKey, read_certificate};
use portcullis_tests::wait::until;
use portcullis_tests::{FakeApiServer, GatewayBuilder, Pebble, PebbleOptions, TestClient, logs};
use portcullis_tls::CertInfo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;

const SITE: &str = "k8s-acme-secret";

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_pebble_issues_lands_in_the_secret_and_seeds_another_replica() {
    let api = FakeApiServer::start().await;
    let mut pebble = Pebble::new(PebbleOptions::default());
    let build = |pebble: &Pebble, storage: &std::path::Path| {
        GatewayBuilder::new()
            .set("acme", &pebble.acme_yaml(""))
            .set("storage", &format!("'{}'", storage.display()))
            .site(&format!(
                "{{name: {SITE}, hosts: [secret.test], tls: acme, respond: {{body: ok}}}}"
            ))
    };
    let first_storage = tempfile::tempdir().unwrap();
    let gw = build(&pebble, first_storage.path()).start().await;
    let manager = gw.acme.clone().expect("an ACME manager");

    // The controller's side: leader, the site → Secret map, the issued stream forwarded.
    let (_lead, lead_rx) = watch::channel(true);
    let (driver, handle) = AcmeSecrets::new(api.client().await, lead_rx);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(driver.run(stop_rx));
    let secret = ObjectKey {
        namespace: "default".into(),
        name: "secret-tls".into(),
    };
    handle.set_targets(BTreeMap::from([(SITE.to_owned(), secret.clone())]));
    let forward = {
        let handle = handle.clone();
        let issued = manager.subscribe_issued();
        tokio::spawn(async move {
            handle
                .forward(issued, |i: portcullis_acme::Issued| IssuedCertificate {
                    site: i.site,
                    hosts: i.names,
                    chain_pem: i.chain_pem,
                    key_pem: i.key_pem,
                })
                .await;
        })
    };

    pebble.start(gw.http.unwrap().port(), gw.https.port()).await;
    let stored = until(
        Duration::from_secs(40),
        "the certificate in the Secret",
        || async { read_certificate(&api.get::<Secret>("default", "secret-tls")?) },
    )
    .await;
    let leaf = CertificateDer::from_pem_slice(stored.0.as_bytes()).unwrap();
    let info = CertInfo::parse(&leaf).unwrap();
    assert_eq!(info.names, ["secret.test"]);
    // It is what the gateway serves, and pebble's issuing root verifies it.
    let root = CertificateDer::from_pem_slice(pebble.issuing_root().await.as_bytes()).unwrap();
    let served = until(
        Duration::from_secs(10),
        "the certificate served",
        || async {
            let conn = TestClient::new(gw.https, &root)
                .connect("secret.test", &["http/1.1"])
                .await
                .ok()?;
            Some(conn.peer_leaf)
        },
    )
    .await;
    assert_eq!(served, leaf);
    let s: Secret = api.get("default", "secret-tls").unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        s.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "portcullis"
    );
    stop.send_replace(true);
    task.await.unwrap();
    forward.abort();

    // Another replica (its own, empty storage) takes over: seeded from the Secret before
    // its manager loads the site, it serves that certificate and orders nothing.
    let second_storage = tempfile::tempdir().unwrap();
    let directory = pebble.directory();
    let seeded = portcullis_acme::Storage::new(second_storage.path(), &directory)
        .seed_cert(SITE, &stored.0, &stored.1)
        .unwrap();
    assert!(seeded);
    let gw2 = build(&pebble, second_storage.path()).start().await;
    let mut conn = gw2
        .client(&root)
        .connect("secret.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(conn.peer_leaf, leaf);
    assert_eq!(conn.get("secret.test", "/").await.text(), "ok");
    let manager2 = gw2.acme.clone().unwrap();
    // Its first renewal check (an account is made, the renewal window asked) ends without
    // an order.
    until(
        Duration::from_secs(15),
        "the second manager's first check",
        || async {
            let status = manager2.storage().load_status(SITE)?;
            status.next_attempt.map(|_| status)
        },
    )
    .await;
    assert_eq!(manager2.stats().orders_succeeded.load(Ordering::Relaxed), 0);
    assert_eq!(manager2.stats().orders_failed.load(Ordering::Relaxed), 0);
    assert!(manager2.waiting().is_empty(), "{:?}", manager2.waiting());
    let orders = logs::lines_with(&["ordering a certificate", &format!("site={SITE} ")]);
    assert_eq!(orders.len(), 1, "{orders:#?}");
    gw2.stop().await;
    gw.stop().await;
}
