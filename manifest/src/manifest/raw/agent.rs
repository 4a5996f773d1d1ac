//! Readers of an agent session's settings: the playbook's `agent:`, `budget:` (also a
//! unit's) and `prices:`, and the batch's `budget:`.

use std::collections::BTreeMap;

use regatta_proto::{AgentAdapter, Budget, ModelPrice, Prices};
use serde::de::{IgnoredAny, MapAccess};

use super::lenient::Lenient;
use super::reader::{Field, Reader};
use super::scalar::{Scalar, Typed};
use crate::manifest::errors::ManifestErrorKind;
use crate::manifest::position::{Locator, Node};
use crate::manifest::BatchBudget;

const BUDGET_FIELDS: &[&str] = &["tokens", "cost_usd", "turns", "wall"];
const BATCH_BUDGET_FIELDS: &[&str] = &["cost_usd"];
const PRICES_FIELDS: &[&str] = &["version", "default", "models"];
const MODEL_FIELDS: &[&str] = &["input", "cached", "output"];

/// `agent: claude-stream-json`, `codex-json` or `cmd`.
impl Typed for AgentAdapter {
    const EXPECTED: &'static str = "'claude-stream-json', 'codex-json' or 'cmd'";

    fn from_scalar(scalar: Scalar) -> Result<Option<AgentAdapter>, Scalar> {
        match scalar {
            Scalar::Null => Ok(None),
            Scalar::Text(text) => match AgentAdapter::from_name(&text) {
                Some(adapter) => Ok(Some(adapter)),
                None => Err(Scalar::Text(text)),
            },
            other => Err(other),
        }
    }
}

/// A large count (`tokens`, `turns`).
impl Typed for u64 {
    const EXPECTED: &'static str = "a whole number of 0 or more";

    fn from_scalar(scalar: Scalar) -> Result<Option<u64>, Scalar> {
        scalar.whole()
    }
}

/// Reads a `budget:` mapping; `node` is where it stands (the playbook's or a unit's).
pub(super) struct BudgetValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
    pub(super) node: Node,
}

impl<'de> Lenient<'de> for BudgetValue<'_, '_> {
    type Value = Option<Budget>;
    const EXPECTING: &'static str = "a mapping with 'tokens', 'cost_usd', 'turns' or 'wall'";

    fn mismatch(self, found: Scalar) -> Option<Budget> {
        self.reader
            .wrong_shape::<()>(self.field, Self::EXPECTING, &found);
        None
    }

    fn null(self) -> Option<Budget> {
        None
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Option<Budget>, M::Error> {
        let reader = self.reader;
        let mut budget = Budget::default();
        reader.fields(
            &mut map,
            self.node,
            "budget",
            BUDGET_FIELDS,
            |field, map| {
                match field.name {
                    "tokens" => budget.tokens = reader.typed(map, field)?,
                    "cost_usd" => budget.cost_usd = reader.typed(map, field)?,
                    "turns" => budget.turns = reader.typed(map, field)?,
                    "wall" => budget.wall = reader.duration(map, field)?,
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(Some(budget))
    }
}

/// Reads the batch's `budget:` mapping: only `cost_usd`, which it needs.
pub(super) struct BatchBudgetValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
}

impl<'de> Lenient<'de> for BatchBudgetValue<'_, '_> {
    type Value = Option<BatchBudget>;
    const EXPECTING: &'static str = "a mapping with 'cost_usd'";

    fn mismatch(self, found: Scalar) -> Option<BatchBudget> {
        self.reader
            .wrong_shape::<()>(self.field, Self::EXPECTING, &found);
        None
    }

    fn null(self) -> Option<BatchBudget> {
        None
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Option<BatchBudget>, M::Error> {
        let reader = self.reader;
        let mut cost_usd = None;
        let mut given = false;
        reader.fields(
            &mut map,
            Node::BatchBudget,
            "batch budget",
            BATCH_BUDGET_FIELDS,
            |field, map| {
                match field.name {
                    "cost_usd" => {
                        given = true;
                        cost_usd = reader.typed(map, field)?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            },
        )?;
        if !given {
            let locator = Locator::Value(Node::BatchBudget, "cost_usd");
            let kind = ManifestErrorKind::MissingField { field: "cost_usd" };
            reader.problem(locator, None, kind);
        }
        // A malformed value was reported as read.
        Ok(cost_usd.map(|cost_usd| BatchBudget { cost_usd }))
    }
}

/// Reads the playbook's `prices:` mapping.
pub(super) struct PricesValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
}

impl<'de> Lenient<'de> for PricesValue<'_, '_> {
    type Value = Option<Prices>;
    const EXPECTING: &'static str = "a mapping with 'version' and 'models'";

    fn mismatch(self, found: Scalar) -> Option<Prices> {
        self.reader
            .wrong_shape::<()>(self.field, Self::EXPECTING, &found);
        None
    }

    fn null(self) -> Option<Prices> {
        None
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Option<Prices>, M::Error> {
        let reader = self.reader;
        let mut prices = Prices::default();
        reader.fields(
            &mut map,
            Node::Prices,
            "prices",
            PRICES_FIELDS,
            |field, map| {
                match field.name {
                    "version" => prices.version = reader.text(map, field)?.unwrap_or_default(),
                    "default" => prices.default = reader.text(map, field)?,
                    "models" => {
                        prices.models = reader.nested(map, field, ModelsValue { reader, field })?
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(Some(prices))
    }
}

/// Reads `prices.models`: model names to their prices.
struct ModelsValue<'r, 'a> {
    reader: &'r Reader<'a>,
    field: Field,
}

impl<'de> Lenient<'de> for ModelsValue<'_, '_> {
    type Value = BTreeMap<String, ModelPrice>;
    const EXPECTING: &'static str = "a mapping of model names to their prices";

    fn mismatch(self, found: Scalar) -> Self::Value {
        self.reader.wrong_shape(self.field, Self::EXPECTING, &found)
    }

    fn null(self) -> Self::Value {
        BTreeMap::new()
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let Self { reader, field } = self;
        let mut models = BTreeMap::new();
        let model = |index| ModelValue { reader, index };
        reader.keyed(&mut map, field, model, |name, position, price| {
            let locator = Locator::Entry(field.node, field.name, name.clone());
            if reader.first_entry(&models, field, &name, &locator, position) {
                models.insert(name, price);
            }
        })?;
        Ok(models)
    }
}

/// Reads one model's prices.
struct ModelValue<'r, 'a> {
    reader: &'r Reader<'a>,
    index: usize,
}

impl<'de> Lenient<'de> for ModelValue<'_, '_> {
    type Value = ModelPrice;
    const EXPECTING: &'static str = "a mapping with 'input', 'output' and maybe 'cached'";

    fn mismatch(self, found: Scalar) -> ModelPrice {
        let kind = ManifestErrorKind::WrongType {
            field: format!("prices.models[{}]", self.index),
            expected: Self::EXPECTING,
            found: found.to_string(),
        };
        let locator = Locator::Node(Node::PriceModel(self.index));
        self.reader.problem(locator, None, kind);
        ModelPrice::default()
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<ModelPrice, M::Error> {
        let reader = self.reader;
        let mut price = ModelPrice {
            input: f64::NAN,
            cached: None,
            output: f64::NAN,
        };
        let node = Node::PriceModel(self.index);
        reader.fields(&mut map, node, "model price", MODEL_FIELDS, |field, map| {
            match field.name {
                "input" => price.input = reader.typed(map, field)?.unwrap_or(f64::NAN),
                "cached" => price.cached = reader.typed(map, field)?,
                "output" => price.output = reader.typed(map, field)?.unwrap_or(f64::NAN),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        Ok(price)
    }
}
