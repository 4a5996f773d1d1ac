//! Readers of the list and map fields: string lists, `env`, `resources`, `uses`.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::de::{MapAccess, SeqAccess};

use super::lenient::Lenient;
use super::reader::{Field, Reader};
use super::scalar::Scalar;
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Position};

/// Reads a list of strings (`depends_on`, `inputs`, `verify`...); `None` when null.
pub(super) struct ListValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
}

impl<'de> Lenient<'de> for ListValue<'_, '_> {
    type Value = Option<Vec<String>>;
    const EXPECTING: &'static str = "a list";

    fn mismatch(self, found: Scalar) -> Self::Value {
        Some(self.reader.wrong_shape(self.field, Self::EXPECTING, &found))
    }

    fn null(self) -> Self::Value {
        None
    }

    fn list<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let Self { reader, field } = self;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        reader.names(&mut seq, field, |text, position| {
            let locator = Locator::Item(field.node, field.name, items.len());
            reader.record(locator, position);
            items.push(text);
        })?;
        Ok(Some(items))
    }
}

/// Reads `env`: variable names to string values.
pub(super) struct EnvValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
}

impl<'de> Lenient<'de> for EnvValue<'_, '_> {
    type Value = BTreeMap<String, String>;
    const EXPECTING: &'static str = "a mapping of variable names to strings";

    fn mismatch(self, found: Scalar) -> Self::Value {
        self.reader.wrong_shape(self.field, Self::EXPECTING, &found)
    }

    fn null(self) -> Self::Value {
        BTreeMap::new()
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let Self { reader, field } = self;
        let mut env = BTreeMap::new();
        reader.entries(&mut map, field, |name, locator, position, value| {
            if !reader.first_entry(&env, field, &name, &locator, position) {
                return;
            }
            match value {
                Some(value) => {
                    env.insert(name, value);
                }
                None => {
                    let name = format!("env.{name}");
                    let expected = "a string (write \"\" for an empty value)";
                    reader.wrong_type(locator, position, name, expected, &Scalar::Null);
                }
            }
        })?;
        Ok(env)
    }
}

/// Reads `resources`: names to capacities. A missing or malformed capacity is reported
/// here and kept as 0, so that units using the resource are not also told it is unknown.
pub(super) struct ResourcesValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
}

impl<'de> Lenient<'de> for ResourcesValue<'_, '_> {
    type Value = BTreeMap<String, u32>;
    const EXPECTING: &'static str = "a mapping of resource names to capacities";

    fn mismatch(self, found: Scalar) -> Self::Value {
        self.reader.wrong_shape(self.field, Self::EXPECTING, &found)
    }

    fn null(self) -> Self::Value {
        BTreeMap::new()
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let Self { reader, field } = self;
        let mut resources = BTreeMap::new();
        reader.entries(&mut map, field, |name, locator, position, capacity| {
            if !reader.first_entry(&resources, field, &name, &locator, position) {
                return;
            }
            let capacity = match capacity {
                Scalar::Int(value) if u32::try_from(value).is_ok() => value as u32,
                found => {
                    let kind = ManifestErrorKind::InvalidCapacity {
                        resource: name.clone(),
                        found: found.to_string(),
                    };
                    reader.problem(locator, position, kind);
                    let mut notes = reader.notes.borrow_mut();
                    notes.reported_capacities.insert(name.clone());
                    0
                }
            };
            resources.insert(name, capacity);
        })?;
        Ok(resources)
    }
}

/// Reads `uses`: a list of resource names (weight 1 each) or names to weights.
pub(super) struct UsesValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
}

impl UsesValue<'_, '_> {
    fn insert(
        &self,
        uses: &mut BTreeMap<String, u32>,
        name: String,
        weight: u32,
        position: Option<Position>,
    ) {
        let locator = Locator::Entry(self.field.node, self.field.name, name.clone());
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

impl<'de> Lenient<'de> for UsesValue<'_, '_> {
    type Value = BTreeMap<String, u32>;
    const EXPECTING: &'static str =
        "a list of resource names or a mapping of resource names to weights";

    fn mismatch(self, found: Scalar) -> Self::Value {
        self.reader.wrong_shape(self.field, Self::EXPECTING, &found)
    }

    fn null(self) -> Self::Value {
        BTreeMap::new()
    }

    fn list<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut uses = BTreeMap::new();
        self.reader.names(&mut seq, self.field, |name, position| {
            self.insert(&mut uses, name, 1, position);
        })?;
        Ok(uses)
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut uses = BTreeMap::new();
        let reader = self.reader;
        reader.entries(
            &mut map,
            self.field,
            |name, locator, position, weight| match Scalar::whole::<u32>(weight) {
                Ok(weight) => self.insert(&mut uses, name, weight.unwrap_or(1), position),
                Err(found) => {
                    let name = format!("uses.{name}");
                    let expected = "a whole number of 1 or more";
                    reader.wrong_type(locator, position, name, expected, &found);
                }
            },
        )?;
        Ok(uses)
    }
}
