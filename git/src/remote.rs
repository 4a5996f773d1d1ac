//! What regatta asks of the remote: pins of the base, the tip of the
//! target, pushes of unit branches and candidates, and the compare-and-swap
//! that moves the target only from the commit a candidate was tested on.

use crate::mirror::{full_name, Mirror};
use crate::repo::{command_error, is_oid, Oid};
use crate::Error;

/// Pins `rev` (branch, tag or commit id) on the remote to a commit id and
/// fetches it into the mirror: a name is looked up with `ls-remote` and its
/// ref fetched, a commit id is fetched (a no-op if the mirror has it).
/// [`Error::NotOnRemote`] names the rev when the remote does not have it.
pub async fn pin(mirror: &Mirror, rev: &str) -> Result<Oid, Error> {
    if is_oid(rev) {
        if !mirror.has_commit(rev).await? {
            mirror.fetch(&[rev]).await.map_err(|error| match error {
                // What upload-pack answers for an id it does not have (or
                // will not serve); anything else is the remote's failure.
                Error::Command { stderr, .. } if stderr.contains("not our ref") => {
                    Error::NotOnRemote {
                        rev: rev.to_owned(),
                        remote: mirror.shown_remote(),
                    }
                }
                other => other,
            })?;
        }
        return mirror.resolve(rev).await;
    }
    let advertised = mirror.ls_remote(&[rev]).await?;
    let full = full_name(rev, &advertised).ok_or_else(|| Error::NotOnRemote {
        rev: rev.to_owned(),
        remote: mirror.shown_remote(),
    })?;
    mirror.fetch(&[&full]).await?;
    // The ref as fetched: if it moved since ls-remote, the newer commit is
    // the one the mirror has, and a pin must be a commit the mirror has.
    mirror.resolve(&full).await
}

/// The remote's branch tip (None if the branch does not exist). Only asks;
/// fetch the tip before building on it.
pub async fn tip(mirror: &Mirror, branch: &str) -> Result<Option<Oid>, Error> {
    let full = branch_ref(branch);
    let advertised = mirror.ls_remote(&[&full]).await?;
    Ok(advertised
        .into_iter()
        .find(|(name, _)| *name == full)
        .map(|(_, id)| id))
}

/// Pushes `commit` (present in the mirror) to `refname` on the remote,
/// replacing what is there (a unit's own branch, or a candidate ref). A
/// name without `refs/` is a branch.
pub async fn push(mirror: &Mirror, commit: &Oid, refname: &str) -> Result<(), Error> {
    let refspec = format!("+{commit}:{}", branch_ref(refname));
    let args = [
        "push",
        "--quiet",
        "--no-verify",
        "--",
        mirror.remote(),
        refspec.as_str(),
    ];
    mirror.git().run(&args).await?;
    Ok(())
}

/// How a compare-and-swap of the target ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The target now points to the new commit.
    Moved,
    /// The target had moved meanwhile; nothing was overwritten. `actual` is
    /// what it points to now (None if it was deleted).
    Raced { actual: Option<Oid> },
}

/// Moves `branch` on the remote from `expected` to `new` only if it still
/// points to `expected` (`--force-with-lease=refs/heads/<branch>:<expected>`,
/// checked again by the remote's own ref update); [`Swap::Raced`] with what
/// is there now otherwise. An unreachable remote, or a refusal while the
/// branch still points to `expected` (a protected branch), is an Error.
pub async fn compare_and_swap(
    mirror: &Mirror,
    branch: &str,
    expected: &Oid,
    new: &Oid,
) -> Result<Swap, Error> {
    let full = branch_ref(branch);
    let lease = format!("--force-with-lease={full}:{expected}");
    let refspec = format!("{new}:{full}");
    let args = [
        "push",
        "--porcelain",
        "--no-verify",
        lease.as_str(),
        "--",
        mirror.remote(),
        refspec.as_str(),
    ];
    let output = mirror.git().output(&args, &[]).await?;
    if output.success() {
        return Ok(Swap::Moved);
    }
    // A rejected ref is reported on stdout, one `!` line; without one the
    // push never got that far (remote unreachable).
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rejected = stdout.lines().any(|line| line.starts_with('!'));
    if !rejected {
        return Err(command_error(&args, &output));
    }
    let actual = tip(mirror, branch).await?;
    if actual.as_deref() == Some(expected.as_str()) {
        return Err(command_error(&args, &output));
    }
    Ok(Swap::Raced { actual })
}

/// The full name of a branch (`main` -> `refs/heads/main`); a full ref name
/// stays as it is.
fn branch_ref(name: &str) -> String {
    if name.starts_with("refs/") {
        name.to_owned()
    } else {
        format!("refs/heads/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_branches() {
        assert_eq!(branch_ref("main"), "refs/heads/main");
        assert_eq!(branch_ref("regatta/b/u"), "refs/heads/regatta/b/u");
        assert_eq!(
            branch_ref("refs/regatta/candidates/1"),
            "refs/regatta/candidates/1"
        );
    }
}
