//! Bad records under `certs/` (not JSON, a chain for other names, a key that does not match,
//! a format from a newer version) are skipped and counted: every replica keeps serving the
//! certificate it had, and none crashes.

use std::time::Duration;

use portcullis_tests::plain;
use portcullis_tests::wait;
use serde_json::Value;

use super::fleet::{Fleet, Options, bounded, slot};
use super::store::leaf_of;

const BAD: &str = "portcullis_cluster_bad_records_total";

#[tokio::test(flavor = "multi_thread")]
async fn bad_records_in_the_store_are_skipped_counted_and_never_served() {
    let _slot = slot(1).await;
    let mut fleet = Fleet::new(Options {
        sites: 2,
        ..Options::default()
    })
    .await;
    bounded(Duration::from_secs(100), "bad data", async {
        fleet.start().await;
        let all = [0, 1, 2];
        let serials = fleet
            .wait_served(&all, Duration::from_secs(60), |_, _| true)
            .await;
        let good1 = fleet.store.cert_record("s01").await.unwrap();
        let good2 = fleet.store.cert_record("s02").await.unwrap();
        let with = |base: &Value, changes: &[(&str, Value)]| {
            let mut v = base.clone();
            for (k, x) in changes {
                v[*k] = x.clone();
            }
            v.to_string()
        };
        let bad = [
            (
                "not JSON",
                "{\"format\": 1, \"site\": \"s01\", \"chain_pem\": ".to_owned(),
            ),
            (
                "a chain for other names",
                with(
                    &good2,
                    &[
                        ("site", "s01".into()),
                        ("names", serde_json::json!(["n01.test"])),
                    ],
                ),
            ),
            (
                "a key that does not match",
                with(&good1, &[("key_pem", good2["key_pem"].clone())]),
            ),
            ("format 99", with(&good1, &[("format", 99.into())])),
        ];
        for (what, value) in bad {
            let mut counted = Vec::new();
            for &i in &all {
                counted.push(fleet.replicas[i].metric(BAD, &[]).await);
            }
            fleet.store.put("certs/s01", &value).await;
            for &i in &all {
                let r = &fleet.replicas[i];
                let before = counted[i];
                wait::until(
                    Duration::from_secs(10),
                    &format!("{} to count {what}", r.name),
                    || async move { (r.metric(BAD, &[]).await > before).then_some(()) },
                )
                .await;
            }
            // Alive, and serving the certificate it had (or a valid one the issuer stored
            // since to repair the record), never the bad one.
            for &i in &all {
                let r = &fleet.replicas[i];
                let health = plain::get(r.admin, "localhost", "/healthz").await;
                assert_eq!(health.status, 200, "{} after {what}", r.name);
                let repaired = fleet
                    .store
                    .cert_record("s01")
                    .await
                    .filter(|v| v["format"] == 1)
                    .and_then(|v| leaf_of(v["chain_pem"].as_str()?))
                    .map(|l| portcullis_tls::CertInfo::parse(&l).unwrap().serial);
                let served = fleet
                    .served(i, "n01.test")
                    .await
                    .map(|l| portcullis_tls::CertInfo::parse(&l).unwrap().serial);
                assert!(
                    served.as_ref() == serials.get("n01.test")
                        || (served.is_some() && served == repaired),
                    "{} serves {served:?} for n01.test after {what} (had {:?})",
                    r.name,
                    serials.get("n01.test")
                );
                let other = fleet
                    .served(i, "n02.test")
                    .await
                    .map(|l| portcullis_tls::CertInfo::parse(&l).unwrap().serial);
                assert_eq!(other.as_ref(), serials.get("n02.test"), "{}", r.name);
            }
        }
    })
    .await;
}
