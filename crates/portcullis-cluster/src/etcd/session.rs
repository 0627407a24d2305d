//! This replica's session: one etcd lease, granted on first need and kept alive by a task
//! of its own every third of its TTL. The heartbeat record and the leader key are attached
//! to it, so both vanish within the TTL once this replica stops renewing it. When renewal
//! has failed for longer than the TTL, or etcd says the lease is gone, the next contact
//! with etcd grants a new one and puts the heartbeat again.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Inner;
use super::conn::{is_lease_gone, map_err};
use crate::store::StoreError;

/// What the session is now, published to the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionState {
    /// The lease in force, as far as this replica knows.
    pub lease: Option<i64>,
    /// When the last keep-alive (or the grant) that succeeded was *sent*: etcd cannot
    /// expire the lease before `renewed + ttl`, whatever the network did since.
    pub renewed: Option<Instant>,
}

/// The session's state and settings.
pub(super) struct Session {
    /// The TTL asked for: the lease rounded up to whole seconds, at least 2. Set when the
    /// store is opened, and again by a campaign given another lease.
    ttl: AtomicI64,
    /// The TTL the lease in force was granted with: when it is not `ttl`, the next
    /// [`ensure`] grants a lease with the new TTL (and the old one is revoked).
    granted_ttl: AtomicI64,
    state: watch::Sender<SessionState>,
    /// The last heartbeat value, put again on each new lease.
    heartbeat: Mutex<Option<Vec<u8>>>,
    /// One grant at a time.
    granting: tokio::sync::Mutex<()>,
    /// Whether the keep-alive task runs.
    running: Mutex<bool>,
    /// Set by [`Session::revoke`]: the task grants no new lease by itself until a
    /// heartbeat or a campaign needs one again.
    released: Mutex<bool>,
}

/// `lease` rounded up to whole seconds, at least 2 (etcd's own minimum, near enough).
fn ttl_of(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(2)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Session {
    pub(super) fn new(lease: Duration) -> Self {
        Self {
            ttl: AtomicI64::new(ttl_of(lease)),
            granted_ttl: AtomicI64::new(0),
            state: watch::channel(SessionState {
                lease: None,
                renewed: None,
            })
            .0,
            heartbeat: Mutex::new(None),
            granting: tokio::sync::Mutex::new(()),
            running: Mutex::new(false),
            released: Mutex::new(false),
        }
    }

    /// The TTL as a duration.
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl.load(Ordering::Relaxed).unsigned_abs())
    }

    /// Makes the session's TTL `lease`'s; a lease granted with another is replaced at the
    /// next [`ensure`].
    pub(super) fn set_ttl(&self, lease: Duration) {
        self.ttl.store(ttl_of(lease), Ordering::Relaxed);
    }

    /// The lease in force, if it was granted with the TTL wanted now.
    fn current(&self) -> Option<i64> {
        let ttl = self.ttl.load(Ordering::Relaxed);
        self.state()
            .lease
            .filter(|_| self.granted_ttl.load(Ordering::Relaxed) == ttl)
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.state.subscribe()
    }

    pub(super) fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    pub(super) fn remember_heartbeat(&self, value: Vec<u8>) {
        *lock(&self.heartbeat) = Some(value);
    }

    /// Forgets `lease` (etcd said it is gone, or it could not be renewed within its TTL),
    /// unless a newer one already replaced it.
    pub(super) fn forget(&self, lease: i64) {
        self.state.send_if_modified(|s| {
            if s.lease == Some(lease) {
                *s = SessionState {
                    lease: None,
                    renewed: None,
                };
                true
            } else {
                false
            }
        });
    }
}

/// The lease in force, granted now if there is none (and the heartbeat put on it).
pub(super) async fn ensure(inner: &Arc<Inner>) -> Result<i64, StoreError> {
    start_task(inner);
    *lock(&inner.session.released) = false;
    if let Some(lease) = inner.session.current() {
        return Ok(lease);
    }
    let _one = inner.session.granting.lock().await;
    if let Some(lease) = inner.session.current() {
        return Ok(lease);
    }
    grant(inner).await
}

/// Grants a new lease, publishes it, puts the remembered heartbeat on it, and revokes the
/// one it replaces.
async fn grant(inner: &Arc<Inner>) -> Result<i64, StoreError> {
    let ttl = inner.session.ttl.load(Ordering::Relaxed);
    let sent = Instant::now();
    let granted = inner
        .conn
        .run(|mut c| async move { c.lease_grant(ttl, None).await })
        .await?;
    let lease = granted.id();
    tracing::debug!(lease, ttl = granted.ttl(), "etcd session lease granted");
    inner.session.granted_ttl.store(ttl, Ordering::Relaxed);
    let old = inner.session.state.send_replace(SessionState {
        lease: Some(lease),
        renewed: Some(sent),
    });
    let value = lock(&inner.session.heartbeat).clone();
    if let Some(value) = value
        && let Err(e) = put_heartbeat(inner, lease, value).await
    {
        tracing::warn!(failure = %e, "etcd heartbeat not put on the new lease");
    }
    if let Some(old) = old.lease {
        // It may outlive this replica's belief in it (a new etcd leader extends leases),
        // or have had another TTL: revoke it so what still hangs on it goes now rather
        // than at its TTL. After the heartbeat moved to the new lease, so the heartbeat
        // never goes meanwhile.
        let weak = Arc::downgrade(inner);
        tokio::spawn(async move {
            if let Some(inner) = weak.upgrade() {
                let _ = inner
                    .conn
                    .run(|mut c| async move { c.lease_revoke(old).await })
                    .await;
            }
        });
    }
    Ok(lease)
}

/// Puts `nodes/<node>` on `lease`.
pub(super) async fn put_heartbeat(
    inner: &Arc<Inner>,
    lease: i64,
    value: Vec<u8>,
) -> Result<(), StoreError> {
    let key = inner.key(&format!("{}{}", super::NODES, inner.node));
    let result = inner
        .conn
        .run(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await;
    if let Err(e) = &result
        && is_lease_gone(e)
    {
        inner.session.forget(lease);
    }
    result.map(drop)
}

/// Revokes the lease (at the end of a campaign): the leader key and the heartbeat go at
/// once instead of at the TTL.
pub(super) async fn revoke(inner: &Arc<Inner>) {
    *lock(&inner.session.released) = true;
    let Some(lease) = inner.session.state().lease else {
        return;
    };
    inner.session.forget(lease);
    if let Err(e) = inner
        .conn
        .run(|mut c| async move { c.lease_revoke(lease).await })
        .await
    {
        tracing::debug!(failure = %e, "etcd session lease not revoked; it expires by itself");
    }
}

fn start_task(inner: &Arc<Inner>) {
    let mut running = lock(&inner.session.running);
    if !*running {
        *running = true;
        tokio::spawn(keep_alive(Arc::downgrade(inner), inner.closed.clone()));
    }
}

/// After a renewal that failed, the next try comes this soon (or a period, if shorter): a
/// link back before the lease ran out renews it in time to keep the leadership.
const RETRY: Duration = Duration::from_millis(300);

/// Renews the lease every third of its TTL until the store is dropped.
async fn keep_alive(inner: Weak<Inner>, mut closed: watch::Receiver<()>) {
    let mut stream: Option<(i64, LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        let Some(store) = inner.upgrade() else { return };
        let period = store.session.ttl() / 3;
        let started = Instant::now();
        let next = if tick(&store, &mut stream, period).await {
            started + period
        } else {
            Instant::now() + RETRY.min(period)
        };
        drop(store);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = closed.changed() => return,
        }
    }
}

/// One renewal (or, with no lease and a heartbeat to keep, one grant): whether etcd
/// answered as hoped.
async fn tick(
    inner: &Arc<Inner>,
    stream: &mut Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
    limit: Duration,
) -> bool {
    let session = &inner.session;
    let state = session.state();
    let Some(lease) = state.lease else {
        *stream = None;
        let wanted = lock(&session.heartbeat).is_some() && !*lock(&session.released);
        if wanted {
            let _one = session.granting.lock().await;
            if session.state().lease.is_none()
                && let Err(e) = grant(inner).await
            {
                tracing::debug!(failure = %e, "etcd session lease not granted yet");
                return false;
            }
        }
        return true;
    };
    let sent = Instant::now();
    match renew(inner, stream, lease, limit).await {
        Ok(true) => {
            session.state.send_if_modified(|s| {
                if s.lease == Some(lease) {
                    s.renewed = Some(sent);
                    true
                } else {
                    false
                }
            });
            true
        }
        Ok(false) => {
            tracing::warn!(
                lease,
                "etcd says the session lease is gone; granting another"
            );
            *stream = None;
            session.forget(lease);
            if *lock(&session.released) {
                return true;
            }
            let _one = session.granting.lock().await;
            session.state().lease.is_some() || grant(inner).await.is_ok()
        }
        Err(e) => {
            *stream = None;
            let renewed = state.renewed.unwrap_or(sent);
            if sent.duration_since(renewed) > session.ttl() {
                tracing::warn!(lease, failure = %e, "etcd session lease not renewed within its TTL; a new one will be granted");
                session.forget(lease);
            } else {
                tracing::debug!(lease, failure = %e, "etcd session lease not renewed");
            }
            false
        }
    }
}

/// One keep-alive on the open stream (opened now if needed): `Ok(false)` when etcd says
/// the lease no longer exists.
async fn renew(
    inner: &Arc<Inner>,
    stream: &mut Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
    lease: i64,
    limit: Duration,
) -> Result<bool, StoreError> {
    if let Some((id, keeper, responses)) = stream
        && *id == lease
    {
        let once = async {
            keeper.keep_alive().await?;
            responses.message().await
        };
        return match tokio::time::timeout(limit, once).await {
            Ok(Ok(Some(resp))) => Ok(resp.ttl() > 0),
            Ok(Ok(None)) => Err(StoreError::Unavailable("keep-alive stream ended".into())),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no keep-alive answer within {limit:?}"
            ))),
        };
    }
    // Opening the stream sends the first keep-alive and waits for its answer.
    let opened = inner
        .conn
        .run_for(
            limit,
            |mut c| async move { c.lease_keep_alive(lease).await },
        )
        .await;
    match opened {
        Ok((keeper, responses)) => {
            *stream = Some((lease, keeper, responses));
            Ok(true)
        }
        Err(e) if is_lease_gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
