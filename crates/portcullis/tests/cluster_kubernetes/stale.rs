//! Reader-side fencing, the Kubernetes store's half of the fencing argument: a Secret's
//! token marks who wrote it, and "a write under an older token than one already seen for
//! that key is ignored" (docs/cluster.md). A former issuer's late write (a good certificate,
//! under a token below the one every replica has seen for the key) must be served by no
//! replica — the issuer included, whose order for that site is retrying meanwhile and
//! re-reads the store before each attempt.

use std::time::{Duration, Instant};

use portcullis_tests::acme_proxy::Failure;
use portcullis_tests::{TestCa, wait};

use super::api;
use super::fleet::{Options, with_fleet};

const BAD: &str = "portcullis_cluster_bad_records_total";

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_a_certificate_written_under_an_older_token_is_served_by_no_replica() {
    let opts = Options {
        sites: 2,
        // s02's attempts fail (below) and are retried every 3 s: the issuer re-reads the
        // store before each.
        acme: "backoff: {initial: 3s, max: 3s}".to_owned(),
        ..Options::default()
    };
    with_fleet("fake API older token", opts, async |fleet| {
        fleet
            .acme
            .fail_new_orders_for(&["n02.test"], Failure::ServerInternal);
        fleet.start().await;
        let all = fleet.all();
        let issuer = fleet.wait_leader(Duration::from_secs(15), None).await;
        let s01 = ["s01".to_owned()];
        fleet
            .wait_served_sites(&all, &s01, Duration::from_secs(30), |_, _| true)
            .await;
        wait::until(Duration::from_secs(10), "an order for n02.test", || async {
            (fleet.acme.orders_for("n02.test") >= 1).then_some(())
        })
        .await;

        // certs/s02 written under the current token, unusable: each replica has now seen
        // that token for the key (and counted the record).
        let token = fleet.issuer().transitions;
        let before = fleet.metrics(&all, BAD, &[("kind", "malformed")]).await;
        api::create(&fleet.api, "certs/s02", br#"{"format": 1}"#.to_vec(), token);
        for &i in &all {
            let r = &fleet.replicas[i];
            let counted = before[i];
            wait::until(
                Duration::from_secs(5),
                &format!("{} to count it", r.name),
                || async move {
                    (r.metric(BAD, &[("kind", "malformed")]).await > counted).then_some(())
                },
            )
            .await;
        }

        // Then a good certificate for s02 under the token before: a former issuer's write.
        let ca = TestCa::new("a former issuer's late write");
        let late = ca.leaf(&["n02.test"]);
        let value = api::cert_value("s02", &["n02.test".to_owned()], &late, token - 1);
        api::overwrite(&fleet.api, "certs/s02", value, Some(token - 1));
        let written = Instant::now();
        let attempts = fleet.acme.orders_for("n02.test");

        // Through two of the issuer's retries, nobody serves it.
        while written.elapsed() < Duration::from_secs(7) {
            for &i in &all {
                let served = fleet.served_under(i, "n02.test", &ca.root_der).await;
                assert!(
                    served.is_none(),
                    "{}{} serves certs/s02 written under token {} after token {token} \
                     ({:?} after the write; its order for n02.test was attempted {} times, \
                     {attempts} before the write)",
                    fleet.replicas[i].name,
                    if i == issuer { " (the issuer)" } else { "" },
                    token - 1,
                    written.elapsed(),
                    fleet.acme.orders_for("n02.test")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            fleet.acme.orders_for("n02.test") > attempts,
            "the issuer did not try s02 again meanwhile"
        );
    })
    .await;
}
