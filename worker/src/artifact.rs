//! The artifact store: after a session ends, its declared outputs, the files
//! it left in `REGATTA_ARTIFACT_DIR` and its log are copied, hashed, into a
//! folder of their own, where they stay when the work dir is cleaned and
//! where `regatta evidence` finds them.
//!
//! Layout, one folder per session, is [`regatta_proto::evidence::layout`]'s
//! (`<store>/<batch_id>/<unit_id>/<session_id>/`), the one the coordinator
//! reads back; the hashing is [`regatta_proto::evidence::digest`]'s.
//!
//! Nothing a session does can make the store write outside its folder: ids
//! and declared paths must be plain relative paths (no `..`, not absolute),
//! a source that resolves (through symlinks) outside the workdir or the
//! artifact folder is refused and recorded, and every destination is checked
//! to resolve inside the session's folder before it is created. The id and
//! path rules are [`regatta_proto::evidence::layout`]'s, the ones the
//! coordinator applies when it reads the pack back.
//!
//! The store records what it kept in the pack's own types ([`StoredFile`],
//! [`RejectedFile`], [`HashedInput`]), so `evidence` lists them as they are.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use regatta_proto::evidence::{
    copy_hashed, hash_reader, plain_relative, session_dir, CopyError, HashedInput, RejectedFile,
    Stage, StoredFile, UnsafeId,
};
pub use regatta_proto::evidence::{ARTIFACTS_DIR, LOG_FILE, OUTPUTS_DIR};

use crate::meter::TRANSCRIPT_FILE;
use crate::session_log::KeptLog;

/// Why a session's files could not be stored at all.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A batch, unit or session id is not a single plain path segment; the
    /// coordinator never sends one, so the order was forged or corrupted.
    #[error(transparent)]
    UnsafeId(#[from] UnsafeId),
    /// The store cannot be written: check `--artifact-dir` (REGATTA_ARTIFACT_STORE)
    /// exists or can be created, and has room.
    #[error("cannot write to the artifact store at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A destination resolved outside the session's folder (a symlink was
    /// planted inside the store): nothing was written there.
    #[error("'{0}' would be written outside the session's folder of the artifact store")]
    Escapes(String),
    /// The blocking copy task panicked or was cancelled.
    #[error("the artifact copy task failed: {0}")]
    Task(String),
    /// A file of the session (an output, an artifact, its log) could not
    /// be read: the session's doing, not the store's.
    #[error("cannot read {path} to store it: {source}")]
    Source {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ArtifactError {
    fn io(path: &Path, source: std::io::Error) -> ArtifactError {
        ArtifactError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What one session's collection stored and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collection {
    /// The session's folder in the store, resolved (absolute).
    pub session_dir: PathBuf,
    /// Outputs first (in declaration order), then artifacts (sorted), then the log.
    pub files: Vec<StoredFile>,
    pub rejected: Vec<RejectedFile>,
    /// Declared inputs that exist inside the workdir, in declaration order.
    pub inputs: Vec<HashedInput>,
    /// Every file and folder this collection created or filled, which must
    /// be durable before the session's result is reported.
    pub to_sync: Vec<PathBuf>,
}

impl Collection {
    /// The stored log, when the session had one.
    pub fn log(&self) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.stage == Stage::Log)
    }
}

/// What to collect for one session.
#[derive(Debug, Clone)]
pub struct SessionFiles {
    pub batch_id: String,
    pub unit_id: String,
    pub session_id: String,
    /// The order's workdir; declared outputs are relative to it.
    pub workdir: PathBuf,
    /// Declared outputs as the manifest spells them.
    pub outputs: Vec<String>,
    /// Declared inputs as the manifest spells them; hashed, not copied.
    pub inputs: Vec<String>,
    /// The session's `REGATTA_ARTIFACT_DIR`.
    pub artifact_dir: PathBuf,
    /// What the session's log kept ([`crate::session_log`]).
    pub log: KeptLog,
    /// An agent session's transcript on the worker's disk.
    pub transcript_path: Option<PathBuf>,
}

/// A folder holding one sub-folder per session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    pub fn new(root: impl Into<PathBuf>) -> ArtifactStore {
        ArtifactStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns `<root>/<batch>/<unit>/<session>`, refusing any id that is not
    /// one plain path segment.
    pub fn session_dir(
        &self,
        batch_id: &str,
        unit_id: &str,
        session_id: &str,
    ) -> Result<PathBuf, ArtifactError> {
        Ok(session_dir(&self.root, batch_id, unit_id, session_id)?)
    }

    /// Creates the session's folder of the store and its `session.log`, for
    /// a log that outgrew memory ([`crate::session_log`]); the evidence
    /// later hashes it where it is.
    pub fn open_log(
        &self,
        batch_id: &str,
        unit_id: &str,
        session_id: &str,
    ) -> Result<(PathBuf, File), ArtifactError> {
        let session = session_dir(Path::new(""), batch_id, unit_id, session_id)?;
        let target = Target::new(&self.root, &session)?;
        let destination = target.root.join(LOG_FILE);
        let file = create_new(&destination)?;
        Ok((destination, file))
    }

    /// Copies and hashes a session's outputs, artifacts and log into its
    /// folder of the store, on a blocking thread (files may be large).
    pub async fn collect(&self, files: SessionFiles) -> Result<Collection, ArtifactError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.collect_blocking(&files))
            .await
            .map_err(|e| ArtifactError::Task(e.to_string()))?
    }

    /// The blocking body of [`ArtifactStore::collect`].
    pub fn collect_blocking(&self, files: &SessionFiles) -> Result<Collection, ArtifactError> {
        let session = session_dir(
            Path::new(""),
            &files.batch_id,
            &files.unit_id,
            &files.session_id,
        )?;
        let target = Target::new(&self.root, &session)?;
        let mut collection = Collection {
            session_dir: target.root.clone(),
            ..Collection::default()
        };

        // Declared outputs: relative to the workdir, and must stay inside it.
        let workdir = std::fs::canonicalize(&files.workdir).ok();
        for output in &files.outputs {
            let reject = |reason: String| RejectedFile {
                filename: output.clone(),
                stage: Stage::Output,
                reason,
            };
            let Some(relative) = plain_relative(output) else {
                collection.rejected.push(reject(
                    "the path is absolute or climbs out with '..'".into(),
                ));
                continue;
            };
            let source = files.workdir.join(&relative);
            if std::fs::symlink_metadata(&source).is_err() {
                // Missing: the session's reason already names it.
                continue;
            }
            let Some(workdir) = &workdir else { continue };
            match resolve_inside(&source, workdir) {
                Ok(resolved) if resolved.is_file() => {
                    let destination = Path::new(OUTPUTS_DIR).join(&relative);
                    let stored = target.store(&resolved, &destination)?;
                    collection.files.push(StoredFile {
                        filename: output.clone(),
                        stage: Stage::Output,
                        ..stored
                    });
                }
                Ok(resolved) if resolved.is_dir() => {
                    let mut found = Vec::new();
                    walk(&resolved, &relative, workdir, &mut found);
                    for (entry, entry_relative) in found {
                        let filename = slash_path(&entry_relative);
                        match entry {
                            Ok(path) => {
                                let destination = Path::new(OUTPUTS_DIR).join(&entry_relative);
                                let stored = target.store(&path, &destination)?;
                                collection.files.push(StoredFile {
                                    filename,
                                    stage: Stage::Output,
                                    ..stored
                                });
                            }
                            Err(reason) => collection.rejected.push(RejectedFile {
                                filename,
                                stage: Stage::Output,
                                reason,
                            }),
                        }
                    }
                }
                Ok(_) => collection
                    .rejected
                    .push(reject("not a regular file or folder".into())),
                Err(reason) => collection.rejected.push(reject(reason)),
            }
        }

        // Inputs: hashed where they are, so the pack says what the outputs
        // were made from.
        for input in &files.inputs {
            let (Some(relative), Some(workdir)) = (plain_relative(input), &workdir) else {
                continue;
            };
            let Ok(resolved) = resolve_inside(&files.workdir.join(relative), workdir) else {
                continue;
            };
            if let Ok(hashed) = File::open(&resolved).and_then(hash_reader) {
                collection.inputs.push(HashedInput {
                    filename: input.clone(),
                    sha256: hashed.sha256,
                    bytes: hashed.bytes,
                });
            }
        }

        // Extra artifacts: everything under REGATTA_ARTIFACT_DIR, sorted.
        if let Ok(artifact_dir) = std::fs::canonicalize(&files.artifact_dir) {
            let mut found = Vec::new();
            walk(&artifact_dir, Path::new(""), &artifact_dir, &mut found);
            for (entry, relative) in found {
                let filename = slash_path(&relative);
                match entry {
                    Ok(path) => {
                        let destination = Path::new(ARTIFACTS_DIR).join(&relative);
                        let stored = target.store(&path, &destination)?;
                        collection.files.push(StoredFile {
                            filename,
                            stage: Stage::Artifact,
                            ..stored
                        });
                    }
                    Err(reason) => collection.rejected.push(RejectedFile {
                        filename,
                        stage: Stage::Artifact,
                        reason,
                    }),
                }
            }
        }

        // The transcript and the log are written by the worker itself: no
        // escape to check.
        if let Some(transcript) = files.transcript_path.as_ref().filter(|p| p.is_file()) {
            let stored = target.store(transcript, Path::new(TRANSCRIPT_FILE))?;
            collection.files.push(StoredFile {
                filename: TRANSCRIPT_FILE.to_owned(),
                stage: Stage::Transcript,
                ..stored
            });
        }
        let log = match &files.log {
            KeptLog::Empty => None,
            KeptLog::Memory(bytes) => Some(target.store_bytes(bytes, Path::new(LOG_FILE))?),
            KeptLog::Spilled(path) => Some(target.adopt(path, Path::new(LOG_FILE))?),
        };
        if let Some(stored) = log {
            collection.files.push(StoredFile {
                filename: LOG_FILE.to_owned(),
                stage: Stage::Log,
                ..stored
            });
        }
        collection.to_sync = target.to_sync.into_inner();
        Ok(collection)
    }
}

/// A session's folder in the store, resolved once, that every copy must land in.
struct Target {
    root: PathBuf,
    /// What was created or written, to be made durable.
    to_sync: std::cell::RefCell<Vec<PathBuf>>,
}

impl Target {
    /// Creates the session's folder under the store's root (which the
    /// operator chose, so it may itself be a symlink).
    fn new(store_root: &Path, session: &Path) -> Result<Target, ArtifactError> {
        std::fs::create_dir_all(store_root).map_err(|e| ArtifactError::io(store_root, e))?;
        let store_root =
            std::fs::canonicalize(store_root).map_err(|e| ArtifactError::io(store_root, e))?;
        let mut to_sync = Vec::new();
        let root = create_folders(&store_root, session, &mut to_sync)?;
        Ok(Target {
            root,
            to_sync: std::cell::RefCell::new(to_sync),
        })
    }

    /// A file now in the store at `written` (`relative` in the session's
    /// folder), to be synced with the session's others.
    fn stored(
        &self,
        written: PathBuf,
        relative: &Path,
        hashed: regatta_proto::evidence::digest::Hashed,
    ) -> StoredFile {
        self.to_sync.borrow_mut().push(written);
        StoredFile {
            filename: String::new(),
            sha256: hashed.sha256,
            stage: Stage::Artifact,
            path: slash_path(relative),
            bytes: hashed.bytes,
        }
    }

    /// Writes `bytes` to `relative` under the session's folder, hashed.
    fn store_bytes(&self, bytes: &[u8], relative: &Path) -> Result<StoredFile, ArtifactError> {
        let destination = self.destination(relative)?;
        let output = create_new(&destination)?;
        let hashed = copy_hashed(bytes, output).map_err(|e| match e {
            CopyError::Read(e) | CopyError::Write(e) => ArtifactError::io(&destination, e),
        })?;
        Ok(self.stored(destination, relative, hashed))
    }

    /// Hashes a file the worker already wrote at `relative` (a spilled
    /// log), refusing one that is anywhere else.
    fn adopt(&self, path: &Path, relative: &Path) -> Result<StoredFile, ArtifactError> {
        if path != self.root.join(relative) {
            return Err(ArtifactError::Escapes(path.display().to_string()));
        }
        let hashed = File::open(path)
            .and_then(hash_reader)
            .map_err(|e| ArtifactError::io(path, e))?;
        Ok(self.stored(path.to_path_buf(), relative, hashed))
    }

    /// Creates the folders of `relative`'s parent and returns where the
    /// file goes, with nothing (a planted symlink) left in its place.
    fn destination(&self, relative: &Path) -> Result<PathBuf, ArtifactError> {
        let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
            return Err(ArtifactError::Escapes(slash_path(relative)));
        };
        let folder = create_folders(&self.root, parent, &mut self.to_sync.borrow_mut())?;
        Ok(folder.join(name))
    }

    /// Copies `source` to `relative` under the session's folder, hashing the
    /// bytes as they pass; `filename` and `stage` are for the caller to set.
    fn store(&self, source: &Path, relative: &Path) -> Result<StoredFile, ArtifactError> {
        let destination = self.destination(relative)?;
        let source_error = |e| ArtifactError::Source {
            path: source.display().to_string(),
            source: e,
        };
        let input = File::open(source).map_err(source_error)?;
        let output = create_new(&destination)?;
        let hashed = copy_hashed(input, output).map_err(|e| match e {
            CopyError::Read(e) => source_error(e),
            CopyError::Write(e) => ArtifactError::io(&destination, e),
        })?;
        Ok(self.stored(destination, relative, hashed))
    }
}

/// Creates a new file at `destination`; whatever is there is removed first,
/// and `create_new` refuses to follow a symlink planted meanwhile.
fn create_new(destination: &Path) -> Result<File, ArtifactError> {
    match std::fs::symlink_metadata(destination) {
        Ok(_) => {
            std::fs::remove_file(destination).map_err(|e| ArtifactError::io(destination, e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArtifactError::io(destination, e)),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(destination)
        .map_err(|e| ArtifactError::io(destination, e))
}

/// Creates the folders of `relative` under `base` one segment at a time and
/// returns the last; a segment that exists as anything but a real folder (a
/// symlink planted in the store would redirect writes, or create folders
/// elsewhere) is refused. The parent of each folder created goes into
/// `to_sync`, whose entry it now holds, and the last folder, whose entries
/// follow.
fn create_folders(
    base: &Path,
    relative: &Path,
    to_sync: &mut Vec<PathBuf>,
) -> Result<PathBuf, ArtifactError> {
    let mut folder = base.to_path_buf();
    for segment in relative.components() {
        let Component::Normal(segment) = segment else {
            return Err(ArtifactError::Escapes(slash_path(relative)));
        };
        let parent = folder.clone();
        folder.push(segment);
        // Create first, then look: sessions of one batch create its folder
        // concurrently, and `create_dir` never follows a symlink.
        match std::fs::create_dir(&folder) {
            Ok(()) => {
                if !to_sync.contains(&parent) {
                    to_sync.push(parent);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ArtifactError::io(&folder, e)),
        }
        match std::fs::symlink_metadata(&folder) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(ArtifactError::Escapes(slash_path(relative))),
            Err(e) => return Err(ArtifactError::io(&folder, e)),
        }
    }
    if !to_sync.contains(&folder) {
        to_sync.push(folder.clone());
    }
    Ok(folder)
}

/// Resolves `path` through every symlink and checks that it stays inside
/// `boundary` (already canonical).
fn resolve_inside(path: &Path, boundary: &Path) -> Result<PathBuf, String> {
    let resolved = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve it: {e}"))?;
    if resolved.starts_with(boundary) {
        Ok(resolved)
    } else {
        Err(format!(
            "it resolves to {}, outside {}",
            resolved.display(),
            boundary.display()
        ))
    }
}

type Found = (Result<PathBuf, String>, PathBuf);

/// Lists the files under `dir` (sorted), each with its path relative to
/// `prefix`; symlinks are followed only to files inside `boundary`, never
/// into folders (no loops, no escape).
fn walk(dir: &Path, prefix: &Path, boundary: &Path, found: &mut Vec<Found>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let relative = prefix.join(entry.file_name());
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&path, &relative, boundary, found);
        } else if kind.is_file() {
            found.push((Ok(path), relative));
        } else if kind.is_symlink() {
            let entry = match resolve_inside(&path, boundary) {
                Ok(target) if target.is_file() => Ok(target),
                Ok(_) => Err("a symlink to something other than a file".to_owned()),
                Err(reason) => Err(format!("a symlink: {reason}")),
            };
            found.push((entry, relative));
        } else {
            found.push((Err("not a regular file".to_owned()), relative));
        }
    }
}

/// A relative path with `/` separators, as packs spell paths.
fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests;
