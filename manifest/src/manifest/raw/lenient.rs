//! One serde visitor for every value the reading takes in whatever shape it arrives: each
//! reader says what it does with the shapes it accepts, and any other shape is skipped
//! and reported instead of stopping the reading.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::scalar::Scalar;

/// A value read by shape (a mapping, a list, a string...). The defaults skip the value
/// and hand what was found to [`Lenient::mismatch`].
pub(super) trait Lenient<'de>: Sized {
    type Value;

    /// What the value should be, for serde's own messages.
    const EXPECTING: &'static str;

    /// Reports a value of the wrong shape (already skipped); gives what stands in for it.
    fn mismatch(self, found: Scalar) -> Self::Value;

    fn null(self) -> Self::Value {
        self.mismatch(Scalar::Null)
    }

    fn text(self, text: &str) -> Self::Value {
        self.mismatch(Scalar::Text(text.to_owned()))
    }

    fn list<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.mismatch(Scalar::List))
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.mismatch(Scalar::Mapping))
    }

    /// The seed that reads this value from a deserializer.
    fn seed(self) -> Seed<Self> {
        Seed(self)
    }
}

/// Drives a [`Lenient`] value from serde.
pub(super) struct Seed<L>(L);

impl<'de, L: Lenient<'de>> DeserializeSeed<'de> for Seed<L> {
    type Value = L::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<L::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, L: Lenient<'de>> Visitor<'de> for Seed<L> {
    type Value = L::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(L::EXPECTING)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<L::Value, E> {
        Ok(self.0.mismatch(Scalar::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<L::Value, E> {
        Ok(self.0.mismatch(Scalar::Int(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<L::Value, E> {
        Ok(self.0.mismatch(Scalar::Int(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<L::Value, E> {
        Ok(self.0.mismatch(Scalar::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<L::Value, E> {
        Ok(self.0.text(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<L::Value, E> {
        Ok(self.0.null())
    }
    fn visit_none<E: de::Error>(self) -> Result<L::Value, E> {
        Ok(self.0.null())
    }
    fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<L::Value, S::Error> {
        self.0.list(seq)
    }
    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<L::Value, M::Error> {
        self.0.mapping(map)
    }
}
