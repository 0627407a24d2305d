//! `portcullis ingress` writing to the API server: the leader publishes Ingress status and
//! posts Events, hands over to the other replica when it stops, and stores the certificate
//! pebble issues for an ACME Ingress in its Secret.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use portcullis::IngressArgs;
use portcullis_k8s::read_certificate;
use portcullis_tests::wait::until;
use portcullis_tests::{Pebble, PebbleOptions, TestClient};
use portcullis_tls::CertInfo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ingress::{Cluster, ingress};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: IngressArgs,
}

/// A running `portcullis ingress` from `base` (YAML) and `extra` flags.
struct Running {
    https: SocketAddr,
    http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<bool>>,
}

impl Running {
    async fn start(cluster: &Cluster, name: &str, base: &str, extra: &[&str]) -> Self {
        let dir = cluster.dir.path();
        let kubeconfig = cluster.api.write_kubeconfig(dir);
        let base_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&base_path, base).unwrap();
        let mut argv: Vec<String> = [
            "ingress",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--config",
            &base_path.display().to_string(),
            "--namespace",
            "default",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let args = Cli::try_parse_from(argv).unwrap().args;
        let ingress = portcullis::Ingress::start(args).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let https = ingress.https_addr();
        let http = ingress.http_addr().unwrap();
        let task = tokio::spawn(ingress.run(async {
            let _ = stopped.await;
        }));
        Self {
            https,
            http,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

fn base(cluster: &Cluster, name: &str, extra: &str) -> String {
    format!(
        "listen: {{https: 127.0.0.1:0, http: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\n\
         tls: {{local_ca_dir: {dir}/{name}-ca}}\nstorage: {dir}/{name}-storage\n{extra}",
        dir = cluster.dir.path().display()
    )
}

fn status(cluster: &Cluster, name: &str) -> Value {
    let i: Ingress = cluster.api.get("default", name).unwrap();
    json!(
        i.status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_writes_status_and_events_and_hands_over_when_it_stops() {
    let cluster = Cluster::new().await;
    cluster.service("default", "shop", 9, &[("127.0.0.1", true)]);
    cluster.api.create(&ingress(
        "default",
        "shop",
        "shop.writers.test",
        None,
        &[("/", "Prefix", "shop")],
    ));
    // A path to a Service that does not exist: a problem, so an Event.
    cluster.api.create(&ingress(
        "default",
        "broken",
        "broken.writers.test",
        None,
        &[("/", "Prefix", "missing")],
    ));

    let a = Running::start(
        &cluster,
        "a",
        &base(&cluster, "a", ""),
        &["--publish-address", "203.0.113.5"],
    )
    .await;
    until(Duration::from_secs(15), "pod A's status", || async {
        (status(&cluster, "shop") == json!([{"ip": "203.0.113.5"}])).then_some(())
    })
    .await;
    let event = until(Duration::from_secs(10), "a Warning Event", || async {
        cluster
            .api
            .list::<Event>("default")
            .into_iter()
            .find(|e| e.involved_object.name.as_deref() == Some("broken"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("TranslationProblem"));
    let first_holder = cluster
        .api
        .get::<Lease>("default", "portcullis-leader")
        .and_then(|l| l.spec?.holder_identity)
        .unwrap();

    // A second replica follows: it serves but writes nothing.
    let b = Running::start(
        &cluster,
        "b",
        &base(&cluster, "b", ""),
        &["--publish-address", "lb.b.writers.test"],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&cluster, "shop"), json!([{"ip": "203.0.113.5"}]));

    // A stops: it clears the status and releases the Lease; B takes over and writes its own.
    a.stop().await;
    assert_eq!(
        cluster
            .api
            .get::<Lease>("default", "portcullis-leader")
            .and_then(|l| l.spec?.holder_identity),
        None,
        "released"
    );
    until(Duration::from_secs(10), "pod B's status", || async {
        (status(&cluster, "shop") == json!([{"hostname": "lb.b.writers.test"}])).then_some(())
    })
    .await;
    let holder = cluster
        .api
        .get::<Lease>("default", "portcullis-leader")
        .and_then(|l| l.spec?.holder_identity)
        .unwrap();
    assert_ne!(holder, first_holder);
    b.stop().await;
    assert_eq!(status(&cluster, "shop"), json!(null), "cleared at shutdown");
    assert_made_and_allowed(&cluster, &["watch", "create", "update", "patch"]);
}

/// The controllers made calls of each of `verbs` (so the check below has something to
/// hold), and the deployed RBAC rules allow every call they made (the test's own set-up
/// goes through the fake's in-process helpers, which are not recorded).
fn assert_made_and_allowed(cluster: &Cluster, verbs: &[&str]) {
    let calls = cluster.api.calls();
    for verb in verbs {
        assert!(
            calls.iter().any(|c| c.verb == *verb),
            "no {verb} call was made: {calls:?}"
        );
    }
    super::rbac::assert_deployed_rbac_allows(&calls, "default");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acme_ingress_gets_its_certificate_from_pebble_into_its_secret() {
    let cluster = Cluster::new().await;
    let mut pebble = Pebble::new(PebbleOptions::default());
    cluster.service("default", "shop", 9, &[("127.0.0.1", true)]);
    let mut ing = ingress(
        "default",
        "shop",
        "k8s.acme.test",
        Some("shop-acme-tls"),
        &[("/", "Prefix", "shop")],
    );
    ing.metadata.annotations = Some([("portcullis.dev/acme".to_owned(), "true".to_owned())].into());
    // A second name routed alike in the same tls entry: one order covers both, and the one
    // Secret holds that certificate.
    let spec = ing.spec.as_mut().unwrap();
    let mut www = spec.rules.as_ref().unwrap()[0].clone();
    www.host = Some("www.k8s.acme.test".into());
    spec.rules.as_mut().unwrap().push(www);
    spec.tls.as_mut().unwrap()[0]
        .hosts
        .as_mut()
        .unwrap()
        .push("www.k8s.acme.test".into());
    cluster.api.create(&ing);

    let c = Running::start(
        &cluster,
        "acme",
        &base(
            &cluster,
            "acme",
            &format!("acme: {}\n", pebble.acme_yaml("")),
        ),
        &[],
    )
    .await;
    pebble.start(c.http.port(), c.https.port()).await;
    let (chain, _key) = until(
        Duration::from_secs(60),
        "the certificate in the Secret",
        || async { read_certificate(&cluster.api.get::<Secret>("default", "shop-acme-tls")?) },
    )
    .await;
    let leaf = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
    let mut names = CertInfo::parse(&leaf).unwrap().names;
    names.sort();
    assert_eq!(names, ["k8s.acme.test", "www.k8s.acme.test"]);
    let s: Secret = cluster.api.get("default", "shop-acme-tls").unwrap();
    assert_eq!(
        s.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "portcullis"
    );
    // What is served is what was stored, and pebble's root verifies it.
    let root = CertificateDer::from_pem_slice(pebble.issuing_root().await.as_bytes()).unwrap();
    let served = until(
        Duration::from_secs(10),
        "the certificate served",
        || async {
            let conn = TestClient::new(c.https, &root)
                .connect("k8s.acme.test", &["http/1.1"])
                .await
                .ok()?;
            Some(conn.peer_leaf)
        },
    )
    .await;
    assert_eq!(served, leaf);
    until(
        Duration::from_secs(10),
        "a CertificateIssued Event",
        || async {
            cluster
                .api
                .list::<Event>("default")
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("CertificateIssued"))
        },
    )
    .await;
    c.stop().await;
    assert_made_and_allowed(&cluster, &["watch", "create"]);
    assert!(
        cluster
            .api
            .calls()
            .iter()
            .any(|c| c.resource == "secrets"
                && matches!(c.verb.as_str(), "create" | "update" | "patch")),
        "the Secret was written by the controller"
    );
}
