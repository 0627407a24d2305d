//! The `cluster` section: what a valid one gives, and every mistake named by its key.

use std::path::Path;

use super::{dir_with_pems, problems};
use crate::*;

const SITE: &str =
    "sites:\n  - hosts: [a.test]\n    tls: acme\n    origin: http://127.0.0.1:3000\n";

fn with_cluster(cluster: &str) -> String {
    format!("cluster:\n{cluster}{SITE}")
}

#[test]
fn no_cluster_section_keeps_local_storage() {
    let c = parse(SITE, Path::new("/etc/portcullis")).unwrap();
    assert_eq!(c.cluster, None);
}

#[test]
fn an_etcd_cluster_gets_its_defaults() {
    let dir = dir_with_pems();
    let c = parse(
        &with_cluster(
            "  store: etcd\n  etcd: { endpoints: [http://10.0.0.2:2379, https://10.0.0.3:2379] }\n  node_name: edge-1\n",
        ),
        dir.path(),
    )
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.node_name, "edge-1");
    assert_eq!(cluster.lease, defaults::CLUSTER_LEASE);
    assert_eq!(
        cluster.challenge_timeout,
        defaults::CLUSTER_CHALLENGE_TIMEOUT
    );
    assert_eq!(cluster.encryption_key, None);
    let ClusterStore::Etcd(etcd) = cluster.store else {
        panic!("not etcd")
    };
    assert_eq!(etcd.prefix, "/portcullis/");
    assert_eq!(etcd.endpoints.len(), 2);
}

#[test]
fn a_kubernetes_cluster_names_its_namespace() {
    let c = parse(
        &with_cluster("  store: kubernetes\n  kubernetes: { namespace: edge }\n  node_name: p-1\n"),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(
        c.cluster.unwrap().store,
        ClusterStore::Kubernetes(KubernetesStore {
            namespace: "edge".into(),
            kubeconfig: None,
        })
    );
}

#[test]
fn node_name_expands_environment_variables() {
    let name = std::env::var("PATH").map(|_| "PATH").unwrap();
    let yaml = with_cluster(&format!(
        "  store: kubernetes\n  node_name: x-${{{name}}}\n"
    ));
    let problems = problems(&yaml);
    // PATH holds `/` and `:`, which a replica name cannot: the expanded value is checked.
    assert!(
        problems.iter().any(|p| p.starts_with("cluster.node_name")),
        "{problems:?}"
    );
    let problems = super::problems(&with_cluster(
        "  store: kubernetes\n  node_name: ${PORTCULLIS_SURELY_UNSET_VAR}\n",
    ));
    assert!(
        problems.iter().any(
            |p| p.starts_with("cluster.node_name") && p.contains("PORTCULLIS_SURELY_UNSET_VAR")
        ),
        "{problems:?}"
    );
}

#[test]
fn an_encryption_key_must_be_32_bytes() {
    let dir = dir_with_pems();
    std::fs::write(dir.path().join("short.key"), "c2hvcnQ=\n").unwrap();
    std::fs::write(
        dir.path().join("good.key"),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    )
    .unwrap();
    let good = parse(
        &with_cluster("  store: kubernetes\n  node_name: a\n  encryption_key_file: good.key\n"),
        dir.path(),
    )
    .unwrap();
    let key = good.cluster.unwrap().encryption_key.unwrap();
    assert_eq!(key.0[31], 31);
    assert_eq!(format!("{key:?}"), "EncryptionKey(..)");
    let err = parse(
        &with_cluster("  store: kubernetes\n  node_name: a\n  encryption_key_file: short.key\n"),
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cluster.encryption_key_file") && err.contains("32-byte"),
        "{err}"
    );
}

#[test]
fn every_mistake_is_named_by_its_key() {
    let cases: &[(&str, &str)] = &[
        ("  node_name: a\n", "cluster.store"),
        ("  store: consul\n  node_name: a\n", "cluster.store"),
        ("  store: etcd\n  node_name: a\n", "cluster.etcd"),
        (
            "  store: etcd\n  etcd: { endpoints: [] }\n  node_name: a\n",
            "cluster.etcd.endpoints",
        ),
        (
            "  store: etcd\n  etcd: { endpoints: [10.0.0.2:2379] }\n  node_name: a\n",
            "cluster.etcd.endpoints[0]",
        ),
        (
            "  store: etcd\n  etcd: { endpoints: [http://a:1], prefix: portcullis }\n  node_name: a\n",
            "cluster.etcd.prefix",
        ),
        (
            "  store: etcd\n  etcd: { endpoints: [http://a:1], tls: { ca: site.pem } }\n  node_name: a\n",
            "cluster.etcd.tls",
        ),
        (
            "  store: etcd\n  etcd: { endpoints: [https://a:1], tls: { cert: site.pem } }\n  node_name: a\n",
            "cluster.etcd.tls.key",
        ),
        (
            "  store: etcd\n  etcd: { endpoints: [https://a:1], tls: { ca: empty.pem } }\n  node_name: a\n",
            "cluster.etcd.tls.ca",
        ),
        (
            "  store: etcd\n  etcd: { endpoints: [http://a:1], username: u }\n  node_name: a\n",
            "cluster.etcd.username",
        ),
        (
            "  store: etcd\n  etcd: { endpoints: [http://a:1], user: u }\n  node_name: a\n",
            "cluster.etcd.user",
        ),
        (
            "  store: kubernetes\n  kubernetes: { namespace: Edge_1 }\n  node_name: a\n",
            "cluster.kubernetes.namespace",
        ),
        (
            "  store: kubernetes\n  kubernetes: { kubeconfig: missing.yaml }\n  node_name: a\n",
            "cluster.kubernetes.kubeconfig",
        ),
        (
            "  store: kubernetes\n  etcd: { endpoints: [http://a:1] }\n  node_name: a\n",
            "cluster.etcd",
        ),
        (
            "  store: kubernetes\n  node_name: a/b\n",
            "cluster.node_name",
        ),
        (
            "  store: kubernetes\n  node_name: a\n  lease: 1s\n",
            "cluster.lease",
        ),
        (
            "  store: kubernetes\n  node_name: a\n  lease: 10m\n",
            "cluster.lease",
        ),
        (
            "  store: kubernetes\n  node_name: a\n  challenge_timeout: 0s\n",
            "cluster.challenge_timeout",
        ),
        (
            "  store: kubernetes\n  node_name: a\n  encryption_key_file: missing.key\n",
            "cluster.encryption_key_file",
        ),
    ];
    for (cluster, key) in cases {
        let problems = problems(&with_cluster(cluster));
        assert!(
            problems.iter().any(|p| p.starts_with(&format!("{key}:"))),
            "{cluster:?}: expected a problem at {key}, got {problems:?}"
        );
    }
}
