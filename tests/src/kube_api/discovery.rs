//! Discovery as kubectl reads it: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}`,
//! `/apis/{g}/{v}` in the legacy (unaggregated) form.
//!
//! kubectl 1.32 first asks for aggregated discovery (`Accept:
//! application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...,application/json`)
//! and falls back to these documents when the answer's `Content-Type` is plain
//! `application/json`, which is what the fake always sends.

use serde_json::{Value, json};

use super::kinds::{KINDS, Kind, groups};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resources(kinds: &[&Kind]) -> Vec<Value> {
    let mut out = Vec::new();
    for k in kinds {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": VERBS,
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        out.push(r);
        if k.status {
            out.push(json!({
                "name": format!("{}/status", k.plural),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    out
}

fn group_version(group: &str) -> Value {
    json!({"groupVersion": format!("{group}/v1"), "version": "v1"})
}

fn api_group(group: &str) -> Value {
    json!({
        "name": group,
        "versions": [group_version(group)],
        "preferredVersion": group_version(group),
    })
}

/// The discovery document at `segments` (the path split on `/`), if it is one.
pub(crate) fn document(segments: &[&str], server: &str) -> Option<Value> {
    let of_group = |g: &str, v: &str| -> Vec<&Kind> {
        KINDS
            .iter()
            .filter(|k| k.group == g && k.version == v)
            .collect()
    };
    match segments {
        ["version"] => Some(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-portcullis-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
        })),
        ["api", "v1"] => Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1",
            "resources": resources(&of_group("", "v1")),
        })),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups().into_iter().map(api_group).collect::<Vec<_>>(),
        })),
        ["apis", g] if groups().contains(g) => {
            let mut v = api_group(g);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            Some(v)
        }
        ["apis", g, v] if !of_group(g, v).is_empty() => Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{g}/{v}"),
            "resources": resources(&of_group(g, v)),
        })),
        _ => None,
    }
}
