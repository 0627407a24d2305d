//! What the replicas stored, read (and, for the bad-data test, written) through etcd's JSON
//! gateway, under the fleet's prefix; and etcd's own operations a test needs (revision,
//! compaction).

use std::net::SocketAddr;

use portcullis_tests::etcd::{b64, unb64};
use portcullis_tests::plain;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// The key prefix every replica is configured with.
pub const PREFIX: &str = "/portcullis-test/";

/// One key as etcd holds it.
#[derive(Debug, Clone)]
pub struct Kv {
    /// Relative to [`PREFIX`].
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl Kv {
    /// The value as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.value).unwrap_or(Value::Null)
    }
}

/// etcd's JSON gateway at one member.
#[derive(Clone, Copy)]
pub struct Store {
    pub addr: SocketAddr,
}

impl Store {
    async fn call(&self, path: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string();
        let resp = plain::send(
            self.addr,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        (
            resp.status,
            serde_json::from_str(resp.body()).unwrap_or(Value::Null),
        )
    }

    /// Every key under `PREFIX + prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Vec<Kv> {
        let start = format!("{PREFIX}{prefix}");
        let mut end = start.clone().into_bytes();
        *end.last_mut().unwrap() += 1;
        let (status, v) = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(start.as_bytes()), "range_end": b64(&end)}),
            )
            .await;
        assert_eq!(status, 200, "range {start}: {v}");
        let int = |v: &Value| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or(v.as_i64())
                .unwrap_or(0)
        };
        v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let text = |f: &str| {
                    String::from_utf8_lossy(
                        &unb64(kv[f].as_str().unwrap_or("")).unwrap_or_default(),
                    )
                    .into_owned()
                };
                Kv {
                    key: text("key")
                        .strip_prefix(PREFIX)
                        .unwrap_or_default()
                        .to_owned(),
                    value: text("value"),
                    create_revision: int(&kv["create_revision"]),
                    mod_revision: int(&kv["mod_revision"]),
                }
            })
            .collect()
    }

    /// The key `PREFIX + key` exactly.
    pub async fn get(&self, key: &str) -> Option<Kv> {
        self.list(key).await.into_iter().find(|kv| kv.key == key)
    }

    /// Puts `value` at `PREFIX + key`, unfenced, as an operator (or a bug) would.
    pub async fn put(&self, key: &str, value: &str) {
        let key = format!("{PREFIX}{key}");
        let (status, v) = self
            .call(
                "/v3/kv/put",
                &json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())}),
            )
            .await;
        assert_eq!(status, 200, "put {key}: {v}");
    }

    /// The store's current revision.
    pub async fn revision(&self) -> i64 {
        let (status, v) = self.call("/v3/kv/range", &json!({"key": b64(b"\0")})).await;
        assert_eq!(status, 200, "{v}");
        v["header"]["revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap()
    }

    /// Compacts the history up to `revision` (physically): watches from before it fail.
    pub async fn compact(&self, revision: i64) {
        let (status, v) = self
            .call(
                "/v3/kv/compaction",
                &json!({"revision": revision.to_string(), "physical": true}),
            )
            .await;
        assert_eq!(status, 200, "compaction to {revision}: {v}");
    }

    /// The leader's node name: the `leader` key's value, or with an election under
    /// `leader/…`, the value of its oldest key (the one elected).
    pub async fn leader(&self) -> Option<String> {
        let mut keys = self.list("leader").await;
        keys.retain(|kv| kv.key == "leader" || kv.key.starts_with("leader/"));
        keys.sort_by_key(|kv| kv.create_revision);
        let v = keys.first()?.value.clone();
        // A JSON record naming the node, or the bare name.
        match serde_json::from_str::<Value>(&v) {
            Ok(Value::Object(o)) => o
                .get("node")
                .or(o.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            Ok(Value::String(s)) => Some(s),
            _ => Some(v),
        }
    }

    /// `certs/<site>` as JSON, if it is there.
    pub async fn cert_record(&self, site: &str) -> Option<Value> {
        Some(self.get(&format!("certs/{site}")).await?.json())
    }
}

/// The first certificate of a PEM chain.
pub fn leaf_of(chain_pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()
}
