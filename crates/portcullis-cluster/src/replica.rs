//! Every replica's side: the store read once, then followed by a watch. Certificates go to
//! the ACME manager (which serves them and keeps them in its local cache, so a replica that
//! starts while the store is down serves what it had), challenge answers to the listeners;
//! the revision applied is reported in `nodes/<node>` so the issuer knows when every live
//! replica answers a challenge. A watch that falls behind compaction, or a store that stops
//! answering, leads to a fresh read once the store is back; meanwhile everything already
//! served stays served.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use portcullis_acme::AcmeManager;
use portcullis_tls::{Challenges, tls_alpn01_certificate};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::ClusterMetrics;
use crate::records::{
    self, ALPN01, AlpnRecord, BadRecord, CERTS, CHALLENGES, CertRecord, FORMAT, HTTP01, NodeReport,
    decode, encode,
};
use crate::seal::Sealer;
use crate::store::{Change, Entry, Store, StoreError};

/// Longest wait between attempts to reach the store again.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The watch-fed side of one replica.
pub(crate) struct Replica {
    store: Arc<dyn Store>,
    sealer: Sealer,
    challenges: Arc<Challenges>,
    manager: ArcSwapOption<AcmeManager>,
    metrics: ClusterMetrics,
    /// The newest revision applied.
    applied: watch::Sender<i64>,
    state: Mutex<State>,
    /// Asks for a fresh read (the set of sites changed).
    relist: Notify,
    /// How often the report is renewed.
    report_every: Duration,
    /// Fencing tokens seen, shared with the fleet.
    tokens: Arc<Tokens>,
    /// When this replica started following the store (staleness before the first read).
    started: Instant,
}

/// The highest fencing token seen per key (stores that record one: Kubernetes), shared by
/// the watch and the issuer's direct reads so that both ignore a former issuer's late write.
#[derive(Default)]
pub(crate) struct Tokens(Mutex<HashMap<String, i64>>);

impl Tokens {
    /// Whether `entry` may be used: written under the newest token seen for its key (which
    /// it then becomes), or by a store that records none.
    pub(crate) fn admit(&self, entry: &Entry) -> bool {
        let Some(token) = entry.token else {
            return true;
        };
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let newest = seen.entry(entry.key.clone()).or_insert(token);
        if token < *newest {
            debug!(key = %entry.key, token, newest = *newest, "ignoring a write from a former issuer");
            return false;
        }
        *newest = token;
        true
    }
}

#[derive(Default)]
struct State {
    /// Challenge answers served from the store, by key.
    answers: HashSet<String>,
    /// Bad records already reported, by key and revision (reported once).
    reported: HashMap<String, i64>,
    /// Last time the store answered.
    last_ok: Option<Instant>,
    /// Whether the cache is known to match the store.
    in_sync: bool,
}

impl Replica {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        sealer: Sealer,
        challenges: Arc<Challenges>,
        metrics: ClusterMetrics,
        lease: Duration,
        tokens: Arc<Tokens>,
    ) -> Self {
        Self {
            store,
            sealer,
            challenges,
            manager: ArcSwapOption::empty(),
            metrics,
            applied: watch::channel(0).0,
            state: Mutex::new(State::default()),
            relist: Notify::new(),
            report_every: lease / 3,
            tokens,
            started: Instant::now(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The manager certificates go to (`None`: no ACME site here); a new one gets every
    /// certificate again from a fresh read.
    pub(crate) fn attach(&self, manager: Option<Arc<AcmeManager>>) {
        let same = match (&*self.manager.load(), &manager) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.manager.store(manager);
        if !same {
            self.relist.notify_one();
        }
    }

    /// Asks for a fresh read (the sites changed).
    pub(crate) fn refresh(&self) {
        self.relist.notify_one();
    }

    /// The newest revision applied, as it changes.
    pub(crate) fn applied(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// Whether the store answers, how long the cache has not been known to match it
    /// (`None` in sync; counted from the start when it was never read), and whether it
    /// was ever read.
    pub(crate) fn health(&self) -> (bool, Option<Duration>, bool) {
        let st = self.state();
        let stale = (!st.in_sync).then(|| st.last_ok.unwrap_or(self.started).elapsed());
        (st.in_sync, stale, st.last_ok.is_some())
    }

    /// Brings `portcullis_cluster_store_stale_seconds` up to date (every second: the
    /// store's calls can take seconds to fail while it is cut off).
    pub(crate) fn tick(&self) {
        let (_, stale, _) = self.health();
        self.metrics
            .stale_seconds
            .set(stale.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    }

    fn ok(&self) {
        let mut st = self.state();
        st.last_ok = Some(Instant::now());
        st.in_sync = true;
        drop(st);
        self.metrics.store_up.set(1);
        self.metrics.stale_seconds.set(0);
    }

    fn down(&self, why: &StoreError) {
        let mut st = self.state();
        let was = st.in_sync;
        st.in_sync = false;
        drop(st);
        self.metrics.store_up.set(0);
        if was {
            warn!(store = self.store.kind(), error = %why, "cluster store unreachable; serving the certificates this replica has");
        }
        self.tick();
    }

    /// Follows the store until `stop` turns true.
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut retry = Duration::from_millis(200);
        let mut first = true;
        let mut report = tokio::time::interval(self.report_every.max(Duration::from_millis(300)));
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                return;
            }
            let from = match self.read_all().await {
                Ok(rev) => {
                    if !first {
                        self.metrics.relists.inc();
                    }
                    first = false;
                    retry = Duration::from_millis(200);
                    self.ok();
                    self.report().await;
                    rev + 1
                }
                Err(e) => {
                    self.down(&e);
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            let mut changes = match self.store.watch("", from).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "cluster watch did not start; reading the store again");
                    if !matches!(e, StoreError::Compacted(_)) {
                        self.down(&e);
                        tokio::time::sleep(retry).await;
                    }
                    continue;
                }
            };
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = self.relist.notified() => break,
                    _ = report.tick() => {
                        if !self.report().await {
                            // A watch on a connection that went silent (a partition)
                            // is not trusted: read again once the store answers.
                            break;
                        }
                    }
                    next = changes.next() => match next {
                        Some(Ok(batch)) => {
                            let answers = self.apply(batch);
                            self.ok();
                            if answers {
                                self.report().await;
                            }
                        }
                        Some(Err(e)) => {
                            if !matches!(e, StoreError::Compacted(_)) {
                                self.down(&e);
                            }
                            info!(error = %e, "cluster watch ended; reading the store again");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    /// Publishes this replica's report; false when the store did not take it.
    async fn report(&self) -> bool {
        let report = NodeReport {
            format: FORMAT,
            node: self.store.node().to_owned(),
            applied_revision: *self.applied.borrow(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        match self.store.heartbeat(encode(&report)).await {
            Ok(()) => {
                self.ok();
                true
            }
            Err(e) => {
                self.down(&e);
                false
            }
        }
    }

    /// Reads certificates and challenge answers afresh; gives the revision to watch after.
    async fn read_all(&self) -> Result<i64, StoreError> {
        let certs = self.store.list(CERTS).await?;
        for entry in &certs.entries {
            self.put(entry);
        }
        let answers = self.store.list(CHALLENGES).await?;
        let keys: HashSet<String> = answers.entries.iter().map(|e| e.key.clone()).collect();
        // Answers withdrawn while this replica was away.
        let gone: Vec<String> = self
            .state()
            .answers
            .iter()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete(&key);
        }
        for entry in &answers.entries {
            self.put(entry);
        }
        let rev = certs.revision.min(answers.revision);
        self.applied.send_if_modified(|a| {
            let newer = answers.revision > *a;
            *a = (*a).max(answers.revision);
            newer
        });
        Ok(rev)
    }

    /// Applies a watch batch; says whether it held challenge answers.
    fn apply(&self, batch: Vec<Change>) -> bool {
        let mut answers = false;
        let mut newest = 0;
        for change in batch {
            newest = newest.max(change.revision());
            match change {
                Change::Put(entry) => {
                    answers |= entry.key.starts_with(CHALLENGES);
                    self.put(&entry);
                }
                Change::Delete { key, .. } => {
                    answers |= key.starts_with(CHALLENGES);
                    self.delete(&key);
                }
            }
        }
        self.applied.send_if_modified(|a| {
            let newer = newest > *a;
            *a = (*a).max(newest);
            newer
        });
        answers
    }

    fn put(&self, entry: &Entry) {
        if !self.tokens.admit(entry) {
            return;
        }
        let result = if let Some(site) = entry.key.strip_prefix(CERTS) {
            self.put_cert(site, &entry.value)
        } else if let Some(token) = entry.key.strip_prefix(HTTP01) {
            match std::str::from_utf8(&entry.value) {
                Ok(answer) if !token.is_empty() && !token.contains('/') => {
                    self.challenges.set_http01(token, answer);
                    self.state().answers.insert(entry.key.clone());
                    Ok(())
                }
                _ => Err(BadRecord::Malformed("not an HTTP-01 answer".into())),
            }
        } else if let Some(name) = entry.key.strip_prefix(ALPN01) {
            decode::<AlpnRecord>(&entry.value).and_then(|r| {
                let digest = records::unhex(&r.digest)
                    .filter(|d| d.len() == 32)
                    .ok_or_else(|| BadRecord::Malformed("digest is not 32 bytes of hex".into()))?;
                let cert = tls_alpn01_certificate(name, &digest)
                    .map_err(|e| BadRecord::Unusable(e.to_string()))?;
                self.challenges.set_tls_alpn01(name, cert);
                self.state().answers.insert(entry.key.clone());
                Ok(())
            })
        } else {
            Ok(())
        };
        if let Err(bad) = result {
            self.bad(&entry.key, entry.revision, &bad);
        }
    }

    fn put_cert(&self, site: &str, value: &[u8]) -> Result<(), BadRecord> {
        let Some(manager) = self.manager.load_full() else {
            return Ok(());
        };
        let record: CertRecord = decode(value)?;
        if record.site != site {
            return Err(BadRecord::Unusable(format!(
                "the record is for site {}, stored under {site}",
                record.site
            )));
        }
        let key = record.key(&self.sealer)?;
        match manager.adopt(site, &record.chain_pem, &key) {
            Ok(true) => {
                self.metrics.adopted.inc();
                debug!(site, issued_by = %record.issued_by, "certificate from the cluster store");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(BadRecord::Unusable(e.to_string())),
        }
    }

    fn delete(&self, key: &str) {
        if let Some(token) = key.strip_prefix(HTTP01) {
            self.challenges.remove_http01(token);
        } else if let Some(name) = key.strip_prefix(ALPN01) {
            self.challenges.remove_tls_alpn01(name);
        }
        // A deleted certificate stays served: nothing replaces it but a newer one.
        self.state().answers.remove(key);
    }

    fn bad(&self, key: &str, revision: i64, bad: &BadRecord) {
        let mut st = self.state();
        if st.reported.get(key) == Some(&revision) {
            return;
        }
        st.reported.insert(key.to_owned(), revision);
        drop(st);
        self.metrics
            .bad_records
            .with_label_values(&[bad.kind()])
            .inc();
        warn!(key, revision, problem = %bad, "skipping a record in the cluster store; keeping what this replica had");
    }
}

/// Resolves once `stop` turns true (holding no borrow of the channel after).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
