//! A fleet starting on an empty namespace: one order per name for the whole fleet, every
//! replica serving every certificate, and the store's objects laid out as documented.

use std::time::Duration;

use portcullis_tests::ApiCall;

use super::api;
use super::fleet::{Options, with_fleet};

const SITES: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_cold_start_of_3_replicas_orders_each_of_10_names_once_and_all_serve_all() {
    let opts = Options {
        sites: SITES,
        ..Options::default()
    };
    with_fleet("fake API cold start", opts, async |fleet| {
        assert!(
            api::store_secrets(&fleet.api).is_empty(),
            "the namespace starts empty"
        );
        fleet.start().await;
        let leader = fleet.wait_leader(Duration::from_secs(15), None).await;
        let leader_name = fleet.replicas[leader].name.clone();
        let all = fleet.all();
        let serials = fleet
            .wait_served(&all, Duration::from_secs(90), |_, r| {
                r["issued_by"] == leader_name.as_str()
            })
            .await;
        assert_eq!(serials.len(), SITES);

        // Exactly one order per name, fleet-wide, and nothing else ordered.
        for name in fleet.names() {
            assert_eq!(fleet.acme.orders_for(&name), 1, "orders for {name}");
        }
        assert_eq!(fleet.acme.new_orders(), SITES);
        assert_eq!(fleet.acme.placed().len(), SITES);
        assert_eq!(fleet.acme.finalizes(), SITES);

        // The Lease names the issuer; every certificate Secret is laid out as documented
        // and was written under the issuer's token.
        let lease = fleet.issuer();
        assert_eq!(lease.holder.as_deref(), Some(leader_name.as_str()));
        assert!(lease.transitions >= 1, "{lease:?}");
        for site in fleet.sites() {
            let key = format!("certs/{site}");
            let s = api::secret(&fleet.api, &key).unwrap();
            let name = s.metadata.name.clone().unwrap();
            let hash = name.strip_prefix("portcullis-store-").unwrap_or_default();
            assert!(
                hash.len() == 20 && hash.chars().all(|c| c.is_ascii_hexdigit()),
                "{key} is in Secret {name}"
            );
            assert_eq!(s.type_.as_deref(), Some("Opaque"), "{name}");
            assert_eq!(api::token_of(&s), Some(lease.transitions), "{name}");
            let r = api::cert_record(&fleet.api, &site).unwrap();
            assert_eq!(r["format"], 1, "{site}");
            assert_eq!(r["site"], site.as_str());
            assert_eq!(r["token"], lease.transitions, "{site}");
            assert!(r["key_pem"].is_string(), "{site}: the key, in the clear");
        }
        // Orders done, their records cleared; each replica reports in a Lease of its own.
        assert!(
            api::store_secrets(&fleet.api)
                .iter()
                .all(|s| !api::key_of(s).unwrap_or_default().starts_with("orders/")),
            "recorded orders left behind"
        );
        let reports = api::node_leases(&fleet.api);
        assert_eq!(reports.len(), 3, "{reports:?}");

        // Followed by watches, not by polling: every replica watches the store's Secrets.
        let calls = fleet.api.calls();
        let count = |verb: &str| {
            calls
                .iter()
                .filter(|c: &&ApiCall| c.verb == verb && c.resource == "secrets")
                .count()
        };
        assert!(count("watch") >= 3, "{} watches of secrets", count("watch"));

        // One issuer, and it alone ordered; the others took the certificates from the store.
        let leaders = fleet.metrics(&all, "portcullis_cluster_leader", &[]).await;
        assert_eq!(leaders.iter().sum::<f64>(), 1.0, "{leaders:?}");
        for (i, r) in fleet.replicas.iter().enumerate() {
            assert_eq!(r.metric("portcullis_cluster_store_up", &[]).await, 1.0);
            let issued = r
                .metric("portcullis_cluster_orders_total", &[("result", "issued")])
                .await;
            let failed = r
                .metric("portcullis_cluster_orders_total", &[("result", "failed")])
                .await;
            let adopted = r
                .metric("portcullis_cluster_certificates_adopted_total", &[])
                .await;
            if i == leader {
                assert_eq!((issued, failed), (SITES as f64, 0.0), "{}", r.name);
            } else {
                assert_eq!((issued, failed), (0.0, 0.0), "{} orders nothing", r.name);
                assert_eq!(adopted, SITES as f64, "{} adopted", r.name);
            }
        }

        // Nothing failed on the way: no order step, no write to a replica's local cache.
        // (Seen failing: the issuer's own save of a certificate it just issued races with
        // its watch-fed adoption of the same certificate, both writing
        // `sites/<site>/{key,cert}.tmp` in its storage; the loser's rename fails with
        // ENOENT and the order is reported failed at the `store` step, then retried.)
        for r in &fleet.replicas {
            let failures: Vec<String> = r
                .logs()
                .into_iter()
                .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
                .collect();
            assert!(
                failures.is_empty(),
                "{} logged:\n{}",
                r.name,
                failures.join("\n")
            );
        }
    })
    .await;
}
