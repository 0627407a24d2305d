//! The TLS handshake at the edge. The ClientHello is read first so an unknown SNI can be
//! refused with the `unrecognized_name` alert (rustls alone would answer `access_denied`),
//! and so later issues can pick another server config by ALPN (ACME `acme-tls/1`).

use std::io;

use portcullis_tls::ACME_TLS_ALPN;
use rustls::server::Acceptor;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;
use tokio_rustls::server::TlsStream;

use crate::shared::Shared;

/// A fatal `unrecognized_name` (112) alert record, TLS 1.2 record version.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("no certificate for SNI {0:?}")]
    UnknownSni(Option<String>),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

impl HandshakeError {
    /// A fixed label for the `reason` of the handshake failure metric.
    pub(crate) fn reason(&self) -> &'static str {
        use rustls::Error;
        match self {
            HandshakeError::UnknownSni(_) => "unknown_sni",
            HandshakeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
            HandshakeError::Io(e) => match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
                Some(tls) => reason_of(tls),
                None => "io",
            },
            HandshakeError::Tls(e) => reason_of(e),
        }
    }
}

fn reason_of(e: &rustls::Error) -> &'static str {
    use rustls::{Error, PeerIncompatible};
    match e {
        Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon) => "no_shared_cipher",
        Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon) => "no_shared_group",
        Error::PeerIncompatible(PeerIncompatible::NoSignatureSchemesInCommon) => {
            "no_shared_signature"
        }
        Error::PeerIncompatible(_) => "incompatible",
        Error::AlertReceived(_) => "alert_received",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => "protocol",
        _ => "other",
    }
}

/// Reads the ClientHello, picks the server config, and completes the handshake. The stream
/// comes boxed: it lives as long as the connection, and a box keeps its 1 KiB+ of rustls
/// state out of the futures that hold it.
pub(crate) async fn accept(
    tcp: TcpStream,
    shared: &Shared,
) -> Result<Box<TlsStream<TcpStream>>, HandshakeError> {
    handshake(tcp, shared).await.map(Box::new)
}

async fn handshake(
    mut tcp: TcpStream,
    shared: &Shared,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        tcp.readable().await?;
        match acceptor.read_tls(&mut NonBlockingRead(&tcp)) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => continue,
            Err((err, mut alert)) => {
                let mut buf = Vec::new();
                let _ = alert.write_all(&mut buf);
                let _ = tcp.write_all(&buf).await;
                return Err(err.into());
            }
        }
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name();
    // An ACME server validating TLS-ALPN-01 offers `acme-tls/1` and nothing else (RFC 8737).
    let acme = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
    if acme {
        if !sni.is_some_and(|name| shared.challenges.has_tls_alpn01(name)) {
            let _ = tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            return Err(HandshakeError::UnknownSni(sni.map(str::to_owned)));
        }
        let config = shared.challenges.tls_alpn01_config();
        return Ok(StartHandshake::from_parts(accepted, tcp)
            .into_stream(config)
            .await?);
    }
    if shared.certs.resolve(sni).is_none() {
        let sni = sni.map(str::to_owned);
        let _ = tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await;
        return Err(HandshakeError::UnknownSni(sni));
    }
    let config = shared.tls.for_hello(&hello);
    Ok(StartHandshake::from_parts(accepted, tcp)
        .into_stream(config)
        .await?)
}

/// `std::io::Read` over a non-blocking socket, for rustls' synchronous `read_tls`.
struct NonBlockingRead<'a>(&'a TcpStream);

impl io::Read for NonBlockingRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}
