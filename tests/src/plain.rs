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
    /// Everything the server sent: head, blank line, body.
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
    let text = exchange(addr, request).await;
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
