//! The admin listener's socket: TCP, or a unix socket only the gateway's user can connect
//! to (what Envoy and HAProxy recommend for their admin interfaces).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use portcullis_config::AdminListen;
use portcullis_proxy::BindError;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A bound admin socket.
#[derive(Debug)]
pub(crate) enum AdminListener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket, whose file is removed when this is dropped.
    Unix(UnixSocket),
}

/// A listening unix socket and its path.
#[derive(Debug)]
pub(crate) struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for UnixSocket {
    #[allow(
        clippy::disallowed_methods,
        reason = "one unlink of a local socket path when the admin listener stops"
    )]
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An accepted admin connection.
pub(crate) enum AdminConn {
    /// Over TCP, with the address the client dialled.
    Tcp(TcpStream, SocketAddr),
    /// Over the unix socket.
    Unix(UnixStream),
}

/// Why the admin listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminBindError {
    /// Its TCP address.
    #[error(transparent)]
    Tcp(#[from] BindError),
    /// Its unix socket.
    #[error("cannot listen for admin on unix:{}: {source}", path.display())]
    Unix { path: PathBuf, source: io::Error },
}

impl AdminListener {
    /// Binds `listen`; the error says why, for the `admin.listen` key.
    pub(crate) async fn bind(listen: &AdminListen) -> Result<Self, AdminBindError> {
        match listen {
            AdminListen::Tcp(addr) => Ok(Self::Tcp(portcullis_proxy::bind("admin", *addr).await?)),
            AdminListen::Unix(path) => match bind_unix(path) {
                Ok(listener) => Ok(Self::Unix(UnixSocket {
                    listener,
                    path: path.clone(),
                })),
                Err(source) => Err(AdminBindError::Unix {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// The TCP address (the real port when bound to port 0).
    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix(_) => None,
        }
    }

    /// For the log: the address, or `unix:PATH`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Self::Unix(u) => format!("unix:{}", u.path.display()),
        }
    }

    pub(crate) async fn accept(&self) -> io::Result<AdminConn> {
        match self {
            Self::Tcp(l) => {
                let (tcp, _) = l.accept().await?;
                // The address the client dialled: a `Host` naming it is this listener.
                let local = tcp.local_addr()?;
                Ok(AdminConn::Tcp(tcp, local))
            }
            Self::Unix(u) => Ok(AdminConn::Unix(u.listener.accept().await?.0)),
        }
    }
}

/// Creates the socket under a temporary name, makes it 0600, then renames it into place,
/// so no other user can connect in between (a `chmod` after `bind` leaves a window, and the
/// umask is the whole process's). A socket left behind by a gateway that did not stop
/// cleanly is replaced; a live one, or a file that is not a socket, is not.
#[allow(
    clippy::disallowed_methods,
    reason = "a few metadata calls on a local socket path, once per bind at start-up or reload"
)]
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens on it",
            ));
        }
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}
