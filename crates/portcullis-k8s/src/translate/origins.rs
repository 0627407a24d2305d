//! The origin of each Ingress path: its servers (from [`backends`](super::backends)) and
//! how they are reached (from the annotations and the Secrets they name).

use portcullis_config::{
    Balance, CertKey, Mode, Origin, OriginServer, OriginTimeouts, OriginTls, Retries, Transport,
    Verify,
};

use super::annotations::{Protocol, SecretRef, Settings};
use super::backends::Target;
use super::index::Index;
use crate::snapshot::ObjectKey;

/// What every origin of one Ingress shares.
#[derive(Debug, Clone)]
pub(super) struct Template {
    tls: Option<(Verify, Option<String>, Option<CertKey>)>,
    h2c: bool,
    balance: Option<Balance>,
    retries: Option<Retries>,
    timeouts: OriginTimeouts,
}

/// Builds the template of `ingress`'s origins; problems as (key, message).
pub(super) fn template(
    index: &mut Index<'_>,
    ingress: &ObjectKey,
    settings: &Settings,
    problems: &mut Vec<(String, String)>,
) -> Template {
    let o = &settings.origin;
    let secret_key = |r: &SecretRef, problems: &mut Vec<(String, String)>| {
        if let Some(ns) = &r.namespace
            && *ns != ingress.namespace
        {
            problems.push((
                super::annotations::annotation_key(&r.key),
                format!(
                    "secret {ns}/{} is in another namespace; an Ingress may only use Secrets of its own ({})",
                    r.name, ingress.namespace
                ),
            ));
            return None;
        }
        Some(ObjectKey {
            namespace: ingress.namespace.clone(),
            name: r.name.clone(),
        })
    };
    let ca_key = o.ca_secret.as_ref().and_then(|r| secret_key(r, problems));
    let client_key = o
        .client_cert_secret
        .as_ref()
        .and_then(|r| secret_key(r, problems));

    let protocol_tls = matches!(
        o.protocol.as_ref().map(|p| p.1),
        Some(Protocol::Https | Protocol::Grpcs)
    );
    let h2c_protocol = matches!(
        o.protocol.as_ref().map(|p| p.1),
        Some(Protocol::H2c | Protocol::Grpc)
    );
    // The mode: origin-mode, else what the protocol and a CA imply. Our origin-ca-secret
    // asks for verification (so TLS); ingress-nginx's Secret verifies only a TLS backend,
    // and only with proxy-ssl-verify on.
    let ours_ca = ca_key.is_some()
        && o.ca_secret
            .as_ref()
            .is_some_and(|r| r.key.starts_with(super::annotations::OURS));
    let mode = match (&o.mode, protocol_tls) {
        (Some((key, Mode::Flexible)), true) => {
            problems.push((
                super::annotations::annotation_key(key),
                "flexible is plaintext, but backend-protocol says TLS; using full".to_owned(),
            ));
            Mode::Full
        }
        (Some((_, mode)), _) => *mode,
        (None, true) if ours_ca || o.nginx_verify == Some(true) => Mode::Strict,
        (None, true) => Mode::Full,
        (None, false) if ours_ca => Mode::Strict,
        (None, false) => Mode::Flexible,
    };
    if mode == Mode::Flexible {
        // Our TLS settings on a plaintext origin say the user expected TLS.
        let ours = [
            o.ca_secret.as_ref().map(|r| r.key.as_str()),
            o.client_cert_secret.as_ref().map(|r| r.key.as_str()),
            o.server_name.as_ref().map(|(k, _)| k.as_str()),
        ];
        for key in ours.into_iter().flatten() {
            if key.starts_with(super::annotations::OURS) {
                problems.push((
                    super::annotations::annotation_key(key),
                    "only applies to TLS origins; set origin-mode or backend-protocol".to_owned(),
                ));
            }
        }
    }
    let h2c = h2c_protocol && mode == Mode::Flexible;
    if let Some((key, Protocol::H2c)) = &o.protocol
        && mode != Mode::Flexible
    {
        problems.push((
            super::annotations::annotation_key(key),
            "H2C is plaintext HTTP/2, but the origin mode uses TLS (which picks HTTP/2 by ALPN); not applied".to_owned(),
        ));
    }
    let tls = if mode == Mode::Flexible {
        None
    } else {
        let verify = match (mode, &ca_key) {
            (Mode::Strict, Some(key)) => match index.ca_secret(key) {
                Ok(roots) => Verify::Roots(roots),
                Err(why) => {
                    let annotation = o
                        .ca_secret
                        .as_ref()
                        .map(|r| r.key.as_str())
                        .unwrap_or_default();
                    problems.push((super::annotations::annotation_key(annotation), why));
                    // Still verified: against the system's roots, never silently off.
                    Verify::SystemRoots
                }
            },
            (Mode::Strict, None) => Verify::SystemRoots,
            _ => Verify::Off,
        };
        let client_cert = client_key.and_then(|key| match index.tls_secret(&key) {
            Ok(ck) => Some(ck),
            Err(why) => {
                let annotation = o
                    .client_cert_secret
                    .as_ref()
                    .map(|r| r.key.as_str())
                    .unwrap_or_default();
                problems.push((super::annotations::annotation_key(annotation), why));
                None
            }
        });
        Some((verify, o.server_name.clone().map(|(_, n)| n), client_cert))
    };
    let defaults = OriginTimeouts::default();
    Template {
        tls,
        h2c,
        balance: o.balance.clone(),
        retries: o.retries.clone(),
        timeouts: OriginTimeouts {
            connect: o.connect_timeout.unwrap_or(defaults.connect),
            response_header: o.read_timeout.unwrap_or(defaults.response_header),
            idle: defaults.idle,
        },
    }
}

impl Template {
    /// The origin for `target`.
    pub(super) fn origin(&self, target: Target) -> Origin {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let servers = target
            .servers
            .into_iter()
            .map(|(host, port)| {
                let bracketed = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                OriginServer {
                    url: format!("{scheme}://{bracketed}:{port}"),
                    host,
                    port,
                    weight: 1,
                }
            })
            .collect();
        let transport = match &self.tls {
            None => Transport::Plain,
            Some((verify, server_name, client_cert)) => Transport::Tls(OriginTls {
                // Pod and cluster IPs are verified against the Service's DNS name.
                server_name: server_name.clone().or(target.service_dns),
                verify: verify.clone(),
                client_cert: client_cert.clone(),
            }),
        };
        let mut origin = Origin::with_servers(format!("k8s:{}", target.label), servers, transport);
        origin.h2c = self.h2c;
        if let Some(balance) = &self.balance {
            origin.balance = balance.clone();
        }
        if let Some(retries) = &self.retries {
            origin.retries = retries.clone();
        }
        origin.timeouts = self.timeouts;
        origin
    }
}
