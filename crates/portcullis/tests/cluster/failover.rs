//! The issuer lost at each step of an order: killed (a new issuer resumes the order it
//! persisted, or places at most one more), paused past its lease (its late writes are
//! refused), partitioned from etcd (another takes over within two lease times while it
//! keeps serving what it has).

use std::time::{Duration, Instant};

use portcullis_tests::acme_proxy::Kind;

use super::fleet::{Fleet, LEASE, Options, bounded, slot};

/// How long a takeover may take: the dead issuer's lease runs out, another is elected.
fn takeover() -> Duration {
    LEASE * 2 + Duration::from_secs(1)
}

/// Holds the issuer right after its answer of `step`, SIGKILLs it, and checks that a new
/// issuer takes over, resumes the persisted order (or places at most one more), and that
/// every replica — the killed one restarted too — serves the one certificate stored.
async fn kill_the_issuer_after(step: Kind) {
    let _slot = slot(1).await;
    let mut fleet = Fleet::new(Options::default()).await;
    fleet.acme.pause_after(step);
    bounded(Duration::from_secs(100), "kill the issuer", async {
        fleet.start().await;
        fleet.acme.wait_paused(Duration::from_secs(40)).await;
        let issuer = fleet.wait_leader(Duration::from_secs(5), None).await;
        let placed = fleet.acme.placed();
        assert_eq!(placed.len(), 1, "{placed:?}");
        let url = placed[0].order.clone().unwrap();

        let killed_at = Instant::now();
        fleet.replicas[issuer].kill();
        fleet.balance();
        let persisted = fleet.store.get("orders/s01").await.map(|kv| kv.json());
        fleet.acme.resume();

        let next = fleet
            .wait_leader(takeover() + Duration::from_secs(3), Some(issuer))
            .await;
        let took = killed_at.elapsed();
        assert!(took <= takeover(), "the takeover took {took:?}");
        let next_name = fleet.replicas[next].name.clone();
        let others = fleet.others(issuer);
        fleet
            .wait_served(&others, Duration::from_secs(60), |_, r| {
                r["issued_by"] == next_name.as_str()
            })
            .await;

        let orders = fleet.acme.orders_for("n01.test");
        let resumed = fleet
            .acme
            .requests_for_order(&url)
            .iter()
            .any(|e| e.at > killed_at);
        let persisted_url = persisted.as_ref().and_then(|o| o["url"].as_str());
        if step == Kind::Finalize {
            // Finalized: the order and its key were persisted before, and must be resumed.
            assert_eq!(
                persisted_url,
                Some(url.as_str()),
                "orders/s01: {persisted:?}"
            );
        }
        if persisted_url == Some(url.as_str()) {
            assert!(resumed, "the persisted order {url} was not resumed");
            assert_eq!(orders, 1, "a new order although {url} was persisted");
        } else {
            assert!(orders <= 2, "{orders} orders for one name");
            assert!(resumed || orders == 2);
        }

        // The killed replica comes back as a follower and serves the stored certificate.
        fleet.replicas[issuer].start().await;
        fleet.balance();
        fleet
            .wait_served(&[0, 1, 2], Duration::from_secs(15), |_, r| {
                r["issued_by"] == next_name.as_str()
            })
            .await;
        assert_eq!(fleet.acme.orders_for("n01.test"), orders);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_issuer_right_after_new_order_costs_at_most_one_more_order() {
    kill_the_issuer_after(Kind::NewOrder).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_issuer_after_challenge_ready_costs_at_most_one_more_order() {
    kill_the_issuer_after(Kind::ChallengeReady).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_issuer_after_finalize_has_the_new_issuer_resume_the_same_order() {
    kill_the_issuer_after(Kind::Finalize).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_issuer_resumed_past_its_lease_has_its_writes_refused() {
    let _slot = slot(1).await;
    let mut fleet = Fleet::new(Options::default()).await;
    fleet.acme.pause_after(Kind::NewOrder);
    bounded(Duration::from_secs(100), "pause the issuer", async {
        fleet.start().await;
        fleet.acme.wait_paused(Duration::from_secs(40)).await;
        let old = fleet.wait_leader(Duration::from_secs(5), None).await;
        let fenced = "portcullis_cluster_fenced_writes_total";
        let fenced_before = fleet.replicas[old].metric(fenced, &[]).await;
        // Its next request to the CA is out (held): it is mid-order.
        portcullis_tests::wait::until(
            Duration::from_secs(10),
            "the issuer's next request",
            || async { (fleet.acme.held() >= 1).then_some(()) },
        )
        .await;

        // Paused mid-order: its next request is answered while it sleeps.
        fleet.replicas[old].stop();
        fleet.balance();
        fleet.acme.resume();
        let new = fleet
            .wait_leader(takeover() + Duration::from_secs(3), Some(old))
            .await;
        let new_name = fleet.replicas[new].name.clone();
        fleet
            .wait_served(&fleet.others(old), Duration::from_secs(60), |_, r| {
                r["issued_by"] == new_name.as_str()
            })
            .await;

        // Woken past its lease, it carries on with its order: every write is refused.
        fleet.replicas[old].cont();
        fleet
            .wait_metric(&[old], fenced, Duration::from_secs(20), |v| {
                v > fenced_before
            })
            .await;
        tokio::time::sleep(LEASE).await;
        let record = fleet.store.cert_record("s01").await.unwrap();
        assert_eq!(record["issued_by"], new_name.as_str(), "{record}");
        assert_eq!(
            fleet.replicas[old]
                .metric("portcullis_cluster_leader", &[])
                .await,
            0.0
        );
        // And it serves what the new issuer stored.
        fleet.balance();
        fleet
            .wait_served(&[0, 1, 2], Duration::from_secs(15), |_, r| {
                r["issued_by"] == new_name.as_str()
            })
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_partitioned_from_etcd_is_replaced_within_two_leases_and_keeps_serving() {
    let _slot = slot(1).await;
    let mut fleet = Fleet::new(Options {
        etcd_members: 3,
        sites: 2,
        ..Options::default()
    })
    .await;
    bounded(Duration::from_secs(100), "partition the issuer", async {
        fleet.start().await;
        let old = fleet.wait_leader(Duration::from_secs(15), None).await;
        let before = fleet
            .wait_served(&[0, 1, 2], Duration::from_secs(60), |_, _| true)
            .await;
        let served_before: Vec<_> = {
            let mut v = Vec::new();
            for name in fleet.names() {
                v.push(fleet.served(old, &name).await.unwrap());
            }
            v
        };

        let cut = Instant::now();
        fleet.replicas[old].partition();
        let new = fleet
            .wait_leader(takeover() + Duration::from_secs(5), Some(old))
            .await;
        let took = cut.elapsed();
        assert!(
            took <= LEASE * 2,
            "{} took over {took:?} after the partition",
            fleet.replicas[new].name
        );

        // The old issuer knows it is cut off and no longer leads, and serves all it had.
        fleet
            .wait_metric(
                &[old],
                "portcullis_cluster_store_up",
                Duration::from_secs(15),
                |v| v == 0.0,
            )
            .await;
        fleet
            .wait_metric(
                &[old],
                "portcullis_cluster_leader",
                Duration::from_secs(5),
                |v| v == 0.0,
            )
            .await;
        for (name, leaf) in fleet.names().iter().zip(&served_before) {
            assert_eq!(fleet.served(old, name).await.as_ref(), Some(leaf), "{name}");
        }
        fleet
            .wait_metric(
                &[old],
                "portcullis_cluster_store_stale_seconds",
                Duration::from_secs(10),
                |v| v >= 2.0,
            )
            .await;

        // Healed, it catches up; nothing was ordered twice.
        fleet.replicas[old].heal();
        fleet
            .wait_metric(
                &[old],
                "portcullis_cluster_store_up",
                Duration::from_secs(15),
                |v| v == 1.0,
            )
            .await;
        let after = fleet
            .wait_served(&[0, 1, 2], Duration::from_secs(15), |_, _| true)
            .await;
        assert_eq!(before, after);
        assert_eq!(fleet.acme.new_orders(), 2);
    })
    .await;
}
