//! `certificate` and `acme` checks: the chain each site's hosts get from the live HTTPS
//! listener (by SNI) — validity, names, key, order, and whether it verifies to a trusted
//! root with only what was sent — or, when the gateway is not running, the chain in the
//! site's files. ACME sites add their order state, the directory and the challenge path.

mod acme;
mod chain;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;
use portcullis_config::{Config, HostPattern, Site, SiteTls};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::probe::{self, ProbeError};
use super::{Context, Entry, Finding, probe_name};
use chain::{Cert, Trust, Validity};

const CHECK: &str = "certificate";

/// The certificate and ACME findings.
pub(super) async fn check(ctx: &Context) -> Vec<Entry> {
    let roots = trusted_roots(&ctx.config).await;
    let certs = join_all(
        ctx.sites
            .iter()
            .map(|site| site_certificate(ctx, site, &roots)),
    );
    let acme_sites: Vec<&Site> = ctx
        .sites
        .iter()
        .filter(|s| matches!(s.tls, SiteTls::Acme { .. }))
        .collect();
    let acme = async {
        if acme_sites.is_empty() {
            return Vec::new();
        }
        // One directory for all sites: read once, reported under each.
        let directory = acme::directory(ctx).await;
        join_all(
            acme_sites
                .iter()
                .map(|site| acme::check_site(ctx, site, directory.clone())),
        )
        .await
    };
    let (certs, acme) = tokio::join!(certs, acme);
    certs.into_iter().chain(acme).flatten().collect()
}

/// The system's trust store (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set), read once.
pub(super) async fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: tokio::sync::OnceCell<Arc<RootCertStore>> = tokio::sync::OnceCell::const_new();
    ROOTS
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                Arc::new(roots)
            })
            .await
            .unwrap_or_else(|_| Arc::new(RootCertStore::empty()))
        })
        .await
        .clone()
}

/// The roots a client is taken to trust: the system's, and the local development CA's
/// when a site uses it.
pub(super) async fn trusted_roots(config: &Config) -> RootCertStore {
    let mut roots = (*system_roots().await).clone();
    let uses_local = config.sites.iter().any(|s| {
        matches!(
            s.tls,
            SiteTls::Local
                | SiteTls::Acme {
                    fallback_local: true
                }
        )
    });
    if uses_local
        && let Ok(pem) = tokio::fs::read(config.tls.local_ca_dir.join("root.crt")).await
        && let Ok(root) = CertificateDer::from_pem_slice(&pem)
    {
        roots.add_parsable_certificates([root]);
    }
    roots
}

/// Whether `cert` is self-signed.
pub(super) fn signs_itself(cert: &CertificateDer<'_>) -> bool {
    chain::signs(cert, cert)
}

/// Where the chain being judged came from, for the wording of fixes.
#[derive(Clone, Copy)]
enum Seen<'a> {
    /// Served by the live listener.
    Live,
    /// Read from the site's files: the gateway is not running.
    Files(&'a Path),
}

async fn site_certificate(ctx: &Context, site: &Site, roots: &RootCertStore) -> Vec<Entry> {
    let target = ctx.https_target();
    let mut out = Vec::new();
    let mut judged: Vec<Vec<CertificateDer<'static>>> = Vec::new();
    let names: Vec<String> = site.hosts.iter().map(probe_name).collect();
    let shaken = join_all(
        names
            .iter()
            .map(|name| probe::tls_handshake(target, name, &[], ctx.timeout)),
    )
    .await;
    for ((host, name), result) in site.hosts.iter().zip(&names).zip(shaken) {
        let name = name.as_str();
        match result {
            Ok(hs) => {
                let first = !judged.contains(&hs.chain);
                if first {
                    judged.push(hs.chain.clone());
                }
                let findings = judge(
                    site,
                    std::slice::from_ref(host),
                    name,
                    &hs.chain, Seen::Live, roots, first);
                out.extend(findings.into_iter().map(|f| Entry::site(site, f)));
                if first && let SiteTls::Files(files) = &site.tls {
                    out.extend(stale(site, name, &hs.chain, files).map(|f| Entry::site(site, f)));
                }
            }
            Err(ProbeError::Refused) => {
                out.extend(not_running(ctx, site, roots));
                return out;
            }
            Err(e) => out.push(Entry::site(
                site,
                Finding::fail(
                    CHECK,
                    name,
                    format!(
                        "the HTTPS listener at {target} did not complete a handshake for `{name}`: {e}"
                    ),
                    "look at the gateway's log for this name; `portcullis check --config FILE` shows problems with its certificates",
                ),
            )),
        }
    }
    out
}

/// Nothing listens: the files of a `Files` site are judged instead; other sites get their
/// certificate at start and are skipped.
fn not_running(ctx: &Context, site: &Site, roots: &RootCertStore) -> Vec<Entry> {
    let target = ctx.https_target();
    let SiteTls::Files(files) = &site.tls else {
        let what = match site.tls {
            SiteTls::Local => "its certificate is issued by the local CA at start",
            SiteTls::Acme { .. } => "its certificate is served from ACME storage once running",
            _ => "it has no certificate of its own",
        };
        return vec![Entry::site(
            site,
            Finding::ok(
                CHECK,
                site.hosts.first().map(probe_name).unwrap_or_default(),
                format!(
                    "the gateway is not running (nothing answers on {target}), and {what}: not checked"
                ),
            ),
        )];
    };
    let name = site.hosts.first().map(probe_name).unwrap_or_default();
    let mut findings = judge(
        site,
        &site.hosts,
        &name,
        &files.chain,
        Seen::Files(&files.cert_path),
        roots,
        true,
    );
    findings.push(
        match portcullis_tls::certified_key(files.chain.clone(), files.key.clone_key()) {
            Ok(_) => Finding::ok(
                CHECK,
                &name,
                format!(
                    "the key in {} belongs to the certificate",
                    files.key_path.display()
                ),
            ),
            Err(e) => Finding::fail(
                CHECK,
                &name,
                format!(
                    "the key in {} does not fit the certificate in {}: {e}",
                    files.key_path.display(),
                    files.cert_path.display()
                ),
                "put the private key that was issued with this certificate in the `key` file (or the certificate of this key in `cert`)",
            ),
        },
    );
    for f in &mut findings {
        f.message = format!(
            "the gateway is not running (nothing answers on {target}); checked the files: {}",
            f.message
        );
    }
    findings.into_iter().map(|f| Entry::site(site, f)).collect()
}

/// A live chain whose leaf is not the one in the site's file: the file changed and the
/// gateway was not reloaded.
fn stale(
    _site: &Site,
    name: &str,
    served: &[CertificateDer<'static>],
    files: &portcullis_config::CertKey,
) -> Option<Finding> {
    (served.first() != files.chain.first()).then(|| {
        Finding::warn(
            CHECK,
            name,
            format!(
                "the gateway serves another certificate than the one in {}",
                files.cert_path.display()
            ),
            "reload the gateway (`portcullis reload` or SIGHUP) so it serves the file's certificate",
        )
    })
}

/// The findings about one chain seen for `name`: names always; validity, key, order and
/// trust only the first time this chain is seen for the site (`whole`).
fn judge(
    site: &Site,
    hosts: &[HostPattern],
    name: &str,
    der: &[CertificateDer<'static>],
    seen: Seen<'_>,
    roots: &RootCertStore,
    whole: bool,
) -> Vec<Finding> {
    if der.len() > chain::MAX_CHAIN {
        return vec![Finding::fail(
            CHECK,
            name,
            format!(
                "the chain holds {} certificates; real chains hold a few, and clients give up on long ones",
                der.len()
            ),
            "serve the leaf and its intermediates only",
        )];
    }
    let mut certs = Vec::new();
    for (i, c) in der.iter().enumerate() {
        match Cert::parse(c) {
            Ok(c) => certs.push(c),
            Err(e) => {
                return vec![Finding::fail(
                    CHECK,
                    name,
                    format!("certificate {} of the chain cannot be read: {e}", i + 1),
                    "serve PEM certificates: the leaf, then its intermediates",
                )];
            }
        }
    }
    if certs.is_empty() {
        return vec![Finding::fail(
            CHECK,
            name,
            "no certificate was presented",
            "give the site a certificate (`tls:`)",
        )];
    }
    let now = SystemTime::now();
    let leaf = &certs[0];
    let mut out = Vec::new();
    out.push(names(site, hosts, name, leaf, seen));
    if !whole {
        return out;
    }
    out.push(validity(site, name, leaf, seen, now));
    if matches!(seen, Seen::Live) {
        out.push(Finding::ok(
            CHECK,
            name,
            "key: the handshake completed, so the listener holds the key of the certificate it serves",
        ));
    }
    let fix_order = "put the leaf first, then each intermediate in order (each followed by the certificate that signed it) in the `cert` file";
    match chain::order(&certs) {
        Ok(()) if certs.len() > 1 => out.push(Finding::ok(
            CHECK,
            name,
            format!(
                "chain order: each of the {} certificates is signed by the next",
                certs.len()
            ),
        )),
        Ok(()) => {}
        Err(why) => out.push(Finding::fail(CHECK, name, why, fix_order)),
    }
    out.push(trust(site, name, &certs, roots, now));
    out
}

fn names(site: &Site, hosts: &[HostPattern], name: &str, leaf: &Cert, seen: Seen<'_>) -> Finding {
    let missing = chain::uncovered(&leaf.info, hosts);
    let holds = if leaf.info.names.is_empty() {
        "no names".to_owned()
    } else {
        leaf.info.names.join(", ")
    };
    if missing.is_empty() {
        return Finding::ok(
            CHECK,
            name,
            format!(
                "names: the certificate covers {} (it holds {holds})",
                hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
    let fix = match (seen, &site.tls) {
        (_, SiteTls::Acme { .. }) => {
            "the ACME certificate does not cover the hosts yet: see the `acme` finding; it is reordered when the hosts change".to_owned()
        }
        (Seen::Files(path), _) => format!(
            "get a certificate for {} and put it in {}",
            missing.join(", "),
            path.display()
        ),
        (Seen::Live, SiteTls::Files(files)) => format!(
            "get a certificate for {} and put it in {}",
            missing.join(", "),
            files.cert_path.display()
        ),
        (Seen::Live, SiteTls::None) => {
            "give the site its own certificate (`tls:`): it gets the default site's".to_owned()
        }
        _ => format!("serve a certificate naming {}", missing.join(", ")),
    };
    Finding::fail(
        CHECK,
        name,
        format!(
            "names: the certificate does not cover {}; it holds {holds}; browsers show a name mismatch warning",
            missing.join(", "),
        ),
        fix,
    )
}

fn validity(site: &Site, name: &str, leaf: &Cert, seen: Seen<'_>, now: SystemTime) -> Finding {
    // The gateway renews ACME and local certificates itself, long before the end of
    // short lifetimes (a local leaf lives 7 days and is re-issued daily).
    let warn_under = match site.tls {
        SiteTls::Acme { .. } | SiteTls::Local => chain::renewed_warning(&leaf.info),
        _ => chain::EXPIRY_WARNING,
    };
    let v = chain::validity(&leaf.info, now, warn_under);
    let message = chain::describe_validity(&v, now);
    let fix = match (&site.tls, seen) {
        (SiteTls::Acme { .. }, _) => {
            "ACME has not renewed it: see the `acme` finding and `portcullis certs`".to_owned()
        }
        (SiteTls::Local, _) => {
            "restart the gateway: it issues local certificates at start".to_owned()
        }
        (SiteTls::Files(files), _) => format!(
            "renew the certificate, replace {} (and its key), then reload the gateway (`portcullis reload`)",
            files.cert_path.display()
        ),
        (_, Seen::Files(path)) => format!("replace {}", path.display()),
        _ => "serve a certificate valid today".to_owned(),
    };
    let fix = match v {
        Validity::NotYetValid(_) => {
            format!("{fix}; if the date looks wrong, check this machine's clock")
        }
        _ => fix,
    };
    match v {
        Validity::Valid(..) => Finding::ok(CHECK, name, message),
        Validity::ExpiresSoon(..) => Finding::warn(CHECK, name, message, fix),
        Validity::NotYetValid(_) | Validity::Expired(_) => Finding::fail(CHECK, name, message, fix),
    }
}

fn trust(
    site: &Site,
    name: &str,
    certs: &[Cert],
    roots: &RootCertStore,
    now: SystemTime,
) -> Finding {
    let full_chain = match site.tls {
        // The gateway serves the chain the CA sent (or its local CA's leaf): nothing to
        // add by hand.
        SiteTls::Acme { .. } | SiteTls::Local => {
            "the gateway serves the chain its CA gave it: a root missing here is a private CA's (trust it on clients, or use a public CA's `acme.directory`)"
        }
        _ => {
            "serve the full chain: the `cert` file must hold the leaf then every intermediate (fullchain.pem)"
        }
    };
    match chain::trust(certs, roots, name, now) {
        Trust::Trusted { top, root } => Finding::ok(
            CHECK,
            name,
            format!(
                "chain: verifies to the trusted root {root} with the {} certificate(s) sent (ending at {top}), no intermediate fetched",
                certs.len()
            ),
        ),
        Trust::MissingIssuer { top, issuer } => Finding::fail(
            CHECK,
            name,
            format!(
                "chain: the chain ends at {top} issued by {issuer}, which is not sent; clients that do not fetch intermediates (curl, Android, Go…) fail"
            ),
            format!(
                "{full_chain}; if {issuer} is a root, it is not trusted here: clients must trust it"
            ),
        ),
        Trust::SelfSigned(subject) => Finding::fail(
            CHECK,
            name,
            format!("chain: the certificate is self-signed ({subject}); no client trusts it"),
            "use a certificate from a trusted CA (`tls: acme`), or `tls: local` for development with the local CA's root trusted",
        ),
        Trust::UntrustedRoot(root) => Finding::fail(
            CHECK,
            name,
            format!(
                "chain: the chain ends at the root {root}, which is not a trusted root on this machine"
            ),
            "use a certificate from a publicly trusted CA, or add the root to every client's trust store (here: SSL_CERT_FILE or the system store)",
        ),
        Trust::Other(why) => Finding::fail(
            CHECK,
            name,
            format!("chain: does not verify: {why}"),
            full_chain,
        ),
        Trust::NoRoots => Finding::warn(
            CHECK,
            name,
            "chain: this machine has no trusted roots, so whether clients trust the chain was not checked",
            "install ca-certificates (or point SSL_CERT_FILE at a bundle)",
        ),
    }
}
