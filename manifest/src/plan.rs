//! What a batch will look like when it runs, worked out before it runs: the levels of
//! parallel work, the critical path, the demand on each shared resource, and the units
//! that touched files force to run one at a time.
//!
//! `regatta plan` prints it; every figure is computed in one pass over the graph.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::dag::Dag;
use crate::duration;
use crate::manifest::{normalize_path, Manifest};

/// How many ids the text rendering shows per list before eliding the rest.
const SHOWN_IDS: usize = 6;
/// How many levels and groups the text rendering shows before eliding the rest.
const SHOWN_ROWS: usize = 20;

/// A batch's shape, for `regatta plan` (text or `--json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub batch: String,
    pub units: usize,
    pub dependencies: usize,
    pub concurrency: u32,
    /// Unit ids by level, units without dependencies first; a level's units never depend
    /// on each other.
    pub levels: Vec<Vec<String>>,
    /// The most units any level could run at once (before the concurrency cap).
    pub widest_level: usize,
    pub critical_path: CriticalPath,
    /// Demand on each declared resource, in name order.
    pub resources: Vec<ResourceDemand>,
    /// Files touched by two or more units, which therefore run one at a time.
    pub serialised_groups: Vec<SerialisedGroup>,
}

/// The dependency chain with the largest summed effective timeout (ties broken by more
/// units): the batch cannot finish faster than this chain's sessions in a row, in the
/// worst case.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CriticalPath {
    /// Unit ids in the order they run.
    pub units: Vec<String>,
    /// Length in units.
    pub length: usize,
    /// Sum of the units' effective timeouts.
    #[serde(with = "duration::serde_required")]
    pub total_timeout: Duration,
}

impl CriticalPath {
    fn empty() -> CriticalPath {
        CriticalPath {
            units: Vec::new(),
            length: 0,
            total_timeout: Duration::ZERO,
        }
    }
}

/// How much of a declared resource the batch's units ask for.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResourceDemand {
    pub name: String,
    pub capacity: u32,
    /// Units that use it.
    pub units: usize,
    /// Sum of those units' weights.
    pub total_weight: u64,
}

/// Units that touch the same file and so never run at the same time.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SerialisedGroup {
    /// The file, normalised, relative to the workdir.
    pub file: String,
    pub units: Vec<String>,
}

impl Plan {
    /// Works out the plan of a valid manifest and its graph (`Dag::build(manifest)`).
    ///
    /// A graph built from another manifest (a different unit count) has no meaning here:
    /// the plan then leaves levels and the critical path empty rather than guess.
    pub fn of(manifest: &Manifest, dag: &Dag) -> Plan {
        let units = &manifest.units;
        let graph_fits = dag.len() == units.len();
        let levels: Vec<Vec<String>> = if graph_fits {
            dag.levels()
                .into_iter()
                .map(|level| level.into_iter().map(|at| units[at].id.clone()).collect())
                .collect()
        } else {
            Vec::new()
        };
        let widest_level = levels.iter().map(Vec::len).max().unwrap_or(0);
        let critical_path = if graph_fits {
            critical_path(manifest, dag)
        } else {
            CriticalPath::empty()
        };
        Plan {
            batch: manifest.batch.clone(),
            units: units.len(),
            dependencies: dag.edge_count(),
            concurrency: manifest.concurrency,
            levels,
            widest_level,
            critical_path,
            resources: resource_demand(manifest),
            serialised_groups: serialised_groups(manifest),
        }
    }

    /// Renders the plan for a terminal, eliding long lists.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "batch '{}': {} units, {} dependencies, {} levels, concurrency {}",
            self.batch,
            self.units,
            self.dependencies,
            self.levels.len(),
            self.concurrency
        );
        let _ = writeln!(out, "\nlevels (widest: {} units):", self.widest_level);
        for (index, level) in self.levels.iter().enumerate().take(SHOWN_ROWS) {
            let _ = writeln!(
                out,
                "  {index:>4}: {:>7} units  {}",
                level.len(),
                elide(level, " ")
            );
        }
        if self.levels.len() > SHOWN_ROWS {
            let _ = writeln!(out, "  ... {} more levels", self.levels.len() - SHOWN_ROWS);
        }
        let path = &self.critical_path;
        let _ = writeln!(
            out,
            "\ncritical path: {} units, {} of summed timeouts\n  {}",
            path.length,
            duration::format(path.total_timeout),
            elide(&path.units, " -> ")
        );
        if !self.resources.is_empty() {
            let width = self
                .resources
                .iter()
                .map(|r| r.name.len())
                .max()
                .unwrap_or(0)
                .max("resource".len());
            let _ = writeln!(
                out,
                "\n  {:<width$}  {:>8}  {:>8}  {:>12}",
                "resource", "capacity", "units", "total weight"
            );
            for resource in &self.resources {
                let _ = writeln!(
                    out,
                    "  {:<width$}  {:>8}  {:>8}  {:>12}",
                    resource.name, resource.capacity, resource.units, resource.total_weight
                );
            }
        }
        if !self.serialised_groups.is_empty() {
            let _ = writeln!(
                out,
                "\nserialised by touched files ({} files):",
                self.serialised_groups.len()
            );
            for group in self.serialised_groups.iter().take(SHOWN_ROWS) {
                let _ = writeln!(out, "  {}: {}", group.file, elide(&group.units, ", "));
            }
            if self.serialised_groups.len() > SHOWN_ROWS {
                let more = self.serialised_groups.len() - SHOWN_ROWS;
                let _ = writeln!(out, "  ... {more} more files");
            }
        }
        out
    }
}

/// Joins ids, keeping the first and last few of a long list.
fn elide(ids: &[String], separator: &str) -> String {
    if ids.len() <= SHOWN_IDS * 2 {
        return ids.join(separator);
    }
    format!(
        "{}{separator}... ({} more) ...{separator}{}",
        ids[..SHOWN_IDS].join(separator),
        ids.len() - SHOWN_IDS * 2,
        ids[ids.len() - SHOWN_IDS..].join(separator)
    )
}

/// Finds the heaviest chain by dynamic programming over the topological order; the
/// graph must be the manifest's.
fn critical_path(manifest: &Manifest, dag: &Dag) -> CriticalPath {
    let units = &manifest.units;
    // Per unit: the heaviest chain ending with it, as (summed timeout, units), and the
    // dependency that chain came through.
    let mut best: Vec<(Duration, u32)> = vec![(Duration::ZERO, 0); units.len()];
    let mut through: Vec<u32> = vec![u32::MAX; units.len()];
    for unit in dag.topological_order() {
        let mut heaviest = (Duration::ZERO, 0u32);
        let mut via = u32::MAX;
        for dependency in dag.dependencies(unit) {
            let candidate = best[dependency];
            if candidate > heaviest || (candidate == heaviest && (dependency as u32) < via) {
                heaviest = candidate;
                via = dependency as u32;
            }
        }
        let own = manifest.effective_timeout(&units[unit]);
        best[unit] = (heaviest.0.saturating_add(own), heaviest.1 + 1);
        through[unit] = via;
    }
    let mut end: Option<(usize, (Duration, u32))> = None;
    for (unit, chain) in best.iter().copied().enumerate() {
        if end.is_none_or(|(_, heaviest)| chain > heaviest) {
            end = Some((unit, chain));
        }
    }
    let Some((end, (total_timeout, _))) = end else {
        return CriticalPath::empty();
    };
    let mut path = vec![units[end].id.clone()];
    let mut at = through[end];
    while at != u32::MAX {
        path.push(units[at as usize].id.clone());
        at = through[at as usize];
    }
    path.reverse();
    CriticalPath {
        length: path.len(),
        units: path,
        total_timeout,
    }
}

fn resource_demand(manifest: &Manifest) -> Vec<ResourceDemand> {
    let mut demand: BTreeMap<&str, (usize, u64)> = manifest
        .resources
        .keys()
        .map(|name| (name.as_str(), (0, 0)))
        .collect();
    for unit in &manifest.units {
        for (name, weight) in &unit.uses {
            if let Some((count, total)) = demand.get_mut(name.as_str()) {
                *count += 1;
                *total += u64::from(*weight);
            }
        }
    }
    demand
        .into_iter()
        .map(|(name, (units, total_weight))| ResourceDemand {
            name: name.to_owned(),
            capacity: manifest.resources.get(name).copied().unwrap_or(0),
            units,
            total_weight,
        })
        .collect()
}

fn serialised_groups(manifest: &Manifest) -> Vec<SerialisedGroup> {
    let mut by_file: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, unit) in manifest.units.iter().enumerate() {
        for path in &unit.touches {
            let file = normalize_path(path).map_or_else(|_| path.clone(), Cow::into_owned);
            by_file.entry(file).or_default().push(index);
        }
    }
    by_file
        .into_iter()
        .filter(|(_, units)| units.len() >= 2)
        .map(|(file, units)| SerialisedGroup {
            file,
            units: units
                .into_iter()
                .map(|index| manifest.units[index].id.clone())
                .collect(),
        })
        .collect()
}
