//! PATCH bodies: RFC 7386 merge patch, and the part of strategic merge patch that
//! `kubectl apply` (client-side) relies on.
//!
//! Strategic merge here: maps merge as in a merge patch; the lists Kubernetes merges by key
//! (containers and volumes by `name`, container ports by `containerPort`, a Service's ports
//! by `port`, conditions by `type`, ...) merge element by element, with `$patch: delete`
//! removing an element; `$patch: replace` and `$patch: delete` on maps;
//! `$deleteFromPrimitiveList/<field>`; `metadata.finalizers` is a set. `$setElementOrder`
//! and `$retainKeys` are accepted and ignored (new elements go last). Every other list is
//! replaced, as for lists the real server treats as atomic.

use serde_json::{Map, Value, json};

/// RFC 7386: `patch` merged into `target` (objects merged key by key, `null` removes,
/// anything else, arrays included, replaces).
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target
        .as_object_mut()
        .expect("target was just made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The key the real server merges list `field` by, judging by its elements when one
/// name means different lists (`ports`).
fn merge_key(field: &str, elements: &[Value], service: bool) -> Option<&'static str> {
    let all_have = |k: &str| elements.iter().all(|e| e.get(k).is_some());
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "ports" if all_have("containerPort") => "containerPort",
        "ports" if service => "port",
        _ => return None,
    };
    all_have(key).then_some(key)
}

/// A strategic merge patch of a `service` (Services merge their ports by `port`) or other
/// object.
pub(crate) fn strategic_merge_patch(target: &mut Value, patch: &Value, service: bool) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = p.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = json!({});
    }
    let t = target
        .as_object_mut()
        .expect("target was just made an object");
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (t.get_mut(field), v) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(list)), Value::Array(patch_list)) => {
                if let Some(key) = merge_key(k, patch_list, service) {
                    merge_list(list, patch_list, key, service);
                } else if k == "finalizers" {
                    for f in patch_list {
                        if !list.contains(f) {
                            list.push(f.clone());
                        }
                    }
                } else {
                    *list = patch_list.clone();
                }
            }
            (Some(existing), _) => {
                strategic_merge_patch(existing, v, service);
                if existing.is_null() {
                    t.remove(k);
                }
            }
            (None, _) => {
                let mut fresh = Value::Null;
                strategic_merge_patch(&mut fresh, v, service);
                if !fresh.is_null() {
                    t.insert(k.clone(), strip_directives(fresh));
                }
            }
        }
    }
}

fn merge_list(list: &mut Vec<Value>, patch: &[Value], key: &str, service: bool) {
    for element in patch {
        let id = element.get(key).cloned();
        let at = list.iter().position(|e| e.get(key).cloned() == id);
        let delete = element.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut list[i], element, service),
            (None, false) => list.push(strip_directives(element.clone())),
        }
    }
}

/// A new value, without the patch's `$` keys.
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{merge_patch, strategic_merge_patch};

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's own example (appendix A).
        let mut target = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut target, &patch);
        assert_eq!(
            target,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }

    #[test]
    fn strategic_merge_patch_merges_keyed_lists_as_kubectl_apply_expects() {
        let mut deployment = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s:1"}]}}}, "metadata": {"finalizers": ["a"]}});
        // What kubectl apply sends for: web's image changed, side removed, log added.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "log"}],
            "containers": [{"name": "web", "image": "a:2"}, {"$patch": "delete", "name": "side"},
                {"name": "log", "image": "l:1"}]}}},
            "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}});
        strategic_merge_patch(&mut deployment, &patch, false);
        assert_eq!(
            deployment,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "a:2", "ports": [{"containerPort": 80}]},
                {"name": "log", "image": "l:1"}]}}}, "metadata": {"finalizers": ["b"]}})
        );
        // Lists without a merge key are replaced; `$patch: replace` replaces a map.
        let mut ingress = json!({"spec": {"rules": [{"host": "a"}], "tls": [{"hosts": ["a"]}]},
            "metadata": {"labels": {"x": "1", "y": "2"}}});
        let patch = json!({"spec": {"rules": [{"host": "b"}]},
            "metadata": {"labels": {"$patch": "replace", "z": "3"}}});
        strategic_merge_patch(&mut ingress, &patch, false);
        assert_eq!(
            ingress,
            json!({"spec": {"rules": [{"host": "b"}], "tls": [{"hosts": ["a"]}]},
                "metadata": {"labels": {"z": "3"}}})
        );
    }
}
