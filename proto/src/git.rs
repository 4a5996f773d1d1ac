//! Git mode on the wire (docs/git-mode.md): what a work order asks a worker
//! to do with the repository, and what the worker reports back.
//!
//! The worker builds the session's worktree from the order alone, so a
//! re-published or re-run order rebuilds the same starting commit.

use serde::{Deserialize, Serialize};

/// Which git-mode session an order is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GitSession {
    /// A unit's session: the worktree starts at `base` with the commits of
    /// its dependencies merged in; the result is committed and pushed.
    Unit,
    /// A unit re-run on the target's tip because its branch no longer
    /// merged there (not counted as a retry).
    Rebase,
    /// The integration command on merge candidate `candidate`: the worktree
    /// is the candidate commit; nothing is committed.
    Integration { candidate: u64 },
}

/// The repository part of a work order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitOrder {
    /// The remote every worker fetches from and pushes to.
    pub repo: String,
    pub session: GitSession,
    /// The commit the worktree starts from, before dependencies are merged.
    pub base: String,
    /// Refs to fetch before building the worktree (dependency branches, a
    /// candidate's ref); `base` and the dependency commits must be in them
    /// or already in the worker's mirror.
    pub fetch: Vec<String>,
    /// Each dependency's unit id and the commit it landed, merged in order.
    pub dependencies: Vec<(String, String)>,
    /// Where the unit's commit is pushed (`refs/heads/regatta/<batch>/<unit>`);
    /// `None` for an integration session.
    pub branch: Option<String>,
    /// The paths the unit may change (its `touches` and `outputs`), when
    /// the manifest's `strict_writes` is on.
    pub writes: Option<Vec<String>>,
}

/// How a changed file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Added,
    Modified,
    Deleted,
    Renamed,
    TypeChanged,
}

/// One file a unit's commit changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangedFile {
    pub path: String,
    pub status: FileStatus,
    /// The old path of a rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The commit a unit's session made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnitCommit {
    pub commit: String,
    pub tree: String,
    pub files: Vec<ChangedFile>,
    pub insertions: u64,
    pub deletions: u64,
}

/// What a git-mode session did with the repository, for the coordinator and
/// the evidence pack.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GitReport {
    /// The commit the worktree was built from, before merges.
    pub base: String,
    /// The commit the session started from (base with the dependencies merged).
    #[serde(default)]
    pub start: String,
    pub dependencies: Vec<(String, String)>,
    /// The unit's commit; `None` when it changed nothing (or did not succeed).
    #[serde(default)]
    pub commit: Option<UnitCommit>,
    /// Where the commit was pushed.
    #[serde(default)]
    pub branch: Option<String>,
    /// The files in which the dependencies conflicted with each other: the
    /// session never ran, and the unit needs a person.
    #[serde(default)]
    pub conflict: Option<Vec<String>>,
    /// Changed files outside the unit's `touches` and `outputs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside_writes: Vec<String>,
}

/// Says whether `text` is a full commit id (SHA-1 or SHA-256, lowercase
/// hex): what the coordinator accepts from a worker before passing it to git.
pub fn is_object_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The ref a session's commit is pushed to besides its unit's branch: it
/// is never overwritten, so a late push of a stalled earlier attempt can
/// replace the branch but not the commit the coordinator lands.
pub fn session_ref(batch_id: &str, session_id: &str) -> String {
    format!("refs/regatta/{batch_id}/sessions/{session_id}")
}

/// The branch a unit's commit is pushed to.
pub fn unit_branch(batch_id: &str, unit_id: &str) -> String {
    format!("refs/heads/regatta/{batch_id}/{unit_id}")
}

/// The ref a merge candidate is pushed to for the workers to test.
pub fn candidate_ref(batch_id: &str, candidate: u64) -> String {
    format!("refs/regatta/{batch_id}/candidates/{candidate}")
}

/// The pseudo-unit whose attempts are a batch's integration sessions: its
/// record sits beside the units' records, so claims and reaping treat it
/// like any unit; `@` is not allowed in unit ids, so it cannot collide.
pub const INTEGRATION_UNIT: &str = "@integration";
