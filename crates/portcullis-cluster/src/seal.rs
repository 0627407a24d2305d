//! Private keys and the ACME account at rest in the store: AES-256-GCM under the key of
//! `cluster.encryption_key_file`, bound to the record's key (a sealed value moved to another
//! key does not open), or as they are when no key is configured.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Seals and opens secrets (a clone shares nothing mutable).
#[derive(Clone)]
pub struct Sealer {
    key: Option<std::sync::Arc<LessSafeKey>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("encrypting", &self.key.is_some())
            .finish()
    }
}

/// A secret as stored: in the clear, or sealed (base64 of nonce and ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No encryption key configured.
    Plain(String),
    /// Sealed.
    Sealed(String),
}

/// Why a stored secret could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed, but this replica has no encryption key.
    #[error("the private key is encrypted and this replica has no cluster.encryption_key_file")]
    NoKey,
    /// Sealed with another key, moved from another record, or damaged.
    #[error(
        "the private key does not decrypt with this replica's cluster.encryption_key_file (another key, or a damaged record)"
    )]
    Undecryptable,
}

impl Sealer {
    /// With `key` (32 bytes), secrets are sealed; without, stored as they are.
    pub fn new(key: Option<&[u8; 32]>) -> Self {
        Self {
            key: key.map(|k| {
                std::sync::Arc::new(LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, k).expect("32 bytes is an AES-256 key"),
                ))
            }),
        }
    }

    /// `secret` as stored under the record key `aad`.
    pub fn seal(&self, aad: &str, secret: &str) -> Stored {
        let Some(key) = &self.key else {
            return Stored::Plain(secret.to_owned());
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut data,
        )
        .expect("AES-GCM sealing of a small buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Stored::Sealed(STANDARD.encode(out))
    }

    /// The secret stored under the record key `aad`.
    pub fn open(&self, aad: &str, stored: &Stored) -> Result<String, OpenError> {
        match stored {
            Stored::Plain(s) => Ok(s.clone()),
            Stored::Sealed(text) => {
                let key = self.key.as_ref().ok_or(OpenError::NoKey)?;
                let bytes = STANDARD
                    .decode(text)
                    .map_err(|_| OpenError::Undecryptable)?;
                if bytes.len() < NONCE_LEN {
                    return Err(OpenError::Undecryptable);
                }
                let (nonce, sealed) = bytes.split_at(NONCE_LEN);
                let nonce = Nonce::try_assume_unique_for_key(nonce)
                    .map_err(|_| OpenError::Undecryptable)?;
                let mut sealed = sealed.to_vec();
                let plain = key
                    .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut sealed)
                    .map_err(|_| OpenError::Undecryptable)?;
                String::from_utf8(plain.to_vec()).map_err(|_| OpenError::Undecryptable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_record() {
        let sealer = Sealer::new(Some(&[7; 32]));
        let stored = sealer.seal("certs/a", "-----BEGIN PRIVATE KEY-----");
        let Stored::Sealed(text) = &stored else {
            panic!("not sealed")
        };
        assert!(!text.contains("PRIVATE"));
        assert_eq!(
            sealer.open("certs/a", &stored).unwrap(),
            "-----BEGIN PRIVATE KEY-----"
        );
        assert_eq!(
            sealer.open("certs/b", &stored),
            Err(OpenError::Undecryptable),
            "moved to another record"
        );
        assert_eq!(
            Sealer::new(Some(&[8; 32])).open("certs/a", &stored),
            Err(OpenError::Undecryptable)
        );
        assert_eq!(
            Sealer::new(None).open("certs/a", &stored),
            Err(OpenError::NoKey)
        );
        assert_eq!(
            sealer.open("certs/a", &Stored::Sealed("!!".into())),
            Err(OpenError::Undecryptable)
        );
        let plain = Sealer::new(None).seal("certs/a", "k");
        assert_eq!(plain, Stored::Plain("k".into()));
        assert_eq!(sealer.open("certs/a", &plain).unwrap(), "k");
    }
}
