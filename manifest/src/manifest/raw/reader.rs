//! The reading's state and its primitives: field walking, positions, lenient scalars,
//! and the walks shared by list and map fields.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::lenient::Lenient;
use super::scalar::{DurationText, Scalar, Typed};
use super::values::ListValue;
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

    /// Reads a `T`, with its position when the reading records positions.
    fn placed<T>(&self) -> Placed<T> {
        Placed {
            positions: self.positions_on(),
            value: PhantomData,
        }
    }

    /// Reads the value of a field, recording its position under `locator`.
    fn value<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        locator: Locator,
    ) -> Result<(T, Option<Position>), A::Error> {
        let (value, position) = map.next_value_seed(self.placed())?;
        self.record(locator, position);
        Ok((value, position))
    }

    /// Walks a mapping's fields, reporting unknown and repeated ones and handing each
    /// known field to `read`.
    pub(super) fn fields<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        node: Node,
        place: &'static str,
        known: &'static [&'static str],
        mut read: impl FnMut(Field, &mut A) -> Result<(), A::Error>,
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
                    let field = Field {
                        node,
                        name: known[index],
                        key_position,
                    };
                    read(field, map)?;
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
            Ok(map
                .next_key_seed(self.placed::<String>())?
                .map(|(key, position)| (Key::of(&key, known), position)))
        } else {
            Ok(map.next_key_seed(KeySeed { known })?.map(|key| (key, None)))
        }
    }

    /// Reads a field whose value is a mapping or a list, recording its place at its key.
    pub(super) fn nested<'de, A: MapAccess<'de>, L: Lenient<'de>>(
        &self,
        map: &mut A,
        field: Field,
        value: L,
    ) -> Result<L::Value, A::Error> {
        self.record(field.locator(), field.key_position);
        map.next_value_seed(value.seed())
    }

    /// Reports a field whose value has the wrong shape, at the field's key; an empty
    /// value stands in for it.
    pub(super) fn wrong_shape<T: Default>(
        &self,
        field: Field,
        expected: &'static str,
        found: &Scalar,
    ) -> T {
        let name = field.name.to_owned();
        self.wrong_type(field.locator(), field.key_position, name, expected, found);
        T::default()
    }

    pub(super) fn text<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        field: Field,
    ) -> Result<Option<String>, A::Error> {
        Ok(self.value(map, field.locator())?.0)
    }

    /// Reads a scalar field as a `T`, reporting a value of another type.
    pub(super) fn typed<'de, T: Typed, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        field: Field,
    ) -> Result<Option<T>, A::Error> {
        Ok(self.typed_at(map, field)?.0)
    }

    fn typed_at<'de, T: Typed, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        field: Field,
    ) -> Result<(Option<T>, Option<Position>), A::Error> {
        let (scalar, position) = self.value(map, field.locator())?;
        let value = T::from_scalar(scalar).unwrap_or_else(|found| {
            let name = field.name.to_owned();
            self.wrong_type(field.locator(), position, name, T::EXPECTED, &found);
            None
        });
        Ok((value, position))
    }

    pub(super) fn duration<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        field: Field,
    ) -> Result<Option<Duration>, A::Error> {
        let (text, position) = self.typed_at::<DurationText, A>(map, field)?;
        let Some(DurationText(text)) = text else {
            return Ok(None);
        };
        Ok(match duration::parse(&text) {
            Ok(value) => Some(value),
            Err(reason) => {
                let kind = ManifestErrorKind::InvalidDuration {
                    field: field.name,
                    value: text,
                    reason,
                };
                self.problem(field.locator(), position, kind);
                None
            }
        })
    }

    /// Reads a list of strings; `None` when the field is null.
    pub(super) fn list<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        field: Field,
    ) -> Result<Option<Vec<String>>, A::Error> {
        self.nested(
            map,
            field,
            ListValue {
                reader: self,
                field,
            },
        )
    }

    /// Walks the names of a list (`depends_on`, `uses`...), reporting empty entries.
    pub(super) fn names<'de, S: SeqAccess<'de>>(
        &self,
        seq: &mut S,
        field: Field,
        mut each: impl FnMut(String, Option<Position>),
    ) -> Result<(), S::Error> {
        while let Some((name, position)) = seq.next_element_seed(self.placed())? {
            match name {
                Some(name) => each(name, position),
                None => {
                    let kind = ManifestErrorKind::EmptyEntry { field: field.name };
                    self.problem(field.locator(), position, kind);
                }
            }
        }
        Ok(())
    }

    /// Walks the entries of a map field (`env`, `resources`, `uses`), recording each at
    /// its name: recorded first, the name's position wins over the value's.
    pub(super) fn entries<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        field: Field,
        mut each: impl FnMut(String, Locator, Option<Position>, T),
    ) -> Result<(), A::Error> {
        while let Some((name, position)) = map.next_key_seed(self.placed::<String>())? {
            let locator = Locator::Entry(field.node, field.name, name.clone());
            self.record(locator.clone(), position);
            let (value, _) = self.value(map, locator.clone())?;
            each(name, locator, position, value);
        }
        Ok(())
    }

    /// Tells whether `name` is new among a map field's entries; reports it otherwise.
    pub(super) fn first_entry<V>(
        &self,
        entries: &BTreeMap<String, V>,
        field: Field,
        name: &str,
        locator: &Locator,
        position: Option<Position>,
    ) -> bool {
        let first = !entries.contains_key(name);
        if !first {
            let kind = ManifestErrorKind::DuplicateField {
                field: format!("{}.{name}", field.name),
            };
            self.problem(locator.clone(), position, kind);
        }
        first
    }

    /// Walks a map whose values are mappings (`prices.models`), each value read by the
    /// reader `element` makes for its index, so that indices agree between the two
    /// readings; `each` gets the name, its position and the value.
    pub(super) fn keyed<'de, A: MapAccess<'de>, L: Lenient<'de>>(
        &self,
        map: &mut A,
        field: Field,
        element: impl Fn(usize) -> L,
        mut each: impl FnMut(String, Option<Position>, L::Value),
    ) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some((name, position)) = map.next_key_seed(self.placed::<String>())? {
            self.record(
                Locator::Entry(field.node, field.name, name.clone()),
                position,
            );
            let value = map.next_value_seed(element(index).seed())?;
            each(name, position, value);
            index += 1;
        }
        Ok(())
    }

    /// Reads the elements of a list of mappings (`units`, `gates`), each knowing its index
    /// even when malformed, so that indices agree between the two readings.
    pub(super) fn indexed<'de, S: SeqAccess<'de>, L: Lenient<'de>>(
        &self,
        seq: &mut S,
        element: impl Fn(usize) -> L,
        mut each: impl FnMut(L::Value),
    ) -> Result<(), S::Error> {
        let mut index = 0;
        while let Some(value) = seq.next_element_seed(element(index).seed())? {
            each(value);
            index += 1;
        }
        Ok(())
    }
}

/// A field being read: the place of its value, and where its key stands.
#[derive(Clone, Copy)]
pub(super) struct Field {
    pub(super) node: Node,
    pub(super) name: &'static str,
    pub(super) key_position: Option<Position>,
}

impl Field {
    pub(super) fn locator(&self) -> Locator {
        Locator::Value(self.node, self.name)
    }
}

/// Reads a `T`, and its position when `positions` is on (a position costs time and memory).
struct Placed<T> {
    positions: bool,
    value: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Placed<T> {
    type Value = (T, Option<Position>);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.positions {
            let spanned = Spanned::<T>::deserialize(deserializer)?;
            Ok((spanned.value, Position::from_location(&spanned.referenced)))
        } else {
            Ok((T::deserialize(deserializer)?, None))
        }
    }
}

/// A mapping key: the index of a known field name, or an unknown name.
enum Key {
    Known(usize),
    Unknown(String),
}

impl Key {
    fn of(name: &str, known: &[&str]) -> Key {
        match known.iter().position(|field| *field == name) {
            Some(index) => Key::Known(index),
            None => Key::Unknown(name.to_owned()),
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
        Ok(Key::of(name, self.known))
    }
}
