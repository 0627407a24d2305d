//! `EtcdStore` against real etcd (Debian `etcd-server`) on loopback: one member or three,
//! killed, and partitioned from a replica by a TCP proxy the test controls. Every test is
//! bounded in time; each measured takeover is printed (`--nocapture` shows them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "tests: a panic is the failure report"
)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use portcullis_cluster::{Change, ChangeStream, EtcdStore, Leadership, Store, StoreError};
use portcullis_tests::etcd::TestEtcd;
use portcullis_tests::tcp_proxy::TcpProxy;
use tokio::sync::watch;
use tokio::time::Instant;

const PREFIX: &str = "/pc-test/";
const LEASE: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(60);

/// Whether etcd is installed; `.ci/run` installs it, so CI never skips.
fn have_etcd() -> bool {
    let found = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        eprintln!("SKIPPED: `etcd` is not installed (Debian etcd-server; .ci/run installs it)");
    }
    found
}

/// Runs `test` within [`LIMIT`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test finished within its time limit");
}

fn settings(endpoints: Vec<String>) -> portcullis_config::EtcdStore {
    portcullis_config::EtcdStore {
        endpoints,
        prefix: PREFIX.into(),
        tls: None,
        username: None,
        password: None,
    }
}

fn open(endpoints: Vec<String>, node: &str) -> Arc<EtcdStore> {
    EtcdStore::open_with_lease(&settings(endpoints), node, LEASE).unwrap()
}

fn via(proxy: &TcpProxy) -> Vec<String> {
    vec![format!("http://{}", proxy.addr)]
}

/// Every value a campaign published (its token or `None`), with when.
type Seen = Arc<Mutex<Vec<(Instant, Option<i64>)>>>;

/// One replica's campaign, and every value it published, with when.
struct Campaign {
    node: String,
    stop: watch::Sender<bool>,
    rx: watch::Receiver<Option<Leadership>>,
    seen: Seen,
}

impl Campaign {
    fn start(store: &Arc<EtcdStore>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let rx = store.clone().campaign(LEASE, stop_rx);
        let seen: Seen = Arc::default();
        let (mut watch, log) = (rx.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let token = watch.borrow_and_update().as_ref().map(|l| l.token);
                log.lock().unwrap().push((Instant::now(), token));
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
        Self {
            node: store.node().to_owned(),
            stop,
            rx,
            seen,
        }
    }

    fn lead(&self) -> Option<Leadership> {
        self.rx.borrow().clone()
    }

    async fn until_leads(&mut self, limit: Duration) -> Leadership {
        tokio::time::timeout(limit, self.rx.wait_for(Option::is_some))
            .await
            .unwrap_or_else(|_| panic!("{} did not lead within {limit:?}", self.node))
            .unwrap()
            .clone()
            .unwrap()
    }

    async fn until_follows(&mut self, limit: Duration) {
        tokio::time::timeout(limit, self.rx.wait_for(Option::is_none))
            .await
            .unwrap_or_else(|_| panic!("{} still leads after {limit:?}", self.node))
            .unwrap();
    }

    /// When it last turned to `Some` (`leads`) or `None`.
    fn last_turn(&self, leads: bool) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, t)| t.is_some() == leads)
            .map(|(at, _)| *at)
    }
}

/// Never two leaders at once, by the published values' times.
fn assert_one_leader(campaigns: &[&Campaign]) {
    let mut events: Vec<(Instant, usize, bool)> = Vec::new();
    for (i, c) in campaigns.iter().enumerate() {
        for (at, token) in c.seen.lock().unwrap().iter() {
            events.push((*at, i, token.is_some()));
        }
    }
    events.sort_by_key(|e| e.0);
    let mut leading = vec![false; campaigns.len()];
    for (at, i, leads) in events {
        leading[i] = leads;
        let n = leading.iter().filter(|l| **l).count();
        assert!(n <= 1, "{n} replicas led at once at {at:?}");
    }
}

/// Waits until exactly one of `campaigns` leads; its index.
async fn one_leads(campaigns: &[&Campaign], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let leading: Vec<usize> = (0..campaigns.len())
            .filter(|i| campaigns[*i].lead().is_some())
            .collect();
        if leading.len() == 1 {
            return leading[0];
        }
        assert!(leading.len() < 2, "two replicas lead at once");
        assert!(Instant::now() < deadline, "no replica led within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Retries `op` while it answers `Unavailable`, up to `limit`.
async fn retry<T>(
    limit: Duration,
    what: &str,
    mut op: impl AsyncFnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let deadline = Instant::now() + limit;
    loop {
        match op().await {
            Err(StoreError::Unavailable(why)) if Instant::now() < deadline => {
                eprintln!("{what}: unavailable ({why}); again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The next `n` changes of `stream`.
async fn next_changes(stream: &mut ChangeStream, n: usize) -> Vec<Change> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("changes within 10 s")
            .expect("the watch goes on")
            .expect("no watch error");
        assert!(!batch.is_empty(), "a batch is never empty");
        out.extend(batch);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_list_then_watch_in_order() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let store = open(etcd.endpoints(), "a");
        let mut c = Campaign::start(&store);
        let lead = c.until_leads(Duration::from_secs(10)).await;
        assert_eq!(lead.node, "a");
        assert_eq!(store.leader().await.unwrap().as_deref(), Some("a"));

        let rev = store
            .put_fenced(&lead, "certs/a", b"one".to_vec())
            .await
            .unwrap();
        let got = store.get("certs/a").await.unwrap().unwrap();
        assert_eq!(
            (
                got.key.as_str(),
                got.value.as_slice(),
                got.revision,
                got.token
            ),
            ("certs/a", b"one".as_slice(), rev, None)
        );
        // What etcd holds, read without this client: the full key.
        assert_eq!(
            etcd.get(0, "/pc-test/certs/a").await.as_deref(),
            Some("one")
        );
        assert!(store.get("certs/none").await.unwrap().is_none());

        store
            .put_fenced(&lead, "orders/x", b"o".to_vec())
            .await
            .unwrap();
        let listing = store.list("certs/").await.unwrap();
        assert_eq!(listing.entries.len(), 1, "only the prefix asked for");
        assert!(listing.revision >= rev);
        let everything = store.list("").await.unwrap();
        assert!(everything.entries.iter().any(|e| e.key == "leader"));
        assert!(everything.entries.iter().any(|e| e.key == "orders/x"));

        let mut stream = store.watch("certs/", listing.revision + 1).await.unwrap();
        let r1 = store
            .put_fenced(&lead, "certs/b", b"two".to_vec())
            .await
            .unwrap();
        store
            .put_fenced(&lead, "orders/y", b"not watched".to_vec())
            .await
            .unwrap();
        let r2 = store
            .put_fenced(&lead, "certs/a", b"three".to_vec())
            .await
            .unwrap();
        store.delete_fenced(&lead, "certs/b").await.unwrap();
        store
            .delete_fenced(&lead, "certs/never-there")
            .await
            .unwrap();
        let changes = next_changes(&mut stream, 3).await;
        match changes.as_slice() {
            [
                Change::Put(b),
                Change::Put(a),
                Change::Delete { key, revision },
            ] => {
                assert_eq!(
                    (b.key.as_str(), b.value.as_slice(), b.revision),
                    ("certs/b", b"two".as_slice(), r1)
                );
                assert_eq!(
                    (a.key.as_str(), a.value.as_slice(), a.revision),
                    ("certs/a", b"three".as_slice(), r2)
                );
                assert_eq!(key, "certs/b");
                assert!(*revision > r2);
            }
            other => panic!("unexpected changes {other:?}"),
        }

        // The store's own keys are not the issuer's to write.
        for key in ["leader", "nodes/a", ""] {
            assert!(matches!(
                store.put_fenced(&lead, key, b"x".to_vec()).await,
                Err(StoreError::Refused(_))
            ));
        }
        c.stop.send_replace(true);
        c.until_follows(Duration::from_secs(5)).await;
        let released = Instant::now();
        while store.leader().await.unwrap().is_some() {
            assert!(
                released.elapsed() < Duration::from_secs(5),
                "leader key not released at stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_stays_open() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let store = open(etcd.endpoints(), "a");
        let listing = store.list("certs/").await.unwrap();
        let mut stream = store.watch("certs/", listing.revision + 1).await.unwrap();
        // Longer than the silence after which the stream asks etcd for progress, and that
        // request's own timeout: etcd's answers keep it open.
        let quiet = tokio::time::timeout(Duration::from_secs(8), stream.next()).await;
        assert!(
            quiet.is_err(),
            "the idle watch ended: {:?}",
            quiet.unwrap().map(|r| r.map(|v| v.len()))
        );
        assert_eq!(etcd.put(0, "/pc-test/certs/z", "v").await, 200);
        let changes = next_changes(&mut stream, 1).await;
        assert!(matches!(&changes[0], Change::Put(e) if e.key == "certs/z"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_release_and_takeover() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let mut stores: Vec<Option<Arc<EtcdStore>>> = ["a", "b", "c"]
            .iter()
            .map(|n| Some(open(etcd.endpoints(), n)))
            .collect();
        let mut campaigns: Vec<Campaign> = stores.iter().flatten().map(Campaign::start).collect();
        let first = one_leads(
            &campaigns.iter().collect::<Vec<_>>(),
            Duration::from_secs(10),
        )
        .await;
        // Stays alone for a few leases.
        tokio::time::sleep(LEASE * 3).await;
        assert!(
            campaigns[first].lead().is_some(),
            "the leader kept its leadership"
        );

        // Released at stop: another takes over at once.
        let stopped = Instant::now();
        campaigns[first].stop.send_replace(true);
        let rest: Vec<usize> = (0..3).filter(|i| *i != first).collect();
        let second = rest[one_leads(
            &[&campaigns[rest[0]], &campaigns[rest[1]]],
            Duration::from_secs(5),
        )
        .await];
        let release = stopped.elapsed();
        eprintln!("takeover after a stop (release): {release:?}");
        assert!(
            release < Duration::from_millis(1500),
            "takeover after release took {release:?}"
        );
        let token2 = campaigns[second].lead().unwrap().token;

        // Killed (the store dropped without stop; its lease runs out): within two leases.
        let third = rest.into_iter().find(|i| *i != second).unwrap();
        let killed = Instant::now();
        // The only Arc: dropping it drops the store, as a crash would.
        stores[second] = None;
        campaigns[third]
            .until_leads(LEASE * 2 + Duration::from_secs(2))
            .await;
        let takeover = killed.elapsed();
        eprintln!("takeover after a kill: {takeover:?} (lease {LEASE:?})");
        assert!(
            takeover <= LEASE * 2 + Duration::from_secs(1),
            "takeover took {takeover:?}"
        );
        let token3 = campaigns[third].lead().unwrap().token;
        assert!(token3 > token2, "tokens grow with each election");
        let all: Vec<&Campaign> = campaigns.iter().collect();
        assert_one_leader(&all);
        for c in &mut campaigns {
            c.stop.send_replace(true);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_steps_down_first_and_is_fenced() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let proxy = TcpProxy::start(etcd.client_addr(0)).await;
        let a = open(via(&proxy), "a");
        let b = open(etcd.endpoints(), "b");
        let mut ca = Campaign::start(&a);
        let lead_a = ca.until_leads(Duration::from_secs(10)).await;
        let mut cb = Campaign::start(&b);
        a.put_fenced(&lead_a, "certs/x", b"a1".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(LEASE).await;
        assert!(cb.lead().is_none(), "b follows while a leads");

        let cut = Instant::now();
        proxy.partition();
        let lead_b = cb.until_leads(LEASE * 2 + Duration::from_secs(2)).await;
        let takeover = cut.elapsed();
        // Let the recorders catch up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a_none = ca.last_turn(false).unwrap();
        let b_some = cb.last_turn(true).unwrap();
        eprintln!(
            "partition: a stepped down after {:?}, b led after {takeover:?} (lease {LEASE:?})",
            a_none.duration_since(cut)
        );
        assert!(ca.lead().is_none(), "a no longer claims leadership");
        assert!(a_none < b_some, "a stepped down before b was elected");
        assert!(a_none > cut, "a stepped down after the partition");
        assert!(
            takeover <= LEASE * 2 + Duration::from_secs(1),
            "takeover took {takeover:?}"
        );
        b.put_fenced(&lead_b, "certs/x", b"b".to_vec())
            .await
            .unwrap();

        // Healed: a's old leadership writes nothing.
        proxy.heal();
        let put = retry(Duration::from_secs(20), "a's stale put", async || {
            a.put_fenced(&lead_a, "certs/x", b"a2".to_vec()).await
        })
        .await;
        assert!(matches!(put, Err(StoreError::Fenced)), "stale put: {put:?}");
        let del = a.delete_fenced(&lead_a, "certs/x").await;
        assert!(
            matches!(del, Err(StoreError::Fenced)),
            "stale delete: {del:?}"
        );
        assert_eq!(b.get("certs/x").await.unwrap().unwrap().value, b"b");
        // a is back as a follower, and b still leads.
        tokio::time::sleep(LEASE * 2).await;
        assert!(ca.lead().is_none() && cb.lead().is_some());
        assert_one_leader(&[&ca, &cb]);
        ca.stop.send_replace(true);
        cb.stop.send_replace(true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_is_refused() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let store = open(etcd.endpoints(), "a");
        let mut c = Campaign::start(&store);
        let lead = c.until_leads(Duration::from_secs(10)).await;
        let old = store
            .put_fenced(&lead, "certs/a", b"1".to_vec())
            .await
            .unwrap();
        for i in 2..5 {
            store
                .put_fenced(&lead, "certs/a", format!("{i}").into_bytes())
                .await
                .unwrap();
        }
        let now = etcd.current_revision(0).await;
        assert_eq!(etcd.compact(0, now).await, 200);
        let watched = store.watch("certs/", old).await;
        assert!(
            matches!(watched, Err(StoreError::Compacted(_))),
            "watch from before compaction: {:?}",
            watched.err()
        );
        // Listing again and watching from there works.
        let listing = store.list("certs/").await.unwrap();
        assert_eq!(listing.entries[0].value, b"4");
        let mut stream = store.watch("certs/", listing.revision + 1).await.unwrap();
        store
            .put_fenced(&lead, "certs/a", b"5".to_vec())
            .await
            .unwrap();
        assert!(
            matches!(&next_changes(&mut stream, 1).await[0], Change::Put(e) if e.value == b"5")
        );
        c.stop.send_replace(true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_one_killed() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let mut etcd = TestEtcd::start(3).await;
        let store = open(etcd.endpoints(), "a");
        let mut c = Campaign::start(&store);
        let lead = c.until_leads(Duration::from_secs(10)).await;
        store
            .put_fenced(&lead, "certs/a", b"1".to_vec())
            .await
            .unwrap();

        let killed = Instant::now();
        etcd.kill(0);
        // The remaining two may first have to elect a raft leader.
        let lead = match c.lead() {
            Some(lead) => lead,
            None => c.until_leads(Duration::from_secs(15)).await,
        };
        let mut put = None;
        for i in 0..20 {
            let r = retry(Duration::from_secs(15), "put after a kill", async || {
                store
                    .put_fenced(&lead, "certs/a", format!("{i}").into_bytes())
                    .await
            })
            .await;
            if i == 0 {
                eprintln!(
                    "first write after the member was killed: {:?}",
                    killed.elapsed()
                );
            }
            put = Some(r.unwrap());
        }
        let got = retry(Duration::from_secs(10), "get", async || {
            store.get("certs/a").await
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            (got.value.as_slice(), Some(got.revision)),
            (b"19".as_slice(), put)
        );
        let listing = store.list("").await.unwrap();
        let mut stream = retry(Duration::from_secs(10), "watch", async || {
            store.watch("certs/", listing.revision + 1).await
        })
        .await
        .unwrap();
        store
            .put_fenced(&lead, "certs/b", b"b".to_vec())
            .await
            .unwrap();
        assert!(
            matches!(&next_changes(&mut stream, 1).await[0], Change::Put(e) if e.key == "certs/b")
        );
        assert_eq!(store.leader().await.unwrap().as_deref(), Some("a"));
        c.stop.send_replace(true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_open_then_back() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        // Nothing listens: refused at once, `Unavailable` within the request time.
        let closed = portcullis_tests::closed_port().await;
        let store = open(vec![format!("http://127.0.0.1:{closed}")], "a");
        let asked = Instant::now();
        let got = store.get("certs/a").await;
        eprintln!(
            "refused endpoint: {:?} after {:?}",
            got.as_ref().err(),
            asked.elapsed()
        );
        assert!(matches!(got, Err(StoreError::Unavailable(_))));
        assert!(asked.elapsed() < Duration::from_secs(10));

        // Silent (partitioned before the store opened), then healed.
        let etcd = TestEtcd::start(1).await;
        let proxy = TcpProxy::start(etcd.client_addr(0)).await;
        proxy.partition();
        let store = open(via(&proxy), "a");
        let mut c = Campaign::start(&store);
        let asked = Instant::now();
        let got = store.get("certs/a").await;
        eprintln!(
            "silent endpoint: {:?} after {:?}",
            got.as_ref().err(),
            asked.elapsed()
        );
        assert!(matches!(got, Err(StoreError::Unavailable(_))));
        assert!(asked.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            store.list("").await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.watch("", 1).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.heartbeat(b"h".to_vec()).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(c.lead().is_none());

        proxy.heal();
        let healed = Instant::now();
        let got = retry(Duration::from_secs(20), "get after heal", async || {
            store.get("certs/a").await
        })
        .await;
        eprintln!("first answer after the heal: {:?}", healed.elapsed());
        assert!(got.unwrap().is_none());
        let lead = c.until_leads(Duration::from_secs(15)).await;
        store
            .put_fenced(&lead, "certs/a", b"1".to_vec())
            .await
            .unwrap();
        // The heartbeat given while etcd was away was kept, and put once it came back.
        let nodes = retry(Duration::from_secs(10), "nodes", async || {
            store.nodes().await
        })
        .await
        .unwrap();
        assert_eq!(
            nodes
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_slice()))
                .collect::<Vec<_>>(),
            [("nodes/a", b"h".as_slice())]
        );

        // A watch open when the link is cut ends with `Unavailable`.
        let listing = store.list("").await.unwrap();
        let mut stream = store.watch("", listing.revision + 1).await.unwrap();
        proxy.partition();
        let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the watch ended within 10 s");
        assert!(
            matches!(end, Some(Err(StoreError::Unavailable(_)))),
            "{end:?}"
        );
        assert!(stream.next().await.is_none(), "nothing after the error");
        c.stop.send_replace(true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_vanish_within_two_leases() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let proxy = TcpProxy::start(etcd.client_addr(0)).await;
        let a = open(etcd.endpoints(), "a");
        let b = open(via(&proxy), "b");
        let c = open(etcd.endpoints(), "c");
        a.heartbeat(b"a1".to_vec()).await.unwrap();
        a.heartbeat(b"a2".to_vec()).await.unwrap();
        b.heartbeat(b"b1".to_vec()).await.unwrap();
        c.heartbeat(b"c1".to_vec()).await.unwrap();
        let names = async || {
            a.nodes()
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names().await,
            [
                ("nodes/a".to_owned(), b"a2".to_vec()),
                ("nodes/b".to_owned(), b"b1".to_vec()),
                ("nodes/c".to_owned(), b"c1".to_vec())
            ]
        );
        // Kept alive past several leases.
        tokio::time::sleep(LEASE * 3).await;
        assert_eq!(names().await.len(), 3);

        let cut = Instant::now();
        proxy.partition();
        drop(c);
        let deadline = cut + LEASE * 2 + Duration::from_secs(1);
        loop {
            let now = names().await;
            if now.len() == 1 {
                eprintln!(
                    "partitioned and dropped replicas gone after {:?}",
                    cut.elapsed()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still listed after two leases: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Back: a new lease, and the last value put again.
        proxy.heal();
        let healed = Instant::now();
        loop {
            if names()
                .await
                .iter()
                .any(|(k, v)| k == "nodes/b" && v == b"b1")
            {
                eprintln!("healed replica listed again after {:?}", healed.elapsed());
                break;
            }
            assert!(healed.elapsed() < Duration::from_secs(15), "b not back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_and_large_values() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let store = open(etcd.endpoints(), "a");
        let mut c = Campaign::start(&store);
        let lead = c.until_leads(Duration::from_secs(10)).await;
        let start = store.list("").await.unwrap().revision;
        let mut stream = store.watch("odd/", start + 1).await.unwrap();
        let keys = [
            "odd/ünïcødé ✓",
            "odd/with space/and%2F?#*[]",
            "odd/..",
            "odd/a\u{1}b\u{7f}",
            "odd/\\back\\slash",
        ];
        for key in keys {
            store
                .put_fenced(&lead, key, key.as_bytes().to_vec())
                .await
                .unwrap();
            let got = store.get(key).await.unwrap().unwrap();
            assert_eq!(
                (got.key.as_str(), got.value.as_slice()),
                (key, key.as_bytes())
            );
        }
        let listed: Vec<String> = store
            .list("odd/")
            .await
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect();
        let mut sorted: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        sorted.sort();
        assert_eq!(listed, sorted, "in key order");
        let watched: Vec<String> = next_changes(&mut stream, keys.len())
            .await
            .into_iter()
            .map(|c| match c {
                Change::Put(e) => e.key,
                Change::Delete { key, .. } => key,
            })
            .collect();
        assert_eq!(watched, keys);

        // 1 MiB fits etcd's default request limit (1.5 MiB); 2 MiB is refused, clearly.
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        store
            .put_fenced(&lead, "big/1m", big.clone())
            .await
            .unwrap();
        assert_eq!(store.get("big/1m").await.unwrap().unwrap().value, big);
        assert_eq!(
            store.list("big/").await.unwrap().entries[0].value.len(),
            1 << 20
        );
        let huge = vec![7u8; 2 << 20];
        match store.put_fenced(&lead, "big/2m", huge).await {
            Err(StoreError::Refused(why)) => eprintln!("2 MiB refused: {why}"),
            other => panic!("2 MiB value: {other:?}"),
        }
        c.stop.send_replace(true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_at_one_revision() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let store = open(etcd.endpoints(), "a");
        let mut c = Campaign::start(&store);
        let lead = c.until_leads(Duration::from_secs(10)).await;
        // More than one page (500 keys a page).
        for i in 0..1200 {
            store
                .put_fenced(&lead, &format!("many/{i:05}"), vec![1])
                .await
                .unwrap();
        }
        let listing = store.list("many/").await.unwrap();
        assert_eq!(listing.entries.len(), 1200);
        assert!(listing.entries.windows(2).all(|w| w[0].key < w[1].key));
        assert!(
            listing
                .entries
                .iter()
                .all(|e| e.revision <= listing.revision)
        );
        c.stop.send_replace(true);
    })
    .await;
}

/// One etcd member serving clients over TLS that requires a client certificate, started
/// by hand (the harness's members speak plain HTTP); killed when dropped.
struct TlsEtcd {
    child: std::process::Child,
    endpoint: String,
    settings: portcullis_config::EtcdStore,
    _dir: tempfile::TempDir,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TlsEtcd {
    #[allow(
        clippy::disallowed_methods,
        reason = "a log file opened once, before the member runs"
    )]
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = portcullis_tests::TestCa::new("etcd test CA");
        let ca_path = ca.write_root(dir.path(), "ca");
        let (server_cert, server_key) = ca
            .leaf(&["127.0.0.1", "localhost"])
            .write(dir.path(), "server");
        let (client_cert, client_key) = ca.client_leaf("portcullis").write(dir.path(), "client");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = std::process::Command::new("etcd")
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .arg("--cert-file")
            .arg(&server_cert)
            .arg("--key-file")
            .arg(&server_key)
            .arg("--trusted-ca-file")
            .arg(&ca_path)
            .arg("--client-cert-auth")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
            .spawn()
            .unwrap();
        let settings = portcullis_config::EtcdStore {
            endpoints: vec![endpoint.clone()],
            prefix: PREFIX.into(),
            tls: Some(portcullis_config::EtcdTls {
                ca: Some(ca_path),
                cert: Some(client_cert),
                key: Some(client_key),
            }),
            username: None,
            password: None,
        };
        Self {
            child,
            endpoint,
            settings,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_and_password() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        // Up once it answers (about a second). Its ports are picked free and then let go,
        // so another process may take one first (seen once, under load): then start again.
        let mut tries = 0;
        let (etcd, store) = loop {
            let etcd = TlsEtcd::start();
            let store = EtcdStore::open_with_lease(&etcd.settings, "a", LEASE).unwrap();
            let up = retry(Duration::from_secs(10), "TLS etcd up", async || {
                store.list("").await
            })
            .await;
            match up {
                Ok(_) => break (etcd, store),
                Err(e) => {
                    let log = tokio::fs::read_to_string(etcd._dir.path().join("etcd.log")).await;
                    eprintln!(
                        "TLS etcd not up: {e}; its log:\n{}",
                        log.unwrap_or_default()
                    );
                    tries += 1;
                    assert!(tries < 3, "TLS etcd never came up");
                }
            }
        };
        let mut c = Campaign::start(&store);
        let lead = c.until_leads(Duration::from_secs(10)).await;
        store
            .put_fenced(&lead, "certs/a", b"tls".to_vec())
            .await
            .unwrap();
        assert_eq!(store.get("certs/a").await.unwrap().unwrap().value, b"tls");
        c.stop.send_replace(true);
        c.until_follows(Duration::from_secs(5)).await;

        // Without the client certificate the member refuses the handshake.
        let mut no_cert = etcd.settings.clone();
        no_cert.tls.as_mut().unwrap().cert = None;
        no_cert.tls.as_mut().unwrap().key = None;
        let anonymous = EtcdStore::open_with_lease(&no_cert, "b", LEASE).unwrap();
        assert!(anonymous.get("certs/a").await.is_err());

        // etcd's own authentication: a root user, then auth on.
        let files = etcd.settings.tls.as_ref().unwrap();
        let read = async |path: &Option<std::path::PathBuf>| {
            tokio::fs::read(path.as_ref().unwrap()).await.unwrap()
        };
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&files.ca).await))
            .identity(etcd_client::Identity::from_pem(
                read(&files.cert).await,
                read(&files.key).await,
            ));
        let mut admin = etcd_client::Client::connect(
            [&etcd.endpoint],
            Some(etcd_client::ConnectOptions::new().with_tls(tls)),
        )
        .await
        .unwrap();
        admin.user_add("root", "s3cret", None).await.unwrap();
        admin.user_grant_role("root", "root").await.unwrap();
        admin.auth_enable().await.unwrap();

        let mut with_password = etcd.settings.clone();
        with_password.username = Some("root".into());
        with_password.password = Some("s3cret".into());
        let authed = EtcdStore::open_with_lease(&with_password, "c", LEASE).unwrap();
        assert_eq!(authed.get("certs/a").await.unwrap().unwrap().value, b"tls");
        let mut c = Campaign::start(&authed);
        let lead = c.until_leads(Duration::from_secs(10)).await;
        authed
            .put_fenced(&lead, "certs/a", b"authed".to_vec())
            .await
            .unwrap();
        authed.heartbeat(b"c".to_vec()).await.unwrap();
        assert_eq!(authed.nodes().await.unwrap().len(), 1);
        c.stop.send_replace(true);

        with_password.password = Some("wrong".into());
        let wrong = EtcdStore::open_with_lease(&with_password, "d", LEASE).unwrap();
        let refused = wrong.get("certs/a").await;
        assert!(
            matches!(refused, Err(StoreError::Refused(_))),
            "wrong password: {refused:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_back_before_its_lease_ran_out_resumes() {
    if !have_etcd() {
        return;
    }
    // Long enough that the link comes back between the step-down (2/3 of the lease) and
    // the lease's end, with room to spare on a busy machine.
    const LONG: Duration = Duration::from_secs(6);
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let proxy = TcpProxy::start(etcd.client_addr(0)).await;
        let a = EtcdStore::open_with_lease(&settings(via(&proxy)), "a", LONG).unwrap();
        let b = EtcdStore::open_with_lease(&settings(etcd.endpoints()), "b", LONG).unwrap();
        let (stop_a, stop_rx) = watch::channel(false);
        let mut ra = a.clone().campaign(LONG, stop_rx);
        let lead = tokio::time::timeout(Duration::from_secs(10), ra.wait_for(Option::is_some))
            .await
            .expect("a leads")
            .unwrap()
            .clone()
            .unwrap();
        let (stop_b, stop_rx) = watch::channel(false);
        let mut rb = b.clone().campaign(LONG, stop_rx);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let cut = Instant::now();
        proxy.partition();
        tokio::time::timeout(LONG, ra.wait_for(Option::is_none))
            .await
            .expect("a steps down while cut off")
            .unwrap();
        let down = cut.elapsed();
        proxy.heal();
        let again = tokio::time::timeout(LONG, ra.wait_for(Option::is_some))
            .await
            .expect("a leads again")
            .unwrap()
            .clone()
            .unwrap();
        eprintln!(
            "resume: a stepped down {down:?} after the cut and led again {:?} after it",
            cut.elapsed()
        );
        assert_eq!(again, lead, "the same leadership: the key was never lost");
        assert!(rb.borrow_and_update().is_none(), "b never led");
        a.put_fenced(&lead, "certs/x", b"a".to_vec()).await.unwrap();
        stop_a.send_replace(true);
        stop_b.send_replace(true);
    })
    .await;
}

/// A proxy whose open connections can go silent without closing, as across a partition
/// that drops packets (the harness's `TcpProxy` cuts them instead): while stalled, bytes
/// are read and held back, in both directions; after `flow`, they go on.
struct StallProxy {
    addr: std::net::SocketAddr,
    stalled: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StallProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stalled, _) = watch::channel(false);
        let tx = stalled.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                conns.spawn(pump(cr, uw, tx.subscribe()));
                conns.spawn(pump(ur, cw, tx.subscribe()));
            }
        });
        Self {
            addr,
            stalled,
            task,
        }
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn flow(&self) {
        self.stalled.send_replace(false);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partition_is_noticed() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        let proxy = StallProxy::start(etcd.client_addr(0)).await;
        let endpoints = vec![format!("http://{}", proxy.addr)];
        let a = open(endpoints, "a");
        let b = open(etcd.endpoints(), "b");
        let mut ca = Campaign::start(&a);
        let lead_a = ca.until_leads(Duration::from_secs(10)).await;
        let mut cb = Campaign::start(&b);
        let listing = a.list("").await.unwrap();
        let mut stream = a.watch("certs/", listing.revision + 1).await.unwrap();

        let cut = Instant::now();
        proxy.stall();
        // The connection stays open and says nothing: the watch notices by itself.
        let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the silent watch ended within 10 s");
        let noticed = cut.elapsed();
        eprintln!("silent partition: watch ended after {noticed:?} with {end:?}");
        assert!(
            matches!(end, Some(Err(StoreError::Unavailable(_)))),
            "{end:?}"
        );
        assert!(
            noticed < Duration::from_secs(8),
            "noticed after {noticed:?}"
        );
        let asked = Instant::now();
        let got = a.get("certs/x").await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
        assert!(asked.elapsed() < Duration::from_secs(10));

        // Meanwhile a stepped down, before b was elected.
        cb.until_leads(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (a_none, b_some) = (ca.last_turn(false).unwrap(), cb.last_turn(true).unwrap());
        eprintln!(
            "silent partition: a stepped down after {:?}, b led after {:?}",
            a_none.duration_since(cut),
            b_some.duration_since(cut)
        );
        assert!(cut < a_none && a_none < b_some, "a stepped down first");

        proxy.flow();
        let put = retry(Duration::from_secs(20), "a's stale put", async || {
            a.put_fenced(&lead_a, "certs/x", b"a".to_vec()).await
        })
        .await;
        assert!(matches!(put, Err(StoreError::Fenced)), "stale put: {put:?}");
        assert_one_leader(&[&ca, &cb]);
        ca.stop.send_replace(true);
        cb.stop.send_replace(true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_campaigns_lease_is_the_sessions() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = TestEtcd::start(1).await;
        // Opened with the default lease (10 s), the heartbeat put on it first…
        let s = settings(etcd.endpoints());
        let a = EtcdStore::open(&s, "a").unwrap();
        let b = EtcdStore::open(&s, "b").unwrap();
        a.heartbeat(b"a".to_vec()).await.unwrap();
        b.heartbeat(b"b".to_vec()).await.unwrap();
        // …then campaigning on a 2 s one: the session follows the campaign.
        let mut ca = Campaign::start(&a);
        ca.until_leads(Duration::from_secs(10)).await;
        let mut cb = Campaign::start(&b);
        tokio::time::sleep(LEASE).await;
        assert_eq!(
            b.nodes().await.unwrap().len(),
            2,
            "heartbeats kept across the change"
        );
        let killed = Instant::now();
        drop(a);
        cb.until_leads(LEASE * 2 + Duration::from_secs(2)).await;
        let takeover = killed.elapsed();
        eprintln!("takeover on the campaign's lease, store opened with the default: {takeover:?}");
        assert!(
            takeover <= LEASE * 2 + Duration::from_secs(1),
            "took {takeover:?}"
        );
        let nodes: Vec<String> = b
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(nodes, ["nodes/b"], "a's heartbeat went with its 2 s lease");
        assert_one_leader(&[&ca, &cb]);
        cb.stop.send_replace(true);
    })
    .await;
}
