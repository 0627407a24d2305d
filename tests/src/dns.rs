//! A tiny authoritative DNS server on 127.0.0.1 (UDP, port 0) that a test controls: it
//! answers A and AAAA queries for the names it was given, with an empty answer when the name
//! has no record of that type, NXDOMAIN for any other name, and ignores whatever is not a
//! well-formed one-question query. Names started as truncated get, over UDP, an empty
//! answer with TC set, and their records over TCP on the same port (RFC 7766), as a large
//! answer would. Runs on threads of its own; stopped when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const A: u16 = 1;
const AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// A running server.
pub struct TestDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestDns {
    /// Serves `records`: each name (lowercase, no trailing dot) with its addresses.
    pub fn start(records: &[(&str, &[IpAddr])]) -> Self {
        Self::start_truncating(records, &[])
    }

    /// Serves `records`; the names in `truncated` only over TCP (over UDP: TC set).
    pub fn start_truncating(records: &[(&str, &[IpAddr])], truncated: &[&str]) -> Self {
        let zone: HashMap<String, Vec<IpAddr>> = records
            .iter()
            .map(|(name, ips)| (name.to_ascii_lowercase(), ips.to_vec()))
            .collect();
        let zone = Arc::new(Zone {
            records: zone,
            truncated: truncated.iter().map(|n| n.to_ascii_lowercase()).collect(),
        });
        // UDP and TCP on one port number.
        let (udp, tcp) = (0..20)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
                let tcp = TcpListener::bind(udp.local_addr().unwrap()).ok()?;
                Some((udp, tcp))
            })
            .expect("a port free for both UDP and TCP");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let addr = udp.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, z) = (stop.clone(), zone.clone());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&z, &buf[..n], false) {
                    let _ = udp.send_to(&reply, peer);
                }
            }
        });
        let stopped = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => serve_tcp(&zone, conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// Where it listens (give it to `--resolver`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Zone {
    records: HashMap<String, Vec<IpAddr>>,
    truncated: Vec<String>,
}

/// One query over TCP (a two-byte length, then the message), answered in full.
fn serve_tcp(zone: &Zone, mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut len = [0u8; 2];
    if conn.read_exact(&mut len).is_err() {
        return;
    }
    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
    if conn.read_exact(&mut query).is_err() {
        return;
    }
    if let Some(reply) = answer(zone, &query, true) {
        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        let _ = conn.write_all(&framed);
    }
}

/// The reply to `query`, or `None` for anything that is not a standard query with one
/// question.
fn answer(zone: &Zone, query: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    // A response, or an opcode other than QUERY.
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
        return None;
    }
    if u16::from_be_bytes([header[4], header[5]]) != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        // No compression in a question, and labels of at most 63 bytes.
        if len > 63 || labels.len() > 127 {
            return None;
        }
        let label = query.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    let qtype = u16::from_be_bytes(query.get(at..at + 2)?.try_into().ok()?);
    let qclass = u16::from_be_bytes(query.get(at + 2..at + 4)?.try_into().ok()?);
    let question = query.get(12..at + 4)?;
    let name = labels.join(".");

    let truncate = !over_tcp && zone.truncated.contains(&name);
    let records: Vec<&IpAddr> = match zone.records.get(&name) {
        Some(_) if truncate => Vec::new(),
        Some(ips) if qclass == CLASS_IN => ips
            .iter()
            .filter(|ip| match qtype {
                A => ip.is_ipv4(),
                AAAA => ip.is_ipv6(),
                _ => false,
            })
            .collect(),
        _ => Vec::new(),
    };
    let rcode: u16 = if zone.records.contains_key(&name) {
        0
    } else {
        3
    };
    let tc: u16 = if truncate { 0x0200 } else { 0 };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&header[..2]);
    // QR, AA, RD copied from the query, the code.
    reply.extend_from_slice(&(0x8400 | tc | (flags & 0x0100) | rcode).to_be_bytes());
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&u16::try_from(records.len()).ok()?.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for ip in records {
        reply.extend_from_slice(&[0xc0, 12]);
        let (rtype, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (AAAA, v6.octets().to_vec()),
        };
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&60u32.to_be_bytes());
        reply.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
        reply.extend_from_slice(&data);
    }
    Some(reply)
}
