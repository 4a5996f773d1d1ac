//! The repository the git-mode benchmarks work on: a base of one file per
//! unit, a branch per unit that edits its own file (as a migration's units
//! do), a few pairs planted to conflict so the conflict matrix has
//! something to find, and a bare remote holding it all.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub units: usize,
    /// Pairs of units that both rewrite the first one's file.
    pub conflicting_pairs: usize,
    /// Whether the target moves after branching, rewriting the last unit's
    /// file, so that unit conflicts with the target.
    pub target_conflict: bool,
    /// Whether to make the unit branches at all (a git-mode batch makes
    /// its own).
    pub branches: bool,
}

/// A seed repository (with a worktree) and a bare remote with the same
/// branches, in a temp folder deleted on drop.
pub struct UnitRepo {
    /// The seed repository's folder: `main` and every unit branch.
    pub seed: PathBuf,
    /// The bare remote's folder (its path is its URL).
    pub remote: PathBuf,
    /// The target branch's tip (`main`).
    pub target: String,
    /// (unit, its branch's commit), in unit order.
    pub branches: Vec<(String, String)>,
    /// The pairs planted to conflict, and whether one unit conflicts with
    /// the target: what the conflict matrix must find.
    pub planted_pairs: usize,
    pub planted_against_target: usize,
    _temp: tempfile::TempDir,
}

/// Lines per file: the unit's edit is on the middle one.
const LINES: usize = 20;

/// The file unit `i` edits.
pub fn unit_file(i: usize) -> String {
    format!("src/mod{i:03}.txt")
}

/// The name of unit `i`.
pub fn unit_name(i: usize) -> String {
    format!("u{i:03}")
}

/// The branch of unit `i`, named as the workers name theirs.
pub fn unit_branch(i: usize) -> String {
    format!("regatta/bench/{}", unit_name(i))
}

fn file_text(i: usize, edit: Option<&str>) -> String {
    (0..LINES)
        .map(|line| match edit {
            Some(text) if line == LINES / 2 => format!("{text}\n"),
            _ => format!("module {i} line {line}\n"),
        })
        .collect()
}

impl UnitRepo {
    /// Builds the repositories (a few hundred git processes: a second or two).
    pub fn make(layout: Layout) -> anyhow::Result<UnitRepo> {
        let temp = tempfile::tempdir()?;
        let seed = temp.path().join("seed");
        let remote = temp.path().join("remote.git");
        std::fs::create_dir_all(&seed)?;
        std::fs::create_dir_all(&remote)?;
        git(
            &remote,
            &["init", "--bare", "--quiet", "--initial-branch=main"],
        )?;
        git(&seed, &["init", "--quiet", "--initial-branch=main"])?;
        for i in 0..layout.units {
            write(&seed, &unit_file(i), &file_text(i, None))?;
        }
        git(&seed, &["add", "-A"])?;
        git(&seed, &["commit", "--quiet", "-m", "the codebase"])?;
        // Unit b of a planted pair also rewrites unit a's line.
        let planted: Vec<(usize, usize)> = (0..layout.conflicting_pairs)
            .map(|k| (k * 10, k * 10 + 5))
            .filter(|(_, b)| *b < layout.units)
            .collect();
        let mut branches = Vec::with_capacity(layout.units);
        let branching = if layout.branches { layout.units } else { 0 };
        for i in 0..branching {
            let branch = unit_branch(i);
            git(&seed, &["switch", "--quiet", "-C", &branch, "main"])?;
            let edit = format!("module {i} migrated by {}", unit_name(i));
            write(&seed, &unit_file(i), &file_text(i, Some(&edit)))?;
            for (a, _) in planted.iter().filter(|(_, b)| *b == i) {
                let edit = format!("module {a} migrated by {}", unit_name(i));
                write(&seed, &unit_file(*a), &file_text(*a, Some(&edit)))?;
            }
            git(
                &seed,
                &["commit", "--quiet", "-am", &format!("migrate {i}")],
            )?;
            branches.push((unit_name(i), git(&seed, &["rev-parse", "HEAD"])?));
        }
        git(&seed, &["switch", "--quiet", "main"])?;
        let target_conflict = layout.target_conflict && layout.units > 0;
        if target_conflict {
            let last = layout.units - 1;
            let edit = format!("module {last} changed on the target meanwhile");
            write(&seed, &unit_file(last), &file_text(last, Some(&edit)))?;
            git(
                &seed,
                &["commit", "--quiet", "-am", "a change on the target"],
            )?;
        }
        let target = git(&seed, &["rev-parse", "HEAD"])?;
        let url = remote.display().to_string();
        git(
            &seed,
            &["push", "--quiet", &url, "refs/heads/*:refs/heads/*"],
        )?;
        Ok(UnitRepo {
            seed,
            remote,
            target,
            branches,
            planted_pairs: planted.len(),
            planted_against_target: usize::from(target_conflict),
            _temp: temp,
        })
    }

    /// The remote's URL (a path).
    pub fn url(&self) -> String {
        self.remote.display().to_string()
    }

    /// How many train merges of `batch` (`Merge regatta/<batch>/<unit>`)
    /// the remote's `branch` holds on its first-parent line.
    pub fn merges_on(&self, branch: &str, batch: &str) -> anyhow::Result<usize> {
        let prefix = format!("Merge regatta/{batch}/");
        let log = git(
            &self.remote,
            &["log", "--first-parent", "--format=%s", branch],
        )?;
        Ok(log
            .lines()
            .filter(|subject| subject.starts_with(&prefix))
            .count())
    }
}

fn write(dir: &Path, relative: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs git in `dir` without the user's configuration; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .output()
        .context("running git (git mode needs git 2.38 or later on PATH)")?;
    anyhow::ensure!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use regatta_git::conflicts::{conflict_matrix, Conflict, TARGET};
    use regatta_git::repo::Git;

    #[test]
    fn the_matrix_finds_exactly_the_planted_conflicts() {
        let repo = UnitRepo::make(Layout {
            units: 16,
            conflicting_pairs: 2,
            target_conflict: true,
            branches: true,
        })
        .expect("repository");
        assert_eq!((repo.planted_pairs, repo.planted_against_target), (2, 1));
        assert_eq!(repo.branches.len(), 16);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let found = runtime
            .block_on(conflict_matrix(
                &Git::at(&repo.seed),
                &repo.target,
                &repo.branches,
            ))
            .expect("matrix");
        let conflict = |a: &str, b: &str, file: usize| Conflict {
            a: a.to_owned(),
            b: b.to_owned(),
            files: vec![unit_file(file)],
        };
        assert_eq!(
            found,
            vec![
                conflict(TARGET, "u015", 15),
                conflict("u000", "u005", 0),
                conflict("u010", "u015", 10),
            ]
        );
    }
}
