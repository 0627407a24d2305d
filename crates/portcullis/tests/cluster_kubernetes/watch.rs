//! Certificates reach every replica by watch: a renewed certificate stored in its Secret is
//! served by all within 5 s, and one stored while their watches were stalled, behind a
//! compaction (their next watch gets a 410), is too, through a fresh list.

use std::time::{Duration, Instant};

use portcullis_tests::{TestCa, wait};

use super::api;
use super::fleet::{Options, with_fleet};

/// The bound for a renewed certificate to reach every replica.
const PROPAGATION: Duration = Duration::from_secs(5);
const RELISTS: &str = "portcullis_cluster_relists_total";

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_renewed_certificates_reach_every_replica_by_watch_and_after_a_410_by_relist() {
    let opts = Options {
        sites: 2,
        ..Options::default()
    };
    with_fleet("fake API watch and 410", opts, async |fleet| {
        fleet.start().await;
        let all = fleet.all();
        fleet
            .wait_served(&all, Duration::from_secs(60), |_, _| true)
            .await;
        // A CA of the test's own stands for the renewal: its leaves outlive pebble's, so
        // each replica takes them as newer.
        let ca = TestCa::new("renewals");
        let renew = |site: &str, name: &str| {
            let key = format!("certs/{site}");
            let token = api::token_of(&api::secret(&fleet.api, &key).unwrap()).unwrap();
            let leaf = ca.leaf(&[name]);
            let value = api::cert_value(site, &[name.to_owned()], &leaf, token);
            api::overwrite(&fleet.api, &key, value, None);
            leaf.cert_der
        };

        // Live watches: stored, then served everywhere within 5 s.
        let relists = fleet.metrics(&all, RELISTS, &[]).await;
        let stored = Instant::now();
        let leaf = renew("s01", "n01.test");
        fleet
            .wait_leaf(&all, "n01.test", &leaf, &ca.root_der, PROPAGATION)
            .await;
        eprintln!("s01 renewed, served by all in {:?}", stored.elapsed());

        // Watches stalled; s02 renewed meanwhile; history compacted, then every watch ends.
        // Each replica watches again from the last version it saw, which is gone: 410.
        let lists = count_lists(fleet);
        fleet.api.stall_watches(true);
        let leaf = renew("s02", "n02.test");
        fleet.api.compact();
        fleet.api.drop_watches();
        fleet.api.stall_watches(false);
        let resumed = Instant::now();
        fleet
            .wait_leaf(&all, "n02.test", &leaf, &ca.root_der, PROPAGATION)
            .await;
        eprintln!(
            "s02 renewed behind a 410, served by all in {:?}",
            resumed.elapsed()
        );
        // Counted once the fresh read is whole (the certificate is served a moment before).
        for &i in &all {
            let r = &fleet.replicas[i];
            let before = relists[i];
            wait::until(
                Duration::from_secs(2),
                &format!("{} to re-list", r.name),
                || async move { (r.metric(RELISTS, &[]).await > before).then_some(()) },
            )
            .await;
        }
        assert!(
            count_lists(fleet) >= lists + 3,
            "secrets listed {} times, {lists} before the 410",
            count_lists(fleet)
        );
        // Both renewals everywhere; the store still answers; nothing was ordered again.
        fleet
            .wait_leaf(
                &all,
                "n01.test",
                &renewed(fleet, "s01"),
                &ca.root_der,
                PROPAGATION,
            )
            .await;
        for i in &all {
            assert_eq!(
                fleet.replicas[*i]
                    .metric("portcullis_cluster_store_up", &[])
                    .await,
                1.0
            );
        }
        assert_eq!(fleet.acme.new_orders(), 2);
    })
    .await;
}

/// Lists of the store's Secrets so far (each replica's reads of the whole store).
fn count_lists(fleet: &super::fleet::Fleet) -> usize {
    fleet
        .api
        .calls()
        .iter()
        .filter(|c| c.verb == "list" && c.resource == "secrets")
        .count()
}

/// The leaf `certs/<site>` holds now.
fn renewed(fleet: &super::fleet::Fleet, site: &str) -> rustls::pki_types::CertificateDer<'static> {
    let r = api::cert_record(&fleet.api, site).unwrap();
    api::leaf_of(r["chain_pem"].as_str().unwrap()).unwrap()
}
