//! The store's semantics through the in-process helpers and raw HTTPS requests.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{Value, json};

use super::{FakeApiOptions, FakeApiServer};

fn from<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn ingress(ns: &str, name: &str, host: &str) -> Ingress {
    from(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"rules": [{"host": host}]},
    }))
}

#[tokio::test]
async fn objects_get_server_set_metadata_and_a_global_resource_version() {
    let api = FakeApiServer::start().await;
    let start: u64 = api.resource_version().parse().unwrap();
    let a = api.create(&ingress("default", "a", "a.test"));
    let b = api.create(&ingress("default", "b", "b.test"));
    let rv = |i: &Ingress| {
        i.metadata
            .resource_version
            .clone()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(rv(&a), start + 1);
    assert_eq!(rv(&b), start + 2);
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.metadata.creation_timestamp.is_some());
    assert_ne!(a.metadata.uid, b.metadata.uid);
    assert_eq!(api.resource_version(), (start + 2).to_string());
    // Spec changes bump the generation, label changes do not.
    let mut a2 = a.clone();
    a2.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host = Some("a2.test".into());
    let a2 = api.replace(&a2);
    assert_eq!(a2.metadata.generation, Some(2));
    let a3: Ingress = api.patch_merge("default", "a", json!({"metadata": {"labels": {"x": "y"}}}));
    assert_eq!(a3.metadata.generation, Some(2));
    assert!(rv(&a3) > rv(&a2));
    // A write that changes nothing is no change.
    let same = api.replace(&a3);
    assert_eq!(rv(&same), rv(&a3));
    assert_eq!(api.resource_version(), rv(&a3).to_string());
}

#[tokio::test]
async fn writes_check_what_the_real_server_checks() {
    let api = FakeApiServer::start().await;
    let a = api.create(&ingress("default", "a", "a.test"));
    let mut again = a.clone();
    let e = api.try_create(&again).unwrap_err();
    assert_eq!(
        (e.code, e.reason),
        (500, "InternalError"),
        "a create carrying a resourceVersion: {e}"
    );
    again.metadata.resource_version = None;
    assert_eq!(api.try_create(&again).unwrap_err().reason, "AlreadyExists");
    let mut other_uid = a.clone();
    other_uid.metadata.uid = Some("another".into());
    let e = api.try_replace(&other_uid).unwrap_err();
    assert!(
        e.code == 409 && e.message.contains("UID in precondition"),
        "{e}"
    );
    assert_eq!(
        api.try_create(&ingress("nowhere", "a", "a.test"))
            .unwrap_err()
            .code,
        404,
        "a namespaced object needs its namespace"
    );
    let bad = api
        .try_create(&ingress("default", "Bad_Name", "x"))
        .unwrap_err();
    assert_eq!((bad.code, bad.reason), (422, "Invalid"));
    // Stale resourceVersion: 409 Conflict; none: unconditional.
    let mut stale = a.clone();
    api.patch_merge::<Ingress>(
        "default",
        "a",
        json!({"metadata": {"annotations": {"k": "v"}}}),
    );
    stale.metadata.labels = None;
    let e = api.try_replace(&stale).unwrap_err();
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    stale.metadata.resource_version = None;
    assert!(api.try_replace(&stale).is_ok());
    // generateName.
    let generated: ConfigMap =
        from(json!({"metadata": {"generateName": "cfg-", "namespace": "default"}}));
    let made = api.create(&generated);
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");
}

#[tokio::test]
async fn status_and_spec_are_written_separately() {
    let api = FakeApiServer::start().await;
    let mut with_status = ingress("default", "a", "a.test");
    with_status.status = from(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}));
    let created = api.create(&with_status);
    assert_eq!(
        created.status,
        from(json!({"loadBalancer": {}})),
        "create ignores the status"
    );
    let mut s = created.clone();
    s.status = with_status.status.clone();
    s.spec = None;
    let after = api.replace_status(&s);
    assert_eq!(after.status, with_status.status);
    assert_eq!(after.spec, created.spec, "a status write keeps the spec");
    let mut spec_write = after.clone();
    spec_write.status = None;
    spec_write.spec.as_mut().unwrap().rules = None;
    let after2 = api.replace(&spec_write);
    assert_eq!(
        after2.status, with_status.status,
        "a spec write keeps the status"
    );
    assert_eq!(after2.spec.unwrap().rules, None);
}

#[tokio::test]
async fn defaults_are_filled_in() {
    let api = FakeApiServer::start().await;
    let svc: Service = from(json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}}));
    let svc = api.create(&svc).spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert!(svc.cluster_ip.unwrap().starts_with("10.96."));
    let port = &svc.ports.unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );
    let secret: Secret = from(json!({"metadata": {"name": "s", "namespace": "default"},
        "stringData": {"k": "hello"}}));
    let secret = api.create(&secret);
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret.data.unwrap()["k"].0, b"hello");
    assert!(secret.string_data.is_none());
    let ns: Namespace = api.get("", "default").unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "default"
    );
}

#[tokio::test]
async fn cluster_scoped_kinds_and_namespace_deletion() {
    let api = FakeApiServer::start_with(FakeApiOptions {
        namespace_deletion_delay: std::time::Duration::from_secs(3600),
        ..FakeApiOptions::default()
    })
    .await;
    let class: IngressClass = from(
        json!({"metadata": {"name": "portcullis", "namespace": "ignored"},
        "spec": {"controller": "portcullis.dev/ingress-controller"}}),
    );
    let class = api.create(&class);
    assert_eq!(class.metadata.namespace, None);
    assert!(api.get::<IngressClass>("", "portcullis").is_some());
    api.create::<Namespace>(&from(json!({"metadata": {"name": "shop"}})));
    api.create(&ingress("shop", "a", "a.test"));
    api.create(&ingress("default", "b", "b.test"));
    assert_eq!(api.list::<Ingress>("").len(), 2);
    assert_eq!(api.list::<Ingress>("shop").len(), 1);
    let terminating = api.delete::<Namespace>("", "shop").unwrap();
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    let refused = api.try_create(&ingress("shop", "c", "c.test")).unwrap_err();
    assert_eq!((refused.code, refused.reason), (403, "Forbidden"));
    api.shared.store.finalize_namespace("shop");
    assert_eq!(
        api.list::<Ingress>("").len(),
        1,
        "the namespace's objects went with it"
    );
    assert!(api.get::<Namespace>("", "shop").is_none());
    assert!(api.delete::<Ingress>("shop", "a").is_none());
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_removed() {
    let api = FakeApiServer::start().await;
    let mut i = ingress("default", "a", "a.test");
    i.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&i);
    let held = api.delete::<Ingress>("default", "a").unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(api.get::<Ingress>("default", "a").is_some());
    api.patch_merge::<Ingress>("default", "a", json!({"metadata": {"finalizers": null}}));
    assert!(api.get::<Ingress>("default", "a").is_none());
}

#[tokio::test]
async fn immutable_fields_stay() {
    let api = FakeApiServer::start().await;
    let opaque: Secret = from(json!({"metadata": {"name": "s", "namespace": "default"},
        "data": {"k": "aGVsbG8="}}));
    let mut s = api.create(&opaque);
    s.type_ = Some("kubernetes.io/tls".into());
    let e = api.try_replace(&s).unwrap_err();
    assert!(
        e.code == 422 && e.message.contains("type: Invalid value"),
        "{e}"
    );
    let frozen: ConfigMap = from(json!({"metadata": {"name": "c", "namespace": "default"},
        "data": {"k": "v"}, "immutable": true}));
    let mut c = api.create(&frozen);
    c.data.as_mut().unwrap().insert("k".into(), "w".into());
    assert_eq!(api.try_replace(&c).unwrap_err().code, 422);
    let mut c = api.get::<ConfigMap>("default", "c").unwrap();
    c.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
    assert!(api.try_replace(&c).is_ok(), "metadata may still change");
}
