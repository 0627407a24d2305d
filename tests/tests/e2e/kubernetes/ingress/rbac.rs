//! The deployment's RBAC (`deploy/kubernetes`, rendered by the real `kubectl kustomize`)
//! against the calls `portcullis ingress` actually made here, through a whole life: the
//! watches, leadership, Ingress status, an Event for a problem, the status cleared and the
//! Lease released at shutdown. A rule missing from the deployment fails here before it
//! fails in a cluster.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use portcullis_k8s::rbac_allows_named;
use portcullis_tests::TestOrigin;
use portcullis_tests::wait::until;
use serde_json::json;

use super::{CONVERGE, Cluster, ingress};

/// The rules of every ClusterRole and Role the kustomize base renders. (The Role's
/// namespace is not compared: the test's Lease is in `default`, the deployment's in
/// `portcullis`.)
fn deployed_rules() -> Vec<PolicyRule> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&base)
        .output()
        .expect("kubectl (v1.32 is installed on these machines)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rules = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::to_value(
            <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap(),
        )
        .unwrap();
        match value["kind"].as_str() {
            Some("ClusterRole") => rules.extend(
                serde_json::from_value::<ClusterRole>(value)
                    .unwrap()
                    .rules
                    .unwrap_or_default(),
            ),
            Some("Role") => rules.extend(
                serde_json::from_value::<Role>(value)
                    .unwrap()
                    .rules
                    .unwrap_or_default(),
            ),
            _ => {}
        }
    }
    assert!(!rules.is_empty(), "the base renders roles");
    rules
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_the_controller_makes_is_allowed_by_the_deployed_rbac() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    cluster.service("default", "app", pod.addr.port(), &[("127.0.0.1", true)]);
    let leaf = cluster.ca.leaf(&["rbac.test"]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "app-tls", &leaf));
    // One good path and one naming a port the Service lacks: a problem, so an Event.
    let mut ing = ingress(
        "default",
        "app",
        "rbac.test",
        Some("app-tls"),
        &[("/", "Prefix", "app"), ("/x", "Prefix", "app")],
    );
    ing.spec.as_mut().unwrap().rules.as_mut().unwrap()[0]
        .http
        .as_mut()
        .unwrap()
        .paths[1]
        .backend
        .service
        .as_mut()
        .unwrap()
        .port = Some(serde_json::from_value(json!({"name": "missing"})).unwrap());
    cluster.api.create::<Ingress>(&ing);
    let gw = cluster
        .controller(&["--publish-address", "203.0.113.9"])
        .await;
    gw.wait_ready().await;
    until(CONVERGE, "the status and the Event written", || async {
        let status = cluster
            .api
            .get::<Ingress>("default", "app")
            .and_then(|i| i.status?.load_balancer?.ingress)
            .is_some_and(|l| !l.is_empty());
        let event = cluster
            .api
            .calls()
            .iter()
            .any(|c| c.resource == "events" && c.verb == "create");
        (status && event).then_some(())
    })
    .await;
    assert!(gw.stop().await);

    let rules = deployed_rules();
    let calls = cluster.api.calls();
    assert!(calls.len() > 10, "{calls:?}");
    let refused: Vec<String> = calls
        .iter()
        .filter(|c| {
            !rbac_allows_named(
                &rules,
                &c.verb,
                &c.group,
                &c.resource,
                c.subresource.as_deref(),
                c.name.as_deref(),
            )
        })
        .map(|c| {
            format!(
                "{} {}/{} {:?} {:?}",
                c.verb, c.group, c.resource, c.subresource, c.name
            )
        })
        .collect();
    assert!(
        refused.is_empty(),
        "calls the deployment's RBAC does not allow: {refused:#?}"
    );
}
