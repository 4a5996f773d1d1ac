//! Bearer authentication of the API: the scheme read as RFC 7235 says
//! (case-insensitive), the token compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token of an `Authorization: Bearer <token>` header, whatever the
/// case of the scheme (`bearer`, `BEARER` are the same scheme).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_start_matches(' ');
    (!token.is_empty()).then_some(token)
}

/// Whether the presented token is the expected one. Both are hashed first,
/// so neither the time taken nor an early length check says how much of a
/// guess was right.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    presented.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive() {
        for header in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR   s3cret",
        ] {
            assert_eq!(bearer_token(header), Some("s3cret"), "{header}");
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_refused() {
        for header in ["Basic s3cret", "Bearer", "Bearer ", "Bearers3cret", ""] {
            assert_eq!(bearer_token(header), None, "{header}");
        }
    }

    #[test]
    fn only_the_exact_token_matches() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cret ", "s3cret"));
        assert!(!token_matches("", "s3cret"));
        assert!(!token_matches("S3CRET", "s3cret"));
    }
}
