//! What `portcullis ingress` writes to the cluster, only while it leads (a Lease,
//! `portcullis_k8s::Elector`): Ingress status, Events for problems, and certificates ACME
//! issued, stored in their Secrets. Every replica serves traffic whether or not it leads.
//! The writes run in a task of their own, fed the latest sync: a slow or unreachable API
//! server never holds up routing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use portcullis_acme::AcmeManager;
use portcullis_k8s::{
    AcmeSecrets, AcmeSecretsHandle, Elector, IssuedCertificate, LeaseTimings, ObjectKey,
    PublishTarget, Recorder, Snapshot, StatusWriter, Translated,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// One sync, as the writers see it.
#[derive(Clone)]
pub(super) struct Synced {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) translated: Arc<Translated>,
    /// The problems differ from the previous sync's (Events are posted then).
    pub(super) problems_changed: bool,
}

/// Settings from the flags.
pub(super) struct WriterSettings {
    pub(super) namespace: String,
    pub(super) election_id: String,
    pub(super) identity: String,
    pub(super) publish: Option<PublishTarget>,
    pub(super) timings: LeaseTimings,
}

/// The running writers.
pub(super) struct Writers {
    leader: watch::Receiver<bool>,
    synced: watch::Sender<Option<Synced>>,
    acme: AcmeSecretsHandle,
    /// The ACME manager whose issued certificates are forwarded, and the forwarding task.
    forwarding: std::sync::Mutex<Option<(Arc<AcmeManager>, JoinHandle<()>)>>,
    stop: watch::Sender<bool>,
    elector: JoinHandle<()>,
    acme_task: JoinHandle<()>,
    status_task: JoinHandle<Option<StatusWriter>>,
}

impl Writers {
    pub(super) fn start(client: kube::Client, settings: WriterSettings) -> Self {
        let (stop, stopped) = watch::channel(false);
        let elector = Elector::new(
            client.clone(),
            &settings.namespace,
            &settings.election_id,
            settings.identity.clone(),
            settings.timings,
        );
        let leader = elector.subscribe();
        info!(
            lease = %format!("{}/{}", settings.namespace, settings.election_id),
            identity = %settings.identity,
            "competing for leadership (only the leader writes status, Events and ACME Secrets)"
        );
        let elector = tokio::spawn(elector.run(stopped.clone()));
        let recorder = Arc::new(Recorder::new(
            client.clone(),
            settings.identity,
            leader.clone(),
        ));
        let (driver, acme) = AcmeSecrets::new(client.clone(), leader.clone());
        let acme_task = tokio::spawn(driver.with_recorder(recorder.clone()).run(stopped));
        let (synced, inputs) = watch::channel(None);
        let status = settings
            .publish
            .map(|target| StatusWriter::new(client, target, leader.clone()));
        let status_task = tokio::spawn(write_loop(status, recorder, inputs, leader.clone()));
        Self {
            leader,
            synced,
            acme,
            forwarding: std::sync::Mutex::new(None),
            stop,
            elector,
            acme_task,
            status_task,
        }
    }

    /// Whether this replica leads now, changing as it does.
    pub(super) fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// After each sync: the status, Events and ACME Secrets follow it.
    pub(super) fn synced(&self, s: Synced, acme: Option<Arc<AcmeManager>>) {
        self.acme.set_targets(s.translated.acme_secrets.clone());
        self.forward_issued(acme);
        self.synced.send_replace(Some(s));
    }

    /// Copies what `manager` issues into Secrets (a new manager replaces the old one).
    fn forward_issued(&self, manager: Option<Arc<AcmeManager>>) {
        let mut fwd = self.forwarding.lock().unwrap_or_else(|e| e.into_inner());
        let same = match (&*fwd, &manager) {
            (Some((old, _)), Some(new)) => Arc::ptr_eq(old, new),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some((_, task)) = fwd.take() {
            task.abort();
        }
        if let Some(m) = manager {
            let handle = self.acme.clone();
            let stream = m.subscribe_issued();
            let task = tokio::spawn(async move {
                handle
                    .forward(stream, |i| IssuedCertificate {
                        site: i.site,
                        hosts: i.names,
                        chain_pem: i.chain_pem,
                        key_pem: i.key_pem,
                    })
                    .await;
            });
            *fwd = Some((m, task));
        }
    }

    /// At shutdown, while still leading: clears the status the leader wrote, then releases
    /// the Lease so another replica takes over at once. Bounded, best effort.
    pub(super) async fn stop(self) {
        let synced = self.synced.borrow().clone();
        self.synced.send_replace(None);
        // The write loop ends when its input closes and hands the writer back.
        drop(self.synced);
        let writer = tokio::time::timeout(STOP_LIMIT, self.status_task)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        if let (Some(mut writer), Some(s)) = (writer, synced) {
            let ours: BTreeSet<ObjectKey> = s.translated.ingresses.iter().cloned().collect();
            let cleared =
                tokio::time::timeout(STOP_LIMIT, writer.clear(&s.snapshot.ingresses, &ours)).await;
            match cleared {
                Ok(n) if n > 0 => info!(ingresses = n, "Ingress status cleared"),
                Ok(_) => {}
                Err(_) => warn!("clearing the Ingress status took too long; left as it is"),
            }
        }
        let _ = self.stop.send(true);
        if let Some((_, task)) = self
            .forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        let _ = tokio::time::timeout(STOP_LIMIT, self.elector).await;
        let _ = tokio::time::timeout(STOP_LIMIT, self.acme_task).await;
    }
}

/// How long each step of stopping may take.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// Writes the status (and posts Events when the problems changed) after every sync and
/// whenever this replica becomes the leader. Gives the status writer back when its input
/// closes, for the shutdown's clear.
async fn write_loop(
    mut status: Option<StatusWriter>,
    recorder: Arc<Recorder>,
    mut inputs: watch::Receiver<Option<Synced>>,
    mut leader: watch::Receiver<bool>,
) -> Option<StatusWriter> {
    loop {
        let became_leader = tokio::select! {
            r = inputs.changed() => {
                if r.is_err() {
                    return status;
                }
                false
            }
            r = leader.changed() => {
                if r.is_err() {
                    return status;
                }
                *leader.borrow_and_update()
            }
        };
        let Some(s) = inputs.borrow_and_update().clone() else {
            continue;
        };
        if !*leader.borrow() {
            continue;
        }
        if let Some(w) = status.as_mut() {
            let ours: BTreeSet<ObjectKey> = s.translated.ingresses.iter().cloned().collect();
            if let Err(e) = w.sync(&s.snapshot.ingresses, &ours).await {
                warn!(error = %e, "cannot resolve the address to publish in Ingress status");
            }
        }
        if s.problems_changed || became_leader {
            recorder.problems(&s.translated.problems, &s.snapshot).await;
        }
    }
}
