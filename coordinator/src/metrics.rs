//! Prometheus metrics of the coordinator, served on `/metrics`.
//!
//! Counters and histograms are fed as events are applied; the per-batch unit
//! counts and the dead-letter queue depth are read at scrape time, so they
//! are never stale.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The labels of a unit count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnitLabels {
    pub batch: String,
    pub state: String,
}

/// The labels of per-outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

impl OutcomeLabels {
    /// The labels of one outcome, spelled as the API spells it.
    pub fn of(outcome: regatta_proto::Outcome) -> OutcomeLabels {
        OutcomeLabels {
            outcome: outcome.as_str().to_owned(),
        }
    }
}

/// The labels of agent sessions' tokens.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub batch: String,
    /// `in` (fresh input), `cached` (input read from a cache) or `out`.
    pub kind: String,
}

/// The labels of agent sessions' cost.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub batch: String,
    /// The session's outcome, spelled as the API spells it.
    pub outcome: String,
}

/// The labels of a worker's health.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
    /// `true`, or `false` while its disks fail and it takes no work.
    pub healthy: String,
}

/// The label of a merge candidate's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CandidateLabels {
    /// `passed`, `failed`, `conflicted`, `raced` or `landed`.
    pub result: String,
}

impl CandidateLabels {
    pub fn of(result: &str) -> CandidateLabels {
        CandidateLabels {
            result: result.to_owned(),
        }
    }
}

/// Every metric the coordinator exports.
pub struct Metrics {
    registry: Registry,
    /// Units per batch and state, set at scrape time.
    pub units: Family<UnitLabels, Gauge>,
    /// From publish to the session's start: queue wait plus lease wait.
    pub queue_wait: Histogram,
    /// Time workers spent acquiring leases (reported with `started`, or
    /// with `finished` by a session too short to send `started`).
    pub lease_wait: Histogram,
    /// Events applied per window of the event intake (one lock, one
    /// flush, one ack for the window): near 1 when idle, larger under load.
    pub event_windows: Histogram,
    /// From a session's start to its end.
    pub session_duration: Histogram,
    /// Sessions ended, by outcome.
    pub sessions: Family<OutcomeLabels, Counter>,
    /// Automatic retries scheduled.
    pub retries: Counter,
    /// Sessions whose worker stopped renewing its leases.
    pub lost_sessions: Counter,
    /// Messages waiting in the dead-letter queue, read at scrape time.
    pub dead_lettered: Gauge,
    /// Orders published.
    pub published: Counter,
    /// Live workers by health (1 each), read from their records at scrape time.
    pub workers: Family<WorkerLabels, Gauge>,
    /// Git mode: merge candidates by what became of them.
    pub train_candidates: Family<CandidateLabels, Counter>,
    /// Git mode: integration runs spent bisecting a failed candidate.
    pub bisection_steps: Counter,
    /// Git mode: units landed on their target branch.
    pub landed_units: Counter,
    /// Agent sessions' tokens, by batch and kind (`in`, `cached`, `out`).
    pub tokens: Family<TokenLabels, Counter>,
    /// Agent sessions' turns, by batch.
    pub turns: Family<BatchLabels, Counter>,
    /// Agent sessions' cost in US dollars, by batch and outcome.
    pub cost_usd: Family<CostLabels, Counter<f64, AtomicU64>>,
    /// The batch budget's ledger in US dollars, by batch and part (`cap`,
    /// `reserved`, `spent`; contract 9, docs/contracts.md).
    pub batch_budget_usd: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
}

/// The labels of the batch budget's gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub batch: String,
    /// `cap`, `reserved` or `spent`.
    pub part: String,
}

/// The label of a per-batch counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub batch: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts an agent session's usage once, when its end is applied.
    pub fn observe_usage(
        &self,
        batch: &str,
        outcome: regatta_proto::Outcome,
        usage: &regatta_proto::Usage,
    ) {
        for (kind, tokens) in [
            ("in", usage.tokens_in),
            ("cached", usage.tokens_cached),
            ("out", usage.tokens_out),
        ] {
            let labels = TokenLabels {
                batch: batch.to_owned(),
                kind: kind.to_owned(),
            };
            self.tokens.get_or_create(&labels).inc_by(tokens);
        }
        let batch_labels = BatchLabels {
            batch: batch.to_owned(),
        };
        self.turns.get_or_create(&batch_labels).inc_by(usage.turns);
        if let Some(cost) = usage.cost_usd.filter(|c| c.is_finite() && *c >= 0.0) {
            let labels = CostLabels {
                batch: batch.to_owned(),
                outcome: outcome.as_str().to_owned(),
            };
            self.cost_usd.get_or_create(&labels).inc_by(cost);
        }
    }

    /// Sets a batch budget's gauges from the ledger.
    pub fn observe_batch_budget(&self, batch: &str, spend: regatta_proto::BudgetSpend) {
        use regatta_proto::batch_budget::usd;
        for (part, micros) in [
            ("cap", spend.cap_micros),
            ("reserved", spend.reserved_micros),
            ("spent", spend.spent_micros),
        ] {
            let labels = BudgetLabels {
                batch: batch.to_owned(),
                part: part.to_owned(),
            };
            self.batch_budget_usd
                .get_or_create(&labels)
                .set(usd(micros));
        }
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("regatta");
        let seconds = || Histogram::new(exponential_buckets(0.0005, 2.5, 18));
        let metrics = Metrics {
            units: Family::default(),
            queue_wait: seconds(),
            lease_wait: seconds(),
            event_windows: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            session_duration: seconds(),
            sessions: Family::default(),
            retries: Counter::default(),
            lost_sessions: Counter::default(),
            dead_lettered: Gauge::default(),
            published: Counter::default(),
            workers: Family::default(),
            train_candidates: Family::default(),
            bisection_steps: Counter::default(),
            landed_units: Counter::default(),
            tokens: Family::default(),
            turns: Family::default(),
            cost_usd: Family::default(),
            batch_budget_usd: Family::default(),
            registry: Registry::default(),
        };
        registry.register("units", "Units per batch and state", metrics.units.clone());
        registry.register(
            "queue_wait_seconds",
            "From publish to session start",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "lease_wait_seconds",
            "Time workers spent acquiring leases",
            metrics.lease_wait.clone(),
        );
        registry.register(
            "event_window_events",
            "Events applied per window of the event intake",
            metrics.event_windows.clone(),
        );
        registry.register(
            "session_duration_seconds",
            "Session run time",
            metrics.session_duration.clone(),
        );
        registry.register(
            "sessions",
            "Sessions ended, by outcome",
            metrics.sessions.clone(),
        );
        registry.register(
            "retries",
            "Automatic retries scheduled",
            metrics.retries.clone(),
        );
        registry.register(
            "lost_sessions",
            "Sessions lost with their worker or leases",
            metrics.lost_sessions.clone(),
        );
        registry.register(
            "dead_lettered_messages",
            "Messages in the dead-letter queue",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "published_orders",
            "Work orders published",
            metrics.published.clone(),
        );
        registry.register(
            "workers",
            "Live workers by health: healthy=\"false\" takes no work until its disks work",
            metrics.workers.clone(),
        );
        registry.register(
            "train_candidates",
            "Git mode: merge candidates by result (passed, failed, conflicted, raced, landed)",
            metrics.train_candidates.clone(),
        );
        registry.register(
            "train_bisection_steps",
            "Git mode: integration runs spent bisecting failed candidates",
            metrics.bisection_steps.clone(),
        );
        registry.register(
            "landed_units",
            "Git mode: units landed on their target branch",
            metrics.landed_units.clone(),
        );
        registry.register(
            "tokens",
            "Agent sessions' tokens by batch and kind (in, cached, out)",
            metrics.tokens.clone(),
        );
        registry.register(
            "agent_turns",
            "Agent sessions' turns by batch",
            metrics.turns.clone(),
        );
        registry.register(
            "cost_usd",
            "Agent sessions' cost in US dollars by batch and outcome",
            metrics.cost_usd.clone(),
        );
        registry.register(
            "batch_budget_usd",
            "Batch budgets in US dollars by batch and part (cap, reserved, spent)",
            metrics.batch_budget_usd.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
