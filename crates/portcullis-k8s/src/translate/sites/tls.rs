//! `spec.tls`: each host's certificate, from a Secret, from ACME, or the default one.

use k8s_openapi::api::networking::v1::Ingress;
use portcullis_config::{HostPattern, SiteTls};

use super::{AcmeFollower, Builder, Claimed, parse_host};
use crate::snapshot::ObjectKey;
use crate::translate::K8sProblem;
use crate::translate::annotations::Settings;

impl Builder<'_> {
    /// `spec.tls`: each host's certificate. Entries listing hosts come first; an entry
    /// without hosts then covers the Ingress's rule hosts its certificate is valid for that
    /// no entry claimed.
    pub(super) fn tls(
        &mut self,
        key: &ObjectKey,
        ingress: &Ingress,
        settings: &Settings,
        rule_hosts: &[HostPattern],
    ) {
        let entries = ingress
            .spec
            .iter()
            .flat_map(|s| s.tls.iter().flatten())
            .enumerate();
        let (listed, unlisted): (Vec<_>, Vec<_>) =
            entries.partition(|(_, t)| t.hosts.as_ref().is_some_and(|h| !h.is_empty()));
        for (i, tls) in listed.into_iter().chain(unlisted) {
            let secret = tls
                .secret_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|name| ObjectKey {
                    namespace: key.namespace.clone(),
                    name: name.to_owned(),
                });
            let explicit = tls.hosts.as_ref().is_some_and(|h| !h.is_empty());
            let mut acme = settings.acme || self.options.acme_all;
            if acme && !explicit {
                if settings.acme {
                    self.problem(
                        key,
                        format!("tls[{i}].hosts"),
                        "ACME needs the hosts to order a certificate for; list them",
                    );
                }
                acme = false;
            }
            if acme && secret.is_none() {
                self.problem(
                    key,
                    format!("tls[{i}].secretName"),
                    "ACME stores the certificate in a Secret; name one",
                );
                acme = false;
            }
            if acme
                && let Some(s) = &secret
                && self.index.cert_manager_managed(s)
            {
                self.problem(
                    key,
                    format!("tls[{i}].secretName"),
                    format!("secret {s} is managed by cert-manager; Portcullis only reads it"),
                );
                acme = false;
            }
            if acme && !self.acme_possible {
                self.problems.push(K8sProblem::controller(
                    "acme.challenge",
                    "`http-01` is answered on the plain HTTP listener, but `listen.http` is off in the base config; ACME hosts read their Secrets instead",
                ));
                acme = false;
            }
            // The Secret as a certificate, read once per entry.
            let read = match &secret {
                Some(s) if !acme || !self.options.acme_issuer => Some(self.index.tls_secret(s)),
                _ => None,
            };
            if !acme && let Some(Err(why)) = &read {
                self.problem(key, format!("tls[{i}].secretName"), why.clone());
            }
            let hosts: Vec<(String, HostPattern)> = if explicit {
                let mut out = Vec::new();
                for (j, text) in tls.hosts.iter().flatten().enumerate() {
                    match parse_host(text) {
                        Ok(h) => out.push((format!("tls[{i}].hosts[{j}]"), h)),
                        Err(why) => self.problem(key, format!("tls[{i}].hosts[{j}]"), why),
                    }
                }
                out
            } else {
                rule_hosts
                    .iter()
                    .filter(|h| match (&read, &secret) {
                        (Some(Ok(_)), Some(s)) => self.index.covers(s, h),
                        _ => true,
                    })
                    .filter(|h| {
                        self.sites
                            .get(&h.to_string())
                            .is_none_or(|s| s.tls.is_none())
                    })
                    .map(|h| (format!("tls[{i}]"), h.clone()))
                    .collect()
            };
            for (hkey, host) in hosts {
                let existing = self
                    .site(Some(&host))
                    .tls
                    .as_ref()
                    .map(|c| (c.owner.clone(), c.value.0.clone()));
                if let Some((owner, first)) = existing {
                    if first != secret {
                        let from = first.map_or_else(
                            || "the default certificate".to_owned(),
                            |s| format!("secret {s}"),
                        );
                        self.problem(
                            key,
                            hkey,
                            format!(
                                "{host} already takes its certificate from {from} (ingress {owner})"
                            ),
                        );
                    }
                    continue;
                }
                let host_acme = acme
                    && match &host {
                        HostPattern::Wildcard(_) => {
                            self.problem(
                                key,
                                hkey.clone(),
                                format!("{host}: wildcard certificates need the DNS-01 challenge, which Portcullis does not answer yet; the Secret is read instead"),
                            );
                            false
                        }
                        _ => true,
                    };
                // A Secret holds one certificate, and the ACME manager orders one per site:
                // a second host naming an ACME Secret already taken follows the first, and
                // `finish` makes them one site (one order for both names) when they route
                // alike, or reports the follower. Two orders stored in one Secret would
                // replace each other there by turns.
                let follows = match secret.as_ref().filter(|_| host_acme) {
                    Some(s) => self
                        .acme_hosts
                        .get(s)
                        .filter(|first| **first != host.to_string())
                        .cloned(),
                    None => None,
                };
                if let (Some(first), Some(s)) = (follows, &secret) {
                    let first_tls = self
                        .sites
                        .get(&first)
                        .and_then(|b| b.tls.as_ref())
                        .map(|c| c.value.1.clone())
                        .unwrap_or(SiteTls::None);
                    self.acme_followers.push(AcmeFollower {
                        secret: s.clone(),
                        first,
                        host: host.to_string(),
                        ingress: key.clone(),
                        key: hkey.clone(),
                    });
                    self.site(Some(&host)).tls = Some(Claimed {
                        owner: key.clone(),
                        value: (secret.clone(), first_tls),
                    });
                    continue;
                }
                let site_tls = match (&secret, host_acme) {
                    (Some(s), true) => {
                        self.acme_hosts
                            .entry(s.clone())
                            .or_insert_with(|| host.to_string());
                        self.acme_secrets.insert(host.to_string(), s.clone());
                        if self.options.acme_issuer {
                            SiteTls::Acme {
                                fallback_local: false,
                            }
                        } else {
                            // A follower serves what the leader stored, once it has.
                            match self.index.tls_secret(s) {
                                Ok(ck) => SiteTls::Files(ck),
                                Err(_) => SiteTls::None,
                            }
                        }
                    }
                    (Some(s), false) => match self.index.tls_secret(s) {
                        // A certificate that does not name the host would fail every
                        // client's check: the default certificate may do better (as
                        // ingress-nginx does).
                        Ok(_) if !self.index.covers(s, &host) => {
                            self.problem(
                                key,
                                hkey.clone(),
                                format!("the certificate in secret {s} is not valid for {host}; the default certificate is served for it"),
                            );
                            SiteTls::None
                        }
                        Ok(ck) => SiteTls::Files(ck),
                        Err(why) => {
                            if acme {
                                // Only reported here when the entry was meant for ACME.
                                self.problem(key, format!("tls[{i}].secretName"), why);
                            }
                            SiteTls::None
                        }
                    },
                    (None, _) => SiteTls::None,
                };
                self.site(Some(&host)).tls = Some(Claimed {
                    owner: key.clone(),
                    value: (secret.clone(), site_tls),
                });
            }
        }
    }
}
