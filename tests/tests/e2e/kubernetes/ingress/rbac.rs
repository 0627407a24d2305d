//! The deployment's RBAC (`deploy/kubernetes`, rendered by the real `kubectl kustomize`)
//! against the calls `portcullis ingress` actually made here, through a whole life: the
//! watches, leadership, Ingress status, an Event for a problem, the status cleared and the
//! Lease released at shutdown. A rule missing from the deployment fails here before it
//! fails in a cluster.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use portcullis_tests::TestOrigin;
use portcullis_tests::wait::until;
use serde_json::json;

use super::{CONVERGE, Cluster, ingress};

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

    let calls = cluster.api.calls();
    assert!(calls.len() > 10, "{calls:?}");
    crate::kubernetes::rbac::assert_deployed_rbac_allows(&calls, "default");
}
