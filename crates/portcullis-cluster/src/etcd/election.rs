//! The issuer's election: the key `leader`, created on the session lease by a transaction
//! that succeeds only while the key is absent. Its create revision is the fencing token
//! every fenced write compares in its own transaction.
//!
//! Leadership is published (`Some`) only while the session is *fresh*: a keep-alive sent
//! less than two thirds of the lease ago has succeeded. etcd cannot expire the lease (and
//! so delete the key and let another replica in) before a full TTL after that send, so
//! this replica says `None` before anyone else can be elected. It also says `None` at once
//! when the key is deleted or replaced, or the session lease is replaced. When the session
//! comes back fresh and the key still names this replica on its current lease, leadership
//! resumes with the same token.

use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::session::{self, SessionState};
use super::{Inner, LEADER};
use crate::store::{Leadership, StoreError};

/// Runs the campaign in a task of its own.
pub(super) fn spawn(
    inner: &Arc<Inner>,
    lease: Duration,
    stop: watch::Receiver<bool>,
) -> watch::Receiver<Option<Leadership>> {
    let (tx, rx) = watch::channel(None);
    // The session takes the campaign's lease (a store opened with another gets a new
    // session lease at the first round), and freshness is measured against it: the TTL
    // etcd enforces, renewed every third of it.
    inner.session.set_ttl(lease);
    let lease = inner.session.ttl();
    tokio::spawn(run(
        Arc::downgrade(inner),
        inner.closed.clone(),
        lease,
        stop,
        tx,
    ));
    rx
}

/// How a round of the campaign ended.
enum Round {
    /// Campaign again after this pause.
    Again(Duration),
    /// `stop` turned true.
    Stopped,
    /// The store was dropped.
    Closed,
}

struct Campaign {
    lease: Duration,
    stop: watch::Receiver<bool>,
    closed: watch::Receiver<()>,
    tx: watch::Sender<Option<Leadership>>,
}

async fn run(
    weak: Weak<Inner>,
    closed: watch::Receiver<()>,
    lease: Duration,
    stop: watch::Receiver<bool>,
    tx: watch::Sender<Option<Leadership>>,
) {
    let mut c = Campaign {
        lease,
        stop,
        closed,
        tx,
    };
    // Held from the stop on, so the release completes even if the store is dropped as
    // soon as `None` is seen.
    let inner = loop {
        let Some(inner) = weak.upgrade() else {
            c.tx.send_replace(None);
            return;
        };
        if *c.stop.borrow() {
            break inner;
        }
        let round = c.round(&inner).await;
        match round {
            Round::Again(pause) => {
                // A renewal or a new lease may make the next round worth trying now.
                let mut session = inner.session.subscribe();
                session.mark_unchanged();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = session.changed() => {}
                    stop = c.stop.changed() => {
                        // Its sender gone, it can never say stop: take that as one.
                        if stop.is_err() {
                            break inner;
                        }
                    }
                    _ = c.closed.changed() => {
                        c.tx.send_replace(None);
                        return;
                    }
                }
            }
            Round::Stopped => break inner,
            Round::Closed => {
                c.tx.send_replace(None);
                return;
            }
        }
    };
    // Stopped: say so first (nothing is written under this leadership after it), then
    // let the next replica in at once.
    if let Some(lead) = c.tx.send_replace(None) {
        let txn = Txn::new()
            .when([Compare::create_revision(
                inner.key(LEADER),
                CompareOp::Equal,
                lead.token,
            )])
            .and_then([TxnOp::delete(inner.key(LEADER), None)]);
        if let Err(e) = inner.txn(txn).await {
            tracing::warn!(failure = %e, "etcd leader key not released; it expires with the lease");
        }
    }
    session::revoke(&inner).await;
}

impl Campaign {
    fn retry(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(100))
    }

    /// The step-down deadline for `state`: two thirds of the lease after the last renewal.
    fn fresh_until(&self, state: &SessionState) -> Option<Instant> {
        state.renewed.map(|at| at + self.lease * 2 / 3)
    }

    fn is_fresh(&self, state: &SessionState) -> bool {
        self.fresh_until(state)
            .is_some_and(|until| Instant::now() < until)
    }

    /// One attempt: take the key (or find it ours), lead while it lasts, or wait for it
    /// to go.
    async fn round(&mut self, inner: &Arc<Inner>) -> Round {
        let lease_id = match session::ensure(inner).await {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(failure = %e, "etcd campaign: no session lease");
                return Round::Again(self.retry());
            }
        };
        if !self.is_fresh(&inner.session.state()) {
            return Round::Again(self.retry());
        }
        let key = inner.key(LEADER);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                inner.node.clone(),
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = match inner.txn(txn).await {
            Ok(resp) => resp,
            Err(e) => {
                if super::conn::is_lease_gone(&e) {
                    inner.session.forget(lease_id);
                }
                tracing::debug!(failure = %e, "etcd campaign: transaction failed");
                return Round::Again(self.retry());
            }
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return self.lead(inner, lease_id, revision, revision + 1).await;
        }
        let holder = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        match holder {
            None => Round::Again(Duration::ZERO),
            Some(kv) if kv.value() == inner.node.as_bytes() && kv.lease() == lease_id => {
                // Still ours (the session came back before the lease ran out).
                self.lead(inner, lease_id, kv.create_revision(), revision + 1)
                    .await
            }
            Some(_) => self.follow(inner, revision + 1).await,
        }
    }

    /// Leads with `token` until leadership may be lost.
    async fn lead(&mut self, inner: &Arc<Inner>, lease_id: i64, token: i64, from: i64) -> Round {
        let mut session = inner.session.subscribe();
        // Opened before `Some` is published, so nothing slow stands between the freshness
        // check below and the step-down timer.
        let mut watch = open_watch(inner, from, self.retry()).await;
        if !self.is_fresh(&session.borrow_and_update()) {
            return Round::Again(self.retry());
        }
        tracing::info!(node = %inner.node, token, "etcd: this replica leads");
        self.tx.send_replace(Some(Leadership {
            node: inner.node.clone(),
            token,
        }));
        let round = loop {
            let state = *session.borrow_and_update();
            if state.lease != Some(lease_id) {
                break Round::Again(Duration::ZERO);
            }
            let Some(until) = self.fresh_until(&state).filter(|u| Instant::now() < *u) else {
                tracing::warn!(node = %inner.node, "etcd: session not renewed in time; stepping down");
                break Round::Again(self.retry());
            };
            let retry = self.retry();
            let recheck = tokio::select! {
                stop = self.stop.changed() => {
                    if stop.is_err() || *self.stop.borrow() {
                        break Round::Stopped;
                    }
                    false
                }
                _ = self.closed.changed() => break Round::Closed,
                _ = session.changed() => false,
                _ = tokio::time::sleep_until(until) => false,
                gone = key_changed(&mut watch, token) => {
                    if gone {
                        tracing::warn!(node = %inner.node, "etcd: leader key deleted or replaced; stepping down");
                        break Round::Again(Duration::ZERO);
                    }
                    true
                }
                // No watch: look at the key now and then, and try to watch again.
                _ = tokio::time::sleep(retry), if watch.is_none() => true,
            };
            if recheck {
                // Bounded by the step-down deadline, which the top of the loop enforces.
                let check = async {
                    if !self.still_ours(inner, token).await {
                        return None;
                    }
                    Some(open_watch(inner, 0, self.retry()).await)
                };
                match tokio::time::timeout_at(until, check).await {
                    Ok(None) => {
                        tracing::warn!(node = %inner.node, "etcd: leader key no longer this leadership's; stepping down");
                        break Round::Again(Duration::ZERO);
                    }
                    Ok(Some(w)) => watch = w,
                    Err(_) => {}
                }
            }
        };
        if !matches!(round, Round::Stopped) {
            self.tx.send_replace(None);
        }
        round
    }

    async fn still_ours(&self, inner: &Arc<Inner>, token: i64) -> bool {
        let key = inner.key(LEADER);
        match inner
            .conn
            .run_for(self.retry(), |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await
        {
            Ok(resp) => resp
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == token),
            // Unreachable: freshness decides.
            Err(_) => true,
        }
    }

    /// Waits until the key is deleted (or a while has passed, in case the watch missed it).
    async fn follow(&mut self, inner: &Arc<Inner>, from: i64) -> Round {
        let mut watch = open_watch(inner, from, self.retry()).await;
        let poll = tokio::time::sleep(self.lease);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                stop = self.stop.changed() => {
                    if stop.is_err() || *self.stop.borrow() {
                        return Round::Stopped;
                    }
                }
                _ = self.closed.changed() => return Round::Closed,
                _ = &mut poll => return Round::Again(Duration::ZERO),
                // A broken watch leaves the poll to decide, so a watch etcd keeps
                // canceling is not a busy loop.
                changed = key_changed(&mut watch, 0) => {
                    if changed {
                        return Round::Again(Duration::ZERO);
                    }
                }
            }
        }
    }
}

/// A watch on the leader key from `from` (the current revision when 0), if it opens.
async fn open_watch(inner: &Arc<Inner>, from: i64, limit: Duration) -> Option<WatchStream> {
    let key = inner.key(LEADER);
    let opened = inner
        .conn
        .run_for(limit, |mut c| {
            let key = key.clone();
            async move {
                let mut options = WatchOptions::new();
                if from > 0 {
                    options = options.with_start_revision(from);
                }
                c.watch(key, Some(options)).await
            }
        })
        .await;
    match opened {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!(failure = %e, "etcd campaign: no watch on the leader key");
            None
        }
    }
}

/// Resolves `true` when the leader key is deleted or re-created under another token than
/// `token` (any put when `token` is 0), `false` when the watch breaks; never without a
/// watch.
async fn key_changed(watch: &mut Option<WatchStream>, token: i64) -> bool {
    let Some(w) = watch else {
        return std::future::pending().await;
    };
    loop {
        let resp = match w.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) | Err(_) => {
                *watch = None;
                return false;
            }
        };
        if super::watch::ended(&resp).is_some() {
            *watch = None;
            return false;
        }
        for event in resp.events() {
            match (event.event_type(), event.kv()) {
                (EventType::Delete, _) => return true,
                (EventType::Put, Some(kv)) if kv.create_revision() != token || token == 0 => {
                    return true;
                }
                _ => {}
            }
        }
    }
}

impl Inner {
    /// A transaction, bounded and retried like any call.
    pub(super) async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.conn
            .run(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
    }
}
