//! A crash loop cannot burn the CA's limits: the issuer restarted 10 times while every new
//! order fails places no more orders than the persisted backoff allows.

use std::time::Duration;

use portcullis_tests::acme_proxy::{Failure, Kind};

use super::fleet::{Fleet, LEASE, Options, bounded, slot};

const INITIAL: Duration = Duration::from_secs(2);
const MAX: Duration = Duration::from_secs(30);

/// Attempts one replica following the backoff could make in `elapsed` from the first:
/// the first, then one after each wait (`INITIAL` doubling up to `MAX`, less its 10%
/// jitter).
fn allowed(elapsed: Duration) -> usize {
    let (mut at, mut wait, mut n) = (Duration::ZERO, INITIAL, 1);
    loop {
        at += wait.min(MAX).mul_f64(0.9);
        if at > elapsed {
            return n;
        }
        n += 1;
        wait *= 2;
    }
}

#[test]
fn the_allowance_follows_the_doubling() {
    assert_eq!(allowed(Duration::from_secs(1)), 1);
    assert_eq!(allowed(Duration::from_secs(2)), 2);
    // 0, 1.8, 5.4, 12.6, 27, 54
    assert_eq!(allowed(Duration::from_secs(40)), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_the_issuer_10_times_during_a_failing_order_stays_within_the_backoff() {
    let _slot = slot(1).await;
    let mut fleet = Fleet::new(Options {
        acme: format!(
            "backoff: {{initial: {}s, max: {}s}}",
            INITIAL.as_secs(),
            MAX.as_secs()
        ),
        ..Options::default()
    })
    .await;
    fleet.acme.fail_new_orders(Some(Failure::RateLimited));
    bounded(Duration::from_secs(130), "the crash loop", async {
        fleet.start().await;
        let first =
            portcullis_tests::wait::until(Duration::from_secs(30), "a first order", || async {
                let e = fleet.acme.exchanges();
                e.into_iter()
                    .find(|e| e.kind == Kind::NewOrder)
                    .map(|e| e.at)
            })
            .await;
        for _ in 0..10 {
            let issuer = fleet
                .wait_leader(LEASE * 2 + Duration::from_secs(5), None)
                .await;
            fleet.replicas[issuer].kill();
            fleet.replicas[issuer].start().await;
            fleet.balance();
        }
        fleet
            .wait_leader(LEASE * 2 + Duration::from_secs(5), None)
            .await;
        let elapsed = first.elapsed();
        let attempts = fleet.acme.new_orders();
        let limit = allowed(elapsed) + 2;
        assert!(
            attempts <= limit,
            "{attempts} new orders in {elapsed:?} of 10 restarts; the backoff allows {} (+2)",
            allowed(elapsed)
        );
        assert!(attempts >= 2, "only {attempts} attempt in {elapsed:?}");
        assert_eq!(fleet.acme.placed().len(), 0);
        let history = fleet.store.get("history/s01").await.expect("history/s01");
        let h = history.json();
        assert!(h["failures"].as_u64().unwrap_or(0) >= 1, "{h}");
        assert!(h["orders"].as_array().is_some_and(|o| !o.is_empty()), "{h}");
    })
    .await;
}
