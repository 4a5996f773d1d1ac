//! Batch evidence packs: a self-contained folder that proves what a batch
//! did, and the check that nothing in it was altered.
//!
//! Each session's worker leaves `evidence-pack.json` in its artifact store
//! (`<store>/<batch>/<unit>/<session>/`), with the sha256 of every file it
//! stored there, and reports the pack's own sha256 to the coordinator.
//! [`assemble`] gathers, for every unit of a batch, the pack of its latest
//! session that has one, and the files that pack lists, into one folder:
//!
//! ```text
//! DIR/batch-pack.json                                   the index: units, packs, sha256s
//! DIR/sessions/<unit>/<session>/evidence-pack.json      as the worker wrote it
//! DIR/sessions/<unit>/<session>/<path of each file>     outputs/..., artifacts/..., session.log
//! ```
//!
//! [`verify`] recomputes every hash in such a folder: the batch pack's
//! sha256 of each session pack, and each session pack's sha256 of each of
//! its files. The session pack's types, the store's layout and the hashing
//! are shared with the worker that writes packs, in
//! [`regatta_proto::evidence`]; the schemas are in `docs/evidence-pack.md`.
//! What stays here is opening files safely ([`regular_file`]) and what the
//! batch pack adds.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use regatta_proto::evidence::{
    copy_hashed, hash_reader, iso8601, session_dir, sha256_hex, CopyError, PACK_FILE,
};
use regatta_proto::Outcome;
use serde::{Deserialize, Serialize};

use regular_file::{open_regular, open_regular_beneath, Refusal};
pub use signature::{SignatureCheck, SIGNATURE_FILE};

mod assemble;
mod regular_file;
mod signature;
mod verify;

pub use assemble::assemble;
pub use verify::verify;

use crate::scheduler::UnitState;
use crate::service::UnitView;

// The session pack's reader view and pure helpers are the contract's,
// shared with the worker that writes packs.
pub use regatta_proto::evidence::{plain_relative, PackedFile, SessionPackFiles};

/// The version of the batch pack's schema.
pub const BATCH_SCHEMA_VERSION: u32 = 1;
/// The batch pack's file name at the top of the folder.
pub const BATCH_PACK_FILE: &str = "batch-pack.json";
/// A session pack's file name, in the store and in the folder.
pub const SESSION_PACK_FILE: &str = PACK_FILE;
/// The folder, inside a batch pack's folder, holding one folder per session.
pub const SESSIONS_DIR: &str = "sessions";

/// Why a batch pack could not be assembled at all.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The output folder holds files already; mixing packs would hide what
    /// belongs to which batch. Choose a new or empty folder.
    #[error("{0} is not empty: choose a new or empty folder for the batch pack")]
    OutNotEmpty(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the batch pack: {0}")]
    Encode(#[from] serde_json::Error),
}

/// `batch-pack.json`, schema version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPack {
    pub schema_version: u32,
    pub batch_id: String,
    /// The manifest's `batch` name.
    pub batch_name: String,
    /// The batch's state when the pack was assembled.
    pub batch_state: String,
    /// Hex SHA-256 of the manifest's canonical JSON (`Manifest::sha256`).
    pub manifest_sha256: String,
    /// When the pack was assembled (ISO 8601, UTC).
    pub generated_at: String,
    /// Every unit of the batch, in manifest order.
    pub units: Vec<UnitEvidence>,
    /// Git mode: the merge train's record, so that an auditor can check
    /// that every landed commit was a tested one: each candidate's commit,
    /// units, the tip it was built on, its integration session and result,
    /// and every integration session with its evidence pack's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<crate::service::TrainView>,
}

/// One unit's line in the batch pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitEvidence {
    pub unit_id: String,
    /// The unit's state: final when the batch has ended.
    pub state: UnitState,
    /// Why it is there (a failure or escalation, what blocks it).
    pub reason: Option<String>,
    /// How many attempts it had.
    pub attempts: u32,
    /// The latest session that left a pack; `None` when none ran (blocked,
    /// skipped, cancelled before starting) or none could be written.
    pub session_id: Option<String>,
    pub attempt: Option<u32>,
    /// How that session ended (`succeeded`, `failed`, ...).
    pub outcome: Option<String>,
    /// The session pack, relative to the batch pack's folder.
    pub pack: Option<String>,
    /// Hex SHA-256 of the session pack, as its worker reported it.
    pub pack_sha256: Option<String>,
}

/// One thing wrong in a batch pack's folder, named by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Relative to the folder checked (or where the file was read from).
    pub path: String,
    pub kind: ProblemKind,
}

/// What is wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    Missing,
    Mismatch {
        expected: String,
        found: String,
    },
    /// The listed path climbs out of the folder, is absolute, or resolves
    /// (through a symlink) outside it.
    Escapes,
    /// A pack that cannot be read as JSON of the expected shape.
    Unreadable(String),
    /// A session pack that names another unit or session than its entry.
    WrongSession(String),
    /// A symlink, FIFO, device or folder where a file should be: never
    /// read (a FIFO would hang the reader, a symlink vouch for elsewhere).
    NotRegular(String),
    /// A unit that succeeded without a pack of its succeeding session: its
    /// success is vouched for by nothing. `path` is the unit's id.
    UnitWithoutPack,
    /// `batch-pack.json.sig` does not match `batch-pack.json` under the key
    /// given: the folder was changed after it was signed, or by someone else.
    BadSignature(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.kind {
            ProblemKind::Missing => write!(f, "{path}: missing"),
            ProblemKind::Mismatch { expected, found } => {
                write!(
                    f,
                    "{path}: sha256 mismatch (expected {expected}, found {found})"
                )
            }
            ProblemKind::Escapes => write!(f, "{path}: the path escapes the folder"),
            ProblemKind::Unreadable(why) => write!(f, "{path}: unreadable pack: {why}"),
            ProblemKind::WrongSession(why) => write!(f, "{path}: {why}"),
            ProblemKind::NotRegular(why) => write!(f, "{path}: {why}"),
            ProblemKind::UnitWithoutPack => write!(
                f,
                "unit '{path}' succeeded but has no evidence pack of its succeeding session"
            ),
            ProblemKind::BadSignature(why) => write!(f, "{path}: bad signature: {why}"),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Session packs whose hash was checked.
    pub packs: usize,
    /// Files (artifacts and logs) whose hash was checked.
    pub files: usize,
    pub problems: Vec<Problem>,
    /// Hex SHA-256 of `batch-pack.json`, for the auditor to note down.
    pub batch_pack_sha256: Option<String>,
    /// Whether the batch pack's signature was checked (a key was given).
    pub signature_checked: bool,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// `evidence verified: 3 session packs and 9 files match their sha256 (batch-pack.json sha256 ...)`,
    /// then `, signature valid` when it was checked.
    pub fn summary(&self) -> String {
        format!(
            "evidence verified: {} session packs and {} files match their sha256 (batch-pack.json sha256 {}){}",
            self.packs,
            self.files,
            self.batch_pack_sha256.as_deref().unwrap_or("-"),
            if self.signature_checked {
                ", signature valid"
            } else {
                ""
            }
        )
    }
}

/// What [`assemble`] needs besides the units.
#[derive(Debug, Clone)]
pub struct BatchFacts {
    pub batch_id: String,
    pub batch_name: String,
    pub batch_state: String,
    pub manifest_sha256: String,
    /// Git mode: the merge train's record.
    pub train: Option<crate::service::TrainView>,
}

/// What [`assemble`] wrote, and what it found wrong in the store.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub pack: BatchPack,
    /// Session packs copied.
    pub packs: usize,
    /// Files copied.
    pub files: usize,
    /// Missing packs or files, and hashes that do not match the records:
    /// the folder is written anyway, and `verify` will name them again.
    pub problems: Vec<Problem>,
}

fn read_all(mut file: File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Every distinct (path, sha256) a session pack lists: its artifacts and its log.
fn listed_files(pack: &SessionPackFiles) -> Vec<(Option<String>, String)> {
    let mut seen = BTreeSet::new();
    pack.artifacts
        .iter()
        .chain(pack.log.iter())
        .filter(|f| seen.insert((f.path.clone(), f.sha256.clone())))
        .map(|f| (f.path.clone(), f.sha256.clone()))
        .collect()
}

/// Returns the hex SHA-256 of a file's bytes, as packs record them.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(hash_reader(File::open(path)?)?.sha256)
}

fn slash(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The problem a refused or failed open is.
fn refusal_kind(refusal: Refusal) -> ProblemKind {
    match refusal {
        Refusal::NotFound => ProblemKind::Missing,
        refusal @ Refusal::NotRegular(_) => ProblemKind::NotRegular(refusal.to_string()),
        Refusal::Io(e) => ProblemKind::Unreadable(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
