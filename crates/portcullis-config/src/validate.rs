//! File types → runtime model. Collects every problem instead of stopping at the first, and
//! names each one by its key path.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::error::{Error, Problem, Result, ValueError};
use crate::file::{
    AcmeFile, AdminFile, ClusterFile, LimitsFile, ListenFile, ShutdownFile, TlsFile,
};
use crate::model::{Admin, CertKey, Config, Listen, Shutdown, SiteTls, TlsSettings, defaults};
use crate::pem::FileStamp;

mod acme;
mod admin;
mod cluster;
mod limits;
mod origin;
mod site;

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin",
    "tls",
    "limits",
    "shutdown",
    "acme",
    "storage",
    "cluster",
    "trusted_proxies",
    "sites",
];

/// Reads and validates the config file at `path`. Relative paths inside it are resolved
/// against the file's folder.
pub fn load(path: &Path) -> Result<Config> {
    load_reusing(path, None)
}

/// [`load`], for a reload after `previous`: a site's certificate and key files whose
/// stamps ([`FileStamp`]: length, times, inode) are those `previous` read them with give
/// the same certificate again without being read. Any change to either file, or a file
/// changed too recently to be trusted when it was read, and both are read.
pub fn load_reusing(path: &Path, previous: Option<&Config>) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let reuse = previous.map(Reuse::of).unwrap_or_default();
    parse_as(&text, base, Sites::Required, &reuse)
}

/// The certificates of a previous config that a reload may take again, by certificate
/// path.
#[derive(Default)]
pub(crate) struct Reuse<'a> {
    certs: HashMap<&'a Path, &'a CertKey>,
}

impl<'a> Reuse<'a> {
    fn of(config: &'a Config) -> Self {
        let certs = config
            .sites
            .iter()
            .filter_map(|s| match &s.tls {
                SiteTls::Files(files) if files.stamps.is_some() => {
                    Some((files.cert_path.as_path(), files))
                }
                _ => None,
            })
            .collect();
        Self { certs }
    }

    /// The previous certificate read from these two files, if neither changed since.
    pub(crate) fn unchanged(&self, cert_path: &Path, key_path: &Path) -> Option<CertKey> {
        let was = self
            .certs
            .get(cert_path)
            .filter(|c| c.key_path == key_path)?;
        let (cert, key) = *was.stamps.as_deref()?;
        (FileStamp::at(cert_path) == Some(cert) && FileStamp::at(key_path) == Some(key))
            .then(|| (*was).clone())
    }
}

/// Validates config text; relative paths inside it are resolved against `base_dir`.
pub fn parse(text: &str, base_dir: &Path) -> Result<Config> {
    parse_as(text, base_dir, Sites::Required, &Reuse::default())
}

/// Reads and validates a base config at `path`: everything but the sites, which another
/// source (Kubernetes) says. `sites` must be absent or empty.
pub fn load_base(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parse_base(&text, base)
}

/// Validates base config text (see [`load_base`]); the result has no sites.
pub fn parse_base(text: &str, base_dir: &Path) -> Result<Config> {
    parse_as(text, base_dir, Sites::Forbidden, &Reuse::default())
}

/// Whether a config's `sites` come from the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sites {
    /// A file config: at least one site.
    Required,
    /// A base config: the sites come from elsewhere; none may be written.
    Forbidden,
}

fn parse_as(text: &str, base_dir: &Path, sites: Sites, reuse: &Reuse<'_>) -> Result<Config> {
    let mut v = Validator {
        base: base_dir,
        problems: Vec::new(),
        sites,
        reuse,
    };
    let config = v.config(text);
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(Error::Invalid(v.problems)),
    }
}

struct Validator<'a> {
    base: &'a Path,
    problems: Vec<Problem>,
    sites: Sites,
    /// What a reload may take again from the config in force.
    reuse: &'a Reuse<'a>,
}

impl Validator<'_> {
    pub(super) fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    pub(super) fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            // `./data/ca` next to `/etc/portcullis/gw.yaml` is `/etc/portcullis/data/ca`.
            self.base.join(path.strip_prefix(".").unwrap_or(path))
        }
    }

    /// Deserialises one section, recording a problem at its exact key path on failure.
    pub(super) fn section<T: DeserializeOwned>(&mut self, value: Value, key: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut path = key.to_owned();
                for segment in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match segment {
                        Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                        Segment::Map { key } => push_key(&mut path, key),
                        Segment::Enum { variant } => push_key(&mut path, variant),
                        Segment::Unknown => {}
                    }
                }
                let message = e.inner().to_string();
                self.err(path, message);
                None
            }
        }
    }

    fn config(&mut self, text: &str) -> Option<Config> {
        let doc: Value = match serde_yaml::from_str(text) {
            Ok(doc) => doc,
            Err(e) => {
                self.err("", format!("not valid YAML: {e}"));
                return None;
            }
        };
        let mut map = match doc {
            Value::Mapping(m) => m,
            Value::Null => serde_yaml::Mapping::new(),
            _ => {
                self.err(
                    "",
                    "the config must be a map with keys such as `listen` and `sites`",
                );
                return None;
            }
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if TOP_LEVEL_KEYS.contains(&k) => {}
                Some(k) => self.err(
                    k,
                    format!(
                        "unknown key `{k}`, expected one of {}",
                        TOP_LEVEL_KEYS
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                None => self.err("", format!("keys must be strings, found {key:?}")),
            }
        }
        let mut take = |k: &str| map.remove(k).unwrap_or(Value::Null);
        let trusted_proxies = take("trusted_proxies");
        let cluster = take("cluster");
        let (listen, admin, tls, limits, shutdown, acme, storage, sites) = (
            take("listen"),
            take("admin"),
            take("tls"),
            take("limits"),
            take("shutdown"),
            take("acme"),
            take("storage"),
            take("sites"),
        );

        let listen = self
            .section::<Option<ListenFile>>(listen, "listen")
            .map(Option::unwrap_or_default)
            .and_then(|f| self.listen(f));
        let admin = self
            .section::<Option<AdminFile>>(admin, "admin")
            .map(Option::unwrap_or_default)
            .and_then(|f| self.admin(f));
        let tls = self
            .section::<Option<TlsFile>>(tls, "tls")
            .map(Option::unwrap_or_default)
            .map(|f| TlsSettings {
                local_ca_dir: self.resolve(
                    &f.local_ca_dir
                        .unwrap_or_else(|| PathBuf::from(defaults::LOCAL_CA_DIR)),
                ),
            });
        let limits = self
            .section::<Option<LimitsFile>>(limits, "limits")
            .map(Option::unwrap_or_default)
            .and_then(|f| self.limits(f));
        let shutdown = self
            .section::<Option<ShutdownFile>>(shutdown, "shutdown")
            .map(Option::unwrap_or_default)
            .map(|f| Shutdown {
                drain_timeout: f.drain_timeout.unwrap_or(defaults::DRAIN_TIMEOUT),
            });
        let acme = self
            .section::<Option<AcmeFile>>(acme, "acme")
            .map(Option::unwrap_or_default)
            .and_then(|f| self.acme(f));
        let storage = self
            .section::<Option<PathBuf>>(storage, "storage")
            .map(|p| self.resolve(&p.unwrap_or_else(|| PathBuf::from(defaults::STORAGE))));
        let cluster = match self.section::<Option<ClusterFile>>(cluster, "cluster") {
            Some(Some(f)) => self.cluster(f).map(Some),
            Some(None) => Some(None),
            None => None,
        };
        let trusted_proxies = self
            .section::<Option<Vec<String>>>(trusted_proxies, "trusted_proxies")
            .map(|list| self.cidrs(&list.unwrap_or_default(), "trusted_proxies"));
        let sites = match self.sites {
            Sites::Required => self.sites(sites),
            Sites::Forbidden => {
                let empty = match &sites {
                    Value::Null => true,
                    Value::Sequence(items) => items.is_empty(),
                    _ => false,
                };
                if !empty {
                    self.err(
                        "sites",
                        "must be empty or absent in a base config: the sites come from \
                         Kubernetes (Ingresses)",
                    );
                }
                Some(Vec::new())
            }
        };

        if let (Some(listen), Some(admin)) = (&listen, &admin) {
            self.listeners_distinct(listen, admin);
        }
        if let (Some(sites), Some(acme), Some(listen)) = (&sites, &acme, &listen) {
            self.acme_sites(sites, acme, listen);
        }
        Some(Config {
            listen: listen?,
            admin: admin?,
            tls: tls?,
            limits: limits?,
            shutdown: shutdown?,
            acme: acme?,
            storage: storage?,
            sites: sites?,
            trusted_proxies: trusted_proxies?,
            cluster: cluster?,
        })
    }

    /// `10.0.0.0/8`, `2001:db8::/32`, or one address.
    fn cidrs(&mut self, list: &[String], key: &str) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let text = text.trim();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.err(
                    format!("{key}[{i}]"),
                    format!("`{text}` is not an address or a CIDR range such as `10.0.0.0/8`"),
                ),
            }
        }
        out
    }

    fn listen(&mut self, f: ListenFile) -> Option<Listen> {
        let https = self.addr(
            f.https.as_deref().unwrap_or(defaults::HTTPS),
            "listen.https",
        );
        let http = match f.http.as_deref() {
            Some("off") => Some(None),
            other => self
                .addr(other.unwrap_or(defaults::HTTP), "listen.http")
                .map(Some),
        };
        let proxy_protocol_trusted = match f.proxy_protocol {
            Some(pp) if pp.trusted.is_empty() => {
                self.err(
                    "listen.proxy_protocol.trusted",
                    "list the load balancers allowed to send PROXY headers",
                );
                Vec::new()
            }
            Some(pp) => self.cidrs(&pp.trusted, "listen.proxy_protocol.trusted"),
            None => Vec::new(),
        };
        Some(Listen {
            https: https?,
            http: http?,
            proxy_protocol_trusted,
        })
    }

    fn addr(&mut self, text: &str, key: &str) -> Option<SocketAddr> {
        match parse_addr(text) {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(key, e.to_string());
                None
            }
        }
    }

    fn listeners_distinct(&mut self, listen: &Listen, admin: &Admin) {
        // Port 0 asks the OS for a fresh port each time, so it never clashes.
        let clash = |a: SocketAddr, b: Option<SocketAddr>| a.port() != 0 && Some(a) == b;
        if let Some(http) = listen.http
            && clash(http, Some(listen.https))
        {
            self.err("listen.http", "same address as `listen.https`");
        }
        if let Some(a) = admin.listen.as_ref().and_then(|l| l.tcp()) {
            if clash(a, Some(listen.https)) {
                self.err("admin.listen", "same address as `listen.https`");
            } else if clash(a, listen.http) {
                self.err("admin.listen", "same address as `listen.http`");
            }
        }
    }

    pub(super) fn positive_opt(
        &mut self,
        value: Option<std::time::Duration>,
        key: &str,
    ) -> Option<std::time::Duration> {
        match value {
            Some(d) if d.is_zero() => {
                self.err(key, "must be greater than zero");
                None
            }
            other => other,
        }
    }

    pub(super) fn positive(
        &mut self,
        value: Option<std::time::Duration>,
        default: std::time::Duration,
        key: &str,
    ) -> Option<std::time::Duration> {
        match value {
            None => Some(default),
            Some(d) if d.is_zero() => {
                self.err(key, "must be greater than zero");
                None
            }
            Some(d) => Some(d),
        }
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// `0.0.0.0:443`, `[::]:443`, `:443` (all IPv4 interfaces) or `localhost:8443`.
pub fn parse_addr(text: &str) -> Result<SocketAddr, ValueError> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| {
        ValueError::Address(format!(
            "`{text}` is not an address; expected `IP:PORT` or `:PORT`"
        ))
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| ValueError::Address(format!("`{text}` has an invalid port `{port}`")))?;
    let ip = match host {
        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => {
            return Err(ValueError::Address(format!(
                "`{text}` is not an address; expected `IP:PORT` (a name other than localhost is not resolved)"
            )));
        }
    };
    Ok(SocketAddr::new(ip, port))
}
