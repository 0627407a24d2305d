//! What the controller knows of the cluster at one moment.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// Every object of the kinds the controller watches, as the API server returned them. The
/// order of each list carries no meaning: [`translate`](crate::translate) sorts what it
/// needs to be deterministic.
///
/// The objects are shared with the watchers' stores (`Arc`), not copied: a snapshot of
/// 5,000 Ingresses and 10,000 Services and EndpointSlices would otherwise be a second copy
/// of the cluster (tens of MB) for as long as it is the latest.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Cluster-scoped IngressClasses.
    pub ingress_classes: Vec<Arc<IngressClass>>,
    /// Ingresses of the watched namespaces (every class: translation picks ours).
    pub ingresses: Vec<Arc<Ingress>>,
    /// Services of the watched namespaces.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices of the watched namespaces.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Secrets of the watched namespaces that an Ingress (or a flag) refers to.
    pub secrets: Vec<Arc<Secret>>,
}

/// A namespaced object's `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// `NS/NAME` as flags write it; `None` when either half is empty or there is no `/`.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
