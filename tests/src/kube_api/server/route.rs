//! Where a request goes: its query parameters, and the resource its path names with the
//! verb RBAC would check.

use std::collections::HashMap;

use http::Method;

use crate::kube_api::kinds::{KINDS, find};
use crate::kube_api::status::ApiError;

/// Query parameters, percent-decoded (the last of a repeated name wins).
pub(super) fn parse_query(q: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A request for a resource: which one, where, and what RBAC calls it.
pub(super) struct Target {
    pub k: usize,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub status: bool,
    pub verb: &'static str,
}

/// The resource `segments` names; `Ok(None)` for the paths that name none (discovery).
pub(super) fn resolve(
    segments: &[&str],
    method: &Method,
    watch: bool,
) -> Result<Option<Target>, ApiError> {
    let (group, version, rest) = match segments {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    let namespace_sub = group.is_empty()
        && rest.len() == 3
        && rest[0] == "namespaces"
        && matches!(rest[2], "status" | "finalize");
    let (ns, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !namespace_sub => {
            (Some((*ns).to_owned()), tail)
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some((*n).to_owned()), None),
        [r, n, s] => (*r, Some((*n).to_owned()), Some(*s)),
        _ => return Err(ApiError::no_route()),
    };
    let k = find(group, version, plural).ok_or_else(ApiError::no_route)?;
    let kind = &KINDS[k];
    if ns.is_some() && !kind.namespaced {
        return Err(ApiError::no_route());
    }
    if sub.is_some_and(|s| s != "status" || !kind.status) {
        return Err(ApiError::no_route());
    }
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    if kind.namespaced && ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::no_route());
    }
    Ok(Some(Target {
        k,
        ns,
        name,
        status: sub.is_some(),
        verb,
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_query;

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query(
            "labelSelector=app%20in%20(a%2Cb)&watch=1&fieldSelector=metadata.name%3Dx&x",
        );
        assert_eq!(q["labelSelector"], "app in (a,b)");
        assert_eq!(q["fieldSelector"], "metadata.name=x");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
    }
}
