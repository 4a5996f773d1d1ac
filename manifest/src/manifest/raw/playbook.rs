//! Readers of the playbook (inline or in its own file) and its gates.

use serde::de::{IgnoredAny, MapAccess, SeqAccess};

use super::agent::{BudgetValue, PricesValue};
use super::lenient::Lenient;
use super::reader::{Field, Reader};
use super::scalar::Scalar;
use super::values::EnvValue;
use super::PlaybookSpec;
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Node};
use crate::manifest::{Gate, Playbook};

const PLAYBOOK_FIELDS: &[&str] = &[
    "name",
    "run",
    "env",
    "timeout",
    "gates",
    "agent",
    "budget",
    "prices",
    "retry_over_budget",
];
const GATE_FIELDS: &[&str] = &["name", "run", "fix", "timeout", "required", "repairs"];

/// Reads the `playbook` field (a path or an inline mapping) or a playbook file's root.
pub(super) struct PlaybookValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    /// Reading a playbook file, whose root must be a mapping.
    pub(super) file: bool,
}

impl<'de> Lenient<'de> for PlaybookValue<'_, '_> {
    type Value = PlaybookSpec;
    const EXPECTING: &'static str = "a playbook path or mapping";

    fn mismatch(self, found: Scalar) -> PlaybookSpec {
        let (locator, field, expected) = if self.file {
            (
                Locator::Node(Node::Playbook),
                "playbook file",
                "a mapping with at least 'run'",
            )
        } else {
            (
                Locator::Value(Node::Top, "playbook"),
                "playbook",
                "the path of a playbook file or an inline playbook mapping",
            )
        };
        self.reader
            .wrong_type(locator, None, field.to_owned(), expected, &found);
        PlaybookSpec::Invalid
    }

    fn null(self) -> PlaybookSpec {
        if self.file {
            self.mismatch(Scalar::Null)
        } else {
            PlaybookSpec::Missing
        }
    }

    fn text(self, text: &str) -> PlaybookSpec {
        if self.file {
            self.mismatch(Scalar::Text(text.to_owned()))
        } else {
            PlaybookSpec::Path(text.to_owned())
        }
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<PlaybookSpec, M::Error> {
        let reader = self.reader;
        let mut playbook = Playbook::default();
        let (node, known) = (Node::Playbook, PLAYBOOK_FIELDS);
        reader.fields(&mut map, node, "playbook", known, |field, map| {
            match field.name {
                "name" => playbook.name = reader.text(map, field)?.unwrap_or_default(),
                "run" => playbook.run = reader.text(map, field)?.unwrap_or_default(),
                "timeout" => playbook.timeout = reader.duration(map, field)?,
                "env" => playbook.env = reader.nested(map, field, EnvValue { reader, field })?,
                "gates" => {
                    playbook.gates = reader.nested(map, field, GatesValue { reader, field })?
                }
                "agent" => playbook.agent = reader.typed(map, field)?,
                "budget" => {
                    let node = Node::PlaybookBudget;
                    let budget = BudgetValue {
                        reader,
                        field,
                        node,
                    };
                    playbook.budget = reader.nested(map, field, budget)?;
                }
                "prices" => {
                    playbook.prices = reader.nested(map, field, PricesValue { reader, field })?
                }
                "retry_over_budget" => {
                    playbook.retry_over_budget = reader.typed(map, field)?.unwrap_or(false)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        Ok(PlaybookSpec::Inline(Box::new(playbook)))
    }
}

/// Reads `gates`, keeping a malformed gate's index so later gates stay aligned between
/// the two readings.
struct GatesValue<'r, 'a> {
    reader: &'r Reader<'a>,
    field: Field,
}

impl<'de> Lenient<'de> for GatesValue<'_, '_> {
    type Value = Vec<Gate>;
    const EXPECTING: &'static str = "a list of gates";

    fn mismatch(self, found: Scalar) -> Vec<Gate> {
        self.reader.wrong_shape(self.field, Self::EXPECTING, &found)
    }

    fn null(self) -> Vec<Gate> {
        Vec::new()
    }

    fn list<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Gate>, S::Error> {
        let reader = self.reader;
        let mut gates = Vec::new();
        let gate = |index| GateValue { reader, index };
        reader.indexed(&mut seq, gate, |gate| gates.push(gate))?;
        Ok(gates)
    }
}

/// Reads one gate; a default gate stands in for one that is not a mapping (reported).
struct GateValue<'r, 'a> {
    reader: &'r Reader<'a>,
    index: usize,
}

impl<'de> Lenient<'de> for GateValue<'_, '_> {
    type Value = Gate;
    const EXPECTING: &'static str = "a gate mapping";

    fn mismatch(self, found: Scalar) -> Gate {
        let kind = ManifestErrorKind::WrongType {
            field: format!("gates[{}]", self.index),
            expected: "a mapping with 'name' and 'run'",
            found: found.to_string(),
        };
        let locator = Locator::Node(Node::Gate(self.index));
        self.reader.problem(locator, None, kind);
        Gate::default()
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Gate, M::Error> {
        let reader = self.reader;
        let mut gate = Gate::default();
        let node = Node::Gate(self.index);
        reader.fields(&mut map, node, "gate", GATE_FIELDS, |field, map| {
            match field.name {
                "name" => gate.name = reader.text(map, field)?.unwrap_or_default(),
                "run" => gate.run = reader.text(map, field)?.unwrap_or_default(),
                "fix" => gate.fix = reader.text(map, field)?,
                "timeout" => gate.timeout = reader.duration(map, field)?,
                "required" => gate.required = reader.typed(map, field)?.unwrap_or(true),
                "repairs" => gate.repairs = reader.typed(map, field)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        Ok(gate)
    }
}
