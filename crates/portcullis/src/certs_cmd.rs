//! `portcullis certs --config FILE`: every name, where its certificate comes from, who issued
//! it, when it expires, when it renews, and the last error — read from the files and the
//! ACME storage, so it works whether or not the gateway is running. In cluster mode the
//! ACME certificates are read from the cluster store, with the replica that ordered each;
//! when the store cannot be reached, from this replica's local cache, and the first line
//! says so.

use std::collections::HashMap;
use std::time::SystemTime;

use portcullis_acme::{History, Storage};
use portcullis_cluster::records::{self, CertRecord, HistoryRecord, NodeReport};
use portcullis_config::{Config, SiteTls};
use portcullis_tls::{CertInfo, format_time, load_site_certificates};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// What the cluster store says, for the table.
#[derive(Default)]
struct ClusterView {
    /// The first line: the store, the issuer, the replicas alive; or why it was not read.
    header: String,
    /// Per site: who ordered it, when, and what the leaf says.
    certs: HashMap<String, (String, u64, Option<CertInfo>)>,
    /// Per site: the shared history.
    history: HashMap<String, History>,
}

/// One row per host of every site (and, in cluster mode, a line about the cluster first).
pub async fn render(config: &Config) -> String {
    let view = match &config.cluster {
        Some(settings) => Some(cluster_view(settings).await),
        None => None,
    };
    let mut out = view.as_ref().map(|v| v.header.clone()).unwrap_or_default();
    out.push_str(&table(config, view.as_ref()));
    out
}

async fn cluster_view(settings: &portcullis_config::Cluster) -> ClusterView {
    let mut view = ClusterView::default();
    let store = match crate::cluster::open_store(settings, None).await {
        Ok(s) => s,
        Err(e) => {
            view.header = format!("cluster: {e}; showing this replica's local cache\n");
            return view;
        }
    };
    let read = async {
        let leader = store.leader().await?;
        let nodes = store.nodes().await?;
        let certs = store.list(records::CERTS).await?;
        let history = store.list(records::HISTORY).await?;
        Ok::<_, portcullis_cluster::StoreError>((leader, nodes, certs, history))
    };
    match read.await {
        Err(e) => {
            view.header = format!(
                "cluster: {} store: {e}; showing this replica's local cache\n",
                store.kind()
            );
        }
        Ok((leader, nodes, certs, history)) => {
            let mut alive: Vec<String> = nodes
                .iter()
                .filter_map(|e| records::decode::<NodeReport>(&e.value).ok())
                .map(|r| r.node)
                .collect();
            alive.sort();
            view.header = format!(
                "cluster: {} store, issuer {}, replicas alive: {}\n",
                store.kind(),
                leader.as_deref().unwrap_or("(none)"),
                if alive.is_empty() {
                    "(none)".to_owned()
                } else {
                    alive.join(", ")
                }
            );
            for e in certs.entries {
                let Some(site) = e.key.strip_prefix(records::CERTS) else {
                    continue;
                };
                if let Ok(r) = records::decode::<CertRecord>(&e.value) {
                    let info = CertificateDer::pem_slice_iter(r.chain_pem.as_bytes())
                        .next()
                        .and_then(Result::ok)
                        .and_then(|leaf| CertInfo::parse(&leaf).ok());
                    view.certs
                        .insert(site.to_owned(), (r.issued_by, r.issued_at, info));
                }
            }
            for e in history.entries {
                let Some(site) = e.key.strip_prefix(records::HISTORY) else {
                    continue;
                };
                if let Ok(r) = records::decode::<HistoryRecord>(&e.value) {
                    view.history.insert(site.to_owned(), r.history);
                }
            }
        }
    }
    view
}

fn table(config: &Config, cluster: Option<&ClusterView>) -> String {
    let files = load_site_certificates(config, None, None).ok();
    let storage = Storage::new(&config.storage, &config.acme.directory);
    let mut rows: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "SITE".into(),
        "SOURCE".into(),
        "ISSUER".into(),
        "NOT AFTER".into(),
        "NEXT RENEWAL".into(),
        "LAST ERROR".into(),
    ]];
    let mut cluster_sources: HashMap<String, String> = HashMap::new();
    for (i, site) in config.sites.iter().enumerate() {
        let (source, info, next, error): (&str, Option<CertInfo>, String, String) = match &site.tls
        {
            SiteTls::Files(_) => (
                "file",
                files
                    .as_ref()
                    .and_then(|f| f.sites.get(i))
                    .and_then(|c| c.info.clone()),
                "manual".into(),
                if files.is_none() {
                    "unreadable; run `portcullis check`".into()
                } else {
                    String::new()
                },
            ),
            SiteTls::Local => ("local", None, "weekly while running".into(), String::new()),
            SiteTls::None => ("none", None, "-".into(), String::new()),
            SiteTls::Acme { .. } if cluster.is_some_and(|c| c.certs.contains_key(&site.name)) => {
                let view = cluster.expect("checked");
                let (by, at, info) = view.certs[&site.name].clone();
                let history = view.history.get(&site.name).cloned().unwrap_or_default();
                let next = history.next_attempt.map_or_else(
                    || "-".into(),
                    |t| format_time(portcullis_acme::from_unix(t)),
                );
                cluster_sources.insert(
                    site.name.clone(),
                    format!(
                        "acme (cluster: ordered by {by} at {})",
                        format_time(portcullis_acme::from_unix(at))
                    ),
                );
                ("acme", info, next, history.last_error.unwrap_or_default())
            }
            SiteTls::Acme { .. } => {
                let (info, load_error) = match storage.load_cert(&site.name) {
                    Ok(c) => (c.map(|c| c.info), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                let status = storage.load_status(&site.name).unwrap_or_default();
                let next = match status.next_attempt {
                    Some(t) => format_time(portcullis_acme::from_unix(t)),
                    None if info.is_none() => "at start".into(),
                    None => "-".into(),
                };
                let error = load_error.or(status.last_error).unwrap_or_default();
                ("acme", info, next, error)
            }
        };
        for host in &site.hosts {
            let (issuer, not_after) = match (&info, &site.tls) {
                (Some(info), _) => (short_issuer(&info.issuer), expiry(info)),
                (None, SiteTls::Local) => ("local CA".into(), "issued at start".into()),
                (None, _) => ("-".into(), "not issued yet".into()),
            };
            let source = match (cluster_sources.get(&site.name), cluster, &site.tls) {
                (Some(s), _, _) => s.clone(),
                (None, Some(_), SiteTls::Acme { .. }) if info.is_some() => {
                    "acme (local cache)".into()
                }
                _ => source.into(),
            };
            rows.push([
                host.to_string(),
                site.name.clone(),
                source,
                issuer,
                not_after,
                next.clone(),
                error.clone(),
            ]);
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (k, (cell, w)) in row.iter().zip(widths).enumerate() {
            if k == 6 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn expiry(info: &CertInfo) -> String {
    let mut s = format_time(info.not_after);
    if info.not_after < SystemTime::now() {
        s.push_str(" (expired)");
    }
    s
}

/// The issuer's CN (or O) when there is one, else the whole name.
fn short_issuer(dn: &str) -> String {
    for part in dn.split(',').map(str::trim) {
        if let Some(cn) = part.strip_prefix("CN=") {
            return cn.to_owned();
        }
    }
    dn.to_owned()
}
