//! `names`: whether each host of each site resolves (A and AAAA) to an address of this
//! machine or to a `--public-address`; otherwise browsers, and ACME's HTTP-01 and
//! TLS-ALPN-01 validations, go somewhere else. Names are resolved by the system's resolver,
//! or with `--resolver` by asking that DNS server directly.
//!
//! An address is this machine's when a socket can be bound to it: the kernel's own answer,
//! covering every interface and all of 127.0.0.0/8, with no interface enumeration to keep
//! in step (and no `unsafe` `getifaddrs`, which the workspace forbids); see [`local`] for
//! machines where any address binds.

mod dns;
mod local;

use std::net::IpAddr;

use portcullis_config::{HostPattern, Site, SiteTls};

use self::local::Local;
use super::{Context, Entry, Finding, probe_name};

const CHECK: &str = "names";

/// The names findings: one per host of each selected site.
pub(super) async fn check(ctx: &Context) -> Vec<Entry> {
    let local = tokio::task::spawn_blocking(local::Local::read)
        .await
        .unwrap_or_default();
    let local = &local;
    let checks = ctx.sites.iter().flat_map(|site| {
        site.hosts.iter().map(move |host| async move {
            Entry::site(site, check_host(ctx, local, site, host).await)
        })
    });
    futures_util::future::join_all(checks).await
}

async fn check_host(ctx: &Context, local: &Local, site: &Site, host: &HostPattern) -> Finding {
    let subject = host.to_string();
    let name = probe_name(host);
    if host.is_ip() {
        let Ok(ip) = name.parse::<IpAddr>() else {
            return Finding::ok(CHECK, subject, "an IP address");
        };
        return if is_ours(ctx, local, ip) {
            Finding::ok(CHECK, subject, "an IP address of this machine")
        } else {
            Finding::warn(
                CHECK,
                subject,
                format!("an IP address, but {ip} is not an address of this machine"),
                format!(
                    "serve an address of this machine, or pass `--public-address {ip}` if a \
                     NAT or load balancer forwards it here"
                ),
            )
        };
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return Finding::ok(
            CHECK,
            subject,
            "a localhost name: browsers resolve it to loopback themselves (RFC 6761); \
             reachable from this machine only",
        );
    }
    let probed = if name == subject {
        String::new()
    } else {
        format!(" (probed as {name})")
    };
    let resolved = match resolve(ctx, &name).await {
        Ok(addresses) => addresses,
        Err(why) => {
            return Finding::fail(
                CHECK,
                subject.clone(),
                format!("{why}{probed}"),
                format!(
                    "create an A (and AAAA) record for {subject} pointing at this machine's \
                     public address"
                ),
            );
        }
    };
    let (ours, elsewhere): (Vec<IpAddr>, Vec<IpAddr>) =
        resolved.iter().partition(|ip| is_ours(ctx, local, **ip));
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fix = format!(
        "point the A/AAAA records of {subject} at this machine, or pass `--public-address {}` \
         if a NAT or load balancer forwards that address here",
        elsewhere
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    if elsewhere.is_empty() {
        return Finding::ok(
            CHECK,
            subject,
            format!(
                "resolves to {}{probed}: this machine{}",
                list(&ours),
                if ctx.public_addresses.is_empty() {
                    ""
                } else {
                    " (or its public address)"
                }
            ),
        );
    }
    let acme = matches!(site.tls, SiteTls::Acme { .. });
    let which = if elsewhere.len() == 1 {
        "which is not an address"
    } else {
        "none of which is an address"
    };
    if ours.is_empty() {
        let message = format!(
            "resolves to {}{probed}, {which} of this machine; {}",
            list(&elsewhere),
            if acme {
                "ACME HTTP-01/TLS-ALPN-01 validations will go there and fail"
            } else {
                "browsers go there, not to this gateway"
            }
        );
        return if acme {
            Finding::fail(CHECK, subject, message, fix)
        } else {
            Finding::warn(CHECK, subject, message, fix)
        };
    }
    Finding::warn(
        CHECK,
        subject,
        format!(
            "resolves to {} (this machine) and to {}{probed}, {which} of this machine: some \
             clients{} go elsewhere",
            list(&ours),
            list(&elsewhere),
            if acme { " and ACME validations" } else { "" }
        ),
        fix,
    )
}

/// Whether `ip` is this machine's: one of its addresses, or a `--public-address`.
fn is_ours(ctx: &Context, local: &Local, ip: IpAddr) -> bool {
    ctx.public_addresses.contains(&ip) || local.holds(ip)
}

/// The addresses of `name`; an error in words when there are none.
async fn resolve(ctx: &Context, name: &str) -> Result<Vec<IpAddr>, String> {
    let Some(server) = ctx.resolver else {
        let looked = tokio::time::timeout(ctx.timeout, tokio::net::lookup_host((name, 0))).await;
        return match looked {
            Err(_) => Err(format!(
                "the system resolver gave no answer within {:?}",
                ctx.timeout
            )),
            Ok(Err(e)) => Err(format!("does not resolve: {e}")),
            Ok(Ok(addrs)) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                dedup(&mut ips);
                if ips.is_empty() {
                    Err("does not resolve: no A or AAAA records".to_owned())
                } else {
                    Ok(ips)
                }
            }
        };
    };
    let (a, aaaa) = tokio::join!(
        dns::query(server, name, dns::A, ctx.timeout),
        dns::query(server, name, dns::AAAA, ctx.timeout),
    );
    let mut ips = Vec::new();
    let mut nxdomain = false;
    let mut errors = Vec::new();
    for answer in [a, aaaa] {
        match answer {
            Ok(dns::Answer::Addresses(found)) => ips.extend(found),
            Ok(dns::Answer::NoSuchName) => nxdomain = true,
            Err(e) => errors.push(e.to_string()),
        }
    }
    dedup(&mut ips);
    if !ips.is_empty() {
        return Ok(ips);
    }
    if let Some(e) = errors.first() {
        return Err(format!("cannot be resolved: {e}"));
    }
    Err(if nxdomain {
        format!("does not resolve: {server} answers NXDOMAIN (no such name)")
    } else {
        format!("does not resolve: {server} has no A or AAAA records for it")
    })
}

fn dedup(ips: &mut Vec<IpAddr>) {
    let mut seen = Vec::with_capacity(ips.len());
    ips.retain(|ip| {
        if seen.contains(ip) {
            false
        } else {
            seen.push(*ip);
            true
        }
    });
}
