//! The Ingress status writer: the leader puts the address clients reach the gateway at into
//! `status.loadBalancer.ingress` of each Ingress it serves, and takes it out again on
//! shutdown or when an Ingress stops being ours.
//!
//! Writes are merge patches of the `/status` subresource, sent only when the status differs
//! from what the Ingress (as the caller last read it) already says, so a sync of thousands
//! of unchanged Ingresses sends no write at all.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::snapshot::ObjectKey;

/// Where the address published in Ingress status comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    /// `--publish-address`: fixed addresses; an IP goes in `ip`, anything else in
    /// `hostname`.
    Addresses(Vec<String>),
    /// `--publish-service NS/NAME`: that Service's `status.loadBalancer.ingress` (its `ip`
    /// and `hostname`) when the load balancer has one, else its `spec.externalIPs`, else
    /// its ClusterIP (none for a headless Service). Read again on every sync, so a load
    /// balancer that gets its address later is published then.
    Service(ObjectKey),
}

impl PublishTarget {
    /// `--publish-address`: one address or several separated by commas (empty entries are
    /// ignored).
    pub fn addresses(text: &str) -> Self {
        Self::Addresses(
            text.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// The status entry for one address: an IP in `ip`, a name in `hostname`.
pub fn load_balancer_entry(address: &str) -> IngressLoadBalancerIngress {
    if address.parse::<IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(address.to_owned()),
            ..IngressLoadBalancerIngress::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(address.to_owned()),
            ..IngressLoadBalancerIngress::default()
        }
    }
}

/// What one [`StatusWriter::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Ingresses whose status was written.
    pub written: usize,
    /// Ingresses whose status was cleared (no longer ours).
    pub cleared: usize,
    /// Ingresses of ours already right (others' are not counted).
    pub unchanged: usize,
    /// Writes that failed (retried at the next sync).
    pub failed: usize,
}

/// Writes Ingress status while this replica leads. Call [`sync`](Self::sync) after every
/// translation and whenever leadership is gained; [`clear`](Self::clear) at shutdown.
pub struct StatusWriter {
    client: Client,
    target: PublishTarget,
    leader: watch::Receiver<bool>,
    /// Per Ingress, the resourceVersion it had when we last wrote it, what we wrote, and
    /// the resourceVersion our write gave it: a sync from a snapshot that has not yet seen
    /// our write does not write the same thing again.
    written: HashMap<ObjectKey, Written>,
}

struct Written {
    before: Option<String>,
    after: Option<String>,
    value: Vec<IngressLoadBalancerIngress>,
}

impl StatusWriter {
    /// A writer publishing `target`, acting only while `leader` is `true`.
    pub fn new(client: Client, target: PublishTarget, leader: watch::Receiver<bool>) -> Self {
        Self {
            client,
            target,
            leader,
            written: HashMap::new(),
        }
    }

    /// The entries to publish now (for a Service target, read from the API server).
    pub async fn resolve(&self) -> Result<Vec<IngressLoadBalancerIngress>, kube::Error> {
        match &self.target {
            PublishTarget::Addresses(a) => Ok(a.iter().map(|a| load_balancer_entry(a)).collect()),
            PublishTarget::Service(key) => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
                Ok(service_addresses(&api.get(&key.name).await?))
            }
        }
    }

    /// Brings the status of `ingresses` (every Ingress the caller knows, as last read) in
    /// line: those in `ours` get the published addresses, the others lose them if they
    /// carry exactly ours (an Ingress that moved to another class keeps what its new
    /// controller wrote). Does nothing unless this replica leads. A failed write is counted
    /// and tried again at the next sync.
    pub async fn sync(
        &mut self,
        ingresses: &[Arc<Ingress>],
        ours: &BTreeSet<ObjectKey>,
    ) -> Result<StatusReport, kube::Error> {
        let mut report = StatusReport::default();
        if !*self.leader.borrow() {
            return Ok(report);
        }
        let desired = self.resolve().await?;
        self.written.retain(|k, _| ours.contains(k));
        for ingress in ingresses {
            let Some(key) = key_of(ingress) else { continue };
            let current = current_status(ingress);
            let want = if ours.contains(&key) {
                desired.clone()
            } else if !current.is_empty() && current == desired {
                Vec::new()
            } else {
                continue;
            };
            let rv = ingress.metadata.resource_version.clone();
            let stale = self.written.get(&key).is_some_and(|w| {
                w.value == want && rv.is_some() && (w.before == rv || w.after == rv)
            });
            if current == want || stale {
                report.unchanged += 1;
                continue;
            }
            if !*self.leader.borrow() {
                break; // stepped down mid-sync
            }
            match self.patch(&key, &want).await {
                Ok(after) => {
                    if want.is_empty() {
                        report.cleared += 1;
                        self.written.remove(&key);
                    } else {
                        report.written += 1;
                        self.written.insert(
                            key,
                            Written {
                                before: rv,
                                after,
                                value: want,
                            },
                        );
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    warn!(ingress = %key, error = %e, "cannot write the Ingress status");
                }
            }
        }
        debug!(?report, "Ingress status synced");
        Ok(report)
    }

    /// Clears the status of `ingresses` that carry anything (at shutdown, while still
    /// leading: call it before releasing the Lease). Best effort: failures are logged.
    pub async fn clear(&mut self, ingresses: &[Arc<Ingress>], ours: &BTreeSet<ObjectKey>) -> usize {
        if !*self.leader.borrow() {
            return 0;
        }
        let mut cleared = 0;
        for ingress in ingresses {
            let Some(key) = key_of(ingress) else { continue };
            // Also one we wrote that the caller's copy does not show yet.
            let carries = !current_status(ingress).is_empty() || self.written.contains_key(&key);
            if !ours.contains(&key) || !carries {
                continue;
            }
            match self.patch(&key, &[]).await {
                Ok(_) => cleared += 1,
                Err(e) => warn!(ingress = %key, error = %e, "cannot clear the Ingress status"),
            }
        }
        self.written.clear();
        cleared
    }

    /// A merge patch of `/status`; an empty list removes the entries. Gives the new
    /// resourceVersion.
    async fn patch(
        &self,
        key: &ObjectKey,
        entries: &[IngressLoadBalancerIngress],
    ) -> Result<Option<String>, kube::Error> {
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), &key.namespace);
        let ingress = if entries.is_empty() {
            serde_json::Value::Null
        } else {
            json!(entries)
        };
        let patch = json!({ "status": { "loadBalancer": { "ingress": ingress } } });
        let written = api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(written.metadata.resource_version)
    }
}

/// The addresses a Service offers, in the order documented on [`PublishTarget::Service`].
pub fn service_addresses(service: &Service) -> Vec<IngressLoadBalancerIngress> {
    let from_lb: Vec<_> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|e| e.ip.is_some() || e.hostname.is_some())
        .map(|e| IngressLoadBalancerIngress {
            ip: e.ip.clone(),
            hostname: e.hostname.clone(),
            ..IngressLoadBalancerIngress::default()
        })
        .collect();
    if !from_lb.is_empty() {
        return from_lb;
    }
    let spec = service.spec.as_ref();
    let external: Vec<_> = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| load_balancer_entry(ip))
        .collect();
    if !external.is_empty() {
        return external;
    }
    spec.and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .map(|ip| vec![load_balancer_entry(ip)])
        .unwrap_or_default()
}

fn key_of(ingress: &Ingress) -> Option<ObjectKey> {
    Some(ObjectKey {
        namespace: ingress.metadata.namespace.clone()?,
        name: ingress.metadata.name.clone()?,
    })
}

fn current_status(ingress: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    #[test]
    fn an_ip_goes_in_ip_a_name_in_hostname() {
        assert_eq!(
            load_balancer_entry("203.0.113.7").ip.as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            load_balancer_entry("2001:db8::1").ip.as_deref(),
            Some("2001:db8::1")
        );
        let e = load_balancer_entry("lb.example.com");
        assert_eq!(
            (e.ip, e.hostname.as_deref()),
            (None, Some("lb.example.com"))
        );
        assert_eq!(
            PublishTarget::addresses(" 192.0.2.1, lb.example ,"),
            PublishTarget::Addresses(vec!["192.0.2.1".into(), "lb.example".into()])
        );
    }

    #[test]
    fn a_service_offers_its_load_balancer_then_external_ips_then_cluster_ip() {
        let mut svc = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.0.0.9".into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        assert_eq!(service_addresses(&svc)[0].ip.as_deref(), Some("10.0.0.9"));
        svc.spec.as_mut().unwrap().external_ips = Some(vec!["198.51.100.4".into()]);
        assert_eq!(
            service_addresses(&svc)[0].ip.as_deref(),
            Some("198.51.100.4")
        );
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    hostname: Some("abc.elb.example".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        });
        let got = service_addresses(&svc);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].hostname.as_deref(), Some("abc.elb.example"));
        let headless = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        assert!(service_addresses(&headless).is_empty());
    }
}
