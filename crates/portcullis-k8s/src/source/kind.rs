//! One watcher: kube's `watcher` with its default backoff, trimmed objects, into a
//! reflector store; its events move the [`Gate`](super::gate::Gate) and announce changes.

use std::fmt::Debug;
use std::pin::pin;
use std::sync::Arc;

use futures_util::StreamExt;
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

/// Drops what translation never reads and costs memory.
pub(crate) fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Starts watcher `index` over `api`; its store, and the task that runs it.
pub(super) fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    index: usize,
    shared: Arc<Shared>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
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
