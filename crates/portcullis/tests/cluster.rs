//! Replicas sharing ACME certificates through etcd (issue 25), as processes: the real
//! binary three times over, real etcd (one member or three), real pebble behind a counting
//! ACME proxy, and pebble's validations sent round-robin across the replicas. Each test is
//! bounded in time; fleets run two at a time (`PORTCULLIS_CLUSTER_SLOTS` changes that), the
//! 20-name cold start alone.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as processes and writes their configs: blocking is what it means"
)]

#[path = "cluster/backoff.rs"]
mod backoff;
#[path = "cluster/bad_data.rs"]
mod bad_data;
#[path = "cluster/cold_start.rs"]
mod cold_start;
#[path = "cluster/failover.rs"]
mod failover;
#[path = "cluster/fleet.rs"]
mod fleet;
#[path = "cluster/outage.rs"]
mod outage;
#[path = "cluster/store.rs"]
mod store;
