//! One client connection as its requests see it: the addresses, the SNI, the clock, and
//! where its stream goes if a response switches protocols. Made by the listener when the
//! connection is accepted (`listener::conn_info`).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{ConnClock, DrainWatch, OpenGuard};
use crate::headers::ClientAddr;
use crate::io::BoxedIo;

/// What the gateway knows about one client connection; every request on it holds it.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: std::net::SocketAddr,
    /// The listener's address this connection came in on.
    pub(crate) local: std::net::SocketAddr,
    /// Whether it came over TLS (false: the plain HTTP listener).
    pub(crate) tls: bool,
    /// The SNI the client sent, lowercase (rustls normalises it).
    pub(crate) sni: Option<Box<str>>,
    pub(crate) client: ClientAddr,
    /// Upgraded tunnels hold a copy so a drain waits for them too.
    pub(crate) _drain: DrainWatch,
    /// Tracks requests in flight, idle time and client resets.
    pub(crate) clock: Arc<ConnClock>,
    /// `limits.h2_max_resets` when the connection was made.
    pub(crate) max_resets: u32,
    /// Keeps the connection counted (and its place under the caps) while anything uses
    /// it, an upgraded tunnel included.
    pub(crate) _open: OpenGuard,
    /// Where the client's stream goes once a response has switched protocols.
    pub(crate) upgrade: Mutex<Option<oneshot::Sender<BoxedIo>>>,
}

impl ConnInfo {
    /// The client's stream, once the switching response has been sent (HTTP/1.1 only).
    pub(crate) fn hand_over(&self) -> oneshot::Receiver<BoxedIo> {
        let (tx, rx) = oneshot::channel();
        *self.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Whoever waits for the client's stream, if a response switched protocols.
    pub(crate) fn take_upgrade(&self) -> Option<oneshot::Sender<BoxedIo>> {
        self.upgrade
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
