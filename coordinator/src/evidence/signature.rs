//! The batch pack's signature: HMAC-SHA256 of `batch-pack.json`'s exact
//! bytes under the fleet secret (`REGATTA_SECRET`), in
//! `batch-pack.json.sig` beside it.
//!
//! Hashes alone vouch for nothing against someone who can write the folder:
//! they edit a log, recompute its sha256 in the session pack and the session
//! pack's in the batch pack. The batch pack is the root of every hash, so
//! signing its bytes covers every file. The fleet secret was chosen over a
//! key pair of its own: it is the key the coordinator already holds, and
//! rotating or distributing another would be one more secret to lose; the
//! cost is that whoever verifies holds a key that can also sign (as workers
//! do). The message is prefixed with a context string, so a signature of a
//! batch pack can never pass for a work order's.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature's file name, beside `batch-pack.json`.
pub const SIGNATURE_FILE: &str = "batch-pack.json.sig";

/// The algorithm named in the signature file, so a later format can be told apart.
const ALGORITHM: &str = "hmac-sha256";

/// Keeps these signatures apart from any other use of the fleet secret.
const CONTEXT: &[u8] = b"regatta batch-pack v1\n";

/// What a signature file says about a batch pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    /// It was made with another key, or the batch pack was changed since.
    Mismatch,
    /// The file does not hold a signature of this format.
    Malformed(String),
}

fn mac(secret: &[u8], batch_pack: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(CONTEXT);
    mac.update(batch_pack);
    mac
}

/// The signature file's content for these batch pack bytes.
pub fn sign(secret: &[u8], batch_pack: &[u8]) -> String {
    let tag = mac(secret, batch_pack).finalize().into_bytes();
    format!("{ALGORITHM}:{}\n", hex::encode(tag))
}

/// Checks a signature file's content against the batch pack's bytes, in
/// constant time.
pub fn check(secret: &[u8], batch_pack: &[u8], signature_file: &str) -> SignatureCheck {
    let Some(hex_tag) = signature_file
        .trim()
        .strip_prefix(ALGORITHM)
        .and_then(|rest| rest.strip_prefix(':'))
    else {
        return SignatureCheck::Malformed(format!("expected '{ALGORITHM}:<hex>'"));
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return SignatureCheck::Malformed("the signature is not hex".into());
    };
    match mac(secret, batch_pack).verify_slice(&tag) {
        Ok(()) => SignatureCheck::Valid,
        Err(_) => SignatureCheck::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_its_bytes_and_key() {
        let signed = sign(b"secret", b"{\"units\":[]}\n");
        assert!(signed.starts_with("hmac-sha256:"));
        assert_eq!(
            check(b"secret", b"{\"units\":[]}\n", &signed),
            SignatureCheck::Valid
        );
        assert_eq!(
            check(b"secret", b"{\"units\":[1]}\n", &signed),
            SignatureCheck::Mismatch
        );
        assert_eq!(
            check(b"other", b"{\"units\":[]}\n", &signed),
            SignatureCheck::Mismatch
        );
        assert!(matches!(
            check(b"secret", b"{}", "sha1:00"),
            SignatureCheck::Malformed(_)
        ));
    }
}
