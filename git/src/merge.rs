//! Merging one commit into another without a worktree: `merge-tree
//! --write-tree` for the tree, `commit-tree` for the merge commit. Both the
//! start commit of a workspace and a merge candidate are built this way.

use crate::repo::{command_error, nul_fields, Git, Identity, Oid};
use crate::Error;

/// Merges `theirs` into `ours` and returns the merged tree, or the files
/// that conflict (sorted; empty for the rare conflicts that are about no
/// single file, such as some directory renames).
pub async fn merge_tree(
    git: &Git,
    ours: &str,
    theirs: &str,
) -> Result<Result<Oid, Vec<String>>, Error> {
    let args = [
        "merge-tree",
        "--write-tree",
        "-z",
        "--name-only",
        "--no-messages",
        ours,
        theirs,
    ];
    let output = git.output(&args, &[]).await?;
    // Exit 0 is clean, 1 is conflicted; anything else is a failure.
    let conflicted = match output.code {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(command_error(&args, &output)),
    };
    let mut fields = nul_fields(&output.stdout).into_iter();
    let tree = fields.next().unwrap_or_default();
    if !crate::repo::is_oid(&tree) {
        return Err(Error::Output {
            command: args.join(" "),
            detail: format!("expected a tree id, got {tree:?}"),
        });
    }
    if !conflicted {
        return Ok(Ok(tree));
    }
    let mut files: Vec<String> = fields.filter(|file| !file.is_empty()).collect();
    files.sort();
    files.dedup();
    Ok(Err(files))
}

/// Merges `theirs` into `ours` as a merge commit (parents `ours`, `theirs`)
/// with `message` and `identity`, or returns the files that conflict.
pub async fn merge_commit(
    git: &Git,
    ours: &str,
    theirs: &str,
    message: &str,
    identity: &Identity,
) -> Result<Result<Oid, Vec<String>>, Error> {
    let tree = match merge_tree(git, ours, theirs).await? {
        Ok(tree) => tree,
        Err(files) => return Ok(Err(files)),
    };
    let commit = commit_tree(git, &tree, &[ours, theirs], message, identity).await?;
    Ok(Ok(commit))
}

/// Writes a commit of `tree` with these parents, message and identity.
pub async fn commit_tree(
    git: &Git,
    tree: &str,
    parents: &[&str],
    message: &str,
    identity: &Identity,
) -> Result<Oid, Error> {
    let mut args = vec!["commit-tree", tree];
    for parent in parents {
        args.extend(["-p", parent]);
    }
    args.extend(["-m", message]);
    let commit = git.run_env(&args, &identity.env()).await?;
    let commit = commit.trim();
    if !crate::repo::is_oid(commit) {
        return Err(Error::Output {
            command: "commit-tree".to_owned(),
            detail: format!("expected a commit id, got {commit:?}"),
        });
    }
    Ok(commit.to_owned())
}

/// Tells whether `ancestor` is already contained in `descendant`.
pub async fn is_ancestor(git: &Git, ancestor: &str, descendant: &str) -> Result<bool, Error> {
    let args = ["merge-base", "--is-ancestor", ancestor, descendant];
    let output = git.output(&args, &[]).await?;
    match output.code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(command_error(&args, &output)),
    }
}
