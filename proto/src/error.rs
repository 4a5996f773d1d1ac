//! Errors of the wire contract: each says whether the message can ever be read.

/// Why a message could not be opened. None of these is retryable: the
/// message goes to the dead-letter queue with this text as its reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not an envelope at all (garbage, truncated, another protocol).
    #[error("not a regatta message: {0}")]
    Malformed(String),
    /// A newer (or unknown) format: upgrade the worker or the coordinator.
    #[error("message format version {found} is not supported (this build reads version {supported}); upgrade this process")]
    UnsupportedVersion { found: u16, supported: u16 },
    /// The HMAC does not match: wrong `REGATTA_SECRET`, or a forged or altered message.
    #[error("bad signature: the message was not signed with this fleet's REGATTA_SECRET")]
    BadSignature,
    /// The envelope is sound but its body is not the expected message kind.
    #[error("unexpected message body: {0}")]
    Body(String),
    /// A namespace that cannot appear in queue names and Redis keys.
    #[error("invalid namespace '{0}': use 1 to 64 characters among A-Z a-z 0-9 . _ -")]
    Namespace(String),
}
