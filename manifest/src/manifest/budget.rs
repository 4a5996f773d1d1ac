//! The rules of an agent session's settings: budgets whose limits mean something,
//! a price table that can price, and a cost budget (a session's or the batch's)
//! that some source can meter.

use regatta_proto::{AgentAdapter, Budget};

use super::errors::ManifestErrorKind;
use super::position::{Locator, Node, Problem};
use super::suggest;
use super::Manifest;

/// Checks the playbook's `budget` and `prices`, and that a cost budget can be metered.
pub(crate) fn check_playbook(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let playbook = &manifest.playbook;
    if let Some(budget) = &playbook.budget {
        check_budget(budget, Node::PlaybookBudget, problems);
    }
    if let Some(prices) = &playbook.prices {
        if prices.version.trim().is_empty() {
            let kind = ManifestErrorKind::MissingField { field: "version" };
            problems.push(Problem::new(Locator::Value(Node::Prices, "version"), kind));
        }
        if prices.models.is_empty() {
            let kind = ManifestErrorKind::Empty { field: "models" };
            problems.push(Problem::new(Locator::Value(Node::Prices, "models"), kind));
        }
        for (model, price) in &prices.models {
            let locator = Locator::Entry(Node::Prices, "models", model.clone());
            let fields = [
                ("input", Some(price.input)),
                ("cached", price.cached),
                ("output", Some(price.output)),
            ];
            for (field, value) in fields {
                if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                    let model = model.clone();
                    let kind = ManifestErrorKind::InvalidPrice { model, field };
                    problems.push(Problem::new(locator.clone(), kind));
                }
            }
        }
        if let Some(model) = &prices.default {
            if !prices.models.contains_key(model) {
                let names = prices.models.keys().map(String::as_str);
                let kind = ManifestErrorKind::UnknownPriceModel {
                    model: model.clone(),
                    suggestion: suggest::closest(model, names),
                };
                problems.push(Problem::new(Locator::Value(Node::Prices, "default"), kind));
            }
        }
    }
    // An agent that reports no cost, with no table to price its tokens: a cost
    // budget would never be crossed. (Without an adapter, `REGATTA_USAGE` may report
    // a cost, so the rule stays silent.)
    let unpriced = playbook
        .agent
        .filter(|adapter| !adapter.reports_cost() && *adapter != AgentAdapter::Cmd)
        .filter(|_| playbook.prices.is_none());
    if let Some(adapter) = unpriced {
        let playbook_cost = playbook
            .budget
            .as_ref()
            .is_some_and(|b| b.cost_usd.is_some());
        let kind = || ManifestErrorKind::CostBudgetWithoutPrices {
            adapter: adapter.to_string(),
        };
        if playbook_cost {
            let locator = Locator::Value(Node::PlaybookBudget, "cost_usd");
            problems.push(Problem::new(locator, kind()));
        }
        if manifest.budget.is_some() {
            let locator = Locator::Value(Node::BatchBudget, "cost_usd");
            problems.push(Problem::new(locator, kind()));
        }
        for (index, unit) in manifest.units.iter().enumerate() {
            if unit.budget.as_ref().is_some_and(|b| b.cost_usd.is_some()) {
                let locator = Locator::Value(Node::UnitBudget(index), "cost_usd");
                problems.push(Problem::new(locator, kind()));
            }
        }
    }
}

/// Checks that every limit a budget sets is more than zero.
pub(crate) fn check_budget(budget: &Budget, node: Node, problems: &mut Vec<Problem>) {
    let mut refuse = |field| {
        let kind = ManifestErrorKind::BudgetNotPositive { field };
        problems.push(Problem::new(Locator::Value(node, field), kind));
    };
    if budget.tokens == Some(0) {
        refuse("tokens");
    }
    if budget.turns == Some(0) {
        refuse("turns");
    }
    if budget
        .cost_usd
        .is_some_and(|cost| !(cost.is_finite() && cost > 0.0))
    {
        refuse("cost_usd");
    }
    if budget.wall.is_some_and(|wall| wall.is_zero()) {
        refuse("wall");
    }
}

/// Checks the batch's `budget`: a cap of more than zero dollars.
pub(crate) fn check_batch(manifest: &Manifest, problems: &mut Vec<Problem>) {
    if let Some(budget) = &manifest.budget {
        if !(budget.cost_usd.is_finite() && budget.cost_usd > 0.0) {
            let kind = ManifestErrorKind::BudgetNotPositive { field: "cost_usd" };
            let locator = Locator::Value(Node::BatchBudget, "cost_usd");
            problems.push(Problem::new(locator, kind));
        }
    }
}
