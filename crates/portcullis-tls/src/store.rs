//! The certificate store the TLS listener reads on every handshake.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use portcullis_config::{HostMap, HostPattern};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Which hosts a site claims, as the store needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct SiteBinding<'a> {
    /// The site's name; certificates are set and kept by this name.
    pub name: &'a str,
    /// Hosts whose SNI selects this site's certificate.
    pub hosts: &'a [HostPattern],
    /// Serves handshakes with no SNI or an SNI no site claims.
    pub default: bool,
}

/// Certificates by SNI: exact names first, then wildcards one label deep, then the default
/// site.
///
/// Two levels of swapping keep both kinds of change cheap and atomic: the whole name map is
/// replaced when the set of sites changes ([`CertStore::set_sites`]), while one site's
/// certificate is replaced in its own slot ([`CertStore::set_certificate`]) without touching
/// the map or any other site. Handshakes in progress keep the `Arc` they resolved, so nothing
/// is dropped.
pub struct CertStore {
    map: ArcSwap<SniMap>,
}

#[derive(Default)]
struct SniMap {
    hosts: HostMap<Arc<Slot>>,
    default: Option<Arc<Slot>>,
    by_site: HashMap<String, Arc<Slot>>,
}

struct Slot {
    cert: ArcSwapOption<CertifiedKey>,
}

impl Default for CertStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map.load();
        let mut sites: Vec<_> = map.by_site.keys().collect();
        sites.sort();
        f.debug_struct("CertStore").field("sites", &sites).finish()
    }
}

impl CertStore {
    /// An empty store: every handshake is refused until sites are set.
    pub fn new() -> Self {
        Self {
            map: ArcSwap::from_pointee(SniMap::default()),
        }
    }

    /// Replaces the set of sites atomically. A site given `Some(cert)` serves that
    /// certificate; a site given `None` keeps the certificate it already had under the same
    /// name (one issued by ACME, say), or has none yet.
    pub fn set_sites<'a>(
        &self,
        sites: impl IntoIterator<Item = (SiteBinding<'a>, Option<Arc<CertifiedKey>>)>,
    ) {
        let old = self.map.load();
        let mut next = SniMap::default();
        for (site, cert) in sites {
            let slot = match old.by_site.get(site.name) {
                Some(slot) => {
                    if let Some(cert) = cert {
                        slot.cert.store(Some(cert));
                    }
                    slot.clone()
                }
                None => Arc::new(Slot {
                    cert: ArcSwapOption::new(cert),
                }),
            };
            for host in site.hosts {
                next.hosts.insert(host, slot.clone());
            }
            if site.default {
                next.default = Some(slot.clone());
            }
            next.by_site.insert(site.name.to_owned(), slot);
        }
        self.map.store(Arc::new(next));
    }

    /// Replaces one site's certificate; returns false if no site has that name.
    pub fn set_certificate(&self, site: &str, cert: Arc<CertifiedKey>) -> bool {
        match self.map.load().by_site.get(site) {
            Some(slot) => {
                slot.cert.store(Some(cert));
                true
            }
            None => false,
        }
    }

    /// The certificate a site currently serves.
    pub fn certificate(&self, site: &str) -> Option<Arc<CertifiedKey>> {
        self.map.load().by_site.get(site)?.cert.load_full()
    }

    /// The certificate for a handshake with this SNI (`None`: the client sent none).
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let map = self.map.load();
        let slot = match sni {
            Some(name) => map.hosts.get(name).or(map.default.as_ref()),
            None => map.default.as_ref(),
        }?;
        slot.cert.load_full()
    }

    /// Sites that have no certificate yet, sorted.
    pub fn missing(&self) -> Vec<String> {
        let map = self.map.load();
        let mut missing: Vec<String> = map
            .by_site
            .iter()
            .filter(|(_, slot)| slot.cert.load().is_none())
            .map(|(name, _)| name.clone())
            .collect();
        missing.sort();
        missing
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        CertStore::resolve(self, hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;

    fn cert(tag: u8) -> Arc<CertifiedKey> {
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(
            &rcgen::KeyPair::generate()
                .unwrap()
                .serialize_der()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![tag])],
            key,
        ))
    }

    fn tag(c: Option<Arc<CertifiedKey>>) -> Option<u8> {
        c.map(|c| c.cert[0].as_ref()[0])
    }

    fn hosts(list: &[&str]) -> Vec<HostPattern> {
        list.iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect()
    }

    #[test]
    fn resolves_exact_then_wildcard_then_default() {
        let store = CertStore::new();
        let (a, b, c) = (
            hosts(&["a.test"]),
            hosts(&["*.b.test", "b.test"]),
            hosts(&["c.test"]),
        );
        store.set_sites([
            (
                SiteBinding {
                    name: "a",
                    hosts: &a,
                    default: false,
                },
                Some(cert(1)),
            ),
            (
                SiteBinding {
                    name: "b",
                    hosts: &b,
                    default: false,
                },
                Some(cert(2)),
            ),
            (
                SiteBinding {
                    name: "c",
                    hosts: &c,
                    default: false,
                },
                Some(cert(3)),
            ),
        ]);
        assert_eq!(tag(store.resolve(Some("a.test"))), Some(1));
        assert_eq!(tag(store.resolve(Some("x.b.test"))), Some(2));
        assert_eq!(tag(store.resolve(Some("B.TEST"))), Some(2));
        assert_eq!(tag(store.resolve(Some("unknown.test"))), None);
        assert_eq!(tag(store.resolve(None)), None);

        store.set_sites([
            (
                SiteBinding {
                    name: "a",
                    hosts: &a,
                    default: false,
                },
                None,
            ),
            (
                SiteBinding {
                    name: "c",
                    hosts: &c,
                    default: true,
                },
                None,
            ),
        ]);
        // Certificates survive a new site set; the default catches the rest.
        assert_eq!(tag(store.resolve(Some("a.test"))), Some(1));
        assert_eq!(tag(store.resolve(Some("x.b.test"))), Some(3));
        assert_eq!(tag(store.resolve(None)), Some(3));
    }

    #[test]
    fn swapping_one_site_leaves_others_alone() {
        let store = CertStore::new();
        let (a, b) = (hosts(&["a.test"]), hosts(&["b.test"]));
        store.set_sites([
            (
                SiteBinding {
                    name: "a",
                    hosts: &a,
                    default: false,
                },
                Some(cert(1)),
            ),
            (
                SiteBinding {
                    name: "b",
                    hosts: &b,
                    default: false,
                },
                None,
            ),
        ]);
        assert_eq!(store.missing(), ["b"]);
        let held = store.resolve(Some("a.test"));
        assert!(store.set_certificate("a", cert(9)));
        assert!(store.set_certificate("b", cert(2)));
        assert!(!store.set_certificate("nope", cert(3)));
        assert_eq!(tag(held), Some(1), "a handshake keeps what it resolved");
        assert_eq!(tag(store.resolve(Some("a.test"))), Some(9));
        assert_eq!(tag(store.resolve(Some("b.test"))), Some(2));
        assert!(store.missing().is_empty());
    }
}
