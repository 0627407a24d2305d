//! Which addresses are this machine's. Normally the kernel answers directly: a socket binds
//! to an address only if it is local (every interface, all of 127.0.0.0/8). With
//! `net.ipv4.ip_nonlocal_bind` (or its IPv6 twin) on, as on keepalived and HAProxy hosts
//! that hold floating addresses, every address binds; then the local routing table
//! (`/proc/net/fib_trie`, its `host LOCAL` entries) and `/proc/net/if_inet6` say instead.

#![allow(
    clippy::disallowed_methods,
    reason = "reads small /proc files; Local::read runs inside spawn_blocking"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// This machine's addresses, as far as the doctor needs them.
#[derive(Debug, Default)]
pub struct Local {
    /// `net.ipv4.ip_nonlocal_bind` is on: binding proves nothing for IPv4.
    v4_nonlocal: bool,
    /// `net.ipv6.ip_nonlocal_bind` is on.
    v6_nonlocal: bool,
    /// The `host LOCAL` networks of the routing table.
    v4: Vec<(Ipv4Addr, u8)>,
    /// The interfaces' IPv6 addresses.
    v6: Vec<Ipv6Addr>,
}

impl Local {
    /// Reads the sysctls and, when one is on, the tables.
    pub fn read() -> Self {
        let on = |path: &str| {
            std::fs::read_to_string(path).is_ok_and(|v| v.trim() != "0" && !v.trim().is_empty())
        };
        let mut local = Self {
            v4_nonlocal: on("/proc/sys/net/ipv4/ip_nonlocal_bind"),
            v6_nonlocal: on("/proc/sys/net/ipv6/ip_nonlocal_bind"),
            ..Self::default()
        };
        if local.v4_nonlocal {
            local.v4 = std::fs::read_to_string("/proc/net/fib_trie")
                .map(|t| parse_fib_trie(&t))
                .unwrap_or_default();
        }
        if local.v6_nonlocal {
            local.v6 = std::fs::read_to_string("/proc/net/if_inet6")
                .map(|t| parse_if_inet6(&t))
                .unwrap_or_default();
        }
        local
    }

    /// Whether `ip` is an address of this machine.
    pub fn holds(&self, ip: IpAddr) -> bool {
        if ip.is_unspecified() {
            return false;
        }
        match ip {
            IpAddr::V4(v4) if self.v4_nonlocal => self.v4.iter().any(|(net, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                u32::from(v4) & mask == u32::from(*net) & mask
            }),
            IpAddr::V6(v6) if self.v6_nonlocal => {
                self.v6.contains(&v6)
                    || v6.is_loopback()
                    || v6
                        .to_ipv4_mapped()
                        .is_some_and(|v4| self.holds(IpAddr::V4(v4)))
            }
            _ => UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok(),
        }
    }
}

/// The `host LOCAL` entries of `/proc/net/fib_trie`: each is a `|-- ADDRESS` line followed
/// by `/LEN host LOCAL`.
pub fn parse_fib_trie(text: &str) -> Vec<(Ipv4Addr, u8)> {
    let mut found = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix('/')
            && line.ends_with("host LOCAL")
            && let (Some(addr), Some(len)) = (
                last,
                rest.split_whitespace()
                    .next()
                    .and_then(|l| l.parse::<u8>().ok()),
            )
            && len <= 32
            && !found.contains(&(addr, len))
        {
            found.push((addr, len));
        }
    }
    found
}

/// The addresses of `/proc/net/if_inet6`: 32 hex digits, network order, first on each line.
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            u128::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)
                .map(Ipv6Addr::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // From a machine with lo and eth0 (192.0.2.2/24, fd00::2/64).
    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
";
    const IF_INET6: &str = "fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
";

    #[test]
    fn with_nonlocal_bind_the_tables_say_which_addresses_are_local() {
        let local = Local {
            v4_nonlocal: true,
            v6_nonlocal: true,
            v4: parse_fib_trie(FIB_TRIE),
            v6: parse_if_inet6(IF_INET6),
        };
        assert_eq!(
            local.v4,
            vec![
                ("127.0.0.0".parse().unwrap(), 8),
                ("127.0.0.1".parse().unwrap(), 32),
                ("192.0.2.2".parse().unwrap(), 32),
            ]
        );
        let holds = |ip: &str| local.holds(ip.parse().unwrap());
        assert!(holds("127.0.0.1") && holds("127.9.9.9") && holds("192.0.2.2"));
        assert!(holds("fd00::2") && holds("::1") && holds("::ffff:192.0.2.2"));
        assert!(!holds("192.0.2.3") && !holds("203.0.113.9") && !holds("fd00::3"));
        assert!(!holds("0.0.0.0"));
    }

    #[test]
    fn without_it_binding_decides() {
        let local = Local::default();
        assert!(local.holds("127.0.0.1".parse().unwrap()));
        assert!(!local.holds("203.0.113.9".parse().unwrap()));
    }
}
