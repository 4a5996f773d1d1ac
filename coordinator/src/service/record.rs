//! The manifest in a batch's Redis record, cut into pieces: a million-unit
//! manifest is about 120 MB of JSON, and stored as one value it kept Redis
//! (which also serves every lease renewal and the coordinator's lock) busy
//! for half a second or more in one command. Pieces of at most
//! [`PIECE_BYTES`] go out a few per script instead.
//!
//! A manifest that fits one piece keeps the single `manifest` field; a
//! larger one is `manifest.0`, `manifest.1`, ... with their count in
//! `manifest_pieces`, written last.

use std::collections::HashMap;
use std::io::Write;

use sha2::{Digest, Sha256};

use crate::manifest::Manifest;
use crate::Error;

/// The largest piece of a stored manifest, in bytes.
pub(super) const PIECE_BYTES: usize = 1 << 20;

/// The record's fields holding `manifest`, and the manifest's sha256 (the
/// same as [`Manifest::sha256`]), from one serialisation.
pub(super) fn manifest_fields(
    manifest: &Manifest,
) -> Result<(Vec<(String, String)>, String), Error> {
    let mut pieces = Pieces {
        done: Vec::new(),
        open: Vec::with_capacity(PIECE_BYTES),
        hash: Sha256::new(),
    };
    serde_json::to_writer(&mut pieces, manifest).map_err(|e| Error::Invalid(e.to_string()))?;
    let sha256 = hex::encode(pieces.hash.finalize());
    let mut done = pieces.done;
    if !pieces.open.is_empty() || done.is_empty() {
        done.push(text(pieces.open)?);
    }
    if done.len() == 1 {
        let whole = done.pop().unwrap_or_default();
        return Ok((vec![("manifest".to_owned(), whole)], sha256));
    }
    let count = done.len();
    let mut fields: Vec<(String, String)> = done
        .into_iter()
        .enumerate()
        .map(|(i, piece)| (format!("manifest.{i}"), piece))
        .collect();
    fields.push(("manifest_pieces".to_owned(), count.to_string()));
    Ok((fields, sha256))
}

/// The manifest's JSON from a stored record: `None` when it has none, or
/// when a piece is missing.
pub(super) fn stored_manifest(record: &HashMap<String, String>) -> Option<String> {
    if let Some(whole) = record.get("manifest") {
        return Some(whole.clone());
    }
    let count: usize = record.get("manifest_pieces")?.parse().ok()?;
    let mut json = String::with_capacity(count.saturating_mul(PIECE_BYTES));
    for i in 0..count {
        json.push_str(record.get(&format!("manifest.{i}"))?);
    }
    Some(json)
}

/// A writer that cuts what it is given into pieces on character
/// boundaries, hashing it as it goes.
struct Pieces {
    done: Vec<String>,
    open: Vec<u8>,
    hash: Sha256,
}

impl Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        self.open.extend_from_slice(buf);
        while self.open.len() > PIECE_BYTES {
            // Back to the start of a character: a UTF-8 continuation byte
            // is 0b10xxxxxx (never more than three in a row in valid text).
            let mut cut = PIECE_BYTES;
            while cut > 0 && (self.open[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            if cut == 0 {
                // Not UTF-8: cut anywhere, and `text` refuses the piece.
                cut = PIECE_BYTES;
            }
            let rest = self.open.split_off(cut);
            let piece = std::mem::replace(&mut self.open, rest);
            self.done.push(text(piece).map_err(std::io::Error::other)?);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn text(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|e| Error::Invalid(format!("manifest JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn manifest(units: usize) -> Manifest {
        // Multi-byte characters everywhere, so some cut falls inside one.
        let units: String = (0..units)
            .map(|i| format!("  - id: u{i}\n    task: \"migrer le paquet n°{i} — été\"\n"))
            .collect();
        let text = format!("batch: b\nplaybook:\n  name: p\n  run: 'true'\nunits:\n{units}");
        Manifest::parse(&text, "m.yaml", Path::new("/tmp")).expect("valid manifest")
    }

    fn record(fields: Vec<(String, String)>) -> HashMap<String, String> {
        fields.into_iter().collect()
    }

    #[test]
    fn a_small_manifest_is_one_field() {
        let manifest = manifest(3);
        let (fields, sha256) = manifest_fields(&manifest).expect("fields");
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].0, "manifest");
        assert_eq!(fields[0].1, serde_json::to_string(&manifest).expect("json"));
        assert_eq!(sha256, manifest.sha256());
    }

    #[test]
    fn a_large_manifest_is_stored_in_pieces_and_read_back_whole() {
        let manifest = manifest(40_000);
        let json = serde_json::to_string(&manifest).expect("json");
        assert!(json.len() > 2 * PIECE_BYTES, "{} bytes", json.len());
        let (fields, sha256) = manifest_fields(&manifest).expect("fields");
        assert_eq!(sha256, manifest.sha256());
        assert!(fields.len() > 2, "{} fields", fields.len());
        assert!(
            fields.iter().all(|(_, v)| v.len() <= PIECE_BYTES),
            "no piece over {PIECE_BYTES} bytes"
        );
        assert_eq!(
            fields.last().map(|(f, _)| f.as_str()),
            Some("manifest_pieces"),
            "the count comes last"
        );
        let mut stored = record(fields);
        assert_eq!(stored_manifest(&stored).as_deref(), Some(json.as_str()));
        stored.remove("manifest.1");
        assert_eq!(stored_manifest(&stored), None, "a missing piece");
    }

    #[test]
    fn a_piece_never_ends_inside_a_character() {
        // 'a' then two-byte characters: byte PIECE_BYTES is the second
        // half of one.
        let text = format!("a{}", "é".repeat(PIECE_BYTES));
        let mut pieces = Pieces {
            done: Vec::new(),
            open: Vec::new(),
            hash: Sha256::new(),
        };
        pieces.write_all(text.as_bytes()).expect("write");
        assert_eq!(pieces.done[0].len(), PIECE_BYTES - 1);
        let mut joined = pieces.done.concat();
        joined.push_str(std::str::from_utf8(&pieces.open).expect("utf-8"));
        assert_eq!(joined, text);
    }

    #[test]
    fn a_record_without_a_manifest_has_none() {
        assert_eq!(stored_manifest(&HashMap::new()), None);
    }
}
