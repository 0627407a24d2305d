//! One watcher: kube's `watcher` with its default backoff, trimmed objects, into a
//! reflector store; its events move the [`Gate`](super::gate::Gate) and announce changes.

use std::fmt::Debug;
use std::pin::pin;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{PROBE_INTERVAL, Shared};

/// kubectl's copy of the whole object (for a Secret, its data in clear): never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the controller never reads and costs memory: for every kind the field
/// managers' bookkeeping, kubectl's last-applied copy and owner references; per kind,
/// what [`Trim::trim_kind`] says.
pub(crate) fn trim<K: Resource + Trim>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    meta.owner_references = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    obj.trim_kind();
}

/// What of each watched kind is never read (translation, the status writer, Events, ACME
/// Secrets), dropped before it is stored: at 10,000 Services and EndpointSlices the
/// difference is tens of megabytes.
pub(crate) trait Trim {
    /// Drops this kind's unread fields.
    fn trim_kind(&mut self) {}
}

/// Ingresses are kept whole: the status writer compares their status.
impl Trim for Ingress {}
/// IngressClasses are few.
impl Trim for IngressClass {}
/// Secrets are kept whole: their labels and annotations say who manages them.
impl Trim for Secret {}

impl Trim for Service {
    /// Translation reads the spec; the status writer reads a published Service from the
    /// API itself.
    fn trim_kind(&mut self) {
        self.status = None;
        self.metadata.labels = None;
    }
}

impl Trim for EndpointSlice {
    /// Translation reads the Service label, the ports, and each endpoint's addresses and
    /// conditions.
    fn trim_kind(&mut self) {
        if let Some(labels) = self.metadata.labels.as_mut() {
            labels.retain(|k, _| k == SERVICE_NAME_LABEL);
        }
        for e in &mut self.endpoints {
            e.target_ref = None;
            e.node_name = None;
            e.zone = None;
            e.hints = None;
            e.deprecated_topology = None;
        }
    }
}

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Starts watcher `index` over `api`; its store, and the task that runs it.
pub(super) fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    index: usize,
    shared: Arc<Shared>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Trim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let probe = api.clone();
    let task = tokio::spawn(async move {
        let kind = K::kind(&()).into_owned();
        let stream = watcher::watcher(api, config)
            .default_backoff()
            .modify(trim::<K>)
            .reflect(writer);
        let mut stream = pin!(stream);
        let mut next_probe = Instant::now();
        loop {
            let failing = shared.gate(|g| g.is_failing(index));
            let item = tokio::select! {
                item = stream.next() => item,
                () = tokio::time::sleep_until(next_probe), if failing => {
                    next_probe = Instant::now() + PROBE_INTERVAL;
                    if probe.list_metadata(&ListParams::default().limit(1)).await.is_ok() {
                        recovered(&shared, index, &kind);
                    }
                    continue;
                }
            };
            let Some(item) = item else { return };
            match item {
                Ok(event) => {
                    recovered(&shared, index, &kind);
                    match event {
                        Event::Init => shared.gate(|g| g.init(index)),
                        Event::InitApply(_) => {}
                        Event::InitDone => {
                            shared.gate(|g| g.init_done(index));
                            debug!(kind = kind.as_str(), "watcher listed");
                            shared.update_health();
                            shared.changed();
                        }
                        Event::Apply(_) | Event::Delete(_) => shared.changed(),
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    if shared.gate(|g| g.failed(index, error.clone())) {
                        warn!(kind = kind.as_str(), error = %error, "kubernetes watch failed; retrying with backoff, the last routes stay in force");
                        next_probe = Instant::now() + PROBE_INTERVAL;
                    } else {
                        debug!(kind = kind.as_str(), error = %error, "kubernetes watch failed again");
                    }
                    shared.update_health();
                }
            }
        }
    });
    (reader, task)
}

fn recovered(shared: &Shared, index: usize, kind: &str) {
    if shared.gate(|g| g.recovered(index)) {
        info!(kind, "kubernetes watch answered again");
        shared.update_health();
    }
}
