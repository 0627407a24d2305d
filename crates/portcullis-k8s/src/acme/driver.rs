//! The task that stores issued certificates in their Secrets: fed by the ACME manager's
//! issued-certificate stream and by the site → Secret map of each translation, it writes
//! while this replica leads and retries with backoff when the API server fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{SecretError, SecretWrite, write_certificate};
use crate::events::{EventType, REASON_CERTIFICATE_ISSUED, REASON_SECRET_NOT_OURS, Recorder};
use crate::snapshot::ObjectKey;

/// A certificate the ACME manager issued for a site.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// The site's name (as translation named it: the key of the site → Secret map).
    pub site: String,
    /// The names it covers.
    pub hosts: Vec<String>,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("site", &self.site)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// The caller's side of [`AcmeSecrets`]: cheap to clone.
#[derive(Clone)]
pub struct AcmeSecretsHandle {
    issued: mpsc::UnboundedSender<IssuedCertificate>,
    targets: Arc<watch::Sender<BTreeMap<String, ObjectKey>>>,
}

impl AcmeSecretsHandle {
    /// The Secret each ACME site's certificate goes to (translation's `acme_secrets`); call
    /// after every translation. A certificate waiting for a site with no Secret yet is
    /// written once the site gets one.
    pub fn set_targets(&self, targets: BTreeMap<String, ObjectKey>) {
        self.targets.send_if_modified(|t| {
            let changed = *t != targets;
            if changed {
                warn_shared(&targets);
            }
            *t = targets;
            changed
        });
    }

    /// Queues a certificate to store; a newer one for the same site replaces one still
    /// waiting. `false` once the driver has stopped.
    pub fn issued(&self, certificate: IssuedCertificate) -> bool {
        self.issued.send(certificate).is_ok()
    }

    /// Feeds every item of a broadcast stream (the ACME manager's issued certificates,
    /// through `convert`) until it closes or the driver stops. A lagging receiver skips
    /// what it missed (the next renewal writes again) and goes on.
    pub async fn forward<T: Clone>(
        &self,
        mut stream: broadcast::Receiver<T>,
        convert: impl Fn(T) -> IssuedCertificate,
    ) {
        loop {
            match stream.recv().await {
                Ok(item) => {
                    if !self.issued(convert(item)) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "issued certificates were missed; they are stored at their next renewal"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Writes issued certificates into Secrets, while leading: certificates handed over while
/// following are dropped, and those still waiting when this replica steps down are
/// forgotten. Build with [`new`](Self::new),
/// keep the handle, and drive [`run`](Self::run).
pub struct AcmeSecrets {
    client: Client,
    leader: watch::Receiver<bool>,
    recorder: Option<Arc<Recorder>>,
    issued: mpsc::UnboundedReceiver<IssuedCertificate>,
    targets: watch::Receiver<BTreeMap<String, ObjectKey>>,
    backoff_initial: Duration,
    backoff_max: Duration,
}

struct Pending {
    certificate: IssuedCertificate,
    failures: u32,
    next: Instant,
}

impl AcmeSecrets {
    /// A driver writing through `client` while `leader` is `true`; backoff from 1 s to 60 s.
    pub fn new(client: Client, leader: watch::Receiver<bool>) -> (Self, AcmeSecretsHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (targets_tx, targets_rx) = watch::channel(BTreeMap::new());
        (
            Self {
                client,
                leader,
                recorder: None,
                issued: rx,
                targets: targets_rx,
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(60),
            },
            AcmeSecretsHandle {
                issued: tx,
                targets: Arc::new(targets_tx),
            },
        )
    }

    /// Posts a Normal Event on each Secret written, and a Warning on one refused.
    pub fn with_recorder(mut self, recorder: Arc<Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Retries a failed write after `initial`, doubling up to `max`.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Runs until `stop` turns true (or every handle is dropped and nothing is waiting).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        let mut open = true;
        let mut targets_open = true;
        loop {
            self.write_due(&mut pending).await;
            if !open && pending.is_empty() {
                return;
            }
            let leading = *self.leader.borrow();
            let wake = pending
                .values()
                .filter(|p| leading && self.targets.borrow().contains_key(&p.certificate.site))
                .map(|p| p.next)
                .min();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                got = self.issued.recv(), if open => match got {
                    // Only the leader orders; a certificate reaching a follower is stale.
                    Some(c) if *self.leader.borrow() => {
                        pending.insert(c.site.clone(), Pending { certificate: c, failures: 0, next: Instant::now() });
                    }
                    Some(c) => debug!(site = %c.site, "not leading: certificate not stored"),
                    None => open = false,
                },
                r = self.targets.changed(), if targets_open => targets_open = r.is_ok(),
                r = self.leader.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // Stepped down: what is still waiting is the new leader's to write (it
                    // seeds from the Secret and writes what it has); writing it later,
                    // when leading again, could put an older certificate over a newer one.
                    if !*self.leader.borrow() && !pending.is_empty() {
                        warn!(waiting = pending.len(), "no longer leading: certificates not yet stored are left to the new leader");
                        pending.clear();
                    }
                }
                () = sleep_until(wake) => {}
            }
        }
    }

    async fn write_due(&self, pending: &mut BTreeMap<String, Pending>) {
        if !*self.leader.borrow() {
            return;
        }
        let targets = self.targets.borrow().clone();
        let now = Instant::now();
        let due: Vec<String> = pending
            .iter()
            .filter(|(site, p)| p.next <= now && targets.contains_key(*site))
            .map(|(site, _)| site.clone())
            .collect();
        for site in due {
            let (Some(secret), Some(p)) = (targets.get(&site), pending.get_mut(&site)) else {
                continue;
            };
            let c = &p.certificate;
            match write_certificate(
                self.client.clone(),
                secret,
                &c.hosts,
                &c.chain_pem,
                &c.key_pem,
            )
            .await
            {
                Ok(written) => {
                    info!(site = %site, secret = %secret, ?written, "ACME certificate stored in its Secret");
                    if written != SecretWrite::Unchanged {
                        self.event(
                            secret,
                            EventType::Normal,
                            REASON_CERTIFICATE_ISSUED,
                            &format!("ACME certificate for {} stored", c.hosts.join(", ")),
                        )
                        .await;
                    }
                    pending.remove(&site);
                }
                Err(e @ SecretError::NotOurs { .. }) => {
                    warn!(site = %site, error = %e, "ACME certificate not stored");
                    self.event(
                        secret,
                        EventType::Warning,
                        REASON_SECRET_NOT_OURS,
                        &e.to_string(),
                    )
                    .await;
                    pending.remove(&site);
                }
                Err(e) => {
                    p.failures += 1;
                    let wait = self
                        .backoff_initial
                        .saturating_mul(1 << p.failures.min(16).saturating_sub(1))
                        .min(self.backoff_max);
                    p.next = Instant::now() + wait;
                    warn!(site = %site, error = %e, retry_in_s = wait.as_secs_f64(), "cannot store the ACME certificate; retrying");
                }
            }
            if !*self.leader.borrow() {
                return;
            }
        }
    }

    async fn event(&self, secret: &ObjectKey, kind: EventType, reason: &str, message: &str) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let object = ObjectReference {
            kind: Some("Secret".to_owned()),
            api_version: Some("v1".to_owned()),
            namespace: Some(secret.namespace.clone()),
            name: Some(secret.name.clone()),
            ..ObjectReference::default()
        };
        if let Err(e) = recorder.publish(&object, kind, reason, message).await {
            warn!(secret = %secret, error = %e, "cannot post an Event");
        }
    }
}

/// One Secret holds one certificate: sites with certificates of their own sharing a Secret
/// overwrite each other's there (each write is that site's certificate alone).
fn warn_shared(targets: &BTreeMap<String, ObjectKey>) {
    let mut by_secret: BTreeMap<&ObjectKey, Vec<&str>> = BTreeMap::new();
    for (site, secret) in targets {
        by_secret.entry(secret).or_default().push(site);
    }
    for (secret, sites) in by_secret.into_iter().filter(|(_, s)| s.len() > 1) {
        warn!(secret = %secret, ?sites, "several ACME sites store their certificates in one Secret; each write replaces the others'");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
