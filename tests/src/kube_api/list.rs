//! LIST: `resourceVersion` / `resourceVersionMatch` as the API concepts page documents them,
//! `limit` + `continue` pages that are one consistent snapshot, and selectors.

use std::ops::Bound;

use serde_json::{Value, json};

use super::kinds::KINDS;
use super::selector::Selector;
use super::status::ApiError;
use super::store::{Inner, Key};

/// The query parameters of a LIST.
#[derive(Debug, Default)]
pub(crate) struct ListOpts {
    pub selector: Selector,
    pub resource_version: Option<String>,
    pub version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The continue token: the snapshot's RV and the last key returned, opaque to clients.
fn encode_continue(rv: u64, key: &Key) -> String {
    hex(&format!("{rv}/{}/{}", key.0, key.1))
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    let text = unhex(token)?;
    let mut parts = text.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, (parts.next()?.to_owned(), parts.next()?.to_owned())))
}

/// An object as a list item: the real server's JSON lists leave out `kind`/`apiVersion`.
pub(crate) fn as_item(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    v
}

/// Which snapshot a list reads: its RV, or an error.
fn snapshot_rv(inner: &Inner, k: usize, opts: &ListOpts) -> Result<u64, ApiError> {
    let rv = opts.resource_version.as_deref().filter(|s| !s.is_empty());
    let exact = match opts.version_match.as_deref().filter(|s| !s.is_empty()) {
        None => rv.is_some_and(|r| r != "0") && opts.limit.is_some(),
        Some("Exact") => true,
        Some("NotOlderThan") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
    };
    let Some(rv) = rv else {
        if opts.version_match.as_deref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        return Ok(inner.rv);
    };
    let wanted: u64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: \"{rv}\"")))?;
    if wanted > inner.rv {
        return Err(ApiError::too_large_resource_version(wanted, inner.rv));
    }
    if !exact {
        return Ok(inner.rv);
    }
    if wanted == 0 {
        return Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ));
    }
    if inner.too_old(k, wanted) {
        return Err(ApiError::expired(format!(
            "The resourceVersion for the provided list is too old: {wanted}"
        )));
    }
    Ok(wanted)
}

/// A LIST of resource `k` in `ns` (all namespaces when `None`).
pub(crate) fn list(
    inner: &Inner,
    k: usize,
    ns: Option<&str>,
    opts: &ListOpts,
) -> Result<Value, ApiError> {
    let kind = &KINDS[k];
    let (rv, after) = match opts.continue_token.as_deref().filter(|s| !s.is_empty()) {
        Some(token) => {
            if opts
                .resource_version
                .as_deref()
                .is_some_and(|r| !r.is_empty())
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, key) = decode_continue(token)
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            (rv, Some(key))
        }
        None => (snapshot_rv(inner, k, opts)?, None),
    };
    let objects = inner.state_at(k, rv).ok_or_else(|| {
        ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        )
    })?;
    let ns = ns.filter(|n| !n.is_empty());
    let start = match (&after, ns) {
        (Some(key), _) => Bound::Excluded(key.clone()),
        (None, Some(n)) => Bound::Included((n.to_owned(), String::new())),
        (None, None) => Bound::Unbounded,
    };
    let mut matching = objects
        .range((start, Bound::Unbounded))
        .take_while(|(key, _)| ns.is_none_or(|n| key.0 == n))
        .filter(|(_, obj)| opts.selector.matches(obj));
    let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut last = None;
    for (key, obj) in matching.by_ref() {
        items.push(as_item(obj));
        last = Some(key.clone());
        if items.len() == limit {
            break;
        }
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if items.len() == limit {
        // Like the real server, the count of what is left is given only without a
        // selector; with one, finding whether anything is left is enough (counting every
        // remaining match on every page made a paged list of N objects cost N²/limit
        // selector evaluations).
        let remaining = opts.selector.is_empty().then(|| matching.by_ref().count());
        let more = remaining.map_or_else(|| matching.next().is_some(), |n| n > 0);
        if more {
            let last = last.expect("a full page has a last item");
            meta["continue"] = json!(encode_continue(rv, &last));
            if let Some(n) = remaining {
                meta["remainingItemCount"] = json!(n);
            }
        }
    }
    Ok(json!({
        "kind": format!("{}List", kind.kind),
        "apiVersion": kind.api_version(),
        "metadata": meta,
        "items": items,
    }))
}

#[cfg(test)]
mod tests {
    use super::{decode_continue, encode_continue};

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("default".to_owned(), "shop.v2".to_owned());
        let token = encode_continue(42, &key);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(decode_continue(&token), Some((42, key)));
        assert_eq!(decode_continue("zz"), None);
    }
}
