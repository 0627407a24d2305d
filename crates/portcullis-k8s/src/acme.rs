//! ACME certificates in Secrets: the leader stores each certificate its ACME manager issues
//! in the Secret the Ingress names (`spec.tls[].secretName`), so that a restart or another
//! replica serves it without a new order; the manager's files stay its cache.
//!
//! Only Secrets Portcullis created (label `app.kubernetes.io/managed-by: portcullis`), or
//! empty ones, are written. A Secret cert-manager manages, or any other Secret that already
//! holds a certificate, is never overwritten: [`write_certificate`] says so with
//! [`SecretError::NotOurs`], and the caller reports it.

mod driver;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::leader::is_status;
use crate::snapshot::ObjectKey;

pub use driver::{AcmeSecrets, AcmeSecretsHandle, IssuedCertificate};

/// The label on every Secret Portcullis created, and the only ones it updates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "portcullis";
/// The annotation listing the names the stored certificate was ordered for (comma-separated).
pub const HOSTS_ANNOTATION: &str = "portcullis.dev/acme-hosts";
/// Annotations cert-manager puts on the Secrets it manages.
pub const CERT_MANAGER_ANNOTATIONS: [&str; 2] = [
    "cert-manager.io/certificate-name",
    "cert-manager.io/issuer-name",
];
/// The Secret type a TLS certificate is stored as.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Why a certificate was not stored in its Secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret belongs to someone else and is left alone.
    #[error("secret {secret}: {reason}; not overwriting it")]
    NotOurs {
        /// The Secret.
        secret: ObjectKey,
        /// Whose it is.
        reason: NotOurs,
    },
    /// The API server refused or could not be reached (worth retrying).
    #[error("secret {secret}: {source}")]
    Api {
        /// The Secret.
        secret: ObjectKey,
        /// What the client said.
        #[source]
        source: kube::Error,
    },
}

impl SecretError {
    /// Whether the Secret is someone else's (retrying will not help).
    pub fn is_not_ours(&self) -> bool {
        matches!(self, Self::NotOurs { .. })
    }
}

/// Whose a Secret Portcullis will not write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOurs {
    /// cert-manager's (its annotations are on it).
    CertManager,
    /// Not labelled as Portcullis's, and it already holds a certificate.
    Foreign,
    /// Not of type `kubernetes.io/tls` (a Secret's type cannot be changed).
    WrongType,
}

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CertManager => "managed by cert-manager",
            Self::Foreign => {
                "holds a certificate and is not labelled app.kubernetes.io/managed-by=portcullis"
            }
            Self::WrongType => "is not of type kubernetes.io/tls",
        })
    }
}

/// What [`write_certificate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    /// The Secret did not exist and was created.
    Created,
    /// Our Secret (or an empty one) now holds the certificate.
    Updated,
    /// It already held exactly this certificate and key.
    Unchanged,
}

/// Whether Portcullis may write `secret`, and if not, why.
pub fn ownership(secret: &Secret) -> Result<(), NotOurs> {
    let annotations = secret.metadata.annotations.as_ref();
    if CERT_MANAGER_ANNOTATIONS
        .iter()
        .any(|a| annotations.is_some_and(|m| m.contains_key(*a)))
    {
        return Err(NotOurs::CertManager);
    }
    let ours = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY);
    if secret
        .type_
        .as_deref()
        .is_some_and(|t| t != TLS_SECRET_TYPE)
    {
        return Err(NotOurs::WrongType);
    }
    let holds_cert = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .is_some_and(|c| !c.0.is_empty());
    if !ours && holds_cert {
        return Err(NotOurs::Foreign);
    }
    Ok(())
}

/// Stores `chain_pem` and `key_pem` in `secret` (`tls.crt`, `tls.key`), ordered for
/// `hosts`: creates the Secret (type `kubernetes.io/tls`, labelled and annotated as ours)
/// or updates it if [`ownership`] allows. Updates carry the resourceVersion read; a
/// conflict is read again and retried a few times.
pub async fn write_certificate(
    client: Client,
    secret: &ObjectKey,
    hosts: &[String],
    chain_pem: &str,
    key_pem: &str,
) -> Result<SecretWrite, SecretError> {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let api_err = |source| SecretError::Api {
        secret: secret.clone(),
        source,
    };
    let data = BTreeMap::from([
        (
            "tls.crt".to_owned(),
            ByteString(chain_pem.as_bytes().to_vec()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(key_pem.as_bytes().to_vec()),
        ),
    ]);
    let hosts = hosts.join(",");
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = match api.get_opt(&secret.name).await.map_err(api_err)? {
            None => {
                let new = Secret {
                    metadata: ObjectMeta {
                        name: Some(secret.name.clone()),
                        namespace: Some(secret.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY_LABEL.to_owned(),
                            MANAGED_BY.to_owned(),
                        )])),
                        annotations: Some(BTreeMap::from([(
                            HOSTS_ANNOTATION.to_owned(),
                            hosts.clone(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some(TLS_SECRET_TYPE.to_owned()),
                    data: Some(data.clone()),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &new)
                    .await
                    .map(|_| SecretWrite::Created)
            }
            Some(mut existing) => {
                ownership(&existing).map_err(|reason| SecretError::NotOurs {
                    secret: secret.clone(),
                    reason,
                })?;
                let same_data = existing.data.as_ref() == Some(&data);
                let labels = existing.metadata.labels.get_or_insert_with(BTreeMap::new);
                let labelled = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
                labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
                let annotations = existing
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new);
                let annotated = annotations.get(HOSTS_ANNOTATION) == Some(&hosts);
                annotations.insert(HOSTS_ANNOTATION.to_owned(), hosts.clone());
                if same_data && labelled && annotated {
                    return Ok(SecretWrite::Unchanged);
                }
                existing.type_ = Some(TLS_SECRET_TYPE.to_owned());
                existing.data = Some(data.clone());
                existing.string_data = None;
                // `existing` carries the resourceVersion read: a concurrent write is a 409.
                api.replace(&secret.name, &PostParams::default(), &existing)
                    .await
                    .map(|_| SecretWrite::Updated)
            }
        };
        match result {
            Ok(w) => return Ok(w),
            // Created or changed by someone else meanwhile: look again.
            Err(e) if is_status(&e, 409) && attempts < 4 => continue,
            Err(e) => return Err(api_err(e)),
        }
    }
}

/// The certificate chain and key a TLS Secret holds (`tls.crt`, `tls.key`, both PEM text),
/// for seeding the ACME manager's storage; `None` when either is missing, empty or not
/// PEM. Whether the pair is usable is for the reader (the ACME storage checks it).
pub fn read_certificate(secret: &Secret) -> Option<(String, String)> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        let bytes = &data.get(k)?.0;
        let s = std::str::from_utf8(bytes).ok()?;
        s.contains("-----BEGIN ").then(|| s.to_owned())
    };
    Some((text("tls.crt")?, text("tls.key")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(labels: &[(&str, &str)], annotations: &[(&str, &str)], crt: &str) -> Secret {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        Secret {
            metadata: ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            type_: Some(TLS_SECRET_TYPE.into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_owned(), ByteString(crt.as_bytes().to_vec())),
                (
                    "tls.key".to_owned(),
                    ByteString(b"-----BEGIN PRIVATE KEY-----".to_vec()),
                ),
            ])),
            ..Secret::default()
        }
    }

    #[test]
    fn only_ours_or_empty_secrets_are_written() {
        let pem = "-----BEGIN CERTIFICATE-----";
        assert_eq!(
            ownership(&secret(&[(MANAGED_BY_LABEL, MANAGED_BY)], &[], pem)),
            Ok(())
        );
        assert_eq!(ownership(&secret(&[], &[], "")), Ok(()));
        assert_eq!(ownership(&secret(&[], &[], pem)), Err(NotOurs::Foreign));
        assert_eq!(
            ownership(&secret(
                &[(MANAGED_BY_LABEL, MANAGED_BY)],
                &[("cert-manager.io/issuer-name", "le")],
                ""
            )),
            Err(NotOurs::CertManager)
        );
        let mut opaque = secret(&[], &[], "");
        opaque.type_ = Some("Opaque".into());
        assert_eq!(ownership(&opaque), Err(NotOurs::WrongType));
    }

    #[test]
    fn reading_needs_both_halves_as_pem() {
        let s = secret(&[], &[], "-----BEGIN CERTIFICATE-----\n");
        let (crt, key) = read_certificate(&s).unwrap();
        assert!(crt.starts_with("-----BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
        assert!(read_certificate(&secret(&[], &[], "")).is_none());
        assert!(read_certificate(&Secret::default()).is_none());
    }
}
