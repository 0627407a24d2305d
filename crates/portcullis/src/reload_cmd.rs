//! `portcullis reload --config FILE`: asks the running gateway, through its admin listener,
//! to re-read its config file. The file is read only to find the admin address, so a file
//! with mistakes still gets them reported by the gateway, key by key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use portcullis_config::defaults;

/// What the gateway said.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Reloaded; the gateway's summary.
    Reloaded(String),
    /// Refused; one line per problem.
    Refused(Vec<String>),
}

/// The admin address named in the config file (default `127.0.0.1:9901`), with an
/// all-interfaces address turned into loopback.
pub fn admin_address(config: &Path) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or(serde_yaml::Value::Null);
    let listen = doc
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or(defaults::ADMIN);
    if listen == "off" {
        return Err(
            "the admin listener is off in this config; send SIGHUP to the gateway instead".into(),
        );
    }
    let mut addr =
        portcullis_config::parse_addr(listen).map_err(|e| format!("admin.listen: {e}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Ok(addr)
}

/// Sends `POST /reload` to the admin listener at `addr`.
pub async fn request_reload(addr: SocketAddr) -> Result<ReloadOutcome, String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("cannot reach the gateway's admin listener at {addr}: {e}")
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let req = http::Request::post("/reload")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    match status.as_u16() {
        200 => Ok(ReloadOutcome::Reloaded(body)),
        422 => Ok(ReloadOutcome::Refused(
            body.lines().map(str::to_owned).collect(),
        )),
        other => Err(format!(
            "the admin listener at {addr} answered {other}: {body}"
        )),
    }
}
