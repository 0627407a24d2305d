//! The issuer's side: [`portcullis_acme::Fleet`] over a [`Store`]. Every write is fenced by
//! the leadership this replica holds now; a write made without it, or refused by the store,
//! is counted and fails the ACME step that made it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::AccountCredentials;
use portcullis_acme::{
    AcmeError, AcmeSite, Answer, Fleet, FleetFuture, History, OrderRecord, Shared, Step, unix,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::metrics::ClusterMetrics;
use crate::records::{
    self, ACCOUNT, ALPN01, AccountRecord, AlpnRecord, CertRecord, FORMAT, HTTP01, HistoryRecord,
    NodeReport, OrderEntry, cert_key, decode, encode, history_key, order_key,
};
use crate::replica::Tokens;
use crate::seal::Sealer;
use crate::store::{Leadership, Store, StoreError};

/// The fleet as the ACME manager of this replica sees it.
pub(crate) struct StoreFleet {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sealer: Sealer,
    pub(crate) metrics: ClusterMetrics,
    pub(crate) lead: watch::Receiver<Option<Leadership>>,
    pub(crate) issuer: watch::Receiver<bool>,
    pub(crate) challenge_timeout: Duration,
    /// Sites with an order placed or resumed and not yet ended, for
    /// `portcullis_cluster_orders_total`: each ends `issued` or `failed` once.
    pub(crate) ordering: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Fencing tokens seen, shared with the replica's watch.
    pub(crate) tokens: Arc<Tokens>,
}

fn cluster_err(e: impl std::fmt::Display) -> AcmeError {
    AcmeError::new(Step::Cluster, e.to_string())
}

impl StoreFleet {
    fn ordering(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.ordering.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the end of `site`'s order, if one was under way.
    fn ended(&self, site: &str, result: &str) {
        if self.ordering().remove(site) {
            self.metrics.orders.with_label_values(&[result]).inc();
        }
    }

    fn refused(&self, key: &str) -> AcmeError {
        self.metrics.fenced.inc();
        warn!(key, "write refused: this replica is no longer the issuer");
        AcmeError::new(
            Step::Cluster,
            format!("writing {key}: this replica is no longer the cluster's issuer"),
        )
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64, AcmeError> {
        let Some(lead) = self.lead.borrow().clone() else {
            return Err(self.refused(key));
        };
        match self.store.put_fenced(&lead, key, value).await {
            Ok(rev) => Ok(rev),
            Err(StoreError::Fenced) => Err(self.refused(key)),
            Err(e) => Err(cluster_err(format!("writing {key}: {e}"))),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), AcmeError> {
        let Some(lead) = self.lead.borrow().clone() else {
            return Err(self.refused(key));
        };
        match self.store.delete_fenced(&lead, key).await {
            Ok(()) => Ok(()),
            Err(StoreError::Fenced) => Err(self.refused(key)),
            Err(e) => Err(cluster_err(format!("deleting {key}: {e}"))),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AcmeError> {
        let Some(entry) = self
            .store
            .get(key)
            .await
            .map_err(|e| cluster_err(format!("reading {key}: {e}")))?
        else {
            return Ok(None);
        };
        if !self.tokens.admit(&entry) {
            // A former issuer's late write: as absent, for this replica as for the others.
            return Ok(None);
        }
        match decode(&entry.value) {
            Ok(v) => Ok(Some(v)),
            Err(bad) => {
                self.metrics
                    .bad_records
                    .with_label_values(&[bad.kind()])
                    .inc();
                warn!(key, problem = %bad, "ignoring a record in the cluster store");
                Ok(None)
            }
        }
    }

    fn node(&self) -> &str {
        self.store.node()
    }

    fn token(&self) -> i64 {
        self.lead.borrow().as_ref().map_or(0, |l| l.token)
    }

    /// Waits until every live replica has applied `revision`, or the timeout.
    async fn propagated(&self, revision: i64) {
        let started = Instant::now();
        let deadline = started + self.challenge_timeout;
        loop {
            let lagging: Vec<String> = match self.store.nodes().await {
                Ok(nodes) => nodes
                    .iter()
                    .filter_map(|e| {
                        let report: NodeReport = decode(&e.value).ok()?;
                        (report.applied_revision < revision).then_some(report.node)
                    })
                    .collect(),
                Err(e) => vec![format!("(store: {e})")],
            };
            if lagging.is_empty() {
                self.metrics
                    .propagation
                    .observe(started.elapsed().as_secs_f64());
                debug!(
                    revision,
                    took_ms = started.elapsed().as_millis(),
                    "every live replica has the challenge answers"
                );
                return;
            }
            if Instant::now() >= deadline {
                self.metrics
                    .propagation
                    .observe(started.elapsed().as_secs_f64());
                warn!(
                    ?lagging,
                    timeout_s = self.challenge_timeout.as_secs_f64(),
                    "replicas did not confirm the challenge answers in time; asking the CA to validate anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn answer_key(answer: &Answer) -> String {
    match answer {
        Answer::Http01 { token, .. } => format!("{HTTP01}{token}"),
        Answer::TlsAlpn01 { name, .. } => format!("{ALPN01}{}", name.to_ascii_lowercase()),
    }
}

impl Fleet for StoreFleet {
    fn issuer(&self) -> watch::Receiver<bool> {
        self.issuer.clone()
    }

    fn latest<'a>(&'a self, site: &'a str) -> FleetFuture<'a, Result<Option<Shared>, AcmeError>> {
        Box::pin(async move {
            let Some(record) = self.get::<CertRecord>(&cert_key(site)).await? else {
                return Ok(None);
            };
            match record.key(&self.sealer) {
                Ok(key_pem) => Ok(Some(Shared {
                    chain_pem: record.chain_pem,
                    key_pem,
                })),
                Err(bad) => {
                    self.metrics
                        .bad_records
                        .with_label_values(&[bad.kind()])
                        .inc();
                    warn!(site, problem = %bad, "ignoring the certificate in the cluster store");
                    Ok(None)
                }
            }
        })
    }

    fn store_certificate<'a>(
        &'a self,
        site: &'a AcmeSite,
        cert: Shared,
    ) -> FleetFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let record = CertRecord::new(
                &self.sealer,
                &site.name,
                &site.names,
                &cert.chain_pem,
                &cert.key_pem,
                self.node(),
                unix(SystemTime::now()),
                self.token(),
            );
            self.put(&cert_key(&site.name), encode(&record)).await?;
            self.ended(&site.name, "issued");
            Ok(())
        })
    }

    fn load_order<'a>(
        &'a self,
        site: &'a str,
    ) -> FleetFuture<'a, Result<Option<OrderRecord>, AcmeError>> {
        Box::pin(async move {
            let Some(entry) = self.get::<OrderEntry>(&order_key(site)).await? else {
                return Ok(None);
            };
            match entry.record(&self.sealer, site) {
                Ok(r) => {
                    // Resumed (or about to be): it ends issued or failed like a new one.
                    self.ordering().insert(site.to_owned());
                    Ok(Some(r))
                }
                Err(bad) => {
                    warn!(site, problem = %bad, "ignoring the recorded order");
                    Ok(None)
                }
            }
        })
    }

    fn save_order<'a>(
        &'a self,
        site: &'a str,
        order: &'a OrderRecord,
    ) -> FleetFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let entry = OrderEntry::new(
                &self.sealer,
                site,
                order,
                self.node(),
                unix(SystemTime::now()),
            );
            // Counted as under way even if the record is refused: the CA has the order.
            self.ordering().insert(site.to_owned());
            self.put(&order_key(site), encode(&entry)).await?;
            Ok(())
        })
    }

    fn clear_order<'a>(&'a self, site: &'a str) -> FleetFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.delete(&order_key(site)).await {
                debug!(site, error = %e, "cannot clear the recorded order");
            }
        })
    }

    fn load_history<'a>(
        &'a self,
        site: &'a str,
    ) -> FleetFuture<'a, Result<Option<History>, AcmeError>> {
        Box::pin(async move {
            Ok(self
                .get::<HistoryRecord>(&history_key(site))
                .await?
                .map(|r| r.history))
        })
    }

    fn save_history<'a>(
        &'a self,
        site: &'a str,
        history: &'a History,
    ) -> FleetFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let record = HistoryRecord {
                format: FORMAT,
                history: history.clone(),
            };
            if history.failures > 0 && history.next_attempt.is_some() {
                self.ended(site, "failed");
            }
            self.put(&history_key(site), encode(&record)).await?;
            Ok(())
        })
    }

    fn publish_answers<'a>(
        &'a self,
        answers: &'a [Answer],
    ) -> FleetFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let mut newest = 0;
            for answer in answers {
                let value = match answer {
                    Answer::Http01 {
                        key_authorization, ..
                    } => key_authorization.as_bytes().to_vec(),
                    Answer::TlsAlpn01 { digest, .. } => encode(&AlpnRecord {
                        format: FORMAT,
                        digest: records::hex(digest),
                    }),
                };
                newest = newest.max(self.put(&answer_key(answer), value).await?);
            }
            self.propagated(newest).await;
            Ok(())
        })
    }

    fn withdraw_answers<'a>(&'a self, answers: &'a [Answer]) -> FleetFuture<'a, ()> {
        Box::pin(async move {
            for answer in answers {
                if let Err(e) = self.delete(&answer_key(answer)).await {
                    debug!(answer = ?answer, error = %e, "cannot withdraw a challenge answer");
                }
            }
        })
    }

    fn load_account(&self) -> FleetFuture<'_, Result<Option<AccountCredentials>, AcmeError>> {
        Box::pin(async move {
            let Some(record) = self.get::<AccountRecord>(ACCOUNT).await? else {
                return Ok(None);
            };
            let json = record.credentials(&self.sealer).map_err(cluster_err)?;
            serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| cluster_err(format!("the stored ACME account is unusable: {e}")))
        })
    }

    fn save_account<'a>(
        &'a self,
        credentials: &'a AccountCredentials,
    ) -> FleetFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let json = serde_json::to_string(credentials).map_err(cluster_err)?;
            let record = AccountRecord::new(&self.sealer, &json, self.node());
            self.put(ACCOUNT, encode(&record)).await?;
            Ok(())
        })
    }
}
