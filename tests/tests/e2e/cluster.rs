//! Gateways in one certificate cluster (`cluster:`, docs/cluster.md), in process, on a real
//! etcd: one issuer elected, `/readyz` naming each replica's role and the store's state and
//! staying ready while etcd is gone, a reload that would change `cluster:` refused by key,
//! and the leadership handed over at once when the issuer shuts down. The ordering,
//! failover and fencing suites run the binary: crates/portcullis/tests/cluster*.rs.

use std::time::Duration;

use portcullis_tests::etcd::TestEtcd;
use portcullis_tests::scrape::metric;
use portcullis_tests::{GatewayBuilder, TestGateway, plain, wait};

fn builder(etcd: &TestEtcd, node: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .set(
            "cluster",
            &format!(
                "{{store: etcd, etcd: {{endpoints: ['{}'], prefix: /e2e-cluster/}}, node_name: {node}, lease: 2s}}",
                etcd.endpoints()[0]
            ),
        )
        .site("{hosts: [local.test], tls: local, respond: {body: hello}}")
}

async fn leader(g: &TestGateway) -> f64 {
    metric(&g.scrape().await, "portcullis_cluster_leader", &[])
}

async fn readyz(g: &TestGateway) -> plain::PlainResponse {
    plain::get(g.admin.unwrap(), "127.0.0.1", "/readyz").await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_issuer_readiness_names_roles_reload_cannot_change_the_cluster_and_stop_hands_over() {
    let mut etcd = TestEtcd::start(1).await;
    let a = builder(&etcd, "g1").start().await;
    let b = builder(&etcd, "g2").start().await;

    // Exactly one issuer.
    wait::until(Duration::from_secs(10), "one issuer", || async {
        let (la, lb) = (leader(&a).await, leader(&b).await);
        (la + lb == 1.0).then_some(())
    })
    .await;
    let (issuer, follower) = if leader(&a).await == 1.0 {
        (a, b)
    } else {
        (b, a)
    };
    // The cluster's families pass promtool as the rest of the page does.
    let page = issuer.scrape().await;
    assert!(page.contains("portcullis_cluster_challenge_propagation_seconds_bucket"));
    portcullis_tests::scrape::assert_promtool_clean(&page);
    for (g, role) in [(&issuer, "issuer"), (&follower, "follower")] {
        let r = readyz(g).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.body()
                .contains(&format!("via etcd ({role}), store in sync")),
            "{}",
            r.body()
        );
    }

    // A reload that changes the cluster section is refused by key; nothing changes.
    let path = follower.config_path.clone();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("node_name: g", "node_name: renamed-g")).unwrap();
    let problems = follower.controller.reload().await.unwrap_err();
    assert!(problems.iter().any(|p| p.key == "cluster"), "{problems:?}");
    std::fs::write(&path, text).unwrap();

    // The issuer shuts down: the follower leads well before the 2 s lease could run out.
    let stopped = std::time::Instant::now();
    assert!(issuer.stop().await);
    wait::until(Duration::from_secs(5), "the follower to lead", || async {
        (leader(&follower).await == 1.0).then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(1900),
        "handed over after {:?}",
        stopped.elapsed()
    );

    // etcd gone: still ready, the body says the store is out of reach, the metric too.
    etcd.kill(0);
    wait::until(
        Duration::from_secs(20),
        "the store to be seen down",
        || async {
            let page = follower.scrape().await;
            (metric(&page, "portcullis_cluster_store_up", &[]) == 0.0).then_some(())
        },
    )
    .await;
    let r = readyz(&follower).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body().contains("store unreachable for"), "{}", r.body());
    etcd.restart(0).await;
    wait::until(Duration::from_secs(20), "the store to be back", || async {
        let page = follower.scrape().await;
        (metric(&page, "portcullis_cluster_store_up", &[]) == 1.0).then_some(())
    })
    .await;
}

/// Static stability at start: a replica starting while the store cannot be reached serves
/// the certificate its local cache holds, says so on `/readyz`, and counts the store down.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_starting_with_the_store_down_serves_its_local_cache() {
    let ca = portcullis_tests::TestCa::new("cluster cache CA");
    let leaf = ca.leaf(&["cached.test"]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let directory = "https://127.0.0.1:1/directory";
    let b = GatewayBuilder::new();
    let storage = b.dir().join("state");
    portcullis_acme::Storage::new(&storage, directory)
        .save_cert("cached", &leaf.cert_pem, &leaf.key_pem)
        .unwrap();
    let g = b
        .set("storage", &format!("'{}'", storage.display()))
        .set("acme", &format!("{{directory: '{directory}'}}"))
        .set(
            "cluster",
            &format!(
                "{{store: etcd, etcd: {{endpoints: ['{endpoint}']}}, node_name: alone, lease: 2s}}"
            ),
        )
        .site("{name: cached, hosts: [cached.test], tls: acme, respond: {body: cached}}")
        .start()
        .await;
    let conn = g
        .client(&ca.root_der)
        .connect("cached.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        portcullis_tls::CertInfo::parse(&conn.peer_leaf)
            .unwrap()
            .names,
        ["cached.test"]
    );
    let r = readyz(&g).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body()
            .contains("store not reached yet; serving the local cache"),
        "{}",
        r.body()
    );
    let page = g.scrape().await;
    assert_eq!(metric(&page, "portcullis_cluster_store_up", &[]), 0.0);
    assert_eq!(metric(&page, "portcullis_cluster_leader", &[]), 0.0);
}
