//! `portcullis reload --config FILE`: asks the running gateway, through its admin listener,
//! to re-read its config file. The file is read only to find the admin address and token,
//! so a file with mistakes still gets them reported by the gateway, key by key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use portcullis_config::{AdminListen, AdminToken, defaults};

/// What the gateway said.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Reloaded; the gateway's summary.
    Reloaded(String),
    /// Refused; one line per problem.
    Refused(Vec<String>),
}

/// Why the admin listener could not be found or asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminRequestError {
    /// The config file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key of the `admin` section cannot be used.
    #[error("{key}: {message}")]
    Config {
        /// The key, e.g. `admin.token_file`.
        key: &'static str,
        /// Why.
        message: String,
    },
    /// The admin listener is off, so there is nothing to ask.
    #[error("the admin listener is off in this config; send SIGHUP to the gateway instead")]
    AdminOff,
    /// The admin listener could not be reached or did not answer.
    #[error("cannot reach the gateway's admin listener at {addr}: {reason}")]
    Unreachable {
        /// Where it was looked for.
        addr: AdminListen,
        /// Why.
        reason: String,
    },
    /// The admin listener wants a token the config does not name.
    #[error(
        "the admin listener at {addr} wants a token, and this config has no \
         `admin.token_file`: {body}"
    )]
    TokenWanted {
        /// The admin listener.
        addr: AdminListen,
        /// Its answer.
        body: String,
    },
    /// Any other answer.
    #[error("the admin listener at {addr} answered {status}: {body}")]
    Answered {
        /// The admin listener.
        addr: AdminListen,
        /// The status code.
        status: u16,
        /// Its answer.
        body: String,
    },
}

/// Where the admin listener is and what to show it.
#[derive(Debug)]
pub struct AdminTarget {
    /// The admin address named in the config file (default `127.0.0.1:9901`), with an
    /// all-interfaces address turned into loopback, or its unix socket.
    pub listen: AdminListen,
    /// The token read from `admin.token_file`, when the config names one.
    pub token: Option<AdminToken>,
}

/// The admin listener named in the config file at `config`, and its token.
#[allow(
    clippy::disallowed_methods,
    reason = "`portcullis reload` reads its config before its one request; nothing else runs then"
)]
pub fn admin_target(config: &Path) -> Result<AdminTarget, AdminRequestError> {
    let text = std::fs::read_to_string(config).map_err(|source| AdminRequestError::ReadConfig {
        path: config.to_owned(),
        source,
    })?;
    let doc = admin_section(&text)
        .and_then(|section| serde_yaml::from_str::<serde_yaml::Value>(section).ok())
        .filter(|doc| doc.get("admin").is_some())
        .unwrap_or_else(|| serde_yaml::from_str(&text).unwrap_or(serde_yaml::Value::Null));
    let admin = doc.get("admin");
    // Relative paths are relative to the config file's folder, as the gateway reads them.
    let base = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let resolve = |path: &str| {
        let path = Path::new(path);
        base.join(path.strip_prefix(".").unwrap_or(path))
    };
    let token = match admin.and_then(|a| a.get("token_file")) {
        None | Some(serde_yaml::Value::Null) => None,
        Some(path) => {
            let token_file = |message: String| AdminRequestError::Config {
                key: "admin.token_file",
                message,
            };
            let path = path
                .as_str()
                .ok_or_else(|| token_file("expected the path of a file".into()))?;
            Some(AdminToken::read(&resolve(path)).map_err(|e| token_file(e.to_string()))?)
        }
    };
    let listen = admin
        .and_then(|a| a.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or(defaults::ADMIN);
    if listen == "off" {
        return Err(AdminRequestError::AdminOff);
    }
    if let Some(path) = listen.strip_prefix("unix:") {
        return Ok(AdminTarget {
            listen: AdminListen::Unix(resolve(path)),
            token,
        });
    }
    let mut addr =
        portcullis_config::parse_addr(listen).map_err(|e| AdminRequestError::Config {
            key: "admin.listen",
            message: e.to_string(),
        })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Ok(AdminTarget {
        listen: AdminListen::Tcp(addr),
        token,
    })
}

/// The top-level `admin:` key of a block-style config, with the indented, blank and comment
/// lines after it, to be parsed alone: parsing a file with 10,000 sites whole takes 0.2 s,
/// longer than the gateway then needs to reload it. `None` when no line starts with
/// `admin:`; the caller then parses the whole file.
fn admin_section(text: &str) -> Option<&str> {
    let mut start = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        // A line starting in column 0 with something other than a comment starts the next
        // top-level key (or a document marker), which ends the section.
        let top_level = !line.starts_with([' ', '\t', '#', '\r', '\n']);
        match start {
            None if line.starts_with("admin:") => start = Some(offset),
            Some(from) if top_level => return Some(&text[from..offset]),
            _ => {}
        }
        offset += line.len();
    }
    Some(&text[start?..])
}

/// Sends `POST /reload` to the admin listener, with its token if there is one.
pub async fn request_reload(target: &AdminTarget) -> Result<ReloadOutcome, AdminRequestError> {
    let addr = &target.listen;
    let unreachable = |e: &dyn std::fmt::Display| AdminRequestError::Unreachable {
        addr: addr.clone(),
        reason: e.to_string(),
    };
    match addr {
        AdminListen::Tcp(tcp) => {
            let io = tokio::net::TcpStream::connect(tcp)
                .await
                .map_err(|e| unreachable(&e))?;
            post_reload(io, &tcp.to_string(), target).await
        }
        AdminListen::Unix(path) => {
            let io = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| unreachable(&e))?;
            post_reload(io, "localhost", target).await
        }
    }
}

/// `POST /reload` on a connection to the admin listener, naming it `host`.
async fn post_reload<IO>(
    io: IO,
    host: &str,
    target: &AdminTarget,
) -> Result<ReloadOutcome, AdminRequestError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = &target.listen;
    let unreachable = |e: &dyn std::fmt::Display| AdminRequestError::Unreachable {
        addr: addr.clone(),
        reason: e.to_string(),
    };
    let (mut sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let mut req = http::Request::post("/reload").header(http::header::HOST, host);
    if let Some(token) = &target.token {
        let mut value =
            http::HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                AdminRequestError::Config {
                    key: "admin.token_file",
                    message: "the token cannot be sent in a header".into(),
                }
            })?;
        value.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, value);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
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
        401 if target.token.is_none() => Err(AdminRequestError::TokenWanted {
            addr: addr.clone(),
            body,
        }),
        status => Err(AdminRequestError::Answered {
            addr: addr.clone(),
            status,
            body,
        }),
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests write their fixtures and wait from outside the served path"
)]
mod tests {
    use super::*;

    fn address(text: &str) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, text).unwrap();
        admin_target(&path)
            .map(|t| t.listen.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_token_file_is_read_next_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(dir.path().join("admin.token"), "abc123\n").unwrap();
        std::fs::write(&path, "admin:\n  token_file: ./admin.token\nsites: []\n").unwrap();
        let target = admin_target(&path).unwrap();
        assert!(target.token.unwrap().matches(b"abc123"));
        std::fs::write(dir.path().join("admin.token"), "").unwrap();
        let err = admin_target(&path).unwrap_err().to_string();
        assert!(
            err.starts_with("admin.token_file: ") && err.contains("empty"),
            "{err}"
        );
    }

    #[test]
    fn the_admin_section_is_read_wherever_it_is_and_however_it_is_written() {
        let sites = "sites:\n  - hosts: [a.test]\n    tls: local\n    respond: {}\n";
        let cases = [
            format!("admin:\n  # comment\n\n  listen: 127.0.0.1:7001\n{sites}"),
            format!("{sites}admin: {{listen: '0.0.0.0:7002'}}\n"),
            format!("{sites}admin:\n  listen: 127.0.0.1:7003"),
            "{admin: {listen: '127.0.0.1:7004'}, sites: []}".to_owned(),
            format!("\"admin\":\n  listen: 127.0.0.1:7005\n{sites}"),
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|c| address(c).map_or_else(|e| e, |a| a.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                "127.0.0.1:7001",
                "127.0.0.1:7002",
                "127.0.0.1:7003",
                "127.0.0.1:7004",
                "127.0.0.1:7005"
            ]
        );
        assert_eq!(address(sites).unwrap().to_string(), defaults::ADMIN);
        assert!(
            address("admin: {listen: off}\n")
                .unwrap_err()
                .contains("SIGHUP")
        );
    }
}
