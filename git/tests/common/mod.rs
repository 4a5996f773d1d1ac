//! Test repositories: a bare "remote" in a temp folder, a seeding clone that
//! makes commits and pushes them, and a mirror of the remote.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use regatta_git::mirror::Mirror;
use regatta_git::repo::Identity;
use tempfile::TempDir;

/// Runs git synchronously in `dir` with no user or system config; panics on
/// failure (tests only).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Seed")
        .env("GIT_AUTHOR_EMAIL", "seed@example.org")
        .env("GIT_COMMITTER_NAME", "Seed")
        .env("GIT_COMMITTER_EMAIL", "seed@example.org")
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

pub fn identity() -> Identity {
    Identity {
        name: "regatta b1/u1".to_owned(),
        email: "regatta@example.org".to_owned(),
    }
}

/// A bare remote with `main` holding a base commit, and a clone to seed it.
pub struct Fixture {
    pub temp: TempDir,
    pub remote: PathBuf,
    pub seed: PathBuf,
    /// The commit `main` starts at.
    pub base: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let remote = temp.path().join("remote.git");
        let seed = temp.path().join("seed");
        git(
            temp.path(),
            &["init", "--bare", "--quiet", remote.to_str().unwrap()],
        );
        git(temp.path(), &["init", "--quiet", seed.to_str().unwrap()]);
        std::fs::write(seed.join("shared.txt"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(seed.join("readme.md"), "# demo\n").unwrap();
        std::fs::create_dir_all(seed.join("src")).unwrap();
        std::fs::write(seed.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "--quiet", "-m", "base"]);
        git(
            &seed,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        git(&seed, &["push", "--quiet", "origin", "main"]);
        let base = git(&seed, &["rev-parse", "HEAD"]);
        Fixture {
            temp,
            remote,
            seed,
            base,
        }
    }

    /// The remote as a mirror is given it.
    pub fn remote_url(&self) -> String {
        self.remote.to_str().unwrap().to_owned()
    }

    /// Commits `files` ((path, Some(content)) writes, (path, None) deletes)
    /// on a new `branch` made from `from`, pushes it and returns its commit.
    pub fn branch(&self, branch: &str, from: &str, files: &[(&str, Option<&str>)]) -> String {
        git(&self.seed, &["checkout", "--quiet", "-B", branch, from]);
        for (path, content) in files {
            let full = self.seed.join(path);
            match content {
                Some(content) => {
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(&full, content).unwrap();
                }
                None => std::fs::remove_file(&full).unwrap(),
            }
        }
        git(&self.seed, &["add", "-A"]);
        git(&self.seed, &["commit", "--quiet", "-m", branch]);
        let pushed = format!("+{branch}:refs/heads/{branch}");
        git(&self.seed, &["push", "--quiet", "origin", &pushed]);
        git(&self.seed, &["rev-parse", "HEAD"])
    }

    /// Opens the mirror in the temp folder.
    pub async fn mirror(&self) -> Mirror {
        Mirror::open(&self.temp.path().join("mirror.git"), &self.remote_url())
            .await
            .unwrap()
    }

    /// What the remote's ref points to, if anything.
    pub fn remote_ref(&self, refname: &str) -> Option<String> {
        let listing = git(
            &self.remote,
            &["for-each-ref", "--format=%(objectname)", refname],
        );
        (!listing.is_empty()).then_some(listing)
    }
}
