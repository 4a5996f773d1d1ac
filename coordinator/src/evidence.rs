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
//! its files. The session pack's types are shared with the worker that
//! writes it, in [`regatta_proto::evidence`]; the schemas are in
//! `docs/evidence-pack.md`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use regatta_proto::evidence::{iso8601, single_segment, PACK_FILE};
use regatta_proto::Outcome;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use regular_file::{open_regular, open_regular_beneath, Refusal};
pub use signature::{SignatureCheck, SIGNATURE_FILE};

mod regular_file;
mod signature;

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

/// Gathers a batch's evidence from the artifact store into `out` (new or
/// empty): every unit's latest session pack and the files it lists, and
/// `batch-pack.json`, signed with `secret` in [`SIGNATURE_FILE`]. Only
/// regular files are read from the store, never through a symlink.
/// Blocking: run it off the async runtime.
pub fn assemble(
    facts: &BatchFacts,
    units: &[UnitView],
    store: &Path,
    out: &Path,
    secret: &[u8],
) -> Result<Assembled, EvidenceError> {
    let write_error = |path: &Path, source| EvidenceError::Write {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(EvidenceError::OutNotEmpty(out.display().to_string()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| write_error(out, e))?
        }
        Err(e) => return Err(write_error(out, e)),
    }
    let mut assembled = Assembled {
        pack: BatchPack {
            schema_version: BATCH_SCHEMA_VERSION,
            batch_id: facts.batch_id.clone(),
            batch_name: facts.batch_name.clone(),
            batch_state: facts.batch_state.clone(),
            manifest_sha256: facts.manifest_sha256.clone(),
            generated_at: iso8601(chrono::Utc::now()),
            units: Vec::with_capacity(units.len()),
        },
        packs: 0,
        files: 0,
        problems: Vec::new(),
    };
    for unit in units {
        let mut entry = UnitEvidence {
            unit_id: unit.id.clone(),
            state: unit.state,
            reason: unit.reason.clone(),
            attempts: unit.attempt,
            session_id: None,
            attempt: None,
            outcome: None,
            pack: None,
            pack_sha256: None,
        };
        let latest = unit
            .history
            .iter()
            .rev()
            .find_map(|a| a.evidence.as_ref().map(|e| (a, e)));
        // A success is vouched for only by the pack of the session that
        // succeeded, not by an earlier failure's.
        let succeeded_with_pack =
            latest.is_some_and(|(attempt, _)| attempt.outcome == Some(Outcome::Succeeded));
        if unit.state == UnitState::Succeeded && !succeeded_with_pack {
            assembled.problems.push(Problem {
                path: unit.id.clone(),
                kind: ProblemKind::UnitWithoutPack,
            });
        }
        if let Some((attempt, evidence)) = latest {
            entry.session_id = Some(attempt.session_id.clone());
            entry.attempt = Some(attempt.attempt);
            entry.outcome = attempt.outcome.map(|o| o.as_str().to_owned());
            entry.pack_sha256 = Some(evidence.sha256.clone());
            if let (Some(unit_dir), Some(session_dir)) = (
                single_segment(&unit.id),
                single_segment(&attempt.session_id),
            ) {
                let relative = Path::new(SESSIONS_DIR).join(unit_dir).join(session_dir);
                entry.pack = Some(slash(&relative.join(SESSION_PACK_FILE)));
                let in_store = Path::new(&facts.batch_id).join(unit_dir).join(session_dir);
                copy_session(
                    (store, &in_store),
                    Path::new(&evidence.path),
                    &evidence.sha256,
                    &out.join(&relative),
                    &mut assembled,
                )?;
            } else {
                assembled.problems.push(Problem {
                    path: format!("{}/{}", unit.id, attempt.session_id),
                    kind: ProblemKind::Escapes,
                });
            }
        }
        assembled.pack.units.push(entry);
    }
    let mut bytes = serde_json::to_vec_pretty(&assembled.pack)?;
    bytes.push(b'\n');
    let signed = signature::sign(secret, &bytes);
    let path = out.join(BATCH_PACK_FILE);
    std::fs::write(&path, bytes).map_err(|e| write_error(&path, e))?;
    let path = out.join(SIGNATURE_FILE);
    std::fs::write(&path, signed).map_err(|e| write_error(&path, e))?;
    Ok(assembled)
}

/// A folder to read from: a base the operator chose (followed if it is a
/// symlink) and a path under it where no symlink is followed.
type Source<'a> = (&'a Path, &'a Path);

/// Copies one session's pack and the files it lists from the store (or,
/// failing that, from where the worker said it wrote the pack).
fn copy_session(
    (store, in_store): Source<'_>,
    reported_pack: &Path,
    expected_sha256: &str,
    target: &Path,
    assembled: &mut Assembled,
) -> Result<(), EvidenceError> {
    let store_pack = in_store.join(SESSION_PACK_FILE);
    let reported_dir = reported_pack.parent().unwrap_or(Path::new("/"));
    let (source, pack_path, opened): (Source<'_>, PathBuf, _) =
        match open_regular_beneath(store, &store_pack) {
            Err(Refusal::NotFound) => (
                (reported_dir, Path::new("")),
                reported_pack.to_path_buf(),
                open_regular(reported_pack),
            ),
            other => ((store, in_store), store.join(&store_pack), other),
        };
    let bytes = match opened.and_then(|file| read_all(file).map_err(Refusal::Io)) {
        Ok(bytes) => bytes,
        Err(refusal) => {
            assembled.problems.push(Problem {
                path: pack_path.display().to_string(),
                kind: refusal_kind(refusal),
            });
            return Ok(());
        }
    };
    let found = hex::encode(Sha256::digest(&bytes));
    if found != expected_sha256 {
        assembled.problems.push(Problem {
            path: pack_path.display().to_string(),
            kind: ProblemKind::Mismatch {
                expected: expected_sha256.to_owned(),
                found,
            },
        });
    }
    std::fs::create_dir_all(target).map_err(|e| EvidenceError::Write {
        path: target.display().to_string(),
        source: e,
    })?;
    let copy = target.join(SESSION_PACK_FILE);
    std::fs::write(&copy, &bytes).map_err(|e| EvidenceError::Write {
        path: copy.display().to_string(),
        source: e,
    })?;
    assembled.packs += 1;
    let pack: SessionPackFiles = match serde_json::from_slice(&bytes) {
        Ok(pack) => pack,
        Err(e) => {
            assembled.problems.push(Problem {
                path: pack_path.display().to_string(),
                kind: ProblemKind::Unreadable(e.to_string()),
            });
            return Ok(());
        }
    };
    let (base, prefix) = source;
    for (relative, expected) in listed_files(&pack) {
        let Some(relative) = relative.and_then(|p| plain_relative(&p)) else {
            assembled.problems.push(Problem {
                path: pack_path.display().to_string(),
                kind: ProblemKind::Escapes,
            });
            continue;
        };
        let shown = base.join(prefix).join(&relative).display().to_string();
        let input = match open_regular_beneath(base, &prefix.join(&relative)) {
            Ok(input) => input,
            Err(refusal) => {
                assembled.problems.push(Problem {
                    path: shown,
                    kind: refusal_kind(refusal),
                });
                continue;
            }
        };
        let destination = target.join(&relative);
        match copy_hashed(input, &destination) {
            Ok(found) => {
                assembled.files += 1;
                if found != expected {
                    assembled.problems.push(Problem {
                        path: shown,
                        kind: ProblemKind::Mismatch { expected, found },
                    });
                }
            }
            Err(e) => {
                return Err(EvidenceError::Write {
                    path: destination.display().to_string(),
                    source: e,
                })
            }
        }
    }
    Ok(())
}

/// The problem a refused or failed open is.
fn refusal_kind(refusal: Refusal) -> ProblemKind {
    match refusal {
        Refusal::NotFound => ProblemKind::Missing,
        refusal @ Refusal::NotRegular(_) => ProblemKind::NotRegular(refusal.to_string()),
        Refusal::Io(e) => ProblemKind::Unreadable(e.to_string()),
    }
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

/// Recomputes every hash of a batch pack's folder: each session pack
/// against `batch-pack.json`, each file against its session pack, and,
/// given the fleet secret, the batch pack against its signature. Every
/// problem is named by its path relative to `dir`. Only regular files are
/// opened, never through a symlink, and never so that a FIFO could block.
/// Blocking.
pub fn verify(dir: &Path, secret: Option<&[u8]>) -> VerifyReport {
    let mut result = VerifyReport::default();
    let problem = |path: &str, kind| Problem {
        path: path.to_owned(),
        kind,
    };
    let Ok(root) = std::fs::canonicalize(dir) else {
        result
            .problems
            .push(problem(&dir.display().to_string(), ProblemKind::Missing));
        return result;
    };
    let bytes = match read_inside(&root, Path::new(BATCH_PACK_FILE)) {
        Ok(bytes) => bytes,
        Err(kind) => {
            result.problems.push(problem(BATCH_PACK_FILE, kind));
            return result;
        }
    };
    result.batch_pack_sha256 = Some(hex::encode(Sha256::digest(&bytes)));
    if let Some(secret) = secret {
        result.signature_checked = true;
        match read_inside(&root, Path::new(SIGNATURE_FILE)) {
            Ok(signed) => {
                let why = match signature::check(secret, &bytes, &String::from_utf8_lossy(&signed))
                {
                    SignatureCheck::Valid => None,
                    SignatureCheck::Mismatch => Some(format!(
                        "it does not match {BATCH_PACK_FILE} under the key given: the folder was changed after it was signed, or signed with another key"
                    )),
                    SignatureCheck::Malformed(why) => Some(why),
                };
                if let Some(why) = why {
                    result
                        .problems
                        .push(problem(SIGNATURE_FILE, ProblemKind::BadSignature(why)));
                }
            }
            Err(ProblemKind::Missing) => result.problems.push(problem(
                SIGNATURE_FILE,
                ProblemKind::BadSignature("missing: the batch pack is unsigned".into()),
            )),
            Err(kind) => result.problems.push(problem(SIGNATURE_FILE, kind)),
        }
    }
    let batch: BatchPack = match serde_json::from_slice(&bytes) {
        Ok(batch) => batch,
        Err(e) => {
            result.problems.push(problem(
                BATCH_PACK_FILE,
                ProblemKind::Unreadable(e.to_string()),
            ));
            return result;
        }
    };
    for unit in &batch.units {
        if unit.state == UnitState::Succeeded
            && (unit.pack.is_none() || unit.outcome.as_deref() != Some("succeeded"))
        {
            result
                .problems
                .push(problem(&unit.unit_id, ProblemKind::UnitWithoutPack));
        }
        let Some(pack_path) = &unit.pack else {
            continue;
        };
        let Some(relative) = plain_relative(pack_path) else {
            result
                .problems
                .push(problem(pack_path, ProblemKind::Escapes));
            continue;
        };
        let bytes = match read_inside(&root, &relative) {
            Ok(bytes) => bytes,
            Err(kind) => {
                result.problems.push(problem(pack_path, kind));
                continue;
            }
        };
        result.packs += 1;
        let found = hex::encode(Sha256::digest(&bytes));
        let expected = unit.pack_sha256.clone().unwrap_or_default();
        if found != expected {
            result.problems.push(problem(
                pack_path,
                ProblemKind::Mismatch { expected, found },
            ));
        }
        let pack: SessionPackFiles = match serde_json::from_slice(&bytes) {
            Ok(pack) => pack,
            Err(e) => {
                result
                    .problems
                    .push(problem(pack_path, ProblemKind::Unreadable(e.to_string())));
                continue;
            }
        };
        if pack.unit_id != unit.unit_id
            || Some(&pack.session_id) != unit.session_id.as_ref()
            || pack.batch_id != batch.batch_id
        {
            result.problems.push(problem(
                pack_path,
                ProblemKind::WrongSession(format!(
                    "the pack is of {}/{}/{}, the batch pack lists {}/{}/{}",
                    pack.batch_id,
                    pack.unit_id,
                    pack.session_id,
                    batch.batch_id,
                    unit.unit_id,
                    unit.session_id.as_deref().unwrap_or("-")
                )),
            ));
        }
        let session_dir = relative.parent().unwrap_or(Path::new("")).to_path_buf();
        for (file, expected) in listed_files(&pack) {
            let Some(file_relative) = file.as_deref().and_then(plain_relative) else {
                let shown = file.unwrap_or_else(|| "(no path)".into());
                result.problems.push(problem(
                    &slash(&session_dir.join(shown)),
                    ProblemKind::Escapes,
                ));
                continue;
            };
            let path = session_dir.join(&file_relative);
            let shown = slash(&path);
            match hash_inside(&root, &path) {
                Ok(found) => {
                    result.files += 1;
                    if found != expected {
                        result
                            .problems
                            .push(problem(&shown, ProblemKind::Mismatch { expected, found }));
                    }
                }
                Err(kind) => result.problems.push(problem(&shown, kind)),
            }
        }
    }
    result
}

/// Checks that `relative` under `root` stays inside once resolved (a
/// symlink in the folder must not vouch for a file elsewhere), then opens
/// it as a regular file, following no symlink on the way.
fn open_inside(root: &Path, relative: &Path) -> Result<File, ProblemKind> {
    let path = root.join(relative);
    match std::fs::canonicalize(&path) {
        Ok(resolved) if resolved.starts_with(root) => {}
        Ok(_) => return Err(ProblemKind::Escapes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling symlink is refused for what it is, not as missing.
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) {
                return Err(ProblemKind::Missing);
            }
        }
        Err(e) => return Err(ProblemKind::Unreadable(e.to_string())),
    }
    open_regular_beneath(root, relative).map_err(refusal_kind)
}

fn read_inside(root: &Path, relative: &Path) -> Result<Vec<u8>, ProblemKind> {
    let file = open_inside(root, relative)?;
    read_all(file).map_err(|e| ProblemKind::Unreadable(e.to_string()))
}

fn hash_inside(root: &Path, relative: &Path) -> Result<String, ProblemKind> {
    let mut file = open_inside(root, relative)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| ProblemKind::Unreadable(e.to_string()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Returns the hex SHA-256 of a file's bytes, as packs record them.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Copies an opened file, creating the destination's folders, and returns
/// the hex SHA-256 of the bytes copied.
fn copy_hashed(mut input: File, destination: &Path) -> std::io::Result<String> {
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut output = File::create(destination)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        output.write_all(&buffer[..n])?;
    }
    output.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

fn slash(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests;
