//! `portcullis certs --config FILE`: every name, where its certificate comes from, who issued
//! it, when it expires, when it renews, and the last error — read from the files and the
//! ACME storage, so it works whether or not the gateway is running.

use std::time::SystemTime;

use portcullis_acme::Storage;
use portcullis_config::{Config, SiteTls};
use portcullis_tls::{CertInfo, format_time, load_site_certificates};

/// One row per host of every site.
pub fn render(config: &Config) -> String {
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
            rows.push([
                host.to_string(),
                site.name.clone(),
                source.into(),
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
