//! Readers of the manifest's mappings: the top level and the units.

use serde::de::{IgnoredAny, MapAccess, SeqAccess};

use super::agent::{BatchBudgetValue, BudgetValue};
use super::git::GitValue;
use super::lenient::Lenient;
use super::playbook::PlaybookValue;
use super::reader::{Field, Reader};
use super::scalar::Scalar;
use super::values::{EnvValue, ResourcesValue, UsesValue};
use super::Draft;
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Node};
use crate::manifest::Unit;

const TOP_FIELDS: &[&str] = &[
    "batch",
    "workdir",
    "git",
    "playbook",
    "concurrency",
    "calibration",
    "calibration_auto",
    "retries",
    "timeout",
    "resources",
    "budget",
    "units",
];

/// Reads the manifest's top level into a [`Draft`]; `None` when it is not a mapping.
pub(super) struct TopValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
}

impl<'de> Lenient<'de> for TopValue<'_, '_> {
    type Value = Option<Draft>;
    const EXPECTING: &'static str = "a manifest mapping";

    fn mismatch(self, found: Scalar) -> Option<Draft> {
        let kind = if found == Scalar::Null {
            ManifestErrorKind::Syntax {
                message: "the manifest is empty".into(),
            }
        } else {
            ManifestErrorKind::WrongType {
                field: "manifest".into(),
                expected: "a mapping with 'batch', 'playbook' and 'units'",
                found: found.to_string(),
            }
        };
        self.reader.problem(Locator::Node(Node::Top), None, kind);
        // Nothing else can be said about a manifest that is not a mapping.
        None
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Option<Draft>, M::Error> {
        let reader = self.reader;
        let mut draft = Draft::default();
        reader.fields(&mut map, Node::Top, "manifest", TOP_FIELDS, |field, map| {
            match field.name {
                "batch" => draft.batch = reader.text(map, field)?,
                "workdir" => draft.workdir = reader.text(map, field)?,
                "git" => draft.git = reader.nested(map, field, GitValue { reader, field })?,
                "playbook" => {
                    let playbook = PlaybookValue {
                        reader,
                        file: false,
                    };
                    draft.playbook = reader.nested(map, field, playbook)?;
                }
                "concurrency" => draft.concurrency = reader.typed(map, field)?,
                "calibration" => draft.calibration = reader.typed(map, field)?,
                "calibration_auto" => draft.calibration_auto = reader.typed(map, field)?,
                "retries" => draft.retries = reader.typed(map, field)?,
                "timeout" => draft.timeout = reader.duration(map, field)?,
                "resources" => {
                    let resources = ResourcesValue { reader, field };
                    draft.resources = reader.nested(map, field, resources)?;
                }
                "budget" => {
                    let budget = BatchBudgetValue { reader, field };
                    draft.budget = reader.nested(map, field, budget)?;
                }
                "units" => draft.units = reader.nested(map, field, UnitsValue { reader, field })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        Ok(Some(draft))
    }
}

const UNIT_FIELDS: &[&str] = &[
    "id",
    "task",
    "inputs",
    "outputs",
    "touches",
    "uses",
    "depends_on",
    "run",
    "timeout",
    "env",
    "priority",
    "verify",
    "budget",
    "retries",
];

/// Reads `units`, keeping each unit's index (its [`Node::Unit`]) even when a unit is
/// malformed, so that indices agree between the two readings.
struct UnitsValue<'r, 'a> {
    reader: &'r Reader<'a>,
    field: Field,
}

impl<'de> Lenient<'de> for UnitsValue<'_, '_> {
    type Value = Vec<Unit>;
    const EXPECTING: &'static str = "a list of units";

    fn mismatch(self, found: Scalar) -> Vec<Unit> {
        self.reader.wrong_shape(self.field, Self::EXPECTING, &found)
    }

    fn null(self) -> Vec<Unit> {
        Vec::new()
    }

    fn list<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Unit>, S::Error> {
        let reader = self.reader;
        let mut units = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let keep = reader.keeps_units();
        let unit = |index| UnitValue { reader, index };
        reader.indexed(&mut seq, unit, |unit| {
            if keep {
                units.push(unit);
            }
        })?;
        Ok(units)
    }
}

/// Reads one unit.
struct UnitValue<'r, 'a> {
    reader: &'r Reader<'a>,
    index: usize,
}

impl<'de> Lenient<'de> for UnitValue<'_, '_> {
    type Value = Unit;
    const EXPECTING: &'static str = "a unit mapping";

    fn mismatch(self, found: Scalar) -> Unit {
        let locator = Locator::Node(Node::Unit(self.index));
        let kind = ManifestErrorKind::WrongType {
            field: format!("units[{}]", self.index),
            expected: "a mapping with at least an 'id'",
            found: found.to_string(),
        };
        self.reader.problem(locator, None, kind);
        let mut notes = self.reader.notes.borrow_mut();
        notes.broken_units.insert(self.index);
        Unit::default()
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Unit, M::Error> {
        let Self { reader, index } = self;
        let mut unit = Unit::default();
        if reader.positions_on() {
            reader
                .unit_ids
                .borrow_mut()
                .resize(index + 1, String::new());
        }
        reader.fields(
            &mut map,
            Node::Unit(index),
            "unit",
            UNIT_FIELDS,
            |field, map| {
                let list = |map: &mut M| Ok(reader.list(map, field)?.unwrap_or_default());
                match field.name {
                    "id" => {
                        unit.id = reader.text(map, field)?.unwrap_or_default();
                        if let Some(slot) = reader.unit_ids.borrow_mut().get_mut(index) {
                            slot.clone_from(&unit.id);
                        }
                    }
                    "task" => unit.task = reader.text(map, field)?.unwrap_or_default(),
                    "inputs" => unit.inputs = list(map)?,
                    "outputs" => unit.outputs = list(map)?,
                    "touches" => unit.touches = list(map)?,
                    "depends_on" => unit.depends_on = list(map)?,
                    "verify" => unit.verify = reader.list(map, field)?,
                    "uses" => unit.uses = reader.nested(map, field, UsesValue { reader, field })?,
                    "env" => unit.env = reader.nested(map, field, EnvValue { reader, field })?,
                    "run" => unit.run = reader.text(map, field)?,
                    "timeout" => unit.timeout = reader.duration(map, field)?,
                    "priority" => unit.priority = reader.typed(map, field)?.unwrap_or(0),
                    "retries" => unit.retries = reader.typed(map, field)?,
                    "budget" => {
                        let node = Node::UnitBudget(index);
                        let budget = BudgetValue {
                            reader,
                            field,
                            node,
                        };
                        unit.budget = reader.nested(map, field, budget)?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(unit)
    }
}
