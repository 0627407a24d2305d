//! `listening`: whether each listener of the config (HTTPS, plain HTTP, a TCP admin
//! listener) can be bound, or is bound by this gateway; who holds it otherwise; the fixes
//! for a privileged port; a public listener on loopback only; local firewall rules that
//! drop its port.

mod firewall;
mod holder;

use std::io;
use std::net::SocketAddr;

use portcullis_config::AdminListen;

use super::{Context, Entry, Finding};

const CHECK: &str = "listening";

/// One listener of the config.
#[derive(Debug, Clone, Copy)]
struct Listener {
    /// Its config key: `listen.https`, `listen.http`, `admin.listen`.
    key: &'static str,
    /// How a person calls it.
    what: &'static str,
    addr: SocketAddr,
    /// Whether other machines are meant to reach it (the admin listener is not).
    public: bool,
}

/// The listening findings.
pub(super) async fn check(ctx: &Context) -> Vec<Entry> {
    let mut listeners = vec![Listener {
        key: "listen.https",
        what: "the HTTPS listener",
        addr: ctx.config.listen.https,
        public: true,
    }];
    if let Some(addr) = ctx.config.listen.http {
        listeners.push(Listener {
            key: "listen.http",
            what: "the plain HTTP listener",
            addr,
            public: true,
        });
    }
    if let Some(AdminListen::Tcp(addr)) = ctx.config.admin.listen {
        listeners.push(Listener {
            key: "admin.listen",
            what: "the admin listener",
            addr,
            public: false,
        });
    }
    let timeout = ctx.timeout;
    let checks = listeners.into_iter().map(|l| async move {
        let mut findings = vec![bind_finding(l, timeout).await];
        if l.public && l.addr.ip().is_loopback() {
            findings.push(loopback_finding(l));
        }
        if l.public && l.addr.port() != 0 {
            findings.extend(firewall_findings(l, timeout).await);
        }
        findings
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .map(Entry::gateway)
        .collect()
}

/// Tries to bind `l` the way the gateway does (SO_REUSEADDR, then listen) and closes it.
async fn bind_finding(l: Listener, timeout: std::time::Duration) -> Finding {
    let subject = l.addr.to_string();
    if l.addr.port() == 0 {
        return Finding::ok(
            CHECK,
            subject,
            format!(
                "{} ({}): port 0: the system picks a free port when the gateway starts",
                l.what, l.key
            ),
        );
    }
    let err = match try_bind(l.addr) {
        Ok(()) => {
            return Finding::ok(
                CHECK,
                subject,
                format!(
                    "{} ({}): free: the gateway can bind it (so the gateway is not running \
                     with this config)",
                    l.what, l.key
                ),
            );
        }
        Err(e) => e,
    };
    match err.kind() {
        io::ErrorKind::AddrInUse => in_use_finding(l, timeout).await,
        io::ErrorKind::PermissionDenied => {
            let port = l.addr.port();
            Finding::fail(
                CHECK,
                subject,
                format!(
                    "{} ({}): permission denied: port {port} is below \
                     net.ipv4.ip_unprivileged_port_start and this user may not bind it",
                    l.what, l.key
                ),
                format!(
                    "give the binary the capability: `setcap cap_net_bind_service=+ep \
                     $(command -v portcullis)`; or under systemd, \
                     `AmbientCapabilities=CAP_NET_BIND_SERVICE` in the unit's [Service]; or \
                     let every user bind it: `sysctl net.ipv4.ip_unprivileged_port_start={port}`"
                ),
            )
        }
        io::ErrorKind::AddrNotAvailable => Finding::fail(
            CHECK,
            subject,
            format!(
                "{} ({}): {} is not an address of this machine",
                l.what,
                l.key,
                l.addr.ip()
            ),
            format!(
                "set `{}` to an address of this machine, or to all of them: `{}: {}`",
                l.key,
                l.key,
                all_interfaces(l.addr)
            ),
        ),
        _ => Finding::fail(
            CHECK,
            subject,
            format!("{} ({}): cannot be bound: {err}", l.what, l.key),
            format!("choose another address for `{}`", l.key),
        ),
    }
}

fn try_bind(addr: SocketAddr) -> io::Result<()> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Closed at once when dropped.
    socket.listen(1).map(drop)
}

/// The address is in use: by this gateway, or by whom.
async fn in_use_finding(l: Listener, timeout: std::time::Duration) -> Finding {
    let subject = l.addr.to_string();
    let addr = l.addr;
    let lookup = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || holder::find(addr)),
    )
    .await;
    let fix_taken = |who: &str| {
        format!(
            "stop {who}, or move the gateway elsewhere: `{}: {}`",
            l.key,
            other_port(l.addr)
        )
    };
    match lookup {
        Ok(Ok(holder::Lookup::Found(_, h))) if h.is_portcullis() => Finding::ok(
            CHECK,
            subject,
            format!(
                "{} ({}): bound by this gateway (pid {})",
                l.what, l.key, h.pid
            ),
        ),
        Ok(Ok(holder::Lookup::Found(socket, h))) => {
            let name = if h.comm.is_empty() {
                "a process"
            } else {
                &h.comm
            };
            let cmd = if h.cmdline.is_empty() {
                String::new()
            } else {
                format!("; its command line: `{}`", h.cmdline)
            };
            Finding::fail(
                CHECK,
                subject,
                format!(
                    "{} ({}): taken by {name} (pid {}), listening on {}{cmd}",
                    l.what, l.key, h.pid, socket.addr
                ),
                fix_taken(&format!("{name} (pid {})", h.pid)),
            )
        }
        Ok(Ok(holder::Lookup::SocketOnly(socket))) => Finding::fail(
            CHECK,
            subject,
            format!(
                "{} ({}): address in use: a socket listens on {} (inode {}), held by a \
                 process this user cannot see (another user's: run the doctor as root to \
                 name it)",
                l.what, l.key, socket.addr, socket.inode
            ),
            fix_taken(&format!("whatever listens on {}", socket.addr)),
        ),
        Ok(Ok(holder::Lookup::NoSocket)) => Finding::fail(
            CHECK,
            subject,
            format!(
                "{} ({}): address in use, but no listening socket on port {} shows in \
                 /proc/net/tcp or tcp6 (held in another network namespace, or not by a \
                 listener)",
                l.what,
                l.key,
                l.addr.port()
            ),
            fix_taken(&format!("whatever holds port {}", l.addr.port())),
        ),
        Ok(Err(_)) | Err(_) => Finding::fail(
            CHECK,
            subject,
            format!(
                "{} ({}): address in use; who holds it could not be read within {timeout:?}",
                l.what, l.key
            ),
            fix_taken(&format!("whatever holds port {}", l.addr.port())),
        ),
    }
}

fn loopback_finding(l: Listener) -> Finding {
    Finding::warn(
        CHECK,
        l.addr.to_string(),
        format!(
            "{} ({}) is on a loopback address: reachable from this machine only",
            l.what, l.key
        ),
        format!(
            "listen on every interface: `{}: {}`",
            l.key,
            all_interfaces(l.addr)
        ),
    )
}

async fn firewall_findings(l: Listener, timeout: std::time::Duration) -> Vec<Finding> {
    let port = l.addr.port();
    let rules = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || firewall::blocking(port, timeout)),
    )
    .await;
    let Ok(Ok(Some(rules))) = rules else {
        return Vec::new();
    };
    rules
        .into_iter()
        .map(|b| {
            let nft = b.place.starts_with("nftables");
            let unreachable = format!("{} ({}) cannot be reached", l.what, l.key);
            let (message, fix) = if b.policy {
                let message = format!(
                    "{} has {} and no rule in it accepts tcp dport {port}: {unreachable}{}",
                    b.place,
                    b.rule,
                    if b.conditional {
                        ", unless a chain it jumps to accepts it"
                    } else {
                        ""
                    }
                );
                let fix = if nft {
                    format!(
                        "accept the port: `nft add rule {} tcp dport {port} accept`",
                        b.chain
                    )
                } else {
                    format!(
                        "accept the port: `iptables -A INPUT -p tcp --dport {port} -j ACCEPT` \
                         (and keep it in the saved rules)"
                    )
                };
                (message, fix)
            } else {
                let which = if nft {
                    format!(" ({})", b.rule)
                } else {
                    format!(": `{}`", b.rule)
                };
                let message = format!(
                    "{} {} tcp dport {port}{which}: {unreachable}{}",
                    b.place,
                    b.verdict,
                    if b.conditional {
                        " by the clients the rule matches"
                    } else {
                        ""
                    }
                );
                let fix = if nft {
                    format!(
                        "accept the port before that rule, e.g. `nft insert rule {} tcp dport \
                         {port} accept`, or delete the rule (`nft -a list ruleset` shows its \
                         handle)",
                        b.chain
                    )
                } else {
                    format!(
                        "accept the port before that rule: `iptables -I INPUT -p tcp --dport \
                         {port} -j ACCEPT` (and keep it in the saved rules)"
                    )
                };
                (message, fix)
            };
            if b.conditional {
                Finding::warn(CHECK, l.addr.to_string(), message, fix)
            } else {
                Finding::fail(CHECK, l.addr.to_string(), message, fix)
            }
        })
        .collect()
}

/// `addr` with the all-interfaces address of its family.
fn all_interfaces(addr: SocketAddr) -> String {
    if addr.is_ipv4() {
        format!("0.0.0.0:{}", addr.port())
    } else {
        format!("'[::]:{}'", addr.port())
    }
}

/// A suggestion for another port: 8443 for 443, 8080 for 80, else the port plus 1000.
fn other_port(addr: SocketAddr) -> SocketAddr {
    let port = match addr.port() {
        443 => 8443,
        80 => 8080,
        p => p.saturating_add(1000),
    };
    SocketAddr::new(addr.ip(), port)
}
