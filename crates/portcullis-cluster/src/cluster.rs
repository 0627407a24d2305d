//! One replica's membership in the cluster: the election, the watch-fed replica, and the
//! fleet its ACME manager orders through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_acme::{AcmeManager, Fleet};
use portcullis_tls::Challenges;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::fleet::StoreFleet;
use crate::metrics::ClusterMetrics;
use crate::replica::{Replica, Tokens};
use crate::seal::Sealer;
use crate::store::Store;

/// What `/readyz`, `portcullis certs` and the logs say about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This replica's name.
    pub node: String,
    /// `etcd` or `kubernetes`.
    pub store: &'static str,
    /// Whether this replica is the issuer.
    pub issuer: bool,
    /// Whether the store answers.
    pub store_up: bool,
    /// How long the cache has not been known to match the store (`None`: in sync).
    pub stale_for: Option<Duration>,
    /// Whether the store was ever read since this replica started.
    pub ever_synced: bool,
}

/// A running member of the cluster.
pub struct Cluster {
    store: Arc<dyn Store>,
    replica: Arc<Replica>,
    fleet: Arc<StoreFleet>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    /// Joins the cluster through `store`: starts following it at once (challenge answers
    /// into `challenges`, certificates into the manager given to [`attach`](Self::attach))
    /// and campaigns for the issuer's leadership. Metrics go to `registry`.
    pub fn start(
        store: Arc<dyn Store>,
        settings: &portcullis_config::Cluster,
        challenges: Arc<Challenges>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Arc<Self>> {
        let metrics = ClusterMetrics::new(registry)?;
        let sealer = Sealer::new(settings.encryption_key.as_ref().map(|k| &k.0));
        let (stop, stopped) = watch::channel(false);
        let tokens = Arc::new(Tokens::default());
        let replica = Arc::new(Replica::new(
            store.clone(),
            sealer.clone(),
            challenges,
            metrics.clone(),
            settings.lease,
            tokens.clone(),
        ));
        let lead = store.clone().campaign(settings.lease, stopped.clone());
        let (issuer_tx, issuer) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(replica.clone().run(stopped.clone()))];
        {
            let replica = replica.clone();
            let mut stop = stopped.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => replica.tick(),
                    }
                }
            }));
        }
        {
            let mut lead = lead.clone();
            let metrics = metrics.clone();
            let node = store.node().to_owned();
            tasks.push(tokio::spawn(async move {
                loop {
                    let leading = lead.borrow_and_update().clone();
                    metrics.leader.set(i64::from(leading.is_some()));
                    issuer_tx.send_if_modified(|i| {
                        let changed = *i != leading.is_some();
                        if changed {
                            match &leading {
                                Some(l) => info!(node = %node, token = l.token, "this replica is now the cluster's certificate issuer"),
                                None => info!(node = %node, "this replica is no longer the cluster's certificate issuer"),
                            }
                        }
                        *i = leading.is_some();
                        changed
                    });
                    if lead.changed().await.is_err() {
                        metrics.leader.set(0);
                        issuer_tx.send_replace(false);
                        return;
                    }
                }
            }));
        }
        let fleet = Arc::new(StoreFleet {
            store: store.clone(),
            sealer,
            metrics,
            lead,
            issuer,
            challenge_timeout: settings.challenge_timeout,
            ordering: std::sync::Mutex::default(),
            tokens,
        });
        info!(
            node = store.node(),
            store = store.kind(),
            "joined the certificate cluster"
        );
        Ok(Arc::new(Self {
            store,
            replica,
            fleet,
            stop,
            tasks: Mutex::new(tasks),
        }))
    }

    /// The fleet to give the ACME manager ([`AcmeManager::with_fleet`]).
    pub fn fleet(&self) -> Arc<dyn Fleet> {
        self.fleet.clone()
    }

    /// The ACME manager certificates from the store go to (`None` when no site uses ACME);
    /// a new manager gets them all again.
    pub fn attach(&self, manager: Option<Arc<AcmeManager>>) {
        self.replica.attach(manager);
    }

    /// Reads the store again (after the sites changed).
    pub fn refresh(&self) {
        self.replica.refresh();
    }

    /// The newest store revision this replica has applied, as it changes.
    pub fn applied(&self) -> watch::Receiver<i64> {
        self.replica.applied()
    }

    /// The store this replica shares through.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Where things stand now.
    pub fn status(&self) -> ClusterStatus {
        let (store_up, stale_for, ever_synced) = self.replica.health();
        ClusterStatus {
            node: self.store.node().to_owned(),
            store: self.store.kind(),
            issuer: *self.fleet.issuer.borrow(),
            store_up,
            stale_for,
            ever_synced,
        }
    }

    /// Leaves the cluster: gives up the leadership (so another replica issues at once)
    /// and stops following the store.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // The campaign task releases on its own; give it a moment to reach the store.
        let mut lead = self.fleet.lead.clone();
        let _ = tokio::time::timeout(Duration::from_secs(3), lead.wait_for(Option::is_none)).await;
    }
}
