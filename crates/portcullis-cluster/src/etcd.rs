//! [`Store`] on etcd (v3 API, through `etcd-client`): see [`EtcdStore`].

mod conn;
mod election;
mod session;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, WatchOptions};
use tokio::sync::watch as channel;

use crate::store::{BoxFuture, ChangeStream, Entry, Leadership, Listing, Store, StoreError};
use conn::Conn;
use session::Session;

/// The election key, relative to the prefix.
const LEADER: &str = "leader";
/// Where the heartbeats live, relative to the prefix.
const NODES: &str = "nodes/";
/// Keys read per request of a listing; every page is read at the first page's revision.
const LIST_PAGE: i64 = 500;

/// [`Store`] on etcd.
///
/// Every key is the configured prefix followed by the relative key. Besides the caller's
/// keys the store keeps two of its own, which the fenced writes refuse to touch: `leader`
/// (the issuer's name; its create revision is the fencing token) and `nodes/<node>` (each
/// replica's heartbeat). Both hang on the replica's session lease, one per replica, kept
/// alive every third of its TTL by a task of its own and granted again (the heartbeat put
/// again) after etcd forgot it.
///
/// # Failure behaviour
/// - Opening connects to nothing: the first call does. Every call is bounded (5 s, of
///   which 2.5 s per attempt and 2 s to connect) and answers [`StoreError::Unavailable`]
///   when no member answered in time; meanwhile it is tried again, on another member when
///   there is one. A member cut off from the others fails calls rather than answering
///   stale (etcd's `require_leader`).
/// - A watch ends with `Unavailable` when its connection breaks or its member loses the
///   cluster, and, for a partition that leaves the connection silent, within about six
///   seconds: after 3 s without a message it asks etcd for a progress report, and ends
///   if none comes within 3 s more.
/// - The leader publishes `None` two thirds of its lease after the last keep-alive etcd
///   acknowledged (counted from when it was sent), before etcd can expire the lease and
///   let another replica in; and at once when the leader key is deleted or replaced.
/// - The election runs on the session lease: [`Store::campaign`]'s lease becomes the
///   session's TTL (rounded up to whole seconds, at least 2), replacing a lease granted
///   with another TTL. One campaign at a time per store.
/// - Dropping the store ends its tasks and watches without releasing anything, as a crash
///   would: the leader key and the heartbeat go when the lease runs out.
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// Dropped with the store: its background tasks and watches end.
    _closed: channel::Sender<()>,
}

/// What the store's background tasks share with it.
struct Inner {
    node: String,
    prefix: Arc<str>,
    conn: Conn,
    session: Session,
    closed: channel::Receiver<()>,
}

impl EtcdStore {
    /// The store for `settings`, as replica `node`, with the default lease
    /// ([`portcullis_config::defaults::CLUSTER_LEASE`]) for its session; see
    /// [`EtcdStore::open_with_lease`].
    pub fn open(
        settings: &portcullis_config::EtcdStore,
        node: &str,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_with_lease(settings, node, portcullis_config::defaults::CLUSTER_LEASE)
    }

    /// The store for `settings`, as replica `node`, whose session lease (what the
    /// heartbeat and the leader key hang on) lasts `lease` rounded up to whole seconds,
    /// at least 2: give it `cluster.lease` (a campaign sets it too). Connects to nothing yet, so a replica starts
    /// while etcd is down; fails only on settings that cannot work (no endpoint, `http://`
    /// and `https://` mixed).
    pub fn open_with_lease(
        settings: &portcullis_config::EtcdStore,
        node: &str,
        lease: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        if node.is_empty() || node.contains('/') {
            return Err(StoreError::Refused(format!(
                "`{node}` cannot name a replica: it must be non-empty and without `/`"
            )));
        }
        let (closed_tx, closed) = channel::channel(());
        Ok(Arc::new(Self {
            inner: Arc::new(Inner {
                node: node.to_owned(),
                prefix: settings.prefix.as_str().into(),
                conn: Conn::new(settings)?,
                session: Session::new(lease),
                closed,
            }),
            _closed: closed_tx,
        }))
    }
}

impl Inner {
    /// The full key of `rel`.
    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn entry(&self, kv: &KeyValue) -> Option<Entry> {
        Some(Entry {
            key: relative(&self.prefix, kv.key())?,
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
            token: None,
        })
    }

    /// Every entry under the full key `from` (a prefix), read page by page at one
    /// revision; `Compacted` if that revision was compacted meanwhile.
    async fn list_once(&self, rel_prefix: &str) -> Result<Listing, StoreError> {
        let full = self.key(rel_prefix);
        let end = prefix_end(full.as_bytes());
        let mut listing = Listing::default();
        let mut start = full.into_bytes();
        loop {
            let revision = listing.revision;
            let resp = self
                .conn
                .run(|c| {
                    let (start, end) = (start.clone(), end.clone());
                    async move {
                        let mut options = GetOptions::new().with_range(end).with_limit(LIST_PAGE);
                        if revision > 0 {
                            options = options.with_revision(revision);
                        }
                        c.kv_client()
                            .max_decoding_message_size(conn::MAX_MESSAGE)
                            .get(start, Some(options))
                            .await
                    }
                })
                .await?;
            if listing.revision == 0 {
                listing.revision = resp.header().map_or(0, |h| h.revision());
            }
            listing
                .entries
                .extend(resp.kvs().iter().filter_map(|kv| self.entry(kv)));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(listing),
            }
        }
    }

    /// A fenced transaction: `op` only while the leader key was created at `lead.token`.
    async fn fenced(
        &self,
        lead: &Leadership,
        key: &str,
        op: TxnOp,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        if key.is_empty() || key == LEADER || key.starts_with(NODES) {
            return Err(StoreError::Refused(format!(
                "`{key}` is not a key the issuer writes (empty, or the store's own)"
            )));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key(LEADER),
                CompareOp::Equal,
                lead.token,
            )])
            .and_then([op]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            Ok(resp)
        } else {
            Err(StoreError::Fenced)
        }
    }
}

/// `key` without `prefix`, if it has it and is UTF-8.
fn relative(prefix: &str, key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    String::from_utf8(rest.to_vec()).ok()
}

/// The end of the range of keys starting with `prefix` (exclusive).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn node(&self) -> &str {
        &self.inner.node
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            let full = self.inner.key(key);
            let resp = self
                .inner
                .conn
                .run(|c| {
                    let full = full.clone();
                    async move {
                        c.kv_client()
                            .max_decoding_message_size(conn::MAX_MESSAGE)
                            .get(full, None)
                            .await
                    }
                })
                .await?;
            Ok(resp.kvs().first().and_then(|kv| self.inner.entry(kv)))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            let mut tries = 0;
            loop {
                match self.inner.list_once(prefix).await {
                    // Compacted between two pages: read again at the newest revision.
                    Err(StoreError::Compacted(_)) if tries < 3 => tries += 1,
                    Err(StoreError::Compacted(rev)) => {
                        return Err(StoreError::Unavailable(format!(
                            "listing `{prefix}` kept meeting compaction (revision {rev})"
                        )));
                    }
                    other => return other,
                }
            }
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: i64,
    ) -> BoxFuture<'a, Result<ChangeStream, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let full = inner.key(prefix);
            if from > 1 {
                // History is there when a read at `from - 1` is: fail now rather than
                // with the stream's first item. (A future revision is fine to watch.)
                let at = from - 1;
                let check = inner
                    .conn
                    .run(|mut c| {
                        let full = full.clone();
                        async move {
                            let options = GetOptions::new()
                                .with_prefix()
                                .with_revision(at)
                                .with_count_only();
                            c.get(full, Some(options)).await
                        }
                    })
                    .await;
                match check {
                    Ok(_) => {}
                    Err(StoreError::Compacted(_)) => return Err(StoreError::Compacted(from)),
                    Err(StoreError::Refused(m)) if m.contains("future revision") => {}
                    Err(e) => return Err(e),
                }
            }
            let stream = inner
                .conn
                .run(|c| {
                    let full = full.clone();
                    async move {
                        let options = WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(from.max(0));
                        c.watch_client()
                            .max_decoding_message_size(conn::MAX_MESSAGE)
                            .watch(full, Some(options))
                            .await
                    }
                })
                .await?;
            Ok(watch::changes(
                stream,
                inner.closed.clone(),
                inner.prefix.clone(),
            ))
        })
    }

    fn campaign(
        self: Arc<Self>,
        lease: Duration,
        stop: channel::Receiver<bool>,
    ) -> channel::Receiver<Option<Leadership>> {
        election::spawn(&self.inner, lease, stop)
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let key = self.inner.key(LEADER);
            let resp = self
                .inner
                .conn
                .run(|mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }

    fn put_fenced<'a>(
        &'a self,
        lead: &'a Leadership,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let op = TxnOp::put(self.inner.key(key), value, None);
            let resp = self.inner.fenced(lead, key, op).await?;
            Ok(resp.header().map_or(0, |h| h.revision()))
        })
    }

    fn delete_fenced<'a>(
        &'a self,
        lead: &'a Leadership,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let op = TxnOp::delete(self.inner.key(key), None);
            self.inner.fenced(lead, key, op).await.map(drop)
        })
    }

    fn heartbeat(&self, value: Vec<u8>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.session.remember_heartbeat(value.clone());
            let lease = session::ensure(inner).await?;
            match session::put_heartbeat(inner, lease, value.clone()).await {
                // The lease went between the two calls: a new one gets the value put.
                Err(e) if conn::is_lease_gone(&e) => {
                    let lease = session::ensure(inner).await?;
                    session::put_heartbeat(inner, lease, value).await
                }
                other => other,
            }
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move { Ok(self.list(NODES).await?.entries) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/p/"), b"/p0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn relative_keys() {
        assert_eq!(relative("/p/", b"/p/certs/a").as_deref(), Some("certs/a"));
        assert_eq!(relative("/p/", b"/q/certs/a"), None);
        assert_eq!(relative("/p/", b"/p/\xff"), None);
    }
}
