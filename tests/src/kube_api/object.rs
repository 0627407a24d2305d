//! One object as JSON: its metadata, name validation, and the defaults the real API server
//! fills in.

use serde_json::{Map, Value, json};

use super::kinds::{Kind, NameRule};

/// `metadata.<field>` as a string.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The object's `metadata` object, created when missing.
pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// Why `name` is not a valid name under `rule`, worded as apimachinery's validation.
pub(crate) fn name_problem(name: &str, rule: NameRule) -> Option<String> {
    let (max, dots, what) = match rule {
        NameRule::Subdomain => (253, true, "a lowercase RFC 1123 subdomain"),
        NameRule::Label => (63, false, "a lowercase RFC 1123 label"),
    };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok_chars = name
        .chars()
        .all(|c| alnum(c) || c == '-' || (dots && c == '.'));
    let ends = name.chars().next().is_some_and(alnum) && name.chars().last().is_some_and(alnum);
    let parts_ok = !dots
        || name
            .split('.')
            .all(|p| p.chars().next().is_some_and(alnum) && p.chars().last().is_some_and(alnum));
    if name.len() > max {
        Some(format!("must be no more than {max} characters"))
    } else if !(ok_chars && ends && parts_ok) {
        Some(format!(
            "{what} must consist of lower case alphanumeric characters, '-'{} and must start and end with an alphanumeric character",
            if dots { " or '.'" } else { "" }
        ))
    } else {
        None
    }
}

/// The object without `metadata` and `status`: what a change of bumps `generation`.
pub(crate) fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Base64 (standard alphabet, padded) as Kubernetes stores `data` values.
pub(crate) fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("a ByteString serializes to a string")
}

/// Fills in what the real API server defaults on write (a small, documented subset).
/// `old` is the stored object on update, so allocated values (a Service's cluster IP) stay.
pub(crate) fn apply_defaults(kind: &Kind, obj: &mut Value, old: Option<&Value>, next_ip: &mut u32) {
    match (kind.group, kind.plural) {
        ("", "namespaces") => {
            let name = meta_str(obj, "name").unwrap_or_default().to_owned();
            let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "services") => default_service(obj, old, next_ip),
        ("", "secrets") => {
            if obj.get("type").is_none() {
                obj["type"] = json!("Opaque");
            }
            // stringData is write-only: merged into data, never stored.
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                if !obj.get("data").is_some_and(Value::is_object) {
                    obj["data"] = json!({});
                }
                for (k, v) in sd {
                    let text = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(base64(text.as_bytes()));
                }
            }
        }
        ("discovery.k8s.io", "endpointslices") => default_protocols(obj, "/ports"),
        ("networking.k8s.io", "ingresses") if obj.get("status").is_none() => {
            obj["status"] = json!({"loadBalancer": {}});
        }
        _ => {}
    }
}

fn default_protocols(obj: &mut Value, pointer: &str) {
    if let Some(Value::Array(ports)) = obj.pointer_mut(pointer) {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            if p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
        }
    }
}

fn default_service(obj: &mut Value, old: Option<&Value>, next_ip: &mut u32) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec.get("type").is_none() {
        spec["type"] = json!("ClusterIP");
    }
    let external = spec["type"] == "ExternalName";
    if !external {
        if spec.get("clusterIP").is_none() {
            match old.and_then(|o| o.pointer("/spec/clusterIP")) {
                Some(ip) => spec["clusterIP"] = ip.clone(),
                None => {
                    *next_ip += 1;
                    spec["clusterIP"] = json!(format!(
                        "10.96.{}.{}",
                        (*next_ip >> 8) & 0xff,
                        *next_ip & 0xff
                    ));
                }
            }
        }
        if spec.get("clusterIPs").is_none() {
            spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
        }
        if spec["clusterIP"] != "None" && spec.get("ipFamilies").is_none() {
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        if spec.get("internalTrafficPolicy").is_none() {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
    }
    if spec.get("sessionAffinity").is_none() {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            if p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
            if p.get("targetPort").is_none() && !external {
                p["targetPort"] = p["port"].clone();
            }
        }
    }
    if obj.get("status").is_none() {
        obj["status"] = json!({"loadBalancer": {}});
    }
}

#[cfg(test)]
mod tests {
    use super::{NameRule, base64, name_problem};

    #[test]
    fn names_are_dns_1123() {
        assert_eq!(name_problem("shop.example", NameRule::Subdomain), None);
        assert_eq!(name_problem("a-1", NameRule::Label), None);
        for bad in ["Shop", "-a", "a-", "a..b", "a_b", ""] {
            assert!(name_problem(bad, NameRule::Subdomain).is_some(), "{bad:?}");
        }
        assert!(name_problem("a.b", NameRule::Label).is_some());
        assert!(name_problem(&"a".repeat(64), NameRule::Label).is_some());
    }

    #[test]
    fn base64_is_the_standard_alphabet() {
        assert_eq!(base64(b"hello?>"), "aGVsbG8/Pg==");
    }
}
