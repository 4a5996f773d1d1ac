//! Gathering a batch's evidence into one folder: every unit's latest pack
//! and the files it lists, read only as regular files from the store, then
//! the batch pack and its signature.

use super::*;

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
            train: facts.train.clone(),
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
        if matches!(unit.state, UnitState::Succeeded | UnitState::Landed) && !succeeded_with_pack {
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
            // The ids become folder names, in the store and in the pack.
            let in_store = session_dir(
                Path::new(""),
                &facts.batch_id,
                &unit.id,
                &attempt.session_id,
            );
            if let Ok(in_store) = in_store {
                let relative = Path::new(SESSIONS_DIR)
                    .join(&unit.id)
                    .join(&attempt.session_id);
                entry.pack = Some(slash(&relative.join(SESSION_PACK_FILE)));
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
    let found = sha256_hex(&bytes);
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
        match copy_to(input, &destination) {
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

/// Copies an opened file, creating the destination's folders, and returns
/// the hex SHA-256 of the bytes copied.
fn copy_to(input: File, destination: &Path) -> std::io::Result<String> {
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let output = File::create(destination)?;
    match copy_hashed(input, output) {
        Ok(hashed) => Ok(hashed.sha256),
        Err(CopyError::Read(e) | CopyError::Write(e)) => Err(e),
    }
}
