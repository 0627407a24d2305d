//! Portcullis TLS: the certificate store the edge resolves SNI against, certificates for
//! sites (files or the local development CA), and the TLS client configs used towards
//! origins.
#![allow(
    clippy::disallowed_methods,
    reason = "no async here: certificate files and the local CA are read and written by plain functions, and their caller decides where that may block"
)]

mod certs;
mod challenges;
mod fs;
mod local_ca;
mod origin;
mod provider;
mod server;
mod sites;
mod store;

pub use certs::{CertInfo, InvalidCertificate, KeyError, certified_key, format_time};
pub use challenges::{ACME_TLS_ALPN, ChallengeCertError, Challenges, tls_alpn01_certificate};
pub use fs::{create_private_dir, write_atomic, write_atomic_unsynced};
pub use local_ca::{LOCAL_LEAF_VALIDITY, LocalCa, LocalCaError};
pub use origin::{OriginTlsConfig, OriginTlsError, origin_tls_config, server_name};
pub use provider::{crypto_provider, install_default_provider};
pub use server::{EDGE_ALPN, EdgeTls, server_config};
pub use sites::{
    CertSource, Preloaded, SiteCert, SiteCerts, load_site_certificates, load_site_certificates_with,
};
pub use store::{CertStore, SiteBinding};
