//! `portcullis_cluster_*`: the issuer, the store's health, fenced writes, challenge
//! propagation and records refused.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric name this crate registers (the catalogue test holds docs/metrics.md and
/// the Grafana dashboard to it).
pub const NAMES: &[&str] = &[
    "portcullis_cluster_leader",
    "portcullis_cluster_orders_total",
    "portcullis_cluster_fenced_writes_total",
    "portcullis_cluster_store_up",
    "portcullis_cluster_store_stale_seconds",
    "portcullis_cluster_challenge_propagation_seconds",
    "portcullis_cluster_bad_records_total",
    "portcullis_cluster_relists_total",
    "portcullis_cluster_certificates_adopted_total",
];

/// The cluster's metrics, registered once per process.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// 1 while this replica is the issuer.
    pub leader: IntGauge,
    /// Orders by what became of them.
    pub orders: IntCounterVec,
    /// Writes the store refused because this replica no longer led.
    pub fenced: IntCounter,
    /// 1 while the store answers.
    pub store_up: IntGauge,
    /// Seconds since this replica's cache was last known to match the store (0 in sync).
    pub stale_seconds: IntGauge,
    /// From publishing a challenge answer to every live replica serving it.
    pub propagation: Histogram,
    /// Records skipped, by kind of problem.
    pub bad_records: IntCounterVec,
    /// Watches started again from a fresh list (compaction, lost connection).
    pub relists: IntCounter,
    /// Certificates taken from the store and served.
    pub adopted: IntCounter,
}

impl ClusterMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let me = Self {
            leader: IntGauge::new(
                "portcullis_cluster_leader",
                "1 while this replica is the cluster's certificate issuer, else 0",
            )?,
            orders: IntCounterVec::new(
                Opts::new(
                    "portcullis_cluster_orders_total",
                    "ACME orders this replica placed or resumed as issuer, by how they ended (issued, failed)",
                ),
                &["result"],
            )?,
            fenced: IntCounter::new(
                "portcullis_cluster_fenced_writes_total",
                "Writes the store refused because this replica no longer held the issuer's leadership",
            )?,
            store_up: IntGauge::new(
                "portcullis_cluster_store_up",
                "1 while the cluster store answers, else 0",
            )?,
            stale_seconds: IntGauge::new(
                "portcullis_cluster_store_stale_seconds",
                "Seconds since this replica last knew its certificates matched the store (0 when in sync)",
            )?,
            propagation: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_cluster_challenge_propagation_seconds",
                    "Time from publishing challenge answers until every live replica served them",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )?,
            bad_records: IntCounterVec::new(
                Opts::new(
                    "portcullis_cluster_bad_records_total",
                    "Records in the cluster store skipped because they cannot be used, by problem",
                ),
                &["kind"],
            )?,
            relists: IntCounter::new(
                "portcullis_cluster_relists_total",
                "Times this replica read the whole store again (watch compacted or disconnected)",
            )?,
            adopted: IntCounter::new(
                "portcullis_cluster_certificates_adopted_total",
                "Certificates from the cluster store this replica started serving",
            )?,
        };
        registry.register(Box::new(me.leader.clone()))?;
        registry.register(Box::new(me.orders.clone()))?;
        registry.register(Box::new(me.fenced.clone()))?;
        registry.register(Box::new(me.store_up.clone()))?;
        registry.register(Box::new(me.stale_seconds.clone()))?;
        registry.register(Box::new(me.propagation.clone()))?;
        registry.register(Box::new(me.bad_records.clone()))?;
        registry.register(Box::new(me.relists.clone()))?;
        registry.register(Box::new(me.adopted.clone()))?;
        for result in ["issued", "failed"] {
            me.orders.with_label_values(&[result]);
        }
        for kind in ["malformed", "newer_format", "undecryptable", "unusable"] {
            me.bad_records.with_label_values(&[kind]);
        }
        Ok(me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lists_exactly_what_is_registered() {
        let registry = Registry::new();
        let _metrics = ClusterMetrics::new(&registry).unwrap();
        let mut registered: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        registered.sort();
        let mut names: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
        names.sort();
        assert_eq!(registered, names);
    }
}
