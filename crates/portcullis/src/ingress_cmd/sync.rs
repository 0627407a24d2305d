//! From published snapshots to the configuration in force: translate, then the one apply
//! path (`Controller::apply`); and what readiness says meanwhile.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_config::Config;
use portcullis_k8s::{Options, SecretCache, Snapshot, SourceStatus, Translated, translate_cached};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::metrics::K8sMetrics;
use super::writers::{Synced, Writers};
use crate::admin::SourceReadiness;
use crate::controller::Controller;

/// What readiness and the sync loop share.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// When a snapshot's config was last put in force (or found unchanged).
    applied: Option<SystemTime>,
    /// The last apply was refused, with how many problems.
    refused: Option<usize>,
    source: SourceStatus,
}

impl SyncState {
    fn update(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// `/readyz`'s view: unready until the first sync is in force; afterwards ready, with
    /// a note while the API server is unreachable or the last sync was refused.
    /// Certificates never gate readiness in ingress mode.
    pub(super) fn readiness(&self) -> SourceReadiness {
        let st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut notes = String::new();
        let ready = st.applied.is_some();
        if !ready {
            notes.push_str("- kubernetes: waiting for the first full sync from the API server\n");
        }
        if let Some(since) = st.source.down_since {
            let _ = write!(
                notes,
                "- kubernetes: API server unreachable for {}s",
                ago(since)
            );
            if let Some(e) = &st.source.last_error {
                let _ = write!(notes, " (last error: {e})");
            }
            match st.applied {
                Some(at) => {
                    let _ = writeln!(
                        notes,
                        "; serving the routes synced {}s ago, reconnecting",
                        ago(at)
                    );
                }
                None => notes.push_str("; reconnecting\n"),
            }
        }
        if let Some(n) = st.refused {
            let _ = writeln!(
                notes,
                "- kubernetes: the last sync was refused ({n} problem{}; see the log); serving the previous routes",
                if n == 1 { "" } else { "s" }
            );
        }
        SourceReadiness {
            ready,
            notes,
            certificates_gate: false,
        }
    }
}

fn ago(t: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds, to the tenth, for the log.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Everything the loop needs, besides its inputs.
pub(super) struct Syncer {
    pub(super) controller: Arc<Controller>,
    pub(super) base: Config,
    pub(super) options: Options,
    pub(super) state: Arc<SyncState>,
    pub(super) metrics: K8sMetrics,
    /// The writers: told of each sync; whether this replica leads decides whether it
    /// orders ACME certificates.
    pub(super) writers: Arc<Writers>,
    /// The Secrets the last translation parsed, for the next one (taken while a
    /// translation runs).
    pub(super) secrets: Mutex<SecretCache>,
}

impl Syncer {
    /// Applies each published snapshot (again when leadership changes), and mirrors the
    /// source's health, until the source stops.
    pub(super) async fn run(
        self,
        mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        mut status: watch::Receiver<SourceStatus>,
    ) {
        let mut leader = self.writers.leader();
        let mut reported = BTreeSet::new();
        loop {
            tokio::select! {
                r = snapshots.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                r = leader.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                r = status.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let s = status.borrow_and_update().clone();
                    self.metrics.api_up(s.api_up);
                    self.state.update(|st| st.source = s);
                    continue;
                }
            }
            let leads = *leader.borrow_and_update();
            let snapshot = snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                self.sync(snapshot, leads, &mut reported).await;
            }
        }
    }

    async fn sync(&self, snapshot: Arc<Snapshot>, leads: bool, reported: &mut BTreeSet<String>) {
        let (base, mut options) = (self.base.clone(), self.options.clone());
        options.acme_issuer = leads;
        let snap = snapshot.clone();
        let started = Instant::now();
        let mut cache =
            std::mem::take(&mut *self.secrets.lock().unwrap_or_else(|e| e.into_inner()));
        let translated = tokio::task::spawn_blocking(move || {
            let t = translate_cached(&base, &snap, &options, &mut cache);
            if options.acme_issuer {
                seed_acme(&t, &snap);
            }
            (t, cache)
        })
        .await;
        let mut translated = match translated {
            Ok((t, cache)) => {
                *self.secrets.lock().unwrap_or_else(|e| e.into_inner()) = cache;
                t
            }
            Err(e) => {
                error!(error = %e, "translating the cluster's objects failed; the routes in force stay");
                self.metrics.refused();
                return;
            }
        };
        let translate_ms = ms(started.elapsed());
        let problems_changed = self.report(&translated, reported);
        // The config goes to the controller, the rest to the writers: one copy of a
        // config of thousands of sites is enough.
        let config = std::mem::replace(&mut translated.config, self.base.clone());
        let preloaded = std::mem::take(&mut translated.preloaded);
        let synced = Synced {
            snapshot,
            translated: Arc::new(translated),
            problems_changed,
        };
        if self.controller.config_is(&config).await {
            self.metrics.unchanged(unix_now());
            self.state.update(|st| st.applied = Some(SystemTime::now()));
            self.writers.synced(synced, self.controller.acme());
            return;
        }
        let applying = Instant::now();
        match self.controller.apply_preloaded(config, preloaded).await {
            Ok(summary) => {
                info!(
                    sites = summary.sites,
                    translate_ms,
                    apply_ms = ms(applying.elapsed()),
                    "kubernetes sync applied"
                );
                self.metrics.applied(unix_now());
                self.state.update(|st| {
                    st.applied = Some(SystemTime::now());
                    st.refused = None;
                });
                self.writers.synced(synced, self.controller.acme());
            }
            Err(e) => {
                // Translation gives valid configs; a refusal here is a bug, and the
                // routes in force keep serving.
                let problems = e.problems();
                for p in &problems {
                    error!(key = %p.key, "kubernetes sync refused: {}", p.message);
                }
                self.metrics.refused();
                self.state.update(|st| st.refused = Some(problems.len()));
            }
        }
    }

    /// Logs each problem once, when it appears (and once when it is gone), and sets the
    /// problem metrics. True when the problems changed.
    fn report(&self, t: &Translated, reported: &mut BTreeSet<String>) -> bool {
        let unsupported = t
            .unsupported_annotations
            .iter()
            .map(|(ingress, a)| format!("ingress {ingress}: annotation {a} is not supported"));
        let now: BTreeSet<String> = t
            .problems
            .iter()
            .map(ToString::to_string)
            .chain(unsupported)
            .collect();
        if &now == reported {
            return false;
        }
        for p in now.difference(reported) {
            warn!("kubernetes: {p}");
        }
        for p in reported.difference(&now) {
            info!("kubernetes problem resolved: {p}");
        }
        self.metrics.set_problems(&t.problems);
        self.metrics.set_unsupported(
            t.unsupported_annotations
                .iter()
                .map(|(i, a)| (i.namespace.as_str(), i.name.as_str(), a.as_str())),
        );
        *reported = now;
        true
    }
}

/// Offers the certificates stored in the ACME sites' Secrets (by another replica, or
/// before a restart) to ACME's storage, so the leader serves and renews them instead of
/// ordering new ones. Runs off the workers (file I/O).
#[allow(
    clippy::disallowed_methods,
    reason = "called only inside spawn_blocking, with the translation"
)]
fn seed_acme(t: &Translated, snapshot: &Snapshot) {
    if t.acme_secrets.is_empty() {
        return;
    }
    let storage = portcullis_acme::Storage::new(&t.config.storage, &t.config.acme.directory);
    for (site, key) in &t.acme_secrets {
        let secret = snapshot.secrets.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && s.metadata.name.as_deref() == Some(key.name.as_str())
        });
        let Some((chain, private)) = secret.and_then(|s| portcullis_k8s::read_certificate(s))
        else {
            continue;
        };
        match storage.seed_cert(site, &chain, &private) {
            Ok(true) => {
                info!(site = %site, secret = %key, "ACME certificate taken from its Secret")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(site = %site, secret = %key, error = %e, "the certificate in the Secret cannot be used")
            }
        }
    }
}
