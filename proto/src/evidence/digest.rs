//! SHA-256 as packs record it: lowercase hex, with the number of bytes
//! hashed. One implementation for the worker that stores files and the
//! coordinator that copies and checks them, so both hash the same way.
//!
//! Pure over the readers and writers it is given: opening files (and
//! refusing symlinks, FIFOs and folders) stays with whoever opens them.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// What a pack records of a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    pub bytes: u64,
}

/// Which side of [`copy_hashed`] failed: reading is the source's fault,
/// writing the destination's (for the worker, its store's).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    #[error("cannot write: {0}")]
    Write(#[source] io::Error),
}

/// Hex SHA-256 of bytes already in memory (a pack, a batch pack).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A writer that hashes and counts the bytes it passes on to another.
#[derive(Debug)]
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Sha256Writer<W> {
    pub fn new(inner: W) -> Sha256Writer<W> {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The hash of everything written so far, and the inner writer back.
    pub fn finish(self) -> (W, Hashed) {
        let hashed = Hashed {
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        };
        (self.inner, hashed)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hash only what the inner writer took, so a short write is counted once.
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything `reader` yields.
pub fn hash_reader(mut reader: impl Read) -> io::Result<Hashed> {
    let mut sink = Sha256Writer::new(io::sink());
    io::copy(&mut reader, &mut sink)?;
    Ok(sink.finish().1)
}

/// Copies `reader` into `writer`, flushed, hashing the bytes as they pass,
/// so a stored copy's hash is that of the bytes stored.
pub fn copy_hashed(mut reader: impl Read, writer: impl Write) -> Result<Hashed, CopyError> {
    let mut writer = Sha256Writer::new(writer);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        writer.write_all(&buffer[..n]).map_err(CopyError::Write)?;
    }
    writer.flush().map_err(CopyError::Write)?;
    Ok(writer.finish().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc"), from FIPS 180-2.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn bytes_readers_and_copies_hash_alike() {
        assert_eq!(sha256_hex(b"abc"), ABC);
        let hashed = hash_reader(&b"abc"[..]).unwrap();
        assert_eq!(
            hashed,
            Hashed {
                sha256: ABC.into(),
                bytes: 3
            }
        );
        let mut copy = Vec::new();
        assert_eq!(copy_hashed(&b"abc"[..], &mut copy).unwrap(), hashed);
        assert_eq!(copy, b"abc");
    }

    #[test]
    fn a_copy_larger_than_its_buffer_hashes_every_byte() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut copy = Vec::new();
        let hashed = copy_hashed(&bytes[..], &mut copy).unwrap();
        assert_eq!(copy, bytes);
        assert_eq!(hashed.sha256, sha256_hex(&bytes));
        assert_eq!(hashed.bytes, bytes.len() as u64);
    }

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk gone"))
        }
    }

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_copy_says_which_side_failed() {
        assert!(matches!(
            copy_hashed(Failing, Vec::new()),
            Err(CopyError::Read(_))
        ));
        assert!(matches!(
            copy_hashed(&b"abc"[..], Failing),
            Err(CopyError::Write(_))
        ));
    }
}
