//! The manifest's `git:` block: git mode, where every session runs in a fresh worktree
//! of a shared repository, its edits become a branch, and a merge train lands the
//! branches on a target branch once an integration command passes on them.
//!
//! The block's rules are here, on the domain type, so that a manifest read from a file
//! and one received as JSON are held to the same ones: the remote's spelling, ref names
//! as `git check-ref-format` accepts them, the window's bounds.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::errors::{ManifestErrorKind, RefProblem, RepoProblem};
use super::position::{Locator, Node, Problem};
use crate::duration;

/// How long the integration command may run on a merge candidate, when unset.
pub const DEFAULT_INTEGRATION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Units per merge candidate to start with, when unset.
pub const DEFAULT_WINDOW: u32 = 4;
/// Largest `window`: a candidate merges one commit per unit, and bisecting a failed
/// one costs about log2(window) integration runs.
pub const MAX_WINDOW: u32 = 1_000;

/// URL schemes a remote may use: each lets every worker fetch and push.
const SCHEMES: &[&str] = &["file", "ssh", "https", "http"];

/// Git mode's settings: where the code is, where the batch starts from, where its
/// work lands and what must pass before it does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GitSpec {
    /// A remote every worker can fetch from and push to: an absolute path once loaded
    /// (a relative one is resolved against the manifest's folder), or a `file://`,
    /// `ssh://`, `https://`, `http://` URL or an scp-like `user@host:path`, as written.
    pub repo: String,
    /// The branch, tag or commit the batch starts from; pinned to its commit when the
    /// batch is enqueued, so that every unit starts from the same code.
    pub base: String,
    /// The branch the merge train advances; `base` unless `base` is a commit id.
    pub target: String,
    /// Run with `/bin/sh -c` on each merge candidate; a candidate lands only if it
    /// exits 0.
    pub integration: String,
    /// Deadline of one integration run.
    #[serde(
        default = "default_integration_timeout",
        serialize_with = "duration::serde_required::serialize",
        deserialize_with = "deserialize_integration_timeout"
    )]
    pub integration_timeout: Duration,
    /// Units per merge candidate to start with: +1 after a pass, halved after a
    /// failure, at least 1.
    #[serde(default = "default_window")]
    pub window: u32,
    /// Whether the train runs by itself or waits for `regatta merge BATCH`.
    #[serde(default)]
    pub merge: MergeMode,
    /// A unit that changes files outside its `touches` and `outputs` fails a built-in
    /// gate naming them.
    #[serde(default = "default_strict_writes")]
    pub strict_writes: bool,
}

/// When the merge train runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// As units succeed.
    #[default]
    Auto,
    /// Only once a human runs `regatta merge BATCH`.
    Manual,
}

impl MergeMode {
    /// Returns the mode as the manifest spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeMode::Auto => "auto",
            MergeMode::Manual => "manual",
        }
    }

    /// Reads the manifest's spelling (`auto`, `manual`).
    pub fn from_name(name: &str) -> Option<MergeMode> {
        match name {
            "auto" => Some(MergeMode::Auto),
            "manual" => Some(MergeMode::Manual),
            _ => None,
        }
    }
}

fn default_integration_timeout() -> Duration {
    DEFAULT_INTEGRATION_TIMEOUT
}

fn default_window() -> u32 {
    DEFAULT_WINDOW
}

fn default_strict_writes() -> bool {
    true
}

/// Reads the duration as [`duration::serde_option`] does; null means the default.
fn deserialize_integration_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(duration::serde_option::deserialize(d)?.unwrap_or(DEFAULT_INTEGRATION_TIMEOUT))
}

/// Tells whether `name` is a full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
/// An abbreviated id is taken for a ref name, which it may well be.
pub fn is_commit_id(name: &str) -> bool {
    matches!(name.len(), 40 | 64) && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a ref name by `git check-ref-format --allow-onelevel`'s rules, and refuses a
/// leading `-`, which git would read as an option.
pub fn check_ref_name(name: &str) -> Result<(), RefProblem> {
    // First, so that a tab is named a control character rather than a space.
    if name.chars().any(char::is_control) {
        return Err(RefProblem::ControlCharacter);
    }
    if name.contains(' ') {
        return Err(RefProblem::Space);
    }
    if let Some(c) = name.chars().find(|c| "~^:?*[\\".contains(*c)) {
        return Err(RefProblem::ForbiddenCharacter(c));
    }
    if name.contains("..") {
        return Err(RefProblem::DoubleDot);
    }
    if name.contains("@{") {
        return Err(RefProblem::AtBrace);
    }
    if name == "@" {
        return Err(RefProblem::LoneAt);
    }
    if name.starts_with('-') {
        return Err(RefProblem::LeadingDash);
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(RefProblem::Slash);
    }
    for component in name.split('/') {
        if component.starts_with('.') {
            return Err(RefProblem::DotComponent);
        }
        if component.ends_with(".lock") {
            return Err(RefProblem::LockSuffix);
        }
    }
    if name.ends_with('.') {
        return Err(RefProblem::TrailingDot);
    }
    Ok(())
}

/// How a `repo` is spelt, which decides whether it is resolved as a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RepoForm<'a> {
    /// A path on the file system, relative or absolute.
    Path,
    /// A URL with a supported scheme, or an scp-like `user@host:path`.
    Remote,
    /// A URL with a scheme no worker can push through (`git://`, `ftp://`...).
    Unsupported { scheme: &'a str },
}

/// Tells a remote's spelling apart as git does: `scheme://...` is a URL; a `:` before
/// any `/` makes an scp-like `[user@]host:path`; anything else is a path.
pub(crate) fn repo_form(repo: &str) -> RepoForm<'_> {
    if let Some((scheme, _)) = repo.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            return if SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                RepoForm::Remote
            } else {
                RepoForm::Unsupported { scheme }
            };
        }
    }
    match (repo.find(':'), repo.find('/')) {
        (Some(colon), slash) if colon > 0 && slash.is_none_or(|slash| colon < slash) => {
            RepoForm::Remote
        }
        _ => RepoForm::Path,
    }
}

/// Applies the `git:` block's rules.
pub(crate) fn check(git: &GitSpec, problems: &mut Vec<Problem>) {
    let node = Node::Git;
    let at = |field: &'static str| Locator::Value(node, field);
    check_repo(&git.repo, problems);
    let base_is_commit = is_commit_id(&git.base);
    if git.base.trim().is_empty() {
        let kind = ManifestErrorKind::MissingField { field: "git.base" };
        problems.push(Problem::new(at("base"), kind));
    } else if !base_is_commit {
        if let Err(reason) = check_ref_name(&git.base) {
            let kind = ManifestErrorKind::InvalidGitRef {
                field: "base",
                name: git.base.clone(),
                reason,
            };
            problems.push(Problem::new(at("base"), kind));
        }
    }
    if git.target.is_empty() {
        if base_is_commit {
            problems.push(Problem::new(
                at("target"),
                ManifestErrorKind::GitTargetRequired,
            ));
        } else if !git.base.trim().is_empty() {
            let kind = ManifestErrorKind::MissingField {
                field: "git.target",
            };
            problems.push(Problem::new(at("target"), kind));
        }
    } else if is_commit_id(&git.target) {
        let kind = ManifestErrorKind::GitTargetNotBranch {
            target: git.target.clone(),
        };
        problems.push(Problem::new(at("target"), kind));
    } else if git.target != git.base {
        // A target defaulted from a bad base would repeat the base's problem.
        if let Err(reason) = check_ref_name(&git.target) {
            let kind = ManifestErrorKind::InvalidGitRef {
                field: "target",
                name: git.target.clone(),
                reason,
            };
            problems.push(Problem::new(at("target"), kind));
        }
    }
    if git.integration.trim().is_empty() {
        let kind = ManifestErrorKind::MissingField {
            field: "git.integration",
        };
        problems.push(Problem::new(at("integration"), kind));
    }
    if git.integration_timeout.is_zero() {
        let kind = ManifestErrorKind::ZeroDuration {
            field: "integration_timeout",
        };
        problems.push(Problem::new(at("integration_timeout"), kind));
    }
    if !(1..=MAX_WINDOW).contains(&git.window) {
        let kind = ManifestErrorKind::GitWindowOutOfRange {
            window: git.window,
            max: MAX_WINDOW,
        };
        problems.push(Problem::new(at("window"), kind));
    }
}

fn check_repo(repo: &str, problems: &mut Vec<Problem>) {
    let locator = Locator::Value(Node::Git, "repo");
    if repo.trim().is_empty() {
        let kind = ManifestErrorKind::MissingField { field: "git.repo" };
        problems.push(Problem::new(locator, kind));
        return;
    }
    let reason = if repo.chars().any(char::is_control) {
        Some(RepoProblem::ControlCharacter)
    } else {
        match repo_form(repo) {
            RepoForm::Unsupported { scheme } => Some(RepoProblem::UnsupportedScheme {
                scheme: scheme.to_owned(),
            }),
            RepoForm::Path if !Path::new(repo).is_absolute() => Some(RepoProblem::RelativePath),
            _ => None,
        }
    };
    if let Some(reason) = reason {
        let kind = ManifestErrorKind::InvalidGitRepo {
            repo: repo.to_owned(),
            reason,
        };
        problems.push(Problem::new(locator, kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_check_ref_format() {
        for good in [
            "main",
            "release/2.x",
            "v1.0",
            "feature/a-b_c",
            "a@b",
            "HEAD",
        ] {
            assert_eq!(check_ref_name(good), Ok(()), "{good}");
        }
        let cases = [
            ("a b", RefProblem::Space),
            ("a\tb", RefProblem::ControlCharacter),
            ("a..b", RefProblem::DoubleDot),
            ("a~1", RefProblem::ForbiddenCharacter('~')),
            ("a^", RefProblem::ForbiddenCharacter('^')),
            ("a:b", RefProblem::ForbiddenCharacter(':')),
            ("a?", RefProblem::ForbiddenCharacter('?')),
            ("a*", RefProblem::ForbiddenCharacter('*')),
            ("a[0]", RefProblem::ForbiddenCharacter('[')),
            ("a\\b", RefProblem::ForbiddenCharacter('\\')),
            ("-main", RefProblem::LeadingDash),
            ("main.lock", RefProblem::LockSuffix),
            ("a.lock/b", RefProblem::LockSuffix),
            ("main/", RefProblem::Slash),
            ("/main", RefProblem::Slash),
            ("a//b", RefProblem::Slash),
            ("a/.b", RefProblem::DotComponent),
            (".a", RefProblem::DotComponent),
            ("main.", RefProblem::TrailingDot),
            ("a@{1}", RefProblem::AtBrace),
            ("@", RefProblem::LoneAt),
        ];
        for (name, problem) in cases {
            assert_eq!(check_ref_name(name), Err(problem), "{name}");
        }
    }

    #[test]
    fn commit_ids_are_full_hex_only() {
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(is_commit_id(&"0123456789abcdefABCDEF".repeat(3)[..64]));
        assert!(!is_commit_id("abc1234"));
        assert!(!is_commit_id(&"g".repeat(40)));
        assert!(!is_commit_id(&"a".repeat(41)));
    }

    #[test]
    fn repo_forms_follow_git() {
        assert_eq!(repo_form("../shop.git"), RepoForm::Path);
        assert_eq!(repo_form("/srv/shop.git"), RepoForm::Path);
        assert_eq!(repo_form("./a:b"), RepoForm::Path);
        assert_eq!(repo_form(":x"), RepoForm::Path);
        assert_eq!(repo_form("file:///srv/shop.git"), RepoForm::Remote);
        assert_eq!(repo_form("ssh://git@host/shop.git"), RepoForm::Remote);
        assert_eq!(repo_form("HTTPS://host/shop.git"), RepoForm::Remote);
        assert_eq!(repo_form("http://host/shop.git"), RepoForm::Remote);
        assert_eq!(repo_form("git@host:team/shop.git"), RepoForm::Remote);
        assert_eq!(repo_form("host:shop.git"), RepoForm::Remote);
        assert_eq!(
            repo_form("git://host/shop.git"),
            RepoForm::Unsupported { scheme: "git" }
        );
        assert_eq!(
            repo_form("ftp://host/shop.git"),
            RepoForm::Unsupported { scheme: "ftp" }
        );
    }
}
