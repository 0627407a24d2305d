//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it: read the Lease, take it only when its holder's lease has run out, write with the
//! `resourceVersion` read as a precondition (a 409 means another replica won), renew while
//! leading, and step down before the lease can expire when renewals stop succeeding.
//!
//! # No fencing
//! A Lease gives no fencing token: a write the leader sends just before it steps down can
//! reach the API server after another replica took over. What keeps two leaders from acting
//! at once is timing: a leader stops acting `renew_deadline` after the *start* of its last
//! successful renewal, while another replica takes the Lease only once it has seen the
//! record unchanged for `lease_duration` (> `renew_deadline`) on its own clock. That holds as
//! long as clocks run at roughly the same rate; no wall-clock agreement is needed. It is
//! enough here because everything only the leader does (Ingress status, Events, ACME
//! Secrets) is idempotent and converges: a late write by a former leader is overwritten by
//! the new leader's next sync.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The default `--election-id`.
pub const DEFAULT_ELECTION_ID: &str = "portcullis-leader";

/// How long a lease lasts and how often it is renewed. The defaults are client-go's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long the holder's lease lasts after its last renewal, as the other replicas
    /// count it (written to `leaseDurationSeconds`, whole seconds, at least 1).
    pub lease_duration: Duration,
    /// The leader steps down when no renewal has succeeded for this long; must be shorter
    /// than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the Lease is read (to take it) or renewed (to keep it).
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// Whether these timings can keep two leaders from acting at once: `retry_period <
    /// renew_deadline < lease_duration`, and a lease of at least one second.
    pub fn is_valid(&self) -> bool {
        self.retry_period < self.renew_deadline
            && self.renew_deadline < self.lease_duration
            && self.lease_duration >= Duration::from_secs(1)
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// This replica's identity in the Lease: `$POD_NAME` when set (the Deployment passes it
/// with the downward API), else `$HOSTNAME` (a pod's name by default), else the host name
/// file, followed by `_` and the process id so that two processes on one host differ.
/// Every call after the first in one process adds `_2`, `_3`…: two controllers in one
/// process (the tests) are two replicas.
pub fn default_identity() -> String {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = base_identity();
    if n == 0 {
        base
    } else {
        format!("{base}_{}", n + 1)
    }
}

fn base_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            #[allow(
                clippy::disallowed_methods,
                reason = "read once at start, before any runtime work"
            )]
            std::fs::read_to_string("/etc/hostname").ok()
        })
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portcullis".to_owned());
    format!("{host}_{}", std::process::id())
}

/// Takes and keeps one Lease. Create it, [`subscribe`](Self::subscribe) to learn whether
/// this replica leads, then drive [`run`](Self::run) until shutdown.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    leader: watch::Sender<bool>,
}

/// What one look at the Lease came to.
enum Attempt {
    /// We hold it, renewed by a write that was sent at the instant given.
    Held(Instant),
    /// Another replica holds it (or won the race to it).
    Other,
}

/// Where the Lease stood when last read, by our clock (client-go's `observedTime`).
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    at: Instant,
}

impl Elector {
    /// An elector for the Lease `namespace`/`name`, competing as `identity`.
    ///
    /// # Panics
    /// If `timings` are not [valid](LeaseTimings::is_valid): they come from code or
    /// validated flags, and invalid ones would allow two leaders at once.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: impl Into<String>,
        timings: LeaseTimings,
    ) -> Self {
        assert!(
            timings.is_valid(),
            "lease timings must satisfy retry < renew deadline < lease duration: {timings:?}"
        );
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.into(),
            timings,
            leader: watch::channel(false).0,
        }
    }

    /// This replica's identity in the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// `true` while this replica leads. Starts `false`; turns `false` again when the
    /// elector steps down, stops, or is dropped.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// Competes for the Lease until `stop` turns true, then releases it if held (so another
    /// replica takes over at once instead of after the lease duration). Dropping the future
    /// instead (a crash, in effect) leaves the Lease to expire; the receivers see `false`
    /// either way.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let _not_leader_when_gone = ClearOnDrop(&self.leader);
        let mut observed: Option<Observed> = None;
        // When the last successful renewal was sent.
        let mut renewed: Option<Instant> = None;
        loop {
            let leading = renewed.is_some();
            let attempt = async {
                match renewed {
                    // A leader's attempt may take no longer than what is left of its
                    // deadline: a hung API server must not keep it leading.
                    Some(at) => {
                        let deadline = at + self.timings.renew_deadline;
                        tokio::time::timeout_at(deadline, self.try_acquire_or_renew(&mut observed))
                            .await
                            .unwrap_or(Err(None))
                    }
                    None => tokio::time::timeout(
                        self.timings.renew_deadline,
                        self.try_acquire_or_renew(&mut observed),
                    )
                    .await
                    .unwrap_or(Err(None)),
                }
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match result {
                Ok(Attempt::Held(at)) => {
                    if !leading {
                        info!(lease = %self.name, identity = %self.identity, "became the leader");
                    }
                    renewed = Some(at);
                    self.leader
                        .send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(Attempt::Other) => {
                    if leading {
                        warn!(lease = %self.name, identity = %self.identity, holder = ?observed.as_ref().and_then(|o| o.holder.clone()), "lost the lease to another replica; stepping down");
                    }
                    renewed = None;
                    self.leader
                        .send_if_modified(|l| std::mem::replace(l, false));
                }
                Err(error) => {
                    if let Some(at) = renewed {
                        if at.elapsed() >= self.timings.renew_deadline {
                            warn!(lease = %self.name, identity = %self.identity, error = ?error.map(|e| e.to_string()), "could not renew the lease within the renew deadline; stepping down");
                            renewed = None;
                            self.leader
                                .send_if_modified(|l| std::mem::replace(l, false));
                        } else {
                            debug!(lease = %self.name, error = ?error.map(|e| e.to_string()), "lease renewal failed; retrying");
                        }
                    } else {
                        debug!(lease = %self.name, error = ?error.map(|e| e.to_string()), "cannot read or take the lease; retrying");
                    }
                }
            }
            let wait = self.timings.retry_period;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if renewed.is_some() {
            self.leader.send_replace(false);
            self.release().await;
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`. `Err(None)` is a timeout.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
    ) -> Result<Attempt, Option<kube::Error>> {
        let sent = Instant::now();
        let now = MicroTime(Timestamp::now());
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(Some)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.timings.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    *observed = Some(observe(&created, Instant::now()));
                    Ok(Attempt::Held(sent))
                }
                // Another replica created it first: read it on the next round.
                Err(e) if is_status(&e, 409) => Ok(Attempt::Other),
                Err(e) => Err(Some(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        // The lease runs from when *we* first saw its current record, not from the
        // renewTime it carries: another node's clock is not trusted to agree with ours.
        let seen = observe(&lease, Instant::now());
        let unchanged = observed.as_ref().is_some_and(|o| {
            o.holder == seen.holder
                && o.renew_time == seen.renew_time
                && o.resource_version == seen.resource_version
        });
        if !unchanged {
            *observed = Some(seen);
        }
        let since = observed.as_ref().map_or(sent, |o| o.at);
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine && holder.is_some() && since + duration > Instant::now() {
            return Ok(Attempt::Other);
        }

        let mut next = lease.clone();
        let next_spec = next.spec.get_or_insert_with(LeaseSpec::default);
        if !mine {
            next_spec.acquire_time = Some(now.clone());
            next_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            next_spec.holder_identity = Some(self.identity.clone());
        }
        next_spec.lease_duration_seconds = Some(self.timings.lease_seconds());
        next_spec.renew_time = Some(now);
        // `next` carries the resourceVersion read: a write by anyone in between is a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                if !mine {
                    debug!(lease = %self.name, previous = ?holder, "took over the lease");
                }
                *observed = Some(observe(&written, Instant::now()));
                Ok(Attempt::Held(sent))
            }
            Err(e) if is_status(&e, 409) => Ok(Attempt::Other),
            Err(e) => Err(Some(e)),
        }
    }

    /// Gives the Lease up: holder cleared and a one-second duration, so the next replica to
    /// look takes it at once. Best effort (shutdown goes on if the API server is away).
    async fn release(&self) {
        let result = tokio::time::timeout(self.timings.renew_deadline, async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(()); // no longer ours: nothing to give up
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        })
        .await;
        match result {
            Ok(Ok(())) => {
                info!(lease = %self.name, identity = %self.identity, "released the lease")
            }
            Ok(Err(e)) => {
                warn!(lease = %self.name, error = %e, "could not release the lease; it will expire")
            }
            Err(_) => warn!(lease = %self.name, "timed out releasing the lease; it will expire"),
        }
    }
}

/// Sets the leader flag to `false` when the elector goes away, however it goes.
struct ClearOnDrop<'a>(&'a watch::Sender<bool>);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.send_if_modified(|l| std::mem::replace(l, false));
    }
}

fn observe(lease: &Lease, at: Instant) -> Observed {
    let spec = lease.spec.as_ref();
    Observed {
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        renew_time: spec.and_then(|s| s.renew_time.clone()),
        resource_version: lease.metadata.resource_version.clone(),
        at,
    }
}

/// Whether `e` is an API error with HTTP status `code`.
pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_must_leave_the_lease_outliving_the_renew_deadline() {
        assert!(LeaseTimings::default().is_valid());
        let t = LeaseTimings {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert!(
            !t.is_valid(),
            "a deadline equal to the lease allows two leaders"
        );
        let t = LeaseTimings {
            retry_period: Duration::from_secs(12),
            ..LeaseTimings::default()
        };
        assert!(!t.is_valid());
        let t = LeaseTimings {
            lease_duration: Duration::from_millis(900),
            renew_deadline: Duration::from_millis(500),
            retry_period: Duration::from_millis(100),
        };
        assert!(!t.is_valid(), "leaseDurationSeconds is whole seconds");
    }

    #[test]
    fn identities_differ_within_one_process() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
    }
}
