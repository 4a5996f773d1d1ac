//! The batch's dependency graph: which units must finish before which.
//!
//! Node `i` is the manifest's unit `i`; an edge goes from a dependency to its dependent,
//! the direction in which the scheduler releases work. Building the graph checks the
//! rules that need it (unique ids, known dependencies, no cycles), and the same checks
//! run during manifest validation, so a manifest that validates always builds.
//!
//! Everything here is linear in units plus dependencies: a Kahn pass orders the graph
//! and gives each unit its level; only units that pass leaves out (cycles and what
//! depends on them) go through strongly connected components, with petgraph's
//! iterative Kosaraju (its Tarjan is recursive and would overflow the stack on a long
//! chain).

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::manifest::position::{Document, Locator, Node, Problem, Resolver};
use crate::manifest::suggest::Suggester;
use crate::manifest::{ManifestErrorKind, ManifestErrors, Unit};
use crate::Manifest;

/// The dependency graph of a valid manifest, with each unit's level precomputed.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Edges run from a dependency to its dependent; node index = unit index.
    graph: DiGraph<(), (), u32>,
    /// Unit id to index, so the coordinator can map events back to units.
    index: HashMap<Box<str>, u32>,
    /// Each unit's level: 0 for units without dependencies, else one more than the
    /// highest level among its dependencies.
    level: Vec<u32>,
    level_count: usize,
    /// Units in an order where every dependency comes before its dependents.
    order: Vec<u32>,
}

impl Dag {
    /// Builds the graph of a manifest's units, reporting duplicate ids, unknown and
    /// repeated dependencies, self-dependencies and cycles (each printed once, as
    /// `a -> b -> c -> a`).
    pub fn build(manifest: &Manifest) -> Result<Dag, ManifestErrors> {
        let units = &manifest.units;
        let mut suggester = Suggester::default();
        // The graph keeps its own copy of the ids, so it is built with owned keys at once.
        let links: Links<Box<str>> = link(units, &|_| false, &mut suggester);
        let ordering = order(units.len(), &links.edges);
        let mut problems = links.problems;
        problems.extend(cycle_problems(units, &links.edges, &ordering));
        if !problems.is_empty() {
            let resolver = Resolver {
                manifest: Document {
                    source: manifest.source_name(),
                    positions: None,
                },
                playbook_file: None,
                unit_id: &|index| units.get(index).map(|unit| unit.id.clone()),
            };
            return Err(resolver.resolve(problems));
        }
        let mut graph = DiGraph::with_capacity(units.len(), links.edges.len());
        for _ in 0..units.len() {
            graph.add_node(());
        }
        for (from, to) in &links.edges {
            graph.add_edge(
                NodeIndex::new(*from as usize),
                NodeIndex::new(*to as usize),
                (),
            );
        }
        Ok(Dag {
            graph,
            index: links.index,
            level: ordering.level,
            level_count: ordering.level_count,
            order: ordering.sorted,
        })
    }

    /// Counts the units.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Counts the dependency edges.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Returns the units a unit depends on.
    pub fn dependencies(&self, unit: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(unit), Direction::Incoming)
            .map(|node| node.index())
    }

    /// Returns the units that depend on a unit.
    pub fn dependents(&self, unit: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(unit), Direction::Outgoing)
            .map(|node| node.index())
    }

    /// Finds a unit's index by id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).map(|at| *at as usize)
    }

    /// Returns the units without dependencies, in manifest order: the batch's first work.
    pub fn roots(&self) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .externals(Direction::Incoming)
            .map(|node| node.index())
    }

    /// Returns every unit that depends on `unit`, directly or not, in manifest order:
    /// the units a failure blocks.
    ///
    /// Costs time in proportion to the descendants found, not to the batch's size, so
    /// that a coordinator may ask on every failure.
    pub fn descendants(&self, unit: usize) -> Vec<usize> {
        let mut seen: HashSet<usize> = HashSet::new();
        let mut queue = VecDeque::from([unit]);
        let mut found = Vec::new();
        while let Some(next) = queue.pop_front() {
            for dependent in self.dependents(next) {
                if seen.insert(dependent) {
                    found.push(dependent);
                    queue.push_back(dependent);
                }
            }
        }
        found.sort_unstable();
        found
    }

    /// Returns a unit's level: 0 without dependencies, else one more than its deepest
    /// dependency; `None` for an index past the last unit.
    pub fn level_of(&self, unit: usize) -> Option<usize> {
        self.level.get(unit).map(|level| *level as usize)
    }

    /// Counts the levels (the length, in units, of the longest dependency chain).
    pub fn level_count(&self) -> usize {
        self.level_count
    }

    /// Groups the units by level, units without dependencies first, each level in
    /// manifest order. Units of one level never depend on each other.
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let mut levels = vec![Vec::new(); self.level_count];
        for (unit, level) in self.level.iter().enumerate() {
            levels[*level as usize].push(unit);
        }
        levels
    }

    /// Returns the units in an order where each comes after all its dependencies.
    pub fn topological_order(&self) -> impl Iterator<Item = usize> + '_ {
        self.order.iter().map(|unit| *unit as usize)
    }
}

/// Reports the graph problems of a list of units, as manifest validation needs them,
/// without keeping a graph. `skip` names units already reported as malformed.
pub(crate) fn graph_problems(
    units: &[Unit],
    skip: &dyn Fn(usize) -> bool,
    suggester: &mut Suggester,
) -> Vec<Problem> {
    let links: Links<&str> = link(units, skip, suggester);
    let ordering = order(units.len(), &links.edges);
    let mut problems = links.problems;
    problems.extend(cycle_problems(units, &links.edges, &ordering));
    problems
}

/// Units resolved to indices: the id index, the dependency edges, and what went wrong.
struct Links<K> {
    index: HashMap<K, u32>,
    /// (dependency, dependent) pairs.
    edges: Vec<(u32, u32)>,
    problems: Vec<Problem>,
}

fn link<'m, K>(
    units: &'m [Unit],
    skip: &dyn Fn(usize) -> bool,
    suggester: &mut Suggester,
) -> Links<K>
where
    K: From<&'m str> + Borrow<str> + Hash + Eq,
{
    let mut problems = Vec::new();
    let mut index: HashMap<K, u32> = HashMap::with_capacity(units.len());
    for (at, unit) in units.iter().enumerate() {
        if unit.id.is_empty() || skip(at) {
            continue;
        }
        let at_u32 = at as u32;
        if let Some(first) = index.get(unit.id.as_str()) {
            let kind = ManifestErrorKind::DuplicateUnitId {
                id: unit.id.clone(),
                first_line: None,
                first_column: None,
            };
            let first = Locator::Value(Node::Unit(*first as usize), "id");
            problems.push(Problem::new(Locator::Value(Node::Unit(at), "id"), kind).also(first));
        } else {
            index.insert(K::from(unit.id.as_str()), at_u32);
        }
    }

    let edge_estimate = units.iter().map(|unit| unit.depends_on.len()).sum();
    let mut edges = Vec::with_capacity(edge_estimate);
    let mut unknown: Vec<(usize, usize)> = Vec::new();
    for (at, unit) in units.iter().enumerate() {
        if skip(at) {
            continue;
        }
        let node = Node::Unit(at);
        // A set only for long lists: most units have a handful of
        // dependencies, where a scan is cheaper; a set keeps one unit with
        // tens of thousands of them linear (found by the manifest fuzzer).
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let long = unit.depends_on.len() > 32;
        for (position, dependency) in unit.depends_on.iter().enumerate() {
            let locator = Locator::Item(node, "depends_on", position);
            let repeated = if long {
                !seen.insert(dependency.as_str())
            } else {
                unit.depends_on[..position].contains(dependency)
            };
            if *dependency == unit.id {
                problems.push(Problem::new(locator, ManifestErrorKind::SelfDependency));
            } else if repeated {
                let kind = ManifestErrorKind::DuplicateDependency {
                    dependency: dependency.clone(),
                };
                problems.push(Problem::new(locator, kind));
            } else if let Some(from) = index.get(dependency.as_str()) {
                edges.push((*from, at as u32));
            } else {
                unknown.push((at, position));
            }
        }
    }
    for (at, position) in unknown {
        let dependency = &units[at].depends_on[position];
        let ids = units.iter().map(|unit| unit.id.as_str());
        let suggestion = suggester.closest(dependency, ids);
        let kind = ManifestErrorKind::UnknownDependency {
            dependency: dependency.clone(),
            suggestion,
        };
        let locator = Locator::Item(Node::Unit(at), "depends_on", position);
        problems.push(Problem::new(locator, kind));
    }
    Links {
        index,
        edges,
        problems,
    }
}

/// The outcome of a Kahn pass.
struct Ordering {
    /// Units in dependency order; shorter than the unit count when there are cycles.
    sorted: Vec<u32>,
    level: Vec<u32>,
    level_count: usize,
}

/// Orders units by Kahn's algorithm, one level (wave) at a time.
fn order(unit_count: usize, edges: &[(u32, u32)]) -> Ordering {
    let (offsets, targets) = adjacency(unit_count, edges.iter().copied());
    let mut waiting = vec![0u32; unit_count];
    for (_, to) in edges {
        waiting[*to as usize] += 1;
    }
    let mut level = vec![0u32; unit_count];
    let mut sorted: Vec<u32> = (0..unit_count as u32)
        .filter(|unit| waiting[*unit as usize] == 0)
        .collect();
    sorted.reserve(unit_count.saturating_sub(sorted.len()));
    let mut wave_start = 0;
    let mut level_count = 0;
    while wave_start < sorted.len() {
        let wave_end = sorted.len();
        for at in wave_start..wave_end {
            let unit = sorted[at] as usize;
            level[unit] = level_count as u32;
            for dependent in &targets[offsets[unit]..offsets[unit + 1]] {
                let count = &mut waiting[*dependent as usize];
                *count -= 1;
                if *count == 0 {
                    sorted.push(*dependent);
                }
            }
        }
        wave_start = wave_end;
        level_count += 1;
    }
    Ordering {
        sorted,
        level,
        level_count,
    }
}

/// Builds a compressed adjacency list: the targets of `node` are
/// `targets[offsets[node]..offsets[node + 1]]`.
fn adjacency(
    node_count: usize,
    edges: impl Iterator<Item = (u32, u32)> + Clone,
) -> (Vec<usize>, Vec<u32>) {
    let mut offsets = vec![0usize; node_count + 1];
    for (from, _) in edges.clone() {
        offsets[from as usize + 1] += 1;
    }
    for at in 0..node_count {
        offsets[at + 1] += offsets[at];
    }
    let mut fill = offsets.clone();
    let mut targets = vec![0u32; offsets[node_count]];
    for (from, to) in edges {
        targets[fill[from as usize]] = to;
        fill[from as usize] += 1;
    }
    (offsets, targets)
}

/// Reports each knot of cycles once, as one actual cycle through its first unit in
/// manifest order.
fn cycle_problems(units: &[Unit], edges: &[(u32, u32)], ordering: &Ordering) -> Vec<Problem> {
    if ordering.sorted.len() == units.len() {
        return Vec::new();
    }
    // The units Kahn could not order: cycles, and units downstream of them.
    let mut ordered = vec![false; units.len()];
    for unit in &ordering.sorted {
        ordered[*unit as usize] = true;
    }
    let left: Vec<u32> = (0..units.len() as u32)
        .filter(|unit| !ordered[*unit as usize])
        .collect();
    let mut local = vec![u32::MAX; units.len()];
    for (at, unit) in left.iter().enumerate() {
        local[*unit as usize] = at as u32;
    }
    // In this graph an edge runs from a unit to a unit it depends on, so that walking
    // it prints cycles the way `depends_on` reads.
    let mut graph: DiGraph<(), (), u32> = DiGraph::with_capacity(left.len(), 0);
    for _ in &left {
        graph.add_node(());
    }
    for (dependency, dependent) in edges {
        let (from, to) = (local[*dependent as usize], local[*dependency as usize]);
        if from != u32::MAX && to != u32::MAX {
            graph.add_edge(
                NodeIndex::new(from as usize),
                NodeIndex::new(to as usize),
                (),
            );
        }
    }
    let mut knots: Vec<Vec<usize>> = kosaraju_scc(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let mut members: Vec<usize> = component.iter().map(|n| n.index()).collect();
            members.sort_unstable();
            members
        })
        .collect();
    knots.sort_unstable_by_key(|members| members[0]);

    let mut problems = Vec::new();
    for members in knots {
        let cycle = shortest_cycle(&graph, &members);
        let path: Vec<String> = cycle
            .iter()
            .map(|local| units[left[*local] as usize].id.clone())
            .collect();
        let start = left[cycle[0]] as usize;
        let next_id = &path[1];
        let position = units[start]
            .depends_on
            .iter()
            .position(|dependency| dependency == next_id)
            .unwrap_or(0);
        let others = members.len() + 1 - path.len();
        let kind = ManifestErrorKind::Cycle { path, others };
        let locator = Locator::Item(Node::Unit(start), "depends_on", position);
        problems.push(Problem::new(locator, kind));
    }
    problems
}

/// Finds a shortest cycle through the first member of a strongly connected component, by
/// breadth-first search inside the component; returns it with its first unit repeated
/// at the end.
fn shortest_cycle(graph: &DiGraph<(), (), u32>, members: &[usize]) -> Vec<usize> {
    let inside: HashSet<usize> = members.iter().copied().collect();
    let start = members[0];
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.neighbors(NodeIndex::new(at)).map(|n| n.index()) {
            if next == start {
                let mut path = vec![at];
                let mut back = at;
                while back != start {
                    match parent.get(&back) {
                        Some(previous) => back = *previous,
                        None => break,
                    }
                    path.push(back);
                }
                path.reverse();
                path.push(start);
                return path;
            }
            if inside.contains(&next) && next != start && !parent.contains_key(&next) {
                parent.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    // A strongly connected component of two or more units always has a cycle through
    // each member; this is only reached if that invariant breaks.
    vec![start, start]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(id: &str, deps: &[&str]) -> Unit {
        Unit {
            id: id.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Unit::default()
        }
    }

    fn problems_of(units: &[Unit]) -> Vec<String> {
        let mut suggester = Suggester::default();
        graph_problems(units, &|_| false, &mut suggester)
            .into_iter()
            .map(|p| p.kind.to_string())
            .collect()
    }

    #[test]
    fn prints_a_cycle_once_in_depends_on_order() {
        let units = [
            unit("a", &["b"]),
            unit("b", &["c"]),
            unit("c", &["a"]),
            unit("d", &["a"]),
        ];
        assert_eq!(
            problems_of(&units),
            vec!["dependency cycle: a -> b -> c -> a"]
        );
    }

    #[test]
    fn finds_a_shortest_cycle_in_a_knot() {
        let units = [
            unit("a", &["b", "c"]),
            unit("b", &["c"]),
            unit("c", &["a"]),
            unit("x", &["y"]),
            unit("y", &["x"]),
        ];
        assert_eq!(
            problems_of(&units),
            vec![
                "dependency cycle: a -> c -> a (and 1 more unit caught in the same cycles)",
                "dependency cycle: x -> y -> x",
            ]
        );
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let n = 200_000;
        let mut units: Vec<Unit> = (0..n)
            .map(|i| {
                let deps: Vec<String> = if i == 0 {
                    vec![]
                } else {
                    vec![format!("u{}", i - 1)]
                };
                Unit {
                    id: format!("u{i}"),
                    depends_on: deps,
                    ..Unit::default()
                }
            })
            .collect();
        assert!(problems_of(&units).is_empty());
        units[0].depends_on.push(format!("u{}", n - 1));
        let problems = problems_of(&units);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("dependency cycle: u0 -> u199999 -> u199998"));
    }

    #[test]
    fn a_unit_with_a_huge_dependency_list_is_checked_in_linear_time() {
        // Quadratic before: 150,000 entries took half a minute, optimised.
        let n = 100_000;
        let mut units: Vec<Unit> = (0..n).map(|i| unit(&format!("u{i}"), &[])).collect();
        let mut all: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        all.push("u7".into());
        units.push(Unit {
            id: "fan-in".into(),
            depends_on: all,
            ..Unit::default()
        });
        assert_eq!(
            problems_of(&units),
            vec!["dependency 'u7' is listed more than once"]
        );
    }
}
