//! An Ingress backend (`service.name` + `service.port`) to the servers it stands for: ready
//! pod endpoints from EndpointSlices, an ExternalName, or the Service's cluster IP.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::networking::v1::IngressServiceBackend;
use portcullis_config::HostPattern;

use super::index::Index;

/// The Service annotation that sends traffic to its cluster IP instead of its endpoints.
pub(super) const SERVICE_UPSTREAM: &str = "portcullis.dev/service-upstream";

/// Where a backend's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// `NS/SERVICE:PORT`, the origin's label (stable while endpoints come and go).
    pub(super) label: String,
    /// (host, port): IPs without brackets, or the ExternalName.
    pub(super) servers: Vec<(String, u16)>,
    /// The Service's DNS name (`NAME.NS.svc`), the name verified in `strict` mode when the
    /// servers are addresses.
    pub(super) service_dns: Option<String>,
}

/// Why a backend resolves to nothing: the key below `...backend` and the message.
pub(super) type Refusal = (&'static str, String);

/// Resolves `backend` in `namespace`. `cluster_ip` is the Ingress's `service-upstream`.
pub(super) fn resolve(
    index: &Index<'_>,
    namespace: &str,
    backend: &IngressServiceBackend,
    cluster_ip: bool,
) -> Result<Target, (Target, Refusal)> {
    let name = backend.name.as_str();
    let port_ref = backend.port.as_ref();
    let port_text = match port_ref {
        Some(p) => match (p.number, p.name.as_deref()) {
            (Some(n), _) => n.to_string(),
            (None, Some(n)) => n.to_owned(),
            (None, None) => String::new(),
        },
        None => String::new(),
    };
    let empty = Target {
        label: format!("{namespace}/{name}:{port_text}"),
        servers: Vec::new(),
        service_dns: None,
    };
    let refuse = |key, message: String| Err((empty.clone(), (key, message)));
    if name.is_empty() {
        return refuse(".service.name", "a Service name is required".to_owned());
    }
    let Some(service) = index.service(namespace, name) else {
        return refuse(
            ".service.name",
            format!("service {name} does not exist in namespace {namespace}"),
        );
    };
    let spec = service.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let external = spec
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "ExternalName");
    let (number, port_name) = match port_ref.map(|p| (p.number, p.name.as_deref())) {
        Some((Some(n), _)) => (Some(n), None),
        Some((None, Some(n))) if !n.is_empty() => (None, Some(n)),
        _ => {
            return refuse(
                ".service.port",
                "a port number or name is required".to_owned(),
            );
        }
    };
    let found = ports.iter().find(|p| match (number, port_name) {
        (Some(n), _) => p.port == n,
        (None, Some(n)) => p.name.as_deref() == Some(n),
        _ => false,
    });
    let service_port: ServicePort = match (found, number) {
        (Some(p), _) => p.clone(),
        // An ExternalName Service need not list its ports: the number is the port.
        (None, Some(n)) if external => ServicePort {
            port: n,
            ..ServicePort::default()
        },
        (None, Some(n)) => {
            return refuse(".service.port", format!("service {name} has no port {n}"));
        }
        (None, None) => {
            let n = port_name.unwrap_or_default();
            return refuse(
                ".service.port",
                format!("service {name} has no port named {n}"),
            );
        }
    };
    let Ok(port) = u16::try_from(service_port.port) else {
        return refuse(
            ".service.port",
            format!(
                "service {name} port {} is not a TCP port",
                service_port.port
            ),
        );
    };
    let target = |servers| Target {
        servers,
        service_dns: Some(format!("{name}.{namespace}.svc")),
        ..empty.clone()
    };
    if external {
        return match external_name(service) {
            Ok(host) => Ok(Target {
                servers: vec![(host, port)],
                ..empty.clone()
            }),
            Err(why) => refuse(".service.name", format!("service {name}: {why}")),
        };
    }
    let annotated = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_UPSTREAM))
        .is_some_and(|v| v.trim() == "true");
    if cluster_ip || annotated {
        let ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        return match ip.parse::<IpAddr>() {
            Ok(ip) => Ok(target(vec![(ip.to_string(), port)])),
            Err(_) if ip == "None" => refuse(
                ".service.name",
                format!(
                    "service {name} is headless (clusterIP None): service-upstream needs a cluster IP"
                ),
            ),
            Err(_) => refuse(
                ".service.name",
                format!("service {name} has no cluster IP yet"),
            ),
        };
    }
    Ok(target(endpoints(index, namespace, name, &service_port)))
}

/// Ready endpoints of `service`'s `port`, sorted and without duplicates. A slice port
/// matches by name as Kubernetes matches them (an unnamed Service port matches the slice
/// port without a name); its number is the server's port.
fn endpoints(
    index: &Index<'_>,
    namespace: &str,
    service: &str,
    port: &ServicePort,
) -> Vec<(String, u16)> {
    let want = port.name.as_deref().unwrap_or_default();
    let mut servers: Vec<(IpAddr, u16)> = Vec::new();
    for slice in index.slices(namespace, service) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == want)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    servers.push((ip, number));
                }
            }
        }
    }
    servers.sort_unstable();
    servers.dedup();
    servers
        .into_iter()
        .map(|(ip, port)| (ip.to_string(), port))
        .collect()
}

/// An ExternalName that does not point back into the gateway's own machine.
fn external_name(service: &Service) -> Result<String, String> {
    let name = service
        .spec
        .as_ref()
        .and_then(|s| s.external_name.as_deref())
        .unwrap_or_default()
        .trim();
    if name.is_empty() {
        return Err("type ExternalName without spec.externalName".to_owned());
    }
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let refused = || {
        Err(format!(
            "externalName {lower} points at the gateway's own machine (localhost, loopback, unspecified or link-local addresses are refused)"
        ))
    };
    if lower == "localhost" || lower.ends_with(".localhost") {
        return refused();
    }
    let bare = lower.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let local = match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local(),
        };
        return if local { refused() } else { Ok(ip.to_string()) };
    }
    match HostPattern::parse(&lower) {
        Ok(HostPattern::Exact(host)) => Ok(host),
        _ => Err(format!("externalName {lower} is not a DNS name")),
    }
}
