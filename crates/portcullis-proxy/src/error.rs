//! Failures of a proxied exchange, classified by the side that failed so they map to a
//! status code, a log field and (later) a metric label without parsing text.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// What went wrong talking to an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailureKind {
    /// The origin actively refused the TCP connection.
    Refused,
    /// TCP connect plus TLS handshake did not finish in time.
    ConnectTimeout,
    /// The origin's name did not resolve.
    Resolve,
    /// Any other failure to open the TCP connection.
    Connect,
    /// Strict mode: the origin's certificate failed verification.
    Verify,
    /// The TLS handshake failed for another reason.
    Tls,
    /// No response headers within the response-header timeout.
    ResponseTimeout,
    /// The connection was closed or reset before a response arrived.
    Reset,
}

impl OriginFailureKind {
    /// A short, fixed label for logs and metrics: `connect`, `timeout`, `tls` or `reset`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Refused | Self::Resolve | Self::Connect => "connect",
            Self::ConnectTimeout | Self::ResponseTimeout => "timeout",
            Self::Verify | Self::Tls => "tls",
            Self::Reset => "reset",
        }
    }

    /// True for failures before anything was sent to the origin (connect, TLS), which
    /// are safe to retry for any method.
    pub fn is_connect(self) -> bool {
        matches!(
            self,
            Self::Refused
                | Self::ConnectTimeout
                | Self::Resolve
                | Self::Connect
                | Self::Verify
                | Self::Tls
        )
    }

    /// True for the two timeouts, which answer 504.
    pub fn is_timeout(self) -> bool {
        matches!(self, Self::ConnectTimeout | Self::ResponseTimeout)
    }
}

/// A failed attempt to reach an origin, with a human-readable detail for the log.
#[derive(Debug, Clone)]
pub struct OriginError {
    kind: OriginFailureKind,
    detail: String,
}

impl OriginError {
    pub(crate) fn new(kind: OriginFailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    pub(crate) fn response_timeout(after: Duration) -> Self {
        Self::new(
            OriginFailureKind::ResponseTimeout,
            format!("no response headers within {after:?}"),
        )
    }

    /// An origin connection failed under a request (connect failures never reach hyper:
    /// the pool reports them itself), with hyper's chain of causes as the detail.
    pub(crate) fn from_hyper(err: &hyper::Error) -> Self {
        let mut detail = err.to_string();
        let mut source = err.source();
        while let Some(e) = source {
            detail.push_str(": ");
            detail.push_str(&e.to_string());
            source = e.source();
        }
        Self::new(OriginFailureKind::Reset, detail)
    }

    /// What kind of failure this was.
    pub fn kind(&self) -> OriginFailureKind {
        self.kind
    }

    /// The status the client gets: 504 for timeouts, `verify_status` (502 or 526) when strict
    /// verification failed, 502 otherwise.
    pub fn status(&self, verify_status: StatusCode) -> StatusCode {
        match self.kind {
            k if k.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            OriginFailureKind::Verify => verify_status,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl StdError for OriginError {}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {what} on {addr}: {reason}")]
pub struct BindError {
    /// Which listener (`https`, `http`, `admin`).
    pub what: &'static str,
    /// The address asked for.
    pub addr: std::net::SocketAddr,
    /// Why, with a hint where one helps.
    pub reason: String,
}

impl BindError {
    /// Describes an OS error from `bind`, with the usual fixes.
    pub fn new(what: &'static str, addr: std::net::SocketAddr, err: &std::io::Error) -> Self {
        let reason = match err.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!(
                    "address already in use (another process listens on port {})",
                    addr.port()
                )
            }
            std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
                "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE \
                 (`sudo setcap cap_net_bind_service=+ep $(command -v portcullis)`, or \
                 `AmbientCapabilities=CAP_NET_BIND_SERVICE` under systemd)"
                    .to_owned()
            }
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => {
                "address not available on this machine (no interface has that IP)".to_owned()
            }
            _ => err.to_string(),
        };
        Self { what, addr, reason }
    }
}

/// An origin's clients could not be built from its settings ([`Upstream::new`]); the
/// message says which setting and why.
///
/// [`Upstream::new`]: crate::Upstream::new
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The origin's TLS settings, or a server's host as a TLS server name (when no
    /// `server_name` replaces it), make no client config.
    #[error(transparent)]
    Tls(#[from] portcullis_tls::OriginTlsError),
}
