//! The API server unreachable (accepting connections, answering nothing, as behind a
//! partition): every replica keeps serving, says the store is down in its metrics and in
//! `/readyz` (which stays ready), a replica restarted meanwhile serves its local cache,
//! and all come back once the API server answers again, with nothing ordered twice.

use std::time::Duration;

use super::fleet::{Options, with_fleet};

const UP: &str = "portcullis_cluster_store_up";

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_blackholed_every_replica_keeps_serving_and_says_the_store_is_unreachable() {
    let opts = Options {
        sites: 2,
        ..Options::default()
    };
    with_fleet("fake API blackholed", opts, async |fleet| {
        fleet.start().await;
        let all = fleet.all();
        let leader = fleet.wait_leader(Duration::from_secs(15), None).await;
        let before = fleet
            .wait_served(&all, Duration::from_secs(60), |_, _| true)
            .await;
        let orders = fleet.acme.new_orders();

        fleet.api.blackhole(true);
        fleet
            .wait_metric(&all, UP, Duration::from_secs(20), |v| v == 0.0)
            .await;
        fleet
            .wait_metric(
                &all,
                "portcullis_cluster_store_stale_seconds",
                Duration::from_secs(10),
                |v| v >= 1.0,
            )
            .await;
        // The issuer cannot renew its Lease: it steps down.
        fleet
            .wait_metric(
                &[leader],
                "portcullis_cluster_leader",
                Duration::from_secs(10),
                |v| v == 0.0,
            )
            .await;
        for i in all.clone() {
            let r = &fleet.replicas[i];
            let ready = r.admin_get("/readyz").await;
            assert_eq!(ready.status, 200, "{}: {}", r.name, ready.text);
            let line = format!("cluster: {} via kubernetes", r.name);
            assert!(
                ready
                    .body()
                    .lines()
                    .any(|l| l.starts_with(&line) && l.contains("store unreachable for")),
                "{}'s /readyz: {}",
                r.name,
                ready.body()
            );
            for name in fleet.names() {
                let served = fleet
                    .served(i, &name)
                    .await
                    .map(|l| portcullis_tls::CertInfo::parse(&l).unwrap().serial);
                assert_eq!(
                    served.as_ref(),
                    before.get(&name),
                    "{} serves {name}",
                    r.name
                );
            }
        }

        // A follower restarted while the API server is unreachable serves its local cache.
        let follower = fleet.others(leader)[0];
        fleet.replicas[follower].kill();
        fleet.replicas[follower].start().await;
        for name in fleet.names() {
            let served = fleet
                .served(follower, &name)
                .await
                .map(|l| portcullis_tls::CertInfo::parse(&l).unwrap().serial);
            assert_eq!(
                served.as_ref(),
                before.get(&name),
                "restarted {} serves {name}",
                fleet.replicas[follower].name
            );
        }
        assert_eq!(fleet.replicas[follower].metric(UP, &[]).await, 0.0);

        // Back: every replica reads the store again, one of them leads, nothing reordered.
        fleet.api.blackhole(false);
        fleet
            .wait_metric(&all, UP, Duration::from_secs(20), |v| v == 1.0)
            .await;
        fleet
            .wait_metric(
                &all,
                "portcullis_cluster_store_stale_seconds",
                Duration::from_secs(5),
                |v| v == 0.0,
            )
            .await;
        fleet.wait_leader(Duration::from_secs(15), None).await;
        for i in all.clone() {
            let r = &fleet.replicas[i];
            let ready = r.admin_get("/readyz").await;
            assert!(
                ready.body().contains("store in sync"),
                "{}'s /readyz: {}",
                r.name,
                ready.body()
            );
        }
        let after = fleet
            .wait_served(&all, Duration::from_secs(10), |_, _| true)
            .await;
        assert_eq!(before, after);
        assert_eq!(fleet.acme.new_orders(), orders);
    })
    .await;
}
