//! Readers of the manifest's mappings: the top level and the units.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::playbook::PlaybookSeed;
use super::reader::Reader;
use super::scalar::Scalar;
use super::values::{EnvSeed, ResourcesSeed, UsesSeed};
use super::{Draft, PlaybookSpec};
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Node, Position};
use crate::manifest::Unit;

const TOP_FIELDS: &[&str] = &[
    "batch",
    "workdir",
    "playbook",
    "concurrency",
    "calibration",
    "calibration_auto",
    "retries",
    "timeout",
    "resources",
    "units",
];

/// Reads the manifest's top level into a [`Draft`]; `None` when it is not a mapping.
pub(super) struct TopSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
}

impl TopSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> Option<Draft> {
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
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = Option<Draft>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Draft>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = Option<Draft>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a manifest mapping")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Option<Draft>, M::Error> {
        let reader = self.reader;
        let top = Node::Top;
        let mut draft = Draft {
            batch: None,
            workdir: None,
            playbook: PlaybookSpec::Missing,
            concurrency: None,
            calibration: None,
            calibration_auto: None,
            retries: None,
            timeout: None,
            resources: BTreeMap::new(),
            units: Vec::new(),
        };
        reader.fields(
            &mut map,
            top,
            "manifest",
            TOP_FIELDS,
            |field, key_position, map| {
                match field {
                    "batch" => draft.batch = reader.text(map, top, field)?,
                    "workdir" => draft.workdir = reader.text(map, top, field)?,
                    "playbook" => {
                        reader.record(Locator::Value(top, field), key_position);
                        draft.playbook = map.next_value_seed(PlaybookSeed {
                            reader,
                            file: false,
                        })?;
                    }
                    "concurrency" => draft.concurrency = reader.count(map, top, field)?,
                    "calibration" => draft.calibration = reader.count(map, top, field)?,
                    "calibration_auto" => {
                        draft.calibration_auto = reader.fraction(map, top, field)?
                    }
                    "retries" => draft.retries = reader.count(map, top, field)?,
                    "timeout" => draft.timeout = reader.duration(map, top, field)?,
                    "resources" => {
                        reader.record(Locator::Value(top, field), key_position);
                        draft.resources = map.next_value_seed(ResourcesSeed {
                            reader,
                            key_position,
                        })?;
                    }
                    "units" => {
                        reader.record(Locator::Value(top, field), key_position);
                        draft.units = map.next_value_seed(UnitsSeed {
                            reader,
                            key_position,
                        })?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(Some(draft))
    }

    fn visit_unit<E>(self) -> Result<Option<Draft>, E> {
        Ok(self.mismatch(Scalar::Null))
    }

    mismatch_visits!(Option<Draft>);
    skip_seq_visit!(Option<Draft>);
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
];

/// Reads `units`, keeping each unit's index (its [`Node::Unit`]) even when a unit is
/// malformed, so that indices agree between the two readings.
pub(super) struct UnitsSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) key_position: Option<Position>,
}

impl UnitsSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> Vec<Unit> {
        let locator = Locator::Value(Node::Top, "units");
        self.reader.wrong_type(
            locator,
            self.key_position,
            "units".into(),
            "a list of units",
            &found,
        );
        Vec::new()
    }
}

impl<'de> DeserializeSeed<'de> for UnitsSeed<'_, '_> {
    type Value = Vec<Unit>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Unit>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UnitsSeed<'_, '_> {
    type Value = Vec<Unit>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of units")
    }

    fn visit_unit<E>(self) -> Result<Vec<Unit>, E> {
        Ok(Vec::new())
    }
    fn visit_none<E>(self) -> Result<Vec<Unit>, E> {
        Ok(Vec::new())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Unit>, S::Error> {
        let mut units = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let keep = self.reader.keeps_units();
        let mut index = 0;
        loop {
            let seed = UnitSeed {
                reader: self.reader,
                index,
            };
            match seq.next_element_seed(seed)? {
                Some(unit) if keep => units.push(unit),
                Some(_) => {}
                None => break,
            }
            index += 1;
        }
        Ok(units)
    }

    mismatch_visits!(Vec<Unit>);
    skip_map_visit!(Vec<Unit>);
}

/// Reads one unit.
pub(super) struct UnitSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) index: usize,
}

impl UnitSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> Unit {
        let locator = Locator::Node(Node::Unit(self.index));
        let kind = ManifestErrorKind::WrongType {
            field: format!("units[{}]", self.index),
            expected: "a mapping with at least an 'id'",
            found: found.to_string(),
        };
        self.reader.problem(locator, None, kind);
        self.reader
            .notes
            .borrow_mut()
            .broken_units
            .insert(self.index);
        Unit::default()
    }
}

impl<'de> DeserializeSeed<'de> for UnitSeed<'_, '_> {
    type Value = Unit;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Unit, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UnitSeed<'_, '_> {
    type Value = Unit;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a unit mapping")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Unit, M::Error> {
        let reader = self.reader;
        let node = Node::Unit(self.index);
        let mut unit = Unit::default();
        if reader.positions_on() {
            reader
                .unit_ids
                .borrow_mut()
                .resize(self.index + 1, String::new());
        }
        reader.fields(
            &mut map,
            node,
            "unit",
            UNIT_FIELDS,
            |field, key_position, map| {
                match field {
                    "id" => {
                        unit.id = reader.text(map, node, field)?.unwrap_or_default();
                        if reader.positions_on() {
                            if let Some(slot) = reader.unit_ids.borrow_mut().get_mut(self.index) {
                                slot.clone_from(&unit.id);
                            }
                        }
                    }
                    "task" => unit.task = reader.text(map, node, field)?.unwrap_or_default(),
                    "inputs" => {
                        unit.inputs = reader
                            .list(map, node, field, key_position)?
                            .unwrap_or_default()
                    }
                    "outputs" => {
                        unit.outputs = reader
                            .list(map, node, field, key_position)?
                            .unwrap_or_default()
                    }
                    "touches" => {
                        unit.touches = reader
                            .list(map, node, field, key_position)?
                            .unwrap_or_default()
                    }
                    "depends_on" => {
                        unit.depends_on = reader
                            .list(map, node, field, key_position)?
                            .unwrap_or_default()
                    }
                    "verify" => unit.verify = reader.list(map, node, field, key_position)?,
                    "uses" => {
                        reader.record(Locator::Value(node, field), key_position);
                        unit.uses = map.next_value_seed(UsesSeed {
                            reader,
                            node,
                            key_position,
                        })?;
                    }
                    "env" => {
                        reader.record(Locator::Value(node, field), key_position);
                        unit.env = map.next_value_seed(EnvSeed {
                            reader,
                            node,
                            key_position,
                        })?;
                    }
                    "run" => unit.run = reader.text(map, node, field)?,
                    "timeout" => unit.timeout = reader.duration(map, node, field)?,
                    "priority" => unit.priority = reader.integer(map, node, field)?.unwrap_or(0),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(unit)
    }

    fn visit_unit<E>(self) -> Result<Unit, E> {
        Ok(self.mismatch(Scalar::Null))
    }

    mismatch_visits!(Unit);
    skip_seq_visit!(Unit);
}
