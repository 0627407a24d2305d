//! The issuer lost mid-order, on the Lease `portcullis-issuer`: killed right after the CA
//! created its order (another replica takes the Lease and resumes the recorded order, or
//! places at most one more when the kill came before the record), and paused past its lease (another takes over; the woken
//! ex-issuer's writes are refused, and nothing it writes is in the store).

use std::time::{Duration, Instant};

use portcullis_tests::acme_proxy::Kind;
use portcullis_tests::wait;

use super::api;
use super::fleet::{LEASE, Options, takeover, with_fleet};

/// Holds the issuer right after the CA answered its new order and SIGKILLs it: at once
/// (`recorded` false: the order may or may not be recorded yet), or once its next request
/// to the CA is out (`recorded` true: the order's record is written before any further
/// request). Another replica takes the Lease with a new token and resumes the recorded
/// order (the same URL asked for again), or places at most one more; every replica,
/// the killed one restarted, serves the one certificate stored.
async fn kill_the_issuer_after_new_order(recorded: bool) {
    with_fleet("fake API kill the issuer", Options::default(), async |fleet| {
        fleet.acme.pause_after(Kind::NewOrder);
        fleet.start().await;
        fleet.acme.wait_paused(Duration::from_secs(40)).await;
        let old = fleet.wait_leader(Duration::from_secs(5), None).await;
        let before = fleet.issuer();
        let placed = fleet.acme.placed();
        assert_eq!(placed.len(), 1, "{placed:?}");
        let url = placed[0].order.clone().unwrap();
        if recorded {
            wait::until(Duration::from_secs(10), "the issuer's next request", || async {
                (fleet.acme.held() >= 1).then_some(())
            })
            .await;
        }

        let killed_at = Instant::now();
        fleet.replicas[old].kill();
        fleet.balance();
        let persisted = api::record(&fleet.api, "orders/s01");
        fleet.acme.resume();

        // Another replica takes the Lease, with a new token.
        let new = fleet
            .wait_leader(takeover() + Duration::from_secs(3), Some(old))
            .await;
        let took = killed_at.elapsed();
        assert!(took <= takeover(), "the takeover took {took:?}");
        let after = fleet.issuer();
        let new_name = fleet.replicas[new].name.clone();
        assert_eq!(after.holder.as_deref(), Some(new_name.as_str()));
        assert!(
            after.transitions > before.transitions,
            "leaseTransitions {before:?} -> {after:?}"
        );

        let others = fleet.others(old);
        fleet
            .wait_served(&others, Duration::from_secs(60), |_, r| {
                r["issued_by"] == new_name.as_str()
            })
            .await;
        let cert = api::secret(&fleet.api, "certs/s01").unwrap();
        assert_eq!(api::token_of(&cert), Some(fleet.issuer().transitions));

        // The recorded order resumed (the same URL asked for again), or at most one more.
        let orders = fleet.acme.orders_for("n01.test");
        let resumed = fleet
            .acme
            .requests_for_order(&url)
            .iter()
            .any(|e| e.at > killed_at);
        let persisted_url = persisted.as_ref().and_then(|o| o["url"].as_str());
        eprintln!(
            "takeover in {took:?}, token {} -> {}; order recorded: {}; resumed: {resumed}; orders: {orders}",
            before.transitions,
            after.transitions,
            persisted_url == Some(url.as_str())
        );
        if recorded {
            assert_eq!(persisted_url, Some(url.as_str()), "orders/s01: {persisted:?}");
        }
        if persisted_url == Some(url.as_str()) {
            assert!(resumed, "the recorded order {url} was not resumed");
            assert_eq!(orders, 1, "a new order although {url} was recorded");
        } else {
            assert!(orders <= 2, "{orders} orders for one name");
            assert!(resumed || orders == 2);
        }

        // The killed replica comes back as a follower and serves the stored certificate.
        fleet.replicas[old].start().await;
        fleet.balance();
        fleet
            .wait_served(&fleet.all(), Duration::from_secs(15), |_, r| {
                r["issued_by"] == new_name.as_str()
            })
            .await;
        assert_eq!(fleet.acme.orders_for("n01.test"), orders);
        assert_eq!(fleet.issuer().holder.as_deref(), Some(new_name.as_str()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_killing_the_issuer_right_after_new_order_costs_at_most_one_more_order() {
    kill_the_issuer_after_new_order(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_killing_the_issuer_once_its_order_is_recorded_has_the_new_issuer_resume_it() {
    kill_the_issuer_after_new_order(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_an_issuer_paused_past_its_lease_is_fenced_and_the_secret_carries_the_new_token() {
    with_fleet("fake API pause the issuer", Options::default(), async |fleet| {
        fleet.acme.pause_after(Kind::NewOrder);
        fleet.start().await;
        fleet.acme.wait_paused(Duration::from_secs(40)).await;
        let old = fleet.wait_leader(Duration::from_secs(5), None).await;
        let old_token = fleet.issuer().transitions;
        let fenced = "portcullis_cluster_fenced_writes_total";
        let fenced_before = fleet.replicas[old].metric(fenced, &[]).await;
        // Its next request to the CA is out (held): it is mid-order.
        wait::until(Duration::from_secs(10), "the issuer's next request", || async {
            (fleet.acme.held() >= 1).then_some(())
        })
        .await;

        // Paused mid-order: its next request is answered while it sleeps.
        fleet.replicas[old].stop();
        let stopped_at = fleet.api.resource_version().parse::<u64>().unwrap();
        fleet.balance();
        fleet.acme.resume();
        let new = fleet
            .wait_leader(takeover() + Duration::from_secs(3), Some(old))
            .await;
        let new_name = fleet.replicas[new].name.clone();
        let new_token = fleet.issuer().transitions;
        assert!(new_token > old_token, "tokens {old_token} -> {new_token}");
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
        eprintln!(
            "tokens {old_token} -> {new_token}; fenced writes on the ex-issuer {fenced_before} -> {}",
            fleet.replicas[old].metric(fenced, &[]).await
        );
        tokio::time::sleep(LEASE).await;
        assert_eq!(
            fleet.replicas[old]
                .metric("portcullis_cluster_leader", &[])
                .await,
            0.0
        );
        let cert = api::secret(&fleet.api, "certs/s01").unwrap();
        assert_eq!(api::token_of(&cert), Some(new_token));
        let record = api::cert_record(&fleet.api, "s01").unwrap();
        assert_eq!(record["issued_by"], new_name.as_str(), "{record}");
        assert_eq!(record["token"], new_token, "{record}");
        // Nothing under an older token was written once the ex-issuer was paused.
        for s in api::store_secrets(&fleet.api) {
            let token = api::token_of(&s).unwrap_or_default();
            assert!(
                token >= new_token || api::revision_of(&s) <= stopped_at,
                "{:?} ({:?}) written under token {token} at {} after the pause (at {stopped_at})",
                s.metadata.name,
                api::key_of(&s),
                api::revision_of(&s)
            );
        }
        assert_eq!(fleet.issuer().holder.as_deref(), Some(new_name.as_str()));
        assert!(fleet.acme.orders_for("n01.test") <= 2);

        // And it serves what the new issuer stored.
        fleet.balance();
        fleet
            .wait_served(&fleet.all(), Duration::from_secs(15), |_, r| {
                r["issued_by"] == new_name.as_str()
            })
            .await;
    })
    .await;
}
