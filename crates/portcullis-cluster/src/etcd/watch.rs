//! A watch over a prefix, as a [`ChangeStream`].
//!
//! The stream ends with `Err(Compacted)` when etcd cancels the watch for compacted history,
//! and with `Err(Unavailable)` when the connection breaks, the member loses its cluster
//! (`require_leader`), or etcd stays silent: after [`IDLE`] without a message the stream
//! asks etcd for a progress report, and ends if none comes within [`PROGRESS_TIMEOUT`].
//! A partitioned member, or a connection that went half-open, is so noticed within about
//! six seconds even when nothing is written. It also ends (with no error) when the store
//! is dropped.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchResponse, WatchStream};
use futures_util::stream;
use tokio::sync::watch;

use super::conn::map_err;
use crate::store::{Change, ChangeStream, Entry, StoreError};

/// Silence after which the stream asks etcd for a progress report.
const IDLE: Duration = Duration::from_secs(3);
/// How long that report may take before the connection is taken for lost.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(3);

struct State {
    watch: WatchStream,
    closed: watch::Receiver<()>,
    prefix: Arc<str>,
    asked: bool,
    done: bool,
}

/// The stream of changes read from `watch`, whose keys start with `prefix` (the store's).
pub(super) fn changes(
    watch: WatchStream,
    closed: watch::Receiver<()>,
    prefix: Arc<str>,
) -> ChangeStream {
    let state = State {
        watch,
        closed,
        prefix,
        asked: false,
        done: false,
    };
    Box::pin(stream::unfold(state, |mut s| async move {
        let item = next(&mut s).await?;
        Some((item, s))
    }))
}

async fn next(s: &mut State) -> Option<Result<Vec<Change>, StoreError>> {
    loop {
        if s.done {
            return None;
        }
        let wait = if s.asked { PROGRESS_TIMEOUT } else { IDLE };
        let message = tokio::select! {
            _ = s.closed.changed() => return None,
            m = tokio::time::timeout(wait, s.watch.message()) => m,
        };
        let resp = match message {
            Ok(Ok(Some(resp))) => resp,
            Ok(Ok(None)) => return s.end(StoreError::Unavailable("etcd ended the watch".into())),
            Ok(Err(e)) => return s.end(map_err(e)),
            Err(_) if s.asked => {
                return s.end(StoreError::Unavailable(format!(
                    "etcd did not answer a watch progress request within {PROGRESS_TIMEOUT:?}"
                )));
            }
            Err(_) => {
                s.asked = true;
                if let Err(e) = s.watch.request_progress().await {
                    return s.end(map_err(e));
                }
                continue;
            }
        };
        s.asked = false;
        if let Some(ended) = ended(&resp) {
            return s.end(ended);
        }
        let changes = to_changes(&resp, &s.prefix);
        if !changes.is_empty() {
            return Some(Ok(changes));
        }
    }
}

impl State {
    fn end(&mut self, e: StoreError) -> Option<Result<Vec<Change>, StoreError>> {
        self.done = true;
        Some(Err(e))
    }
}

/// Why etcd ended the watch with this response, if it did.
pub(super) fn ended(resp: &WatchResponse) -> Option<StoreError> {
    if resp.compact_revision() > 0 {
        return Some(StoreError::Compacted(resp.compact_revision()));
    }
    if resp.canceled() {
        return Some(StoreError::Unavailable(format!(
            "etcd canceled the watch: {}",
            resp.cancel_reason()
        )));
    }
    None
}

/// The events of one response, with keys relative to `prefix`; keys that are not UTF-8
/// (written by something else) are skipped.
fn to_changes(resp: &WatchResponse, prefix: &str) -> Vec<Change> {
    resp.events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            let key = super::relative(prefix, kv.key())?;
            Some(match event.event_type() {
                EventType::Put => Change::Put(Entry {
                    key,
                    value: kv.value().to_vec(),
                    revision: kv.mod_revision(),
                    token: None,
                }),
                EventType::Delete => Change::Delete {
                    key,
                    revision: kv.mod_revision(),
                },
            })
        })
        .collect()
}
