//! The ACME manager: publishes stored certificates at start, then keeps every `tls: acme`
//! site's certificate issued and renewed, a bounded number of orders at a time and one per
//! site, backing off after failures without ever removing a certificate being served.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{Account, CertificateIdentifier};
use portcullis_config::{Acme, Challenge};
use portcullis_tls::{CertStore, Challenges, format_time};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::account;
use crate::error::{AcmeError, Step};
use crate::fleet::{Fleet, History, Shared};
use crate::http::{AcmeHttp, with_retry_after};
use crate::issue::{self, OrderRequest};
use crate::schedule::{backoff, random_unit, renewal_time, time_in_window};
use crate::site::AcmeSite;
use crate::storage::{
    SiteStatus, Storage, StorageError, StoredCert, from_unix, parse_pem_pair, unix,
};

/// Longest an order may take before it is abandoned and retried.
const FLOW_TIMEOUT: Duration = Duration::from_secs(600);
/// Immediate retries after `badNonce` before it counts as a failure.
const BAD_NONCE_RETRIES: u32 = 5;
/// Longest wait before asking the CA for a renewal window again.
const ARI_RECHECK_MAX: Duration = Duration::from_secs(6 * 3600);

/// A certificate the manager has just issued and stored (see
/// [`AcmeManager::subscribe_issued`]).
#[derive(Clone)]
pub struct Issued {
    /// The site's name.
    pub site: String,
    /// The names the certificate covers (the site's names when it was ordered).
    pub names: Vec<String>,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Issued")
            .field("site", &self.site)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// How many issued certificates a slow subscriber may fall behind by before it misses some.
const ISSUED_BACKLOG: usize = 64;

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct AcmeStats {
    /// Orders that produced a certificate.
    pub orders_succeeded: AtomicU64,
    /// Orders (or renewal checks) that failed.
    pub orders_failed: AtomicU64,
    /// Unix time of the last issued certificate, 0 if none.
    pub last_success: AtomicU64,
}

/// One site's state in the scheduler.
struct Slot {
    site: AcmeSite,
    current: Option<StoredCert>,
    due: SystemTime,
    running: bool,
    failures: u32,
    bad_nonces: u32,
    prefer_http: bool,
    last_error: Option<String>,
    last_success: Option<SystemTime>,
}

/// What one run of a site's task came to.
enum Outcome {
    Issued(StoredCert, Challenge),
    /// A certificate another replica stored, with the next check.
    Adopted(StoredCert, SystemTime),
    Scheduled(SystemTime),
    Failed(AcmeError),
}

/// A task's outcome, with the site's history as the fleet had it (cluster mode).
struct Done {
    outcome: Outcome,
    history: Option<History>,
}

/// Obtains and renews certificates, publishing them into the certificate store.
pub struct AcmeManager {
    cfg: Acme,
    storage: Storage,
    http: Result<AcmeHttp, AcmeError>,
    certs: Arc<CertStore>,
    challenges: Arc<Challenges>,
    http_listener: bool,
    account: tokio::sync::Mutex<Option<Account>>,
    slots: Mutex<HashMap<String, Slot>>,
    stats: Arc<AcmeStats>,
    /// Wakes the scheduler when the set of sites changes.
    wake: tokio::sync::Notify,
    /// Every certificate issued, for whoever copies them elsewhere.
    issued: tokio::sync::broadcast::Sender<Issued>,
    /// The other replicas, when certificates are shared (`cluster:`).
    fleet: Option<Arc<dyn Fleet>>,
}

impl AcmeManager {
    /// A manager keeping state under `storage`. `http_listener` says whether HTTP-01 can be
    /// answered.
    pub fn new(
        cfg: &Acme,
        storage: &Path,
        http_listener: bool,
        certs: Arc<CertStore>,
        challenges: Arc<Challenges>,
        stats: Arc<AcmeStats>,
    ) -> Self {
        Self {
            cfg: cfg.clone(),
            storage: Storage::new(storage, &cfg.directory),
            http: AcmeHttp::new(&cfg.ca_bundle),
            certs,
            challenges,
            http_listener,
            account: tokio::sync::Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            stats,
            wake: tokio::sync::Notify::new(),
            issued: tokio::sync::broadcast::channel(ISSUED_BACKLOG).0,
            fleet: None,
        }
    }

    /// Shares certificates with the other replicas of `fleet`: only the issuer orders,
    /// orders are recorded and resumed, and certificates are stored for every replica.
    #[must_use]
    pub fn with_fleet(mut self, fleet: Arc<dyn Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Serves a certificate another replica stored for `site` (from the cluster store's
    /// watch): taken when it covers the site's names and is newer than the one served.
    /// Gives whether it was taken; `Ok(false)` for a site this replica does not have or a
    /// certificate no newer. An unusable pair, or one for other names, is an `Err` and
    /// changes nothing.
    pub fn adopt(&self, site: &str, chain_pem: &str, key_pem: &str) -> Result<bool, StorageError> {
        let offered = parse_pem_pair(chain_pem, key_pem, site)?;
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(site) else {
            return Ok(false);
        };
        let missing: Vec<&String> = slot
            .site
            .names
            .iter()
            .filter(|n| !offered.info.names.iter().any(|have| have == *n))
            .collect();
        if !missing.is_empty() {
            return Err(StorageError::Invalid {
                path: std::path::PathBuf::from(site),
                reason: format!(
                    "the certificate covers {:?}, not {:?} which the site needs",
                    offered.info.names, missing
                ),
            });
        }
        if !newer(&offered, slot.current.as_ref()) {
            return Ok(false);
        }
        self.certs.set_certificate(site, offered.key.clone());
        info!(site, serial = %offered.info.serial, not_after = %format_time(offered.info.not_after), "serving the certificate from the cluster store");
        if !slot.running {
            slot.due = renewal_time(&offered.info, self.cfg.renew_before, random_unit())
                .min(SystemTime::now() + ARI_RECHECK_MAX);
        }
        slot.current = Some(offered);
        drop(slots);
        self.wake.notify_one();
        // Served first; the cache is written outside the lock.
        if let Err(e) = self.storage.cache_cert(site, chain_pem, key_pem) {
            warn!(site, error = %e, "cannot keep the shared certificate in the local cache");
        }
        Ok(true)
    }

    /// Every certificate issued from now on, once it is stored (and about to be served).
    /// The files under `storage` remain the manager's own copy; this is for copying
    /// certificates elsewhere (the Kubernetes controller stores them in Secrets). A
    /// receiver more than 64 certificates behind misses the oldest.
    pub fn subscribe_issued(&self) -> tokio::sync::broadcast::Receiver<Issued> {
        self.issued.subscribe()
    }

    /// The storage the manager uses.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &AcmeStats {
        &self.stats
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes on `sites`: publishes every stored, unexpired certificate at once (so a restart
    /// serves without waiting for the CA) and schedules the rest. Files that cannot be used
    /// are logged by path and replaced by a fresh order.
    pub fn load(&self, sites: &[AcmeSite]) {
        self.slots().clear();
        self.update_sites(sites);
    }

    /// Changes the set of sites (a reload): sites that stay keep their state and
    /// certificate, new ones are loaded from storage as at start, removed ones are dropped.
    pub fn update_sites(&self, sites: &[AcmeSite]) {
        let now = SystemTime::now();
        let mut slots = self.slots();
        slots.retain(|name, _| sites.iter().any(|s| &s.name == name));
        for site in sites {
            if let Some(slot) = slots.get_mut(&site.name) {
                if slot.site.names != site.names {
                    // New names need a certificate that covers them.
                    slot.site = site.clone();
                    slot.due = now;
                    slot.failures = 0;
                }
                continue;
            }
            let current = match self.storage.load_cert(&site.name) {
                Ok(Some(c)) if c.info.not_after > now => Some(c),
                Ok(Some(c)) => {
                    info!(site = %site.name, expired = %format_time(c.info.not_after), "stored certificate has expired; ordering a new one");
                    None
                }
                Ok(None) => None,
                Err(why) => {
                    warn!(site = %site.name, error = %why, "ignoring an unusable stored certificate; ordering a new one");
                    None
                }
            };
            if let Some(c) = &current {
                self.certs.set_certificate(&site.name, c.key.clone());
                info!(site = %site.name, not_after = %format_time(c.info.not_after), "serving the stored ACME certificate");
            }
            let status = self.storage.load_status(&site.name).unwrap_or_default();
            slots.insert(
                site.name.clone(),
                Slot {
                    site: site.clone(),
                    current,
                    due: now,
                    running: false,
                    failures: 0,
                    bad_nonces: 0,
                    prefer_http: false,
                    last_error: status.last_error,
                    last_success: status.last_success.map(from_unix),
                },
            );
        }
        drop(slots);
        self.wake.notify_one();
    }

    /// The certificate ACME currently provides for `site`, if any.
    pub fn certificate(&self, site: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.slots().get(site)?.current.as_ref()?.key.clone())
    }

    /// Each site's current certificate expiry (for the metrics endpoint).
    pub fn not_after(&self) -> Vec<(String, SystemTime)> {
        let mut out: Vec<_> = self
            .slots()
            .values()
            .filter_map(|s| Some((s.site.name.clone(), s.current.as_ref()?.info.not_after)))
            .collect();
        out.sort();
        out
    }

    /// Sites still waiting for their first ACME certificate, with the last error if any.
    pub fn waiting(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<_> = self
            .slots()
            .values()
            .filter(|s| s.current.is_none())
            .map(|s| (s.site.name.clone(), s.last_error.clone()))
            .collect();
        out.sort();
        out
    }

    /// Runs until `stop` turns true: starts every due site's task (at most
    /// `acme.concurrency` at once, one per site) and reschedules by the outcome.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut issuer = self.fleet.as_ref().map(|f| f.issuer());
        loop {
            let now = SystemTime::now();
            let mut next = now + Duration::from_secs(3600);
            // Not the issuer: start nothing. An order already under way is left to run
            // into its next write, which the fleet refuses (and counts): the new issuer
            // resumes it from its record.
            let may_order = issuer.as_ref().is_none_or(|i| *i.borrow());
            if may_order {
                let mut slots = self.slots();
                let mut due: Vec<&mut Slot> = slots.values_mut().filter(|s| !s.running).collect();
                due.sort_by_key(|s| s.due);
                for slot in due {
                    if slot.due <= now && tasks.len() < self.cfg.concurrency {
                        slot.running = true;
                        let work = self.clone().work(
                            slot.site.clone(),
                            slot.current.clone(),
                            slot.prefer_http,
                        );
                        let handle = tasks.spawn(work);
                        running.insert(handle.id(), slot.site.name.clone());
                    } else if slot.due > now {
                        next = next.min(slot.due);
                    }
                }
            }
            let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    tasks.abort_all();
                    return;
                }
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, done) = match joined {
                        Ok((id, done)) => (id, done),
                        Err(e) => (
                            e.id(),
                            Done {
                                outcome: Outcome::Failed(AcmeError::new(Step::NewOrder, format!("the order task failed: {e}"))),
                                history: None,
                            },
                        ),
                    };
                    if let Some(name) = running.remove(&id) {
                        self.settle(&name, done);
                    }
                }
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                Ok(()) = async { issuer.as_mut().expect("guarded").changed().await }, if issuer.is_some() => {}
            }
        }
    }

    /// The task for one site: check whether renewal is due (asking the CA's renewal window
    /// when it offers one), and order if it is.
    async fn work(
        self: Arc<Self>,
        site: AcmeSite,
        current: Option<StoredCert>,
        prefer_http: bool,
    ) -> Done {
        let mut history = None;
        if let Some(fleet) = &self.fleet {
            match fleet.load_history(&site.name).await {
                Ok(h) => history = Some(h.unwrap_or_default()),
                Err(e) => {
                    return Done {
                        outcome: Outcome::Failed(e),
                        history: None,
                    };
                }
            }
        }
        let flow = self.check_and_order(&site, current, prefer_http, history.as_mut());
        let (result, retry_after) =
            with_retry_after(tokio::time::timeout(FLOW_TIMEOUT, flow)).await;
        let outcome = match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(mut e)) => {
                e.retry_after = e.retry_after.or(retry_after);
                Outcome::Failed(e)
            }
            Err(_) => Outcome::Failed(AcmeError::new(
                Step::Validation,
                format!("gave up after {FLOW_TIMEOUT:?}"),
            )),
        };
        if let (Some(fleet), Some(h), Outcome::Failed(e)) = (&self.fleet, &history, &outcome)
            && !e.is_bad_nonce()
        {
            // The backoff is recorded before this task ends: an issuer killed right after
            // a failure must not let the next one order at once.
            let failures = h.failures + 1;
            let now = SystemTime::now();
            let mut wait = backoff(
                self.cfg.backoff_initial,
                self.cfg.backoff_max,
                failures,
                random_unit(),
            );
            if let Some(after) = e.retry_after {
                wait = wait.max(after.duration_since(now).unwrap_or_default());
            }
            let provisional = History {
                failures,
                next_attempt: Some(unix(now + wait)),
                last_error: Some(e.to_string()),
                ..h.clone()
            };
            if let Err(e) = fleet.save_history(&site.name, &provisional).await {
                debug!(site = %site.name, error = %e, "cannot record the failure in the cluster store");
            }
        }
        Done { outcome, history }
    }

    async fn check_and_order(
        &self,
        site: &AcmeSite,
        current: Option<StoredCert>,
        prefer_http: bool,
        history: Option<&mut History>,
    ) -> Result<Outcome, AcmeError> {
        let covers = |c: &StoredCert| {
            site.names
                .iter()
                .all(|n| c.info.names.iter().any(|have| have == n))
        };
        let mut current = current.filter(covers);
        let mut adopted = false;
        if let Some(fleet) = &self.fleet
            && let Some(Shared { chain_pem, key_pem }) = fleet.latest(&site.name).await?
        {
            // Another replica may just have finished: never order what the fleet has.
            match parse_pem_pair(&chain_pem, &key_pem, &site.name) {
                Ok(c) if covers(&c) && newer(&c, current.as_ref()) => {
                    if let Err(e) = self.storage.cache_cert(&site.name, &chain_pem, &key_pem) {
                        warn!(site = %site.name, error = %e, "cannot keep the shared certificate in the local cache");
                    }
                    current = Some(c);
                    adopted = true;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(site = %site.name, error = %e, "ignoring the unusable certificate in the cluster store");
                }
            }
        }
        let outcome = self
            .due_or_order(site, current.clone(), prefer_http, history)
            .await?;
        Ok(match (outcome, current) {
            (Outcome::Scheduled(at), Some(c)) if adopted => Outcome::Adopted(c, at),
            (outcome, _) => outcome,
        })
    }

    /// With the current certificate known: the next check when renewal is not due, else
    /// an order.
    async fn due_or_order(
        &self,
        site: &AcmeSite,
        current: Option<StoredCert>,
        prefer_http: bool,
        history: Option<&mut History>,
    ) -> Result<Outcome, AcmeError> {
        let now = SystemTime::now();
        let default_due = current
            .as_ref()
            .map(|c| renewal_time(&c.info, self.cfg.renew_before, random_unit()));
        let account = match self.account().await {
            Ok(a) => a,
            // A CA outage while nothing is due is not a failure: look again later.
            Err(e) => match default_due {
                Some(due) if due > now => {
                    debug!(site = %site.name, error = %e, "CA unreachable; renewal not due yet");
                    return Ok(Outcome::Scheduled(due.min(now + self.cfg.backoff_max)));
                }
                _ => return Err(e),
            },
        };
        let mut replaces = None;
        if let Some(c) = &current {
            let id = CertificateIdentifier::try_from(&c.key.cert[0])
                .ok()
                .map(CertificateIdentifier::into_owned);
            let window = match &id {
                Some(id) => match account.renewal_info(id).await {
                    Ok((info, recheck)) => Some((info, recheck)),
                    Err(instant_acme::Error::Unsupported(_)) => None,
                    Err(e) => {
                        debug!(site = %site.name, error = %e, "renewal window unavailable; using the default schedule");
                        None
                    }
                },
                None => None,
            };
            match window {
                Some((info, recheck)) => {
                    let start = SystemTime::from(info.suggested_window.start);
                    let end = SystemTime::from(info.suggested_window.end);
                    let at = time_in_window(start, end, random_unit());
                    if at > now {
                        let recheck = recheck.clamp(Duration::from_secs(60), ARI_RECHECK_MAX);
                        debug!(site = %site.name, renew_at = %format_time(at), "renewal window from the CA");
                        return Ok(Outcome::Scheduled(at.min(now + recheck)));
                    }
                    replaces = id;
                }
                None => {
                    if let Some(due) = default_due.filter(|d| *d > now) {
                        // Look again within ARI's polling interval: the window may have been
                        // unavailable only for now. Without ARI the check costs no request.
                        return Ok(Outcome::Scheduled(due.min(now + ARI_RECHECK_MAX)));
                    }
                }
            }
        }

        let fleet = self.fleet.as_deref().map(|f| (f, site.name.as_str()));
        // The fleet's backoff holds across failovers and restarts.
        if let Some(at) = history
            .as_ref()
            .and_then(|h| h.next_attempt)
            .map(from_unix)
            .filter(|at| *at > now)
        {
            debug!(site = %site.name, next = %format_time(at), "backing off, as the fleet recorded");
            return Ok(Outcome::Scheduled(at));
        }
        let renewing = current.is_some();
        info!(site = %site.name, names = ?site.names, renewing, replaces = replaces.as_ref().map(ToString::to_string), "ordering a certificate");
        let prefer = if prefer_http && self.http_listener {
            Challenge::Http01
        } else {
            self.cfg.challenge
        };
        let issued = issue::order(
            &account,
            &self.challenges,
            &OrderRequest {
                names: &site.names,
                replaces,
                prefer,
                http_listener: self.http_listener,
            },
            fleet,
            history,
        )
        .await?;
        if let Some((fleet, site_name)) = fleet {
            fleet
                .store_certificate(
                    site,
                    Shared {
                        chain_pem: issued.chain_pem.clone(),
                        key_pem: issued.key_pem.clone(),
                    },
                )
                .await?;
            fleet.clear_order(site_name).await;
        }
        self.storage
            .save_cert(&site.name, &issued.chain_pem, &issued.key_pem)
            .map_err(|e| {
                AcmeError::new(
                    Step::Store,
                    format!("{}: {e}", self.storage.root().display()),
                )
            })?;
        let stored = self
            .storage
            .load_cert(&site.name)
            .map_err(|e| AcmeError::new(Step::Store, e.to_string()))?
            .ok_or_else(|| AcmeError::new(Step::Store, "the certificate just stored is missing"))?;
        // No subscriber is not an error.
        let _ = self.issued.send(Issued {
            site: site.name.clone(),
            names: site.names.clone(),
            chain_pem: issued.chain_pem.clone(),
            key_pem: issued.key_pem.clone(),
        });
        Ok(Outcome::Issued(stored, issued.challenge))
    }

    /// The account, loading or creating it on first use.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let http = self.http.as_ref().map_err(Clone::clone)?;
        let account = match &self.fleet {
            Some(fleet) => account::load_or_create_shared(&self.cfg, fleet.as_ref(), http).await?,
            None => account::load_or_create(&self.cfg, &self.storage, http).await?,
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    fn settle(&self, name: &str, done: Done) {
        let Done {
            outcome,
            mut history,
        } = done;
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(name) else {
            return; // removed by a reload while its task ran
        };
        slot.running = false;
        let now = SystemTime::now();
        if let Some(h) = &history {
            slot.failures = slot.failures.max(h.failures);
        }
        let history_changed = !matches!(outcome, Outcome::Scheduled(_) | Outcome::Adopted(..));
        match outcome {
            Outcome::Adopted(cert, at) => {
                self.certs
                    .set_certificate(&slot.site.name, cert.key.clone());
                info!(site = %slot.site.name, serial = %cert.info.serial, "serving the certificate another replica stored");
                slot.current = Some(cert);
                slot.due = at;
                slot.failures = 0;
                slot.last_error = None;
            }
            Outcome::Issued(cert, challenge) => {
                self.certs
                    .set_certificate(&slot.site.name, cert.key.clone());
                info!(
                    site = %slot.site.name,
                    serial = %cert.info.serial,
                    not_after = %format_time(cert.info.not_after),
                    challenge = ?challenge,
                    "certificate issued and now served"
                );
                // Look again within ARI's polling interval: a CA may move the window (after
                // a mass revocation, say); without ARI the check costs no request.
                let covers = slot
                    .site
                    .names
                    .iter()
                    .all(|n| cert.info.names.iter().any(|have| have == n));
                slot.due = if covers {
                    renewal_time(&cert.info, self.cfg.renew_before, random_unit())
                        .min(now + ARI_RECHECK_MAX)
                } else {
                    now // the site's names changed while this order ran
                };
                slot.current = Some(cert);
                slot.failures = 0;
                slot.bad_nonces = 0;
                slot.last_error = None;
                slot.last_success = Some(now);
                self.stats.orders_succeeded.fetch_add(1, Ordering::Relaxed);
                self.stats.last_success.store(unix(now), Ordering::Relaxed);
            }
            Outcome::Scheduled(at) => {
                slot.due = at;
                debug!(site = %slot.site.name, next = %format_time(at), "next renewal check");
            }
            Outcome::Failed(e) => self.failed(slot, e, now),
        }
        let status = SiteStatus {
            names: slot.site.names.clone(),
            next_attempt: Some(unix(slot.due)),
            last_error: slot.last_error.clone(),
            failures: slot.failures,
            last_success: slot.last_success.map(unix),
        };
        self.storage.save_status(&slot.site.name, &status);
        if let (Some(fleet), Some(h), true) = (&self.fleet, history.as_mut(), history_changed) {
            h.failures = slot.failures;
            h.next_attempt = (slot.failures > 0).then(|| unix(slot.due));
            h.last_error = slot.last_error.clone();
            h.last_success = slot.last_success.map(unix);
            let (fleet, site, h) = (fleet.clone(), slot.site.name.clone(), h.clone());
            tokio::spawn(async move {
                if let Err(e) = fleet.save_history(&site, &h).await {
                    debug!(site, error = %e, "cannot record the site's history in the cluster store");
                }
            });
        }
    }

    fn failed(&self, slot: &mut Slot, e: AcmeError, now: SystemTime) {
        if e.is_bad_nonce() && slot.bad_nonces < BAD_NONCE_RETRIES {
            slot.bad_nonces += 1;
            slot.due = now;
            debug!(site = %slot.site.name, step = %e.step, "badNonce; retrying the order at once");
            return;
        }
        if e.is_account_missing() {
            // The CA forgot the account (a reset test CA, a deactivated account): make a new one.
            self.storage.remove_account();
            if let Ok(mut cached) = self.account.try_lock() {
                *cached = None;
            }
        }
        if e.step == Step::Validation && self.http_listener {
            // The other challenge may get through where this one did not (a TLS-terminating
            // load balancer in front of :443, say).
            slot.prefer_http = !slot.prefer_http;
        }
        slot.failures += 1;
        slot.bad_nonces = 0;
        let mut wait = backoff(
            self.cfg.backoff_initial,
            self.cfg.backoff_max,
            slot.failures,
            random_unit(),
        );
        if let Some(after) = e.retry_after {
            wait = wait.max(after.duration_since(now).unwrap_or_default());
        }
        slot.due = now + wait;
        slot.last_error = Some(e.to_string());
        self.stats.orders_failed.fetch_add(1, Ordering::Relaxed);
        warn!(
            site = %slot.site.name,
            names = ?slot.site.names,
            step = %e.step,
            problem = e.problem_type.as_deref().unwrap_or("-"),
            error = %e.message,
            failures = slot.failures,
            retry_in_s = wait.as_secs_f64(),
            serving = slot.current.is_some(),
            "ACME failed; backing off"
        );
    }
}

/// Whether `offered` should replace `current`: it expires later, or was issued later.
fn newer(offered: &StoredCert, current: Option<&StoredCert>) -> bool {
    current.is_none_or(|c| {
        offered.info.not_after > c.info.not_after
            || (offered.info.not_after == c.info.not_after
                && offered.info.not_before > c.info.not_before)
    })
}
