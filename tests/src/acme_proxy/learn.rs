//! What the proxy knows of the CA's URLs, learnt from its answers as a client learns them;
//! and reading the JWS a client posts.

use std::collections::HashMap;

use http::Method;
use serde_json::Value;

use super::Kind;

/// URL paths by what they are.
pub(super) struct Known {
    directory: String,
    new_nonce: Option<String>,
    new_account: Option<String>,
    new_order: Option<String>,
    /// Order path → its names.
    orders: HashMap<String, Vec<String>>,
    /// Finalize path → order path.
    finalize: HashMap<String, String>,
    /// Certificate path → order path.
    certificate: HashMap<String, String>,
    /// Authorization path → its name.
    authz: HashMap<String, String>,
    /// Challenge path → its name.
    challenge: HashMap<String, String>,
}

/// The path of an absolute URL (or the text itself if it has no scheme).
pub(super) fn path_of(url: &str) -> String {
    super::split_url(url).1
}

impl Known {
    pub(super) fn new(directory: &str) -> Self {
        Self {
            directory: directory.to_owned(),
            new_nonce: None,
            new_account: None,
            new_order: None,
            orders: HashMap::new(),
            finalize: HashMap::new(),
            certificate: HashMap::new(),
            authz: HashMap::new(),
            challenge: HashMap::new(),
        }
    }

    /// What a request is; its names; its order's URL (with `own` as the base).
    pub(super) fn classify(
        &self,
        method: &Method,
        path: &str,
        payload: Option<&Value>,
        own: &str,
    ) -> (Kind, Vec<String>, Option<String>) {
        let is = |p: &Option<String>| p.as_deref() == Some(path);
        let order_url = |order: &str| Some(format!("{own}{order}"));
        let names_of = |order: &str| self.orders.get(order).cloned().unwrap_or_default();
        if path == self.directory {
            return (Kind::Directory, vec![], None);
        }
        if is(&self.new_nonce) {
            return (Kind::Nonce, vec![], None);
        }
        if *method != Method::POST {
            return (Kind::Other, vec![], None);
        }
        if is(&self.new_account) {
            return (Kind::NewAccount, vec![], None);
        }
        if is(&self.new_order) {
            let names = payload.map(identifiers).unwrap_or_default();
            return (Kind::NewOrder, names, None);
        }
        if self.orders.contains_key(path) {
            return (Kind::Order, names_of(path), order_url(path));
        }
        if let Some(order) = self.finalize.get(path) {
            return (Kind::Finalize, names_of(order), order_url(order));
        }
        if let Some(order) = self.certificate.get(path) {
            return (Kind::Certificate, names_of(order), order_url(order));
        }
        if let Some(name) = self.authz.get(path) {
            let names = (!name.is_empty()).then(|| name.clone()).into_iter();
            return (Kind::Authorization, names.collect(), None);
        }
        if let Some(name) = self.challenge.get(path) {
            // POST-as-GET has an empty payload; "ready" posts `{}`.
            let kind = if payload.is_some() {
                Kind::ChallengeReady
            } else {
                Kind::ChallengePoll
            };
            return (kind, vec![name.clone()], None);
        }
        (Kind::Other, vec![], None)
    }

    /// Learns from the JSON answer to a request of `kind` at `path`.
    pub(super) fn learn(&mut self, kind: Kind, path: &str, location: Option<&str>, json: &Value) {
        let url_path = |v: &Value| v.as_str().map(path_of);
        if kind == Kind::Directory {
            self.new_nonce = url_path(&json["newNonce"]);
            self.new_account = url_path(&json["newAccount"]);
            self.new_order = url_path(&json["newOrder"]);
            return;
        }
        let order = match kind {
            Kind::NewOrder => location.map(path_of),
            Kind::Order => Some(path.to_owned()),
            Kind::Finalize => self.finalize.get(path).cloned(),
            _ => None,
        };
        if let Some(order) = order {
            let names = identifiers(json);
            if !names.is_empty() {
                self.orders.insert(order.clone(), names);
            }
            if let Some(f) = url_path(&json["finalize"]) {
                self.finalize.insert(f, order.clone());
            }
            if let Some(c) = url_path(&json["certificate"]) {
                self.certificate.insert(c, order);
            }
            // The name comes with the authorization itself.
            for a in json["authorizations"].as_array().into_iter().flatten() {
                if let Some(a) = url_path(a) {
                    self.authz.entry(a).or_default();
                }
            }
        }
        if let (Some(name), Some(challenges)) = (
            json["identifier"]["value"].as_str(),
            json["challenges"].as_array(),
        ) {
            self.authz.insert(path.to_owned(), name.to_owned());
            for c in challenges.iter().filter_map(|c| url_path(&c["url"])) {
                self.challenge.insert(c, name.to_owned());
            }
        }
    }
}

/// The `identifiers` of an order (a new order's payload or an order object): DNS names.
pub(super) fn identifiers(json: &Value) -> Vec<String> {
    json["identifiers"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i["value"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The JSON payload of a flattened JWS, or `None` for POST-as-GET (empty payload) and for
/// anything that is not a JWS.
pub(super) fn jws_payload(body: &[u8]) -> Option<Value> {
    let jws: Value = serde_json::from_slice(body).ok()?;
    let payload = jws["payload"].as_str().filter(|p| !p.is_empty())?;
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

/// base64url without padding (RFC 7515), as JWS encodes.
pub(super) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut n, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        n = (n << 6 | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits & 0xff) as u8);
        }
    }
    Some(out)
}
