//! The metrics registry and the metrics that belong to the control plane: reloads,
//! certificate expiry and ACME, alongside the data path's and the process's own.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_acme::{AcmeManager, AcmeStats};
use portcullis_config::{Config, SiteTls};
use portcullis_proxy::ProxyMetrics;
use portcullis_proxy::metrics::names;
use portcullis_tls::{CertInfo, CertStore};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rustls::sign::CertifiedKey;

/// Every metric the gateway exports.
pub(crate) struct Telemetry {
    registry: Registry,
    pub(crate) proxy: ProxyMetrics,
    reloads_ok: IntCounter,
    reloads_failed: IntCounter,
    last_reload: IntGauge,
    not_after: IntGaugeVec,
    acme_ok: IntCounter,
    acme_failed: IntCounter,
    acme_last_success: IntGauge,
    /// Certificate expiry by certificate, so a scrape parses each certificate once. The
    /// `Arc` is kept so its address cannot be reused by another certificate.
    expiry_cache: Mutex<HashMap<usize, (Arc<CertifiedKey>, i64)>>,
}

impl Telemetry {
    pub(crate) fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let proxy = ProxyMetrics::new(&registry)?;
        let reloads = IntCounterVec::new(
            Opts::new(names::CONFIG_RELOADS, "Configuration reloads, by result."),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        let last_reload = IntGauge::new(
            names::CONFIG_LAST_RELOAD_SUCCESS,
            "When the configuration in force was loaded, Unix seconds.",
        )?;
        registry.register(Box::new(last_reload.clone()))?;
        let not_after = IntGaugeVec::new(
            Opts::new(
                names::CERTIFICATE_NOT_AFTER,
                "Expiry of the certificate each site serves, Unix seconds.",
            ),
            &["site", "source"],
        )?;
        registry.register(Box::new(not_after.clone()))?;
        let acme = IntCounterVec::new(
            Opts::new(names::ACME_ORDERS, "ACME orders, by result."),
            &["result"],
        )?;
        registry.register(Box::new(acme.clone()))?;
        let acme_last_success = IntGauge::new(
            names::ACME_LAST_SUCCESS,
            "When ACME last issued a certificate, Unix seconds (0: never).",
        )?;
        registry.register(Box::new(acme_last_success.clone()))?;
        last_reload.set(unix_now());
        Ok(Self {
            registry,
            proxy,
            reloads_ok: reloads.with_label_values(&["success"]),
            reloads_failed: reloads.with_label_values(&["failure"]),
            last_reload,
            not_after,
            acme_ok: acme.with_label_values(&["success"]),
            acme_failed: acme.with_label_values(&["failure"]),
            acme_last_success,
            expiry_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The registry, for metrics registered elsewhere (a config source's).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn reload_succeeded(&self) {
        self.reloads_ok.inc();
        self.last_reload.set(unix_now());
    }

    pub(crate) fn reload_failed(&self) {
        self.reloads_failed.inc();
    }

    /// Brings the metrics computed at scrape time up to date.
    pub(crate) fn refresh(
        &self,
        config: &Config,
        certs: &CertStore,
        acme: Option<&AcmeManager>,
        stats: &AcmeStats,
    ) {
        // The ACME counters live in the manager(s); mirror them, never going backwards.
        let sync = |counter: &IntCounter, value: u64| {
            let seen = counter.get();
            if value > seen {
                counter.inc_by(value - seen);
            }
        };
        sync(
            &self.acme_ok,
            stats.orders_succeeded.load(Ordering::Relaxed),
        );
        sync(
            &self.acme_failed,
            stats.orders_failed.load(Ordering::Relaxed),
        );
        self.acme_last_success
            .set(stats.last_success.load(Ordering::Relaxed) as i64);

        self.not_after.reset();
        let mut cache = self.expiry_cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashMap::with_capacity(cache.len());
        for site in &config.sites {
            let Some(cert) = certs.certificate(&site.name) else {
                continue;
            };
            let source = match &site.tls {
                SiteTls::Files(_) => "file",
                // Its names are served the default site's certificate, counted there.
                SiteTls::None => continue,
                SiteTls::Local => "local",
                SiteTls::Acme { .. } => match acme.and_then(|a| a.certificate(&site.name)) {
                    Some(issued) if Arc::ptr_eq(&issued, &cert) => "acme",
                    _ => "local",
                },
            };
            let id = Arc::as_ptr(&cert) as usize;
            let expiry = match cache.get(&id) {
                Some((_, t)) => *t,
                None => match CertInfo::parse(&cert.cert[0]) {
                    Ok(info) => portcullis_acme::unix(info.not_after) as i64,
                    Err(_) => continue,
                },
            };
            seen.insert(id, (cert.clone(), expiry));
            self.not_after
                .with_label_values(&[site.name.as_str(), source])
                .set(expiry);
        }
        *cache = seen;
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
