//! The writes: what the real server checks and sets on create, update and delete.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Change, ChangeType, Inner, Key, Preconditions, now};
use crate::kube_api::kinds::{KINDS, Kind, namespaces};
use crate::kube_api::object::{apply_defaults, meta_mut, meta_str, name_problem, spec_part};
use crate::kube_api::status::ApiError;

impl Inner {
    fn record(&mut self, k: usize, kind: ChangeType, obj: Arc<Value>, prev: Option<Arc<Value>>) {
        let c = &mut self.collections[k];
        c.history.push_back(Change {
            rv: self.rv,
            kind,
            obj,
            prev,
        });
        if let Some(limit) = self.history_limit {
            while c.history.len() > limit {
                if let Some(old) = c.history.pop_front() {
                    c.trimmed = old.rv;
                }
            }
        }
    }

    fn check_type(kind: &Kind, body: &Value) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let want = kind.api_version();
        if let Some(v) = body.get("apiVersion").and_then(Value::as_str)
            && v != want
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )));
        }
        if let Some(v) = body.get("kind").and_then(Value::as_str)
            && v != kind.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({v}) does not match the expected kind ({})",
                kind.kind
            )));
        }
        Ok(())
    }

    /// The namespace the object goes in: the path's, which the body may repeat but not
    /// contradict.
    fn namespace_for(kind: &Kind, ns: Option<&str>, body: &Value) -> Result<String, ApiError> {
        if !kind.namespaced {
            return Ok(String::new());
        }
        let in_body = meta_str(body, "namespace").filter(|s| !s.is_empty());
        match (ns, in_body) {
            (Some(p), Some(b)) if p != b => Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            (Some(p), _) => Ok(p.to_owned()),
            (None, Some(b)) => Ok(b.to_owned()),
            (None, None) => Ok("default".to_owned()),
        }
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn generate_name(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = self
            .next_serial()
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(self.instance));
        let mut suffix = String::new();
        for _ in 0..5 {
            suffix.push(char::from(ALPHABET[(n % ALPHABET.len() as u64) as usize]));
            n /= ALPHABET.len() as u64;
        }
        format!("{prefix}{suffix}")
    }

    pub(crate) fn create(
        &mut self,
        k: usize,
        ns: Option<&str>,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        let kind = &KINDS[k];
        Self::check_type(kind, &body)?;
        let namespace = Self::namespace_for(kind, ns, &body)?;
        if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            // etcd3's store refuses it, and the handler makes that a 500.
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut name = meta_str(&body, "name").unwrap_or_default().to_owned();
        if name.is_empty() {
            match meta_str(&body, "generateName").filter(|g| !g.is_empty()) {
                Some(prefix) => {
                    let prefix = prefix.to_owned();
                    name = self.generate_name(&prefix);
                }
                None => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        if let Some(why) = name_problem(&name, kind.name_rule) {
            return Err(ApiError::invalid(
                kind,
                &name,
                format!("metadata.name: Invalid value: \"{name}\": {why}"),
            ));
        }
        if kind.namespaced {
            match self.collections[namespaces()]
                .objects
                .get(&(String::new(), namespace.clone()))
            {
                None => return Err(ApiError::not_found(&KINDS[namespaces()], &namespace)),
                Some(ns) if ns.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::terminating(kind, &name, &namespace));
                }
                Some(_) => {}
            }
        }
        let key = (namespace.clone(), name.clone());
        if self.collections[k].objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        body["apiVersion"] = json!(kind.api_version());
        body["kind"] = json!(kind.kind);
        if kind.status
            && let Some(m) = body.as_object_mut()
        {
            m.remove("status");
        }
        self.rv += 1;
        let serial = self.next_serial();
        let uid = format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            self.instance,
            k,
            serial & 0xffff_ffff_ffff
        );
        let rv = self.rv.to_string();
        let meta = meta_mut(&mut body);
        meta.insert("name".into(), json!(name));
        if kind.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(now()));
        for server_set in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(server_set);
        }
        let mut next_ip = self.next_ip;
        apply_defaults(kind, &mut body, None, &mut next_ip);
        self.next_ip = next_ip;
        let obj = Arc::new(body);
        self.collections[k].objects.insert(key, obj.clone());
        self.record(k, ChangeType::Added, obj.clone(), None);
        Ok((*obj).clone())
    }

    pub(crate) fn update(
        &mut self,
        k: usize,
        ns: &str,
        name: &str,
        mut body: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let kind = &KINDS[k];
        Self::check_type(kind, &body)?;
        let path_ns = kind.namespaced.then_some(ns);
        Self::namespace_for(kind, path_ns, &body)?;
        if let Some(n) = meta_str(&body, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let key = (ns.to_owned(), name.to_owned());
        let Some(old) = self.collections[k].objects.get(&key).cloned() else {
            if kind.create_on_update && !status {
                meta_mut(&mut body).remove("resourceVersion");
                meta_mut(&mut body).insert("name".into(), json!(name));
                return self.create(k, path_ns, body);
            }
            return Err(ApiError::not_found(kind, name));
        };
        let stored_uid = meta_str(&old, "uid").unwrap_or_default();
        if let Some(uid) = meta_str(&body, "uid").filter(|u| !u.is_empty() && *u != stored_uid) {
            return Err(ApiError::precondition(
                kind,
                name,
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored_uid}"
                ),
            ));
        }
        match meta_str(&body, "resourceVersion").filter(|s| !s.is_empty()) {
            Some(rv) if rv != meta_str(&old, "resourceVersion").unwrap_or_default() => {
                return Err(ApiError::conflict(kind, name));
            }
            None if !kind.unconditional_update => {
                return Err(ApiError::invalid(
                    kind,
                    name,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            _ => {}
        }
        let mut new = if status {
            // A status write changes the status and nothing else.
            let mut new = (*old).clone();
            match body.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new
        } else {
            if kind.status {
                match old.get("status") {
                    Some(s) => body["status"] = s.clone(),
                    None => {
                        if let Some(m) = body.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            body["apiVersion"] = json!(kind.api_version());
            body["kind"] = json!(kind.kind);
            // What the server owns in metadata comes from the stored object.
            let old_meta = old["metadata"].clone();
            let meta = meta_mut(&mut body);
            for owned in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old_meta.get(owned) {
                    Some(v) => meta.insert(owned.into(), v.clone()),
                    None => meta.remove(owned),
                };
            }
            meta.remove("managedFields");
            let mut next_ip = self.next_ip;
            apply_defaults(kind, &mut body, Some(&old), &mut next_ip);
            self.next_ip = next_ip;
            if let Some(field) = immutable_change(kind, &old, &body) {
                return Err(ApiError::invalid(
                    kind,
                    name,
                    format!("{field}: Invalid value: field is immutable"),
                ));
            }
            if spec_part(&body) != spec_part(&old) {
                let generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                meta_mut(&mut body).insert("generation".into(), json!(generation + 1));
            }
            body
        };
        meta_mut(&mut new).insert(
            "resourceVersion".into(),
            old["metadata"]["resourceVersion"].clone(),
        );
        if new == *old {
            // A write that changes nothing is not a change: no new RV, no event.
            return Ok(new);
        }
        // (A terminating namespace goes when the namespace controller is done with it.)
        let finalized = k != namespaces()
            && new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(new);
        if finalized {
            // The last finalizer is gone from an object being deleted: it goes now.
            self.collections[k].objects.remove(&key);
            self.record(k, ChangeType::Deleted, obj.clone(), Some(old));
        } else {
            self.collections[k].objects.insert(key, obj.clone());
            self.record(k, ChangeType::Modified, obj.clone(), Some(old));
        }
        Ok((*obj).clone())
    }

    pub(crate) fn delete(
        &mut self,
        k: usize,
        ns: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<Value, ApiError> {
        let kind = &KINDS[k];
        let key = (ns.to_owned(), name.to_owned());
        let Some(old) = self.collections[k].objects.get(&key).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        if let Some(rv) = &pre.resource_version
            && rv != meta_str(&old, "resourceVersion").unwrap_or_default()
        {
            return Err(ApiError::conflict(kind, name));
        }
        if let Some(uid) = &pre.uid
            && uid != meta_str(&old, "uid").unwrap_or_default()
        {
            return Err(ApiError::conflict(kind, name));
        }
        let finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        // A namespace's own "kubernetes" finalizer is run at once: its objects go with it.
        if finalizers && k != namespaces() {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((*old).clone());
            }
            let mut new = (*old).clone();
            self.rv += 1;
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
            let obj = Arc::new(new);
            self.collections[k].objects.insert(key, obj.clone());
            self.record(k, ChangeType::Modified, obj.clone(), Some(old));
            return Ok((*obj).clone());
        }
        if k == namespaces() {
            // The namespace controller empties it and removes it later (`finalize_namespace`).
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((*old).clone());
            }
            let mut new = (*old).clone();
            self.rv += 1;
            new["status"] = json!({"phase": "Terminating"});
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
            let obj = Arc::new(new);
            self.collections[k].objects.insert(key, obj.clone());
            self.record(k, ChangeType::Modified, obj.clone(), Some(old));
            return Ok((*obj).clone());
        }
        Ok(self.remove(k, &key).unwrap_or_else(|| (*old).clone()))
    }

    /// What the namespace controller does to a terminating namespace: deletes every
    /// object in it, then the namespace.
    pub(crate) fn finalize_namespace(&mut self, name: &str) {
        for (other, kind) in KINDS.iter().enumerate() {
            if !kind.namespaced {
                continue;
            }
            let keys: Vec<Key> = self.collections[other]
                .objects
                .range((name.to_owned(), String::new())..)
                .take_while(|(key, _)| key.0 == name)
                .map(|(key, _)| key.clone())
                .collect();
            for key in keys {
                self.remove(other, &key);
            }
        }
        self.remove(namespaces(), &(String::new(), name.to_owned()));
    }

    fn remove(&mut self, k: usize, key: &Key) -> Option<Value> {
        let old = self.collections[k].objects.remove(key)?;
        self.rv += 1;
        let mut last = (*old).clone();
        meta_mut(&mut last).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(last);
        self.record(k, ChangeType::Deleted, obj.clone(), Some(old));
        Some((*obj).clone())
    }
}

/// The first field an update may not change that it changes, named as the real
/// validation names it: a Secret's `type`, an EndpointSlice's `addressType`, a Service's
/// `spec.clusterIP`, a Deployment's `spec.selector`, and everything of a Secret or
/// ConfigMap marked `immutable`.
fn immutable_change(kind: &Kind, old: &Value, new: &Value) -> Option<&'static str> {
    let fields: &[(&str, &str)] = match (kind.group, kind.kind) {
        ("", "Secret") => &[("/type", "type")],
        ("discovery.k8s.io", "EndpointSlice") => &[("/addressType", "addressType")],
        ("", "Service") => &[("/spec/clusterIP", "spec.clusterIP")],
        ("apps", "Deployment") => &[("/spec/selector", "spec.selector")],
        _ => &[],
    };
    for (pointer, field) in fields {
        if let Some(was) = old.pointer(pointer)
            && new.pointer(pointer) != Some(was)
        {
            return Some(field);
        }
    }
    if matches!(kind.kind, "Secret" | "ConfigMap")
        && kind.group.is_empty()
        && old.get("immutable") == Some(&Value::Bool(true))
    {
        for field in ["immutable", "data", "binaryData"] {
            if old.get(field) != new.get(field) {
                return Some(field);
            }
        }
    }
    None
}
