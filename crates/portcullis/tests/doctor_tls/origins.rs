//! `origin`: which modes each origin server answers in, against the configured one.

use portcullis_tests::{GatewayBuilder, TestCa, TestOrigin, closed_port};

use crate::{doctor, finding, parts, redirecting_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_origin_is_probed_in_every_mode_and_compared_with_its_configured_one() {
    let ca = TestCa::new("Doctor Origin CA");
    let plain = TestOrigin::http().await;
    let self_signed = TestOrigin::https(&TestCa::self_signed(&["127.0.0.1"]), &["http/1.1"]).await;
    let wrong_name =
        TestOrigin::https(&ca.leaf(&["app.internal", "api.internal"]), &["http/1.1"]).await;
    let good = TestOrigin::https(&ca.leaf(&["127.0.0.1"]), &["http/1.1"]).await;
    let client = ca.client_leaf("puller");
    let pulls = TestOrigin::https_requiring_client_cert(
        &ca.leaf(&["127.0.0.1"]),
        &["http/1.1"],
        &ca.root_der,
    )
    .await;
    let looping = redirecting_server("https://loop.test/").await;
    let refused = closed_port().await;

    let b = GatewayBuilder::new();
    let root = ca.write_root(b.dir(), "origin-ca");
    let (client_cert, client_key) = client.write(b.dir(), "puller");
    let site = |b: GatewayBuilder, name: &str, origin: String| {
        b.tls_site(
            &ca,
            &[&format!("{name}.test")],
            &format!("name: {name}, origin: {origin}"),
        )
    };
    let b = site(
        b,
        "plain",
        format!("{{url: 'https://{}', mode: full}}", plain.addr),
    );
    let b = site(b, "selfsigned", format!("'https://{}'", self_signed.addr));
    let b = site(b, "wrongname", format!("'https://{}'", wrong_name.addr));
    let b = site(
        b,
        "good",
        format!("{{url: 'https://{}', ca: '{}'}}", good.addr, root.display()),
    );
    let b = site(
        b,
        "weak",
        format!("{{url: 'https://{}', mode: full}}", good.addr),
    );
    let b = site(b, "loop", format!("'http://{looping}'"));
    let b = site(b, "refused", format!("'http://127.0.0.1:{refused}'"));
    let b = site(
        b,
        "nopull",
        format!("{{url: 'https://{}', mode: full}}", pulls.addr),
    );
    let b = site(
        b,
        "pull",
        format!(
            "{{url: 'https://{}', ca: '{}', client_cert: {{cert: '{}', key: '{}'}}}}",
            pulls.addr,
            root.display(),
            client_cert.display(),
            client_key.display()
        ),
    );
    let config = b.write_config();
    let (code, r) = doctor(&config, &[("SSL_CERT_FILE", &root)]).await;
    assert_eq!(code, 2, "{r:#}");

    let (status, msg, fix) = parts(finding(&r, "plain", "origin", "configured `full`"));
    assert_eq!(status, "fail");
    assert!(msg.contains("`flexible` works"), "{msg}");
    assert!(msg.contains("plain HTTP, not TLS"), "{msg}");
    assert!(fix.contains(&format!("http://{}", plain.addr)), "{fix}");
    assert_eq!(
        finding(&r, "plain", "origin", "configured")["subject"],
        format!("https://{}", plain.addr)
    );

    let (status, msg, fix) = parts(finding(&r, "selfsigned", "origin", "configured `strict`"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("strict: unknown CA: the certificate is self-signed"),
        "{msg}"
    );
    assert!(msg.contains("`full` works"), "{msg}");
    assert!(fix.contains("mode: full"), "{fix}");

    let (status, msg, _) = parts(finding(&r, "wrongname", "origin", "configured `strict`"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains(
            "name mismatch: the certificate is for app.internal, api.internal, not `127.0.0.1`"
        ),
        "{msg}"
    );

    let (status, msg, _) = parts(finding(&r, "good", "origin", "`strict` works"));
    assert_eq!(status, "ok");
    assert!(msg.contains("verified against the origin's `ca`"), "{msg}");

    let (status, msg, fix) = parts(finding(&r, "weak", "origin", "but `strict` works"));
    assert_eq!(status, "warn");
    assert!(
        msg.contains("verified against the system's trust store"),
        "{msg}"
    );
    assert!(fix.contains("mode: strict"), "{fix}");

    let (status, msg, fix) = parts(finding(&r, "loop", "origin", "redirect loop"));
    assert_eq!(status, "fail");
    assert!(
        msg.contains("the origin redirects to HTTPS") && msg.contains("https://loop.test/"),
        "{msg}"
    );
    assert!(
        fix.contains("full") && fix.contains("strict") && fix.contains("HTTPS redirect"),
        "{fix}"
    );

    let (status, msg, _) = parts(finding(&r, "refused", "origin", "cannot be reached"));
    assert_eq!(status, "fail");
    assert!(msg.contains("connection refused"), "{msg}");

    let (status, msg, fix) = parts(finding(&r, "nopull", "origin", "configured `full`"));
    assert_eq!(status, "fail");
    assert!(msg.contains("wants a client certificate"), "{msg}");
    assert!(msg.contains("certificate_required"), "{msg}");
    assert!(fix.contains("client_cert"), "{fix}");
    let (status, msg, _) = parts(finding(&r, "pull", "origin", "`strict` works"));
    assert_eq!(status, "ok");
    assert!(msg.contains("client certificate"), "{msg}");
}
