//! The semantic rules of a manifest, applied to the domain types so that a manifest read
//! from a file and one received as JSON are held to the same rules.
//!
//! Every rule runs in time linear in the manifest's size; did-you-mean suggestions, the
//! only comparisons of names against all names, run on the error path and within a
//! [`Suggester`]'s budget.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::errors::{ManifestErrorKind, PathProblem};
use super::git;
use super::position::{Locator, Node, Problem};
use super::raw::Notes;
use super::suggest::Suggester;
use super::{Manifest, Unit, FILE_RESOURCE_PREFIX};
use crate::dag;

/// Longest unit id or resource name: ids become file names, which most file systems cap
/// at 255 bytes, and regatta adds prefixes and suffixes.
const MAX_NAME_LEN: usize = 200;

/// What the reading learnt that changes which rules apply.
pub(crate) struct Context<'a> {
    pub notes: &'a Notes,
    /// False when the playbook could not be read: its problems were reported, and gate
    /// names in `verify` cannot be checked against it.
    pub playbook_known: bool,
}

/// Applies every semantic rule; returns the problems found, in manifest order.
pub(crate) fn check(manifest: &Manifest, context: &Context<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut suggester = Suggester::default();
    check_top(manifest, &mut problems);
    check_resources(manifest, context, &mut problems);
    super::budget::check_batch(manifest, &mut problems);
    if context.playbook_known {
        check_playbook(manifest, &mut problems);
        super::budget::check_playbook(manifest, &mut problems);
    }
    let gate_names: Vec<&str> = manifest
        .playbook
        .gates
        .iter()
        .map(|gate| gate.name.as_str())
        .collect();
    let resource_names: Vec<&str> = manifest.resources.keys().map(String::as_str).collect();
    for (index, unit) in manifest.units.iter().enumerate() {
        if context.notes.broken_units.contains(&index) {
            continue;
        }
        let node = Node::Unit(index);
        check_unit_fields(unit, node, &mut problems);
        if let Some(budget) = &unit.budget {
            super::budget::check_budget(budget, Node::UnitBudget(index), &mut problems);
        }
        check_uses(
            manifest,
            unit,
            node,
            &resource_names,
            &mut suggester,
            &mut problems,
        );
        if context.playbook_known {
            check_verify(unit, node, &gate_names, &mut suggester, &mut problems);
        }
    }
    let broken = &context.notes.broken_units;
    problems.extend(dag::graph_problems(
        &manifest.units,
        &|index| broken.contains(&index),
        &mut suggester,
    ));
    problems
}

fn check_top(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let top = Node::Top;
    if manifest.batch.trim().is_empty() {
        let kind = ManifestErrorKind::MissingField { field: "batch" };
        problems.push(Problem::new(Locator::Value(top, "batch"), kind));
    } else if !is_valid_name(&manifest.batch) {
        let kind = ManifestErrorKind::WrongType {
            field: "batch".into(),
            expected: "a name of letters, digits, '.', '_' and '-' (it becomes part of Redis keys)",
            found: format!("'{}'", manifest.batch),
        };
        problems.push(Problem::new(Locator::Value(top, "batch"), kind));
    }
    match &manifest.git {
        Some(git) => {
            if !manifest.workdir.as_os_str().is_empty() {
                let locator = Locator::Value(top, "workdir");
                problems.push(Problem::new(locator, ManifestErrorKind::WorkdirInGitMode));
            }
            git::check(git, problems);
        }
        None if !manifest.workdir.is_absolute() => {
            let kind = ManifestErrorKind::WorkdirNotAbsolute {
                path: manifest.workdir.clone(),
            };
            problems.push(Problem::new(Locator::Value(top, "workdir"), kind));
        }
        None => {}
    }
    if manifest.concurrency == 0 {
        let locator = Locator::Value(top, "concurrency");
        problems.push(Problem::new(locator, ManifestErrorKind::ZeroConcurrency));
    }
    if manifest.calibration == Some(0) {
        let locator = Locator::Value(top, "calibration");
        problems.push(Problem::new(locator, ManifestErrorKind::ZeroCalibration));
    }
    if let Some(value) = manifest.calibration_auto {
        if !(value > 0.0 && value <= 1.0) {
            let locator = Locator::Value(top, "calibration_auto");
            let kind = ManifestErrorKind::CalibrationAutoOutOfRange { value };
            problems.push(Problem::new(locator, kind));
        } else if manifest.calibration.is_none() {
            let locator = Locator::Value(top, "calibration_auto");
            problems.push(Problem::new(
                locator,
                ManifestErrorKind::CalibrationAutoWithoutCalibration,
            ));
        }
    }
    check_timeout(manifest.timeout, top, problems);
    if manifest.units.is_empty() {
        problems.push(Problem::new(
            Locator::Value(top, "units"),
            ManifestErrorKind::NoUnits,
        ));
    }
}

fn check_resources(manifest: &Manifest, context: &Context<'_>, problems: &mut Vec<Problem>) {
    for (name, capacity) in &manifest.resources {
        let locator = Locator::Entry(Node::Top, "resources", name.clone());
        if name.starts_with(FILE_RESOURCE_PREFIX) {
            let kind = ManifestErrorKind::ReservedResourceName {
                resource: name.clone(),
            };
            problems.push(Problem::new(locator.clone(), kind));
        } else if !is_valid_name(name) {
            let kind = ManifestErrorKind::InvalidResourceName {
                resource: name.clone(),
            };
            problems.push(Problem::new(locator.clone(), kind));
        }
        if *capacity == 0 && !context.notes.reported_capacities.contains(name) {
            let kind = ManifestErrorKind::InvalidCapacity {
                resource: name.clone(),
                found: "0".into(),
            };
            problems.push(Problem::new(locator, kind));
        }
    }
}

fn check_playbook(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let playbook = &manifest.playbook;
    let node = Node::Playbook;
    if playbook.name.trim().is_empty() {
        let kind = ManifestErrorKind::MissingField { field: "name" };
        problems.push(Problem::new(Locator::Value(node, "name"), kind));
    }
    if playbook.run.trim().is_empty() {
        let kind = ManifestErrorKind::MissingField { field: "run" };
        problems.push(Problem::new(Locator::Value(node, "run"), kind));
    }
    check_env(playbook.env.keys(), node, problems);
    check_timeout(playbook.timeout, node, problems);
    let mut first_by_name: HashMap<&str, usize> = HashMap::new();
    for (index, gate) in playbook.gates.iter().enumerate() {
        let node = Node::Gate(index);
        if gate.name.trim().is_empty() {
            let kind = ManifestErrorKind::MissingField { field: "name" };
            problems.push(Problem::new(Locator::Value(node, "name"), kind));
        } else if let Some(first) = first_by_name.get(gate.name.as_str()) {
            let kind = ManifestErrorKind::DuplicateGate {
                name: gate.name.clone(),
                first_line: None,
                first_column: None,
            };
            let first = Locator::Value(Node::Gate(*first), "name");
            problems.push(Problem::new(Locator::Value(node, "name"), kind).also(first));
        } else {
            first_by_name.insert(&gate.name, index);
        }
        if gate.run.trim().is_empty() {
            let kind = ManifestErrorKind::MissingField { field: "run" };
            problems.push(Problem::new(Locator::Value(node, "run"), kind));
        }
        match &gate.fix {
            Some(fix) if fix.trim().is_empty() => {
                let kind = ManifestErrorKind::Empty { field: "fix" };
                problems.push(Problem::new(Locator::Value(node, "fix"), kind));
            }
            None if gate.repairs.is_some_and(|repairs| repairs > 0) => {
                let kind = ManifestErrorKind::RepairsWithoutFix {
                    gate: gate.name.clone(),
                };
                problems.push(Problem::new(Locator::Value(node, "repairs"), kind));
            }
            _ => {}
        }
        check_timeout(gate.timeout, node, problems);
    }
}

fn check_unit_fields(unit: &Unit, node: Node, problems: &mut Vec<Problem>) {
    if unit.id.is_empty() {
        problems.push(Problem::new(
            Locator::Value(node, "id"),
            ManifestErrorKind::MissingId,
        ));
    } else if !is_valid_name(&unit.id) {
        let kind = ManifestErrorKind::InvalidId {
            id: unit.id.clone(),
        };
        problems.push(Problem::new(Locator::Value(node, "id"), kind));
    }
    for (field, paths) in [
        ("inputs", &unit.inputs),
        ("outputs", &unit.outputs),
        ("touches", &unit.touches),
    ] {
        check_paths(field, paths, node, problems);
    }
    if unit.run.as_deref().is_some_and(|run| run.trim().is_empty()) {
        let kind = ManifestErrorKind::Empty { field: "run" };
        problems.push(Problem::new(Locator::Value(node, "run"), kind));
    }
    check_timeout(unit.timeout, node, problems);
    check_env(unit.env.keys(), node, problems);
}

fn check_paths(field: &'static str, paths: &[String], node: Node, problems: &mut Vec<Problem>) {
    // Most units list a handful of paths: a set only pays off for long lists.
    let mut seen: Vec<Cow<'_, str>> = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        let locator = Locator::Item(node, field, index);
        match normalize_path(path) {
            Err(reason) => {
                let kind = ManifestErrorKind::InvalidPath {
                    field,
                    path: path.clone(),
                    reason,
                };
                problems.push(Problem::new(locator, kind));
            }
            Ok(normal) if field == "touches" => {
                let repeated = if paths.len() > 16 {
                    seen.binary_search(&normal).is_ok()
                } else {
                    seen.contains(&normal)
                };
                if repeated {
                    let kind = ManifestErrorKind::DuplicatePath {
                        field,
                        path: path.clone(),
                    };
                    problems.push(Problem::new(locator, kind));
                } else if paths.len() > 16 {
                    let at = seen.binary_search(&normal).unwrap_or_else(|at| at);
                    seen.insert(at, normal);
                } else {
                    seen.push(normal);
                }
            }
            Ok(_) => {}
        }
    }
}

fn check_uses(
    manifest: &Manifest,
    unit: &Unit,
    node: Node,
    resource_names: &[&str],
    suggester: &mut Suggester,
    problems: &mut Vec<Problem>,
) {
    for (name, weight) in &unit.uses {
        let locator = Locator::Entry(node, "uses", name.clone());
        match manifest.resources.get(name) {
            None => {
                let suggestion = suggester.closest(name, resource_names.iter().copied());
                let kind = ManifestErrorKind::UnknownResource {
                    resource: name.clone(),
                    suggestion,
                };
                problems.push(Problem::new(locator, kind));
            }
            Some(_) if *weight == 0 => {
                let kind = ManifestErrorKind::ZeroWeight {
                    resource: name.clone(),
                };
                problems.push(Problem::new(locator, kind));
            }
            // A zero capacity is reported on the resource itself.
            Some(&capacity) if capacity > 0 && *weight > capacity => {
                let kind = ManifestErrorKind::WeightExceedsCapacity {
                    resource: name.clone(),
                    weight: *weight,
                    capacity,
                };
                problems.push(Problem::new(locator, kind));
            }
            Some(_) => {}
        }
    }
}

fn check_verify(
    unit: &Unit,
    node: Node,
    gate_names: &[&str],
    suggester: &mut Suggester,
    problems: &mut Vec<Problem>,
) {
    let Some(verify) = &unit.verify else { return };
    let mut seen: HashSet<&str> = HashSet::new();
    for (index, gate) in verify.iter().enumerate() {
        let locator = Locator::Item(node, "verify", index);
        if !gate_names.contains(&gate.as_str()) {
            let suggestion = suggester.closest(gate, gate_names.iter().copied());
            let kind = ManifestErrorKind::UnknownGate {
                gate: gate.clone(),
                suggestion,
            };
            problems.push(Problem::new(locator, kind));
        } else if !seen.insert(gate) {
            let kind = ManifestErrorKind::DuplicateVerify { gate: gate.clone() };
            problems.push(Problem::new(locator, kind));
        }
    }
}

fn check_timeout(timeout: Option<Duration>, node: Node, problems: &mut Vec<Problem>) {
    if timeout.is_some_and(|timeout| timeout.is_zero()) {
        let kind = ManifestErrorKind::ZeroDuration { field: "timeout" };
        problems.push(Problem::new(Locator::Value(node, "timeout"), kind));
    }
}

fn check_env<'e>(names: impl Iterator<Item = &'e String>, node: Node, problems: &mut Vec<Problem>) {
    for name in names {
        let locator = Locator::Entry(node, "env", name.clone());
        if !is_valid_env_name(name) {
            let kind = ManifestErrorKind::InvalidEnvName { name: name.clone() };
            problems.push(Problem::new(locator, kind));
        } else if name.starts_with("REGATTA_") {
            let kind = ManifestErrorKind::ReservedEnvName { name: name.clone() };
            problems.push(Problem::new(locator, kind));
        }
    }
}

/// Tells whether a unit id, batch or resource name is safe in Redis keys and file names:
/// 1 to 200 of `[A-Za-z0-9._-]`, and not only dots (`.` and `..` are folder names).
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.bytes().all(|b| b == b'.')
}

fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Normalises a workdir-relative path lexically (`a/./b/../c` becomes `a/c`), refusing an
/// absolute path, one that would leave the workdir, and one that names the workdir itself.
/// A path already in normal form is returned as it is, without copying.
///
/// The check is lexical on purpose: the files may not exist yet (outputs), and a
/// symlink inside the workdir is the workdir owner's business.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathProblem> {
    if path.chars().any(char::is_control) {
        return Err(PathProblem::ControlCharacter);
    }
    if path.starts_with('/') || path.starts_with('\\') || std::path::Path::new(path).is_absolute() {
        return Err(PathProblem::Absolute);
    }
    if path.split('/').all(|part| !matches!(part, "" | "." | "..")) {
        return Ok(Cow::Borrowed(path));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathProblem::EscapesWorkdir);
                }
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(PathProblem::Empty);
    }
    Ok(Cow::Owned(parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_control_characters_in_paths() {
        assert!(matches!(
            normalize_path("a\nb"),
            Err(PathProblem::ControlCharacter)
        ));
        assert!(matches!(
            normalize_path("a\tb.sql"),
            Err(PathProblem::ControlCharacter)
        ));
    }

    #[test]
    fn normalizes_paths_lexically() {
        assert_eq!(normalize_path("a/../b"), Ok("b".into()));
        assert_eq!(normalize_path("./a//b/./c"), Ok("a/b/c".into()));
        assert_eq!(normalize_path("a/b/../../c/d"), Ok("c/d".into()));
        assert!(matches!(
            normalize_path("a/b.c/d"),
            Ok(Cow::Borrowed("a/b.c/d"))
        ));
        assert_eq!(normalize_path("a/"), Ok("a".into()));
        assert_eq!(normalize_path("..a/b.."), Ok("..a/b..".into()));
        assert_eq!(normalize_path("../a"), Err(PathProblem::EscapesWorkdir));
        assert_eq!(
            normalize_path("a/../../b"),
            Err(PathProblem::EscapesWorkdir)
        );
        assert_eq!(normalize_path("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(normalize_path("a/.."), Err(PathProblem::Empty));
        assert_eq!(normalize_path(""), Err(PathProblem::Empty));
        assert_eq!(normalize_path("."), Err(PathProblem::Empty));
    }

    #[test]
    fn names_are_checked_for_keys_and_files() {
        assert!(is_valid_name("customer-pkg"));
        assert!(is_valid_name("a.b_c-1"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("a:b"));
        assert!(!is_valid_name(".."));
        assert!(!is_valid_name(&"x".repeat(201)));
        assert!(is_valid_env_name("PGHOST"));
        assert!(is_valid_env_name("_X1"));
        assert!(!is_valid_env_name("1X"));
        assert!(!is_valid_env_name("A-B"));
    }
}
