//! HMAC-SHA256 signing of messages with the fleet's shared secret.
//!
//! Anyone who can publish to the work queue could otherwise make workers run
//! commands: workers execute only orders whose MAC verifies (contract 8, docs/contracts.md).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies message bodies with one shared secret.
#[derive(Clone)]
pub struct Signer {
    key: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

impl Signer {
    /// Creates a signer; any secret length is accepted (HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let key = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        Self { key }
    }

    /// Returns the 32-byte MAC of the version, the message kind and the body.
    pub fn sign(&self, version: u16, kind: &str, body: &[u8]) -> [u8; 32] {
        self.mac(version, kind, body).finalize().into_bytes().into()
    }

    /// Checks a MAC in constant time.
    pub fn verify(&self, version: u16, kind: &str, body: &[u8], signature: &[u8]) -> bool {
        self.mac(version, kind, body)
            .verify_slice(signature)
            .is_ok()
    }

    fn mac(&self, version: u16, kind: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(&version.to_be_bytes());
        // Length-prefixed, so kind and body cannot be shifted into each other.
        mac.update(&(kind.len() as u32).to_be_bytes());
        mac.update(kind.as_bytes());
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_the_same_secret_version_kind_and_body() {
        let signer = Signer::new(b"secret");
        let sig = signer.sign(1, "order", b"body");
        assert!(signer.verify(1, "order", b"body", &sig));
        assert!(!signer.verify(2, "order", b"body", &sig));
        assert!(!signer.verify(1, "event", b"body", &sig));
        assert!(!signer.verify(1, "order", b"bodY", &sig));
        assert!(!Signer::new(b"other").verify(1, "order", b"body", &sig));
        assert!(!signer.verify(1, "order", b"body", &sig[..31]));
    }
}
