//! WATCH: one task per open watch, reading the store's history from the RV it has reached,
//! so replaying the past and following the present are the same loop.
//!
//! A label or field selector applies to the object before and after each change, as the
//! real server's watch cache does: an object that starts matching arrives as ADDED, one that
//! stops matching as DELETED.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::kinds::KINDS;
use super::selector::Selector;
use super::shared::{Body, Shared};
use super::store::{Change, ChangeType, Inner, key_of};

/// Where a watch begins.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Events after this RV (from history; 410 when it is gone).
    From(u64),
    /// ADDED for every current object first; with `end_marker`, then a BOOKMARK annotated
    /// `k8s.io/initial-events-end` (`sendInitialEvents=true`).
    Initial { end_marker: bool },
}

/// A parsed watch request.
#[derive(Debug)]
pub(crate) struct WatchOpts {
    pub selector: Selector,
    pub start: Start,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
}

fn event(kind: &str, obj: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("a JSON value serializes");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(k: usize, rv: u64, initial_end: bool) -> Bytes {
    let kind = &KINDS[k];
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event(
        "BOOKMARK",
        &json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": meta}),
    )
}

fn expired(rv: u64, compacted: u64) -> Bytes {
    let status =
        super::status::ApiError::expired(format!("too old resource version: {rv} ({compacted})"));
    event("ERROR", &status.to_status())
}

/// The event one change makes for a watcher with `selector` in `ns`, if any.
fn frame_for(ch: &Change, ns: Option<&str>, selector: &Selector) -> Option<Bytes> {
    if ns.is_some_and(|n| key_of(&ch.obj).0 != n) {
        return None;
    }
    let now = selector.matches(&ch.obj);
    let before = ch.prev.as_ref().is_some_and(|p| selector.matches(p));
    let kind = match ch.kind {
        ChangeType::Added => now.then_some("ADDED"),
        ChangeType::Deleted => now.then_some("DELETED"),
        ChangeType::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }?;
    Some(event(kind, &ch.obj))
}

/// Queues the events after `cursor`; returns the RV now reached, or `None` when history
/// after `cursor` is gone (the watcher must re-list).
fn drain(
    inner: &Inner,
    k: usize,
    cursor: u64,
    ns: Option<&str>,
    selector: &Selector,
    out: &mut VecDeque<Bytes>,
) -> Option<u64> {
    let c = &inner.collections[k];
    if c.trimmed > cursor {
        return None;
    }
    let first = c.history.partition_point(|ch| ch.rv <= cursor);
    out.extend(
        c.history
            .range(first..)
            .filter_map(|ch| frame_for(ch, ns, selector)),
    );
    Some(inner.rv.max(cursor))
}

/// The body of a watch response: JSON lines produced by a task until the watch ends.
pub(crate) fn stream(shared: Arc<Shared>, k: usize, ns: Option<String>, opts: WatchOpts) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        shared
            .open_watches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        run(&shared, k, ns.as_deref(), opts, tx).await;
        shared
            .open_watches
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

async fn run(
    shared: &Shared,
    k: usize,
    ns: Option<&str>,
    opts: WatchOpts,
    tx: mpsc::Sender<Bytes>,
) {
    let mut changed = shared.store.subscribe();
    let mut control = shared.control.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let generation = control.borrow_and_update().drop_generation;
    let mut pending = VecDeque::new();
    let mut gone = false;
    let mut cursor = {
        changed.borrow_and_update();
        let inner = shared.store.lock();
        match opts.start {
            Start::From(rv) => {
                if inner.too_old(k, rv) {
                    pending.push_back(expired(rv, inner.compacted));
                    gone = true;
                }
                rv
            }
            Start::Initial { end_marker } => {
                let objects = &inner.collections[k].objects;
                let range = match ns {
                    Some(n) => objects.range((n.to_owned(), String::new())..),
                    None => objects.range::<(String, String), _>(..),
                };
                pending.extend(
                    range
                        .take_while(|(key, _)| ns.is_none_or(|n| key.0 == n))
                        .filter(|(_, obj)| opts.selector.matches(obj))
                        .map(|(_, obj)| event("ADDED", obj)),
                );
                if end_marker {
                    pending.push_back(bookmark(k, inner.rv, true));
                }
                inner.rv
            }
        }
    };
    let interval = shared.options.bookmark_interval;
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut next_bookmark = Instant::now() + interval;
    loop {
        let quiet = {
            let c = control.borrow_and_update();
            if c.drop_generation != generation {
                return;
            }
            c.quiet()
        };
        if !quiet {
            if !gone {
                changed.borrow_and_update();
                let inner = shared.store.lock();
                match drain(&inner, k, cursor, ns, &opts.selector, &mut pending) {
                    Some(rv) => cursor = rv,
                    None => {
                        pending.push_back(expired(cursor, inner.compacted));
                        gone = true;
                    }
                }
            }
            while let Some(frame) = pending.pop_front() {
                tokio::select! {
                    permit = tx.reserve() => match permit {
                        Ok(p) => p.send(frame),
                        Err(_) => return,
                    },
                    _ = control.changed() => {
                        // Dropped or stalled while the client was slow: look again.
                        pending.push_front(frame);
                        break;
                    }
                }
            }
            if gone && pending.is_empty() {
                return;
            }
        }
        let quiet_now = control.borrow().quiet();
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            r = control.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(next_bookmark), if opts.bookmarks && !quiet_now && pending.is_empty() => {
                if tx.send(bookmark(k, cursor, false)).await.is_err() {
                    return;
                }
                next_bookmark = Instant::now() + interval;
            }
            () = sleep_until_opt(deadline) => {
                // The real server sends a last bookmark when a watch times out.
                if opts.bookmarks && !quiet_now && pending.is_empty() {
                    let _ = tx.send(bookmark(k, cursor, false)).await;
                }
                return;
            }
            () = tx.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
