//! Waiting out an outage: the delays between retries of something that must
//! succeed in the end (a broker channel, a Redis write, an event to report),
//! and the bounded wait of a process that starts before its broker or Redis.

use std::fmt::Display;
use std::future::Future;
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

/// How long a starting coordinator or worker waits for RabbitMQ and Redis:
/// long enough for a fleet whose services start together (`docker compose
/// up`, where the broker takes seconds to listen), short enough that a wrong
/// URL still ends the process with its reason.
pub const START_PATIENCE: Duration = Duration::from_secs(90);

/// Runs `attempt` until it succeeds, for at most `patience`, with delays
/// from 250 ms doubling up to 5 s between tries; each failure is logged as a
/// warning naming `what`. Returns the last error once the next delay would
/// go past `patience`.
pub async fn wait_at_start<T, E, F, Fut>(
    what: &str,
    patience: Duration,
    mut attempt: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(failures, "{what} answered; starting");
                }
                return Ok(value);
            }
            Err(error) => {
                failures += 1;
                let delay = backoff.next_delay();
                if tokio::time::Instant::now() + delay > deadline {
                    return Err(error);
                }
                tracing::warn!(
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "{what} is not reachable yet; waiting for it (at most {} s in all)",
                    patience.as_secs()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_start_waits_for_a_late_service_then_gives_up_on_a_missing_one() {
        let mut tries = 0;
        let late = wait_at_start("late", Duration::from_secs(5), || {
            tries += 1;
            let answer = if tries < 3 { Err("refused") } else { Ok(tries) };
            async move { answer }
        })
        .await;
        assert_eq!(late, Ok(3), "answers on the third try, after 250 + 500 ms");

        let started = std::time::Instant::now();
        let mut tries = 0;
        let missing: Result<(), String> =
            wait_at_start("missing", Duration::from_millis(800), || {
                tries += 1;
                let error = format!("refused {tries}");
                async move { Err(error) }
            })
            .await;
        assert_eq!(
            missing,
            Err("refused 3".to_owned()),
            "250 + 500 ms fit, 1 s does not"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

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
