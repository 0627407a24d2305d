//! What the replicas keep in the fake API server, read and written in process (the fake's
//! own helpers, with the same checks and resourceVersion preconditions as its HTTP side):
//! the store's Secrets, the issuer's Lease. The names are the layout `docs/cluster.md` and
//! `portcullis-cluster`'s `kube.rs` document, spelled out here as an outside reader sees
//! them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use portcullis_cluster::Sealer;
use portcullis_cluster::records::{self, CertRecord};
use portcullis_tests::{FakeApiServer, Leaf};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

/// The namespace every replica is configured with (`cluster.kubernetes.namespace`).
pub const NS: &str = "portcullis-test";
/// The issuer's Lease.
pub const ISSUER_LEASE: &str = "portcullis-issuer";
/// Labels on every store Secret.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "portcullis");
pub const STORE_LABEL: (&str, &str) = ("portcullis.dev/store", "v1");
/// Labels on each replica's report Lease.
pub const NODE_LABEL: (&str, &str) = ("portcullis.dev/store-node", "v1");
/// The key a store Secret holds.
pub const KEY_ANNOTATION: &str = "portcullis.dev/store-key";
/// The fencing token of the leadership that wrote it.
pub const TOKEN_ANNOTATION: &str = "portcullis.dev/store-token";

/// Creates the (empty) namespace the fleet shares.
pub fn create_namespace(api: &FakeApiServer) {
    api.create(&Namespace {
        metadata: ObjectMeta {
            name: Some(NS.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    });
}

fn labelled(meta: &ObjectMeta, (k, v): (&str, &str)) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(k))
        .is_some_and(|x| x == v)
}

/// The Secrets labelled as the store's, by name.
pub fn store_secrets(api: &FakeApiServer) -> Vec<Secret> {
    api.list::<Secret>(NS)
        .into_iter()
        .filter(|s| labelled(&s.metadata, MANAGED_BY) && labelled(&s.metadata, STORE_LABEL))
        .collect()
}

/// The replicas' report Leases.
pub fn node_leases(api: &FakeApiServer) -> Vec<Lease> {
    api.list::<Lease>(NS)
        .into_iter()
        .filter(|l| labelled(&l.metadata, MANAGED_BY) && labelled(&l.metadata, NODE_LABEL))
        .collect()
}

/// An annotation of `s`.
pub fn annotation<'a>(s: &'a Secret, name: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

/// The key a store Secret says it holds.
pub fn key_of(s: &Secret) -> Option<&str> {
    annotation(s, KEY_ANNOTATION)
}

/// The token a store Secret was written under.
pub fn token_of(s: &Secret) -> Option<i64> {
    annotation(s, TOKEN_ANNOTATION)?.parse().ok()
}

/// Its resourceVersion as a number.
pub fn revision_of(s: &Secret) -> u64 {
    s.metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// The store Secret holding `key`.
pub fn secret(api: &FakeApiServer, key: &str) -> Option<Secret> {
    store_secrets(api)
        .into_iter()
        .find(|s| key_of(s) == Some(key))
}

/// The value `key` holds, as JSON (`Value::Null` when it is not JSON).
pub fn record(api: &FakeApiServer, key: &str) -> Option<Value> {
    let value = secret(api, key)?.data?.get("value")?.0.clone();
    Some(serde_json::from_slice(&value).unwrap_or(Value::Null))
}

/// `certs/<site>` as JSON.
pub fn cert_record(api: &FakeApiServer, site: &str) -> Option<Value> {
    record(api, &records::cert_key(site))
}

/// Replaces the value of the existing Secret holding `key` (with its resourceVersion as
/// the precondition, as the issuer writes), under `token` (the Secret's own when `None`).
pub fn overwrite(api: &FakeApiServer, key: &str, value: Vec<u8>, token: Option<i64>) -> Secret {
    let mut s = secret(api, key).unwrap_or_else(|| panic!("no store Secret holds {key}"));
    s.data = Some(BTreeMap::from([("value".to_owned(), ByteString(value))]));
    if let Some(t) = token {
        s.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(TOKEN_ANNOTATION.to_owned(), t.to_string());
    }
    api.replace(&s)
}

/// The name of the Secret that holds `key`: `portcullis-store-` and the first 20 hex
/// digits of its SHA-256 (the store reads a key by this name).
pub fn secret_name(key: &str) -> String {
    let sha256 = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider;
    let digest = sha256.hash(key.as_bytes());
    let hex: String = digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("portcullis-store-{hex}")
}

/// Creates the Secret holding `key` as an issuer holding `token` would.
pub fn create(api: &FakeApiServer, key: &str, value: Vec<u8>, token: i64) -> Secret {
    api.create(&Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(key)),
            namespace: Some(NS.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (STORE_LABEL.0.to_owned(), STORE_LABEL.1.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                (KEY_ANNOTATION.to_owned(), key.to_owned()),
                (TOKEN_ANNOTATION.to_owned(), token.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([("value".to_owned(), ByteString(value))])),
        ..Secret::default()
    })
}

/// A `certs/<site>` record for `leaf` as an issuer holding `token` would store it, keys in
/// the clear (the fleet has no `encryption_key_file`).
pub fn cert_value(site: &str, names: &[String], leaf: &Leaf, token: i64) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let record = CertRecord::new(
        &Sealer::new(None),
        site,
        names,
        &leaf.cert_pem,
        &leaf.key_pem,
        "test",
        now,
        token,
    );
    records::encode(&record)
}

/// The first certificate of a PEM chain.
pub fn leaf_of(chain_pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()
}

/// The issuer's Lease as the test reads it.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// `holderIdentity` (empty is none).
    pub holder: Option<String>,
    /// `leaseTransitions`: the fencing token of the leadership it records.
    pub transitions: i64,
    /// `renewTime + leaseDurationSeconds` is ahead, by the wall clock.
    pub unexpired: bool,
}

/// The issuer's Lease, if it exists.
pub fn issuer(api: &FakeApiServer) -> Option<Issuer> {
    let lease = api.get::<Lease>(NS, ISSUER_LEASE)?;
    let spec = lease.spec.unwrap_or_default();
    let unexpired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => renewed
            .0
            .checked_add(std::time::Duration::from_secs(
                u64::try_from(secs).unwrap_or(0),
            ))
            .is_ok_and(|until| until > Timestamp::now()),
        _ => false,
    };
    Some(Issuer {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        transitions: i64::from(spec.lease_transitions.unwrap_or(0)),
        unexpired,
    })
}
