//! The conflict matrix: which pairs of unit branches, and which branch
//! against the target, do not merge. One `git merge-tree --stdin` process
//! answers every pair, without a worktree.

use serde::{Deserialize, Serialize};

use crate::repo::{command_error, nul_fields, Git, Oid};
use crate::Error;

/// The name that stands for the target in [`Conflict::a`].
pub const TARGET: &str = "target";

/// Two things that do not merge, and the files they conflict in.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema,
)]
pub struct Conflict {
    /// "target", or the unit that sorts first.
    pub a: String,
    pub b: String,
    /// Sorted; empty for a conflict that is about no single file.
    pub files: Vec<String>,
}

/// Merges every pair of `branches` and each branch against `target` (named
/// "target" in `a`) with ONE `git merge-tree --write-tree --stdin` process,
/// and returns the conflicting pairs with their files, sorted. Every commit
/// must be in the repository.
pub async fn conflict_matrix(
    git: &Git,
    target: &Oid,
    branches: &[(String, Oid)],
) -> Result<Vec<Conflict>, Error> {
    let mut pairs: Vec<(&str, &str, &str, &str)> = Vec::new();
    for (unit, commit) in branches {
        pairs.push((TARGET, target.as_str(), unit.as_str(), commit.as_str()));
    }
    for (index, (first, first_commit)) in branches.iter().enumerate() {
        for (second, second_commit) in &branches[index + 1..] {
            let (a, a_commit, b, b_commit) = if first <= second {
                (first, first_commit, second, second_commit)
            } else {
                (second, second_commit, first, first_commit)
            };
            pairs.push((a, a_commit, b, b_commit));
        }
    }
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let input: String = pairs
        .iter()
        .map(|(_, ours, _, theirs)| format!("{ours} {theirs}\n"))
        .collect();
    let args = [
        "merge-tree",
        "--write-tree",
        "--stdin",
        "-z",
        "--name-only",
        "--no-messages",
    ];
    let output = git.run_with_input(&args, input.as_bytes()).await?;
    if !output.success() {
        return Err(command_error(&args, &output));
    }
    let results = parse_batch(&output.stdout).map_err(|detail| Error::Output {
        command: args.join(" "),
        detail,
    })?;
    if results.len() != pairs.len() {
        return Err(Error::Output {
            command: args.join(" "),
            detail: format!("{} merges asked, {} answered", pairs.len(), results.len()),
        });
    }
    let mut conflicts: Vec<Conflict> = pairs
        .iter()
        .zip(results)
        .filter_map(|((a, _, b, _), files)| {
            files.map(|files| Conflict {
                a: (*a).to_owned(),
                b: (*b).to_owned(),
                files,
            })
        })
        .collect();
    conflicts.sort();
    Ok(conflicts)
}

/// Parses the batch output of `merge-tree --stdin -z --name-only
/// --no-messages`: per merge, `<status>NUL<tree>NUL`, then (if conflicted)
/// one `<file>NUL` per file, then a closing NUL. Status 1 is clean, 0
/// conflicted. Returns per merge None (clean) or the sorted files.
fn parse_batch(bytes: &[u8]) -> Result<Vec<Option<Vec<String>>>, String> {
    let mut fields = nul_fields(bytes).into_iter();
    let mut results = Vec::new();
    while let Some(status) = fields.next() {
        let clean = match status.as_str() {
            "1" => true,
            "0" => false,
            other => return Err(format!("merge status {other:?}")),
        };
        let tree = fields.next().unwrap_or_default();
        if !crate::repo::is_oid(&tree) {
            return Err(format!("expected a tree id, got {tree:?}"));
        }
        let mut files = Vec::new();
        loop {
            match fields.next() {
                Some(file) if file.is_empty() => break,
                Some(file) => files.push(file),
                None => return Err("output ends inside a merge".to_owned()),
            }
        }
        files.sort();
        files.dedup();
        results.push(if clean { None } else { Some(files) });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_output_separates_clean_and_conflicted_merges() {
        let tree = "a".repeat(40);
        let bytes = format!("0\0{tree}\0z\0f\0\01\0{tree}\0\00\0{tree}\0\0");
        assert_eq!(
            parse_batch(bytes.as_bytes()).unwrap(),
            vec![
                Some(vec!["f".to_owned(), "z".to_owned()]),
                None,
                Some(vec![])
            ]
        );
        assert!(parse_batch(b"2\0").is_err());
        assert!(parse_batch(format!("1\0{tree}\0").as_bytes()).is_err());
    }
}
