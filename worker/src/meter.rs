//! The session's meter: one normalised [`Usage`] record, kept live from the
//! agent's stdout stream ([`crate::agent_stream`]) and the usage channel
//! ([`crate::usage_channel`]), priced with the playbook's table, and checked
//! against the session's [`Budget`] at every line and every poll. When a
//! limit is crossed the meter fires [`Meter::crossed`], and the command
//! kills the session's process group (see [`crate::command`]).
//!
//! Problems reading either source are noted in the session's log, a bounded
//! number of times, and never stop the session.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use regatta_proto::{AgentAdapter, AgentOrder, Budget, Prices, Usage};
use tokio_util::sync::CancellationToken;

use crate::agent_stream::{LineBuffer, StreamError, StreamMeter};
use crate::session_log::SessionLog;
use crate::usage_channel::UsageChannel;

/// How often the usage channel and the wall clock are checked.
pub const POLL: Duration = Duration::from_millis(100);
/// How many reading problems are noted in the session's log.
const MAX_NOTES: u32 = 20;
/// The transcript's name in the session folder.
pub const TRANSCRIPT_FILE: &str = "transcript.jsonl";

/// Meters one session.
#[derive(Debug)]
pub struct Meter {
    adapter: Option<AgentAdapter>,
    budget: Budget,
    prices: Option<Prices>,
    log: SessionLog,
    transcript_path: PathBuf,
    crossed: CancellationToken,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stream: Option<(StreamMeter, LineBuffer)>,
    channel: UsageChannel,
    started: Option<Instant>,
    /// Why the session is over its budget, with its usage then.
    reason: Option<String>,
    notes: u32,
}

impl Meter {
    /// A meter for a session whose usage channel is `usage_path`, whose
    /// agent writes its transcript to `transcript_path`, and whose problems
    /// are noted in `log`; `order` is the work order's agent part, if any.
    pub fn new(
        order: Option<&AgentOrder>,
        usage_path: PathBuf,
        transcript_path: PathBuf,
        log: SessionLog,
    ) -> Meter {
        let order = order.cloned().unwrap_or_default();
        Meter {
            adapter: order.adapter,
            budget: order.budget,
            prices: order.prices,
            log,
            transcript_path,
            crossed: CancellationToken::new(),
            state: Mutex::new(State {
                stream: order
                    .adapter
                    .map(|adapter| (StreamMeter::new(adapter), LineBuffer::default())),
                channel: UsageChannel::new(usage_path),
                started: None,
                reason: None,
                notes: 0,
            }),
        }
    }

    /// The agent's adapter: when set, the command's stdout is the transcript.
    pub fn adapter(&self) -> Option<AgentAdapter> {
        self.adapter
    }

    /// Where the agent's stdout is kept.
    pub fn transcript_path(&self) -> &Path {
        &self.transcript_path
    }

    /// The price table, for the evidence pack.
    pub fn prices(&self) -> Option<&Prices> {
        self.prices.as_ref()
    }

    /// Fires once the session crossed its budget.
    pub fn crossed(&self) -> &CancellationToken {
        &self.crossed
    }

    /// Why the session was over its budget, if it was.
    pub fn reason(&self) -> Option<String> {
        self.lock().reason.clone()
    }

    /// Starts the wall clock, when the command starts.
    pub fn start(&self) {
        self.lock().started.get_or_insert_with(Instant::now);
    }

    /// Reads a chunk of the agent's stdout.
    pub fn feed_stdout(&self, chunk: &[u8]) {
        let mut state = self.lock();
        let mut errors = Vec::new();
        if let Some((stream, lines)) = &mut state.stream {
            lines.push(chunk, |line| match line {
                Ok(line) => errors.extend(stream.feed(line).err()),
                Err(()) => errors.push(stream.skipped()),
            });
        }
        for error in errors {
            self.note(&mut state, "agent stream", &error.to_string());
        }
        self.check(&mut state);
    }

    /// The agent's stdout ended: a partial last line is reported.
    pub fn end_stdout(&self) {
        let mut state = self.lock();
        let partial = state.stream.as_mut().and_then(|(_, lines)| lines.finish());
        if let Some(excerpt) = partial {
            let error = StreamError::Partial { excerpt };
            self.note(&mut state, "agent stream", &error.to_string());
        }
    }

    /// Reads the usage channel and checks the wall clock.
    pub fn poll(&self) {
        let mut state = self.lock();
        for problem in state.channel.poll() {
            self.note(&mut state, "REGATTA_USAGE", &problem);
        }
        self.check(&mut state);
    }

    /// Reads what is left of the usage channel once the session is over and
    /// returns the session's usage, or `None` when nothing was reported and
    /// no adapter was asked for.
    pub fn finish(&self) -> Option<Usage> {
        let mut state = self.lock();
        for problem in state.channel.finish() {
            self.note(&mut state, "REGATTA_USAGE", &problem);
        }
        let usage = self.total(&state);
        (self.adapter.is_some() || !usage.is_empty()).then_some(usage)
    }

    /// The session's usage so far.
    pub fn usage(&self) -> Usage {
        self.total(&self.lock())
    }

    fn total(&self, state: &State) -> Usage {
        let priced = |mut usage: Usage, model: Option<&str>| {
            if usage.cost_usd.is_none() && !usage.is_empty() {
                usage.cost_usd = self.prices.as_ref().and_then(|p| p.cost(model, &usage));
            }
            usage
        };
        let mut total = match &state.stream {
            Some((stream, _)) => priced(stream.usage(), stream.model()),
            None => Usage::default(),
        };
        total.add(&priced(
            state.channel.usage().clone(),
            state.channel.model(),
        ));
        total
    }

    fn check(&self, state: &mut State) {
        if state.reason.is_some() {
            return;
        }
        let usage = self.total(state);
        let mut reason = self.budget.crossed(&usage);
        if let (None, Some(wall), Some(started)) = (&reason, self.budget.wall, state.started) {
            if started.elapsed() >= wall {
                reason = Some(format!(
                    "over budget: wall time reached the limit of {} ({usage})",
                    regatta_proto::duration::format(wall)
                ));
            }
        }
        if let Some(reason) = reason {
            tracing::warn!(%reason, "session over budget; killing it");
            state.reason = Some(reason);
            self.crossed.cancel();
        }
    }

    /// Notes a reading problem in the session's log.
    fn note(&self, state: &mut State, source: &str, problem: &str) {
        state.notes += 1;
        let line = match state.notes {
            n if n < MAX_NOTES => format!("[regatta: {source}: {problem}]\n"),
            MAX_NOTES => {
                format!("[regatta: {source}: {problem}; further problems are not noted]\n")
            }
            _ => return,
        };
        tracing::debug!(source, problem, "usage not read");
        self.log.note(&line);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use regatta_proto::ModelPrice;

    use super::*;

    fn meter(dir: &Path, adapter: AgentAdapter, budget: Budget) -> Meter {
        let order = AgentOrder {
            adapter: Some(adapter),
            budget,
            prices: Some(Prices {
                version: "t".into(),
                default: None,
                models: BTreeMap::from([(
                    "m".into(),
                    ModelPrice {
                        input: 1_000.0,
                        cached: None,
                        output: 1_000.0,
                    },
                )]),
            }),
        };
        Meter::new(
            Some(&order),
            dir.join(crate::usage_channel::USAGE_FILE),
            dir.join(TRANSCRIPT_FILE),
            SessionLog::new(1 << 20, None),
        )
    }

    const TURN: &[u8] =
        b"{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":100,\"output_tokens\":10}}\n";

    #[test]
    fn the_meter_fires_at_the_turn_that_crosses_the_cost_and_prices_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            cost_usd: Some(0.3),
            ..Budget::default()
        };
        let meter = meter(dir.path(), AgentAdapter::CodexJson, budget);
        meter.feed_stdout(TURN);
        meter.feed_stdout(TURN);
        assert!(!meter.crossed().is_cancelled());
        assert!((meter.usage().cost_usd.unwrap_or_default() - 0.22).abs() < 1e-9);
        meter.feed_stdout(TURN);
        assert!(meter.crossed().is_cancelled());
        let reason = meter.reason().unwrap_or_default();
        assert!(
            reason.starts_with("over budget: cost $0.3300 reached the limit of $0.3"),
            "{reason}"
        );
        assert!(reason.contains("3 turns"), "{reason}");
    }

    #[test]
    fn the_channel_and_the_stream_add_up_and_problems_go_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            turns: Some(3),
            ..Budget::default()
        };
        let meter = meter(dir.path(), AgentAdapter::CodexJson, budget);
        meter.feed_stdout(TURN);
        meter.feed_stdout(b"garbage\n{\"type\":");
        std::fs::write(dir.path().join("usage.jsonl"), "{\"turns\":1}\n").unwrap();
        meter.poll();
        assert!(!meter.crossed().is_cancelled());
        std::fs::write(
            dir.path().join("usage.jsonl"),
            "{\"turns\":1}\n{\"turns\":1}\n",
        )
        .unwrap();
        meter.poll();
        assert!(meter.crossed().is_cancelled());
        meter.end_stdout();
        let log = meter.log.tail(100);
        assert!(
            log.contains("[regatta: agent stream: line 2 is not JSON"),
            "{log}"
        );
        assert!(
            log.contains("ended in the middle of a line: {\"type\":"),
            "{log}"
        );
        assert_eq!(meter.finish().map(|u| u.turns), Some(3));
    }

    #[test]
    fn the_wall_budget_fires_on_a_poll() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            wall: Some(Duration::from_millis(1)),
            ..Budget::default()
        };
        let meter = meter(dir.path(), AgentAdapter::Cmd, budget);
        meter.poll();
        assert!(
            !meter.crossed().is_cancelled(),
            "the clock starts with the command"
        );
        meter.start();
        std::thread::sleep(Duration::from_millis(5));
        meter.poll();
        let reason = meter.reason().unwrap_or_default();
        assert!(
            reason.starts_with("over budget: wall time reached the limit of 1ms"),
            "{reason}"
        );
    }
}
