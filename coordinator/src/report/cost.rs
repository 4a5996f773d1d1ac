//! What the sessions cost, from the usage each agent session reported
//! (`Usage`, proto/src/agent.rs): per unit (every attempt counts), per
//! failure cluster, and the batch's projected total once units have ended
//! (the calibration's first, when the batch calibrates), so that a person
//! approving the rest of a batch knows what it will spend.

use std::fmt::Write as _;

use serde::Serialize;

use regatta_proto::{Prices, Usage};

use super::Input;
use crate::scheduler::{BatchState, UnitState};

/// The most units the HTML and Markdown list by cost (JSON has them all).
pub const LISTED_UNITS: usize = 10;

/// The batch's spend.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Cost {
    /// Sessions that reported usage.
    pub sessions: usize,
    /// Of those, the ones whose cost comes from the manifest's price table
    /// (their agent reported tokens only).
    pub priced_by_table: usize,
    pub tokens: u64,
    pub spent_usd: f64,
    /// Units with a cost, most expensive first.
    pub units: Vec<UnitCost>,
    /// The mean, median and largest cost of a unit that ended.
    pub per_unit: Option<PerUnit>,
    pub projection: Option<Projection>,
}

/// One unit's sessions, summed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitCost {
    pub unit: String,
    pub sessions: usize,
    pub tokens: u64,
    pub cost_usd: f64,
}

/// Cost per unit that ended (succeeded, landed or in review).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PerUnit {
    pub units: usize,
    pub mean_usd: f64,
    pub p50_usd: f64,
    pub max_usd: f64,
}

/// What the whole batch will have cost: spent so far, plus the mean cost
/// of an ended unit for each unit still to run, and for each running unit
/// what the mean leaves beyond what it spent already.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Projection {
    /// The mean comes from the calibration units (the batch calibrates and
    /// waits for approval, or still calibrates).
    pub from_calibration: bool,
    pub basis_units: usize,
    pub mean_unit_usd: f64,
    /// Units pending, ready, queued or running.
    pub units_to_come: usize,
    pub projected_total_usd: f64,
}

/// A session's cost: what its agent reported, else its tokens at the
/// manifest's prices; `None` without usage or without a price.
pub fn session_cost(usage: &Usage, prices: Option<&Prices>) -> Option<(f64, bool)> {
    if let Some(cost) = usage.cost_usd {
        return Some((cost, false));
    }
    if usage.tokens() == 0 {
        return None;
    }
    prices?.cost(None, usage).map(|cost| (cost, true))
}

impl Cost {
    pub fn build(input: &Input) -> Cost {
        let prices = input
            .manifest
            .as_ref()
            .and_then(|m| m.playbook.prices.as_ref());
        let mut cost = Cost::default();
        let mut ended = Vec::new();
        let mut to_come = Vec::new();
        for unit in &input.units {
            let mut unit_cost = UnitCost {
                unit: unit.id.clone(),
                sessions: 0,
                tokens: 0,
                cost_usd: 0.0,
            };
            for usage in unit.history.iter().filter_map(|a| a.usage.as_ref()) {
                let Some((usd, by_table)) = session_cost(usage, prices) else {
                    continue;
                };
                unit_cost.sessions += 1;
                unit_cost.tokens += usage.tokens();
                unit_cost.cost_usd += usd;
                cost.priced_by_table += usize::from(by_table);
            }
            cost.sessions += unit_cost.sessions;
            cost.tokens += unit_cost.tokens;
            cost.spent_usd += unit_cost.cost_usd;
            match unit.state {
                UnitState::Succeeded | UnitState::Landed | UnitState::NeedsReview
                    if unit_cost.sessions > 0 =>
                {
                    ended.push(unit_cost.cost_usd)
                }
                UnitState::Pending | UnitState::Ready | UnitState::Queued => to_come.push(0.0),
                UnitState::Running => to_come.push(unit_cost.cost_usd),
                _ => {}
            }
            if unit_cost.sessions > 0 {
                cost.units.push(unit_cost);
            }
        }
        cost.units.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then_with(|| a.unit.cmp(&b.unit))
        });
        if ended.is_empty() {
            return cost;
        }
        ended.sort_by(f64::total_cmp);
        let mean = ended.iter().sum::<f64>() / ended.len() as f64;
        cost.per_unit = Some(PerUnit {
            units: ended.len(),
            mean_usd: mean,
            p50_usd: ended[(ended.len() - 1) / 2],
            max_usd: ended[ended.len() - 1],
        });
        let still = to_come
            .iter()
            .map(|spent| (mean - spent).max(0.0))
            .sum::<f64>();
        cost.projection = Some(Projection {
            from_calibration: input.summary.calibration.is_some()
                && matches!(
                    input.summary.state,
                    BatchState::Calibrating | BatchState::AwaitingApproval
                ),
            basis_units: ended.len(),
            mean_unit_usd: mean,
            units_to_come: to_come.len(),
            projected_total_usd: cost.spent_usd + still,
        });
        cost
    }
}

impl Cost {
    /// The Markdown section.
    pub fn markdown(&self) -> String {
        let mut md = String::from("\n## Cost\n\n");
        if self.sessions == 0 {
            md.push_str("No session reported usage.\n");
            return md;
        }
        let _ = writeln!(
            md,
            "{} spent over {} sessions ({} tokens; {} priced by the manifest's price table).\n",
            usd(self.spent_usd),
            self.sessions,
            self.tokens,
            self.priced_by_table
        );
        if let Some(p) = &self.per_unit {
            let _ = writeln!(
                md,
                "Per unit that ended ({}): mean {}, median {}, max {}.\n",
                p.units,
                usd(p.mean_usd),
                usd(p.p50_usd),
                usd(p.max_usd)
            );
        }
        if let Some(p) = &self.projection {
            let _ = writeln!(
                md,
                "Projected total: **{}** ({} units to come at {} each, from {} {}).\n",
                usd(p.projected_total_usd),
                p.units_to_come,
                usd(p.mean_unit_usd),
                p.basis_units,
                if p.from_calibration {
                    "calibration units"
                } else {
                    "ended units"
                }
            );
        }
        md.push_str("| unit | sessions | tokens | cost |\n|---|---:|---:|---:|\n");
        for u in self.units.iter().take(LISTED_UNITS) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                u.unit,
                u.sessions,
                u.tokens,
                usd(u.cost_usd)
            );
        }
        md
    }

    /// The HTML section (`esc` escapes text for it).
    pub fn html(&self, esc: fn(&str) -> String) -> String {
        let mut page = String::from("<h2>Cost</h2>");
        if self.sessions == 0 {
            page.push_str("<p>No session reported usage.</p>");
            return page;
        }
        let _ = write!(
            page,
            "<p><b>{}</b> spent over {} sessions ({} tokens; {} priced by the manifest's price table).</p>",
            usd(self.spent_usd),
            self.sessions,
            self.tokens,
            self.priced_by_table
        );
        if let Some(p) = &self.per_unit {
            let _ = write!(
                page,
                "<p>Per unit that ended ({}): mean {}, median {}, max {}.</p>",
                p.units,
                usd(p.mean_usd),
                usd(p.p50_usd),
                usd(p.max_usd)
            );
        }
        if let Some(p) = &self.projection {
            let _ = write!(
                page,
                "<p id=\"projection\">Projected total: <b>{}</b> ({} units to come at {} each, from {} {}).</p>",
                usd(p.projected_total_usd),
                p.units_to_come,
                usd(p.mean_unit_usd),
                p.basis_units,
                if p.from_calibration { "calibration units" } else { "ended units" }
            );
        }
        page.push_str("<table><tr><th>unit</th><th>sessions</th><th>tokens</th><th>cost</th></tr>");
        for u in self.units.iter().take(LISTED_UNITS) {
            let _ = write!(
                page,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&u.unit),
                u.sessions,
                u.tokens,
                usd(u.cost_usd)
            );
        }
        page.push_str("</table>");
        page
    }
}

/// Dollars as people read them: cents, or four decimals below a dollar.
pub fn usd(value: f64) -> String {
    if value.abs() >= 1.0 {
        format!("${value:.2}")
    } else {
        format!("${value:.4}")
    }
}
