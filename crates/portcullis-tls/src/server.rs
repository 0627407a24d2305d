use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;

use crate::provider::crypto_provider;

/// ALPN protocols the edge offers, in preference order.
pub const EDGE_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The edge's server config: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, certificates from
/// `resolver` (normally the [`CertStore`](crate::CertStore)), stateless session tickets.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = EDGE_ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}
