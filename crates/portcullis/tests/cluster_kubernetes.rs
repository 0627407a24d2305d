//! Replicas sharing ACME certificates through Kubernetes (issue 25, `store: kubernetes`), as
//! processes — **against the harness's fake Kubernetes API server**
//! (`portcullis_tests::FakeApiServer`), since no real kube-apiserver runs on these machines:
//! these prove the gateway against the fake's Kubernetes semantics (one global
//! resourceVersion, 409 on a stale PUT, watch 410 after compaction, label selectors), not
//! against a real cluster. Every test is named `fake_api_…` to say so.
//!
//! The real binary three times over with `cluster: {store: kubernetes, kubernetes:
//! {namespace, kubeconfig}}` (the kubeconfig the fake writes), real pebble behind a
//! counting ACME proxy, and pebble's validations sent round-robin across the replicas. The
//! same invariants as the etcd suite (`tests/cluster.rs`): one order per name, the issuer's
//! Lease handed over when it dies (its order resumed), the Lease taken by another holder
//! (a conflict: the issuer steps down), a paused ex-issuer fenced, renewals
//! by watch and by re-list after a 410, bad Secrets skipped, a former issuer's late write
//! (an older token) served by nobody, the API server unreachable.
//! Each test is bounded (`fleet::LIMIT`, its fleet's start included); fleets run two at a
//! time (`PORTCULLIS_CLUSTER_SLOTS` changes that).
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as processes and writes their configs: blocking is what it means"
)]

#[path = "cluster_kubernetes/api.rs"]
mod api;
#[path = "cluster_kubernetes/bad_data.rs"]
mod bad_data;
#[path = "cluster_kubernetes/cold_start.rs"]
mod cold_start;
#[path = "cluster_kubernetes/failover.rs"]
mod failover;
#[path = "cluster_kubernetes/fleet.rs"]
mod fleet;
#[path = "cluster_kubernetes/lease.rs"]
mod lease;
#[path = "cluster_kubernetes/outage.rs"]
mod outage;
#[path = "cluster_kubernetes/replica.rs"]
mod replica;
#[path = "cluster_kubernetes/stale.rs"]
mod stale;
#[path = "cluster_kubernetes/watch.rs"]
mod watch;
