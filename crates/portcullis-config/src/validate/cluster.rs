//! The `cluster` section: the store replicas share certificates through, and this replica's
//! name in it.

use std::path::Path;
use std::time::Duration;

use super::Validator;
use super::acme::decode_base64url;
use crate::file::{ClusterFile, ClusterStoreFile};
use crate::model::{
    Cluster, ClusterStore, EncryptionKey, EtcdStore, EtcdTls, KubernetesStore, defaults,
};
use crate::pem;

/// The shortest `cluster.lease`: etcd grants leases in whole seconds, and the issuer renews
/// a third of the way through.
const MIN_LEASE: Duration = Duration::from_secs(2);
/// The longest: a dead issuer is replaced only once it runs out.
const MAX_LEASE: Duration = Duration::from_secs(300);

impl Validator<'_> {
    pub(super) fn cluster(&mut self, f: ClusterFile) -> Option<Cluster> {
        let before = self.problems.len();
        let store = match f.store {
            None => {
                self.err(
                    "cluster.store",
                    "say where replicas share certificates: `etcd` or `kubernetes`",
                );
                None
            }
            Some(ClusterStoreFile::Etcd) => {
                if f.kubernetes.is_some() {
                    self.err(
                        "cluster.kubernetes",
                        "only used with `store: kubernetes`; this cluster uses etcd",
                    );
                }
                match f.etcd {
                    Some(e) => self.etcd(e).map(ClusterStore::Etcd),
                    None => {
                        self.err(
                            "cluster.etcd",
                            "`store: etcd` needs `etcd: { endpoints: [...] }`",
                        );
                        None
                    }
                }
            }
            Some(ClusterStoreFile::Kubernetes) => {
                if f.etcd.is_some() {
                    self.err(
                        "cluster.etcd",
                        "only used with `store: etcd`; this cluster uses kubernetes",
                    );
                }
                let k = f.kubernetes.unwrap_or_default();
                let namespace = k
                    .namespace
                    .unwrap_or_else(|| defaults::CLUSTER_NAMESPACE.to_owned());
                let kubeconfig = k.kubeconfig.map(|p| self.resolve(&p));
                if let Some(path) = &kubeconfig
                    && let Err(e) = std::fs::metadata(path)
                {
                    self.err(
                        "cluster.kubernetes.kubeconfig",
                        format!("{}: {e}", path.display()),
                    );
                }
                if !is_dns_label(&namespace) {
                    self.err(
                        "cluster.kubernetes.namespace",
                        format!("`{namespace}` is not a namespace name (lower-case letters, digits and `-`, at most 63)"),
                    );
                }
                Some(ClusterStore::Kubernetes(KubernetesStore {
                    namespace,
                    kubeconfig,
                }))
            }
        };
        let node_name = match f.node_name.as_deref() {
            None => default_node_name(),
            Some(text) => match expand_env(text, |k| std::env::var(k).ok()) {
                Ok(name) => Some(name),
                Err(e) => {
                    self.err("cluster.node_name", e);
                    None
                }
            },
        };
        let node_name = match node_name {
            Some(n) if is_node_name(&n) => Some(n),
            Some(n) => {
                self.err(
                    "cluster.node_name",
                    format!("`{n}` is not a usable replica name: letters, digits, `.`, `-` and `_`, 1 to 128 of them"),
                );
                None
            }
            None if f.node_name.is_none() => {
                self.err(
                    "cluster.node_name",
                    "this machine's host name cannot be read; set a name for this replica",
                );
                None
            }
            None => None,
        };
        let lease = f.lease.unwrap_or(defaults::CLUSTER_LEASE);
        if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
            self.err(
                "cluster.lease",
                format!(
                    "must be between {}s and {}s",
                    MIN_LEASE.as_secs(),
                    MAX_LEASE.as_secs()
                ),
            );
        }
        let challenge_timeout = self.positive(
            f.challenge_timeout,
            defaults::CLUSTER_CHALLENGE_TIMEOUT,
            "cluster.challenge_timeout",
        );
        let encryption_key = f.encryption_key_file.and_then(|path| {
            let path = self.resolve(&path);
            match read_key(&path) {
                Ok(key) => Some(EncryptionKey(key)),
                Err(e) => {
                    self.err("cluster.encryption_key_file", e);
                    None
                }
            }
        });
        if self.problems.len() > before {
            return None;
        }
        Some(Cluster {
            store: store?,
            node_name: node_name?,
            lease,
            challenge_timeout: challenge_timeout?,
            encryption_key,
        })
    }

    fn etcd(&mut self, f: crate::file::EtcdFile) -> Option<EtcdStore> {
        if f.endpoints.is_empty() {
            self.err(
                "cluster.etcd.endpoints",
                "list at least one member, such as `https://10.0.0.2:2379`",
            );
        }
        let mut any_https = false;
        for (i, url) in f.endpoints.iter().enumerate() {
            match url.split_once("://") {
                Some(("http", rest)) | Some(("https", rest))
                    if !rest.is_empty() && !rest.contains('/') =>
                {
                    any_https |= url.starts_with("https://");
                }
                _ => self.err(
                    format!("cluster.etcd.endpoints[{i}]"),
                    format!("`{url}` is not a member's client URL such as `https://10.0.0.2:2379`"),
                ),
            }
        }
        let prefix = f
            .prefix
            .unwrap_or_else(|| defaults::CLUSTER_PREFIX.to_owned());
        if prefix.is_empty() || !prefix.ends_with('/') || prefix.chars().any(char::is_control) {
            self.err(
                "cluster.etcd.prefix",
                format!("`{prefix}` must be a key prefix ending with `/`, such as `/portcullis/`"),
            );
        }
        let tls = f.tls.map(|t| {
            let ca = t.ca.map(|p| self.resolve(&p));
            if let Some(ca) = &ca
                && let Err(e) = pem::read_certs(ca)
            {
                self.err("cluster.etcd.tls.ca", e);
            }
            let cert = t.cert.map(|p| self.resolve(&p));
            let key = t.key.map(|p| self.resolve(&p));
            match (&cert, &key) {
                (Some(c), Some(k)) => {
                    if let Err(e) = pem::read_certs(c) {
                        self.err("cluster.etcd.tls.cert", e);
                    }
                    if let Err(e) = pem::read_key(k) {
                        self.err("cluster.etcd.tls.key", e);
                    }
                }
                (Some(_), None) => self.err("cluster.etcd.tls.key", "`cert` needs its `key`"),
                (None, Some(_)) => self.err("cluster.etcd.tls.cert", "`key` needs its `cert`"),
                (None, None) => {}
            }
            EtcdTls { ca, cert, key }
        });
        if tls.is_some() && !any_https {
            self.err(
                "cluster.etcd.tls",
                "set, but no endpoint is `https://`: the members would be reached without TLS",
            );
        }
        let password = match (f.password, f.password_file) {
            (Some(_), Some(_)) => {
                self.err(
                    "cluster.etcd.password_file",
                    "give `password` or `password_file`, not both",
                );
                None
            }
            (Some(p), None) => Some(p),
            (None, Some(path)) => match std::fs::read_to_string(self.resolve(&path)) {
                Ok(p) => Some(p.trim_end_matches(['\r', '\n']).to_owned()),
                Err(e) => {
                    self.err(
                        "cluster.etcd.password_file",
                        format!("{}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        if password.is_some() != f.username.is_some() {
            self.err(
                "cluster.etcd.username",
                "etcd authentication needs both `username` and a password",
            );
        }
        Some(EtcdStore {
            endpoints: f.endpoints,
            prefix,
            tls,
            username: f.username,
            password,
        })
    }
}

/// `${NAME}` replaced by the environment variable `NAME`; an unset one is an error.
fn expand_env(text: &str, var: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("`{text}`: `${{` without its `}}`"));
        };
        let name = &after[..end];
        match var(name) {
            Some(v) if !v.is_empty() => out.push_str(&v),
            _ => {
                return Err(format!(
                    "`{text}`: the environment variable {name} is not set"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `$HOSTNAME`, else `/etc/hostname`.
fn default_node_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn is_node_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// 32 raw bytes, or their base64 (standard or URL alphabet) on one line.
fn read_key(path: &Path) -> Result<[u8; 32], String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&bytes);
    decode_base64url(text.trim())
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .ok_or_else(|| {
            format!(
                "{}: not a 32-byte key (make one with `head -c 32 /dev/urandom | base64 > {}`)",
                path.display(),
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_expand() {
        let var = |k: &str| (k == "HOSTNAME").then(|| "edge-1".to_owned());
        assert_eq!(expand_env("${HOSTNAME}", var).unwrap(), "edge-1");
        assert_eq!(expand_env("a-${HOSTNAME}-b", var).unwrap(), "a-edge-1-b");
        assert_eq!(expand_env("plain", var).unwrap(), "plain");
        assert!(expand_env("${NOPE}", var).unwrap_err().contains("NOPE"));
        assert!(expand_env("${HOSTNAME", var).is_err());
    }

    #[test]
    fn names() {
        assert!(is_node_name("edge-1.example_2"));
        assert!(!is_node_name("a/b"));
        assert!(!is_node_name(""));
        assert!(is_dns_label("portcullis"));
        assert!(!is_dns_label("Portcullis"));
        assert!(!is_dns_label("-a"));
    }
}
