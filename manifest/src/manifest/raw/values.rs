//! Readers of the list and map fields: string lists, `env`, `resources`, `uses`.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::reader::Reader;
use super::scalar::Scalar;
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Node, Position};

/// Reads a list of strings (`depends_on`, `inputs`, `verify`...); `None` when null.
pub(super) struct ListSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) node: Node,
    pub(super) field: &'static str,
    pub(super) key_position: Option<Position>,
}

impl ListSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> Option<Vec<String>> {
        let locator = Locator::Value(self.node, self.field);
        self.reader.wrong_type(
            locator,
            self.key_position,
            self.field.to_owned(),
            "a list",
            &found,
        );
        Some(Vec::new())
    }
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_, '_> {
    type Value = Option<Vec<String>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = Option<Vec<String>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some((item, position)) = self.reader.element::<Option<String>, S>(&mut seq)? {
            match item {
                Some(text) => {
                    self.reader
                        .record(Locator::Item(self.node, self.field, items.len()), position);
                    items.push(text);
                }
                None => {
                    let locator = Locator::Value(self.node, self.field);
                    let kind = ManifestErrorKind::EmptyEntry { field: self.field };
                    self.reader.problem(locator, position, kind);
                }
            }
        }
        Ok(Some(items))
    }

    mismatch_visits!(Option<Vec<String>>);
    skip_map_visit!(Option<Vec<String>>);
}

/// Reads `env`: variable names to string values.
pub(super) struct EnvSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) node: Node,
    pub(super) key_position: Option<Position>,
}

impl EnvSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> BTreeMap<String, String> {
        let locator = Locator::Value(self.node, "env");
        let expected = "a mapping of variable names to strings";
        self.reader
            .wrong_type(locator, self.key_position, "env".into(), expected, &found);
        BTreeMap::new()
    }
}

impl<'de> DeserializeSeed<'de> for EnvSeed<'_, '_> {
    type Value = BTreeMap<String, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EnvSeed<'_, '_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of variable names to strings")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut env = BTreeMap::new();
        while let Some((name, position)) = self.reader.next_key(&mut map)? {
            let locator = Locator::Entry(self.node, "env", name.clone());
            // The entry's position is its name's: recorded first, it wins over the value's.
            self.reader.record(locator.clone(), position);
            let (value, _) = self
                .reader
                .value::<Option<String>, M>(&mut map, locator.clone())?;
            if env.contains_key(&name) {
                let kind = ManifestErrorKind::DuplicateField {
                    field: format!("env.{name}"),
                };
                self.reader.problem(locator, position, kind);
                continue;
            }
            match value {
                Some(value) => {
                    env.insert(name, value);
                }
                None => {
                    let field = format!("env.{name}");
                    let expected = "a string (write \"\" for an empty value)";
                    self.reader
                        .wrong_type(locator, position, field, expected, &Scalar::Null);
                }
            }
        }
        Ok(env)
    }

    mismatch_visits!(BTreeMap<String, String>);
    skip_seq_visit!(BTreeMap<String, String>);
}

/// Reads `resources`: names to capacities. A missing or malformed capacity is reported
/// here and kept as 0, so that units using the resource are not also told it is unknown.
pub(super) struct ResourcesSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) key_position: Option<Position>,
}

impl ResourcesSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> BTreeMap<String, u32> {
        let locator = Locator::Value(Node::Top, "resources");
        let expected = "a mapping of resource names to capacities";
        self.reader.wrong_type(
            locator,
            self.key_position,
            "resources".into(),
            expected,
            &found,
        );
        BTreeMap::new()
    }
}

impl<'de> DeserializeSeed<'de> for ResourcesSeed<'_, '_> {
    type Value = BTreeMap<String, u32>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ResourcesSeed<'_, '_> {
    type Value = BTreeMap<String, u32>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of resource names to capacities")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut resources = BTreeMap::new();
        while let Some((name, position)) = self.reader.next_key(&mut map)? {
            let locator = Locator::Entry(Node::Top, "resources", name.clone());
            // The entry's position is its name's: recorded first, it wins over the value's.
            self.reader.record(locator.clone(), position);
            let (capacity, _) = self.reader.value::<Scalar, M>(&mut map, locator.clone())?;
            if resources.contains_key(&name) {
                let kind = ManifestErrorKind::DuplicateField {
                    field: format!("resources.{name}"),
                };
                self.reader.problem(locator, position, kind);
                continue;
            }
            let capacity = match capacity {
                Scalar::Int(value) if u32::try_from(value).is_ok() => value as u32,
                other => {
                    let found = match other {
                        Scalar::Null => "nothing".to_owned(),
                        other => other.to_string(),
                    };
                    let kind = ManifestErrorKind::InvalidCapacity {
                        resource: name.clone(),
                        found,
                    };
                    self.reader.problem(locator, position, kind);
                    self.reader
                        .notes
                        .borrow_mut()
                        .reported_capacities
                        .insert(name.clone());
                    0
                }
            };
            resources.insert(name, capacity);
        }
        Ok(resources)
    }

    mismatch_visits!(BTreeMap<String, u32>);
    skip_seq_visit!(BTreeMap<String, u32>);
}

/// Reads `uses`: a list of resource names (weight 1 each) or names to weights.
pub(super) struct UsesSeed<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) node: Node,
    pub(super) key_position: Option<Position>,
}

impl UsesSeed<'_, '_> {
    fn mismatch(&self, found: Scalar) -> BTreeMap<String, u32> {
        let locator = Locator::Value(self.node, "uses");
        let expected = "a list of resource names or a mapping of resource names to weights";
        self.reader
            .wrong_type(locator, self.key_position, "uses".into(), expected, &found);
        BTreeMap::new()
    }

    fn insert(
        &self,
        uses: &mut BTreeMap<String, u32>,
        name: String,
        weight: u32,
        position: Option<Position>,
    ) {
        let locator = Locator::Entry(self.node, "uses", name.clone());
        match uses.entry(name) {
            Entry::Occupied(entry) => {
                let kind = ManifestErrorKind::DuplicateResourceUse {
                    resource: entry.key().clone(),
                };
                self.reader.problem(locator, position, kind);
            }
            Entry::Vacant(entry) => {
                self.reader.record(locator, position);
                entry.insert(weight);
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for UsesSeed<'_, '_> {
    type Value = BTreeMap<String, u32>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UsesSeed<'_, '_> {
    type Value = BTreeMap<String, u32>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of resource names or a mapping of resource names to weights")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut uses = BTreeMap::new();
        while let Some((name, position)) = self.reader.element::<Option<String>, S>(&mut seq)? {
            match name {
                Some(name) => self.insert(&mut uses, name, 1, position),
                None => {
                    let kind = ManifestErrorKind::EmptyEntry { field: "uses" };
                    self.reader
                        .problem(Locator::Value(self.node, "uses"), position, kind);
                }
            }
        }
        Ok(uses)
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut uses = BTreeMap::new();
        while let Some((name, position)) = self.reader.next_key(&mut map)? {
            let locator = Locator::Entry(self.node, "uses", name.clone());
            // The entry's position is its name's: recorded first, it wins over the value's.
            self.reader.record(locator.clone(), position);
            let (weight, _) = self.reader.value::<Scalar, M>(&mut map, locator.clone())?;
            match weight.whole::<u32>() {
                Ok(weight) => self.insert(&mut uses, name, weight.unwrap_or(1), position),
                Err(found) => {
                    let field = format!("uses.{name}");
                    self.reader.wrong_type(
                        locator,
                        position,
                        field,
                        "a whole number of 1 or more",
                        &found,
                    );
                }
            }
        }
        Ok(uses)
    }

    mismatch_visits!(BTreeMap<String, u32>);
}
