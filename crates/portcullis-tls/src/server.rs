use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::{CipherSuite, ServerConfig, SupportedCipherSuite};

use crate::provider::crypto_provider;

/// ALPN protocols the edge offers, in preference order.
pub const EDGE_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The edge's server configs: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, certificates from
/// the resolver (normally the [`CertStore`](crate::CertStore)), stateless session tickets.
///
/// The two configs differ only in who picks the cipher suite. Most clients list
/// AES-256-GCM first, but AES-128-GCM is as safe in practice, faster on every CPU with AES
/// instructions, and in TLS 1.3 brings SHA-256 (which such CPUs also accelerate) to the key
/// schedule in place of SHA-384: so the edge picks AES-128 first. A client that lists
/// ChaCha20-Poly1305 first says it has no AES hardware, and gets its own order (as Go's
/// `crypto/tls`, and so Caddy, do).
#[derive(Debug, Clone)]
pub struct EdgeTls {
    aes_first: Arc<ServerConfig>,
    client_order: Arc<ServerConfig>,
}

impl EdgeTls {
    /// The config for a handshake that sent `hello`.
    pub fn for_hello(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let chacha_first = hello.cipher_suites().first().is_some_and(|s| {
            matches!(
                s,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
        if chacha_first {
            self.client_order.clone()
        } else {
            self.aes_first.clone()
        }
    }
}

/// Builds the edge's configs around `resolver`.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<EdgeTls, rustls::Error> {
    let mut provider = CryptoProvider::clone(&crypto_provider());
    provider.cipher_suites.sort_by_key(preference);
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = EDGE_ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    // One ticket per connection, as Go and Caddy send: a browser resumes once per ticket,
    // and each ticket costs an encryption and a record on every full handshake.
    config.send_tls13_tickets = 1;
    let client_order = Arc::new(config.clone());
    config.ignore_client_order = true;
    Ok(EdgeTls {
        aes_first: Arc::new(config),
        client_order,
    })
}

/// Rank of a suite in the edge's own order: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305
/// (a stable sort keeps each group's TLS 1.3 suite before its TLS 1.2 ones).
fn preference(suite: &SupportedCipherSuite) -> u8 {
    let name = suite.suite().as_str().unwrap_or_default();
    if name.contains("AES_128_GCM") {
        0
    } else if name.contains("AES_256_GCM") {
        1
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::crypto::aws_lc_rs::cipher_suite as suites;
    use rustls::server::{Acceptor, ResolvesServerCertUsingSni};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use rustls_pki_types::ServerName;

    /// Runs a handshake in memory, the server side through an `Acceptor` as at the edge;
    /// returns the suite agreed on.
    fn negotiate(client_suites: &[SupportedCipherSuite]) -> CipherSuite {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let signing = crypto_provider()
            .key_provider
            .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
                key.serialize_der().into(),
            ))
            .unwrap();
        let mut resolver = ResolvesServerCertUsingSni::new();
        resolver
            .add(
                "a.test",
                rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing),
            )
            .unwrap();
        let edge = server_config(Arc::new(resolver)).unwrap();

        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = CryptoProvider {
            cipher_suites: client_suites.to_vec(),
            ..CryptoProvider::clone(&crypto_provider())
        };
        let client_config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("a.test").unwrap();
        let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();

        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        let mut acceptor = Acceptor::default();
        acceptor.read_tls(&mut &wire[..]).unwrap();
        let accepted = acceptor.accept().ok().flatten().unwrap();
        let config = edge.for_hello(&accepted.client_hello());
        let mut server = accepted.into_connection(config).ok().unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut to_client = Vec::new();
            server.write_tls(&mut to_client).unwrap();
            client.read_tls(&mut &to_client[..]).unwrap();
            client.process_new_packets().unwrap();
            let mut to_server = Vec::new();
            client.write_tls(&mut to_server).unwrap();
            server.read_tls(&mut &to_server[..]).unwrap();
            server.process_new_packets().unwrap();
        }
        assert!(!server.is_handshaking(), "handshake did not finish");
        let mut tickets = Vec::new();
        server.write_tls(&mut tickets).unwrap();
        client.read_tls(&mut &tickets[..]).unwrap();
        client.process_new_packets().unwrap();
        assert_eq!(client.tls13_tickets_received(), 1, "session tickets sent");
        server.negotiated_cipher_suite().unwrap().suite()
    }

    #[test]
    fn the_edge_prefers_aes_128_unless_the_client_leads_with_chacha() {
        // The order OpenSSL and rustls clients send: AES-256 first.
        let aes_256_first = [
            suites::TLS13_AES_256_GCM_SHA384,
            suites::TLS13_AES_128_GCM_SHA256,
            suites::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        assert_eq!(
            negotiate(&aes_256_first),
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // A client without AES hardware.
        let chacha_first = [
            suites::TLS13_CHACHA20_POLY1305_SHA256,
            suites::TLS13_AES_128_GCM_SHA256,
        ];
        assert_eq!(
            negotiate(&chacha_first),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        // A client offering only AES-256 still gets it.
        assert_eq!(
            negotiate(&[suites::TLS13_AES_256_GCM_SHA384]),
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
    }
}
