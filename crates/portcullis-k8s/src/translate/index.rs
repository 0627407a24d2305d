//! The snapshot's objects by key, so each Ingress path finds its Service, EndpointSlices and
//! Secrets without scanning every list; Secrets are parsed once however many Ingresses
//! name them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::secrets::{Parsed, SecretCache};
use crate::snapshot::{ObjectKey, Snapshot};

/// The label an EndpointSlice names its Service with.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// By namespace, then name (nested so a lookup borrows its keys briefly).
type Map<'a, V> = HashMap<&'a str, HashMap<&'a str, V>>;

fn get<'m, V>(map: &'m Map<'_, V>, namespace: &str, name: &str) -> Option<&'m V> {
    map.get(namespace)?.get(name)
}

pub(super) struct Index<'a> {
    services: Map<'a, &'a Arc<Service>>,
    /// By namespace and Service name, in name order.
    slices: Map<'a, Vec<&'a EndpointSlice>>,
    secrets: Map<'a, &'a Arc<Secret>>,
    /// Parsed Secrets, by key, with the object each was parsed from.
    pub(super) parsed: HashMap<ObjectKey, (Arc<Secret>, Parsed)>,
    /// What the last translation parsed, taken from as this one needs it.
    pub(super) earlier: SecretCache,
    /// Every Secret looked up.
    pub(super) referenced: BTreeSet<ObjectKey>,
}

fn by_key<'a, T>(objects: &'a [Arc<T>], meta: impl Fn(&T) -> &ObjectMeta) -> Map<'a, &'a Arc<T>> {
    let mut map: Map<'a, &'a Arc<T>> = HashMap::new();
    for object in objects {
        let m = meta(object);
        map.entry(m.namespace.as_deref().unwrap_or_default())
            .or_default()
            .insert(m.name.as_deref().unwrap_or_default(), object);
    }
    map
}

impl<'a> Index<'a> {
    pub(super) fn new(snapshot: &'a Snapshot, earlier: SecretCache) -> Self {
        let services = by_key(&snapshot.services, |s| &s.metadata);
        let secrets = by_key(&snapshot.secrets, |s| &s.metadata);
        let mut slices: Map<'a, Vec<&'a EndpointSlice>> = HashMap::new();
        for slice in &snapshot.endpoint_slices {
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
            slices
                .entry(ns)
                .or_default()
                .entry(service.as_str())
                .or_default()
                .push(&**slice);
        }
        for list in slices.values_mut().flat_map(HashMap::values_mut) {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        Self {
            services,
            slices,
            secrets,
            parsed: HashMap::new(),
            earlier,
            referenced: BTreeSet::new(),
        }
    }

    pub(super) fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        get(&self.services, namespace, name).map(|s| &***s)
    }

    pub(super) fn slices(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        get(&self.slices, namespace, service).map_or(&[], Vec::as_slice)
    }

    pub(super) fn secret(&mut self, key: &ObjectKey) -> Option<&'a Arc<Secret>> {
        self.referenced.insert(key.clone());
        get(&self.secrets, &key.namespace, &key.name).copied()
    }
}
