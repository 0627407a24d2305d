//! Watches on the store's Secrets, as [`crate::Store::watch`] describes them.
//!
//! Kubernetes sends the changes *after* the `resourceVersion` a watch starts from, and the
//! trait asks for the changes from `from` on: the watch starts from `from - 1`. A stream the
//! server ends cleanly (its `timeoutSeconds`) is resumed from the last version seen
//! (bookmarks included); one that fails ends with the error.

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::core::response::Status;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{KEY_ANNOTATION, SELECTOR, bounded, parse_secret, store_error};
use crate::store::{Change, ChangeStream, StoreError};

type Events = BoxStream<'static, kube::Result<WatchEvent<Secret>>>;

/// The server ends each watch after this long (`timeoutSeconds`) and it is resumed: a
/// watch is never open for long on a connection that may have died silently.
const WATCH_SECONDS: u32 = 60;
/// A watch that brings nothing at all (no event, no bookmark, not its end) for this long
/// is on a dead connection: it ends with [`StoreError::Unavailable`].
const SILENCE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 15);

/// How long [`open`] waits for the first event, so that a watch from compacted history
/// fails at once (the API server answers it with an ERROR event straight away).
const FIRST_EVENT: Duration = Duration::from_millis(300);

/// Starts a watch on the Secrets under `prefix` from revision `from` (inclusive).
pub(super) async fn open(
    api: Api<Secret>,
    namespace: String,
    prefix: String,
    from: i64,
) -> Result<ChangeStream, StoreError> {
    // "0" is "from any version, with every object first": the closest to "from the
    // beginning" Kubernetes has.
    let after = if from <= 1 {
        "0".to_owned()
    } else {
        (from - 1).to_string()
    };
    let mut events = start(&api, &after)
        .await
        .map_err(|e| watch_error(e, &namespace, from))?;
    let first = match tokio::time::timeout(FIRST_EVENT, events.next()).await {
        Ok(Some(Ok(WatchEvent::Error(status)))) => return Err(status_error(&status, from)),
        Ok(first) => first,
        Err(_) => None,
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(relay(api, namespace, prefix, after, first, events, tx));
    Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    })))
}

async fn start(api: &Api<Secret>, after: &str) -> kube::Result<Events> {
    let params = WatchParams::default()
        .labels(SELECTOR)
        .timeout(WATCH_SECONDS);
    let events = bounded(api.watch(&params, after)).await?;
    Ok(events.into_stream().boxed())
}

fn watch_error(e: kube::Error, namespace: &str, from: i64) -> StoreError {
    match e {
        kube::Error::Api(s) if s.code == 410 => StoreError::Compacted(from),
        e => store_error(e, "watch", "secrets", namespace),
    }
}

fn status_error(status: &Status, from: i64) -> StoreError {
    if status.code == 410 {
        StoreError::Compacted(compacted_to(&status.message).unwrap_or(from))
    } else {
        StoreError::Unavailable(format!(
            "watch secrets: {} {}: {}",
            status.code, status.reason, status.message
        ))
    }
}

/// The revision history now starts at, from the API server's "too old resource version:
/// 5 (12)" (the watch cache's wording, which the fake API server repeats).
fn compacted_to(message: &str) -> Option<i64> {
    let inner = message.trim_end().strip_suffix(')')?;
    inner.rsplit_once('(')?.1.parse().ok()
}

/// Turns the events into changes for the receiver, until it is dropped or the watch fails.
async fn relay(
    api: Api<Secret>,
    namespace: String,
    prefix: String,
    mut after: String,
    first: Option<kube::Result<WatchEvent<Secret>>>,
    mut events: Events,
    tx: mpsc::Sender<Result<Vec<Change>, StoreError>>,
) {
    let from = after.parse::<i64>().unwrap_or(0) + 1;
    let mut next = first;
    loop {
        let item = match next.take() {
            Some(item) => Some(item),
            None => tokio::select! {
                item = tokio::time::timeout(SILENCE, events.next()) => match item {
                    Ok(item) => item,
                    Err(_) => {
                        let silent = StoreError::Unavailable(format!(
                            "watch secrets in namespace {namespace}: nothing for {SILENCE:?}"
                        ));
                        let _ = tx.send(Err(silent)).await;
                        return;
                    }
                },
                () = tx.closed() => return,
            },
        };
        let change = match item {
            // The server ended the watch (its timeout): carry on from where it was.
            None => {
                debug!(%namespace, resource_version = %after, "watch on the store's secrets ended; resuming");
                match start(&api, &after).await {
                    Ok(e) => {
                        events = e;
                        continue;
                    }
                    Err(e) => Err(watch_error(e, &namespace, from)),
                }
            }
            Some(Err(e)) => Err(store_error(e, "watch", "secrets", &namespace)),
            Some(Ok(WatchEvent::Error(status))) => Err(status_error(&status, from)),
            Some(Ok(WatchEvent::Bookmark(b))) => {
                after = b.metadata.resource_version;
                continue;
            }
            Some(Ok(WatchEvent::Added(s) | WatchEvent::Modified(s))) => {
                if let Some(rv) = s.metadata.resource_version.clone() {
                    after = rv;
                }
                match parse_secret(&s) {
                    Ok(entry) if entry.key.starts_with(&prefix) => Ok(Change::Put(entry)),
                    Ok(_) => continue,
                    Err(_) => {
                        warn!(%namespace, secret = ?s.metadata.name, "unreadable store secret in a watch; ignoring it");
                        continue;
                    }
                }
            }
            Some(Ok(WatchEvent::Deleted(s))) => {
                let rv = s.metadata.resource_version.clone().unwrap_or_default();
                let key = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(KEY_ANNOTATION))
                    .cloned();
                after.clone_from(&rv);
                match (key, rv.parse::<i64>()) {
                    (Some(key), Ok(revision)) if key.starts_with(&prefix) => {
                        Ok(Change::Delete { key, revision })
                    }
                    _ => continue,
                }
            }
        };
        let end = change.is_err();
        if tx.send(change.map(|c| vec![c])).await.is_err() || end {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_compaction_revision_is_read_from_the_status_message() {
        assert_eq!(
            super::compacted_to("too old resource version: 5 (12)"),
            Some(12)
        );
        assert_eq!(super::compacted_to("too old resource version"), None);
        assert_eq!(super::compacted_to("(x)"), None);
    }
}
