//! The sealed form of every message on the wire.
//!
//! An envelope is a MessagePack array `[version, kind, body, signature]`.
//! The version is read before anything else, so an old worker refuses a newer
//! order with a clear error instead of misreading it; the signature covers
//! version, kind and body; the body is decoded only once they check out.

use std::fmt;

use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Signer};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// A message kind that travels in an envelope.
pub trait Message: Serialize + DeserializeOwned {
    /// A short tag checked on open, so an event is never read as an order.
    const KIND: &'static str;
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u16,
    kind: String,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// Encodes and signs a message.
pub fn seal<M: Message>(message: &M, signer: &Signer) -> Vec<u8> {
    // Serialising derived structs of strings and numbers into a Vec cannot fail.
    let body = rmp_serde::to_vec_named(message).unwrap_or_default();
    let signature = signer.sign(FORMAT_VERSION, M::KIND, &body).to_vec();
    let envelope = Envelope {
        version: FORMAT_VERSION,
        kind: M::KIND.to_owned(),
        body,
        signature,
    };
    rmp_serde::to_vec(&envelope).unwrap_or_default()
}

/// Checks version, kind and signature, then decodes the message.
///
/// Never panics, whatever the bytes.
pub fn open<M: Message>(bytes: &[u8], signer: &Signer) -> Result<M, Error> {
    let version = peek_version(bytes)?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let envelope: Envelope =
        rmp_serde::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
    if envelope.kind != M::KIND {
        return Err(Error::Body(format!(
            "expected a '{}' message, found '{}'",
            M::KIND,
            envelope.kind
        )));
    }
    if !signer.verify(
        envelope.version,
        &envelope.kind,
        &envelope.body,
        &envelope.signature,
    ) {
        return Err(Error::BadSignature);
    }
    rmp_serde::from_slice(&envelope.body).map_err(|e| Error::Body(e.to_string()))
}

/// Reads only the leading version of an envelope, whatever follows it, so
/// that a future format with other fields is reported as "newer", not as
/// garbage.
fn peek_version(bytes: &[u8]) -> Result<u16, Error> {
    struct Head(u16);
    impl<'de> Deserialize<'de> for Head {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_seq(HeadVisitor)
        }
    }
    struct HeadVisitor;
    impl<'de> Visitor<'de> for HeadVisitor {
        type Value = Head;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an envelope array starting with a format version")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Head, A::Error> {
            let version: u16 = seq
                .next_element()?
                .ok_or_else(|| serde::de::Error::custom("empty envelope"))?;
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Head(version))
        }
    }
    rmp_serde::from_slice::<Head>(bytes)
        .map(|Head(v)| v)
        .map_err(|e| Error::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, SessionEvent, WorkOrder};

    fn signer() -> Signer {
        Signer::new(b"test-secret")
    }

    #[test]
    fn an_order_round_trips() {
        let order = WorkOrder::example();
        let bytes = seal(&order, &signer());
        let back: WorkOrder = open(&bytes, &signer()).expect("opens");
        assert_eq!(back, order);
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let mut bytes = seal(&WorkOrder::example(), &signer());
        // Flip a byte inside the command text, which lives in the body.
        let pos = bytes
            .windows(4)
            .position(|w| w == b"echo")
            .expect("command is in the body");
        bytes[pos] = b'E';
        assert!(matches!(
            open::<WorkOrder>(&bytes, &signer()),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn another_secret_is_refused() {
        let bytes = seal(&WorkOrder::example(), &signer());
        let err = open::<WorkOrder>(&bytes, &Signer::new(b"other")).unwrap_err();
        assert!(matches!(err, Error::BadSignature));
    }

    #[test]
    fn a_newer_version_is_refused_by_name_even_with_extra_fields() {
        let future = (
            2u16,
            "order",
            serde_bytes::Bytes::new(b"x"),
            serde_bytes::Bytes::new(b"y"),
            "new field",
        );
        let bytes = rmp_serde::to_vec(&future).expect("encodes");
        let err = open::<WorkOrder>(&bytes, &signer()).unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn an_event_is_not_read_as_an_order() {
        let event = SessionEvent::example(EventKind::Started { lease_wait_ms: 3 });
        let bytes = seal(&event, &signer());
        assert!(matches!(
            open::<WorkOrder>(&bytes, &signer()),
            Err(Error::Body(_))
        ));
        let back: SessionEvent = open(&bytes, &signer()).expect("opens as an event");
        assert_eq!(back, event);
    }

    #[test]
    fn garbage_is_malformed() {
        for bytes in [
            &b""[..],
            b"hello",
            &[0x91],
            &[0xdc, 0xff, 0xff],
            &[0x94, 0xcd],
        ] {
            assert!(open::<WorkOrder>(bytes, &signer()).is_err());
        }
    }

    proptest::proptest! {
        // Failures are kept in proto/proptest-regressions/ (commit them) and
        // replayed first on every run. `Direct`, with an absolute path: the
        // default saves relative to the workspace but loads from the crate.
        #![proptest_config(proptest::test_runner::Config {
            cases: 2_000,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/proptest-regressions/envelope.txt"
                )),
            )),
            ..proptest::test_runner::Config::default()
        })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = open::<WorkOrder>(&bytes, &signer());
            let _ = open::<SessionEvent>(&bytes, &signer());
        }

        #[test]
        fn mutated_orders_never_panic(pos in 0usize..4096, byte in proptest::num::u8::ANY) {
            let mut bytes = seal(&WorkOrder::example(), &signer());
            let at = pos % bytes.len();
            bytes[at] = byte;
            let _ = open::<WorkOrder>(&bytes, &signer());
        }

        #[test]
        fn mutated_events_never_panic(edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..8)) {
            let event = SessionEvent::example(EventKind::Started { lease_wait_ms: 3 });
            let mut bytes = seal(&event, &signer());
            for (pos, byte) in edits {
                let at = pos % bytes.len();
                bytes[at] = byte;
            }
            // Whatever the bytes, an error or the untouched event: a
            // changed byte never yields a different event.
            if let Ok(opened) = open::<SessionEvent>(&bytes, &signer()) {
                proptest::prop_assert_eq!(opened, event);
            }
        }
    }
}
