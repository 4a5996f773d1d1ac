//! Agent sessions: the adapter that reads a coding agent's output, the
//! budget a session may spend, the price table that turns tokens into
//! dollars, and the normalised usage record every session reports.
//!
//! The manifest spells these (`agent:`, `budget:`, `prices:`), the work
//! order carries them to the worker as an [`AgentOrder`], and the worker
//! sends the [`Usage`] back in `finished`. They live in the contract so that
//! the three agree on one shape.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How the worker reads an agent's stdout for its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentAdapter {
    /// Claude Code's `-p --output-format stream-json`: `assistant` messages
    /// with `message.usage`, and a final `result` event.
    ClaudeStreamJson,
    /// `codex exec --json`: `turn.completed` events with `usage`; no cost.
    CodexJson,
    /// Any other command: its stdout is kept as the transcript, nothing is
    /// parsed; usage comes through `REGATTA_USAGE` alone.
    Cmd,
}

impl AgentAdapter {
    /// Every adapter, for messages that list them.
    pub const ALL: [AgentAdapter; 3] = [
        AgentAdapter::ClaudeStreamJson,
        AgentAdapter::CodexJson,
        AgentAdapter::Cmd,
    ];

    /// The adapter as a manifest names it.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAdapter::ClaudeStreamJson => "claude-stream-json",
            AgentAdapter::CodexJson => "codex-json",
            AgentAdapter::Cmd => "cmd",
        }
    }

    /// Reads a manifest's spelling.
    pub fn from_name(name: &str) -> Option<AgentAdapter> {
        AgentAdapter::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Says whether the agent's own stream reports a cost; for the others a
    /// cost budget needs a price table.
    pub fn reports_cost(self) -> bool {
        matches!(self, AgentAdapter::ClaudeStreamJson)
    }
}

impl fmt::Display for AgentAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one session may spend; every limit is optional. `tokens` counts
/// every token the session used: fresh input, cached input and output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u64>,
    /// Wall-clock time of the session's command; unlike `timeout`, crossing
    /// it ends the session as `over_budget`.
    #[serde(
        default,
        with = "crate::duration::serde_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub wall: Option<Duration>,
}

impl Budget {
    /// Says whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_none()
            && self.cost_usd.is_none()
            && self.turns.is_none()
            && self.wall.is_none()
    }

    /// Overlays `other`'s limits on these: a unit's budget overrides the
    /// playbook's limit by limit.
    pub fn overlaid(&self, other: &Budget) -> Budget {
        Budget {
            tokens: other.tokens.or(self.tokens),
            cost_usd: other.cost_usd.or(self.cost_usd),
            turns: other.turns.or(self.turns),
            wall: other.wall.or(self.wall),
        }
    }

    /// Names the first token, cost or turn limit that `usage` reached, with
    /// the usage at that point, in the words of the session's reason.
    pub fn crossed(&self, usage: &Usage) -> Option<String> {
        if let Some(limit) = self.tokens {
            if usage.tokens() >= limit {
                return Some(format!(
                    "over budget: tokens {} reached the limit of {limit} ({usage})",
                    usage.tokens()
                ));
            }
        }
        if let (Some(limit), Some(cost)) = (self.cost_usd, usage.cost_usd) {
            if cost >= limit {
                return Some(format!(
                    "over budget: cost ${cost:.4} reached the limit of ${limit} ({usage})"
                ));
            }
        }
        if let Some(limit) = self.turns {
            if usage.turns >= limit {
                return Some(format!(
                    "over budget: turns {} reached the limit of {limit} ({usage})",
                    usage.turns
                ));
            }
        }
        None
    }
}

/// Prices in US dollars per million tokens, for one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    /// Cached input; `input` when the table does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<f64>,
    pub output: f64,
}

/// A versioned price table, so that a session whose agent reports only
/// tokens still has a cost, and an audit can name the prices it used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// The table's version as its author names it (`2026-11`).
    pub version: String,
    /// The model priced when the agent's stream names none (codex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    pub models: BTreeMap<String, ModelPrice>,
}

impl Prices {
    /// Returns the hex SHA-256 of the table's canonical JSON, as the
    /// evidence pack records it.
    pub fn sha256(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }

    /// Prices `usage`'s tokens for `model`, else the default model, else the
    /// table's only model; `None` when no model applies.
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> Option<f64> {
        let price = model
            .and_then(|m| self.models.get(m))
            .or_else(|| self.default.as_deref().and_then(|m| self.models.get(m)))
            .or_else(|| match self.models.len() {
                1 => self.models.values().next(),
                _ => None,
            })?;
        let per_token = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1e6;
        Some(
            per_token(usage.tokens_in, price.input)
                + per_token(usage.tokens_cached, price.cached.unwrap_or(price.input))
                + per_token(usage.tokens_out, price.output),
        )
    }
}

/// A session's usage, normalised across agents: `tokens_in` is fresh
/// (uncached) input, `tokens_cached` input read from a cache, `tokens_out`
/// output. `cost_usd` is what the agent reported, else what the price table
/// says, else `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    #[serde(default)]
    pub tokens_in: u64,
    #[serde(default)]
    pub tokens_cached: u64,
    #[serde(default)]
    pub tokens_out: u64,
    #[serde(default)]
    pub turns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl Usage {
    /// Every token the session used, as a `tokens` budget counts them.
    pub fn tokens(&self) -> u64 {
        self.tokens_in + self.tokens_cached + self.tokens_out
    }

    /// Adds another source's usage to this one.
    pub fn add(&mut self, other: &Usage) {
        self.tokens_in += other.tokens_in;
        self.tokens_cached += other.tokens_cached;
        self.tokens_out += other.tokens_out;
        self.turns += other.turns;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
    }

    /// Says whether nothing was used (or reported).
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens in, {} cached, {} out, {} turns",
            self.tokens_in, self.tokens_cached, self.tokens_out, self.turns
        )?;
        if let Some(cost) = self.cost_usd {
            write!(f, ", ${cost:.4}")?;
        }
        Ok(())
    }
}

/// What a work order tells the worker about an agent session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentOrder {
    /// `None`: no stream is parsed (and stdout stays in the session log);
    /// usage may still come through `REGATTA_USAGE`.
    #[serde(default)]
    pub adapter: Option<AgentAdapter>,
    /// The unit's budget: the playbook's overlaid with the unit's.
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub prices: Option<Prices>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(tokens_in: u64, tokens_out: u64, turns: u64) -> Usage {
        Usage {
            tokens_in,
            tokens_out,
            turns,
            ..Usage::default()
        }
    }

    #[test]
    fn budget_names_the_limit_crossed_and_the_usage() {
        let budget = Budget {
            tokens: Some(1_000),
            turns: Some(3),
            ..Budget::default()
        };
        assert_eq!(budget.crossed(&usage(100, 100, 2)), None);
        let reason = budget.crossed(&usage(900, 100, 1)).unwrap_or_default();
        assert!(
            reason.contains("tokens 1000 reached the limit of 1000"),
            "{reason}"
        );
        let reason = budget.crossed(&usage(1, 1, 3)).unwrap_or_default();
        assert!(reason.contains("turns 3"), "{reason}");
    }

    #[test]
    fn a_units_budget_overrides_the_playbooks_limit_by_limit() {
        let playbook = Budget {
            tokens: Some(10),
            turns: Some(5),
            ..Budget::default()
        };
        let unit = Budget {
            turns: Some(9),
            ..Budget::default()
        };
        let both = playbook.overlaid(&unit);
        assert_eq!((both.tokens, both.turns), (Some(10), Some(9)));
    }

    #[test]
    fn prices_cost_tokens_by_model_default_or_only_model() {
        let prices = Prices {
            version: "2026-11".into(),
            default: None,
            models: BTreeMap::from([(
                "m".into(),
                ModelPrice {
                    input: 2.0,
                    cached: Some(0.5),
                    output: 10.0,
                },
            )]),
        };
        let used = Usage {
            tokens_in: 1_000_000,
            tokens_cached: 2_000_000,
            tokens_out: 100_000,
            ..Usage::default()
        };
        let cost = prices.cost(Some("unknown"), &used).unwrap_or_default();
        assert!((cost - 4.0).abs() < 1e-9, "{cost}");
        assert_eq!(prices.sha256().len(), 64);
    }

    #[test]
    fn adding_usage_keeps_an_unknown_cost_unknown() {
        let mut total = usage(1, 2, 1);
        total.add(&usage(3, 4, 1));
        assert_eq!((total.tokens(), total.turns, total.cost_usd), (10, 2, None));
        total.add(&Usage {
            cost_usd: Some(0.5),
            ..Usage::default()
        });
        assert_eq!(total.cost_usd, Some(0.5));
    }
}
