//! The byte stream both sides hand around once HTTP is done with it: a client connection
//! after it switched protocols (WebSocket), and an origin connection (plain or TLS), boxed
//! so the tunnel and the origin client need not know which.

use tokio::io::{AsyncRead, AsyncWrite};

/// A boxed byte stream: an upgraded client connection, or a connection to an origin.
pub(crate) type BoxedIo = Box<dyn AsyncIo>;

/// What a [`BoxedIo`] can do.
pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncIo for T {}

impl std::fmt::Debug for dyn AsyncIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxedIo")
    }
}
