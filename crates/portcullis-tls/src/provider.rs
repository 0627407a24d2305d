use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The one crypto provider used for every TLS config Portcullis builds (aws-lc-rs).
///
/// Configs are built with it explicitly, so library code never depends on a process-wide
/// default; the binary also installs it as that default so crates that look it up (the ACME
/// client) agree.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Installs [`crypto_provider`] as the process default. Harmless if it already is.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*crypto_provider()).clone());
}
