//! Certificates chosen by SNI: exact names, wildcards, the default site, unknown names.

use portcullis_tests::{GatewayBuilder, TestCa, alert_received};
use portcullis_tls::CertInfo;

fn names(der: &rustls_pki_types::CertificateDer<'_>) -> Vec<String> {
    CertInfo::parse(der).unwrap().names
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_and_refuses_unknown_names() {
    let ca = TestCa::new("sni test CA");
    let gw = GatewayBuilder::new()
        .tls_site(&ca, &["alpha.test"], "respond: {body: alpha}")
        .tls_site(&ca, &["*.beta.test"], "respond: {body: wild}")
        .tls_site(&ca, &["www.beta.test"], "respond: {body: exact}")
        .tls_site(&ca, &["gamma.test"], "respond: {body: gamma}")
        .start()
        .await;
    let client = gw.client(&ca.root_der);

    for (sni, expected_names, body) in [
        ("alpha.test", vec!["alpha.test"], "alpha"),
        ("gamma.test", vec!["gamma.test"], "gamma"),
        ("api.beta.test", vec!["*.beta.test"], "wild"),
        ("www.beta.test", vec!["www.beta.test"], "exact"),
    ] {
        let mut conn = client.connect(sni, &["h2", "http/1.1"]).await.unwrap();
        assert_eq!(
            names(&conn.peer_leaf),
            expected_names,
            "certificate for {sni}"
        );
        let resp = conn.get(sni, "/").await;
        assert_eq!(resp.text(), body, "site for {sni}");
    }

    // One label deep only, and unknown names are refused with unrecognized_name.
    for sni in ["a.b.beta.test", "unknown.test"] {
        let err = client.tls(sni, true, &["http/1.1"]).await.unwrap_err();
        assert_eq!(
            alert_received(&err),
            Some(rustls::AlertDescription::UnrecognisedName),
            "{sni}: expected unrecognized_name, got {err:?}"
        );
    }

    // No SNI and no default site: refused.
    let err = client
        .tls("alpha.test", false, &["http/1.1"])
        .await
        .unwrap_err();
    assert_eq!(
        alert_received(&err),
        Some(rustls::AlertDescription::UnrecognisedName),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_default_site_answers_no_sni_and_unknown_sni() {
    let ca = TestCa::new("default test CA");
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["main.test", "127.0.0.1"],
            "respond: {body: main}, default: true",
        )
        .tls_site(&ca, &["other.test"], "respond: {body: other}")
        .start()
        .await;
    let client = gw.client(&ca.root_der);

    // A client dialing the IP sends no SNI.
    let mut conn = client
        .connect_no_sni("main.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(names(&conn.peer_leaf), ["main.test", "127.0.0.1"]);
    assert_eq!(conn.get("127.0.0.1", "/").await.text(), "main");

    // An unknown SNI gets the default site's certificate (so this client, verifying the
    // name it asked for, rejects it) rather than the unrecognized_name alert.
    let err = client
        .tls("unknown.test", true, &["http/1.1"])
        .await
        .unwrap_err();
    let cause = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(cause, Some(rustls::Error::InvalidCertificate(_))),
        "expected the default certificate, got {err:?}"
    );
    // Requests for hosts no site claims are served by the default site.
    let mut conn = client.connect_no_sni("main.test", &["h2"]).await.unwrap();
    assert!(conn.is_h2());
    assert_eq!(conn.get("anything.example", "/").await.text(), "main");

    // The other site still gets its own certificate.
    let conn = client.connect("other.test", &["http/1.1"]).await.unwrap();
    assert_eq!(names(&conn.peer_leaf), ["other.test"]);
}

#[tokio::test]
async fn one_site_certificate_swaps_without_touching_others_or_open_connections() {
    let ca = TestCa::new("swap test CA");
    let gw = GatewayBuilder::new()
        .tls_site(&ca, &["a.test"], "respond: {body: a}")
        .tls_site(&ca, &["b.test"], "respond: {body: b}")
        .start()
        .await;
    let client = gw.client(&ca.root_der);
    let mut open = client.connect("a.test", &["http/1.1"]).await.unwrap();
    let old_serial = CertInfo::parse(&open.peer_leaf).unwrap().serial;
    let b_before = client
        .connect("b.test", &["http/1.1"])
        .await
        .unwrap()
        .peer_leaf;

    let fresh = ca.leaf(&["a.test"]);
    let key =
        portcullis_tls::certified_key(vec![fresh.cert_der.clone()], fresh.key_der.clone_key())
            .unwrap();
    assert!(gw.gateway.certs().set_certificate("a.test", key));

    // The open connection keeps working; new handshakes see the new certificate.
    assert_eq!(open.get("a.test", "/").await.text(), "a");
    let again = client.connect("a.test", &["http/1.1"]).await.unwrap();
    let new_serial = CertInfo::parse(&again.peer_leaf).unwrap().serial;
    assert_ne!(old_serial, new_serial);
    assert_eq!(again.peer_leaf, fresh.cert_der);
    let b_after = client
        .connect("b.test", &["http/1.1"])
        .await
        .unwrap()
        .peer_leaf;
    assert_eq!(b_before, b_after);
}
