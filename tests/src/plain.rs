//! Plain (cleartext) HTTP/1.1 exchanges written by hand: the admin listener, the plain HTTP
//! listener. One request per connection, read until the server closes it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wait::within;

/// A response read to the end of its connection.
#[derive(Debug, Clone)]
pub struct PlainResponse {
    /// The status code.
    pub status: u16,
    /// Everything the server sent: head, blank line, body (a chunked body joined back
    /// into its content, as etcd's JSON gateway sends one above 4 KiB; [`exchange`] gives
    /// the bytes as sent).
    pub text: String,
}

impl PlainResponse {
    /// The head, without the blank line that ends it.
    pub fn head(&self) -> &str {
        self.text
            .split_once("\r\n\r\n")
            .map_or(&self.text, |(h, _)| h)
    }

    /// What follows the head.
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Writes `request` as it is on a new connection to `addr` and reads until the server
/// closes; the whole answer, as text.
pub async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    within(
        &format!("the answer from {addr} to {request:?}"),
        tcp.read_to_string(&mut out),
    )
    .await
    .unwrap();
    out
}

/// As [`exchange`], with the answer's status read.
pub async fn send(addr: SocketAddr, request: &str) -> PlainResponse {
    let text = dechunked(exchange(addr, request).await);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"));
    PlainResponse { status, text }
}

/// `GET path` with `Host: host` and `Connection: close`, on a new connection to `addr`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> PlainResponse {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// `text` with a chunked body joined into its content (unchanged when the head does not
/// say chunked, or the chunks do not parse).
fn dechunked(text: String) -> String {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return text;
    };
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return text;
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return text;
        };
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            return text;
        };
        if n == 0 {
            break;
        }
        let (Some(chunk), Some(next)) = (after.get(..n), after.get(n..)) else {
            return text;
        };
        out.push_str(chunk);
        rest = next.strip_prefix("\r\n").unwrap_or(next);
    }
    format!("{head}\r\n\r\n{out}")
}

#[cfg(test)]
mod tests {
    use super::dechunked;

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA;x=1\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            dechunked(raw.into()),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nabc0123456789"
        );
        let plain = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(dechunked(plain.into()), plain);
        let broken = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(dechunked(broken.into()), broken);
    }
}
