//! Snapshot → `Config`: the pure translation of Ingress v1 into the gateway's model.

use portcullis_config::{Config, Problem};

use crate::snapshot::{ObjectKey, Snapshot};

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
        }
    }
}

/// A problem found in one object: shown by `check --kubernetes`, logged, counted, and sent
/// as a Kubernetes Event on the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sProblem {
    /// `ingress`, `secret`, `service`, `ingressclass`, or `controller` for a flag.
    pub kind: &'static str,
    /// The object (for an IngressClass, an empty namespace).
    pub object: ObjectKey,
    /// The problem, its key a path into the object (`rules[0].http.paths[1].backend`).
    pub problem: Problem,
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
    /// Everything refused or ignored, per object.
    pub problems: Vec<K8sProblem>,
}

/// The sites `snapshot`'s Ingresses of our class say, added to `base` (whose `sites` is
/// empty). Pure and deterministic: the same snapshot, in any list order, gives the same
/// config.
pub fn translate(base: &Config, snapshot: &Snapshot, options: &Options) -> Translated {
    let _ = (snapshot, options);
    todo!("issue 24: translation of {} sites", base.sites.len())
}
