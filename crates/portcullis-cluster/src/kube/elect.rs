//! The issuer's election on the Lease [`ISSUER_LEASE`], client-go's way (as
//! `portcullis-k8s`'s `leader.rs`), plus a fencing token: `spec.leaseTransitions`, raised by
//! one at every acquisition (a replica taking the Lease back after stepping down included),
//! so that each leadership has a token no earlier one had.
//!
//! Timings from the lease `L`: the Lease says `leaseDurationSeconds = L`; it is renewed
//! every `L/3`; the leader steps down when no renewal has succeeded for `2L/3` (before any
//! other replica may take it: they wait `L` from when they first saw the record unchanged,
//! on their own clocks).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Held, ISSUER_LEASE, KubeStore, MANAGED_BY_LABEL, bounded, bounded_until, is_status, store_error,
};
use crate::store::{Leadership, StoreError};

/// Where the Lease stood when last read, by our clock (client-go's `observedTime`).
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    at: Instant,
}

fn observe(lease: &Lease, at: Instant) -> Observed {
    let spec = lease.spec.as_ref();
    Observed {
        holder: holder(lease),
        renew_time: spec.and_then(|s| s.renew_time.clone()),
        resource_version: lease.metadata.resource_version.clone(),
        at,
    }
}

fn holder(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

/// Whole seconds, at least one, as `leaseDurationSeconds` holds it.
fn lease_seconds(lease: Duration) -> i32 {
    i32::try_from(lease.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Whether `lease` is held by someone by the wall clock (its renewTime plus duration is
/// still ahead): for one-off reads, where no observation over time is possible.
pub(super) fn unexpired(lease: &Lease) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return false;
    };
    let until = renewed
        .0
        .checked_add(std::time::Duration::from_secs(
            u64::try_from(seconds).unwrap_or(0),
        ))
        .ok();
    until.is_some_and(|u| u > Timestamp::now())
}

pub(super) async fn leader(store: &KubeStore) -> Result<Option<String>, StoreError> {
    let api: Api<Lease> = Api::namespaced(store.client.clone(), &store.namespace);
    let lease = bounded(api.get_opt(ISSUER_LEASE))
        .await
        .map_err(|e| store_error(e, "get", "leases", &store.namespace))?;
    Ok(lease.filter(unexpired).as_ref().and_then(holder))
}

/// Publishes `None` when the campaign's task ends, however it ends.
struct ClearOnDrop(Arc<KubeStore>, watch::Sender<Option<Leadership>>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.set_held(None);
        self.1.send_if_modified(|l| l.take().is_some());
    }
}

pub(super) fn campaign(
    store: Arc<KubeStore>,
    lease: Duration,
    stop: watch::Receiver<bool>,
) -> watch::Receiver<Option<Leadership>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(store, lease, stop, tx));
    rx
}

async fn run(
    store: Arc<KubeStore>,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
    tx: watch::Sender<Option<Leadership>>,
) {
    let api: Api<Lease> = Api::namespaced(store.client.clone(), &store.namespace);
    let guard = ClearOnDrop(store.clone(), tx);
    let tx = &guard.1;
    let retry = lease / 3;
    let deadline = lease * 2 / 3;
    let mut observed: Option<Observed> = None;
    // The token held and when its last successful renewal was sent.
    let mut leading: Option<(i64, Instant)> = None;
    let step_down = |why: &str, leading: &mut Option<(i64, Instant)>| {
        if let Some((token, _)) = leading.take() {
            warn!(node = %store.node, token, "{why}; no longer the issuer");
        }
        store.set_held(None);
        tx.send_if_modified(|l| l.take().is_some());
    };
    loop {
        if leading.is_some_and(|(_, at)| at.elapsed() >= deadline) {
            step_down("could not renew the issuer's lease in time", &mut leading);
        }
        let until = match leading {
            Some((_, at)) => at + deadline,
            None => Instant::now() + super::CALL_TIMEOUT,
        };
        let attempt = try_acquire_or_renew(&store, &api, &mut observed, leading, lease, until);
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match result {
            Ok(Some((token, sent))) => {
                // Held before published: whoever hears of the leadership may write at once.
                store.set_held(Some(Held {
                    token,
                    renewed: sent,
                    deadline,
                }));
                if leading.map(|l| l.0) != Some(token) {
                    info!(node = %store.node, token, "became the issuer");
                    tx.send_replace(Some(Leadership {
                        node: store.node.clone(),
                        token,
                    }));
                }
                leading = Some((token, sent));
            }
            Ok(None) => step_down("another replica holds the issuer's lease", &mut leading),
            Err(e) => {
                debug!(node = %store.node, error = %e, "issuer's lease: read or renewal failed")
            }
        }
        // Wake for the step-down deadline too, not only for the next attempt.
        let mut wake = Instant::now() + retry;
        if let Some((_, at)) = leading {
            wake = wake.min(at + deadline);
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some((token, _)) = leading {
        store.set_held(None);
        tx.send_replace(None);
        release(&store, &api, token).await;
    }
}

/// One look at the Lease: `Some((token, sent))` when this replica holds it after the
/// write sent at `sent`, `None` when another one does.
async fn try_acquire_or_renew(
    store: &KubeStore,
    api: &Api<Lease>,
    observed: &mut Option<Observed>,
    leading: Option<(i64, Instant)>,
    lease: Duration,
    until: Instant,
) -> Result<Option<(i64, Instant)>, kube::Error> {
    let sent = Instant::now();
    let now = MicroTime(Timestamp::now());
    let Some(current) = bounded_until(until, api.get_opt(ISSUER_LEASE)).await? else {
        let created = Lease {
            metadata: ObjectMeta {
                name: Some(ISSUER_LEASE.to_owned()),
                labels: Some([(MANAGED_BY_LABEL.to_owned(), "portcullis".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(store.node.clone()),
                lease_duration_seconds: Some(lease_seconds(lease)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                // The first leadership is token 1: no record carries a token of 0.
                lease_transitions: Some(1),
                ..LeaseSpec::default()
            }),
        };
        return match bounded_until(until, api.create(&PostParams::default(), &created)).await {
            Ok(created) => {
                *observed = Some(observe(&created, Instant::now()));
                Ok(Some((1, sent)))
            }
            Err(e) if is_status(&e, 409) => Ok(None),
            Err(e) => Err(e),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let transitions = i64::from(spec.lease_transitions.unwrap_or(0));
    let holder = holder(&current);
    // The lease runs from when *we* first saw its current record, not from the renewTime
    // it carries: another node's clock is not trusted to agree with ours.
    let seen = observe(&current, Instant::now());
    let unchanged = observed.as_ref().is_some_and(|o| {
        o.holder == seen.holder
            && o.renew_time == seen.renew_time
            && o.resource_version == seen.resource_version
    });
    if !unchanged {
        *observed = Some(seen);
    }
    let since = observed.as_ref().map_or(sent, |o| o.at);
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    let mine = holder.as_deref() == Some(store.node.as_str());
    // Ours and still the leadership we hold: a renewal. Anything else is an acquisition,
    // with a new token (even of a Lease still naming us, from before we stepped down).
    let renewal = mine && leading.is_some_and(|(token, _)| token == transitions);
    if !mine && holder.is_some() && since + duration > Instant::now() {
        return Ok(None);
    }
    let mut next = current.clone();
    let next_spec = next.spec.get_or_insert_with(LeaseSpec::default);
    let token = if renewal {
        transitions
    } else {
        next_spec.acquire_time = Some(now.clone());
        next_spec.holder_identity = Some(store.node.clone());
        transitions + 1
    };
    next_spec.lease_transitions = Some(i32::try_from(token).unwrap_or(i32::MAX));
    next_spec.lease_duration_seconds = Some(lease_seconds(lease));
    next_spec.renew_time = Some(now);
    // `next` carries the resourceVersion read: a write by anyone in between is a 409.
    match bounded_until(
        until,
        api.replace(ISSUER_LEASE, &PostParams::default(), &next),
    )
    .await
    {
        Ok(written) => {
            if !renewal {
                debug!(node = %store.node, previous = ?holder, token, "took the issuer's lease");
            }
            *observed = Some(observe(&written, Instant::now()));
            Ok(Some((token, sent)))
        }
        Err(e) if is_status(&e, 409) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if it is still ours: holder cleared, so the next replica to look
/// takes it at once. Best effort.
async fn release(store: &KubeStore, api: &Api<Lease>, token: i64) {
    let result = bounded(async {
        let Some(mut lease) = api.get_opt(ISSUER_LEASE).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(store.node.as_str())
            || spec.lease_transitions.map(i64::from) != Some(token)
        {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        api.replace(ISSUER_LEASE, &PostParams::default(), &lease)
            .await
            .map(|_| true)
    })
    .await;
    match result {
        Ok(true) => info!(node = %store.node, token, "released the issuer's lease"),
        Ok(false) => {}
        Err(e) => {
            warn!(node = %store.node, error = %e, "could not release the issuer's lease; it will expire")
        }
    }
}
