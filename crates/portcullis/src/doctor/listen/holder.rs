//! Who holds a TCP port: the LISTEN sockets of `/proc/net/tcp` and `/proc/net/tcp6`, and the
//! process whose `/proc/PID/fd` links to the socket's inode. Only what this user may read is
//! seen: a process of another user (without root) or of another network namespace stays
//! unknown.

#![allow(
    clippy::disallowed_methods,
    reason = "reads /proc synchronously; called only inside spawn_blocking"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// The kernel's state number for a listening socket.
const TCP_LISTEN: u8 = 0x0A;
/// Largest `/proc/net/tcp*` file read; a machine with more sockets than this is not the
/// case the doctor is for, and the read stays bounded.
const MAX_TABLE: u64 = 32 << 20;
/// Processes and descriptors looked at, at most.
const MAX_PROCS: usize = 65_536;
const MAX_FDS_PER_PROC: usize = 1 << 20;

/// A listening socket from `/proc/net/tcp*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSocket {
    /// Its local address.
    pub addr: SocketAddr,
    /// Its inode, as in `socket:[inode]`.
    pub inode: u64,
}

/// The process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// The file name of `/proc/PID/exe`, when readable.
    pub exe: Option<String>,
    /// `/proc/PID/cmdline`, arguments joined by spaces, cut at 200 characters.
    pub cmdline: String,
}

impl Holder {
    /// Whether this is a portcullis gateway.
    pub fn is_portcullis(&self) -> bool {
        self.comm == "portcullis" || self.exe.as_deref() == Some("portcullis")
    }
}

/// What is known about whoever listens on `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The socket and its process.
    Found(ListenSocket, Holder),
    /// A listening socket, but no process of this user links to it.
    SocketOnly(ListenSocket),
    /// No listening socket on that port in this network namespace.
    NoSocket,
}

/// Finds the listener that keeps `addr` from being bound.
pub fn find(addr: SocketAddr) -> Lookup {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Some(text) = read_bounded(Path::new(table), MAX_TABLE) {
            sockets.extend(parse_table(&text));
        }
    }
    let Some(socket) = conflicting(&sockets, addr) else {
        return Lookup::NoSocket;
    };
    match process_of(socket.inode) {
        Some(holder) => Lookup::Found(socket, holder),
        None => Lookup::SocketOnly(socket),
    }
}

/// The socket among `sockets` that conflicts with binding `addr`: same port, and the same
/// address or an all-interfaces one on either side; an exact address match first.
pub fn conflicting(sockets: &[ListenSocket], addr: SocketAddr) -> Option<ListenSocket> {
    let same_port = sockets.iter().filter(|s| s.addr.port() == addr.port());
    let exact = same_port
        .clone()
        .find(|s| canonical(s.addr.ip()) == canonical(addr.ip()));
    exact
        .or_else(|| {
            same_port
                .clone()
                .find(|s| s.addr.ip().is_unspecified() || addr.ip().is_unspecified())
        })
        .cloned()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The LISTEN sockets of a `/proc/net/tcp` or `/proc/net/tcp6` table; lines that do not
/// parse are skipped.
pub fn parse_table(text: &str) -> Vec<ListenSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            if state != TCP_LISTEN {
                return None;
            }
            let addr = parse_addr(fields.get(1)?)?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(ListenSocket { addr, inode })
        })
        .collect()
}

/// `0100007F:01BB` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word of the
/// address is printed as the number its network-order bytes make in this machine's order.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The process with a descriptor on socket `inode`, if this user can see it.
fn process_of(inode: u64) -> Option<Holder> {
    let wanted = format!("socket:[{inode}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.take(MAX_PROCS).flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.take(MAX_FDS_PER_PROC).flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
        });
        if holds {
            return Some(describe(pid));
        }
    }
    None
}

fn describe(pid: u32) -> Holder {
    let dir = Path::new("/proc").join(pid.to_string());
    let comm = read_bounded(&dir.join("comm"), 64)
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default();
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let cmdline = read_bounded(&dir.join("cmdline"), 4096)
        .map(|c| {
            let joined = c.trim_end_matches('\0').replace('\0', " ");
            joined.chars().take(200).collect()
        })
        .unwrap_or_default();
    Holder {
        pid,
        comm,
        exe,
        cmdline,
    }
}

/// At most `limit` bytes of a file, as text (invalid UTF-8 replaced).
fn read_bounded(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real lines from this machine's /proc/net/tcp and tcp6 (x86_64, little-endian).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:01BB 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
   garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5252 1 0000000000000000 100 0 0 10 0
";

    #[cfg(target_endian = "little")]
    #[test]
    fn listening_sockets_are_read_from_both_tables() {
        let v4 = parse_table(TCP);
        assert_eq!(
            v4,
            vec![
                ListenSocket {
                    addr: "127.0.0.1:443".parse().unwrap(),
                    inode: 4242
                },
                ListenSocket {
                    addr: "0.0.0.0:80".parse().unwrap(),
                    inode: 4343
                },
            ]
        );
        let v6 = parse_table(TCP6);
        assert_eq!(v6[0].addr, "[::1]:8080".parse().unwrap());
        assert_eq!(v6[1].addr, "[::ffff:127.0.0.1]:9090".parse().unwrap());
        assert_eq!(v6[1].inode, 5252);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_conflicting_socket_is_the_exact_one_or_an_all_interfaces_one() {
        let mut all = parse_table(TCP);
        all.extend(parse_table(TCP6));
        let at = |a: &str| conflicting(&all, a.parse().unwrap()).map(|s| s.inode);
        assert_eq!(at("127.0.0.1:443"), Some(4242));
        assert_eq!(at("0.0.0.0:443"), Some(4242));
        assert_eq!(at("10.1.2.3:80"), Some(4343));
        assert_eq!(at("127.0.0.1:9090"), Some(5252));
        assert_eq!(at("10.1.2.3:443"), None);
        assert_eq!(at("127.0.0.1:22"), None);
    }
}
