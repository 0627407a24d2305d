//! `portcullis ingress`'s own metrics, registered into the gateway's registry beside the
//! rest (`docs/metrics.md`).

use std::collections::BTreeMap;

use portcullis_k8s::K8sProblem;
use portcullis_proxy::metrics::names;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The Kubernetes source's metrics.
pub(super) struct K8sMetrics {
    synced: IntCounter,
    refused: IntCounter,
    unchanged: IntCounter,
    last_sync: IntGauge,
    api_up: IntGauge,
    problems: IntGaugeVec,
    unsupported: IntGaugeVec,
}

impl K8sMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let syncs = IntCounterVec::new(
            Opts::new(
                names::KUBERNETES_SYNCS,
                "Snapshots of the cluster translated and applied, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(syncs.clone()))?;
        let last_sync = IntGauge::new(
            names::KUBERNETES_LAST_SYNC,
            "When the routes in force were last synced from the cluster, Unix seconds (0: never).",
        )?;
        registry.register(Box::new(last_sync.clone()))?;
        let api_up = IntGauge::new(
            names::KUBERNETES_API_UP,
            "Whether every watch of the Kubernetes API server is answered (1) or not (0).",
        )?;
        registry.register(Box::new(api_up.clone()))?;
        let problems = IntGaugeVec::new(
            Opts::new(
                names::KUBERNETES_PROBLEMS,
                "Problems found in the cluster's objects at the last sync, by object.",
            ),
            &["kind", "namespace", "name"],
        )?;
        registry.register(Box::new(problems.clone()))?;
        let unsupported = IntGaugeVec::new(
            Opts::new(
                names::KUBERNETES_UNSUPPORTED_ANNOTATIONS,
                "Annotations an Ingress carries that Portcullis does not support (1 each).",
            ),
            &["namespace", "ingress", "annotation"],
        )?;
        registry.register(Box::new(unsupported.clone()))?;
        Ok(Self {
            synced: syncs.with_label_values(&["success"]),
            refused: syncs.with_label_values(&["failure"]),
            unchanged: syncs.with_label_values(&["unchanged"]),
            last_sync,
            api_up,
            problems,
            unsupported,
        })
    }

    /// A snapshot's config was applied.
    pub(super) fn applied(&self, unix: i64) {
        self.synced.inc();
        self.last_sync.set(unix);
    }

    /// A snapshot changed nothing the gateway serves.
    pub(super) fn unchanged(&self, unix: i64) {
        self.unchanged.inc();
        self.last_sync.set(unix);
    }

    /// A snapshot's config was refused; the previous one stays in force.
    pub(super) fn refused(&self) {
        self.refused.inc();
    }

    pub(super) fn api_up(&self, up: bool) {
        self.api_up.set(i64::from(up));
    }

    /// Replaces the problem series with `problems`' counts per object.
    pub(super) fn set_problems(&self, problems: &[K8sProblem]) {
        let mut counts: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
        for p in problems {
            *counts
                .entry((p.kind, &p.object.namespace, &p.object.name))
                .or_default() += 1;
        }
        self.problems.reset();
        for ((kind, ns, name), n) in counts {
            self.problems.with_label_values(&[kind, ns, name]).set(n);
        }
    }

    /// Replaces the unsupported-annotation series: `(namespace, ingress, annotation)`.
    pub(super) fn set_unsupported<'a>(
        &self,
        annotations: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) {
        self.unsupported.reset();
        for (ns, ingress, annotation) in annotations {
            self.unsupported
                .with_label_values(&[ns, ingress, annotation])
                .set(1);
        }
    }
}
