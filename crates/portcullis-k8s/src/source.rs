//! The cluster as the controller sees it: one watcher and reflector store per watched kind
//! (and namespace), and a [`Snapshot`] of them all published when they are complete.
//!
//! - A snapshot is published only once **every** watcher has finished its initial list
//!   (kube's `InitDone`); a watcher that re-lists (after a 410 Gone, when its history was
//!   compacted) holds publication back until its new list is complete, so a half-empty
//!   table is never published. Its store keeps the old objects until then.
//! - Changes are debounced ([`Debounce`]: published once the watchers have been quiet for a
//!   while, and at the latest a maximum after the first change) and coalesced.
//! - A watcher that fails is retried with kube's default backoff (0.8 s doubling to 30 s);
//!   meanwhile nothing is published and the last snapshot stays in force. While one
//!   fails, its kind is listed (one object) every few seconds to notice when the API is
//!   back, since a restarted watch that sees no change says nothing.
//!
//! What is stored is trimmed as it arrives: `metadata.managedFields`, owner references and
//! kubectl's `last-applied-configuration` annotation (a copy of the whole object, for a
//! Secret its data in clear) are dropped, as are a Service's status and labels and an
//! endpoint's topology (`kind.rs`, `Trim`); and Secrets of types translation never reads (Helm
//! releases, service account tokens, registry credentials, bootstrap tokens) are not
//! watched at all.

mod gate;
mod kind;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use gate::Debounce;
use gate::{Gate, settle};

use crate::snapshot::Snapshot;

/// How long one watch request lasts before it is renewed (from where it left off, no
/// list). kube notices a connection that went silent this long plus 5 s after it opened.
pub const WATCH_TIMEOUT: u32 = 60;

/// Secret types translation never reads, left out of the watch by a field selector.
const SKIPPED_SECRET_TYPES: &[&str] = &[
    "helm.sh/release.v1",
    "kubernetes.io/service-account-token",
    "kubernetes.io/dockercfg",
    "kubernetes.io/dockerconfigjson",
    "bootstrap.kubernetes.io/token",
];

/// What to watch and how to publish.
#[derive(Debug, Clone, Default)]
pub struct SourceConfig {
    /// Namespaces to watch (`--watch-namespace`); empty: all of them.
    pub namespaces: Vec<String>,
    /// How changes are gathered before a snapshot is published.
    pub debounce: Debounce,
}

/// The source's health, for readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// A complete snapshot has been published at least once.
    pub synced: bool,
    /// Every watcher's last request to the API server succeeded.
    pub api_up: bool,
    /// The most recent watcher error, kept after recovery for the logs' sake.
    pub last_error: Option<String>,
    /// When the last snapshot was published.
    pub last_sync: Option<SystemTime>,
    /// When the API became unreachable, while it is.
    pub down_since: Option<SystemTime>,
    /// Snapshots published so far.
    pub published: u64,
}

/// Why listing the cluster once failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot list {what}: {source}")]
pub struct ListError {
    /// The kind (`ingresses`, `secrets`, ...).
    pub what: &'static str,
    /// What the API server or the connection said.
    pub source: kube::Error,
}

/// What the watchers and the publisher share.
pub(crate) struct Shared {
    pub(crate) gate: Mutex<Gate>,
    /// Bumped at every change a snapshot should reflect.
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) status: watch::Sender<SourceStatus>,
}

impl Shared {
    pub(crate) fn gate<T>(&self, f: impl FnOnce(&mut Gate) -> T) -> T {
        f(&mut self.gate.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Mirrors the gate's view of the API into the status.
    pub(crate) fn update_health(&self) {
        let (up, error) = self.gate(|g| (g.api_up(), g.last_error().map(str::to_owned)));
        self.status.send_if_modified(|s| {
            let before = s.clone();
            s.api_up = up;
            if error.is_some() {
                s.last_error = error;
            }
            s.down_since = match (up, s.down_since) {
                (true, _) => None,
                (false, None) => Some(SystemTime::now()),
                (false, since) => since,
            };
            *s != before
        });
    }
}

/// The stores of every watcher, read to build a snapshot.
#[derive(Clone, Default)]
struct Readers {
    ingress_classes: Vec<Store<IngressClass>>,
    ingresses: Vec<Store<Ingress>>,
    services: Vec<Store<Service>>,
    endpoint_slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
}

impl Readers {
    fn snapshot(&self) -> Snapshot {
        fn all<K: Clone + kube::Resource<DynamicType = ()> + 'static>(
            stores: &[Store<K>],
        ) -> Vec<Arc<K>> {
            stores.iter().flat_map(|s| s.state()).collect()
        }
        Snapshot {
            ingress_classes: all(&self.ingress_classes),
            ingresses: all(&self.ingresses),
            services: all(&self.services),
            endpoint_slices: all(&self.endpoint_slices),
            secrets: all(&self.secrets),
        }
    }
}

/// The running watchers and publisher; they stop when this is dropped.
pub struct Source {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    status: watch::Receiver<SourceStatus>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Source {
    /// Starts a watcher per kind (per namespace when `config.namespaces` is set) and the
    /// publisher. Nothing is published until every watcher has listed its objects.
    pub fn start(client: kube::Client, config: SourceConfig) -> Self {
        let (snapshots_tx, snapshots) = watch::channel(None);
        let (status_tx, status) = watch::channel(SourceStatus::default());
        let scopes: Vec<Option<&str>> = if config.namespaces.is_empty() {
            vec![None]
        } else {
            config.namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let watchers = 1 + 4 * scopes.len();
        let shared = Arc::new(Shared {
            gate: Mutex::new(Gate::new(watchers)),
            changes: watch::channel(0).0,
            status: status_tx,
        });
        let mut readers = Readers::default();
        let mut tasks = Vec::new();
        let mut next = 0;
        let mut index = || {
            next += 1;
            next - 1
        };
        let wc = watcher::Config::default().timeout(WATCH_TIMEOUT);
        let (store, task) = kind::spawn(
            Api::<IngressClass>::all(client.clone()),
            wc.clone(),
            index(),
            shared.clone(),
        );
        readers.ingress_classes.push(store);
        tasks.push(task);
        let secrets_wc = wc.clone().fields(&secret_field_selector());
        for scope in scopes {
            let (store, task) = kind::spawn(
                scoped::<Ingress>(&client, scope),
                wc.clone(),
                index(),
                shared.clone(),
            );
            readers.ingresses.push(store);
            tasks.push(task);
            let (store, task) = kind::spawn(
                scoped::<Service>(&client, scope),
                wc.clone(),
                index(),
                shared.clone(),
            );
            readers.services.push(store);
            tasks.push(task);
            let (store, task) = kind::spawn(
                scoped::<EndpointSlice>(&client, scope),
                wc.clone(),
                index(),
                shared.clone(),
            );
            readers.endpoint_slices.push(store);
            tasks.push(task);
            let (store, task) = kind::spawn(
                scoped::<Secret>(&client, scope),
                secrets_wc.clone(),
                index(),
                shared.clone(),
            );
            readers.secrets.push(store);
            tasks.push(task);
        }
        tasks.push(tokio::spawn(publish(
            shared,
            readers,
            config.debounce,
            snapshots_tx,
        )));
        Self {
            snapshots,
            status,
            tasks,
        }
    }

    /// The latest complete snapshot (`None` until the first), changing as new ones are
    /// published.
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshots.clone()
    }

    /// The source's health, changing as it does.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }
}

/// `type!=...` for every skipped Secret type.
fn secret_field_selector() -> String {
    SKIPPED_SECRET_TYPES
        .iter()
        .map(|t| format!("type!={t}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Waits for changes, lets them settle, and publishes a snapshot whenever every watcher
/// is complete.
async fn publish(
    shared: Arc<Shared>,
    readers: Readers,
    debounce: Debounce,
    out: watch::Sender<Option<Arc<Snapshot>>>,
) {
    let mut changes = shared.changes.subscribe();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        if !settle(&mut changes, debounce).await {
            return;
        }
        // A watcher in the middle of a (re-)list: its `InitDone` is a change, and
        // publication waits for it.
        if !shared.gate(|g| g.complete()) {
            continue;
        }
        let r = readers.clone();
        let Ok(snapshot) = tokio::task::spawn_blocking(move || r.snapshot()).await else {
            return;
        };
        tracing::debug!(
            ingresses = snapshot.ingresses.len(),
            services = snapshot.services.len(),
            endpoint_slices = snapshot.endpoint_slices.len(),
            secrets = snapshot.secrets.len(),
            "kubernetes snapshot published"
        );
        out.send_replace(Some(Arc::new(snapshot)));
        shared.status.send_modify(|s| {
            s.synced = true;
            s.last_sync = Some(SystemTime::now());
            s.published += 1;
        });
    }
}

/// Lists every watched kind once (in pages of 500), for `check --kubernetes`.
pub async fn list_once(
    client: &kube::Client,
    namespaces: &[String],
) -> Result<Snapshot, ListError> {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut snapshot = Snapshot {
        ingress_classes: list_all(
            Api::all(client.clone()),
            ListParams::default(),
            "ingressclasses",
        )
        .await?,
        ..Snapshot::default()
    };
    let secrets = ListParams::default().fields(&secret_field_selector());
    for scope in scopes {
        let lp = ListParams::default();
        snapshot
            .ingresses
            .extend(list_all(scoped(client, scope), lp.clone(), "ingresses").await?);
        snapshot
            .services
            .extend(list_all(scoped(client, scope), lp.clone(), "services").await?);
        snapshot
            .endpoint_slices
            .extend(list_all(scoped(client, scope), lp.clone(), "endpointslices").await?);
        snapshot
            .secrets
            .extend(list_all(scoped(client, scope), secrets.clone(), "secrets").await?);
    }
    Ok(snapshot)
}

async fn list_all<K>(
    api: Api<K>,
    lp: ListParams,
    what: &'static str,
) -> Result<Vec<Arc<K>>, ListError>
where
    K: kube::Resource + kind::Trim + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut lp = lp.limit(500);
    let mut out = Vec::new();
    loop {
        let page = api
            .list(&lp)
            .await
            .map_err(|source| ListError { what, source })?;
        out.extend(page.items.into_iter().map(|mut k| {
            kind::trim(&mut k);
            Arc::new(k)
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// How often a failing watcher's kind is listed to notice that the API is back.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(3);
