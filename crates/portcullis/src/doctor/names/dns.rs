//! Asks one DNS server directly (`--resolver`): a query for A or AAAA over UDP, again over
//! TCP when the answer is truncated. The answer is untrusted: its id and question must be
//! ours, every length is checked against the message, compression pointers only go back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Record type A.
pub const A: u16 = 1;
/// Record type AAAA.
pub const AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// What a server said about one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The addresses (possibly none: the name exists without records of this type).
    Addresses(Vec<IpAddr>),
    /// NXDOMAIN: the name does not exist.
    NoSuchName,
}

/// Why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Nothing in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// A socket error.
    #[error("cannot ask {0}: {1}")]
    Io(SocketAddr, String),
    /// The server answered with an error code (SERVFAIL, REFUSED, ...).
    #[error("{0} answered {1}")]
    Rcode(SocketAddr, &'static str),
    /// The answer is not a DNS message about our question.
    #[error("{0} sent an answer that cannot be read: {1}")]
    Malformed(SocketAddr, &'static str),
}

/// Asks `server` for the `rtype` records of `name`, within `timeout`.
pub async fn query(
    server: SocketAddr,
    name: &str,
    rtype: u16,
    timeout: Duration,
) -> Result<Answer, DnsError> {
    tokio::time::timeout(timeout, exchange(server, name, rtype))
        .await
        .unwrap_or(Err(DnsError::Timeout(server, timeout)))
}

async fn exchange(server: SocketAddr, name: &str, rtype: u16) -> Result<Answer, DnsError> {
    let io = |e: std::io::Error| DnsError::Io(server, e.to_string());
    let id = random_id();
    let message = encode_query(id, name, rtype).ok_or(DnsError::Malformed(
        server,
        "the name cannot be put in a query",
    ))?;
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    // Connected: datagrams from anyone but the server are dropped by the kernel.
    socket.connect(server).await.map_err(io)?;
    socket.send(&message).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        match decode_answer(&buf[..n], id, name, rtype) {
            Ok(Decoded::Truncated) => return over_tcp(server, &message, id, name, rtype).await,
            Ok(Decoded::Answer(a)) => return Ok(a),
            Err(Problem::Rcode(code)) => return Err(DnsError::Rcode(server, code)),
            // Not an answer to this query (a late one, a forgery): keep waiting.
            Err(Problem::Malformed(_)) => continue,
        }
    }
}

async fn over_tcp(
    server: SocketAddr,
    message: &[u8],
    id: u16,
    name: &str,
    rtype: u16,
) -> Result<Answer, DnsError> {
    let io = |e: std::io::Error| DnsError::Io(server, e.to_string());
    let mut tcp = TcpStream::connect(server).await.map_err(io)?;
    let len =
        u16::try_from(message.len()).map_err(|_| DnsError::Malformed(server, "query too long"))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    tcp.write_all(&framed).await.map_err(io)?;
    let len = tcp.read_u16().await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(len)];
    tcp.read_exact(&mut buf).await.map_err(io)?;
    match decode_answer(&buf, id, name, rtype) {
        Ok(Decoded::Answer(a)) => Ok(a),
        Ok(Decoded::Truncated) => Err(DnsError::Malformed(server, "truncated over TCP")),
        Err(Problem::Rcode(code)) => Err(DnsError::Rcode(server, code)),
        Err(Problem::Malformed(why)) => Err(DnsError::Malformed(server, why)),
    }
}

fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() & 0xffff) as u16
}

/// A query with recursion desired; `None` when `name` is not a valid DNS name.
pub fn encode_query(id: u16, name: &str, rtype: u16) -> Option<Vec<u8>> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    encode_name(&mut m, name)?;
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(m)
}

fn encode_name(m: &mut Vec<u8>, name: &str) -> Option<()> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return None;
    }
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))?;
        m.push(len);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    Some(())
}

/// A decoded answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The answer.
    Answer(Answer),
    /// TC set: ask again over TCP.
    Truncated,
}

/// Why an answer is not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// An error code other than NXDOMAIN.
    Rcode(&'static str),
    /// Not a well-formed answer to our question.
    Malformed(&'static str),
}

/// Reads `msg` as the answer to query `id` for `name`/`rtype`. Records of other types (a
/// CNAME chain's) are skipped; A/AAAA records anywhere in the answer section count, since
/// a chain's last name is not the one asked.
pub fn decode_answer(msg: &[u8], id: u16, name: &str, rtype: u16) -> Result<Decoded, Problem> {
    let bad = Problem::Malformed;
    let u16_at = |at: usize| -> Result<u16, Problem> {
        msg.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(bad("message too short"))
    };
    if u16_at(0)? != id {
        return Err(bad("another query's id"));
    }
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err(bad("a query, not an answer"));
    }
    let qdcount = u16_at(4)?;
    let ancount = u16_at(6)?;
    if qdcount != 1 {
        return Err(bad("not one question"));
    }
    let (qname, mut at) = read_name(msg, 12)?;
    let wanted = name.strip_suffix('.').unwrap_or(name);
    if !qname.eq_ignore_ascii_case(wanted) || u16_at(at)? != rtype || u16_at(at + 2)? != CLASS_IN {
        return Err(bad("an answer to another question"));
    }
    at += 4;
    if flags & 0x0200 != 0 {
        return Ok(Decoded::Truncated);
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Decoded::Answer(Answer::NoSuchName)),
        2 => return Err(Problem::Rcode("SERVFAIL")),
        5 => return Err(Problem::Rcode("REFUSED")),
        _ => return Err(Problem::Rcode("an error code")),
    }
    let mut addresses = Vec::new();
    for _ in 0..ancount {
        let (_, after) = read_name(msg, at)?;
        let rr_type = u16_at(after)?;
        let rr_class = u16_at(after + 2)?;
        let rdlen = usize::from(u16_at(after + 8)?);
        let start = after + 10;
        let rdata = msg
            .get(start..start + rdlen)
            .ok_or(bad("record past the end"))?;
        at = start + rdlen;
        // A CNAME chain's links and anything else asked for along the way.
        if rr_class != CLASS_IN || rr_type != rtype {
            continue;
        }
        match (rr_type, rdata.len()) {
            (A, 4) => addresses.push(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(rdata);
                addresses.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => return Err(bad("an address record of the wrong length")),
        }
    }
    Ok(Decoded::Answer(Answer::Addresses(addresses)))
}

/// The name at `at` (following compression pointers, backwards only) and where the record
/// goes on after it.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), Problem> {
    let bad = Problem::Malformed;
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(at).ok_or(bad("name past the end"))?;
        match len {
            0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let low = *msg.get(at + 1).ok_or(bad("name past the end"))?;
                let target = (usize::from(l & 0x3f) << 8) | usize::from(low);
                if target >= at || jumps > 64 {
                    return Err(bad("a compression pointer that does not go back"));
                }
                jumps += 1;
                end.get_or_insert(at + 2);
                at = target;
            }
            l if l & 0xc0 == 0 => {
                let label = msg
                    .get(at + 1..at + 1 + usize::from(l))
                    .ok_or(bad("label past the end"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                if name.len() > 255 {
                    return Err(bad("name too long"));
                }
                at += 1 + usize::from(l);
            }
            _ => return Err(bad("an unknown label type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CNAME: u16 = 5;

    /// An answer as a server writes it: the question, a CNAME to another name (compressed
    /// against the question), then an A record for that name.
    fn answer(id: u16, flags: u16) -> Vec<u8> {
        let mut m = encode_query(id, "www.example.test", A).unwrap();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&2u16.to_be_bytes());
        // www.example.test CNAME web.example.test
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&CNAME.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&60u32.to_be_bytes());
        m.extend_from_slice(&6u16.to_be_bytes());
        let cname_at = m.len();
        m.extend_from_slice(&[3, b'w', b'e', b'b', 0xc0, 16]);
        // web.example.test A 203.0.113.9
        m.extend_from_slice(&[0xc0, u8::try_from(cname_at).unwrap()]);
        m.extend_from_slice(&A.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&60u32.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&[203, 0, 113, 9]);
        m
    }

    #[test]
    fn an_answer_through_a_cname_gives_its_addresses() {
        let m = answer(7, 0x8180);
        assert_eq!(
            decode_answer(&m, 7, "www.example.test", A),
            Ok(Decoded::Answer(Answer::Addresses(vec![
                "203.0.113.9".parse().unwrap()
            ])))
        );
    }

    #[test]
    fn nxdomain_truncation_and_errors_are_told_apart() {
        let m = answer(7, 0x8183);
        assert_eq!(
            decode_answer(&m, 7, "www.example.test", A),
            Ok(Decoded::Answer(Answer::NoSuchName))
        );
        assert_eq!(
            decode_answer(&answer(7, 0x8380), 7, "www.example.test", A),
            Ok(Decoded::Truncated)
        );
        assert_eq!(
            decode_answer(&answer(7, 0x8182), 7, "www.example.test", A),
            Err(Problem::Rcode("SERVFAIL"))
        );
    }

    #[test]
    fn answers_to_something_else_or_broken_are_refused() {
        let m = answer(7, 0x8180);
        assert!(decode_answer(&m, 8, "www.example.test", A).is_err());
        assert!(decode_answer(&m, 7, "other.test", A).is_err());
        assert!(decode_answer(&m, 7, "www.example.test", AAAA).is_err());
        for cut in 0..m.len() {
            assert!(
                decode_answer(&m[..cut], 7, "www.example.test", A).is_err(),
                "cut at {cut}"
            );
        }
        // A pointer to itself.
        let mut looped = m.clone();
        let at = looped.len() - 16;
        looped[at] = 0xc0;
        looped[at + 1] = u8::try_from(at).unwrap();
        assert!(decode_answer(&looped, 7, "www.example.test", A).is_err());
    }

    #[test]
    fn names_that_cannot_be_queried_are_refused() {
        assert!(encode_query(1, &"a".repeat(64), A).is_none());
        assert!(encode_query(1, "a..b", A).is_none());
        assert!(encode_query(1, "example.test.", A).is_some());
    }
}
