//! Real git repositories for git-mode tests: a bare remote in a temp
//! folder that logs every update of its refs, seeded with files; and the
//! invariant checker of the merge train (docs/git-mode.md, "The invariant").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use regatta_coordinator::service::TrainView;

/// Runs git in `dir` with no user configuration; panics with its stderr.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("git runs (git mode needs git on PATH)");
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A bare remote with a `main` branch holding `files`.
pub struct Remote {
    pub dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl Remote {
    /// Makes the remote; every update of its refs is logged, so that a test
    /// can list every commit a branch ever pointed to.
    pub fn with_files(files: &[(&str, &str)]) -> Remote {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("remote.git");
        let seed = temp.path().join("seed");
        std::fs::create_dir_all(&dir).expect("remote folder");
        git(
            &dir,
            &["init", "--bare", "--quiet", "--initial-branch=main"],
        );
        git(&dir, &["config", "core.logAllRefUpdates", "always"]);
        std::fs::create_dir_all(&seed).expect("seed folder");
        git(&seed, &["init", "--quiet", "--initial-branch=main"]);
        for (path, content) in files {
            crate::write_file(&seed, path, content);
        }
        git(&seed, &["add", "-A"]);
        git(
            &seed,
            &[
                "commit",
                "--quiet",
                "-m",
                "the codebase before the migration",
            ],
        );
        let url = dir.display().to_string();
        git(&seed, &["push", "--quiet", &url, "main"]);
        Remote { dir, _temp: temp }
    }

    pub fn url(&self) -> String {
        self.dir.display().to_string()
    }

    pub fn tip(&self, branch: &str) -> String {
        git(&self.dir, &["rev-parse", &format!("refs/heads/{branch}")])
    }

    /// Every commit `branch` pointed to, oldest first (its reflog).
    pub fn history_of(&self, branch: &str) -> Vec<String> {
        let log = git(
            &self.dir,
            &[
                "reflog",
                "show",
                "--format=%H",
                &format!("refs/heads/{branch}"),
            ],
        );
        let mut commits: Vec<String> = log.lines().map(str::to_owned).collect();
        commits.reverse();
        commits.dedup();
        commits
    }

    /// Someone else pushes a commit adding `path` to `branch`, as a
    /// colleague would mid-train; returns the new tip.
    pub fn push_outside(&self, branch: &str, path: &str, content: &str) -> String {
        let clone = tempfile::tempdir().expect("temp dir");
        let work = clone.path().join("work");
        git(
            clone.path(),
            &["clone", "--quiet", "--branch", branch, &self.url(), "work"],
        );
        crate::write_file(&work, path, content);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "a colleague's change"]);
        git(&work, &["push", "--quiet", "origin", branch]);
        self.tip(branch)
    }

    /// The content of `path` at the tip of `branch`.
    pub fn file(&self, branch: &str, path: &str) -> String {
        git(&self.dir, &["show", &format!("refs/heads/{branch}:{path}")])
    }

    /// The units merged into `branch`, in order, from the train's merge
    /// commits (`Merge regatta/<batch>/<unit>`) on its first-parent line.
    pub fn merged_units(&self, branch: &str, batch: &str) -> Vec<String> {
        let log = git(
            &self.dir,
            &[
                "log",
                "--first-parent",
                "--reverse",
                "--format=%s",
                &format!("refs/heads/{branch}"),
            ],
        );
        let prefix = format!("Merge regatta/{batch}/");
        log.lines()
            .filter_map(|subject| subject.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect()
    }
}

/// Checks the merge train's invariant against the remote:
/// - every commit the target pointed to after `base` was the commit of a
///   landed candidate (whose integration passed), or one of `outside`
///   (pushed by someone else meanwhile);
/// - the target's history holds every landed unit that changed something
///   exactly once, in an order consistent with `depends_on`;
/// - no unit in `broken` landed.
pub fn check_train(
    remote: &Remote,
    train: &TrainView,
    depends_on: &BTreeMap<&str, Vec<&str>>,
    broken: &[&str],
    outside: &[String],
) {
    let landed_commits: BTreeSet<&str> = train
        .candidates
        .iter()
        .filter(|c| c.state == "landed")
        .filter_map(|c| c.commit.as_deref())
        .collect();
    let history = remote.history_of(&train.target);
    for commit in history.iter().skip(1) {
        assert!(
            landed_commits.contains(commit.as_str()) || outside.contains(commit),
            "the target pointed to {commit}, which is no landed (tested) candidate; train: {train:#?}"
        );
    }
    let merged = remote.merged_units(&train.target, &train.batch_id);
    let mut seen = BTreeSet::new();
    for (position, unit) in merged.iter().enumerate() {
        assert!(
            seen.insert(unit.as_str()),
            "{unit} landed twice: {merged:?}"
        );
        assert!(
            !broken.contains(&unit.as_str()),
            "{unit} broke integration but landed"
        );
        for dependency in depends_on.get(unit.as_str()).into_iter().flatten() {
            if let Some(before) = merged.iter().position(|u| u == dependency) {
                assert!(
                    before < position,
                    "{unit} landed before its dependency {dependency}: {merged:?}"
                );
            }
        }
    }
    for unit in &train.landed {
        let changed = train
            .candidates
            .iter()
            .any(|c| c.units.iter().any(|(u, _)| u == unit) && c.state == "landed");
        if changed {
            assert!(
                seen.contains(unit.as_str()),
                "{unit} is landed but not on the target"
            );
        }
    }
}
