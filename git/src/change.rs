//! The commit of a unit's edits: everything the session changed in its
//! worktree, the files with their status, the diffstat, and the check of
//! those files against the unit's declared write set.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::merge::commit_tree;
use crate::repo::{nul_fields, Git, Identity, Oid};
use crate::Error;

// How a file changed, as the worker reports it to the coordinator: the
// wire's own types, so that nothing translates between two copies.
pub use regatta_proto::git::{ChangedFile, FileStatus};

/// What a unit committed: the ids to record, the files and the diffstat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UnitCommit {
    pub commit: Oid,
    pub tree: Oid,
    /// The commit the session started from.
    pub parent: Oid,
    pub files: Vec<ChangedFile>,
    /// Lines added and removed over all text files (binary files count 0).
    pub insertions: u64,
    pub deletions: u64,
}

/// Stages every change of the worktree (`add -A`) and commits it on top of
/// the worktree's `HEAD` (the start commit) with `identity` and `message`;
/// Ok(None) when nothing changed. This trusts the worktree's `.git` file and
/// `HEAD`, which a session can rewrite: the worker uses
/// [`Workspace::commit`](crate::workspace::Workspace::commit), which trusts
/// neither.
pub async fn commit_all(
    worktree: &Path,
    identity: &Identity,
    message: &str,
) -> Result<Option<UnitCommit>, Error> {
    let git = Git::at(worktree);
    let head = git.run(&["rev-parse", "--verify", "HEAD^{commit}"]).await?;
    commit_on(&git, head.trim(), identity, message).await
}

/// Commits the worktree's contents as a child of `start`, whatever the
/// session did to `HEAD` or the index: the commit's tree is what the
/// worktree holds (ignored files aside), its only parent is `start`, and
/// `HEAD` is moved to it. Ok(None) when that tree is `start`'s.
pub(crate) async fn commit_on(
    git: &Git,
    start: &str,
    identity: &Identity,
    message: &str,
) -> Result<Option<UnitCommit>, Error> {
    git.run(&["add", "--all", "--", "."]).await?;
    let tree = git.run(&["write-tree"]).await?.trim().to_owned();
    let start_tree = format!("{start}^{{tree}}");
    let start_tree = git.run(&["rev-parse", "--verify", &start_tree]).await?;
    if tree == start_tree.trim() {
        return Ok(None);
    }
    let commit = commit_tree(git, &tree, &[start], message, identity).await?;
    git.run(&[
        "update-ref",
        "--no-deref",
        "-m",
        "regatta: unit commit",
        "HEAD",
        &commit,
    ])
    .await?;
    let files = changed_files(git, start, &commit).await?;
    let (insertions, deletions) = diffstat(git, start, &commit).await?;
    Ok(Some(UnitCommit {
        commit,
        tree,
        parent: start.to_owned(),
        files,
        insertions,
        deletions,
    }))
}

/// The files that differ between two commits, renames detected.
pub async fn changed_files(git: &Git, from: &str, to: &str) -> Result<Vec<ChangedFile>, Error> {
    let args = [
        "diff-tree",
        "-r",
        "-z",
        "-M",
        "--no-commit-id",
        "--name-status",
        from,
        to,
    ];
    let output = git.run(&args).await?;
    parse_name_status(output.as_bytes()).map_err(|detail| Error::Output {
        command: args.join(" "),
        detail,
    })
}

/// Lines added and removed between two commits (`--numstat`, binary 0).
pub async fn diffstat(git: &Git, from: &str, to: &str) -> Result<(u64, u64), Error> {
    let args = [
        "diff-tree",
        "-r",
        "-z",
        "-M",
        "--no-commit-id",
        "--numstat",
        from,
        to,
    ];
    let output = git.run(&args).await?;
    let (mut insertions, mut deletions) = (0, 0);
    let mut fields = nul_fields(output.as_bytes()).into_iter();
    // Each record is "<added>\t<deleted>\t<path>"; a rename's is
    // "<added>\t<deleted>\t" followed by its two paths as fields.
    while let Some(field) = fields.next() {
        let mut parts = field.splitn(3, '\t');
        let (Some(added), Some(deleted), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Output {
                command: args.join(" "),
                detail: format!("not a numstat record: {field:?}"),
            });
        };
        // Binary files show "-" and count 0.
        insertions += added.parse::<u64>().unwrap_or(0);
        deletions += deleted.parse::<u64>().unwrap_or(0);
        if path.is_empty() {
            fields.next();
            fields.next();
        }
    }
    Ok((insertions, deletions))
}

/// Parses `diff-tree -z --name-status`: a status field, then one path (or
/// two for a rename or copy).
fn parse_name_status(bytes: &[u8]) -> Result<Vec<ChangedFile>, String> {
    let mut fields = nul_fields(bytes).into_iter();
    let mut files = Vec::new();
    while let Some(status) = fields.next() {
        let mut path = || {
            fields
                .next()
                .ok_or_else(|| format!("no path after status {status}"))
        };
        let file = match status.chars().next() {
            Some('A') => changed(path()?, FileStatus::Added),
            Some('M') => changed(path()?, FileStatus::Modified),
            Some('D') => changed(path()?, FileStatus::Deleted),
            Some('T') => changed(path()?, FileStatus::TypeChanged),
            Some('R') => {
                let from = path()?;
                ChangedFile {
                    path: path()?,
                    status: FileStatus::Renamed,
                    from: Some(from),
                }
            }
            // A copy (not asked for) leaves its source alone: an addition.
            Some('C') => {
                let _source = path()?;
                changed(path()?, FileStatus::Added)
            }
            _ => return Err(format!("unknown status {status:?}")),
        };
        files.push(file);
    }
    Ok(files)
}

fn changed(path: String, status: FileStatus) -> ChangedFile {
    ChangedFile {
        path,
        status,
        from: None,
    }
}

/// The changed paths that no entry of `allowed` covers, sorted. An entry
/// covers the path equal to it and everything under it as a folder; a
/// leading `./` and a trailing `/` are ignored, and `.` covers everything.
/// A rename counts both its old and its new path.
pub fn outside_write_set(files: &[ChangedFile], allowed: &[String]) -> Vec<String> {
    let allowed: Vec<&str> = allowed.iter().map(|entry| normalise(entry)).collect();
    let covered = |path: &str| {
        let path = normalise(path);
        allowed.iter().any(|entry| {
            entry.is_empty()
                || path == *entry
                || (path.starts_with(entry) && path[entry.len()..].starts_with('/'))
        })
    };
    let mut outside: Vec<String> = files
        .iter()
        .flat_map(|file| std::iter::once(&file.path).chain(file.from.as_ref()))
        .filter(|path| !covered(path))
        .cloned()
        .collect();
    outside.sort();
    outside.dedup();
    outside
}

/// A path without leading `./` and trailing `/`; `.` becomes empty.
fn normalise(path: &str) -> &str {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    let path = path.trim_end_matches('/');
    if path == "." {
        ""
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_status_reads_renames_with_both_paths() {
        let parsed = parse_name_status(b"M\0a.txt\0R087\0old.txt\0new.txt\0D\0gone\0").unwrap();
        assert_eq!(
            parsed,
            vec![
                changed("a.txt".into(), FileStatus::Modified),
                ChangedFile {
                    path: "new.txt".into(),
                    status: FileStatus::Renamed,
                    from: Some("old.txt".into())
                },
                changed("gone".into(), FileStatus::Deleted),
            ]
        );
        assert!(parse_name_status(b"X\0a\0").is_err());
        assert!(parse_name_status(b"M\0").is_err());
    }
}
