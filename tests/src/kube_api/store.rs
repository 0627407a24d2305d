//! The objects, the global resource version and the history of changes watches replay.
//!
//! One lock over everything, held only for in-memory work: a write is a `BTreeMap` insert
//! and a push onto its resource's history, O(log n). Watches are told that the resource
//! version moved through a `tokio::sync::watch` channel and read the history themselves.
//! The writes themselves (validation, server-set fields, defaults) are in `store/write.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::kinds::{KINDS, namespaces};
use super::object::meta_str;
use super::status::ApiError;

mod write;

/// `(namespace, name)`; the namespace is "" for cluster-scoped objects. Sorted as etcd's
/// keys are, so lists come out in the real server's order.
pub(crate) type Key = (String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One entry of a resource's history.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub kind: ChangeType,
    /// The object after the change (for a delete: the last state, at the delete's RV).
    pub obj: Arc<Value>,
    /// The object before the change (none for an add).
    pub prev: Option<Arc<Value>>,
}

/// The objects of one resource and their history.
#[derive(Debug, Default)]
pub(crate) struct Collection {
    pub objects: BTreeMap<Key, Arc<Value>>,
    pub history: VecDeque<Change>,
    /// The RV of the newest change dropped from `history`.
    pub trimmed: u64,
}

/// Everything under the store's lock.
#[derive(Debug)]
pub(crate) struct Inner {
    /// The newest resource version handed out.
    pub rv: u64,
    /// History before this RV is forgotten for new requests (`FakeApiServer::compact`).
    pub compacted: u64,
    pub collections: Vec<Collection>,
    history_limit: Option<usize>,
    serial: u64,
    next_ip: u32,
    instance: u32,
}

/// The store: shared by the HTTP side and the in-process helpers.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
}

/// How a PATCH body is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    Json,
}

/// A delete's preconditions (`DeleteOptions.preconditions`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Preconditions {
    pub resource_version: Option<String>,
    pub uid: Option<String>,
}

pub(crate) fn key_of(obj: &Value) -> Key {
    (
        meta_str(obj, "namespace").unwrap_or_default().to_owned(),
        meta_str(obj, "name").unwrap_or_default().to_owned(),
    )
}

pub(crate) fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Store {
    /// A store holding the namespaces every cluster starts with.
    pub fn new(history_limit: Option<usize>) -> Self {
        let instance = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let store = Self {
            inner: Mutex::new(Inner {
                rv: 0,
                compacted: 0,
                collections: KINDS.iter().map(|_| Collection::default()).collect(),
                history_limit,
                serial: 0,
                next_ip: 0,
                instance,
            }),
            changed: tokio::sync::watch::channel(0).0,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            store
                .create(namespaces(), None, json!({"metadata": {"name": ns}}))
                .expect("the built-in namespaces are valid");
        }
        store
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the store's lock is never held across a panic")
    }

    /// A receiver told the newest RV after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }

    pub fn get(&self, k: usize, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        inner.collections[k]
            .objects
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|o| (**o).clone())
            .ok_or_else(|| ApiError::not_found(&KINDS[k], name))
    }

    /// Forgets every change so far. The RV first moves on by one, as a write elsewhere in
    /// the cluster would move it: so every version handed out before is too old (a watch
    /// resumed from any of them gets 410, whatever it had seen), while a list made now
    /// gives a version a watch can start from.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.rv += 1;
        inner.compacted = inner.rv;
        for c in &mut inner.collections {
            if let Some(last) = c.history.back() {
                c.trimmed = c.trimmed.max(last.rv);
            }
            c.history.clear();
        }
        let rv = inner.rv;
        drop(inner);
        self.notify(rv);
    }

    /// POST: `ns` is the namespace of the path (none for cluster-scoped objects, or for the
    /// in-process helpers, which take it from the object).
    pub fn create(&self, k: usize, ns: Option<&str>, body: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let out = inner.create(k, ns, body)?;
        let rv = inner.rv;
        drop(inner);
        self.notify(rv);
        Ok(out)
    }

    /// PUT on the object (`status` false) or on its `/status`.
    pub fn update(
        &self,
        k: usize,
        ns: &str,
        name: &str,
        body: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let out = inner.update(k, ns, name, body, status)?;
        let rv = inner.rv;
        drop(inner);
        self.notify(rv);
        Ok(out)
    }

    /// PATCH with an RFC 7386 merge patch, or a strategic merge patch
    /// (`super::patch`); a `metadata.resourceVersion` in the patch is a precondition, as on
    /// the real server.
    pub fn patch(
        &self,
        k: usize,
        ns: &str,
        name: &str,
        patch: &Value,
        status: bool,
        how: PatchType,
    ) -> Result<Value, ApiError> {
        if how != PatchType::Json && !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        let mut inner = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let Some(old) = inner.collections[k].objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&KINDS[k], name));
        };
        let mut merged = (*old).clone();
        match how {
            PatchType::Merge => super::patch::merge_patch(&mut merged, patch),
            PatchType::Strategic => {
                let service = KINDS[k].kind == "Service";
                super::patch::strategic_merge_patch(&mut merged, patch, service);
            }
            PatchType::Json => super::patch::json_patch(&mut merged, patch).map_err(|why| {
                ApiError::invalid(
                    &KINDS[k],
                    name,
                    format!("the JSON patch does not apply: {why}"),
                )
            })?,
        }
        let out = inner.update(k, ns, name, merged, status)?;
        let rv = inner.rv;
        drop(inner);
        self.notify(rv);
        Ok(out)
    }

    /// Runs the namespace controller's deletion of a terminating namespace.
    pub fn finalize_namespace(&self, name: &str) {
        let mut inner = self.lock();
        inner.finalize_namespace(name);
        let rv = inner.rv;
        drop(inner);
        self.notify(rv);
    }

    pub fn delete(
        &self,
        k: usize,
        ns: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let out = inner.delete(k, ns, name, pre)?;
        let rv = inner.rv;
        drop(inner);
        self.notify(rv);
        Ok(out)
    }
}

impl Inner {
    /// The objects of `k` as they were at `rv` (`None` when the history to rebuild them is
    /// gone). Costs a copy of the map only when something changed since `rv`.
    pub(crate) fn state_at(
        &self,
        k: usize,
        rv: u64,
    ) -> Option<std::borrow::Cow<'_, BTreeMap<Key, Arc<Value>>>> {
        let c = &self.collections[k];
        if rv < self.compacted || rv < c.trimmed {
            return None;
        }
        let first_after = c.history.partition_point(|ch| ch.rv <= rv);
        if first_after == c.history.len() {
            return Some(std::borrow::Cow::Borrowed(&c.objects));
        }
        let mut m = c.objects.clone();
        for ch in c.history.range(first_after..).rev() {
            let key = key_of(&ch.obj);
            match (&ch.kind, &ch.prev) {
                (ChangeType::Added, _) | (_, None) => {
                    m.remove(&key);
                }
                (_, Some(prev)) => {
                    m.insert(key, prev.clone());
                }
            }
        }
        Some(std::borrow::Cow::Owned(m))
    }

    /// Whether a watch or list from `rv` can still be served from history.
    pub(crate) fn too_old(&self, k: usize, rv: u64) -> bool {
        rv < self.compacted || rv < self.collections[k].trimmed
    }
}
