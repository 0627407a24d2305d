//! Snapshot → `Config`: the pure translation of Ingress v1 into the gateway's model.
//!
//! The steps read top to bottom: [`classes`] picks our Ingresses and sorts them into the
//! merge order; [`annotations`] reads each one's annotations into typed settings; [`sites`]
//! merges their rules, TLS entries and default backends host by host, resolving backends
//! ([`backends`]) and Secrets ([`secrets`]) through one [`index`] of the snapshot.
//! docs/kubernetes.md says what each Ingress field and annotation becomes.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_config::{Config, Problem};
use portcullis_tls::Preloaded;

use crate::snapshot::{ObjectKey, Snapshot};

mod annotations;
mod backends;
mod classes;
mod index;
mod origins;
mod secrets;
mod sites;

pub use secrets::SecretCache;

#[cfg(test)]
mod tests;

/// The one host of the default site, which serves requests for hosts no Ingress rule names
/// (and the rules without a host). `.invalid` is reserved (RFC 2606), so no client asks for
/// it and no Ingress can claim it by accident.
pub const DEFAULT_SITE_HOST: &str = "_.portcullis.invalid";

/// The controller-wide settings that steer translation (the `portcullis ingress` flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// `--controller-name`: IngressClasses whose `spec.controller` is this are ours.
    pub controller_name: String,
    /// `--ingress-class`: the class name the legacy `kubernetes.io/ingress.class` annotation
    /// must carry, and the one class-less Ingresses belong to when it is the default class.
    pub ingress_class: String,
    /// `--watch-ingress-without-class`: class-less Ingresses are ours even when no class of
    /// ours is the cluster default.
    pub watch_ingress_without_class: bool,
    /// `--default-certificate NS/NAME`: served for SNI no Ingress claims.
    pub default_certificate: Option<ObjectKey>,
    /// `--default-backend NS/NAME:PORT`: what requests no rule matches are sent to.
    pub default_backend: Option<(ObjectKey, String)>,
    /// Every TLS host gets an ACME certificate, as if annotated `portcullis.dev/acme: "true"`.
    pub acme_all: bool,
    /// This replica may order ACME certificates (it leads): ACME hosts get
    /// `SiteTls::Acme`. Other replicas serve what the leader stored in the Secrets.
    pub acme_issuer: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            controller_name: "portcullis.dev/ingress-controller".to_owned(),
            ingress_class: "portcullis".to_owned(),
            watch_ingress_without_class: false,
            default_certificate: None,
            default_backend: None,
            acme_all: false,
            acme_issuer: false,
        }
    }
}

/// A problem found in one object: shown by `check --kubernetes`, logged, counted, and sent
/// as a Kubernetes Event on the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sProblem {
    /// `ingress`, `secret`, `service`, `ingressclass`, or `controller` for a flag.
    pub kind: &'static str,
    /// The object (for an IngressClass, an empty namespace; for a flag, its name).
    pub object: ObjectKey,
    /// The problem, its key a path into the object (`rules[0].http.paths[1].backend`).
    pub problem: Problem,
}

impl K8sProblem {
    /// A problem in an Ingress, at `key` (a path into the Ingress: `rules[0].host`,
    /// `tls[1].secretName`, `metadata.annotations["portcullis.dev/retries"]`).
    pub fn ingress(object: &ObjectKey, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: "ingress",
            object: object.clone(),
            problem: Problem::new(key, message),
        }
    }

    /// A problem with a controller flag (`--default-certificate`), or with the base config
    /// as Kubernetes uses it.
    pub fn controller(flag: &str, message: impl Into<String>) -> Self {
        Self {
            kind: "controller",
            object: ObjectKey {
                namespace: String::new(),
                name: flag.to_owned(),
            },
            problem: Problem::new("", message),
        }
    }
}

impl std::fmt::Display for K8sProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.object.namespace.is_empty() {
            write!(f, "{} {}: {}", self.kind, self.object.name, self.problem)
        } else {
            write!(f, "{} {}: {}", self.kind, self.object, self.problem)
        }
    }
}

/// What [`translate`] gives.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The base config with the sites the Ingresses say; always valid to apply.
    pub config: Config,
    /// Everything refused or ignored, per object, in merge order.
    pub problems: Vec<K8sProblem>,
    /// Annotations under `portcullis.dev/` or `nginx.ingress.kubernetes.io/` present on one
    /// of our Ingresses but not supported: (Ingress, annotation), sorted. Not an error (the
    /// Ingress is served without them); `check --kubernetes` lists them and a metric counts
    /// them, so a user sees what migrating changes.
    pub unsupported_annotations: Vec<(ObjectKey, String)>,
    /// Our Ingresses, in merge order (oldest first): the ones whose status the leader
    /// writes.
    pub ingresses: Vec<ObjectKey>,
    /// Sites whose certificate ACME issues, by site name, and the Secret it is stored in
    /// (created if missing).
    pub acme_secrets: BTreeMap<String, ObjectKey>,
    /// Every Secret the translation read or looked for (TLS, origin CA and client
    /// certificates, the default certificate): the ones whose changes matter.
    pub secrets: BTreeSet<ObjectKey>,
    /// The servable keys of the TLS Secrets in `config`, built to check them: for the apply
    /// path (`load_site_certificates_with`), which then does not build them again.
    pub preloaded: Preloaded,
}

/// The sites `snapshot`'s Ingresses of our class say, added to `base` (whose `sites` is
/// empty). Pure and deterministic: the same snapshot, in any list order, gives the same
/// config.
pub fn translate(base: &Config, snapshot: &Snapshot, options: &Options) -> Translated {
    translate_cached(base, snapshot, options, &mut SecretCache::default())
}

/// [`translate`], taking each Secret's parse from `cache` while the Secret is unchanged
/// since the translation that filled it, and leaving this translation's in it. The result
/// is the same as `translate`'s.
pub fn translate_cached(
    base: &Config,
    snapshot: &Snapshot,
    options: &Options,
    cache: &mut SecretCache,
) -> Translated {
    let ingresses = classes::ours(snapshot, options);
    let index = index::Index::new(snapshot, std::mem::take(cache));
    let mut builder = sites::Builder::new(base, index, options);
    for ingress in &ingresses {
        builder.add(ingress);
    }
    let (translated, next) = builder.finish(ingresses.iter().map(|i| classes::key(i)).collect());
    *cache = next;
    translated
}
