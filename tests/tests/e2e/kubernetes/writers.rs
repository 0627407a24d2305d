//! What the leader writes, against the fake API server: Ingress status (from an address or
//! a Service, only when different, cleared at shutdown, only while leading), Events
//! (de-duplicated), and ACME certificates in Secrets (ours updated, cert-manager's and
//! foreign ones left alone).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use portcullis_config::Problem;
use portcullis_k8s::{
    AcmeSecrets, IssuedCertificate, K8sProblem, MANAGED_BY_LABEL, NotOurs, ObjectKey,
    PublishTarget, Recorder, SecretWrite, Snapshot, StatusWriter, read_certificate,
    write_certificate,
};
use portcullis_tests::ApiCall;
use portcullis_tests::FakeApiServer;
use portcullis_tests::wait::until;
use serde_json::json;
use tokio::sync::watch;

fn from<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn ingress(name: &str) -> Ingress {
    from(json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"rules": [{"host": format!("{name}.test")}]}}))
}

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn ours(names: &[&str]) -> BTreeSet<ObjectKey> {
    names.iter().map(|n| key(n)).collect()
}

fn status_of(api: &FakeApiServer, name: &str) -> serde_json::Value {
    let i: Ingress = api.get("default", name).unwrap();
    json!(
        i.status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
    )
}

fn writes(api: &FakeApiServer, resource: &str) -> Vec<ApiCall> {
    api.calls()
        .into_iter()
        .filter(|c| {
            c.resource == resource && matches!(c.verb.as_str(), "update" | "patch" | "create")
        })
        .collect()
}

fn leader(on: bool) -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(on)
}

#[tokio::test(flavor = "multi_thread")]
async fn status_from_an_address_is_written_once_cleared_when_not_ours_and_at_shutdown() {
    let api = FakeApiServer::start().await;
    for n in ["a", "b", "c"] {
        api.create(&ingress(n));
    }
    // "c" belongs to another controller, which published its own address.
    let mut c: Ingress = api.get("default", "c").unwrap();
    c.status = Some(from(
        json!({"loadBalancer": {"ingress": [{"ip": "10.9.9.9"}]}}),
    ));
    api.replace_status(&c);

    let (_lead, lead_rx) = leader(true);
    let mut w = StatusWriter::new(
        api.client().await,
        PublishTarget::addresses("203.0.113.10"),
        lead_rx,
    );
    let before = listed(&api);
    let r = w.sync(&before, &ours(&["a", "b"])).await.unwrap();
    assert_eq!((r.written, r.unchanged, r.failed), (2, 0, 0), "{r:?}");
    assert_eq!(status_of(&api, "a"), json!([{"ip": "203.0.113.10"}]));
    assert_eq!(status_of(&api, "c"), json!([{"ip": "10.9.9.9"}]));
    let calls = writes(&api, "ingresses");
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| c.subresource.as_deref() == Some("status")),
        "{calls:?}"
    );

    // Nothing changed: no write, whether from a fresh list or one that has not yet seen
    // the writes.
    let r = w.sync(&listed(&api), &ours(&["a", "b"])).await.unwrap();
    assert_eq!((r.written, r.unchanged), (0, 2));
    let r = w.sync(&before, &ours(&["a", "b"])).await.unwrap();
    assert_eq!(r.written, 0, "{r:?}");
    assert_eq!(writes(&api, "ingresses").len(), 2);

    // A name goes in `hostname`.
    let (_lead, lead_rx) = leader(true);
    let mut w = StatusWriter::new(
        api.client().await,
        PublishTarget::addresses("lb.portcullis.test"),
        lead_rx,
    );
    let r = w.sync(&listed(&api), &ours(&["a", "b"])).await.unwrap();
    assert_eq!(r.written, 2);
    assert_eq!(
        status_of(&api, "b"),
        json!([{"hostname": "lb.portcullis.test"}])
    );

    // "b" is no longer ours: its status goes; "c"'s (another controller's) stays.
    let r = w.sync(&listed(&api), &ours(&["a"])).await.unwrap();
    assert_eq!((r.written, r.cleared), (0, 1), "{r:?}");
    assert_eq!(status_of(&api, "b"), json!(null));
    assert_eq!(status_of(&api, "c"), json!([{"ip": "10.9.9.9"}]));

    // Shutdown clears ours.
    assert_eq!(w.clear(&listed(&api), &ours(&["a"])).await, 1);
    assert_eq!(status_of(&api, "a"), json!(null));
    assert_eq!(status_of(&api, "c"), json!([{"ip": "10.9.9.9"}]));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_from_a_publish_service_follows_its_load_balancer() {
    let api = FakeApiServer::start().await;
    api.create(&ingress("shop"));
    let svc: Service = api.create(&from(
        json!({"metadata": {"name": "portcullis", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}),
    ));
    let cluster_ip = svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    let (lead, lead_rx) = leader(true);
    let mut w = StatusWriter::new(
        api.client().await,
        PublishTarget::Service(key("portcullis")),
        lead_rx,
    );
    // No load balancer address yet: the ClusterIP.
    w.sync(&listed(&api), &ours(&["shop"])).await.unwrap();
    assert_eq!(status_of(&api, "shop"), json!([{"ip": cluster_ip}]));

    // External IPs come before it.
    let mut svc: Service = api.get("default", "portcullis").unwrap();
    svc.spec.as_mut().unwrap().external_ips = Some(vec!["198.51.100.7".into()]);
    api.replace(&svc);
    w.sync(&listed(&api), &ours(&["shop"])).await.unwrap();
    assert_eq!(status_of(&api, "shop"), json!([{"ip": "198.51.100.7"}]));

    // The load balancer's own addresses come first (hostname and ip as it gives them).
    let mut svc: Service = api.get("default", "portcullis").unwrap();
    svc.status = Some(from(json!({"loadBalancer": {"ingress": [
        {"hostname": "abc.elb.test"}, {"ip": "192.0.2.44"}]}})));
    api.replace_status(&svc);
    w.sync(&listed(&api), &ours(&["shop"])).await.unwrap();
    assert_eq!(
        status_of(&api, "shop"),
        json!([{"hostname": "abc.elb.test"}, {"ip": "192.0.2.44"}])
    );
    let n = writes(&api, "ingresses").len();
    assert_eq!(n, 3);

    // A follower writes nothing, not even at shutdown.
    lead.send_replace(false);
    let mut svc: Service = api.get("default", "portcullis").unwrap();
    svc.status = Some(from(
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.45"}]}}),
    ));
    api.replace_status(&svc);
    let r = w.sync(&listed(&api), &ours(&["shop"])).await.unwrap();
    assert_eq!(r.written, 0);
    assert_eq!(w.clear(&listed(&api), &ours(&["shop"])).await, 0);
    assert_eq!(writes(&api, "ingresses").len(), n);
    // Leading again, it catches up.
    lead.send_replace(true);
    w.sync(&listed(&api), &ours(&["shop"])).await.unwrap();
    assert_eq!(status_of(&api, "shop"), json!([{"ip": "192.0.2.45"}]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_of_many_unchanged_ingresses_writes_nothing() {
    let api = FakeApiServer::start().await;
    let names: Vec<String> = (0..300).map(|i| format!("ing-{i}")).collect();
    for n in &names {
        api.create(&ingress(n));
    }
    let ours: BTreeSet<ObjectKey> = names.iter().map(|n| key(n)).collect();
    let (_lead, lead_rx) = leader(true);
    let mut w = StatusWriter::new(
        api.client().await,
        PublishTarget::addresses("192.0.2.1"),
        lead_rx,
    );
    assert_eq!(w.sync(&listed(&api), &ours).await.unwrap().written, 300);
    let before = writes(&api, "ingresses").len();
    for _ in 0..3 {
        let r = w.sync(&listed(&api), &ours).await.unwrap();
        assert_eq!((r.written, r.unchanged), (0, 300));
    }
    assert_eq!(writes(&api, "ingresses").len(), before);
}

fn problem(name: &str, message: &str) -> K8sProblem {
    K8sProblem {
        kind: "ingress",
        object: key(name),
        problem: Problem::new("rules[0].http.paths[0].backend.service.port", message),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_posted_on_the_object_and_repeats_fold_into_one() {
    let api = FakeApiServer::start().await;
    let shop = api.create(&ingress("shop"));
    let snapshot = Snapshot {
        ingresses: vec![shop.clone().into()],
        ..Snapshot::default()
    };
    let (lead, lead_rx) = leader(true);
    let rec = Recorder::new(api.client().await, "pod-a", lead_rx)
        .with_min_interval(Duration::from_millis(500));
    let p = problem("shop", "service shop has no port named http");
    rec.problems(std::slice::from_ref(&p), &snapshot).await;
    let events: Vec<Event> = api.list("default");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reason.as_deref(), Some("TranslationProblem"));
    assert_eq!(
        e.message.as_deref(),
        Some("rules[0].http.paths[0].backend.service.port: service shop has no port named http")
    );
    assert_eq!(e.count, Some(1));
    let io = &e.involved_object;
    assert_eq!(
        (
            io.kind.as_deref(),
            io.name.as_deref(),
            io.namespace.as_deref()
        ),
        (Some("Ingress"), Some("shop"), Some("default"))
    );
    assert_eq!(io.uid, shop.metadata.uid);
    assert_eq!(io.resource_version, shop.metadata.resource_version);

    // Again at once: nothing sent. After the interval: the same Event, counted.
    rec.problems(std::slice::from_ref(&p), &snapshot).await;
    assert_eq!(writes(&api, "events").len(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    rec.problems(std::slice::from_ref(&p), &snapshot).await;
    let events: Vec<Event> = api.list("default");
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].count,
        Some(3),
        "the held-back repeat is counted too"
    );
    // (metav1.Time has whole seconds: equal within the same second.)
    assert!(events[0].last_timestamp >= events[0].first_timestamp);
    let verbs: Vec<String> = writes(&api, "events").into_iter().map(|c| c.verb).collect();
    assert_eq!(verbs, ["create", "patch"]);

    // Another problem is another Event; a follower posts nothing.
    rec.problems(&[problem("shop", "another")], &snapshot).await;
    assert_eq!(api.list::<Event>("default").len(), 2);
    lead.send_replace(false);
    rec.problems(&[problem("shop", "a third")], &snapshot).await;
    assert_eq!(api.list::<Event>("default").len(), 2);
}

const CERT_A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
const CERT_B: &str = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nKKKK\n-----END PRIVATE KEY-----\n";

fn tls_secret(name: &str, annotations: serde_json::Value, crt: &str) -> Secret {
    from(
        json!({"metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": ByteString(crt.as_bytes().to_vec()), "tls.key": ByteString(KEY.as_bytes().to_vec())}}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_go_into_our_secrets_and_never_into_cert_managers() {
    let api = FakeApiServer::start().await;
    let client = api.client().await;
    let hosts = vec!["shop.test".to_owned(), "www.shop.test".to_owned()];

    let w = write_certificate(client.clone(), &key("shop-tls"), &hosts, CERT_A, KEY).await;
    assert_eq!(w.unwrap(), SecretWrite::Created);
    let s: Secret = api.get("default", "shop-tls").unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        s.metadata
            .labels
            .as_ref()
            .unwrap()
            .get(MANAGED_BY_LABEL)
            .map(String::as_str),
        Some("portcullis")
    );
    assert_eq!(
        s.metadata.annotations.as_ref().unwrap()["portcullis.dev/acme-hosts"],
        "shop.test,www.shop.test"
    );
    assert_eq!(
        read_certificate(&s),
        Some((CERT_A.to_owned(), KEY.to_owned()))
    );

    let w = write_certificate(client.clone(), &key("shop-tls"), &hosts, CERT_A, KEY).await;
    assert_eq!(w.unwrap(), SecretWrite::Unchanged);
    let w = write_certificate(client.clone(), &key("shop-tls"), &hosts, CERT_B, KEY).await;
    assert_eq!(w.unwrap(), SecretWrite::Updated);
    let s: Secret = api.get("default", "shop-tls").unwrap();
    assert_eq!(read_certificate(&s).unwrap().0, CERT_B);

    // cert-manager's Secret, and someone's certificate without our label: left alone.
    api.create(&tls_secret(
        "cm-tls",
        json!({"cert-manager.io/certificate-name": "cm"}),
        CERT_A,
    ));
    api.create(&tls_secret("hand-tls", json!({}), CERT_A));
    for (name, why) in [
        ("cm-tls", NotOurs::CertManager),
        ("hand-tls", NotOurs::Foreign),
    ] {
        let before = api.get::<Secret>("default", name).unwrap();
        let err = write_certificate(client.clone(), &key(name), &hosts, CERT_B, KEY)
            .await
            .unwrap_err();
        assert!(err.is_not_ours(), "{err}");
        assert!(
            matches!(err, portcullis_k8s::SecretError::NotOurs { reason, .. } if reason == why)
        );
        let after = api.get::<Secret>("default", name).unwrap();
        assert_eq!(
            before.metadata.resource_version,
            after.metadata.resource_version
        );
    }
    // An empty TLS Secret made ready by a user is filled in (and labelled as ours).
    api.create(&tls_secret("empty-tls", json!({}), ""));
    let w = write_certificate(client.clone(), &key("empty-tls"), &hosts, CERT_A, KEY).await;
    assert_eq!(w.unwrap(), SecretWrite::Updated);
    let s: Secret = api.get("default", "empty-tls").unwrap();
    assert_eq!(read_certificate(&s).unwrap().0, CERT_A);
}

fn issued(site: &str, cert: &str) -> IssuedCertificate {
    IssuedCertificate {
        site: site.into(),
        hosts: vec!["shop.test".into()],
        chain_pem: cert.into(),
        key_pem: KEY.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_driver_writes_only_while_leading_and_retries_api_failures() {
    let api = FakeApiServer::start().await;
    let client = api.client().await;
    let (lead, lead_rx) = leader(false);
    let recorder = Arc::new(Recorder::new(client.clone(), "pod-a", lead_rx.clone()));
    let (driver, handle) = AcmeSecrets::new(client, lead_rx);
    let driver = driver
        .with_recorder(recorder)
        .with_backoff(Duration::from_millis(100), Duration::from_millis(400));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(driver.run(stop_rx));

    handle.set_targets(BTreeMap::from([("shop".to_owned(), key("shop-tls"))]));
    handle.issued(issued("shop", CERT_B));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        api.get::<Secret>("default", "shop-tls").is_none(),
        "a follower wrote"
    );
    // A follower's certificate is dropped, not written once it leads.
    lead.send_replace(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        api.get::<Secret>("default", "shop-tls").is_none(),
        "a stale certificate was written"
    );

    // Leading, through two failed requests.
    api.fail_next(2, 500);
    handle.issued(issued("shop", CERT_A));
    let s = until(Duration::from_secs(5), "the Secret written", || async {
        api.get::<Secret>("default", "shop-tls")
    })
    .await;
    assert_eq!(read_certificate(&s).unwrap().0, CERT_A);
    until(
        Duration::from_secs(5),
        "a CertificateIssued Event",
        || async {
            api.list::<Event>("default")
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("CertificateIssued"))
        },
    )
    .await;

    // A certificate for a site with no Secret yet waits for one.
    handle.issued(issued("blog", CERT_B));
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.set_targets(BTreeMap::from([
        ("shop".to_owned(), key("shop-tls")),
        ("blog".to_owned(), key("blog-tls")),
    ]));
    until(Duration::from_secs(5), "blog's Secret", || async {
        api.get::<Secret>("default", "blog-tls")
    })
    .await;
    stop.send_replace(true);
    task.await.unwrap();
}

/// The Ingresses of `default`, shared as a snapshot holds them.
fn listed(api: &FakeApiServer) -> Vec<std::sync::Arc<Ingress>> {
    api.list::<Ingress>("default")
        .into_iter()
        .map(std::sync::Arc::new)
        .collect()
}
