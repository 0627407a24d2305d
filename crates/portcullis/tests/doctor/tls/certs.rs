//! `certificate`: what a running gateway serves by SNI, and the files when it is stopped.

use std::time::{Duration, SystemTime};

use portcullis_tests::{GatewayBuilder, TestCa, TestGateway, ports};

use super::{doctor, finding, findings, parts};

const DAY: Duration = Duration::from_secs(86_400);

/// A site named `name` for `host` whose `cert` file holds `chain_pem` and `key` its key.
fn site(
    b: GatewayBuilder,
    name: &str,
    host: &str,
    chain_pem: &str,
    key_pem: &str,
) -> GatewayBuilder {
    let cert = b.dir().join(format!("{name}.pem"));
    let key = b.dir().join(format!("{name}.key"));
    std::fs::write(&cert, chain_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let yaml = format!(
        "{{name: {name}, hosts: ['{host}'], tls: {{cert: '{}', key: '{}'}}, respond: {{body: hi}}}}",
        cert.display(),
        key.display()
    );
    b.site(&yaml)
}

/// Every broken certificate of the brief, one site each, plus a good one.
fn broken_sites(ca: &TestCa) -> GatewayBuilder {
    let now = SystemTime::now();
    let inter = ca.intermediate("Doctor Intermediate CA");
    let b = GatewayBuilder::new().set(
        "listen",
        &format!(
            "{{https: '{}', http: '{}'}}",
            ports::stable_port(),
            ports::stable_port()
        ),
    );
    let good = inter.leaf(&["good.test"]);
    let b = site(
        b,
        "good",
        "good.test",
        &format!("{}{}", good.cert_pem, inter.root_pem),
        &good.key_pem,
    );
    let expired = ca.leaf_valid(&["expired.test"], now - 90 * DAY, now - 2 * DAY);
    let b = site(
        b,
        "expired",
        "expired.test",
        &expired.cert_pem,
        &expired.key_pem,
    );
    let future = ca.leaf_valid(&["future.test"], now + 3 * DAY, now + 90 * DAY);
    let b = site(
        b,
        "future",
        "future.test",
        &future.cert_pem,
        &future.key_pem,
    );
    let soon = ca.leaf_valid(&["soon.test"], now - 80 * DAY, now + 5 * DAY + DAY / 2);
    let b = site(b, "soon", "soon.test", &soon.cert_pem, &soon.key_pem);
    let wrong = ca.leaf(&["other.test", "www.other.test"]);
    let b = site(b, "wrong", "wrong.test", &wrong.cert_pem, &wrong.key_pem);
    let missing = inter.leaf(&["missing.test"]);
    let b = site(
        b,
        "missing",
        "missing.test",
        &missing.cert_pem,
        &missing.key_pem,
    );
    // Leaf, then the root, then the intermediate that signs the leaf.
    let unordered = inter.leaf(&["order.test"]);
    let b = site(
        b,
        "order",
        "order.test",
        &format!("{}{}{}", unordered.cert_pem, ca.root_pem, inter.root_pem),
        &unordered.key_pem,
    );
    let selfie = TestCa::self_signed(&["selfie.test"]);
    site(
        b,
        "selfie",
        "selfie.test",
        &selfie.cert_pem,
        &selfie.key_pem,
    )
}

/// Sites with several hosts: a wildcard probed with a name it covers, and a certificate
/// covering only one of two hosts.
fn multi_host_sites(ca: &TestCa, b: GatewayBuilder) -> GatewayBuilder {
    let wild = ca.leaf(&["*.wild.test"]);
    let (cert, key) = wild.write(b.dir(), "wild");
    let b = b.site(&format!(
        "{{name: wild, hosts: ['*.wild.test'], tls: {{cert: '{}', key: '{}'}}, respond: {{}}}}",
        cert.display(),
        key.display()
    ));
    let half = ca.leaf(&["multi.test"]);
    let (cert, key) = half.write(b.dir(), "multi");
    b.site(&format!(
        "{{name: multi, hosts: [multi.test, www.multi.test], tls: {{cert: '{}', key: '{}'}}, respond: {{}}}}",
        cert.display(),
        key.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_chain_is_judged_by_sni_expiry_names_order_and_completeness() {
    let ca = TestCa::new("Doctor Root CA");
    let b = multi_host_sites(&ca, broken_sites(&ca))
        .site("{name: dev, hosts: [dev.test], tls: local, respond: {}}");
    let root = ca.write_root(b.dir(), "trusted-root");
    let gw: TestGateway = b.start().await;
    let (code, report) = doctor(&gw.config_path, &[("SSL_CERT_FILE", &root)]).await;
    assert_eq!(code, 2, "{report:#}");
    let r = &report;

    // The good site: everything ok, the chain verifies to the root through what was sent.
    let good = findings(r, "good", "certificate");
    assert!(
        good.iter().all(|f| f["status"] == "ok"),
        "{}",
        serde_json::to_string_pretty(&good).unwrap()
    );
    let (_, msg, _) = parts(finding(r, "good", "certificate", "chain: verifies"));
    assert!(msg.contains("Doctor Root CA"), "{msg}");
    let (_, msg, _) = parts(finding(r, "good", "certificate", "valid until"));
    assert!(msg.contains("days left"), "{msg}");
    let (_, msg, _) = parts(finding(r, "good", "certificate", "key:"));
    assert!(msg.contains("handshake completed"), "{msg}");
    assert_eq!(
        finding(r, "good", "certificate", "valid until")["subject"],
        "good.test"
    );

    let (status, msg, fix) = parts(finding(r, "expired", "certificate", "expired on"));
    assert_eq!(status, "fail");
    assert!(msg.contains("2 days ago"), "{msg}");
    assert!(
        fix.contains("expired.pem") && fix.contains("reload"),
        "{fix}"
    );

    let (status, msg, fix) = parts(finding(r, "future", "certificate", "not valid yet"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("in 2 days") || msg.contains("in 3 days"),
        "{msg}"
    );
    assert!(fix.contains("clock"), "{fix}");

    let (status, msg, _) = parts(finding(r, "soon", "certificate", "expires on"));
    assert_eq!(status, "warn");
    assert!(msg.contains("in 5 days"), "{msg}");

    let (status, msg, fix) = parts(finding(r, "wrong", "certificate", "names:"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("does not cover wrong.test") && msg.contains("other.test, www.other.test"),
        "{msg}"
    );
    assert!(
        fix.contains("wrong.test") && fix.contains("wrong.pem"),
        "{fix}"
    );

    let (status, msg, fix) = parts(finding(r, "missing", "certificate", "chain:"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("ends at missing.test issued by Doctor Intermediate CA, which is not sent"),
        "{msg}"
    );
    assert!(msg.contains("curl, Android, Go"), "{msg}");
    assert!(fix.contains("fullchain.pem"), "{fix}");

    let (status, msg, fix) = parts(finding(r, "order", "certificate", "out of order"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("certificate 2 (Doctor Root CA) does not sign certificate 1 (order.test)")
            && msg.contains("certificate 3 does"),
        "{msg}"
    );
    assert!(fix.contains("leaf first"), "{fix}");
    // The chain still verifies: a client sorts it out; the order is what is wrong.
    assert_eq!(finding(r, "order", "certificate", "chain:")["status"], "ok");

    let (status, msg, _) = parts(finding(r, "selfie", "certificate", "chain:"));
    assert_eq!(status, "fail");
    assert!(msg.contains("self-signed"), "{msg}");

    // A local-CA leaf lives a week and is re-issued daily: no warning; its chain verifies
    // to the local CA's root, trusted because the config uses it.
    let (status, msg, _) = parts(finding(r, "dev", "certificate", "valid until"));
    assert_eq!(status, "ok", "{msg}");
    let (status, msg, _) = parts(finding(r, "dev", "certificate", "chain:"));
    assert_eq!(status, "ok", "{msg}");
    assert!(msg.contains("Portcullis Local CA"), "{msg}");

    // A wildcard host is probed with a name it covers.
    let (status, msg, _) = parts(finding(r, "wild", "certificate", "names:"));
    assert_eq!(status, "ok");
    assert!(msg.contains("covers *.wild.test"), "{msg}");
    assert_eq!(
        finding(r, "wild", "certificate", "names:")["subject"],
        "portcullis-doctor.wild.test"
    );
    // Each host is judged on its own name; the chain, the same for both, once.
    let multi = findings(r, "multi", "certificate");
    let names: Vec<(&str, &str)> = multi
        .iter()
        .filter(|f| f["message"].as_str().unwrap().starts_with("names:"))
        .map(|f| {
            (
                f["subject"].as_str().unwrap(),
                f["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("multi.test", "ok"), ("www.multi.test", "fail")]);
    let validity = multi
        .iter()
        .filter(|f| f["message"].as_str().unwrap().contains("valid until"))
        .count();
    assert_eq!(validity, 1, "{multi:#?}");

    // Without the test root trusted, the good chain ends at an untrusted root.
    let (_, report) = doctor(&gw.config_path, &[]).await;
    let (status, msg, _) = parts(finding(&report, "good", "certificate", "chain:"));
    assert_eq!(status, "fail");
    assert!(msg.contains("Doctor Root CA"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gateway_stopped_the_files_are_checked_and_other_sites_skipped() {
    let ca = TestCa::new("Doctor Root CA");
    let b = broken_sites(&ca);
    // A key that belongs to another certificate: only a stopped gateway can be given it.
    let one = ca.leaf(&["mismatch.test"]);
    let other = ca.leaf(&["mismatch.test"]);
    let b = site(
        b,
        "mismatch",
        "mismatch.test",
        &one.cert_pem,
        &other.key_pem,
    )
    .site("{name: dev, hosts: [dev.test], tls: local, respond: {}}");
    let root = ca.write_root(b.dir(), "trusted-root");
    let config = b.write_config();
    let (code, r) = doctor(&config, &[("SSL_CERT_FILE", &root)]).await;
    assert_eq!(code, 2, "{r:#}");

    for f in findings(&r, "expired", "certificate") {
        assert!(
            f["message"]
                .as_str()
                .unwrap()
                .starts_with("the gateway is not running"),
            "{f:#}"
        );
        assert!(f["message"].as_str().unwrap().contains("checked the files"));
    }
    assert_eq!(
        finding(&r, "expired", "certificate", "expired on")["status"],
        "fail"
    );
    let (status, msg, _) = parts(finding(&r, "missing", "certificate", "chain:"));
    assert_eq!(status, "fail");
    assert!(msg.contains("which is not sent"), "{msg}");
    assert_eq!(finding(&r, "good", "certificate", "chain:")["status"], "ok");
    assert_eq!(
        finding(&r, "good", "certificate", "belongs to the certificate")["status"],
        "ok"
    );
    let (status, msg, _) = parts(finding(&r, "mismatch", "certificate", "does not fit"));
    assert_eq!(status, "fail");
    assert!(msg.contains("mismatch.key"), "{msg}");
    let (status, msg, _) = parts(finding(&r, "dev", "certificate", "not running"));
    assert_eq!(status, "ok");
    assert!(msg.contains("not checked"), "{msg}");
}
