//! Clients that write exact bytes to the gateway over TLS: HTTP/1.1 as written, and HTTP/2
//! frames built by hand (literal HPACK fields, so names and values a conforming client
//! would refuse to send can be sent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any single read waits for the gateway.
const READ_LIMIT: Duration = Duration::from_secs(10);

async fn tls(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    name: &str,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    crate::init();
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// A response as the raw client read it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 connection over TLS whose bytes are written as given.
pub struct RawH1 {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
    eof: bool,
}

impl RawH1 {
    /// TLS to `addr` with SNI `name` and ALPN `http/1.1`.
    pub async fn connect(addr: SocketAddr, root: &CertificateDer<'static>, name: &str) -> Self {
        Self {
            tls: tls(addr, root, name, b"http/1.1").await,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes` as they are. A write the gateway refused (it closed first) is not an
    /// error: what it answered is still to be read.
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = self.tls.write_all(bytes).await;
        let _ = self.tls.flush().await;
    }

    /// Closes the writing side (TLS close_notify).
    pub async fn shutdown(&mut self) {
        let _ = self.tls.shutdown().await;
    }

    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(READ_LIMIT, self.tls.read(&mut chunk)).await {
            Err(_) => panic!("the gateway sent nothing for {READ_LIMIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or `None` if the connection closed first.
    pub async fn response(&mut self) -> Option<RawResponse> {
        loop {
            if let Some((resp, used)) = parse_response(&self.buf) {
                self.buf.drain(..used);
                return Some(resp);
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        }
    }

    /// Reads until the gateway closes the connection, asserting it sends nothing more (a
    /// second response would be an answer to a smuggled request). Panics if the connection
    /// is still open after the read limit.
    pub async fn expect_closed(&mut self) {
        while self.fill().await {}
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Writes `bytes` and reads one response (`None` if the connection closed first).
    pub async fn exchange(&mut self, bytes: &[u8]) -> Option<RawResponse> {
        self.write(bytes).await;
        self.response().await
    }
}

/// One response off the front of `buf` with the bytes it took.
fn parse_response(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut fields);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "the gateway sent an invalid response ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let rest = &buf[head..];
    let (body, used) = if status == 101 || status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len.trim().parse().expect("a numeric content-length");
        if rest.len() < len {
            return None;
        }
        (rest[..len].to_vec(), len)
    } else {
        (Vec::new(), 0)
    };
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        head + used,
    ))
}

fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&buf[at..at + end]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .expect("a valid chunk size from the gateway");
        at += end + 2;
        if size == 0 {
            // Trailers, then the empty line.
            let end = buf[at..].windows(2).position(|w| w == b"\r\n")?;
            if end == 0 {
                return Some((body, at + 2));
            }
            let done = buf[at..].windows(4).position(|w| w == b"\r\n\r\n")?;
            return Some((body, at + done + 4));
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// What became of an HTTP/2 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Outcome {
    /// A response with this status.
    Status(u16),
    /// `RST_STREAM` with this error code.
    Reset(u32),
    /// `GOAWAY` with this error code.
    GoAway(u32),
    /// The connection closed.
    Closed,
}

/// HTTP/2 error code PROTOCOL_ERROR.
pub const PROTOCOL_ERROR: u32 = 1;
/// HTTP/2 error code CANCEL.
pub const CANCEL: u32 = 8;

/// An HTTP/2 connection over TLS, written frame by frame.
pub struct RawH2 {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
    /// Streams that ended with a response status or a reset, in order.
    outcomes: Vec<(u32, H2Outcome)>,
    closed: Option<H2Outcome>,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ACK: u8 = 1;

impl RawH2 {
    /// TLS with ALPN `h2`, the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr, root: &CertificateDer<'static>, name: &str) -> Self {
        let mut conn = Self {
            tls: tls(addr, root, name, b"h2").await,
            buf: Vec::new(),
            outcomes: Vec::new(),
            closed: None,
        };
        assert_eq!(
            conn.tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the gateway did not choose h2"
        );
        conn.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        conn.frame(SETTINGS, 0, 0, &[]).await;
        conn
    }

    async fn write(&mut self, bytes: &[u8]) {
        let _ = self.tls.write_all(bytes).await;
        let _ = self.tls.flush().await;
    }

    /// Writes one frame.
    pub async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap();
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.write(&f).await;
    }

    /// A HEADERS frame carrying `fields` as literal fields (never indexed, no Huffman),
    /// exactly as given: pseudo-fields first is up to the caller.
    pub async fn headers(&mut self, stream: u32, fields: &[(&[u8], &[u8])], end_stream: bool) {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x10);
            hpack_string(&mut block, name);
            hpack_string(&mut block, value);
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, stream, &block).await;
    }

    /// A DATA frame.
    pub async fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) {
        let flags = if end_stream { END_STREAM } else { 0 };
        self.frame(DATA, flags, stream, data).await;
    }

    /// RST_STREAM with `code`.
    pub async fn reset(&mut self, stream: u32, code: u32) {
        self.frame(RST_STREAM, 0, stream, &code.to_be_bytes()).await;
    }

    /// What became of `stream`: its response status (the first HEADERS frame's
    /// `:status`), its reset, or the connection's end.
    pub async fn outcome(&mut self, stream: u32) -> H2Outcome {
        loop {
            if let Some((_, o)) = self.outcomes.iter().find(|(s, _)| *s == stream) {
                return *o;
            }
            if let Some(o) = self.closed {
                return o;
            }
            self.read_frame().await;
        }
    }

    async fn read_frame(&mut self) {
        while self.buf.len() < 9 || self.buf.len() < 9 + frame_len(&self.buf) {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(READ_LIMIT, self.tls.read(&mut chunk)).await {
                Err(_) => panic!("the gateway sent no HTTP/2 frame for {READ_LIMIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed.get_or_insert(H2Outcome::Closed);
                    return;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        let len = frame_len(&self.buf);
        let frame: Vec<u8> = self.buf.drain(..9 + len).collect();
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[9..];
        match kind {
            SETTINGS if flags & ACK == 0 => self.frame(SETTINGS, ACK, 0, &[]).await,
            PING if flags & ACK == 0 => {
                let p = payload.to_vec();
                self.frame(PING, ACK, 0, &p).await;
            }
            HEADERS if !self.outcomes.iter().any(|(s, _)| *s == stream) => {
                let status = first_status(payload, flags);
                self.outcomes.push((stream, H2Outcome::Status(status)));
            }
            RST_STREAM if !self.outcomes.iter().any(|(s, _)| *s == stream) => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                self.outcomes.push((stream, H2Outcome::Reset(code)));
            }
            GOAWAY => {
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                self.closed.get_or_insert(H2Outcome::GoAway(code));
            }
            _ => {}
        }
    }
}

fn frame_len(buf: &[u8]) -> usize {
    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2])
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | u8::try_from(n).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    n -= max;
    while n >= 128 {
        out.push(u8::try_from(n % 128).unwrap() | 0x80);
        n /= 128;
    }
    out.push(u8::try_from(n).unwrap());
}

/// The `:status` of the first response on a connection: the first field of its header
/// block, which a server sends as an indexed static entry (200, 204, 206, 304, 400, 404,
/// 500) or as a literal with the static name `:status` and a digit string, plain or
/// Huffman-coded. Only the first response is read this way: later ones may refer to the
/// dynamic table.
fn first_status(payload: &[u8], flags: u8) -> u16 {
    let mut p = payload;
    if flags & 0x8 != 0 {
        let pad = usize::from(p[0]);
        p = &p[1..p.len() - pad];
    }
    if flags & 0x20 != 0 {
        p = &p[5..];
    }
    // Dynamic table size updates come first.
    while p[0] & 0xe0 == 0x20 {
        p = &p[1..];
    }
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    if (0x88..=0x8e).contains(&p[0]) {
        return STATIC[usize::from(p[0] - 0x88)];
    }
    assert!(
        matches!(p[0], 0x48 | 0x08 | 0x18),
        "a response whose first field is not :status: {p:02x?}"
    );
    let huffman = p[1] & 0x80 != 0;
    let len = usize::from(p[1] & 0x7f);
    let s = &p[2..2 + len];
    let digits = if huffman {
        huffman_digits(s)
    } else {
        String::from_utf8_lossy(s).into_owned()
    };
    digits.parse().expect("a numeric :status")
}

/// Decodes a Huffman string made only of digits (RFC 7541 Appendix B: `0`–`2` are 5-bit
/// codes 0–2, `3`–`9` are 6-bit codes 0x19–0x1f).
fn huffman_digits(s: &[u8]) -> String {
    let bits: Vec<u8> = s
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| bits[at..at + n].iter().fold(0u8, |a, b| (a << 1) | b);
    let mut out = String::new();
    let mut at = 0;
    while bits.len() - at >= 5 {
        if bits[at..].iter().all(|&b| b == 1) {
            break;
        }
        let five = take(at, 5);
        if five <= 2 {
            out.push(char::from(b'0' + five));
            at += 5;
            continue;
        }
        let six = take(at, 6);
        assert!((0x19..=0x1f).contains(&six), "not a digit in :status");
        out.push(char::from(b'3' + (six - 0x19)));
        at += 6;
    }
    out
}
