//! Durations as manifests spell them: `90s`, `30m`, `4h`, `1h30m`, `500ms`.
//!
//! The grammar, `format` and the serde helpers are the contract's
//! ([`regatta_proto::duration`]), so that a manifest's `timeout:` and the
//! binaries' flags (`--lease-ttl`, `--grace`, ...) accept the same strings.

pub use regatta_proto::duration::*;
