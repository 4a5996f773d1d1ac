//! Problems found in a manifest, each tied to a file, a position and a unit when known.
//!
//! Validation never stops at the first problem: [`ManifestErrors`] carries every problem
//! found, in file order, so that a user fixes a manifest in one round trip.

use std::fmt;
use std::path::PathBuf;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::duration::DurationError;

/// Every problem found in a manifest (and its playbook file), in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestErrors {
    pub errors: Vec<ManifestError>,
}

/// One problem, with where it is and which unit it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    /// The file (or the name given to [`crate::manifest::Manifest::parse`]) the problem is in.
    pub source: String,
    /// 1-based line, when the problem can be tied to a place in the text.
    pub line: Option<u32>,
    /// 1-based column (in characters), when known.
    pub column: Option<u32>,
    /// The id of the unit the problem belongs to, so that a user can find it in a long file.
    pub unit: Option<String>,
    pub kind: ManifestErrorKind,
}

/// What is wrong; each message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestErrorKind {
    #[error("cannot read '{}': {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("{message}")]
    Syntax { message: String },
    #[error("unknown {place} field '{field}'{}", did_you_mean(.suggestion))]
    UnknownField {
        field: String,
        place: &'static str,
        suggestion: Option<String>,
    },
    #[error("field '{field}' is given more than once")]
    DuplicateField { field: String },
    #[error("'{field}' must be {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: String,
    },
    #[error("missing required field '{field}'")]
    MissingField { field: &'static str },
    #[error("'{field}' must not be empty")]
    Empty { field: &'static str },
    #[error("'{field}' has an empty entry")]
    EmptyEntry { field: &'static str },
    #[error("the manifest has no units: list at least one under 'units'")]
    NoUnits,
    #[error("missing 'playbook': give the path of a playbook file or an inline playbook")]
    MissingPlaybook,
    #[error("playbook file '{}' does not exist", path.display())]
    PlaybookNotFound { path: PathBuf },
    #[error("workdir '{}' does not exist or is not a folder", path.display())]
    WorkdirNotFound { path: PathBuf },
    #[error("workdir '{}' must be an absolute path once resolved", path.display())]
    WorkdirNotAbsolute { path: PathBuf },
    #[error("unit has no id")]
    MissingId,
    #[error(
        "invalid unit id '{id}': use only letters, digits, '.', '_' and '-' \
         (ids become Redis keys and file names)"
    )]
    InvalidId { id: String },
    #[error("duplicate unit id '{id}'{}", first_defined(*.first_line, *.first_column))]
    DuplicateUnitId {
        id: String,
        first_line: Option<u32>,
        first_column: Option<u32>,
    },
    #[error("unknown dependency '{dependency}'{}", did_you_mean(.suggestion))]
    UnknownDependency {
        dependency: String,
        suggestion: Option<String>,
    },
    #[error("unit depends on itself")]
    SelfDependency,
    #[error("dependency '{dependency}' is listed more than once")]
    DuplicateDependency { dependency: String },
    #[error("dependency cycle: {}{}", .path.join(" -> "), more_in_cycle(*.others))]
    Cycle {
        /// The cycle itself, first unit repeated at the end: `a -> b -> c -> a`, each unit
        /// depending on the next.
        path: Vec<String>,
        /// Units caught in the same knot of cycles but not on the printed one.
        others: usize,
    },
    #[error("unknown resource '{resource}'{}", did_you_mean(.suggestion))]
    UnknownResource {
        resource: String,
        suggestion: Option<String>,
    },
    #[error("resource '{resource}' is listed more than once in 'uses'")]
    DuplicateResourceUse { resource: String },
    #[error("weight of resource '{resource}' must be at least 1")]
    ZeroWeight { resource: String },
    #[error(
        "uses {weight} of resource '{resource}', whose capacity is {capacity}: \
         the unit could never run"
    )]
    WeightExceedsCapacity {
        resource: String,
        weight: u32,
        capacity: u32,
    },
    #[error("resource '{resource}' needs a capacity of at least 1, found {found}")]
    InvalidCapacity { resource: String, found: String },
    #[error(
        "resource name '{resource}' is reserved: names starting with 'file:' stand for \
         touched files"
    )]
    ReservedResourceName { resource: String },
    #[error(
        "invalid resource name '{resource}': use only letters, digits, '.', '_' and '-' \
         (names become Redis keys)"
    )]
    InvalidResourceName { resource: String },
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("calibration must be at least 1 (leave it out to start without calibration)")]
    ZeroCalibration,
    #[error("calibration_auto approves a calibration by its success rate: it needs 'calibration: N' too")]
    CalibrationAutoWithoutCalibration,
    #[error("calibration_auto must be a fraction in (0, 1], found {value}")]
    CalibrationAutoOutOfRange { value: f64 },
    #[error("invalid duration '{value}' for '{field}': {reason}")]
    InvalidDuration {
        field: &'static str,
        value: String,
        reason: DurationError,
    },
    #[error("'{field}' must be longer than zero")]
    ZeroDuration { field: &'static str },
    #[error("path '{path}' in '{field}' {reason}")]
    InvalidPath {
        field: &'static str,
        path: String,
        reason: PathProblem,
    },
    #[error("path '{path}' is listed more than once in '{field}'")]
    DuplicatePath { field: &'static str, path: String },
    #[error("'verify' names unknown gate '{gate}'{}", did_you_mean(.suggestion))]
    UnknownGate {
        gate: String,
        suggestion: Option<String>,
    },
    #[error("gate '{gate}' is listed more than once in 'verify'")]
    DuplicateVerify { gate: String },
    #[error("duplicate gate name '{name}'{}", first_defined(*.first_line, *.first_column))]
    DuplicateGate {
        name: String,
        first_line: Option<u32>,
        first_column: Option<u32>,
    },
    #[error("gate '{gate}' sets 'repairs' but has no 'fix' command to repair with")]
    RepairsWithoutFix { gate: String },
    #[error(
        "invalid environment variable name '{name}': use letters, digits and '_', \
         not starting with a digit"
    )]
    InvalidEnvName { name: String },
    #[error("environment variable '{name}' is reserved: regatta sets REGATTA_* itself")]
    ReservedEnvName { name: String },
    #[error(
        "'workdir' cannot be given with a 'git' block: sessions run in a fresh worktree \
         of git.repo, and unit paths are relative to the repository's root"
    )]
    WorkdirInGitMode,
    #[error("git.repo '{repo}' {reason}")]
    InvalidGitRepo { repo: String, reason: RepoProblem },
    #[error("git.{field} '{name}' is not a valid git ref name: it {reason}")]
    InvalidGitRef {
        field: &'static str,
        name: String,
        reason: RefProblem,
    },
    #[error(
        "git.target is required when git.base is a commit id: name the branch the merge \
         train advances"
    )]
    GitTargetRequired,
    #[error("git.target '{target}' is a commit id: the merge train advances a branch, name one")]
    GitTargetNotBranch { target: String },
    #[error("git.window must be from 1 to {max} units per merge candidate, found {window}")]
    GitWindowOutOfRange { window: u32, max: u32 },
    #[error("'budget.{field}' must be more than zero (leave it out for no limit)")]
    BudgetNotPositive { field: &'static str },
    #[error(
        "'{field}' price of model '{model}' must be a number of 0 or more \
         (US dollars per million tokens)"
    )]
    InvalidPrice { model: String, field: &'static str },
    #[error("prices.default names unknown model '{model}'{}", did_you_mean(.suggestion))]
    UnknownPriceModel {
        model: String,
        suggestion: Option<String>,
    },
    #[error(
        "a 'cost_usd' budget with agent '{adapter}', which reports no cost, needs \
         'prices' to compute one"
    )]
    CostBudgetWithoutPrices { adapter: String },
}

/// Why `git.repo` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoProblem {
    #[error(
        "uses the unsupported scheme '{scheme}': give a path, a file://, ssh://, https:// \
         or http:// URL, or user@host:path"
    )]
    UnsupportedScheme { scheme: String },
    /// Only a manifest received already resolved (as JSON) can hold one: reading
    /// resolves a relative path against the manifest's folder.
    #[error("is a relative path: it must be absolute once resolved")]
    RelativePath,
    /// The remote ends up on git's command line and in records, where a newline breaks it.
    #[error("contains a control character (newline, tab, ...)")]
    ControlCharacter,
}

/// Why a ref name in `git.base` or `git.target` was refused, after `git check-ref-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefProblem {
    #[error("contains '{0}'")]
    ForbiddenCharacter(char),
    #[error("contains a space")]
    Space,
    #[error("contains a control character")]
    ControlCharacter,
    #[error("contains '..'")]
    DoubleDot,
    #[error("contains '@{{'")]
    AtBrace,
    #[error("is the single character '@'")]
    LoneAt,
    #[error("starts with '-'")]
    LeadingDash,
    #[error("starts or ends with '/', or contains '//'")]
    Slash,
    #[error("has a component that starts with '.'")]
    DotComponent,
    #[error("has a component that ends with '.lock'")]
    LockSuffix,
    #[error("ends with '.'")]
    TrailingDot,
}

/// Why a path in `inputs`, `outputs` or `touches` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("is absolute: paths are relative to the workdir")]
    Absolute,
    #[error("leaves the workdir")]
    EscapesWorkdir,
    #[error("is empty or names the workdir itself")]
    Empty,
    /// Paths end up in Redis keys and lease records, where a newline or a
    /// tab would break them.
    #[error("contains a control character (newline, tab, ...)")]
    ControlCharacter,
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!(" (did you mean '{name}'?)"),
        None => String::new(),
    }
}

fn first_defined(line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" (first defined at {line}:{column})"),
        (Some(line), None) => format!(" (first defined at line {line})"),
        _ => String::new(),
    }
}

fn more_in_cycle(others: usize) -> String {
    match others {
        0 => String::new(),
        1 => " (and 1 more unit caught in the same cycles)".to_owned(),
        n => format!(" (and {n} more units caught in the same cycles)"),
    }
}

impl ManifestErrorKind {
    /// Names the kind of problem with a stable kebab-case code, for scripts reading `--json`.
    pub fn code(&self) -> &'static str {
        use ManifestErrorKind::*;
        match self {
            Unreadable { .. } => "unreadable",
            Syntax { .. } => "syntax",
            UnknownField { .. } => "unknown-field",
            DuplicateField { .. } => "duplicate-field",
            WrongType { .. } => "wrong-type",
            MissingField { .. } => "missing-field",
            Empty { .. } => "empty",
            EmptyEntry { .. } => "empty-entry",
            NoUnits => "no-units",
            MissingPlaybook => "missing-playbook",
            PlaybookNotFound { .. } => "playbook-not-found",
            WorkdirNotFound { .. } => "workdir-not-found",
            WorkdirNotAbsolute { .. } => "workdir-not-absolute",
            MissingId => "missing-id",
            InvalidId { .. } => "invalid-id",
            DuplicateUnitId { .. } => "duplicate-id",
            UnknownDependency { .. } => "unknown-dependency",
            SelfDependency => "self-dependency",
            DuplicateDependency { .. } => "duplicate-dependency",
            Cycle { .. } => "cycle",
            UnknownResource { .. } => "unknown-resource",
            DuplicateResourceUse { .. } => "duplicate-resource-use",
            ZeroWeight { .. } => "zero-weight",
            WeightExceedsCapacity { .. } => "weight-exceeds-capacity",
            InvalidCapacity { .. } => "invalid-capacity",
            ReservedResourceName { .. } => "reserved-resource-name",
            InvalidResourceName { .. } => "invalid-resource-name",
            ZeroConcurrency => "zero-concurrency",
            ZeroCalibration => "zero-calibration",
            CalibrationAutoWithoutCalibration => "calibration-auto-without-calibration",
            CalibrationAutoOutOfRange { .. } => "calibration-auto-out-of-range",
            InvalidDuration { .. } => "invalid-duration",
            ZeroDuration { .. } => "zero-duration",
            InvalidPath { .. } => "invalid-path",
            DuplicatePath { .. } => "duplicate-path",
            UnknownGate { .. } => "unknown-gate",
            DuplicateVerify { .. } => "duplicate-verify",
            DuplicateGate { .. } => "duplicate-gate",
            RepairsWithoutFix { .. } => "repairs-without-fix",
            InvalidEnvName { .. } => "invalid-env-name",
            ReservedEnvName { .. } => "reserved-env-name",
            WorkdirInGitMode => "workdir-in-git-mode",
            InvalidGitRepo { .. } => "invalid-git-repo",
            InvalidGitRef { .. } => "invalid-git-ref",
            GitTargetRequired => "git-target-required",
            GitTargetNotBranch { .. } => "git-target-not-branch",
            GitWindowOutOfRange { .. } => "git-window-out-of-range",
            BudgetNotPositive { .. } => "budget-not-positive",
            InvalidPrice { .. } => "invalid-price",
            UnknownPriceModel { .. } => "unknown-price-model",
            CostBudgetWithoutPrices { .. } => "cost-budget-without-prices",
        }
    }

    /// Records where the first of two clashing definitions is, for messages naming both.
    pub(crate) fn set_first_position(&mut self, line: Option<u32>, column: Option<u32>) {
        if let ManifestErrorKind::DuplicateUnitId {
            first_line,
            first_column,
            ..
        }
        | ManifestErrorKind::DuplicateGate {
            first_line,
            first_column,
            ..
        } = self
        {
            *first_line = line;
            *first_column = column;
        }
    }
}

impl ManifestErrors {
    /// Wraps a single problem that has no position.
    pub fn single(source: impl Into<String>, kind: ManifestErrorKind) -> Self {
        ManifestErrors {
            errors: vec![ManifestError {
                source: source.into(),
                line: None,
                column: None,
                unit: None,
                kind,
            }],
        }
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ManifestError> {
        self.errors.iter()
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}")?,
            (Some(line), None) => write!(f, ":{line}")?,
            _ => {}
        }
        f.write_str(": ")?;
        if let Some(unit) = &self.unit {
            write!(f, "unit '{unit}': ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ManifestError {}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

impl<'a> IntoIterator for &'a ManifestErrors {
    type Item = &'a ManifestError;
    type IntoIter = std::slice::Iter<'a, ManifestError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Serialises as `{source, line, column, unit, code, message}` for `regatta validate --json`.
impl Serialize for ManifestError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("ManifestError", 6)?;
        state.serialize_field("source", &self.source)?;
        state.serialize_field("line", &self.line)?;
        state.serialize_field("column", &self.column)?;
        state.serialize_field("unit", &self.unit)?;
        state.serialize_field("code", self.kind.code())?;
        state.serialize_field("message", &self.kind.to_string())?;
        state.end()
    }
}

impl Serialize for ManifestErrors {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("ManifestErrors", 1)?;
        state.serialize_field("errors", &self.errors)?;
        state.end()
    }
}
