//! Checking an evidence folder anywhere, away from the fleet: the batch
//! pack's signature, then every sha256 it and the session packs list.

use super::*;

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
    result.batch_pack_sha256 = Some(sha256_hex(&bytes));
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
        let found = sha256_hex(&bytes);
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
    let file = open_inside(root, relative)?;
    hash_reader(file)
        .map(|hashed| hashed.sha256)
        .map_err(|e| ProblemKind::Unreadable(e.to_string()))
}
