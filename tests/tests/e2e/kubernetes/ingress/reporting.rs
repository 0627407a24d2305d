//! Problems and unsupported annotations: logged once when they appear (not at every sync),
//! counted in metrics that promtool accepts, and gone when fixed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use portcullis_tests::TestOrigin;
use portcullis_tests::logs::lines_with;
use portcullis_tests::scrape::metric;
use portcullis_tests::wait::until;
use serde_json::json;

use super::{CONVERGE, Cluster, ingress};

const SNIPPET: &str = "nginx.ingress.kubernetes.io/configuration-snippet";

#[tokio::test(flavor = "multi_thread")]
async fn problems_are_logged_once_counted_and_cleared_when_fixed() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    cluster.api.create::<k8s_openapi::api::core::v1::Namespace>(
        &serde_json::from_value(json!({"metadata": {"name": "report"}})).unwrap(),
    );
    cluster.service("report", "shop", pod.addr.port(), &[("127.0.0.1", true)]);
    // A name only this test uses, so its log lines are its own.
    let mut bad = ingress(
        "report",
        "shop",
        "report.test",
        None,
        &[("/a", "Prefix", "shop"), ("/b", "Prefix", "shop")],
    );
    let paths = bad.spec.as_mut().unwrap().rules.as_mut().unwrap()[0]
        .http
        .as_mut()
        .unwrap();
    paths.paths[1].backend.service.as_mut().unwrap().port =
        Some(serde_json::from_value(json!({"name": "nope"})).unwrap());
    bad.metadata.annotations = Some([(SNIPPET.to_owned(), "return 200;".to_owned())].into());
    cluster.api.create::<Ingress>(&bad);
    let gw = cluster.controller(&[]).await;
    gw.wait_ready().await;
    let problem = "ingress report/shop: rules[0].http.paths[1].backend.service.port: service shop has no port named nope";
    until(CONVERGE, "the problem counted", || async {
        let page = gw.scrape().await;
        (metric(
            &page,
            "portcullis_kubernetes_problems",
            &[
                ("kind", "ingress"),
                ("namespace", "report"),
                ("name", "shop"),
            ],
        ) == 1.0)
            .then_some(page)
    })
    .await;
    // More syncs with the same problem: an unrelated Service changes, several times.
    for i in 0..3 {
        cluster.api.create::<Service>(
            &serde_json::from_value(json!({
                "metadata": {"name": format!("unrelated-{i}"), "namespace": "report"},
                "spec": {"ports": [{"port": 80}]}
            }))
            .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let page = gw.scrape().await;
    assert!(
        metric(
            &page,
            "portcullis_kubernetes_syncs_total",
            &[("result", "unchanged")]
        ) >= 1.0,
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "portcullis_kubernetes_unsupported_annotations",
            &[
                ("namespace", "report"),
                ("ingress", "shop"),
                ("annotation", SNIPPET)
            ],
        ),
        1.0
    );
    assert_eq!(
        lines_with(&[problem]).len(),
        1,
        "logged once: {:?}",
        lines_with(&[problem])
    );
    assert_eq!(
        lines_with(&["ingress report/shop: annotation", SNIPPET]).len(),
        1,
        "the annotation too"
    );
    portcullis_tests::scrape::assert_promtool_clean(&page);

    // Fixed: the series go, and the resolution is logged once.
    cluster.api.replace::<Ingress>(&ingress(
        "report",
        "shop",
        "report.test",
        None,
        &[("/a", "Prefix", "shop"), ("/b", "Prefix", "shop")],
    ));
    until(CONVERGE, "the problem cleared", || async {
        let page = gw.scrape().await;
        (!page.contains("portcullis_kubernetes_problems{")
            && !page.contains("portcullis_kubernetes_unsupported_annotations{"))
        .then_some(())
    })
    .await;
    assert_eq!(lines_with(&["problem resolved", problem]).len(), 1);
    // An Ingress without TLS is served over plain HTTP; the fixed path reaches the pod.
    let resp = portcullis_tests::plain::get(gw.http, "report.test", "/b").await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.body(), "ok GET /b");
}
