//! Start-up and every later change go through one path (`Controller::apply`, start-up being
//! a change from the empty state): a site whose certificate source changes serves the same
//! after a reload, after `apply` with a parsed config, and after a fresh start.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "the test writes its config and certificate files between steps"
)]

use std::path::Path;
use std::time::Duration;

use portcullis::App;
use portcullis_proxy::Gateway;
use portcullis_tests::{Leaf, TestCa};
use portcullis_tls::CertInfo;

/// The site's certificate source, step by step: from the local CA to files, to ACME with the
/// local fallback (the CA is unreachable, so the fallback serves), and back.
const STEPS: [&str; 5] = [
    "local",
    "FILES",
    "{acme: true, fallback: local}",
    "local",
    "FILES",
];

fn yaml(dir: &Path, tls: &str) -> String {
    let files = format!(
        "{{cert: '{}', key: '{}'}}",
        dir.join("s.pem").display(),
        dir.join("s.key").display()
    );
    let tls = tls.replace("FILES", &files);
    format!(
        "listen: {{https: '127.0.0.1:0', http: '127.0.0.1:0'}}\n\
         admin: {{listen: 'off'}}\n\
         tls: {{local_ca_dir: '{ca}'}}\n\
         storage: '{state}'\n\
         acme: {{directory: 'https://acme.invalid/directory'}}\n\
         sites:\n\
         \x20 - {{name: s, hosts: ['s.test'], tls: {tls}, respond: {{body: s}}}}\n\
         \x20 - {{name: other, hosts: ['other.test'], tls: local, respond: {{body: o}}}}\n",
        ca = dir.join("ca").display(),
        state = dir.join("state").display(),
    )
}

/// What each host's handshake is served, and which sites have nothing to serve.
fn served(gateway: &Gateway, file: &Leaf) -> Vec<String> {
    let store = gateway.certs();
    let mut out: Vec<String> = ["s.test", "other.test"]
        .iter()
        .map(|host| match store.resolve(Some(host)) {
            None => format!("{host}: nothing"),
            Some(ck) if ck.cert[0] == file.cert_der => format!("{host}: the file's certificate"),
            Some(ck) => {
                let info = CertInfo::parse(&ck.cert[0]).unwrap();
                format!("{host}: issued by {} for {:?}", info.issuer, info.names)
            }
        })
        .collect();
    out.push(format!("missing: {:?}", store.missing()));
    out
}

async fn stop(app: App) {
    tokio::time::timeout(Duration::from_secs(10), app.run(async {}))
        .await
        .expect("the gateway stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_certificate_source_serves_the_same_after_a_reload_an_apply_and_a_start() {
    portcullis_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let file = TestCa::new("one path CA").leaf(&["s.test"]);
    file.write(dir, "s");

    let reloaded_path = dir.join("reloaded.yaml");
    std::fs::write(&reloaded_path, yaml(dir, STEPS[0])).unwrap();
    let reloaded = App::start_from_file(&reloaded_path).await.unwrap();
    let applied = App::start(portcullis_config::parse(&yaml(dir, STEPS[0]), dir).unwrap())
        .await
        .unwrap();

    for tls in STEPS {
        std::fs::write(&reloaded_path, yaml(dir, tls)).unwrap();
        reloaded
            .controller()
            .reload()
            .await
            .unwrap_or_else(|p| panic!("{tls}: reload refused: {p:?}"));
        let config = portcullis_config::parse(&yaml(dir, tls), dir).unwrap();
        applied
            .controller()
            .apply(config)
            .await
            .unwrap_or_else(|e| panic!("{tls}: apply refused: {:?}", e.problems()));
        let fresh_path = dir.join("fresh.yaml");
        std::fs::write(&fresh_path, yaml(dir, tls)).unwrap();
        let fresh = App::start_from_file(&fresh_path).await.unwrap();

        let started = served(fresh.gateway(), &file);
        let want_s = if tls == "FILES" {
            "s.test: the file's certificate"
        } else {
            "s.test: issued by"
        };
        assert!(started[0].starts_with(want_s), "{tls}: {started:?}");
        assert_eq!(served(reloaded.gateway(), &file), started, "{tls}: reload");
        assert_eq!(served(applied.gateway(), &file), started, "{tls}: apply");
        stop(fresh).await;
    }
    stop(reloaded).await;
    stop(applied).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_change_leaves_everything_as_it_was() {
    portcullis_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let file = TestCa::new("one path CA").leaf(&["s.test"]);
    file.write(dir, "s");
    let app = App::start(portcullis_config::parse(&yaml(dir, "local"), dir).unwrap())
        .await
        .unwrap();
    let before = served(app.gateway(), &file);
    let s_before = app.gateway().certs().certificate("s").unwrap();

    // Files whose key does not match: the certificate loads, the key is refused.
    let other = TestCa::new("another CA").leaf(&["s.test"]);
    std::fs::write(dir.join("s.key"), &other.key_pem).unwrap();
    let config = portcullis_config::parse(&yaml(dir, "FILES"), dir).unwrap();
    let problems = app.controller().apply(config).await.unwrap_err().problems();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["sites[0].tls.key"], "{problems:?}");
    assert_eq!(served(app.gateway(), &file), before);
    let s_after = app.gateway().certs().certificate("s").unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&s_before, &s_after),
        "the local certificate was re-issued"
    );
    stop(app).await;
}
