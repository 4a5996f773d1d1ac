//! Readers of the playbook (inline or in its own file) and its gates.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::reader::Reader;
use super::scalar::Scalar;
use super::values::EnvSeed;
use super::PlaybookSpec;
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Node, Position};
use crate::manifest::{Gate, Playbook};

const PLAYBOOK_FIELDS: &[&str] = &["name", "run", "env", "timeout", "gates"];
const GATE_FIELDS: &[&str] = &["name", "run", "fix", "timeout", "required", "repairs"];

/// Reads the `playbook` field (a path or an inline mapping) or a playbook file's root.
pub(super) struct PlaybookSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    /// Reading a playbook file, whose root must be a mapping.
    pub(super) file: bool,
}

impl PlaybookSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> PlaybookSpec {
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
}

impl<'de> DeserializeSeed<'de> for PlaybookSeed<'_, '_> {
    type Value = PlaybookSpec;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<PlaybookSpec, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlaybookSeed<'_, '_> {
    type Value = PlaybookSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a playbook path or mapping")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<PlaybookSpec, E> {
        if self.file {
            Ok(self.mismatch(Scalar::Text(v.to_owned())))
        } else {
            Ok(PlaybookSpec::Path(v.to_owned()))
        }
    }

    fn visit_unit<E>(self) -> Result<PlaybookSpec, E> {
        if self.file {
            Ok(self.mismatch(Scalar::Null))
        } else {
            Ok(PlaybookSpec::Missing)
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<PlaybookSpec, E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<PlaybookSpec, E> {
        Ok(self.mismatch(Scalar::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<PlaybookSpec, E> {
        Ok(self.mismatch(Scalar::Int(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<PlaybookSpec, E> {
        Ok(self.mismatch(Scalar::Int(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<PlaybookSpec, E> {
        Ok(self.mismatch(Scalar::Float(v)))
    }
    skip_seq_visit!(PlaybookSpec);

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<PlaybookSpec, M::Error> {
        let reader = self.reader;
        let node = Node::Playbook;
        let mut playbook = Playbook::default();
        reader.fields(
            &mut map,
            node,
            "playbook",
            PLAYBOOK_FIELDS,
            |field, key_position, map| {
                match field {
                    "name" => playbook.name = reader.text(map, node, field)?.unwrap_or_default(),
                    "run" => playbook.run = reader.text(map, node, field)?.unwrap_or_default(),
                    "timeout" => playbook.timeout = reader.duration(map, node, field)?,
                    "env" => {
                        reader.record(Locator::Value(node, field), key_position);
                        playbook.env = map.next_value_seed(EnvSeed {
                            reader,
                            node,
                            key_position,
                        })?;
                    }
                    "gates" => {
                        reader.record(Locator::Value(node, field), key_position);
                        playbook.gates = map.next_value_seed(GatesSeed {
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
        Ok(PlaybookSpec::Inline(playbook))
    }
}

/// Reads `gates`, keeping a malformed gate's index so later gates stay aligned.
pub(super) struct GatesSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) key_position: Option<Position>,
}

impl GatesSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> Vec<Gate> {
        let locator = Locator::Value(Node::Playbook, "gates");
        self.reader.wrong_type(
            locator,
            self.key_position,
            "gates".into(),
            "a list of gates",
            &found,
        );
        Vec::new()
    }
}

impl<'de> DeserializeSeed<'de> for GatesSeed<'_, '_> {
    type Value = Vec<Gate>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Gate>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for GatesSeed<'_, '_> {
    type Value = Vec<Gate>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of gates")
    }

    fn visit_unit<E>(self) -> Result<Vec<Gate>, E> {
        Ok(Vec::new())
    }
    fn visit_none<E>(self) -> Result<Vec<Gate>, E> {
        Ok(Vec::new())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Gate>, S::Error> {
        let mut gates = Vec::new();
        loop {
            let seed = GateSeed {
                reader: self.reader,
                index: gates.len(),
            };
            match seq.next_element_seed(seed)? {
                Some(Some(gate)) => gates.push(gate),
                // A malformed gate is reported; keep its index so later gates stay aligned
                // between the two readings.
                Some(None) => gates.push(Gate::default()),
                None => break,
            }
        }
        Ok(gates)
    }

    mismatch_visits!(Vec<Gate>);
    skip_map_visit!(Vec<Gate>);
}

/// Reads one gate; `None` when it is not a mapping (reported).
pub(super) struct GateSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) index: usize,
}

impl GateSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> Option<Gate> {
        let kind = ManifestErrorKind::WrongType {
            field: format!("gates[{}]", self.index),
            expected: "a mapping with 'name' and 'run'",
            found: found.to_string(),
        };
        let locator = Locator::Node(Node::Gate(self.index));
        self.reader.problem(locator, None, kind);
        None
    }
}

impl<'de> DeserializeSeed<'de> for GateSeed<'_, '_> {
    type Value = Option<Gate>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Gate>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for GateSeed<'_, '_> {
    type Value = Option<Gate>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a gate mapping")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Option<Gate>, M::Error> {
        let reader = self.reader;
        let node = Node::Gate(self.index);
        let mut gate = Gate::default();
        reader.fields(&mut map, node, "gate", GATE_FIELDS, |field, _, map| {
            match field {
                "name" => gate.name = reader.text(map, node, field)?.unwrap_or_default(),
                "run" => gate.run = reader.text(map, node, field)?.unwrap_or_default(),
                "fix" => gate.fix = reader.text(map, node, field)?,
                "timeout" => gate.timeout = reader.duration(map, node, field)?,
                "required" => gate.required = reader.flag(map, node, field)?.unwrap_or(true),
                "repairs" => gate.repairs = reader.count(map, node, field)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        Ok(Some(gate))
    }

    fn visit_unit<E>(self) -> Result<Option<Gate>, E> {
        Ok(self.mismatch(Scalar::Null))
    }

    mismatch_visits!(Option<Gate>);
    skip_seq_visit!(Option<Gate>);
}
