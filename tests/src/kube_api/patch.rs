//! PATCH bodies: RFC 7386 merge patch, RFC 6902 JSON patch, and the part of strategic
//! merge patch that `kubectl apply` (client-side) relies on.
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

/// The tokens of an RFC 6901 JSON pointer (`/a/b~1c` is `a`, `b/c`).
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The parent of `path` in `doc` and the last token.
fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let mut t = tokens(path)?;
    let last = t.pop().ok_or("the whole document cannot be the target")?;
    let mut at = doc;
    for tok in t {
        at = match at {
            Value::Object(m) => m.get_mut(&tok),
            Value::Array(a) => tok.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path {path:?} does not exist"))?;
    }
    Ok((at, last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (p, last) = parent(doc, path)?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("bad index in {path:?}"))?
            };
            if i > a.len() {
                return Err(format!("index out of range in {path:?}"));
            }
            a.insert(i, value);
        }
        _ => return Err(format!("path {path:?} does not exist")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (p, last) = parent(doc, path)?;
    let gone = match p {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    };
    gone.ok_or_else(|| format!("path {path:?} does not exist"))
}

fn get(doc: &Value, path: &str) -> Result<Value, String> {
    let pointer: String = tokens(path)?
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect();
    doc.pointer(&pointer)
        .cloned()
        .ok_or_else(|| format!("path {path:?} does not exist"))
}

/// RFC 6902: applies `ops` to `doc`, all or nothing.
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    let mut out = doc.clone();
    for op in ops {
        let field = |k: &str| {
            op.get(k)
                .and_then(Value::as_str)
                .ok_or(format!("operation {op} has no {k:?}"))
        };
        let path = field("path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("operation {op} has no \"value\""))
        };
        match field("op")? {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                remove(&mut out, path)?;
                add(&mut out, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut out, field("from")?)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let v = get(&out, field("from")?)?;
                add(&mut out, path, v)?;
            }
            "test" => {
                if get(&out, path)? != value()? {
                    return Err(format!("testing value {path:?} failed"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    *doc = out;
    Ok(())
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

    use super::{json_patch, merge_patch, strategic_merge_patch};

    #[test]
    fn json_patch_follows_rfc_6902() {
        let mut doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x/y": "1"}}});
        let ops = json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "c"},
            {"op": "replace", "path": "/metadata/labels/x~1y", "value": "2"},
            {"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"},
            {"op": "move", "from": "/metadata/annotations/x~1y", "path": "/metadata/annotations/z"},
        ]);
        json_patch(&mut doc, &ops).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["b", "c"], "labels": {"x/y": "2"},
                "annotations": {"z": "2"}}})
        );
        // A failed test leaves the document as it was.
        let before = doc.clone();
        let ops = json!([{"op": "remove", "path": "/metadata/labels"},
            {"op": "test", "path": "/metadata/finalizers/0", "value": "nope"}]);
        assert!(json_patch(&mut doc, &ops).is_err());
        assert_eq!(doc, before);
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

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
