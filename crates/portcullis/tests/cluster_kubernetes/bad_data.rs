//! Bad Secrets in the store: a value that is not a record, a record of a newer format (both
//! skipped and counted), a labelled Secret without the store's annotations (ignored). Every
//! replica keeps serving the certificate it had and none crashes.

use std::time::Duration;

use portcullis_tests::wait;
use serde_json::Value;

use super::api;
use super::fleet::{Options, with_fleet};

const BAD: &str = "portcullis_cluster_bad_records_total";

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_bad_secrets_are_skipped_counted_and_never_served() {
    let opts = Options {
        sites: 2,
        ..Options::default()
    };
    with_fleet("fake API bad data", opts, async |fleet| {
        fleet.start().await;
        let all = fleet.all();
        let serials = fleet
            .wait_served(&all, Duration::from_secs(60), |_, _| true)
            .await;
        let good = api::cert_record(&fleet.api, "s01").unwrap();
        let mut newer = good.clone();
        newer["format"] = Value::from(99);
        let bad = [
            (
                "not a record",
                "malformed",
                b"\x00garbage, not JSON".to_vec(),
            ),
            ("format 99", "newer_format", newer.to_string().into_bytes()),
        ];
        for (what, kind, value) in bad {
            let before = fleet.metrics(&all, BAD, &[("kind", kind)]).await;
            // Under the Secret's own token and resourceVersion, as its issuer would write.
            api::overwrite(&fleet.api, "certs/s01", value, None);
            for &i in &all {
                let r = &fleet.replicas[i];
                let counted = before[i];
                wait::until(
                    Duration::from_secs(10),
                    &format!("{} to count {what} as {kind}", r.name),
                    || async move {
                        (r.metric(BAD, &[("kind", kind)]).await > counted).then_some(())
                    },
                )
                .await;
            }
            still_serving(fleet, &serials, what).await;
        }

        // Someone else's Secret carrying the store's labels, without its annotations.
        let mut stray = api::secret(&fleet.api, "certs/s02").unwrap();
        stray.metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("not-portcullis".to_owned()),
            namespace: Some(api::NS.to_owned()),
            labels: stray.metadata.labels.clone(),
            ..Default::default()
        };
        fleet.api.create(&stray);

        // Nothing changed for it: every replica still serves what it had.
        still_serving(fleet, &serials, "a stray labelled Secret").await;
    })
    .await;
}

/// Every replica is alive and serves, for every host, the certificate it had.
async fn still_serving(
    fleet: &super::fleet::Fleet,
    serials: &std::collections::BTreeMap<String, String>,
    what: &str,
) {
    for i in fleet.all() {
        let r = &fleet.replicas[i];
        assert_eq!(
            r.admin_get("/healthz").await.status,
            200,
            "{} after {what}",
            r.name
        );
        for name in fleet.names() {
            let served = fleet
                .served(i, &name)
                .await
                .map(|l| portcullis_tls::CertInfo::parse(&l).unwrap().serial);
            assert_eq!(
                served.as_ref(),
                serials.get(&name),
                "{} serves {name} after {what}",
                r.name
            );
        }
    }
}
