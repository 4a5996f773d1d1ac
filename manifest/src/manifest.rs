//! The batch manifest: the user's description of the units to run, their dependencies,
//! the shared resources they use, and the playbook (session recipe) they run with.
//!
//! Reading happens in two layers. `raw` is the serde layer: it reads YAML or JSON into
//! the domain types below while collecting problems (unknown fields, wrong types, bad
//! durations) instead of stopping at the first. `validate` then applies the semantic
//! rules (ids, dependencies, cycles, resources, paths, gates) to the domain types, so
//! that [`Manifest::check`] can re-apply every rule to a manifest that arrived as JSON.
//! `load` orchestrates both and ties each problem to a file, line and column
//! (`position`), and `suggest` finds the did-you-mean candidates.
//!
//! Top-level keys starting with `x-` are ignored, so that a manifest can hold YAML
//! anchors for reuse (`x-defaults: &defaults`, then `<<: *defaults` in units); any other
//! unknown key is reported, with the closest known field name.

mod budget;
mod errors;
mod git;
mod load;
pub(crate) mod position;
mod raw;
pub(crate) mod suggest;
mod validate;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regatta_proto::{AgentAdapter, AgentOrder, Budget, Prices};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dag::Dag;
use crate::duration;

pub use errors::{
    ManifestError, ManifestErrorKind, ManifestErrors, PathProblem, RefProblem, RepoProblem,
};
pub use git::{
    check_ref_name, is_commit_id, GitSpec, MergeMode, DEFAULT_INTEGRATION_TIMEOUT, DEFAULT_WINDOW,
    MAX_WINDOW,
};
pub use validate::normalize_path;

/// Prefix of the implicit resource that stands for a touched file: `file:<path>`.
pub const FILE_RESOURCE_PREFIX: &str = "file:";
/// Fleet-wide cap on a batch's running sessions when the manifest sets none.
pub const DEFAULT_CONCURRENCY: u32 = 10;
/// Automatic retries of a failed unit before it goes to human review, when unset.
pub const DEFAULT_RETRIES: u32 = 1;
/// Session deadline when neither the unit, the manifest nor the playbook sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3_600);

/// A validated batch manifest, with its workdir absolute and its playbook inlined.
///
/// Equality and serialisation ignore [`Manifest::source`], so that the same manifest read
/// from two paths compares equal and hashes the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Where the manifest was read from (as given to `load` or `parse`), for messages.
    #[serde(skip)]
    pub source: String,
    /// The batch's name, shown in every command and report.
    pub batch: String,
    /// Where sessions run; absolute once loaded (resolved against the manifest's folder).
    /// Empty in git mode, where each session runs in a fresh worktree of `git.repo`.
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub workdir: PathBuf,
    /// Git mode: sessions run in worktrees of a repository, and a merge train lands
    /// their branches. `None` for a batch that runs in its workdir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSpec>,
    /// The session recipe, always inline once loaded.
    pub playbook: Playbook,
    /// Fleet-wide cap on this batch's running sessions.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Run this many units first, then wait for a human's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<u32>,
    /// Approves the calibration by itself once this share (0 < x <= 1) of its units succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_auto: Option<f64>,
    /// Automatic retries of a failed unit before it needs review.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Default session deadline for every unit of the batch.
    #[serde(
        default,
        with = "duration::serde_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Declared shared resources and how many weight units may hold each at once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, u32>,
    /// What all of the batch's sessions together may cost, enforced like a
    /// lease (contract 9, docs/contracts.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BatchBudget>,
    /// The units, in manifest order; a unit's index here is its index in the [`Dag`].
    pub units: Vec<Unit>,
}

/// One piece of work: a session of the playbook, run for one package, module or endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// Unique within the batch; made of `[A-Za-z0-9._-]` because it ends up in Redis keys
    /// and file names.
    pub id: String,
    /// What to do, for humans and agents (`REGATTA_TASK`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task: String,
    /// Files the session reads, relative to the workdir, hashed into the evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Files the session produces, relative to the workdir, hashed into the evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Files the session edits; each is an implicit resource of capacity 1, so two units
    /// touching the same file never run at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touches: Vec<String>,
    /// Declared resources this unit holds while it runs, with their weights.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uses: BTreeMap<String, u32>,
    /// Units that must succeed (or be skipped) before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Replaces the playbook's `run` for this unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Replaces the batch's and the playbook's session deadline for this unit.
    #[serde(
        default,
        with = "duration::serde_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Added to (and overriding) the playbook's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Among ready units, higher priorities are published first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Names of the playbook's gates that apply; `None` means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Vec<String>>,
    /// Overrides the playbook's budget, limit by limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Replaces the batch's `retries` for this unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// The reusable session recipe: the command to run and the gates that verify its work.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Named in evidence packs; defaults to the playbook file's stem, or to the batch name
    /// for an inline playbook.
    pub name: String,
    /// Run with `/bin/sh -c` in the workdir.
    pub run: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(
        default,
        with = "duration::serde_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Run in order after `run` succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// The coding agent `run` drives, whose stdout the worker parses for
    /// usage and keeps as the session's transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentAdapter>,
    /// What each session may spend; a unit's `budget` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// The versioned price table that gives tokens a cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<Prices>,
    /// Lets a session that ended `over_budget` use a retry; by default it
    /// goes to review, since a re-run would likely spend as much again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retry_over_budget: bool,
}

/// The batch budget: a cap on the cost of all the batch's sessions together.
/// Each session reserves an estimate of its cost at dispatch and settles its
/// actual cost when it ends; a unit whose reservation does not fit waits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchBudget {
    /// The cap, in US dollars; more than zero.
    pub cost_usd: f64,
}

/// A verification step (build, test, lint, scan) with an optional automatic repair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Unique within the playbook; units name gates in `verify`.
    pub name: String,
    pub run: String,
    /// Repair command run when the gate fails, before the gate runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    #[serde(
        default,
        with = "duration::serde_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// A failing optional gate is recorded in the evidence but does not fail the unit.
    #[serde(default = "default_required", skip_serializing_if = "is_true")]
    pub required: bool,
    /// Repair attempts; `None` means [`DEFAULT_REPAIRS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repairs: Option<u32>,
}

/// How many times a gate's `fix` may run when the playbook does not say.
pub const DEFAULT_REPAIRS: u32 = 2;

impl Gate {
    /// How many times this gate's `fix` may run before it escalates.
    pub fn repair_limit(&self) -> u32 {
        self.repairs.unwrap_or(DEFAULT_REPAIRS)
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            name: String::new(),
            run: String::new(),
            fix: None,
            timeout: None,
            required: true,
            repairs: None,
        }
    }
}

fn default_concurrency() -> u32 {
    DEFAULT_CONCURRENCY
}

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

fn default_required() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_empty_path(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let Manifest {
            source: _,
            batch,
            workdir,
            git,
            playbook,
            concurrency,
            calibration,
            calibration_auto,
            retries,
            timeout,
            resources,
            budget,
            units,
        } = self;
        *batch == other.batch
            && *workdir == other.workdir
            && *git == other.git
            && *playbook == other.playbook
            && *concurrency == other.concurrency
            && *calibration == other.calibration
            && *calibration_auto == other.calibration_auto
            && *retries == other.retries
            && *timeout == other.timeout
            && *resources == other.resources
            && *budget == other.budget
            && *units == other.units
    }
}

impl Manifest {
    /// Reads, parses (YAML or JSON, by extension or content) and validates a manifest
    /// file; resolves the workdir (or, in git mode, a path `git.repo`) against the
    /// manifest's folder, checks that the workdir exists, and reads the playbook file it
    /// names.
    pub fn load(path: &Path) -> Result<Manifest, ManifestErrors> {
        load::load(path)
    }

    /// Parses and validates a manifest from text. `base_dir` is the manifest's folder,
    /// against which the workdir and a playbook path are resolved; `source_name` names
    /// the text in messages and, by its extension, may tell JSON from YAML.
    pub fn parse(
        text: &str,
        source_name: &str,
        base_dir: &Path,
    ) -> Result<Manifest, ManifestErrors> {
        load::parse(text, source_name, base_dir)
    }

    /// Re-applies every semantic rule to an already-resolved manifest, such as one received
    /// as JSON by the HTTP API; positions are unknown, unit ids are given.
    pub fn check(&self) -> Result<(), ManifestErrors> {
        load::check(self)
    }

    /// Returns the session deadline for a unit: the unit's, else the manifest's, else the
    /// playbook's, else one hour.
    pub fn effective_timeout(&self, unit: &Unit) -> Duration {
        unit.timeout
            .or(self.timeout)
            .or(self.playbook.timeout)
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Returns how many automatic retries a unit gets: its own, else the batch's.
    pub fn effective_retries(&self, unit: &Unit) -> u32 {
        unit.retries.unwrap_or(self.retries)
    }

    /// Returns a unit's budget: the playbook's, overridden limit by limit by
    /// the unit's.
    pub fn effective_budget(&self, unit: &Unit) -> Budget {
        let playbook = self.playbook.budget.clone().unwrap_or_default();
        match &unit.budget {
            Some(own) => playbook.overlaid(own),
            None => playbook,
        }
    }

    /// Returns what a unit's work order says about its agent session, or
    /// `None` for a playbook with no agent, budget or prices.
    pub fn agent_order(&self, unit: &Unit) -> Option<AgentOrder> {
        let budget = self.effective_budget(unit);
        let playbook = &self.playbook;
        if playbook.agent.is_none() && budget.is_empty() && playbook.prices.is_none() {
            return None;
        }
        Some(AgentOrder {
            adapter: playbook.agent,
            budget,
            prices: playbook.prices.clone(),
        })
    }

    /// Returns the command a unit's session runs: the unit's override, else the playbook's.
    pub fn effective_run<'m>(&'m self, unit: &'m Unit) -> &'m str {
        unit.run.as_deref().unwrap_or(&self.playbook.run)
    }

    /// Returns the environment a unit's session gets beside the `REGATTA_*`
    /// variables: the playbook's, overridden by the unit's.
    pub fn effective_env(&self, unit: &Unit) -> BTreeMap<String, String> {
        let mut env = self.playbook.env.clone();
        env.extend(unit.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Returns the gates that apply to a unit, in playbook order.
    pub fn gates_for<'m>(&'m self, unit: &'m Unit) -> impl Iterator<Item = &'m Gate> + 'm {
        self.playbook
            .gates
            .iter()
            .filter(move |gate| match &unit.verify {
                None => true,
                Some(names) => names.contains(&gate.name),
            })
    }

    /// Returns the capacity of a resource key as [`Unit::resource_demands`] spells it:
    /// a declared resource's capacity, or 1 for a touched file.
    pub fn resource_capacity(&self, key: &str) -> Option<u32> {
        if key.starts_with(FILE_RESOURCE_PREFIX) {
            Some(1)
        } else {
            self.resources.get(key).copied()
        }
    }

    /// Counts the dependency edges (entries of every `depends_on`).
    pub fn dependency_count(&self) -> usize {
        self.units.iter().map(|unit| unit.depends_on.len()).sum()
    }

    /// Returns the hex SHA-256 of the manifest's canonical JSON (its serde_json form, which
    /// is deterministic: fields in declaration order, maps sorted), so that evidence packs
    /// can name the exact manifest they ran under.
    pub fn sha256(&self) -> String {
        struct HashWriter(Sha256);
        impl Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut writer = HashWriter(Sha256::new());
        // Serialising plain data into an infallible writer cannot fail; an error here
        // would only ever hash a prefix, never panic.
        let _ = serde_json::to_writer(&mut writer, self);
        hex::encode(writer.0.finalize())
    }

    /// Summarises a valid manifest for `regatta validate --json`.
    pub fn summarize(&self, dag: &Dag) -> ManifestSummary {
        ManifestSummary {
            source: self.source_name().to_owned(),
            valid: true,
            batch: self.batch.clone(),
            units: self.units.len(),
            dependencies: self.dependency_count(),
            levels: dag.level_count(),
            resources: self.resources.len(),
            gates: self.playbook.gates.len(),
        }
    }

    /// Returns the one-line summary `regatta validate` prints for a valid manifest, e.g.
    /// `manifest.yaml: valid: batch 'plsql-wave-1', 20 units, 25 dependencies, 3 levels,
    /// 2 resources`.
    pub fn summary(&self, dag: &Dag) -> String {
        self.summarize(dag).to_string()
    }

    /// Names the manifest in messages: its source, or `manifest` when it has none.
    pub fn source_name(&self) -> &str {
        if self.source.is_empty() {
            "manifest"
        } else {
            &self.source
        }
    }
}

impl Unit {
    /// Returns the implicit resource keys (`file:<path>`) of the files this unit touches,
    /// with paths normalised so that `a/./b` and `a/b` are the same resource.
    pub fn touch_resources(&self) -> impl Iterator<Item = String> + '_ {
        self.touches.iter().map(|path| {
            let normal = normalize_path(path).unwrap_or(Cow::Borrowed(path.as_str()));
            format!("{FILE_RESOURCE_PREFIX}{normal}")
        })
    }

    /// Returns every lease this unit needs to run, as (resource key, weight), sorted by key:
    /// its declared resources, and each touched file with weight 1.
    pub fn resource_demands(&self) -> Vec<(String, u32)> {
        let mut demands: Vec<(String, u32)> = self
            .uses
            .iter()
            .map(|(name, weight)| (name.clone(), *weight))
            .chain(self.touch_resources().map(|key| (key, 1)))
            .collect();
        demands.sort();
        demands.dedup_by(|a, b| a.0 == b.0);
        demands
    }
}

/// The facts `regatta validate` reports about a valid manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestSummary {
    pub source: String,
    pub valid: bool,
    pub batch: String,
    pub units: usize,
    pub dependencies: usize,
    pub levels: usize,
    pub resources: usize,
    pub gates: usize,
}

impl fmt::Display for ManifestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: valid: batch '{}', {} {}, {} {}, {} {}, {} {}",
            self.source,
            self.batch,
            self.units,
            plural(self.units, "unit", "units"),
            self.dependencies,
            plural(self.dependencies, "dependency", "dependencies"),
            self.levels,
            plural(self.levels, "level", "levels"),
            self.resources,
            plural(self.resources, "resource", "resources"),
        )
    }
}

fn plural(count: usize, one: &'static str, many: &'static str) -> &'static str {
    if count == 1 {
        one
    } else {
        many
    }
}
