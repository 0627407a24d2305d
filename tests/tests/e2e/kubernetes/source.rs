//! `portcullis_k8s::Source` alone against the fake API server: what is published and when.
//! Every snapshot it ever publishes is recorded, so a half-empty one would be seen.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use portcullis_k8s::{Snapshot, Source, SourceConfig};
use portcullis_tests::FakeApiServer;
use portcullis_tests::wait::until;
use serde_json::json;
use tokio::sync::mpsc;

fn ingress(ns: &str, name: &str) -> Ingress {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"rules": [{"host": format!("{name}.test")}]}
    }))
    .unwrap()
}

/// Starts a source and a task forwarding every snapshot it publishes.
async fn record(
    api: &FakeApiServer,
    config: SourceConfig,
) -> (Source, mpsc::UnboundedReceiver<Arc<Snapshot>>) {
    let source = Source::start(api.client().await, config);
    let mut snapshots = source.snapshots();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let s = snapshots.borrow_and_update().clone();
            if let Some(s) = s
                && tx.send(s).is_err()
            {
                return;
            }
        }
    });
    (source, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_published_before_every_kind_is_listed_nor_half_way_through_a_relist() {
    let api = FakeApiServer::start().await;
    // More than two pages of 500: a (re-)list takes several requests.
    for i in 0..1200 {
        api.create(&ingress("default", &format!("i{i:04}")));
    }
    let (source, mut published) = record(&api, SourceConfig::default()).await;
    let first = tokio::time::timeout(Duration::from_secs(20), published.recv())
        .await
        .expect("a first snapshot")
        .unwrap();
    assert_eq!(
        first.ingresses.len(),
        1200,
        "the first snapshot is complete"
    );
    assert!(source.status().borrow().synced);
    assert!(source.status().borrow().api_up);

    // History forgotten, watches cut: every watcher lists again from scratch, and a change
    // made meanwhile (while the watches were stalled, so none of them saw it) is only in
    // the new lists.
    api.stall_watches(true);
    api.create(&ingress("default", "late"));
    api.compact();
    api.drop_watches();
    api.stall_watches(false);
    let last = until(Duration::from_secs(20), "the re-listed snapshot", || {
        let mut got = None;
        while let Ok(s) = published.try_recv() {
            assert!(
                s.ingresses.len() >= 1200,
                "a snapshot with {} Ingresses was published during the re-list",
                s.ingresses.len()
            );
            got = Some(s);
        }
        async move { got.filter(|s| s.ingresses.len() == 1201) }
    })
    .await;
    assert_eq!(last.ingresses.len(), 1201);
    let lists = api
        .calls()
        .iter()
        .filter(|c| c.verb == "list" && c.resource == "ingresses")
        .count();
    assert!(lists >= 6, "two lists of three pages each: {lists}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_changes_is_published_as_few_snapshots() {
    let api = FakeApiServer::start().await;
    let (_source, mut published) = record(&api, SourceConfig::default()).await;
    let first = tokio::time::timeout(Duration::from_secs(20), published.recv())
        .await
        .expect("a first snapshot (of an empty cluster)")
        .unwrap();
    assert!(first.ingresses.is_empty());
    for i in 0..100 {
        api.create(&ingress("default", &format!("b{i}")));
    }
    let mut seen = 0;
    let last = until(Duration::from_secs(10), "all 100 Ingresses", || {
        let mut got = None;
        while let Ok(s) = published.try_recv() {
            seen += 1;
            got = Some(s);
        }
        async move { got.filter(|s| s.ingresses.len() == 100) }
    })
    .await;
    assert_eq!(last.ingresses.len(), 100);
    assert!(seen <= 3, "100 changes in a burst became {seen} snapshots");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_watched_namespaces_and_the_secret_types_translation_reads_are_seen() {
    let api = FakeApiServer::start().await;
    for ns in ["shop", "blog"] {
        api.create::<k8s_openapi::api::core::v1::Namespace>(
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        );
        api.create(&ingress(ns, "web"));
    }
    api.create(&ingress("default", "other"));
    for (name, type_) in [
        ("tls", "kubernetes.io/tls"),
        ("opaque", "Opaque"),
        ("release", "helm.sh/release.v1"),
        ("token", "kubernetes.io/service-account-token"),
    ] {
        api.create::<Secret>(
            &serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "shop",
                             "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
                "type": type_,
                "stringData": {"a": "b"}
            }))
            .unwrap(),
        );
    }
    let (_source, mut published) = record(
        &api,
        SourceConfig {
            namespaces: vec!["shop".into(), "blog".into()],
            ..SourceConfig::default()
        },
    )
    .await;
    let s = tokio::time::timeout(Duration::from_secs(20), published.recv())
        .await
        .expect("a first snapshot")
        .unwrap();
    let mut namespaces: Vec<_> = s
        .ingresses
        .iter()
        .map(|i| i.metadata.namespace.clone().unwrap())
        .collect();
    namespaces.sort();
    assert_eq!(namespaces, ["blog", "shop"]);
    let mut secrets: Vec<_> = s
        .secrets
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    secrets.sort();
    assert_eq!(secrets, ["opaque", "tls"]);
    for secret in &s.secrets {
        assert!(
            secret
                .metadata
                .annotations
                .as_ref()
                .is_none_or(|a| a.is_empty()),
            "kubectl's copy of the object is not kept"
        );
        assert!(secret.metadata.managed_fields.is_none());
    }
}
