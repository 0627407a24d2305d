//! etcd (Debian `etcd-server`) run by a test on loopback: one member or three, each killed
//! and restarted on its own data directory, for the clustering suites. Keys are read and
//! written through etcd's JSON gateway (`/v3/kv/...`, keys and values base64), so a test can
//! see what the gateways stored without a client library of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::plain;

/// One member's process and places.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster on 127.0.0.1; every member is killed when it is dropped.
pub struct TestEtcd {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

/// Below the ephemeral range: a killed member restarts on the same ports.
fn free_port() -> SocketAddr {
    crate::ports::stable_port()
}

impl TestEtcd {
    /// `n` members (1 or 3), each healthy before this returns.
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                data: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Self {
            _dir: dir,
            members,
            initial_cluster,
        };
        for i in 0..n {
            etcd.spawn(i, "new");
        }
        for i in 0..n {
            etcd.wait_healthy(i).await;
        }
        etcd
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &mut self.members[i];
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "portcullis-test"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (Debian package etcd-server; .ci/run installs it)");
        m.child = Some(child);
    }

    /// Waits (up to 30 s) until member `i` says it is healthy.
    async fn wait_healthy(&self, i: usize) {
        let addr = self.members[i].client;
        crate::wait::until(Duration::from_secs(30), "etcd healthy", || async move {
            let text = tokio::time::timeout(Duration::from_secs(2), async {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                tcp.write_all(
                    b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .await
                .ok()?;
                let mut out = String::new();
                tcp.read_to_string(&mut out).await.ok()?;
                Some(out)
            })
            .await
            .ok()
            .flatten()?;
            text.contains("\"health\":\"true\"").then_some(())
        })
        .await;
    }

    /// Client URLs, one per member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// Member `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// SIGKILL member `i` (its data directory stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory, and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
        self.wait_healthy(i).await;
    }

    /// Puts `key` = `value` through member `i`'s JSON gateway; the HTTP status.
    pub async fn put(&self, i: usize, key: &str, value: &str) -> u16 {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            b64(key.as_bytes()),
            b64(value.as_bytes())
        );
        self.post(i, "/v3/kv/put", &body).await.status
    }

    /// The value of `key` read through member `i` (linearizable), if there is one.
    pub async fn get(&self, i: usize, key: &str) -> Option<String> {
        let body = format!("{{\"key\":\"{}\"}}", b64(key.as_bytes()));
        let resp = self.post(i, "/v3/kv/range", &body).await;
        let v: serde_json::Value = serde_json::from_str(resp.body()).ok()?;
        let value = v["kvs"][0]["value"].as_str()?;
        String::from_utf8(unb64(value)?).ok()
    }

    /// The store's current revision, read through member `i`.
    pub async fn current_revision(&self, i: usize) -> i64 {
        let body = format!("{{\"key\":\"{}\"}}", b64(b"\0"));
        let resp = self.post(i, "/v3/kv/range", &body).await;
        let v: serde_json::Value = serde_json::from_str(resp.body()).expect("etcd answers JSON");
        // int64 fields are strings in etcd's JSON.
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("etcd's answer has a header revision")
    }

    /// Compacts the history up to `revision` through member `i` (physically, so it is
    /// gone when this returns); the HTTP status.
    pub async fn compact(&self, i: usize, revision: i64) -> u16 {
        let body = format!("{{\"revision\":\"{revision}\",\"physical\":true}}");
        self.post(i, "/v3/kv/compaction", &body).await.status
    }

    async fn post(&self, i: usize, path: &str, body: &str) -> plain::PlainResponse {
        plain::send(
            self.members[i].client,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as etcd's JSON gateway reads bytes.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Bytes from standard base64, as etcd's JSON gateway writes them; `None` when not base64.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut n, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|b| *b == c)? as u32;
        n = n << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
