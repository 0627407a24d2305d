//! A Lease conflict: the issuer's Lease taken by another holder (written with the Lease's
//! resourceVersion, as any client-go elector would) while the issuer holds it. The issuer
//! steps down at its next renewal, no replica leads while the other holder's lease runs, and
//! once it has run out a replica takes the Lease with a token above the other holder's.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use portcullis_tests::wait;

use super::api::{self, ISSUER_LEASE, NS};
use super::fleet::{LEASE, Options, takeover, with_fleet};

const INTRUDER: &str = "someone-else";

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_a_lease_taken_by_another_holder_stops_the_issuer_until_it_expires() {
    with_fleet(
        "fake API Lease conflict",
        Options::default(),
        async |fleet| {
            fleet.start().await;
            let all = fleet.all();
            let old = fleet.wait_leader(Duration::from_secs(15), None).await;
            let serials = fleet
                .wait_served(&all, Duration::from_secs(60), |_, _| true)
                .await;

            // Taken over the issuer's head; a renewal racing us makes our PUT a 409: again.
            let taken = wait::until(Duration::from_secs(5), "the Lease taken", || async {
                let mut lease = fleet.api.get::<Lease>(NS, ISSUER_LEASE).unwrap();
                let spec = lease.spec.get_or_insert_with(Default::default);
                let token = spec.lease_transitions.unwrap_or(0) + 1;
                let now = MicroTime(Timestamp::now());
                spec.holder_identity = Some(INTRUDER.to_owned());
                spec.lease_transitions = Some(token);
                spec.lease_duration_seconds = Some(i32::try_from(LEASE.as_secs()).unwrap());
                spec.acquire_time = Some(now.clone());
                spec.renew_time = Some(now);
                fleet.api.try_replace(&lease).ok().map(|_| i64::from(token))
            })
            .await;
            let at = Instant::now();

            // The issuer notices at its next renewal (every third of a lease) and steps down.
            fleet
                .wait_metric(&[old], "portcullis_cluster_leader", LEASE, |v| v == 0.0)
                .await;
            // Nobody else leads while the other holder's lease runs (seen from the replicas'
            // own clocks: a whole lease from when each first saw it).
            while at.elapsed() < LEASE * 2 / 3 {
                let lease = fleet.issuer();
                assert_eq!(lease.holder.as_deref(), Some(INTRUDER), "{lease:?}");
                let leaders = fleet.metrics(&all, "portcullis_cluster_leader", &[]).await;
                assert_eq!(leaders.iter().sum::<f64>(), 0.0, "{leaders:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }

            // Not renewed, it runs out: a replica takes the Lease, above the other's token.
            let new = fleet
                .wait_leader(takeover() + Duration::from_secs(3), None)
                .await;
            let lease = fleet.issuer();
            assert!(lease.transitions > taken, "{lease:?} after token {taken}");
            eprintln!(
                "{} took the Lease {:?} after the conflict (token {taken} -> {})",
                fleet.replicas[new].name,
                at.elapsed(),
                lease.transitions
            );
            assert!(at.elapsed() >= LEASE, "taken back after {:?}", at.elapsed());
            let leaders = fleet.metrics(&all, "portcullis_cluster_leader", &[]).await;
            assert_eq!(leaders.iter().sum::<f64>(), 1.0, "{leaders:?}");

            // Serving went on throughout; nothing was ordered again.
            let after = fleet
                .wait_served(&all, Duration::from_secs(5), |_, _| true)
                .await;
            assert_eq!(after, serials);
            assert_eq!(fleet.acme.new_orders(), 1);
            let secret = api::secret(&fleet.api, "certs/s01").unwrap();
            assert!(api::token_of(&secret).unwrap() < taken);
        },
    )
    .await;
}
