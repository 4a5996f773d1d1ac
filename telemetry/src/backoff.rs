//! Waiting out an outage: the delays between retries of something that must
//! succeed in the end (a broker channel, a Redis write, an event to report).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays that double from `first` up to `max` and never run out: regatta
/// waits out a broker or Redis outage of any length instead of giving up
/// (contract 7, docs/contracts.md). [`Backoff::reset`] after a success, so
/// the next outage starts short again.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    /// The delay last handed out, for callers that change course once the
    /// delays have grown (a worker shutting down stops retrying then).
    last: Duration,
}

impl Backoff {
    /// Delays from `first`, doubling, capped at `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let builder = ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            last: Duration::ZERO,
        }
    }

    /// The next delay; never runs out.
    pub fn next_delay(&mut self) -> Duration {
        // `without_max_times` never ends; the fallback is only for form.
        self.last = self.delays.next().unwrap_or(self.last);
        self.last
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// The delay last handed out (zero before the first).
    pub fn last(&self) -> Duration {
        self.last
    }

    /// Starts again from the first delay, after a success.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
        self.last = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500, 500]);
        assert_eq!(backoff.last(), Duration::from_millis(500));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
