//! Leader election on a Lease in the fake API server: one leader at a time, take-over when
//! the leader releases, dies or cannot renew, and the resourceVersion precondition that makes
//! a lost race a 409.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use portcullis_k8s::{Elector, LeaseTimings};
use portcullis_tests::FakeApiServer;
use portcullis_tests::wait::until;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LEASE: &str = "portcullis-leader";

fn timings() -> LeaseTimings {
    LeaseTimings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    }
}

struct Running {
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn elector(api: &FakeApiServer, identity: &str) -> Running {
    let e = Elector::new(api.client().await, "default", LEASE, identity, timings());
    let leader = e.subscribe();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(e.run(stop_rx));
    Running { leader, stop, task }
}

fn leads(r: &Running) -> bool {
    *r.leader.borrow()
}

fn holder(api: &FakeApiServer) -> Option<String> {
    api.get::<Lease>("default", LEASE)?.spec?.holder_identity
}

fn transitions(api: &FakeApiServer) -> i32 {
    api.get::<Lease>("default", LEASE)
        .and_then(|l| l.spec?.lease_transitions)
        .unwrap_or(-1)
}

/// Waits for exactly one of `a`, `b` to lead; gives its index.
async fn one_leads(a: &Running, b: &Running) -> usize {
    until(Duration::from_secs(5), "a leader", || async {
        match (leads(a), leads(b)) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await
}

/// Watches `a` and `b` for `period`, failing if both ever lead at once.
async fn never_both(a: &Running, b: &Running, period: Duration) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(!(leads(a) && leads(b)), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_electors_one_leads_and_the_other_takes_over_when_it_stops() {
    let api = FakeApiServer::start().await;
    let mut pair = vec![elector(&api, "pod-a").await, elector(&api, "pod-b").await];
    let first = one_leads(&pair[0], &pair[1]).await;
    let names = ["pod-a", "pod-b"];
    assert_eq!(holder(&api).as_deref(), Some(names[first]));
    // Several renewals: the leader keeps it, the other never leads alongside.
    never_both(&pair[0], &pair[1], Duration::from_secs(2)).await;
    assert!(leads(&pair[first]));
    assert_eq!(transitions(&api), 0);

    // A clean stop releases the Lease: the other takes it at its next look, long before
    // the lease duration.
    let leader = pair.remove(first);
    let other = pair.remove(0);
    let stopped = Instant::now();
    leader.stop.send_replace(true);
    leader.task.await.unwrap();
    assert!(!*leader.leader.borrow());
    until(
        Duration::from_secs(2),
        "the other elector leading",
        || async { leads(&other).then_some(()) },
    )
    .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(1500),
        "took over after {:?}, not at once",
        stopped.elapsed()
    );
    assert_eq!(holder(&api).as_deref(), Some(names[1 - first]));
    assert_eq!(transitions(&api), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_is_replaced_within_the_lease_duration() {
    let api = FakeApiServer::start().await;
    let a = elector(&api, "pod-a").await;
    until(Duration::from_secs(5), "pod-a leading", || async {
        leads(&a).then_some(())
    })
    .await;
    let b = elector(&api, "pod-b").await;
    never_both(&a, &b, Duration::from_secs(1)).await;
    assert!(!leads(&b));

    // Killed: no release, the Lease still names pod-a until it expires.
    a.task.abort();
    let killed = Instant::now();
    until(Duration::from_secs(5), "pod-b leading", || async {
        leads(&b).then_some(())
    })
    .await;
    let took = killed.elapsed();
    // At least the lease duration after pod-a's last renewal (which can be up to one retry
    // period before the kill), and not much more than the lease duration after the kill.
    assert!(
        took >= Duration::from_millis(1700),
        "took over after {took:?}: before the lease could have expired"
    );
    assert!(
        took <= Duration::from_millis(2800),
        "took over after {took:?}: later than lease + two retries"
    );
    assert_eq!(holder(&api).as_deref(), Some("pod-b"));
    assert_eq!(transitions(&api), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_holder_is_respected_and_a_stale_write_loses() {
    let api = FakeApiServer::start().await;
    let client = api.client().await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let now = || Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    let held = leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("someone-else".into()),
                    lease_duration_seconds: Some(2),
                    renew_time: now(),
                    lease_transitions: Some(4),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .unwrap();

    // A write carrying an old resourceVersion is refused with 409: the precondition the
    // elector's take-over relies on.
    let mut renewed = held.clone();
    renewed.spec.as_mut().unwrap().renew_time = now();
    let renewed = leases
        .replace(LEASE, &PostParams::default(), &renewed)
        .await
        .unwrap();
    let mut stale = held.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("pod-a".into());
    let err = leases
        .replace(LEASE, &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );

    // While "someone-else" keeps renewing, the elector only watches.
    let a = elector(&api, "pod-a").await;
    let mut current = renewed;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        current.spec.as_mut().unwrap().renew_time = now();
        current = leases
            .replace(LEASE, &PostParams::default(), &current)
            .await
            .unwrap();
        assert!(!leads(&a), "took a lease that was being renewed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // It stops renewing: the elector takes over once the lease has run out.
    until(Duration::from_secs(5), "pod-a leading", || async {
        leads(&a).then_some(())
    })
    .await;
    assert_eq!(holder(&api).as_deref(), Some("pod-a"));
    assert_eq!(transitions(&api), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let api = FakeApiServer::start().await;
    let a = elector(&api, "pod-a").await;
    let mut leader = a.leader.clone();
    until(Duration::from_secs(5), "pod-a leading", || async {
        leads(&a).then_some(())
    })
    .await;
    // Requests hang from now on: the renewals cannot succeed.
    api.blackhole(true);
    let cut = Instant::now();
    tokio::time::timeout(Duration::from_secs(4), leader.wait_for(|l| !*l))
        .await
        .expect("stepped down")
        .unwrap();
    let after = cut.elapsed();
    // The last renewal started at most one retry period before the cut; the step-down
    // comes at that renewal's deadline, before the lease (2 s) can run out.
    assert!(
        after < timings().lease_duration - Duration::from_millis(200),
        "stepped down {after:?} after the cut: the lease may have expired already"
    );
    assert!(after >= Duration::from_millis(1200), "{after:?}");
    api.blackhole(false);
    a.task.abort();
}
