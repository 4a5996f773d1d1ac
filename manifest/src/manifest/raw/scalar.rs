//! Scalars read without knowing their type, so that a wrong type becomes a reported
//! problem rather than the end of the reading.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A scalar read without knowing its type, so that a wrong type becomes a reported
/// problem rather than the end of the reading.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
    List,
    Mapping,
}

impl Scalar {
    /// Converts to a whole number type; `Ok(None)` for null, `Err(self)` for anything else.
    pub(super) fn whole<T: TryFrom<i128>>(self) -> Result<Option<T>, Scalar> {
        match self {
            Scalar::Null => Ok(None),
            Scalar::Int(value) => T::try_from(value).map(Some).map_err(|_| Scalar::Int(value)),
            other => Err(other),
        }
    }
}

/// A type a scalar field is read as: a value of any other type is reported as
/// `expected`, not a reason to stop the reading.
pub(super) trait Typed: Sized {
    const EXPECTED: &'static str;

    /// `Ok(None)` for null, `Err` with the scalar for a value of another type.
    fn from_scalar(scalar: Scalar) -> Result<Option<Self>, Scalar>;
}

/// A count (`concurrency`, `retries`, `repairs`...).
impl Typed for u32 {
    const EXPECTED: &'static str = "a whole number of 0 or more";

    fn from_scalar(scalar: Scalar) -> Result<Option<u32>, Scalar> {
        scalar.whole()
    }
}

/// A signed whole number (`priority`).
impl Typed for i32 {
    const EXPECTED: &'static str = "a whole number";

    fn from_scalar(scalar: Scalar) -> Result<Option<i32>, Scalar> {
        scalar.whole()
    }
}

/// A number (`calibration_auto`); whole numbers too, while f64 holds them exactly.
impl Typed for f64 {
    const EXPECTED: &'static str = "a number";

    fn from_scalar(scalar: Scalar) -> Result<Option<f64>, Scalar> {
        match scalar {
            Scalar::Null => Ok(None),
            Scalar::Float(value) => Ok(Some(value)),
            Scalar::Int(value) if value.abs() < 1 << 53 => Ok(Some(value as f64)),
            other => Err(other),
        }
    }
}

impl Typed for bool {
    const EXPECTED: &'static str = "true or false";

    fn from_scalar(scalar: Scalar) -> Result<Option<bool>, Scalar> {
        match scalar {
            Scalar::Null => Ok(None),
            Scalar::Bool(value) => Ok(Some(value)),
            other => Err(other),
        }
    }
}

/// The text of a duration, parsed once its type is right: a string, or a whole number
/// of seconds.
pub(super) struct DurationText(pub(super) String);

impl Typed for DurationText {
    const EXPECTED: &'static str = "a duration such as '90s' or '1h30m'";

    fn from_scalar(scalar: Scalar) -> Result<Option<DurationText>, Scalar> {
        match scalar {
            Scalar::Null => Ok(None),
            Scalar::Text(text) => Ok(Some(DurationText(text))),
            Scalar::Int(number) => Ok(Some(DurationText(number.to_string()))),
            other => Err(other),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Null => f.write_str("nothing"),
            Scalar::Bool(value) => write!(f, "{value}"),
            Scalar::Int(value) => write!(f, "{value}"),
            Scalar::Float(value) => write!(f, "{value}"),
            Scalar::Text(text) => write!(f, "'{text}'"),
            Scalar::List => f.write_str("a list"),
            Scalar::Mapping => f.write_str("a mapping"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Scalar, E> {
        Ok(i128::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Mapping)
    }
}
