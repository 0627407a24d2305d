//! A fleet starting on an empty store: one order per name for the whole fleet, every
//! replica serving every certificate; and validations answered by whichever replica the
//! round-robin balancer picks, for both challenge types.

use std::time::Duration;

use super::fleet::{Fleet, Options, bounded, slot};

#[tokio::test(flavor = "multi_thread")]
async fn cold_start_of_3_replicas_orders_each_of_20_names_once_and_all_serve_all() {
    let _slot = slot(2).await;
    let mut fleet = Fleet::new(Options {
        sites: 20,
        ..Options::default()
    })
    .await;
    bounded(Duration::from_secs(150), "the cold start", async {
        fleet.start().await;
        let leader = fleet.wait_leader(Duration::from_secs(15), None).await;
        let leader_name = fleet.replicas[leader].name.clone();
        let serials = fleet
            .wait_served(&[0, 1, 2], Duration::from_secs(120), |_, r| {
                r["issued_by"] == leader_name.as_str()
            })
            .await;
        assert_eq!(serials.len(), 20);

        // Exactly one order per name, fleet-wide, and nothing else ordered.
        for name in fleet.names() {
            assert_eq!(fleet.acme.orders_for(&name), 1, "orders for {name}");
        }
        assert_eq!(fleet.acme.new_orders(), 20);
        assert_eq!(fleet.acme.placed().len(), 20);
        assert_eq!(fleet.acme.finalizes(), 20);

        // Each stored record is whole and names the issuer; one issuer says so.
        for site in fleet.sites() {
            let r = fleet.store.cert_record(&site).await.unwrap();
            assert_eq!(r["format"], 1, "{site}");
            assert_eq!(r["site"], site.as_str());
            assert!(
                r["key_pem"].is_string() || r["key_sealed"].is_string(),
                "{site}"
            );
            assert!(r["issued_at"].as_u64().is_some(), "{site}");
        }
        let mut leaders = 0.0;
        for r in &fleet.replicas {
            leaders += r.metric("portcullis_cluster_leader", &[]).await;
            assert_eq!(r.metric("portcullis_cluster_store_up", &[]).await, 1.0);
        }
        assert_eq!(leaders, 1.0, "exactly one replica says it leads");
        let issuer = &fleet.replicas[leader];
        assert_eq!(
            issuer.metric("portcullis_cluster_orders_total", &[]).await,
            20.0,
            "the issuer's orders"
        );
        for (i, r) in fleet.replicas.iter().enumerate() {
            if i != leader {
                assert_eq!(
                    r.metric("portcullis_cluster_orders_total", &[]).await,
                    0.0,
                    "{} is a follower and orders nothing",
                    r.name
                );
            }
        }
    })
    .await;
}

/// Validations of `challenge` for 4 names, sent round-robin across 3 replicas by the
/// balancer pebble validates through, all succeed at the first try.
async fn validations_round_robin(challenge: &str) {
    let _slot = slot(1).await;
    let mut fleet = Fleet::new(Options {
        sites: 4,
        acme: format!("challenge: {challenge}"),
        ..Options::default()
    })
    .await;
    bounded(Duration::from_secs(90), "validations round-robin", async {
        fleet.start().await;
        fleet
            .wait_served(&[0, 1, 2], Duration::from_secs(60), |_, _| true)
            .await;
        // One order per name: no validation failed and was retried with a new order.
        assert_eq!(fleet.acme.new_orders(), 4);
        assert_eq!(fleet.acme.challenges_ready(), 4);
        let lb = match challenge {
            "http-01" => &fleet.http_lb,
            _ => &fleet.tls_lb,
        };
        for r in &fleet.replicas {
            let to = match challenge {
                "http-01" => r.http,
                _ => r.https,
            };
            assert!(
                lb.relayed_to(to) >= 1,
                "{} answered no {challenge} validation (it was sent {} of {})",
                r.name,
                lb.relayed_to(to),
                lb.accepted()
            );
        }
        let log = fleet.pebble.log();
        let validated = log.matches("set VALID by completed challenge").count();
        assert_eq!(validated, 4, "pebble's log:\n{log}");
        assert!(!log.contains("set INVALID"), "pebble's log:\n{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_validations_round_robin_across_3_replicas_all_succeed() {
    validations_round_robin("http-01").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_validations_round_robin_across_3_replicas_all_succeed() {
    validations_round_robin("tls-alpn-01").await;
}
