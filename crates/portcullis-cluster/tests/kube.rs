//! `KubeStore` against the harness's **fake** API server (`portcullis_tests::FakeApiServer`):
//! no real kube-apiserver runs on these machines, so these prove the store against the fake's
//! Kubernetes semantics (global resourceVersion, 409 on create and on a stale PUT or DELETE
//! precondition, watch 410 after compaction, label selectors). A replica cut off from the API
//! server is a store whose client goes through a `TcpProxy` the test partitions.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use portcullis_cluster::{Change, KubeStore, Leadership, Store, StoreError};
use portcullis_tests::tcp_proxy::TcpProxy;
use portcullis_tests::wait::until;
use portcullis_tests::{FakeApiServer, within_for};
use tokio::sync::watch;

const NS: &str = "default";
/// The lease of the election tests: short, so that takeovers happen in seconds.
const LEASE: Duration = Duration::from_secs(2);
const TEST: Duration = Duration::from_secs(30);

async fn store(fake: &FakeApiServer, node: &str) -> Arc<KubeStore> {
    KubeStore::new(fake.client().await, NS, node, LEASE)
}

/// A store whose every connection goes through a proxy the test can partition.
async fn proxied_store(fake: &FakeApiServer, node: &str) -> (Arc<KubeStore>, TcpProxy) {
    let proxy = TcpProxy::start(fake.addr()).await;
    let mut config = fake.config().await;
    config.cluster_url = format!("https://{}", proxy.addr).parse().unwrap();
    let client = kube::Client::try_from(config).unwrap();
    (KubeStore::new(client, NS, node, LEASE), proxy)
}

struct Campaign {
    lead: watch::Receiver<Option<Leadership>>,
    stop: watch::Sender<bool>,
}

fn campaign(store: &Arc<KubeStore>) -> Campaign {
    let (stop, stop_rx) = watch::channel(false);
    let lead = store.clone().campaign(LEASE, stop_rx);
    Campaign { lead, stop }
}

async fn leads(c: &Campaign, limit: Duration) -> Leadership {
    let mut rx = c.lead.clone();
    within_for(limit, "a leadership", rx.wait_for(|l| l.is_some()))
        .await
        .unwrap()
        .clone()
        .unwrap()
}

fn value_of(fake: &FakeApiServer, key: &str) -> Option<Vec<u8>> {
    fake.list::<Secret>(NS)
        .into_iter()
        .find(|s| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("portcullis.dev/store-key"))
                .is_some_and(|k| k == key)
        })
        .and_then(|s| s.data)
        .and_then(|d| d.get("value").map(|v| v.0.clone()))
}

#[tokio::test]
async fn fake_api_round_trip_of_odd_keys_then_a_watch_from_the_listing() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let a = store(&fake, "edge-1").await;
        let c = campaign(&a);
        let lead = leads(&c, Duration::from_secs(5)).await;
        assert_eq!(lead.node, "edge-1");
        assert_eq!(a.leader().await.unwrap().as_deref(), Some("edge-1"));

        let keys = [
            "certs/shop",
            "certs/ünïcode ☃/with spaces",
            "certs/../escape?&=%2F",
            "challenges/http-01/Tok_en-=",
            "orders/*.wildcard.example",
        ];
        let mut revisions = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let value = format!("value {i}\0\u{ff}").into_bytes();
            revisions.push(a.put_fenced(&lead, key, value).await.unwrap());
        }
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
        for (i, key) in keys.iter().enumerate() {
            let e = a.get(key).await.unwrap().expect(key);
            assert_eq!(e.key, *key);
            assert_eq!(e.value, format!("value {i}\0\u{ff}").into_bytes());
            assert_eq!(e.revision, revisions[i]);
            assert_eq!(e.token, Some(lead.token));
        }
        assert!(a.get("certs/absent").await.unwrap().is_none());

        // Someone else's Secret with the label but no key annotation is ignored.
        let mut stray = Secret::default();
        stray.metadata.name = Some("stray".into());
        stray.metadata.labels = Some(
            [
                ("app.kubernetes.io/managed-by".into(), "portcullis".into()),
                ("portcullis.dev/store".into(), "v1".into()),
            ]
            .into(),
        );
        stray.data = Some([("value".into(), ByteString(b"x".to_vec()))].into());
        fake.create(&stray);

        let listing = a.list("certs/").await.unwrap();
        let listed: Vec<&str> = listing.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            listed,
            [
                "certs/../escape?&=%2F",
                "certs/shop",
                "certs/ünïcode ☃/with spaces"
            ]
        );
        assert_eq!(a.list("").await.unwrap().entries.len(), keys.len());
        assert!(listing.revision >= *revisions.last().unwrap());

        // A watch from just after the listing sees later writes, in order, and only its
        // prefix.
        let mut changes = a.watch("certs/", listing.revision + 1).await.unwrap();
        let r1 = a.put_fenced(&lead, "certs/shop", b"v2".to_vec()).await.unwrap();
        a.put_fenced(&lead, "orders/x", b"not under certs/".to_vec())
            .await
            .unwrap();
        a.delete_fenced(&lead, "certs/../escape?&=%2F").await.unwrap();
        // Absent is success.
        a.delete_fenced(&lead, "certs/never-written").await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.extend(changes.next().await.unwrap().unwrap());
        }
        match &seen[0] {
            Change::Put(e) => {
                assert_eq!((e.key.as_str(), e.value.as_slice()), ("certs/shop", &b"v2"[..]));
                assert_eq!(e.revision, r1);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&seen[1], Change::Delete { key, revision } if key == "certs/../escape?&=%2F" && *revision > r1),
            "{seen:?}"
        );
        assert!(a.get("certs/../escape?&=%2F").await.unwrap().is_none());

        // A watch the server ends (its timeout, a restart) is resumed where it was.
        fake.drop_watches();
        let r2 = a.put_fenced(&lead, "certs/shop", b"v3".to_vec()).await.unwrap();
        let next = changes.next().await.unwrap().unwrap();
        assert_eq!(next[0].revision(), r2, "{next:?}");

        // A watch from an inclusive revision gets that revision's change.
        let mut again = a.watch("certs/", r1).await.unwrap();
        assert_eq!(again.next().await.unwrap().unwrap()[0].revision(), r1);
        c.stop.send_replace(true);
    })
    .await;
}

#[tokio::test]
async fn fake_api_election_one_leader_release_on_stop_and_takeover_from_a_silent_one() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let mut replicas = Vec::new();
        for n in ["a", "b", "c"] {
            let (s, proxy) = proxied_store(&fake, n).await;
            let c = campaign(&s);
            replicas.push((s, proxy, c));
        }
        let leading = |replicas: &[(Arc<KubeStore>, TcpProxy, Campaign)]| {
            replicas
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.2.lead.borrow().clone().map(|l| (i, l)))
                .collect::<Vec<_>>()
        };
        let first = until(Duration::from_secs(5), "a leader", || {
            let l = leading(&replicas);
            async move { (l.len() == 1).then(|| l[0].clone()) }
        })
        .await;
        // Exactly one leads, for a while (several renewals).
        for _ in 0..30 {
            let l = leading(&replicas);
            assert_eq!(l.len(), 1, "{l:?}");
            assert_eq!(l[0], first);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lease: Lease = fake.get(NS, "portcullis-issuer").unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(first.1.node.as_str()));
        assert_eq!(i64::from(spec.lease_transitions.unwrap()), first.1.token);

        // Stop: released, and another takes over well within a lease.
        let stopped_at = tokio::time::Instant::now();
        replicas[first.0].2.stop.send_replace(true);
        let second = until(Duration::from_secs(5), "a second leader", || {
            let l = leading(&replicas);
            async move { (l.len() == 1 && l[0].0 != first.0).then(|| l[0].clone()) }
        })
        .await;
        assert!(
            stopped_at.elapsed() < LEASE,
            "takeover after a release took {:?}",
            stopped_at.elapsed()
        );
        assert!(second.1.token > first.1.token);

        // The leader goes silent (partitioned, never released): it gives up first, and
        // the last one takes over within two leases.
        let silent_at = tokio::time::Instant::now();
        replicas[second.0].1.partition();
        let mut silent_rx = replicas[second.0].2.lead.clone();
        within_for(
            LEASE,
            "the silent leader to step down",
            silent_rx.wait_for(|l| l.is_none()),
        )
        .await
        .unwrap();
        let stepped_down = silent_at.elapsed();
        let third = until(LEASE * 2 + Duration::from_secs(1), "a third leader", || {
            let l = leading(&replicas);
            async move {
                l.iter()
                    .find(|(i, _)| *i != first.0 && *i != second.0)
                    .cloned()
            }
        })
        .await;
        let took_over = silent_at.elapsed();
        assert!(
            stepped_down < took_over,
            "the old leader stepped down at {stepped_down:?}, after the takeover at {took_over:?}"
        );
        assert!(third.1.token > second.1.token);
        assert_eq!(leading(&replicas).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn fake_api_a_partitioned_ex_leader_is_fenced() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let (a, proxy) = proxied_store(&fake, "a").await;
        let ca = campaign(&a);
        let old = leads(&ca, Duration::from_secs(5)).await;
        a.put_fenced(&old, "certs/shop", b"from a".to_vec())
            .await
            .unwrap();

        // A is cut off; B takes over.
        proxy.partition();
        let b = store(&fake, "b").await;
        let cb = campaign(&b);
        let new = leads(&cb, LEASE * 3).await;
        assert!(new.token > old.token);
        assert!(ca.lead.borrow().is_none(), "A still thinks it leads");
        b.put_fenced(&new, "certs/shop", b"from b".to_vec())
            .await
            .unwrap();

        // A comes back and tries to write with the leadership it had.
        proxy.heal();
        let refused = a.put_fenced(&old, "certs/shop", b"stale".to_vec()).await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        let refused = a.delete_fenced(&old, "certs/shop").await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        assert_eq!(value_of(&fake, "certs/shop").unwrap(), b"from b");
        let e = a.get("certs/shop").await.unwrap().unwrap();
        assert_eq!(e.token, Some(new.token));
        assert_eq!(a.leader().await.unwrap().as_deref(), Some("b"));
    })
    .await;
}

#[tokio::test]
async fn fake_api_a_leader_whose_lease_was_taken_is_fenced_before_its_own_deadline() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let a = store(&fake, "a").await;
        let c = campaign(&a);
        let lead = leads(&c, Duration::from_secs(5)).await;
        a.put_fenced(&lead, "k", b"1".to_vec()).await.unwrap();

        // A paused process's view: its own clock says it still leads, but the Lease has
        // moved on (another replica took it).
        let mut lease: Lease = fake.get(NS, "portcullis-issuer").unwrap();
        let spec = lease.spec.as_mut().unwrap();
        spec.holder_identity = Some("b".into());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap() + 1);
        fake.replace(&lease);
        assert!(c.lead.borrow().is_some(), "not yet noticed by the campaign");
        let refused = a.put_fenced(&lead, "k", b"2".to_vec()).await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        assert_eq!(value_of(&fake, "k").unwrap(), b"1");
        // The campaign notices at its next renewal.
        let mut rx = c.lead.clone();
        within_for(LEASE, "stepping down", rx.wait_for(|l| l.is_none()))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn fake_api_a_record_from_a_newer_leadership_is_never_overwritten() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let a = store(&fake, "a").await;
        let c = campaign(&a);
        let lead = leads(&c, Duration::from_secs(5)).await;
        a.put_fenced(&lead, "k", b"ours".to_vec()).await.unwrap();
        let mut secret = fake
            .list::<Secret>(NS)
            .into_iter()
            .find(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .unwrap()
                    .starts_with("portcullis-store-")
            })
            .unwrap();
        secret.metadata.annotations.as_mut().unwrap().insert(
            "portcullis.dev/store-token".into(),
            (lead.token + 1).to_string(),
        );
        secret.data = Some([("value".into(), ByteString(b"newer".to_vec()))].into());
        fake.replace(&secret);
        let refused = a.put_fenced(&lead, "k", b"older".to_vec()).await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        let refused = a.delete_fenced(&lead, "k").await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        assert_eq!(value_of(&fake, "k").unwrap(), b"newer");
    })
    .await;
}

#[tokio::test]
async fn fake_api_two_replicas_racing_for_an_expired_lease_one_wins() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        // A holder that died: its record never changes again.
        let mut dead = Lease::default();
        dead.metadata.name = Some("portcullis-issuer".into());
        dead.metadata.namespace = Some(NS.into());
        dead.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("dead".into()),
            lease_duration_seconds: Some(1),
            lease_transitions: Some(7),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            ..Default::default()
        });
        fake.create(&dead);
        let a = store(&fake, "a").await;
        let b = store(&fake, "b").await;
        let (ca, cb) = (campaign(&a), campaign(&b));
        let winner = until(Duration::from_secs(5), "a winner", || {
            let l = [ca.lead.borrow().clone(), cb.lead.borrow().clone()];
            async move { l.into_iter().flatten().next() }
        })
        .await;
        assert_eq!(winner.token, 8, "one acquisition, not two");
        for _ in 0..20 {
            let both = ca.lead.borrow().is_some() && cb.lead.borrow().is_some();
            assert!(!both, "two leaders");
            let lease: Lease = fake.get(NS, "portcullis-issuer").unwrap();
            let spec = lease.spec.unwrap();
            assert_eq!(spec.lease_transitions, Some(8));
            assert_eq!(spec.holder_identity.as_deref(), Some(winner.node.as_str()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The loser saw the winner's write only as a conflict or a fresh record: the
        // Lease was written exactly once by an acquisition and then only renewed.
        let loser = if winner.node == "a" { &b } else { &a };
        assert_eq!(loser.leader().await.unwrap(), Some(winner.node.clone()));
    })
    .await;
}

#[tokio::test]
async fn fake_api_watch_from_compacted_history_is_compacted() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let a = store(&fake, "a").await;
        let c = campaign(&a);
        let lead = leads(&c, Duration::from_secs(5)).await;
        a.put_fenced(&lead, "certs/one", b"1".to_vec())
            .await
            .unwrap();
        let listing = a.list("certs/").await.unwrap();
        a.put_fenced(&lead, "certs/two", b"2".to_vec())
            .await
            .unwrap();
        fake.compact();
        let gone = a.watch("certs/", listing.revision + 1).await;
        let compacted_to: i64 = fake.resource_version().parse().unwrap();
        assert!(
            matches!(gone, Err(StoreError::Compacted(r)) if r == compacted_to),
            "{:?}",
            gone.map(|_| ())
        );
        // Listing again gives a revision to watch from.
        let listing = a.list("certs/").await.unwrap();
        assert_eq!(listing.entries.len(), 2);
        let mut changes = a.watch("certs/", listing.revision + 1).await.unwrap();
        let r = a
            .put_fenced(&lead, "certs/three", b"3".to_vec())
            .await
            .unwrap();
        assert_eq!(changes.next().await.unwrap().unwrap()[0].revision(), r);
        // An open watch whose history is compacted away ends with Compacted too.
        fake.stall_watches(true);
        a.put_fenced(&lead, "certs/four", b"4".to_vec())
            .await
            .unwrap();
        fake.compact();
        fake.stall_watches(false);
        let end = changes.next().await.unwrap();
        assert!(matches!(end, Err(StoreError::Compacted(_))), "{end:?}");
        assert!(changes.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn fake_api_concurrent_writes_between_read_and_write_are_never_silently_overwritten() {
    within_for(TEST, "the test", async {
        let fake = Arc::new(FakeApiServer::start().await);
        let a = store(&fake, "a").await;
        let c = campaign(&a);
        let lead = leads(&c, Duration::from_secs(5)).await;

        // Two writes of the same leadership to one key at once: both land, one after the
        // other (the loser of the race gets a 409, reads again and writes again).
        for round in 0..10 {
            let key = format!("race/{round}");
            let (x, y) = tokio::join!(
                a.put_fenced(&lead, &key, b"x".to_vec()),
                a.put_fenced(&lead, &key, b"y".to_vec())
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_ne!(x, y);
            let last = if x > y { &b"x"[..] } else { &b"y"[..] };
            assert_eq!(value_of(&fake, &key).unwrap(), last);
        }
        let creates = fake
            .calls()
            .iter()
            .filter(|c| c.verb == "create" && c.resource == "secrets")
            .count();
        assert!(
            creates > 10,
            "no race was lost: {creates} creates for 10 keys"
        );

        // A newer leadership's write racing ours: whichever order they reach the server
        // in, the newer value stays; ours succeeds only if it came first.
        for round in 0..20 {
            let key = format!("fenced/{round}");
            a.put_fenced(&lead, &key, b"before".to_vec()).await.unwrap();
            let name = fake
                .list::<Secret>(NS)
                .into_iter()
                .find(|s| {
                    s.metadata.annotations.as_ref().unwrap()["portcullis.dev/store-key"] == key
                })
                .unwrap()
                .metadata
                .name
                .unwrap();
            let newer = {
                let fake = fake.clone();
                let token = lead.token + 1;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(200 * round)).await;
                    let mut s: Secret = fake.get(NS, &name).unwrap();
                    s.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .insert("portcullis.dev/store-token".into(), token.to_string());
                    s.data = Some([("value".into(), ByteString(b"newer".to_vec()))].into());
                    // A Secret PUT carrying the RV read: retried on a conflict with ours.
                    loop {
                        match fake.try_replace(&s) {
                            Ok(s) => break s.metadata.resource_version.unwrap(),
                            Err(e) if e.code == 409 => {
                                let fresh: Secret = fake.get(NS, &name).unwrap();
                                s.metadata.resource_version = fresh.metadata.resource_version;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            };
            let ours = a.put_fenced(&lead, &key, b"older".to_vec()).await;
            let newer_rv: i64 = newer.await.unwrap().parse().unwrap();
            match ours {
                Ok(rv) => assert!(rv < newer_rv, "ours ({rv}) landed after the newer one"),
                Err(StoreError::Fenced) => {}
                Err(e) => panic!("{e}"),
            }
            assert_eq!(value_of(&fake, &key).unwrap(), b"newer");
        }
    })
    .await;
}

#[tokio::test]
async fn fake_api_a_replica_that_stops_heartbeating_leaves_nodes() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let a = store(&fake, "edge-a").await;
        let b = store(&fake, "edge-b").await;
        a.heartbeat(b"applied 1".to_vec()).await.unwrap();
        b.heartbeat(b"applied 1".to_vec()).await.unwrap();
        a.heartbeat(b"applied 2".to_vec()).await.unwrap();
        let nodes = b.nodes().await.unwrap();
        let seen: Vec<(&str, &[u8], Option<i64>)> = nodes
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_slice(), e.token))
            .collect();
        assert_eq!(
            seen,
            [
                ("nodes/edge-a", &b"applied 2"[..], None),
                ("nodes/edge-b", &b"applied 1"[..], None)
            ]
        );
        // B keeps heartbeating, A stops: A is gone within its lease (plus the second
        // leaseDurationSeconds rounds to), B stays.
        let stopped = tokio::time::Instant::now();
        let gone = until(LEASE + Duration::from_secs(2), "A to leave", || {
            let b = b.clone();
            async move {
                b.heartbeat(b"applied 3".to_vec()).await.unwrap();
                let nodes = b.nodes().await.unwrap();
                (nodes.len() == 1).then_some(nodes)
            }
        })
        .await;
        assert!(stopped.elapsed() >= LEASE - Duration::from_millis(100));
        assert_eq!(gone[0].key, "nodes/edge-b");
        assert_eq!(gone[0].value, b"applied 3");
    })
    .await;
}

#[tokio::test]
async fn fake_api_forbidden_names_the_verb_and_resource() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let a = store(&fake, "a").await;
        fake.fail_next(1, 403);
        let refused = a.get("certs/shop").await;
        match refused {
            Err(StoreError::Refused(m)) => {
                assert!(m.contains("get secrets in namespace default"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        fake.fail_next(1, 403);
        match a.nodes().await {
            Err(StoreError::Refused(m)) => assert!(m.contains("list leases"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A server that does not answer is Unavailable, in bounded time.
        fake.blackhole(true);
        let started = tokio::time::Instant::now();
        let away = a.list("").await;
        assert!(matches!(away, Err(StoreError::Unavailable(_))), "{away:?}");
        assert!(started.elapsed() < Duration::from_secs(7));
        fake.blackhole(false);
        // Every call the store made is one the deploy/ RBAC for `store: kubernetes`
        // grants: get/list/watch/create/update/delete on secrets and leases.
        for call in fake.calls() {
            assert!(
                ["secrets", "leases"].contains(&call.resource.as_str())
                    && ["get", "list", "watch", "create", "update", "delete"]
                        .contains(&call.verb.as_str())
                    && call.namespace.as_deref() == Some(NS),
                "{call:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn fake_api_a_crashed_leader_is_replaced_within_two_leases() {
    within_for(TEST, "the test", async {
        let fake = FakeApiServer::start().await;
        let a = store(&fake, "a").await;
        // A's campaign runs on a runtime of its own, shut down under it: a crash, with no
        // release of the Lease.
        let doomed = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let campaigner = a.clone();
        let mut a_lead = doomed
            .spawn(async move { campaigner.campaign(LEASE, stop_rx) })
            .await
            .unwrap();
        within_for(
            Duration::from_secs(5),
            "A to lead",
            a_lead.wait_for(|l| l.is_some()),
        )
        .await
        .unwrap();
        let b = store(&fake, "b").await;
        let cb = campaign(&b);
        doomed.shutdown_background();
        let crashed = tokio::time::Instant::now();
        // Not released: the Lease still names A, and the dropped campaign said `None`.
        let lease: Lease = fake.get(NS, "portcullis-issuer").unwrap();
        assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("a"));
        within_for(
            Duration::from_secs(1),
            "A's dropped campaign to say None",
            async {
                a_lead.wait_for(|l| l.is_none()).await.ok();
            },
        )
        .await;
        assert!(a_lead.borrow().is_none());
        let new = leads(&cb, LEASE * 2 + Duration::from_secs(1)).await;
        assert_eq!(new.node, "b");
        assert!(
            crashed.elapsed() >= LEASE - Duration::from_millis(700),
            "B took over after {:?}, before A's lease could have run out",
            crashed.elapsed()
        );
    })
    .await;
}
