//! Where problems are: locators name a place in a manifest's structure, positions name a
//! place in its text, and [`Resolver`] turns located problems into [`ManifestErrors`].
//!
//! Semantic rules run on the parsed manifest, which keeps no positions (a million units'
//! worth of line numbers would double the memory of a valid manifest). Each problem
//! carries a [`Locator`] instead, and the text is read a second time, recording positions
//! for just those locators, only when there is something to report.

use std::collections::{HashMap, HashSet};

use super::errors::{ManifestError, ManifestErrorKind, ManifestErrors};

/// A mapping in the manifest's structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Node {
    Top,
    Playbook,
    Gate(usize),
    Unit(usize),
    /// The `git:` block.
    Git,
    /// The playbook's `budget:`.
    PlaybookBudget,
    /// A unit's `budget:`.
    UnitBudget(usize),
    /// The playbook's `prices:`.
    Prices,
    /// The batch's `budget:`.
    BatchBudget,
    /// The n-th model of `prices.models`.
    PriceModel(usize),
}

impl Node {
    /// The unit a place belongs to, if any.
    pub(crate) fn unit(self) -> Option<usize> {
        match self {
            Node::Unit(index) | Node::UnitBudget(index) => Some(index),
            _ => None,
        }
    }

    /// Says whether a place belongs to the playbook (and so to its file, when it has one).
    pub(crate) fn in_playbook(self) -> bool {
        matches!(
            self,
            Node::Playbook
                | Node::Gate(_)
                | Node::PlaybookBudget
                | Node::Prices
                | Node::PriceModel(_)
        )
    }
}

/// A place in the manifest's structure, independent of the text's layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Locator {
    /// A mapping itself; its position is that of its first key.
    Node(Node),
    /// The value of a field.
    Value(Node, &'static str),
    /// The n-th element of a list field (counting elements kept after reading).
    Item(Node, &'static str, usize),
    /// The entry named `name` of a map field (`env`, `resources`, `uses` in either form).
    Entry(Node, &'static str, String),
}

impl Locator {
    pub(crate) fn node(&self) -> Node {
        match self {
            Locator::Node(node)
            | Locator::Value(node, _)
            | Locator::Item(node, _, _)
            | Locator::Entry(node, _, _) => *node,
        }
    }

    /// Names the enclosing place, used when a place has no text of its own (a missing field).
    pub(crate) fn parent(&self) -> Option<Locator> {
        match self {
            Locator::Item(node, field, _) | Locator::Entry(node, field, _) => {
                Some(Locator::Value(*node, field))
            }
            Locator::Value(node, _) => Some(Locator::Node(*node)),
            Locator::Node(Node::Top) => None,
            Locator::Node(Node::Unit(_)) => Some(Locator::Value(Node::Top, "units")),
            Locator::Node(Node::Gate(_)) => Some(Locator::Value(Node::Playbook, "gates")),
            Locator::Node(Node::Playbook) => Some(Locator::Value(Node::Top, "playbook")),
            Locator::Node(Node::Git) => Some(Locator::Value(Node::Top, "git")),
            Locator::Node(Node::PlaybookBudget) => Some(Locator::Value(Node::Playbook, "budget")),
            Locator::Node(Node::UnitBudget(index)) => {
                Some(Locator::Value(Node::Unit(*index), "budget"))
            }
            Locator::Node(Node::Prices) => Some(Locator::Value(Node::Playbook, "prices")),
            Locator::Node(Node::BatchBudget) => Some(Locator::Value(Node::Top, "budget")),
            Locator::Node(Node::PriceModel(_)) => Some(Locator::Value(Node::Prices, "models")),
        }
    }
}

/// A 1-based line and column in a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: u32,
    pub column: u32,
}

impl Position {
    /// Converts a YAML location, which uses line 0 for "unknown".
    pub(crate) fn from_location(location: &serde_saphyr::Location) -> Option<Position> {
        let line = u32::try_from(location.line()).ok()?;
        let column = u32::try_from(location.column()).ok()?;
        (line > 0).then_some(Position { line, column })
    }
}

/// A problem found while reading or checking, before it is tied to a file and a unit id.
#[derive(Clone, Debug)]
pub(crate) struct Problem {
    pub locator: Locator,
    /// Known when the problem was found while reading with positions on.
    pub position: Option<Position>,
    /// A second place the message names (the first of two duplicate ids).
    pub also: Option<Locator>,
    pub kind: ManifestErrorKind,
}

impl Problem {
    pub(crate) fn new(locator: Locator, kind: ManifestErrorKind) -> Problem {
        Problem {
            locator,
            position: None,
            also: None,
            kind,
        }
    }

    pub(crate) fn at(mut self, position: Option<Position>) -> Problem {
        self.position = position;
        self
    }

    pub(crate) fn also(mut self, locator: Locator) -> Problem {
        self.also = Some(locator);
        self
    }
}

/// The positions recorded during one reading of a text.
pub(crate) type PositionTable = HashMap<Locator, Position>;

/// Collects the locators, and their enclosing places, whose positions a second reading
/// must record.
pub(crate) fn wanted_locators<'p>(
    problems: impl IntoIterator<Item = &'p Problem>,
) -> HashSet<Locator> {
    let mut wanted = HashSet::new();
    for problem in problems {
        for start in [Some(&problem.locator), problem.also.as_ref()]
            .into_iter()
            .flatten()
        {
            let mut next = Some(start.clone());
            while let Some(locator) = next {
                next = locator.parent();
                if !wanted.insert(locator) {
                    break;
                }
            }
        }
    }
    wanted
}

/// One text a manifest was read from, with the positions recorded for it.
pub(crate) struct Document<'a> {
    pub source: &'a str,
    pub positions: Option<&'a PositionTable>,
}

/// Ties problems to their file, position and unit id, and orders them as the files read.
pub(crate) struct Resolver<'a> {
    pub manifest: Document<'a>,
    /// The playbook's own file, when the manifest names one; problems located in the
    /// playbook or its gates belong to it.
    pub playbook_file: Option<Document<'a>>,
    /// Gives the id of the unit at an index, when it has one.
    pub unit_id: &'a dyn Fn(usize) -> Option<String>,
}

impl Resolver<'_> {
    pub(crate) fn resolve(&self, problems: Vec<Problem>) -> ManifestErrors {
        let mut ranked: Vec<(u8, ManifestError)> = problems
            .into_iter()
            .map(|problem| self.resolve_one(problem))
            .collect();
        // A stable sort keeps problems without positions in the order the rules found them.
        ranked.sort_by_key(|(rank, error)| {
            (*rank, error.line.unwrap_or(0), error.column.unwrap_or(0))
        });
        ManifestErrors {
            errors: ranked.into_iter().map(|(_, error)| error).collect(),
        }
    }

    fn document_of(&self, locator: &Locator) -> (u8, &Document<'_>) {
        match (locator.node(), &self.playbook_file) {
            (node, Some(playbook)) if node.in_playbook() => (1, playbook),
            _ => (0, &self.manifest),
        }
    }

    fn resolve_one(&self, problem: Problem) -> (u8, ManifestError) {
        let (rank, document) = self.document_of(&problem.locator);
        let position = problem
            .position
            .or_else(|| lookup(document.positions, &problem.locator));
        let mut kind = problem.kind;
        if let Some(also) = &problem.also {
            let (_, also_document) = self.document_of(also);
            let first = lookup(also_document.positions, also);
            kind.set_first_position(first.map(|p| p.line), first.map(|p| p.column));
        }
        let unit = problem
            .locator
            .node()
            .unit()
            .and_then(|index| (self.unit_id)(index));
        let error = ManifestError {
            source: document.source.to_owned(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            unit,
            kind,
        };
        (rank, error)
    }
}

/// Finds the position of a place, or of the nearest enclosing place that has one.
fn lookup(table: Option<&PositionTable>, locator: &Locator) -> Option<Position> {
    let table = table?;
    let mut next = Some(locator.clone());
    while let Some(locator) = next {
        if let Some(position) = table.get(&locator) {
            return Some(*position);
        }
        next = locator.parent();
    }
    None
}
