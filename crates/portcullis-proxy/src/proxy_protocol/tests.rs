use std::net::Ipv6Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn addrs(source: &str, destination: &str) -> ProxyAddrs {
    ProxyAddrs {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    }
}

fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!("expected a complete header for {buf:?}, got {other:?}"),
    }
}

fn assert_invalid(buf: &[u8]) {
    match parse(buf) {
        Err(ProxyProtocolError::Invalid(_) | ProxyProtocolError::Unsupported(_)) => {}
        other => panic!("expected an error for {buf:?}, got {other:?}"),
    }
}

/// Every strict prefix of a header is `Incomplete`, never an error or a header.
fn assert_prefixes_incomplete(header: &[u8]) {
    for cut in 0..header.len() {
        let got = parse(&header[..cut]);
        assert!(
            matches!(got, Ok(Parsed::Incomplete)),
            "prefix {:?} gave {got:?}",
            &header[..cut]
        );
    }
}

/// A v2 header from its parts: `ver_cmd`, `family`, then the block (addresses and TLVs).
fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, family]);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(block);
    out
}

const TCP4_BLOCK: [u8; 12] = [192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb];

#[test]
fn v1_spec_examples() {
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
    let (header, len) = complete(line);
    assert_eq!(
        header,
        ProxyHeader::Proxied(addrs("192.168.0.1:56324", "192.168.0.11:443"))
    );
    assert_eq!(&line[len..], b"GET / HTTP/1.1\r\n");

    let line = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.2 65535 0\r\n";
    assert_eq!(
        complete(line),
        (
            ProxyHeader::Proxied(addrs("[2001:db8::1]:65535", "[::ffff:10.0.0.2]:0")),
            line.len()
        )
    );

    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        b"PROXY UNKNOWN \x01\rjunk is ignored\r\n",
    ] {
        assert_eq!(complete(line), (ProxyHeader::Local, line.len()));
        assert_prefixes_incomplete(line);
    }
}

#[test]
fn v1_longest_lines_are_accepted() {
    // The spec's 107-byte worst case is UNKNOWN followed by the longest TCP6 fields.
    let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    for (proto, want) in [("TCP6", 104), ("UNKNOWN", V1_MAX_LEN)] {
        let line = format!("PROXY {proto} {ip} {ip} 65535 65535\r\n");
        assert_eq!(line.len(), want);
        assert_eq!(complete(line.as_bytes()).1, want);
        assert_prefixes_incomplete(line.as_bytes());
    }
}

#[test]
fn v1_rejects_malformed_lines() {
    for line in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 extra\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 80 443\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n",
        b"PROXY TCP4 ::1 ::1 80 443\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 80 443\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 80 443\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 80 443\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 80 443\r\n",
        b"PROXY\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 80 443\r\n",
    ] {
        assert_invalid(line);
    }
}

#[test]
fn v1_garbage_fails_before_the_line_ends() {
    // Early rejection keeps a wrong peer from holding the reader until 107 bytes or the
    // deadline.
    for prefix in [
        &b"PROXY X"[..],
        b"PROXY TCP5",
        b"PROXY TCP4 1.2.3.4x",
        b"PROXY TCP4 1 2 3 4 5",
        b"PROXY TCP4 1.2.3.4\rx",
        b"PROXY TCP6 ::g",
        b"PROXY UNKNOWN\rx",
        b"GET / HTTP/1.1",
        b"\x16\x03\x01",
        b"\r\n\r\nX",
    ] {
        assert_invalid(prefix);
    }
}

#[test]
fn v1_line_longer_than_107_bytes_is_refused() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(V1_MAX_LEN - 1, b'a');
    assert_eq!(parse(&line).unwrap(), Parsed::Incomplete);
    line.push(b'a');
    assert_invalid(&line);
    line.extend_from_slice(b"\r\n");
    assert_invalid(&line);
}

#[test]
fn v2_proxy_tcp4_and_tcp6() {
    let header = v2(0x21, 0x11, &TCP4_BLOCK);
    assert_eq!(
        complete(&header),
        (
            ProxyHeader::Proxied(addrs("192.168.0.1:56324", "192.168.0.11:443")),
            28
        )
    );
    assert_prefixes_incomplete(&header);

    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    block.extend_from_slice(&[0x1f, 0x90, 0x00, 0x50]);
    let header = v2(0x21, 0x21, &block);
    assert_eq!(
        complete(&header),
        (
            ProxyHeader::Proxied(addrs("[2001:db8::1]:8080", "[::1]:80")),
            52
        )
    );
    assert_prefixes_incomplete(&header);
}

#[test]
fn v2_skips_tlvs_and_leaves_what_follows() {
    let mut block = TCP4_BLOCK.to_vec();
    // PP2_TYPE_AUTHORITY "example.com", then PP2_TYPE_NOOP.
    block.extend_from_slice(&[0x02, 0x00, 0x0b]);
    block.extend_from_slice(b"example.com");
    block.extend_from_slice(&[0x04, 0x00, 0x02, 0, 0]);
    let mut input = v2(0x21, 0x11, &block);
    let header_len = input.len();
    input.extend_from_slice(b"\x16\x03\x01 client hello");
    let (header, len) = complete(&input);
    assert_eq!(len, header_len);
    assert_eq!(
        header,
        ProxyHeader::Proxied(addrs("192.168.0.1:56324", "192.168.0.11:443"))
    );
    assert_prefixes_incomplete(&input[..header_len]);
}

#[test]
fn v2_local_and_unspecified_families_use_the_real_peer() {
    let unix_block = [0u8; 216];
    for header in [
        v2(0x20, 0x00, &[]),
        // LOCAL ignores the family and whatever block it carries.
        v2(0x20, 0x11, &TCP4_BLOCK),
        v2(0x20, 0x7f, &[1, 2, 3]),
        v2(0x21, 0x00, &[]),
        v2(0x21, 0x00, &[9; 5]),
        v2(0x21, 0x31, &unix_block),
        v2(0x21, 0x32, &unix_block),
    ] {
        assert_eq!(complete(&header), (ProxyHeader::Local, header.len()));
        assert_prefixes_incomplete(&header);
    }
}

#[test]
fn v2_rejects_malformed_headers() {
    for header in [
        v2(0x11, 0x11, &TCP4_BLOCK),       // version 1 nibble
        v2(0x31, 0x11, &TCP4_BLOCK),       // version 3 nibble
        v2(0x22, 0x11, &TCP4_BLOCK),       // command 2
        v2(0x2f, 0x11, &TCP4_BLOCK),       // command 15
        v2(0x21, 0x13, &TCP4_BLOCK),       // transport 3
        v2(0x21, 0x41, &TCP4_BLOCK),       // family 4
        v2(0x21, 0x01, &TCP4_BLOCK),       // UNSPEC family with a transport
        v2(0x21, 0x12, &TCP4_BLOCK),       // UDP over IPv4
        v2(0x21, 0x22, &[0; 36]),          // UDP over IPv6
        v2(0x21, 0x11, &TCP4_BLOCK[..11]), // shorter than IPv4 addresses
        v2(0x21, 0x21, &[0; 35]),          // shorter than IPv6 addresses
        v2(0x21, 0x31, &[0; 215]),         // shorter than unix addresses
    ] {
        assert_invalid(&header);
    }
    // Wrong bytes inside the signature fail as soon as they are seen.
    let mut header = v2(0x21, 0x11, &TCP4_BLOCK);
    for at in 1..V2_SIGNATURE.len() {
        let saved = header[at];
        header[at] ^= 0x40;
        assert_invalid(&header[..=at]);
        header[at] = saved;
    }
}

#[test]
fn v2_accepts_the_largest_length() {
    let mut block = TCP4_BLOCK.to_vec();
    block.resize(usize::from(u16::MAX), 0);
    let header = v2(0x21, 0x11, &block);
    assert_eq!(complete(&header).1, V2_FIXED_LEN + 65535);
    assert_eq!(
        parse(&header[..header.len() - 1]).unwrap(),
        Parsed::Incomplete
    );
}

#[test]
fn encode_round_trips() {
    for pair in [
        addrs("192.0.2.1:1", "198.51.100.2:65535"),
        addrs("[2001:db8::1]:443", "[2001:db8::2]:0"),
        addrs("0.0.0.0:0", "255.255.255.255:80"),
    ] {
        for encoded in [encode_v1(&pair), encode_v2(&pair)] {
            assert_eq!(
                complete(&encoded),
                (ProxyHeader::Proxied(pair), encoded.len())
            );
            assert_prefixes_incomplete(&encoded);
        }
    }
    assert_eq!(
        encode_v1(&addrs("192.0.2.1:1", "198.51.100.2:2")),
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n"
    );
}

#[test]
fn encode_mixed_families_as_v4_mapped_ipv6() {
    let mixed = addrs("192.0.2.1:1234", "[2001:db8::2]:443");
    let mapped = addrs("[::ffff:192.0.2.1]:1234", "[2001:db8::2]:443");
    assert_eq!(
        encode_v1(&mixed),
        b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1234 443\r\n"
    );
    for encoded in [encode_v1(&mixed), encode_v2(&mixed)] {
        assert_eq!(complete(&encoded).0, ProxyHeader::Proxied(mapped));
    }
}

#[test]
fn error_labels_are_fixed() {
    assert_eq!(
        ProxyProtocolError::Timeout(Duration::from_secs(1)).label(),
        "timeout"
    );
    assert_eq!(ProxyProtocolError::Closed.label(), "closed");
    assert_eq!(invalid("x").label(), "invalid");
    assert_eq!(ProxyProtocolError::TooLong(5000).label(), "invalid");
    assert_eq!(
        ProxyProtocolError::Io(io::ErrorKind::Other.into()).label(),
        "io"
    );
}

/// A small deterministic generator (xorshift64*), so the smoke test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        // Bias toward the bytes the grammar cares about so mutations reach deep paths.
        const INTERESTING: &[u8] = b"\r\n .:0123456789abcdefTCPUNKOWXY\x00\x11\x12\x21\x20\x31\xff";
        if self.next() & 1 == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.next() as u8
        }
    }
}

/// Checks what the fuzz target checks, for one input.
fn check_properties(data: &[u8]) {
    let Ok(Parsed::Complete { header, len }) = parse(data) else {
        return;
    };
    assert!(len > 0 && len <= data.len(), "len {len} for {data:?}");
    // The header alone parses the same; nothing after it was looked at.
    assert_eq!(
        parse(&data[..len]).unwrap(),
        Parsed::Complete { header, len }
    );
    assert!(matches!(parse(&data[..len - 1]), Ok(Parsed::Incomplete)));
    if let ProxyHeader::Proxied(pair) = header {
        let encoded = if data[0] == b'P' {
            encode_v1(&pair)
        } else {
            encode_v2(&pair)
        };
        assert_eq!(complete(&encoded).0, header, "re-encoding {data:?}");
    }
}

/// Stands in for cargo-fuzz on stable (see `fuzz/README.md`): random and mutated valid
/// inputs must never panic and must keep the parser's promises.
#[test]
fn parse_never_panics_on_random_or_mutated_input() {
    let seeds: Vec<Vec<u8>> = vec![
        encode_v1(&addrs("192.168.0.1:56324", "192.168.0.11:443")),
        encode_v1(&addrs("[2001:db8::1]:1", "[::ffff:1.2.3.4]:2")),
        b"PROXY UNKNOWN\r\n".to_vec(),
        encode_v2(&addrs("192.168.0.1:56324", "192.168.0.11:443")),
        encode_v2(&addrs("[2001:db8::1]:1", "[::1]:2")),
        v2(0x20, 0x00, &[]),
        v2(0x21, 0x31, &[7; 216]),
        v2(
            0x21,
            0x11,
            &[TCP4_BLOCK.as_slice(), &[0x04, 0x00, 0x01, 0x00]].concat(),
        ),
    ];
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut complete_count, mut buf) = (0usize, Vec::with_capacity(256));
    for round in 0..300_000 {
        buf.clear();
        if round % 4 == 0 {
            // Pure noise, sometimes behind a signature so it gets past the first byte.
            match rng.below(3) {
                0 => buf.extend_from_slice(V1_SIGNATURE),
                1 => buf.extend_from_slice(V2_SIGNATURE),
                _ => {}
            }
            for _ in 0..rng.below(64) {
                buf.push(rng.byte());
            }
        } else {
            buf.extend_from_slice(&seeds[rng.below(seeds.len())]);
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len() + 1);
                match rng.below(4) {
                    0 if at < buf.len() => buf[at] = rng.byte(),
                    1 => buf.insert(at, rng.byte()),
                    2 if at < buf.len() => {
                        buf.remove(at);
                    }
                    _ => buf.truncate(at),
                }
            }
        }
        if let Ok(Parsed::Complete { len, .. }) = parse(&buf) {
            complete_count += 1;
            // The full prefix walk is dearer, so only for a sample.
            if complete_count % 64 == 0 {
                assert_prefixes_incomplete(&buf[..len]);
            }
        }
        check_properties(&buf);
    }
    // Guards against a generator that never reaches a complete header.
    assert!(
        complete_count > 10_000,
        "only {complete_count} complete headers"
    );
}

/// A connected loopback pair: (the gateway's side, the load balancer's side).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

/// Reads until the peer closes, then returns everything.
async fn read_rest(mut server: TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    rest
}

const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn read_header_leaves_the_following_bytes_unread() {
    let pair = addrs("203.0.113.7:40000", "127.0.0.1:443");
    for header in [encode_v1(&pair), encode_v2(&pair)] {
        let (mut server, mut client) = tcp_pair().await;
        client
            .write_all(&[header.as_slice(), b"hello"].concat())
            .await
            .unwrap();
        drop(client);
        let got = read_header(&mut server, DEADLINE).await.unwrap();
        assert_eq!(got, ProxyHeader::Proxied(pair));
        assert_eq!(read_rest(server).await, b"hello");
    }
}

#[tokio::test]
async fn read_header_waits_for_a_header_sent_in_pieces() {
    let pair = addrs("[2001:db8::7]:40000", "[::1]:443");
    let mut tlvs = encode_v2(&pair);
    tlvs[15] += 7; // room for a 7-byte NOOP TLV
    tlvs.extend_from_slice(&[0x04, 0x00, 0x04, 1, 2, 3, 4]);
    for header in [encode_v1(&pair), tlvs, b"PROXY UNKNOWN\r\n".to_vec()] {
        let (mut server, mut client) = tcp_pair().await;
        let writer = tokio::spawn(async move {
            for piece in header.chunks(5) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                // Gives the reader a chance to see each piece on its own.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            client.write_all(b"hello").await.unwrap();
        });
        let got = read_header(&mut server, DEADLINE).await.unwrap();
        assert!(matches!(got, ProxyHeader::Proxied(p) if p == pair) || got == ProxyHeader::Local);
        writer.await.unwrap();
        assert_eq!(read_rest(server).await, b"hello");
    }
}

#[tokio::test]
async fn read_header_times_out_on_a_partial_header() {
    let (mut server, mut client) = tcp_pair().await;
    client.write_all(b"PROXY TCP4 1.2.").await.unwrap();
    let deadline = Duration::from_millis(100);
    let err = read_header(&mut server, deadline).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.label(), "timeout");
    drop(client);
}

#[tokio::test]
async fn read_header_refuses_peers_without_a_header() {
    let (mut server, mut client) = tcp_pair().await;
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = read_header(&mut server, DEADLINE).await.unwrap_err();
    assert_eq!(err.label(), "invalid", "{err}");

    let (mut server, mut client) = tcp_pair().await;
    client.write_all(b"PROXY TCP4 1.2").await.unwrap();
    drop(client);
    let err = read_header(&mut server, DEADLINE).await.unwrap_err();
    assert!(matches!(err, ProxyProtocolError::Closed), "{err}");
}

#[tokio::test]
async fn read_header_caps_v2_length() {
    let (mut server, mut client) = tcp_pair().await;
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x20, 0x00]); // 8192 bytes follow
    client.write_all(&header).await.unwrap();
    let err = read_header(&mut server, DEADLINE).await.unwrap_err();
    assert!(matches!(err, ProxyProtocolError::TooLong(8208)), "{err}");

    // Just under the cap is fine, with the bytes after it left unread.
    let (mut server, mut client) = tcp_pair().await;
    let block = [TCP4_BLOCK.as_slice(), &[0; MAX_HEADER_LEN - 16 - 12]].concat();
    let header = v2(0x21, 0x11, &block);
    assert_eq!(header.len(), MAX_HEADER_LEN);
    let writer = tokio::spawn(async move {
        client
            .write_all(&[header.as_slice(), b"hello"].concat())
            .await
            .unwrap();
    });
    assert!(matches!(
        read_header(&mut server, DEADLINE).await.unwrap(),
        ProxyHeader::Proxied(_)
    ));
    writer.await.unwrap();
    assert_eq!(read_rest(server).await, b"hello");
}
