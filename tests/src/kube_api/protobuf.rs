//! Request bodies in Kubernetes' protobuf encoding, for the few kinds kubectl's typed
//! commands send that way (`kubectl create secret|configmap|namespace`): client-go sends
//! `application/vnd.kubernetes.protobuf` for built-in types and does not fall back to JSON
//! on a 415. Decoded into the same JSON the rest of the fake handles; answers stay JSON,
//! which the client accepts.
//!
//! The envelope is the 4 bytes `k8s\0` and a `runtime.Unknown` (`typeMeta` = 1 with
//! `apiVersion` = 1 and `kind` = 2; `raw` = 2, the object's own message). Field numbers are
//! those of `k8s.io/api/core/v1/generated.proto` and apimachinery's `ObjectMeta`.

use serde_json::{Map, Value, json};

use super::kinds::Kind;
use super::object::base64;
use super::status::ApiError;

/// One field of a message: its number and its value (varint or bytes).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one message, in order; `None` when the bytes are not protobuf.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Field::Varint(0)
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let bytes = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Field::Bytes(bytes)
            }
            5 => {
                pos += 4;
                Field::Varint(0)
            }
            _ => return None,
        };
        out.push((tag >> 3, field));
    }
    (pos == buf.len()).then_some(out)
}

fn text(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}

/// A `map<string, string>` (or `bytes` values, base64 as in JSON) entry.
fn entry(b: &[u8], bytes_value: bool) -> Option<(String, Value)> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = text(k)?,
            (2, Field::Bytes(v)) if bytes_value => value = json!(base64(v)),
            (2, Field::Bytes(v)) => value = json!(text(v)?),
            _ => {}
        }
    }
    Some((key, value))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut meta = Map::new();
    for (n, f) in fields(b)? {
        let Field::Bytes(v) = f else { continue };
        let name = match n {
            1 => "name",
            2 => "generateName",
            3 => "namespace",
            6 => "resourceVersion",
            11 | 12 => {
                let (k, val) = entry(v, false)?;
                let map = meta
                    .entry(if n == 11 { "labels" } else { "annotations" })
                    .or_insert_with(|| json!({}));
                map[k] = val;
                continue;
            }
            14 => {
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(text(v)?));
                }
                continue;
            }
            _ => continue,
        };
        meta.insert(name.into(), json!(text(v)?));
    }
    Some(Value::Object(meta))
}

/// The object in a protobuf request body, as JSON.
pub(crate) fn decode(kind: &Kind, body: &[u8]) -> Result<Value, ApiError> {
    let unsupported = || {
        ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf for {} (the fake decodes protobuf for Secret, ConfigMap and Namespace only)",
            kind.kind
        ))
    };
    let bad = || ApiError::bad_request("the protobuf body could not be decoded");
    if !matches!(kind.kind, "Secret" | "ConfigMap" | "Namespace") || !kind.group.is_empty() {
        return Err(unsupported());
    }
    let envelope = body.strip_prefix(b"k8s\0").ok_or_else(bad)?;
    let raw = fields(envelope)
        .ok_or_else(bad)?
        .into_iter()
        .find_map(|(n, f)| match (n, f) {
            (2, Field::Bytes(raw)) => Some(raw),
            _ => None,
        })
        .ok_or_else(bad)?;
    let mut obj = json!({"apiVersion": "v1", "kind": kind.kind});
    for (n, f) in fields(raw).ok_or_else(bad)? {
        match (kind.kind, n, f) {
            (_, 1, Field::Bytes(m)) => obj["metadata"] = object_meta(m).ok_or_else(bad)?,
            ("Secret", 2 | 4, Field::Bytes(e)) | ("ConfigMap", 2 | 3, Field::Bytes(e)) => {
                let binary = (kind.kind, n) == ("Secret", 2) || (kind.kind, n) == ("ConfigMap", 3);
                let (k, v) = entry(e, binary).ok_or_else(bad)?;
                let field = match (kind.kind, n) {
                    ("Secret", 2) | ("ConfigMap", 2) => "data",
                    ("Secret", _) => "stringData",
                    _ => "binaryData",
                };
                if !obj.get(field).is_some_and(Value::is_object) {
                    obj[field] = json!({});
                }
                obj[field][k] = v;
            }
            ("Secret", 3, Field::Bytes(t)) => obj["type"] = json!(text(t).ok_or_else(bad)?),
            ("Secret", 5, Field::Varint(b)) | ("ConfigMap", 4, Field::Varint(b)) => {
                obj["immutable"] = json!(b != 0);
            }
            ("Namespace", 2, Field::Bytes(spec)) => {
                let finalizers: Vec<Value> = fields(spec)
                    .ok_or_else(bad)?
                    .into_iter()
                    .filter_map(|(n, f)| match (n, f) {
                        (1, Field::Bytes(s)) => text(s).map(Value::String),
                        _ => None,
                    })
                    .collect();
                obj["spec"] = json!({"finalizers": finalizers});
            }
            _ => {}
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::decode;
    use crate::kube_api::kinds::{KINDS, find};

    fn bytes_field(n: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, u8::try_from(b.len()).unwrap()];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn a_secret_decodes_from_its_envelope() {
        let meta = [bytes_field(1, b"s"), bytes_field(3, b"default")].concat();
        let entry = [bytes_field(1, b"k"), bytes_field(2, b"hello")].concat();
        let secret = [
            bytes_field(1, &meta),
            bytes_field(2, &entry),
            bytes_field(3, b"Opaque"),
        ]
        .concat();
        let unknown = [bytes_field(1, b""), bytes_field(2, &secret)].concat();
        let body = [b"k8s\0".as_slice(), &unknown].concat();
        let k = find("", "v1", "secrets").unwrap();
        assert_eq!(
            decode(&KINDS[k], &body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "s", "namespace": "default"}, "data": {"k": "aGVsbG8="}})
        );
        assert_eq!(decode(&KINDS[k], b"k8s\0\xff").unwrap_err().code, 400);
    }
}
