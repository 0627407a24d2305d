//! The `admin` section: where the admin listener is, its token, and the host names it
//! answers to.

use std::net::IpAddr;
use std::path::Path;

use super::Validator;
use crate::file::AdminFile;
use crate::model::{Admin, AdminListen, AdminToken, defaults};

impl Validator<'_> {
    pub(super) fn admin(&mut self, f: AdminFile) -> Option<Admin> {
        let before = self.problems.len();
        let listen = match f.listen.as_deref() {
            Some("off") => None,
            Some(text) if text.starts_with("unix:") => self.unix_socket(&text["unix:".len()..]),
            other => self
                .addr(other.unwrap_or(defaults::ADMIN), "admin.listen")
                .map(AdminListen::Tcp),
        };
        let token = f.token_file.and_then(|path| {
            AdminToken::read(&self.resolve(&path))
                .map_err(|e| self.err("admin.token_file", e.to_string()))
                .ok()
        });
        let mut allowed_hosts = Vec::new();
        for (i, text) in f.allowed_hosts.unwrap_or_default().iter().enumerate() {
            match allowed_host(text) {
                Ok(host) => allowed_hosts.push(host),
                Err(e) => self.err(format!("admin.allowed_hosts[{i}]"), e),
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(Admin {
            listen,
            token,
            allowed_hosts,
        })
    }

    /// `unix:PATH`, resolved against the config file's folder.
    fn unix_socket(&mut self, path: &str) -> Option<AdminListen> {
        if path.trim().is_empty() {
            self.err(
                "admin.listen",
                "`unix:` needs a path, e.g. `unix:/run/portcullis/admin.sock`",
            );
            return None;
        }
        let path = self.resolve(Path::new(path));
        // `sockaddr_un` holds 108 bytes with the final NUL; the gateway binds a temporary
        // name a little longer first (see the admin listener).
        if path.as_os_str().len() > UNIX_PATH_MAX {
            self.err(
                "admin.listen",
                format!(
                    "`unix:{}` is longer than the {UNIX_PATH_MAX} bytes a unix socket path may have here",
                    path.display()
                ),
            );
            return None;
        }
        Some(AdminListen::Unix(path))
    }
}

/// The longest socket path accepted: 107 bytes, less room for the temporary name the
/// socket is created under (`.NAME.PID.tmp`, up to 16 bytes more).
const UNIX_PATH_MAX: usize = 107 - 16;

/// A name such as `portcullis-admin.gw.svc` or an address, as a `Host` header names it
/// without its port: lowercased, with no trailing dot, an IPv6 address without brackets.
fn allowed_host(text: &str) -> Result<String, String> {
    let host = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let name_like = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if name_like {
        Ok(host)
    } else {
        Err(format!(
            "`{text}` is not a host name or IP address (write it without scheme, port or path)"
        ))
    }
}
