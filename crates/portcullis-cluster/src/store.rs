//! What the cluster needs of a store, whichever engine holds it.
//!
//! # Keys and revisions
//! Keys are UTF-8 paths relative to the store's prefix (`certs/shop`, `nodes/edge-1`).
//! Every write gets a revision from the store; revisions only grow, across all keys (etcd's
//! revision; Kubernetes' `resourceVersion`, which real API servers take from etcd and the
//! harness's fake API server counts). A [`Listing`] says the revision it reflects, and a
//! watch started just after it misses nothing.
//!
//! # Fencing
//! Only the elected issuer writes shared state, and only through [`Store::put_fenced`] and
//! [`Store::delete_fenced`], which the store refuses ([`StoreError::Fenced`]) unless the
//! [`Leadership`] given is still the one in force: etcd compares the leader key's create
//! revision in the same transaction as the write; Kubernetes checks the Lease and writes with
//! a `resourceVersion` precondition, and records carry the leadership's token for readers to
//! compare. A paused or partitioned ex-issuer therefore cannot overwrite anything once
//! another replica has been elected.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch;

/// A boxed future, so that [`Store`] can be used as `dyn Store`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A watch: batches of changes in revision order. It ends with an `Err` (the connection
/// was lost, or [`StoreError::Compacted`]: the history asked for is gone) or when the
/// store is dropped; the caller then lists again and watches from there.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<Vec<Change>, StoreError>> + Send>>;

/// One key's value.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, relative to the prefix.
    pub key: String,
    /// The value as written (the caller's encoding; opaque to the store).
    pub value: Vec<u8>,
    /// The revision of the write that put this value.
    pub revision: i64,
    /// The fencing token of the leadership that wrote it, when the store records it
    /// (Kubernetes); readers ignore a value written under an older token than the one
    /// they hold for the key. etcd needs none (its writes are fenced atomically): `None`.
    pub token: Option<i64>,
}

impl std::fmt::Debug for Entry {
    /// Never the value: it may hold a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("len", &self.value.len())
            .field("revision", &self.revision)
            .field("token", &self.token)
            .finish()
    }
}

/// Every key under a prefix, as of one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The entries, in key order.
    pub entries: Vec<Entry>,
    /// The store's revision the listing reflects: watch from `revision + 1`.
    pub revision: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was created or updated.
    Put(Entry),
    /// A key was deleted (or its lease ran out).
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: i64,
    },
}

impl Change {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            Self::Put(e) => e.revision,
            Self::Delete { revision, .. } => *revision,
        }
    }
}

/// This replica's leadership: proof of election, presented with every fenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// This replica's name.
    pub node: String,
    /// The fencing token: grows with each election (etcd: the leader key's create
    /// revision; Kubernetes: the Lease's `leaseTransitions`).
    pub token: i64,
}

/// What a store operation came to when it did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, or did not answer in time. Retry with backoff;
    /// meanwhile serve what is cached.
    #[error("store unreachable: {0}")]
    Unavailable(String),
    /// A watch asked for history the store has compacted away: list again.
    #[error("store history compacted up to revision {0}; list again")]
    Compacted(i64),
    /// A fenced write was refused: the leadership presented is no longer in force.
    #[error("write refused: this replica no longer holds the issuer's leadership")]
    Fenced,
    /// The store refused the request (permissions, a malformed key, an invalid value).
    #[error("store refused the request: {0}")]
    Refused(String),
}

/// A store replicas share state through. Every method is bounded in time (a few seconds at
/// most) and safe to call concurrently.
pub trait Store: Send + Sync + 'static {
    /// `etcd` or `kubernetes`, for logs and `portcullis certs`.
    fn kind(&self) -> &'static str;

    /// This replica's name, as given when the store was opened.
    fn node(&self) -> &str;

    /// One key's value, or `None` when it is absent.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;

    /// Every key under `prefix` (relative; `""` for everything), with the revision the
    /// listing reflects.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>>;

    /// Changes under `prefix` from revision `from` on (inclusive). Fails at once with
    /// [`StoreError::Compacted`] when `from` is older than the store's history.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: i64,
    ) -> BoxFuture<'a, Result<ChangeStream, StoreError>>;

    /// Runs the election until `stop` turns true, in a task of its own: campaigns for
    /// the issuer's leadership, keeps it while this replica is alive and connected, and
    /// publishes `Some` while it leads and `None` otherwise. Leadership is given up when
    /// it cannot be renewed within `lease` (before any other replica can take it), and
    /// released at stop so another replica takes over at once.
    fn campaign(
        self: Arc<Self>,
        lease: Duration,
        stop: watch::Receiver<bool>,
    ) -> watch::Receiver<Option<Leadership>>;

    /// Who leads now, by name, as the store says.
    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>>;

    /// Writes `value` at `key` if `lead` is still the leadership in force; returns the
    /// write's revision. [`StoreError::Fenced`] when it is not.
    fn put_fenced<'a>(
        &'a self,
        lead: &'a Leadership,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Deletes `key` if `lead` is still the leadership in force (absent is success).
    fn delete_fenced<'a>(
        &'a self,
        lead: &'a Leadership,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Publishes this replica's report (`nodes/<node>`, value given) for as long as it
    /// lives: the record disappears within about `lease` of the replica dying, pausing
    /// or losing the store. Called again to update the value. Any replica may call it.
    fn heartbeat(&self, value: Vec<u8>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The reports of the replicas alive now (`nodes/…`), this one included.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>>;
}
