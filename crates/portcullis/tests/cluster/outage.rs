//! etcd itself failing: killed and restarted on its data directory (replicas serve
//! throughout and come back), and its history compacted while one replica's watch is down
//! (that replica re-lists and converges; nothing lost, nothing ordered twice).

use std::time::Duration;

use portcullis_tests::acme_proxy::Failure;

use super::fleet::{Fleet, Options, bounded, slot};

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restarted_and_compacted_behind_a_cut_off_watch_loses_and_duplicates_nothing() {
    let _slot = slot(1).await;
    let mut fleet = Fleet::new(Options {
        sites: 2,
        ..Options::default()
    })
    .await;
    // s02's orders fail until the test lets them through, to have a certificate to store
    // while one replica is cut off.
    fleet
        .acme
        .fail_new_orders_for(&["n02.test"], Failure::ServerInternal);
    bounded(
        Duration::from_secs(110),
        "etcd outage and compaction",
        async {
            fleet.start().await;
            let all = [0, 1, 2];
            let s01 = ["s01".to_owned()];
            let before = fleet
                .wait_served_sites(&all, &s01, Duration::from_secs(60), |_, _| true)
                .await;

            // etcd down: every replica says so and serves what it has.
            fleet.etcd.kill(0);
            fleet
                .wait_metric(
                    &all,
                    "portcullis_cluster_store_up",
                    Duration::from_secs(20),
                    |v| v == 0.0,
                )
                .await;
            for i in all {
                let leaf = fleet.served(i, "n01.test").await;
                let serial = leaf.map(|l| portcullis_tls::CertInfo::parse(&l).unwrap().serial);
                assert_eq!(serial.as_ref(), before.get("n01.test"), "r{}", i + 1);
            }

            // Back on the same data: reconnected, a leader again, s01 still there.
            fleet.etcd.restart(0).await;
            fleet
                .wait_metric(
                    &all,
                    "portcullis_cluster_store_up",
                    Duration::from_secs(20),
                    |v| v == 1.0,
                )
                .await;
            let leader = fleet.wait_leader(Duration::from_secs(15), None).await;
            let after_restart = fleet
                .wait_served_sites(&all, &s01, Duration::from_secs(10), |_, _| true)
                .await;
            assert_eq!(before, after_restart);

            // One follower's watch down; s02 issued and stored meanwhile; history compacted.
            let cut = fleet.others(leader)[0];
            fleet.replicas[cut].partition();
            fleet.balance_except(cut);
            fleet.acme.fail_new_orders(None);
            let others = fleet.others(cut);
            fleet
                .wait_served(&others, Duration::from_secs(40), |_, _| true)
                .await;
            let revision = fleet.store.revision().await;
            fleet.store.compact(revision).await;
            fleet.replicas[cut].heal();
            fleet.balance();

            // The cut-off replica's watch resumes behind the compaction: it lists again.
            let served = fleet
                .wait_served(&all, Duration::from_secs(20), |_, _| true)
                .await;
            assert_eq!(served.get("n01.test"), before.get("n01.test"));
            let placed = fleet.acme.placed();
            for name in ["n01.test", "n02.test"] {
                let n = placed.iter().filter(|e| e.names == [name]).count();
                assert_eq!(n, 1, "certificates ordered for {name}: {placed:?}");
            }
            assert_eq!(fleet.store.list("certs/").await.len(), 2);
        },
    )
    .await;
}
