//! Portcullis replicas that share certificates: one issuer elected at a time, every write it
//! makes fenced by the leadership it was elected with, and every replica fed by a watch.
//!
//! - [`Store`]: what the cluster needs of a store (keys with revisions, lists, watches, an
//!   election whose every write is fenced, liveness of the replicas). Two of them:
//!   [`EtcdStore`] and [`KubeStore`].
//! - [`EtcdStore`]: the store on etcd: a session lease per replica, the election key
//!   created by a transaction, fenced writes comparing its create revision.
//!
//! Keys are relative to the store's prefix (etcd) or namespace (Kubernetes); the layout
//! is in `docs/cluster.md`.

mod cluster;
mod etcd;
mod fleet;
mod kube;
mod metrics;
pub mod records;
mod replica;
mod seal;
mod store;

pub use cluster::{Cluster, ClusterStatus};
pub use etcd::EtcdStore;
/// The store on the Kubernetes API (`store: kubernetes`): Secrets, and Leases for the election.
pub use kube::KubeStore;
pub use metrics::{ClusterMetrics, NAMES as METRIC_NAMES};
pub use seal::{OpenError, Sealer, Stored};
pub use store::{BoxFuture, Change, ChangeStream, Entry, Leadership, Listing, Store, StoreError};
