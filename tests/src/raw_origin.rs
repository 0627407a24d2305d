//! An HTTP/1.1 origin on 127.0.0.1:0 that keeps every byte of every connection, for tests
//! that must see exactly what the gateway sent (request smuggling, header rewriting).
//!
//! It answers each request it can parse (RFC 9112 framing: chunked, else `Content-Length`,
//! else no body) with `200` and the body `raw <method> <target>`; at the first request it
//! cannot parse it answers `400` with `connection: close` and reads no more requests on that
//! connection (the bytes are still kept). With
//! [`RawOrigin::accepting_h2c`] it answers a request carrying `Upgrade: h2c` with `101
//! Switching Protocols` and keeps reading the connection as a tunnel, answering whatever
//! requests arrive through it, which is what a smuggled request needs to succeed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request the origin parsed whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// Index of the connection it came on (in accept order).
    pub conn: usize,
    /// The request line and header section, exactly as received, final CRLF CRLF included.
    pub head: Vec<u8>,
    /// The body exactly as framed on the wire (chunk sizes included).
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line.
    pub fn request_line(&self) -> String {
        head_lines(&self.head).0
    }

    /// The header lines, each `name: value` as received, sorted (the gateway's header
    /// order is not part of any rule).
    pub fn header_lines(&self) -> Vec<String> {
        let mut lines = head_lines(&self.head).1;
        lines.sort();
        lines
    }

    /// The values of every line of header `name` (case-insensitive).
    pub fn values(&self, name: &str) -> Vec<String> {
        head_lines(&self.head)
            .1
            .iter()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .collect()
    }
}

/// Splits a head into its request line and header lines (CRLF-terminated).
pub fn head_lines(head: &[u8]) -> (String, Vec<String>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text
        .trim_end_matches("\r\n\r\n")
        .split("\r\n")
        .map(str::to_owned);
    let first = lines.next().unwrap_or_default();
    (first, lines.collect())
}

#[derive(Default)]
struct Recorded {
    /// Every byte received, per connection.
    bytes: Vec<Vec<u8>>,
    /// Whether the gateway closed that connection (EOF or error seen).
    closed: Vec<bool>,
    requests: Vec<RawRequest>,
}

/// The recording origin; stopped when dropped.
pub struct RawOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    task: JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawOrigin {
    /// An origin that refuses nothing and upgrades nothing.
    pub async fn start() -> Self {
        Self::listen(false).await
    }

    /// An origin that switches to a tunnel on `Upgrade: h2c`.
    pub async fn accepting_h2c() -> Self {
        Self::listen(true).await
    }

    async fn listen(h2c: bool) -> Self {
        crate::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let task = tokio::spawn(accept(listener, recorded.clone(), h2c, addr.port()));
        Self {
            addr,
            recorded,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`, as a server URL and a metrics label.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request parsed whole so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.recorded.lock().unwrap().requests.clone()
    }

    /// Every byte received so far, per connection.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.recorded.lock().unwrap().bytes.clone()
    }

    /// What each connection received beyond the requests it parsed whole: a request cut
    /// off, or bytes it could not parse. Empty for connections with nothing left over.
    pub fn leftovers(&self) -> Vec<Vec<u8>> {
        let r = self.recorded.lock().unwrap();
        r.bytes
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let used: usize = r
                    .requests
                    .iter()
                    .filter(|q| q.conn == i)
                    .map(|q| q.head.len() + q.body.len())
                    .sum();
                bytes[used.min(bytes.len())..].to_vec()
            })
            .collect()
    }

    /// Whether connection `i` was closed by the gateway.
    pub fn closed(&self, i: usize) -> bool {
        self.recorded
            .lock()
            .unwrap()
            .closed
            .get(i)
            .copied()
            .unwrap_or(false)
    }

    /// Waits (up to 5 s) until every connection holding `leftovers` was closed.
    pub async fn wait_leftovers_closed(&self) {
        crate::wait::until(
            Duration::from_secs(5),
            "the origin connections holding a cut-off request to close",
            || async {
                let left = self.leftovers();
                left.iter()
                    .enumerate()
                    .all(|(i, l)| l.is_empty() || self.closed(i))
                    .then_some(())
            },
        )
        .await;
    }
}

async fn accept(listener: TcpListener, recorded: Arc<Mutex<Recorded>>, h2c: bool, port: u16) {
    while let Ok((tcp, _)) = listener.accept().await {
        let conn = {
            let mut r = recorded.lock().unwrap();
            r.bytes.push(Vec::new());
            r.closed.push(false);
            r.bytes.len() - 1
        };
        tokio::spawn(serve(tcp, conn, recorded.clone(), h2c, port));
    }
}

async fn serve(
    mut tcp: TcpStream,
    conn: usize,
    recorded: Arc<Mutex<Recorded>>,
    h2c: bool,
    port: u16,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut parsing = true;
    let mut read = [0u8; 16 * 1024];
    loop {
        while parsing {
            match parse_request(&buf) {
                Parsed::Partial => break,
                Parsed::Invalid => {
                    // As a strict server would: 400, and nothing more read as requests.
                    parsing = false;
                    let _ = tcp
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                }
                Parsed::Complete {
                    head,
                    body,
                    target,
                    method,
                    upgrade_h2c,
                } => {
                    let used = head + body;
                    let request = RawRequest {
                        conn,
                        head: buf[..head].to_vec(),
                        body: buf[head..used].to_vec(),
                    };
                    buf.drain(..used);
                    recorded.lock().unwrap().requests.push(request);
                    let answer = if upgrade_h2c && h2c {
                        b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
                            .to_vec()
                    } else {
                        let body = format!("raw {method} {target}");
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-origin: {port}\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    };
                    if tcp.write_all(&answer).await.is_err() {
                        parsing = false;
                    }
                }
            }
        }
        match tcp.read(&mut read).await {
            Ok(0) | Err(_) => {
                recorded.lock().unwrap().closed[conn] = true;
                return;
            }
            Ok(n) => {
                recorded.lock().unwrap().bytes[conn].extend_from_slice(&read[..n]);
                buf.extend_from_slice(&read[..n]);
            }
        }
    }
}

enum Parsed {
    Partial,
    Invalid,
    Complete {
        head: usize,
        body: usize,
        method: String,
        target: String,
        upgrade_h2c: bool,
    },
}

/// One request off the front of `buf`, framed as RFC 9112 §6.3 says a server must.
fn parse_request(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let has = |name: &str, token: &str| {
        req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && String::from_utf8_lossy(h.value)
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let chunked = has("transfer-encoding", "chunked");
    let upgrade_h2c = has("upgrade", "h2c");
    let body = if chunked {
        match chunked_len(&buf[head..]) {
            Some(Ok(n)) => n,
            Some(Err(())) => return Parsed::Invalid,
            None => return Parsed::Partial,
        }
    } else {
        let lengths: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        match lengths.as_slice() {
            [] => 0,
            [one] => match std::str::from_utf8(one).ok().and_then(|s| s.parse().ok()) {
                Some(n) => n,
                None => return Parsed::Invalid,
            },
            _ => return Parsed::Invalid,
        }
    };
    if buf.len() < head + body {
        return Parsed::Partial;
    }
    Parsed::Complete {
        head,
        body,
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        upgrade_h2c,
    }
}

/// The length of a whole chunked body at the front of `buf` (no trailers accepted but an
/// empty trailer section), `None` while incomplete, `Err` when it is not chunked.
fn chunked_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let mut at = 0;
    loop {
        let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = &buf[at..at + line_end];
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
        else {
            return Some(Err(()));
        };
        at += line_end + 2;
        if size == 0 {
            if buf.len() < at + 2 {
                return None;
            }
            return Some(if &buf[at..at + 2] == b"\r\n" {
                Ok(at + 2)
            } else {
                Err(())
            });
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Some(Err(()));
        }
        at += size + 2;
    }
}
