//! Git mode (docs/git-mode.md): what regatta does with a unit's edits when
//! the manifest has a `git:` block.
//!
//! Everything here drives the `git` command line (2.38 or later, for
//! `merge-tree --write-tree`); nothing links libgit2. The pieces, along the
//! path of a unit's change:
//!
//! - [`repo`]: one place that runs `git` with a clean environment and turns
//!   its failures into [`Error`]s that name the command;
//! - [`mirror`]: the one local bare mirror a worker or the coordinator keeps
//!   per remote (fetch, never a clone per unit);
//! - [`workspace`]: a fresh `git worktree` per attempt at the pinned base
//!   with the commits of the unit's dependencies merged in;
//! - [`change`]: the commit of a unit's edits, the files it changed and the
//!   check of those against its declared write set;
//! - [`conflicts`]: which pairs of unit branches (and which branch against
//!   the target) do not merge, without a worktree;
//! - [`merge`]: one commit merged into another without a worktree, shared by
//!   the workspace's start commit and the candidate;
//! - [`candidate`]: a merge candidate, the target's tip plus a window of
//!   unit branches, one merge commit per unit, built without a worktree;
//! - [`remote`]: pins, pushes and the compare-and-swap that moves the
//!   target only to a tested commit;
//! - [`train`]: the merge train's plan, pure: which units form the next
//!   candidate, what a pass or a failure means, bisection.

pub mod candidate;
pub mod change;
pub mod conflicts;
pub mod error;
pub mod merge;
pub mod mirror;
pub mod remote;
pub mod repo;
pub mod train;
pub mod workspace;

pub use error::Error;
