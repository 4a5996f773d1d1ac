//! The reading's state and its primitives: field walking, positions, lenient scalars.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::scalar::Scalar;
use super::values::ListSeed;
use super::{Fatal, Notes, Reading, Wanted};
use crate::duration;
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Node, Position, PositionTable, Problem};
use crate::manifest::suggest;

/// Prefix of top-level keys that regatta ignores, as Docker Compose does: they hold YAML
/// anchors for reuse (`x-defaults: &defaults`), while any other unknown key is a typo.
pub(crate) const EXTENSION_PREFIX: &str = "x-";

/// Collects problems and positions while the visitors read a text.
pub(crate) struct Reader<'a> {
    wanted: Wanted<'a>,
    positions: RefCell<PositionTable>,
    problems: RefCell<Vec<Problem>>,
    pub(super) notes: RefCell<Notes>,
    /// The mapping (and field) being read, to say where a fatal problem struck.
    cursor: Cell<Option<(Node, Option<&'static str>)>>,
    pub(super) unit_ids: RefCell<Vec<String>>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(wanted: Wanted<'a>) -> Self {
        Reader {
            wanted,
            positions: RefCell::default(),
            problems: RefCell::default(),
            notes: RefCell::default(),
            cursor: Cell::new(None),
            unit_ids: RefCell::default(),
        }
    }

    pub(super) fn finish<T>(self, outcome: Result<T, Fatal>, root: Node) -> Reading<T> {
        let mut problems = self.problems.into_inner();
        let value = match outcome {
            Ok(value) => Some(value),
            Err(fatal) => {
                let (locator, message) = match self.cursor.get() {
                    Some((node, Some(field))) => (
                        Locator::Value(node, field),
                        format!("'{field}': {}", fatal.message),
                    ),
                    Some((node, None)) => (Locator::Node(node), fatal.message),
                    None => (Locator::Node(root), fatal.message),
                };
                problems.push(
                    Problem::new(locator, ManifestErrorKind::Syntax { message }).at(fatal.position),
                );
                None
            }
        };
        Reading {
            value,
            problems,
            positions: self.positions.into_inner(),
            notes: self.notes.into_inner(),
            unit_ids: self.unit_ids.into_inner(),
        }
    }

    pub(super) fn positions_on(&self) -> bool {
        !matches!(self.wanted, Wanted::Nothing)
    }

    /// Tells whether to keep the units read. A reading for the positions of known
    /// problems only needs their places (and ids), not a second copy of every unit.
    pub(super) fn keeps_units(&self) -> bool {
        !matches!(self.wanted, Wanted::Some(_))
    }

    pub(super) fn record(&self, locator: Locator, position: Option<Position>) {
        let Some(position) = position else { return };
        let wanted = match self.wanted {
            Wanted::Nothing => false,
            Wanted::All => true,
            Wanted::Some(set) => set.contains(&locator),
        };
        if wanted {
            self.positions
                .borrow_mut()
                .entry(locator)
                .or_insert(position);
        }
    }

    pub(super) fn problem(
        &self,
        locator: Locator,
        position: Option<Position>,
        kind: ManifestErrorKind,
    ) {
        self.problems
            .borrow_mut()
            .push(Problem::new(locator, kind).at(position));
    }

    pub(super) fn wrong_type(
        &self,
        locator: Locator,
        position: Option<Position>,
        field: String,
        expected: &'static str,
        found: &Scalar,
    ) {
        let kind = ManifestErrorKind::WrongType {
            field,
            expected,
            found: found.to_string(),
        };
        self.problem(locator, position, kind);
    }

    pub(super) fn next_key<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
    ) -> Result<Option<(String, Option<Position>)>, A::Error> {
        if self.positions_on() {
            Ok(map
                .next_key::<Spanned<String>>()?
                .map(|key| (key.value, Position::from_location(&key.referenced))))
        } else {
            Ok(map.next_key::<String>()?.map(|key| (key, None)))
        }
    }

    /// Reads the value of a known field, recording its position under `locator`.
    pub(super) fn value<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        locator: Locator,
    ) -> Result<(T, Option<Position>), A::Error> {
        if self.positions_on() {
            let spanned: Spanned<T> = map.next_value()?;
            let position = Position::from_location(&spanned.referenced);
            self.record(locator, position);
            Ok((spanned.value, position))
        } else {
            Ok((map.next_value()?, None))
        }
    }

    pub(super) fn element<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
        &self,
        seq: &mut A,
    ) -> Result<Option<(T, Option<Position>)>, A::Error> {
        if self.positions_on() {
            Ok(seq
                .next_element::<Spanned<T>>()?
                .map(|s| (s.value, Position::from_location(&s.referenced))))
        } else {
            Ok(seq.next_element::<T>()?.map(|value| (value, None)))
        }
    }

    /// Walks a mapping's fields, reporting unknown and repeated ones and handing each
    /// known field to `read`.
    pub(super) fn fields<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        place: &'static str,
        known: &'static [&'static str],
        mut read: impl FnMut(&'static str, Option<Position>, &mut A) -> Result<(), A::Error>,
    ) -> Result<(), A::Error> {
        let outer = self.cursor.replace(Some((node, None)));
        let mut seen = 0u64;
        let mut first = true;
        while let Some((key, key_position)) = self.next_field(map, known)? {
            if first {
                self.record(Locator::Node(node), key_position);
                first = false;
            }
            match key {
                Key::Known(index) if seen & (1 << index) != 0 => {
                    let kind = ManifestErrorKind::DuplicateField {
                        field: known[index].to_owned(),
                    };
                    self.problem(Locator::Node(node), key_position, kind);
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Known(index) => {
                    seen |= 1 << index;
                    self.cursor.set(Some((node, Some(known[index]))));
                    read(known[index], key_position, map)?;
                    self.cursor.set(Some((node, None)));
                }
                Key::Unknown(key) if node == Node::Top && key.starts_with(EXTENSION_PREFIX) => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Unknown(key) => {
                    let suggestion = suggest::closest(&key, known.iter().copied());
                    let kind = ManifestErrorKind::UnknownField {
                        field: key,
                        place,
                        suggestion,
                    };
                    self.problem(Locator::Node(node), key_position, kind);
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.cursor.set(outer);
        Ok(())
    }

    /// Reads a mapping key as one of the `known` field names; only an unknown key is
    /// copied (a million units have a dozen million keys).
    fn next_field<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        known: &'static [&'static str],
    ) -> Result<Option<(Key, Option<Position>)>, A::Error> {
        if self.positions_on() {
            Ok(map.next_key::<Spanned<String>>()?.map(|key| {
                let position = Position::from_location(&key.referenced);
                (Key::of(key.value, known), position)
            }))
        } else {
            Ok(map.next_key_seed(KeySeed { known })?.map(|key| (key, None)))
        }
    }

    pub(super) fn text<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
    ) -> Result<Option<String>, A::Error> {
        Ok(self
            .value::<Option<String>, A>(map, Locator::Value(node, field))?
            .0)
    }

    pub(super) fn scalar<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
    ) -> Result<(Scalar, Option<Position>), A::Error> {
        self.value::<Scalar, A>(map, Locator::Value(node, field))
    }

    pub(super) fn count<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
    ) -> Result<Option<u32>, A::Error> {
        let (scalar, position) = self.scalar(map, node, field)?;
        Ok(match scalar.whole::<u32>() {
            Ok(value) => value,
            Err(found) => {
                let locator = Locator::Value(node, field);
                self.wrong_type(
                    locator,
                    position,
                    field.to_owned(),
                    "a whole number of 0 or more",
                    &found,
                );
                None
            }
        })
    }

    pub(super) fn integer<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
    ) -> Result<Option<i32>, A::Error> {
        let (scalar, position) = self.scalar(map, node, field)?;
        Ok(match scalar.whole::<i32>() {
            Ok(value) => value,
            Err(found) => {
                let locator = Locator::Value(node, field);
                self.wrong_type(
                    locator,
                    position,
                    field.to_owned(),
                    "a whole number",
                    &found,
                );
                None
            }
        })
    }

    pub(super) fn fraction<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
    ) -> Result<Option<f64>, A::Error> {
        let (scalar, position) = self.scalar(map, node, field)?;
        Ok(match scalar {
            Scalar::Null => None,
            Scalar::Float(value) => Some(value),
            // Whole numbers this small convert to f64 exactly.
            Scalar::Int(value) if value.abs() < 1 << 53 => Some(value as f64),
            found => {
                let locator = Locator::Value(node, field);
                self.wrong_type(locator, position, field.to_owned(), "a number", &found);
                None
            }
        })
    }

    pub(super) fn flag<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
    ) -> Result<Option<bool>, A::Error> {
        let (scalar, position) = self.scalar(map, node, field)?;
        Ok(match scalar {
            Scalar::Null => None,
            Scalar::Bool(value) => Some(value),
            found => {
                let locator = Locator::Value(node, field);
                self.wrong_type(locator, position, field.to_owned(), "true or false", &found);
                None
            }
        })
    }

    pub(super) fn duration<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
    ) -> Result<Option<Duration>, A::Error> {
        let (scalar, position) = self.scalar(map, node, field)?;
        let locator = Locator::Value(node, field);
        let text = match scalar {
            Scalar::Null => return Ok(None),
            Scalar::Text(text) => text,
            Scalar::Int(number) => number.to_string(),
            found => {
                self.wrong_type(
                    locator,
                    position,
                    field.to_owned(),
                    "a duration such as '90s' or '1h30m'",
                    &found,
                );
                return Ok(None);
            }
        };
        Ok(match duration::parse(&text) {
            Ok(value) => Some(value),
            Err(reason) => {
                let kind = ManifestErrorKind::InvalidDuration {
                    field,
                    value: text,
                    reason,
                };
                self.problem(locator, position, kind);
                None
            }
        })
    }

    /// Reads a list of strings; `None` when the field is null.
    pub(super) fn list<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        field: &'static str,
        key_position: Option<Position>,
    ) -> Result<Option<Vec<String>>, A::Error> {
        self.record(Locator::Value(node, field), key_position);
        map.next_value_seed(ListSeed {
            reader: self,
            node,
            field,
            key_position,
        })
    }
}

/// A mapping key: the index of a known field name, or an unknown name.
pub(super) enum Key {
    Known(usize),
    Unknown(String),
}

impl Key {
    fn of(name: String, known: &[&str]) -> Key {
        match known.iter().position(|field| *field == name) {
            Some(index) => Key::Known(index),
            None => Key::Unknown(name),
        }
    }
}

/// Reads a key without copying it when it is a known field name.
struct KeySeed {
    known: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Key, E> {
        Ok(match self.known.iter().position(|field| *field == name) {
            Some(index) => Key::Known(index),
            None => Key::Unknown(name.to_owned()),
        })
    }
}
