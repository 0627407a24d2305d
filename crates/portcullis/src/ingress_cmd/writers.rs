//! What `portcullis ingress` writes to the API server, wired together: the Lease election,
//! and while this replica leads, Ingress status, Events for problems, and ACME certificates
//! into their Secrets (`docs/kubernetes-writers.md`).
//!
//! The sync loop tells [`Writers`] about each translation ([`Writers::applied`]) and asks it
//! to seed ACME storage from the Secrets before applying ([`Writers::seed`]); which replica
//! orders certificates follows [`Writers::leader`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_acme::{AcmeManager, Issued, Storage};
use portcullis_config::Config;
use portcullis_k8s::{
    AcmeSecrets, AcmeSecretsHandle, Elector, IssuedCertificate, K8sProblem, LeaseTimings,
    ObjectKey, PublishTarget, Recorder, Snapshot, StatusWriter, Translated, read_certificate,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::controller::Controller;

/// How often the leader looks at Ingress status even when nothing changed (a failed write,
/// a publish Service whose load balancer got its address).
const RESYNC: Duration = Duration::from_secs(30);

/// The writers' settings, from the flags.
pub(super) struct WriterSettings {
    /// The Lease's namespace and name.
    pub(super) namespace: String,
    pub(super) election_id: String,
    /// This replica's name in the Lease.
    pub(super) identity: String,
    pub(super) timings: LeaseTimings,
    /// Where status addresses come from; `None`: status is not written.
    pub(super) publish: Option<PublishTarget>,
}

/// What the last translation said, for the status and Events task.
#[derive(Clone)]
struct Latest {
    snapshot: Arc<Snapshot>,
    ours: BTreeSet<ObjectKey>,
    problems: Vec<K8sProblem>,
}

/// The running writers; [`shutdown`](Self::shutdown) clears status and releases the Lease.
pub(super) struct Writers {
    controller: Arc<Controller>,
    /// ACME storage settings of the base config (where seeds go).
    acme_storage: (PathBuf, String),
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    stop_status: watch::Sender<bool>,
    latest: watch::Sender<Option<Latest>>,
    acme: AcmeSecretsHandle,
    forwarding: Mutex<Forwarding>,
    tasks: tokio::sync::Mutex<Option<Tasks>>,
}

struct Tasks {
    elector: JoinHandle<()>,
    status: JoinHandle<Option<StatusWriter>>,
    acme: JoinHandle<()>,
}

/// The ACME manager whose issued certificates are being forwarded, and what was pushed
/// from its storage.
#[derive(Default)]
struct Forwarding {
    manager: Option<Arc<AcmeManager>>,
    task: Option<JoinHandle<()>>,
    pushed: BTreeMap<String, ObjectKey>,
}

impl Writers {
    /// Starts the election and the writer tasks.
    pub(super) fn start(
        client: kube::Client,
        controller: Arc<Controller>,
        base: &Config,
        settings: WriterSettings,
    ) -> Self {
        let elector = Elector::new(
            client.clone(),
            &settings.namespace,
            &settings.election_id,
            settings.identity.clone(),
            settings.timings,
        );
        info!(lease = %format!("{}/{}", settings.namespace, settings.election_id), identity = %settings.identity, "competing for leadership");
        let leader = elector.subscribe();
        let (stop, stop_rx) = watch::channel(false);
        let elector = tokio::spawn(elector.run(stop_rx.clone()));

        let recorder = Arc::new(Recorder::new(
            client.clone(),
            settings.identity,
            leader.clone(),
        ));
        let status = settings
            .publish
            .map(|target| StatusWriter::new(client.clone(), target, leader.clone()));
        let (latest, latest_rx) = watch::channel(None);
        let (stop_status, stop_status_rx) = watch::channel(false);
        let status_task = tokio::spawn(status_loop(
            status,
            recorder.clone(),
            latest_rx,
            leader.clone(),
            stop_status_rx,
        ));

        let (driver, acme) = AcmeSecrets::new(client, leader.clone());
        let acme_task = tokio::spawn(driver.with_recorder(recorder).run(stop_rx));
        Self {
            controller,
            acme_storage: (base.storage.clone(), base.acme.directory.clone()),
            leader,
            stop,
            stop_status,
            latest,
            acme,
            forwarding: Mutex::new(Forwarding::default()),
            tasks: tokio::sync::Mutex::new(Some(Tasks {
                elector,
                status: status_task,
                acme: acme_task,
            })),
        }
    }

    /// `true` while this replica leads (and may order ACME certificates).
    pub(super) fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Before a leader's translation is applied: every ACME site's Secret that holds a
    /// certificate is offered to the ACME storage, so the manager serves it and orders
    /// nothing while it is good (a restart, or a take-over from another replica).
    pub(super) async fn seed(&self, snapshot: &Snapshot, translated: &Translated) {
        if !*self.leader.borrow() || translated.acme_secrets.is_empty() {
            return;
        }
        let mut offers = Vec::new();
        for (site, key) in &translated.acme_secrets {
            let secret = snapshot.secrets.iter().find(|s| {
                s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                    && s.metadata.name.as_deref() == Some(key.name.as_str())
            });
            if let Some(pair) = secret.and_then(read_certificate) {
                offers.push((site.clone(), key.clone(), pair));
            }
        }
        let (root, directory) = self.acme_storage.clone();
        let seeded = tokio::task::spawn_blocking(move || {
            let storage = Storage::new(&root, &directory);
            for (site, key, (chain, pem)) in offers {
                match storage.seed_cert(&site, &chain, &pem) {
                    Ok(true) => info!(site = %site, secret = %key, "ACME storage seeded from the Secret"),
                    Ok(false) => {}
                    Err(e) => debug!(site = %site, secret = %key, error = %e, "the Secret's certificate is not usable for ACME"),
                }
            }
        })
        .await;
        if let Err(e) = seeded {
            warn!(error = %e, "seeding ACME storage from Secrets failed");
        }
    }

    /// After a translation is in force: status and Events follow it, and the ACME driver
    /// learns the site → Secret map (and the current manager's certificates).
    pub(super) fn applied(&self, snapshot: &Arc<Snapshot>, translated: &Translated) {
        self.latest.send_replace(Some(Latest {
            snapshot: snapshot.clone(),
            ours: translated.ingresses.iter().cloned().collect(),
            problems: translated.problems.clone(),
        }));
        self.acme.set_targets(translated.acme_secrets.clone());
        self.follow_acme(translated);
    }

    /// Forwards the current ACME manager's issued certificates (a new manager after a
    /// settings change gets a new subscription), and queues each ACME site's stored
    /// certificate once per Secret, so a Secret deleted or never written while this
    /// replica already had the certificate is written (an unchanged one costs a read).
    fn follow_acme(&self, translated: &Translated) {
        let manager = self.controller.acme();
        let mut f = self.forwarding.lock().unwrap_or_else(|e| e.into_inner());
        let same = match (&f.manager, &manager) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some(t) = f.task.take() {
                t.abort();
            }
            f.pushed.clear();
            f.manager = manager.clone();
            if let Some(m) = &manager {
                let handle = self.acme.clone();
                let issued = m.subscribe_issued();
                f.task = Some(tokio::spawn(async move {
                    handle.forward(issued, issued_certificate).await;
                }));
            }
        }
        let Some(m) = manager else { return };
        if !*self.leader.borrow() {
            // Pushed again when leading again.
            f.pushed.clear();
            return;
        }
        for (site, secret) in &translated.acme_secrets {
            if f.pushed.get(site) == Some(secret) {
                continue;
            }
            let Some(current) = m.certificate(site) else {
                continue;
            };
            let hosts = current
                .end_entity_cert()
                .ok()
                .and_then(|c| portcullis_tls::CertInfo::parse(c).ok())
                .map(|i| i.names)
                .unwrap_or_default();
            if let Some((chain_pem, key_pem)) = m.storage().cert_pem(site) {
                self.acme.issued(IssuedCertificate {
                    site: site.clone(),
                    hosts,
                    chain_pem,
                    key_pem,
                });
                f.pushed.insert(site.clone(), secret.clone());
            }
        }
    }

    /// At shutdown: the leader clears the status of its Ingresses, then releases the
    /// Lease so another replica takes over at once.
    pub(super) async fn shutdown(&self) {
        let Some(tasks) = self.tasks.lock().await.take() else {
            return;
        };
        let latest = self.latest.borrow().clone();
        // The status task stops first; the elector is told to stop (and release) only
        // once the status is cleared, so the clear is written while still leading.
        self.stop_status.send_replace(true);
        let status = tasks.status.await.ok().flatten();
        let leading = *self.leader.borrow();
        if let (true, Some(mut w), Some(l)) = (leading, status, latest) {
            let cleared = w.clear(&l.snapshot.ingresses, &l.ours).await;
            info!(cleared, "Ingress status cleared");
        }
        self.stop.send_replace(true);
        let _ = tasks.elector.await;
        let _ = tasks.acme.await;
        let forwarding = self
            .forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .task
            .take();
        if let Some(t) = forwarding {
            t.abort();
        }
    }
}

fn issued_certificate(i: Issued) -> IssuedCertificate {
    IssuedCertificate {
        site: i.site,
        hosts: i.names,
        chain_pem: i.chain_pem,
        key_pem: i.key_pem,
    }
}

/// While leading: Ingress status after each translation (and every [`RESYNC`]), and an
/// Event for each problem new in this term (repeats are the recorder's to fold). Gives the
/// status writer back at the end, for the shutdown's clear.
async fn status_loop(
    mut status: Option<StatusWriter>,
    recorder: Arc<Recorder>,
    mut latest: watch::Receiver<Option<Latest>>,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Option<StatusWriter> {
    let mut posted: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return status,
            r = latest.changed() => if r.is_err() { return status },
            r = leader.changed() => if r.is_err() { return status },
            () = tokio::time::sleep(RESYNC) => {}
        }
        if !*leader.borrow_and_update() {
            posted.clear();
            continue;
        }
        let Some(l) = latest.borrow_and_update().clone() else {
            continue;
        };
        if let Some(w) = status.as_mut() {
            match w.sync(&l.snapshot.ingresses, &l.ours).await {
                Ok(r) if r.written + r.cleared + r.failed > 0 => {
                    info!(
                        written = r.written,
                        cleared = r.cleared,
                        failed = r.failed,
                        "Ingress status updated"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "cannot read the publish Service; Ingress status left as it is")
                }
            }
        }
        let now: BTreeSet<String> = l.problems.iter().map(ToString::to_string).collect();
        let new: Vec<K8sProblem> = l
            .problems
            .iter()
            .filter(|p| !posted.contains(&p.to_string()))
            .cloned()
            .collect();
        if !new.is_empty() {
            recorder.problems(&new, &l.snapshot).await;
        }
        posted = now;
    }
}
