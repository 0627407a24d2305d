//! The API server misbehaves: watches dropped, history compacted (410 Gone, a re-list),
//! 500s and 429s, a server that accepts and never answers. The last good routes keep
//! serving throughout, and a change made meanwhile is served once the API is back.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use portcullis_tests::scrape::metric;
use portcullis_tests::wait::until;
use portcullis_tests::{TestClient, TestOrigin};

use super::{Cluster, Controller, ingress, origin_port, try_get, until_served_by};

/// A cluster serving `a.test` (to `a`) and, once `b` is created, `b.test` (to `b`).
struct World {
    cluster: Cluster,
    a: TestOrigin,
    b: TestOrigin,
    gw: Controller,
    client: TestClient,
}

impl World {
    async fn new() -> Self {
        let cluster = Cluster::new().await;
        let a = TestOrigin::http().await;
        let b = TestOrigin::http().await;
        cluster.service("default", "a", a.addr.port(), &[("127.0.0.1", true)]);
        cluster.service("default", "b", b.addr.port(), &[("127.0.0.1", true)]);
        for host in ["a", "b"] {
            let leaf = cluster.ca.leaf(&[&format!("{host}.test")]);
            cluster.api.create::<Secret>(&cluster.tls_secret(
                "default",
                &format!("{host}-tls"),
                &leaf,
            ));
        }
        cluster.api.create::<Ingress>(&a_ingress());
        let gw = cluster.controller(&[]).await;
        gw.wait_ready().await;
        let client = gw.client(&cluster.ca);
        until_served_by(&client, "a.test", "/", a.addr.port()).await;
        Self {
            cluster,
            a,
            b,
            gw,
            client,
        }
    }

    /// `a.test` is still served by `a`.
    async fn a_serves(&self) {
        let resp = try_get(&self.client, "a.test", "/still")
            .await
            .expect("a.test still has its certificate");
        assert_eq!(resp.status, 200);
        assert_eq!(origin_port(&resp), Some(self.a.addr.port()));
        let (status, body) = self.gw.readyz().await;
        assert_eq!(status, 200, "ready with the last good routes: {body}");
    }

    /// The change made while the API misbehaved.
    fn add_b(&self) {
        self.cluster.api.create::<Ingress>(&ingress(
            "default",
            "b",
            "b.test",
            Some("b-tls"),
            &[("/", "Prefix", "b")],
        ));
    }

    async fn b_served(&self) {
        until_served_by(&self.client, "b.test", "/", self.b.addr.port()).await;
        self.a_serves().await;
    }
}

fn a_ingress() -> Ingress {
    ingress(
        "default",
        "a",
        "a.test",
        Some("a-tls"),
        &[("/", "Prefix", "a")],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_watches_are_resumed_and_a_change_made_meanwhile_is_served() {
    let w = World::new().await;
    w.cluster.api.drop_watches();
    w.add_b();
    w.a_serves().await;
    w.b_served().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relist_after_410_gone_never_serves_a_half_empty_table() {
    let w = World::new().await;
    // History forgotten and every watch cut: each watcher's resume gets 410 Gone and lists
    // again from scratch. Meanwhile, and throughout, a.test must keep its route.
    // (The watches are stalled meanwhile, so the change is seen only by the re-lists.)
    w.cluster.api.stall_watches(true);
    w.add_b();
    w.cluster.api.compact();
    w.cluster.api.drop_watches();
    w.cluster.api.stall_watches(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        w.a_serves().await;
    }
    w.b_served().await;
    let relists = w
        .cluster
        .api
        .calls()
        .iter()
        .filter(|c| c.verb == "list" && c.resource == "ingresses")
        .count();
    assert!(relists >= 2, "the Ingresses were listed again: {relists}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_throttling_keep_the_last_routes_and_then_converge() {
    let w = World::new().await;
    // Every watch cut, and the next requests answered 500 then 429 (Retry-After: 1).
    w.cluster.api.fail_next(6, 500);
    w.cluster.api.drop_watches();
    w.add_b();
    until(Duration::from_secs(10), "the API reported down", || async {
        let page = w.gw.scrape().await;
        (metric(&page, "portcullis_kubernetes_api_up", &[]) == 0.0).then_some(())
    })
    .await;
    let (status, body) = w.gw.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("API server unreachable"), "{body}");
    w.a_serves().await;
    w.cluster.api.fail_next(4, 429);
    w.a_serves().await;
    w.b_served().await;
    until(
        Duration::from_secs(20),
        "the API reported up again",
        || async {
            let page = w.gw.scrape().await;
            (metric(&page, "portcullis_kubernetes_api_up", &[]) == 1.0).then_some(())
        },
    )
    .await;
    let (_, body) = w.gw.readyz().await;
    assert!(!body.contains("unreachable"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_keeps_the_last_routes_then_converges() {
    let w = World::new().await;
    w.cluster.api.blackhole(true);
    w.add_b();
    for _ in 0..3 {
        w.a_serves().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        try_get(&w.client, "b.test", "/")
            .await
            .is_none_or(|r| r.status != 200),
        "nothing new while the API is silent"
    );
    w.cluster.api.blackhole(false);
    w.b_served().await;
}
