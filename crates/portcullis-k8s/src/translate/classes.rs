//! Which Ingresses are ours, and the order they merge in.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Options;
use crate::snapshot::{ObjectKey, Snapshot};

/// The legacy class annotation, from before `spec.ingressClassName`.
pub(super) const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";
/// Marks the IngressClass that Ingresses without a class belong to.
pub(super) const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";

/// `namespace/name` of any namespaced object.
pub(super) fn meta_key(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// An Ingress's key.
pub(super) fn key(ingress: &Ingress) -> ObjectKey {
    meta_key(&ingress.metadata)
}

/// Our Ingresses, oldest first (then by namespace and name): the merge order. An Ingress is
/// ours when `spec.ingressClassName` names an IngressClass whose controller is ours; without
/// it, when the legacy annotation names our class (`--ingress-class`, or one of our
/// IngressClasses); without either, when one of our classes is the cluster default or
/// `--watch-ingress-without-class` is set. Everything else is someone else's and ignored.
pub(super) fn ours<'a>(snapshot: &'a Snapshot, options: &Options) -> Vec<&'a Ingress> {
    let mut names = BTreeSet::new();
    let mut default = false;
    for class in &snapshot.ingress_classes {
        let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
        if controller != Some(options.controller_name.as_str()) {
            continue;
        }
        if let Some(name) = &class.metadata.name {
            names.insert(name.as_str());
        }
        let is_default = class
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS))
            .is_some_and(|v| v.trim() == "true");
        default |= is_default;
    }
    let without_class = default || options.watch_ingress_without_class;
    let mut ours: Vec<&Ingress> = snapshot
        .ingresses
        .iter()
        .map(|ing| &**ing)
        .filter(|ing| {
            let class_name = ing
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref())
                .filter(|c| !c.is_empty());
            if let Some(class) = class_name {
                return names.contains(class);
            }
            let legacy = ing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEGACY_CLASS));
            match legacy {
                Some(class) => *class == options.ingress_class || names.contains(class.as_str()),
                None => without_class,
            }
        })
        .collect();
    ours.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| key(a).cmp(&key(b)))
    });
    // The same object twice (a watcher's glitch) would conflict with itself.
    ours.dedup_by(|a, b| key(a) == key(b));
    ours
}
