//! The PROXY protocol (HAProxy spec, versions 1 and 2): a load balancer in front of the
//! gateway prepends the real client's addresses to the TCP stream.
//!
//! [`parse`] is pure and incremental so it can be fuzzed on its own; [`read_header`]
//! drives it over a socket and consumes exactly the header, so the TLS ClientHello or
//! HTTP request that follows is still unread for the next layer.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[cfg(test)]
mod tests;

/// v1 signature, with the space before the protocol token.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// Longest v1 line the spec allows, CRLF included.
const V1_MAX_LEN: usize = 107;
/// v2 signature; it cannot start an HTTP request or a TLS record.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2 fixed part: signature, version/command, family/transport, big-endian length.
const V2_FIXED_LEN: usize = 16;
/// Largest header [`read_header`] accepts. The spec allows 16 + 65535 bytes of v2, but
/// real senders (cloud load balancers, HAProxy with its SSL TLVs) stay well under 1 KiB;
/// 4 KiB leaves room for TLVs without letting a peer make us buffer 64 KiB per connection.
const MAX_HEADER_LEN: usize = 4096;
/// How much [`read_header`] peeks at once: any v1 line and typical v2 headers in one go.
const PEEK_LEN: usize = 512;

/// The client's addresses as the proxy in front of us saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyAddrs {
    /// The original client.
    pub source: SocketAddr,
    /// The address the client connected to (the load balancer's listener).
    pub destination: SocketAddr,
}

/// A decoded PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The connection was relayed for this client.
    Proxied(ProxyAddrs),
    /// No client addresses (v2 `LOCAL`, v1 `UNKNOWN`, v2 unspecified or unix family):
    /// use the real peer address.
    Local,
}

/// The result of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, which is the first `len` bytes of the input.
    Complete {
        /// The decoded header.
        header: ProxyHeader,
        /// How many bytes of the input the header takes.
        len: usize,
    },
    /// The input is a valid start of a header; more bytes are needed.
    Incomplete,
}

/// Why no PROXY protocol header could be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    /// The peer did not send a whole header in time.
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before the header was complete.
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    /// The bytes are not a valid header (or no header at all).
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(&'static str),
    /// A well-formed header this gateway cannot use (UDP over a TCP listener).
    #[error("unsupported PROXY protocol header: {0}")]
    Unsupported(&'static str),
    /// A v2 header longer than [`read_header`] is willing to buffer.
    #[error("PROXY protocol v2 header of {0} bytes exceeds the {MAX_HEADER_LEN}-byte limit")]
    TooLong(usize),
    /// Reading from the socket failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyProtocolError {
    /// A short, fixed label for logs and metrics: `timeout`, `closed`, `invalid` or `io`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Closed => "closed",
            Self::Invalid(_) | Self::Unsupported(_) | Self::TooLong(_) => "invalid",
            Self::Io(_) => "io",
        }
    }

    /// True when the peer was too slow, as opposed to sending bad bytes.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }
}

/// Parses a v1 or v2 header at the start of `buf`; bytes after it are not looked at.
///
/// Never panics, whatever the input; the fuzz target in `fuzz/` checks that.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    let signature = match first {
        b'P' => V1_SIGNATURE,
        b'\r' => V2_SIGNATURE,
        _ => return Err(invalid("no PROXY protocol signature")),
    };
    let seen = buf.len().min(signature.len());
    if buf[..seen] != signature[..seen] {
        return Err(invalid("no PROXY protocol signature"));
    }
    if seen < signature.len() {
        return Ok(Parsed::Incomplete);
    }
    if first == b'P' {
        parse_v1(buf)
    } else {
        parse_v2(buf)
    }
}

/// Encodes a v1 (text) header for TCP; mixed families are sent as IPv6.
pub fn encode_v1(addrs: &ProxyAddrs) -> Vec<u8> {
    let (src, dst) = same_family(addrs);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Encodes a v2 (binary) `PROXY` header for TCP, without TLVs; mixed families are sent as
/// IPv6.
pub fn encode_v2(addrs: &ProxyAddrs) -> Vec<u8> {
    let (src, dst) = same_family(addrs);
    let mut out = Vec::with_capacity(V2_FIXED_LEN + 36);
    out.extend_from_slice(V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// Reads one header from `tcp`, consuming exactly its bytes and no more, within
/// `deadline`. The peer must send a header: anything else is [`ProxyProtocolError::Invalid`].
///
/// v2 headers over 4 KiB are refused ([`ProxyProtocolError::TooLong`]).
pub async fn read_header(
    tcp: &mut TcpStream,
    deadline: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    tokio::time::timeout(deadline, read_exact_header(tcp))
        .await
        .map_err(|_| ProxyProtocolError::Timeout(deadline))?
}

async fn read_exact_header(tcp: &mut TcpStream) -> Result<ProxyHeader, ProxyProtocolError> {
    // Every byte in `seen` has been consumed from the socket and belongs to the header.
    let mut seen = Vec::with_capacity(PEEK_LEN);
    let mut peeked = [0u8; PEEK_LEN];
    loop {
        let want = MAX_HEADER_LEN.saturating_sub(seen.len()).min(PEEK_LEN);
        let n = tcp.peek(&mut peeked[..want]).await?;
        if n == 0 {
            return Err(ProxyProtocolError::Closed);
        }
        let consumed = seen.len();
        seen.extend_from_slice(&peeked[..n]);
        match parse(&seen)? {
            Parsed::Complete { header, len } => {
                // Only the header's own bytes; whatever follows stays in the socket.
                let take = len.saturating_sub(consumed).min(n);
                tcp.read_exact(&mut peeked[..take]).await?;
                return Ok(header);
            }
            Parsed::Incomplete => {
                if let Some(total) = v2_total_len(&seen).filter(|&t| t > MAX_HEADER_LEN) {
                    return Err(ProxyProtocolError::TooLong(total));
                }
                if seen.len() >= MAX_HEADER_LEN {
                    return Err(ProxyProtocolError::TooLong(seen.len()));
                }
                // The header is longer than all we peeked, so all of it is header. Consuming
                // it makes the next peek wait for new bytes instead of spinning.
                tcp.read_exact(&mut peeked[..n]).await?;
            }
        }
    }
}

/// The whole length a v2 header declares, once its fixed part is there.
fn v2_total_len(buf: &[u8]) -> Option<usize> {
    if !buf.starts_with(V2_SIGNATURE) {
        return None;
    }
    let len = buf.get(14..V2_FIXED_LEN)?.try_into().ok()?;
    Some(V2_FIXED_LEN + usize::from(u16::from_be_bytes(len)))
}

fn invalid(reason: &'static str) -> ProxyProtocolError {
    ProxyProtocolError::Invalid(reason)
}

/// `buf` starts with the whole v1 signature.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(invalid("v1 line longer than 107 bytes"));
        }
        check_v1_prefix(&buf[V1_SIGNATURE.len()..])?;
        return Ok(Parsed::Incomplete);
    };
    let line = window[..newline]
        .strip_suffix(b"\r")
        .ok_or(invalid("v1 line not ended by CRLF"))?;
    let rest = line
        .get(V1_SIGNATURE.len()..)
        .ok_or(invalid("v1 line too short"))?;
    let header = parse_v1_fields(rest)?;
    Ok(Parsed::Complete {
        header,
        len: newline + 1,
    })
}

/// The line after `PROXY ` and before CRLF.
fn parse_v1_fields(rest: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    // The spec says to ignore whatever follows UNKNOWN.
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::Local);
    }
    let text = std::str::from_utf8(rest).map_err(|_| invalid("v1 line is not ASCII"))?;
    let mut fields = text.split(' ');
    let mut next = || fields.next().ok_or(invalid("v1 line has too few fields"));
    let (proto, src, dst, sport, dport) = (next()?, next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(invalid("v1 line has too many fields"));
    }
    let (src, dst) = match proto {
        "TCP4" => (
            IpAddr::V4(src.parse().map_err(|_| invalid("bad v1 IPv4 source"))?),
            IpAddr::V4(
                dst.parse()
                    .map_err(|_| invalid("bad v1 IPv4 destination"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse().map_err(|_| invalid("bad v1 IPv6 source"))?),
            IpAddr::V6(
                dst.parse()
                    .map_err(|_| invalid("bad v1 IPv6 destination"))?,
            ),
        ),
        _ => return Err(invalid("unknown v1 protocol")),
    };
    Ok(ProxyHeader::Proxied(ProxyAddrs {
        source: SocketAddr::new(src, parse_port(sport)?),
        destination: SocketAddr::new(dst, parse_port(dport)?),
    }))
}

/// Plain decimal only: `u16::from_str` would also take `+80`, and senders never pad.
fn parse_port(text: &str) -> Result<u16, ProxyProtocolError> {
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    plain
        .then(|| text.parse().ok())
        .flatten()
        .ok_or(invalid("bad v1 port"))
}

/// Rejects an unfinished v1 line early when no ending can make it valid, so garbage fails
/// fast rather than after 107 bytes or at the deadline.
fn check_v1_prefix(rest: &[u8]) -> Result<(), ProxyProtocolError> {
    let plausible = if let Some(tail) = split_token(rest, b"UNKNOWN") {
        // Anything may follow `UNKNOWN `; a CR right after the token must end the line.
        tail.is_empty() || tail.starts_with(b" ") || tail == b"\r"
    } else if let Some(tail) = split_token(rest, b"TCP4 ") {
        tcp_fields_prefix(tail, |b| b.is_ascii_digit() || b == b'.')
    } else if let Some(tail) = split_token(rest, b"TCP6 ") {
        tcp_fields_prefix(tail, |b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        return Err(invalid("unknown v1 protocol"));
    };
    if plausible {
        Ok(())
    } else {
        Err(invalid("malformed v1 line"))
    }
}

/// What follows `token` in `rest`: empty while `rest` is still a prefix of `token`, `None`
/// when they differ.
fn split_token<'a>(rest: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    let shared = rest.len().min(token.len());
    (rest[..shared] == token[..shared]).then(|| &rest[shared..])
}

/// The start of `src dst sport dport`: at most three more spaces, and a CR only as the
/// last byte so far (the LF has not arrived yet).
fn tcp_fields_prefix(tail: &[u8], field_byte: impl Fn(u8) -> bool) -> bool {
    let body = tail.strip_suffix(b"\r").unwrap_or(tail);
    body.iter().all(|&b| b == b' ' || field_byte(b))
        && body.iter().filter(|&&b| b == b' ').count() <= 3
}

/// `buf` starts with the whole v2 signature.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err(invalid("v2 version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(invalid("unknown v2 command")),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL ignores the family; for PROXY it sets how long the address block must be.
    let min_len: usize = match (local, family) {
        (true, _) | (false, 0x00) => 0,
        (false, 0x11) => 12,
        (false, 0x21) => 36,
        (false, 0x31 | 0x32) => 216,
        (false, 0x12 | 0x22) => return Err(ProxyProtocolError::Unsupported("UDP over TCP")),
        (false, _) => return Err(invalid("unknown v2 family or transport")),
    };
    let Some(total) = v2_total_len(buf) else {
        return Ok(Parsed::Incomplete);
    };
    if total - V2_FIXED_LEN < min_len {
        return Err(invalid("v2 length shorter than its addresses"));
    }
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Parsed::Incomplete);
    };
    // TLVs after the addresses are covered by the length and skipped.
    let header = match (local, family) {
        (false, 0x11) => ProxyHeader::Proxied(v2_addrs::<4>(block)?),
        (false, 0x21) => ProxyHeader::Proxied(v2_addrs::<16>(block)?),
        _ => ProxyHeader::Local,
    };
    Ok(Parsed::Complete { header, len: total })
}

/// Source address, destination address, source port, destination port, as the v2 block of
/// an `N`-byte address family lays them out.
fn v2_addrs<const N: usize>(block: &[u8]) -> Result<ProxyAddrs, ProxyProtocolError>
where
    IpAddr: From<[u8; N]>,
{
    let ip = |at: usize| block.get(at..at + N)?.try_into().ok().map(IpAddr::from);
    let port = |at: usize| Some(u16::from_be_bytes(block.get(at..at + 2)?.try_into().ok()?));
    let addr = |ip_at: usize, port_at: usize| Some(SocketAddr::new(ip(ip_at)?, port(port_at)?));
    // The length was checked against the family already; this only guards the slicing.
    let short = || invalid("v2 address block too short");
    Ok(ProxyAddrs {
        source: addr(0, 2 * N).ok_or_else(short)?,
        destination: addr(N, 2 * N + 2).ok_or_else(short)?,
    })
}

/// Both addresses in one family, since a header names one: v4-mapped IPv6 when they differ.
fn same_family(addrs: &ProxyAddrs) -> (SocketAddr, SocketAddr) {
    let (src, dst) = (addrs.source, addrs.destination);
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let mapped = |a: SocketAddr| SocketAddr::new(IpAddr::V6(to_v6(a.ip())), a.port());
    (mapped(src), mapped(dst))
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
