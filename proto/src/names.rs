//! AMQP queue names, all under the fleet's namespace.
//!
//! Every name carries the namespace so that several fleets (staging and
//! production, or tests running in parallel) share one broker without
//! seeing each other's work. Messages go through the default exchange with
//! the queue name as routing key, published `mandatory` so that a missing
//! queue is an error, not a silent drop.

use crate::Error;

/// The AMQP names of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
}

impl Names {
    /// Checks the namespace and derives the names from it.
    pub fn new(namespace: &str) -> Result<Self, Error> {
        validate_namespace(namespace)?;
        Ok(Names {
            namespace: namespace.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Work orders, coordinator to workers (quorum, durable).
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.namespace)
    }

    /// Session events, workers to coordinator (quorum, durable).
    pub fn events_queue(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// Messages that can never be processed, with their reason in the
    /// `x-regatta-reason` header.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }
}

/// A queue to declare, as plain data so that both sides declare the same
/// topology whatever AMQP client they use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// Queue arguments (`x-queue-type`, dead-lettering, ...).
    pub arguments: Vec<(&'static str, QueueArgument)>,
}

/// The value of a queue argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArgument {
    Text(String),
    Number(i64),
}

impl Names {
    /// Every queue of the fleet: durable quorum queues; the work and events
    /// queues dead-letter into the dead-letter queue once a message has been
    /// delivered `delivery_limit` times (a poison message that crashes its
    /// consumer), instead of looping forever.
    pub fn queues(&self, delivery_limit: i64) -> Vec<QueueSpec> {
        let quorum = || ("x-queue-type", QueueArgument::Text("quorum".into()));
        let dead_lettered = |name: String| QueueSpec {
            name,
            arguments: vec![
                quorum(),
                ("x-dead-letter-exchange", QueueArgument::Text(String::new())),
                (
                    "x-dead-letter-routing-key",
                    QueueArgument::Text(self.dead_letter_queue()),
                ),
                ("x-delivery-limit", QueueArgument::Number(delivery_limit)),
            ],
        };
        vec![
            QueueSpec {
                name: self.dead_letter_queue(),
                arguments: vec![
                    quorum(),
                    (
                        "x-max-length",
                        QueueArgument::Number(DEAD_LETTER_MAX_LENGTH),
                    ),
                    (
                        "x-max-length-bytes",
                        QueueArgument::Number(DEAD_LETTER_MAX_BYTES),
                    ),
                    ("x-overflow", QueueArgument::Text("drop-head".into())),
                    ("x-message-ttl", QueueArgument::Number(DEAD_LETTER_TTL_MS)),
                ],
            },
            dead_lettered(self.work_queue()),
            dead_lettered(self.events_queue()),
        ]
    }
}

/// The dead-letter queue keeps at most this many messages, dropping the
/// oldest: it holds valid signed orders too (a poison order, an order for a
/// batch that was never stored), and nothing consumes it but a human, so
/// unbounded it would grow until the broker's memory alarm stops the fleet.
pub const DEAD_LETTER_MAX_LENGTH: i64 = 10_000;
/// ... and at most this many bytes of message bodies.
pub const DEAD_LETTER_MAX_BYTES: i64 = 64 << 20;
/// ... each for at most a week: long enough for a human to look.
pub const DEAD_LETTER_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// How many times a quorum queue delivers one message before it
/// dead-letters it (a poison message that crashes its consumer). Both sides
/// must declare the queues with the same arguments, hence one constant.
pub const DELIVERY_LIMIT: i64 = 20;

/// Hides the password of a URL, for error messages and logs.
///
/// The credentials end at the last `@`: a password may itself hold `@`
/// (or `/`, `?`, `#` when its writer did not percent-encode it), and
/// splitting at the first one printed the rest of the password as the
/// host. An `@` later in the path then hides a little too much, never too
/// little.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The header that carries a dead-lettered message's reason.
pub const REASON_HEADER: &str = "x-regatta-reason";

/// Checks that a namespace is safe in queue names, Redis keys and paths.
pub fn validate_namespace(namespace: &str) -> Result<(), Error> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Namespace(namespace.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let names = Names::new("staging").expect("valid");
        assert_eq!(names.work_queue(), "staging.work");
        assert_eq!(names.events_queue(), "staging.events");
        assert_eq!(names.dead_letter_queue(), "staging.dead");
        assert_ne!(
            Names::new("prod").expect("valid").work_queue(),
            names.work_queue()
        );
    }

    #[test]
    fn passwords_are_hidden_from_urls() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }

    #[test]
    fn a_password_holding_at_signs_is_hidden_whole() {
        for (url, hidden) in [
            (
                "amqp://app:p@ss@rabbit:5672/%2f",
                "amqp://app:***@rabbit:5672/%2f",
            ),
            ("redis://:s3@cr@t@redis:6379/", "redis://:***@redis:6379/"),
            ("amqp://app:a/b@c@rabbit/vh", "amqp://app:***@rabbit/vh"),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, hidden);
            for secret in ["ss@", "s3", "cr@t", "a/b", "@c"] {
                if url.contains(secret) {
                    assert!(!redacted.contains(secret), "{redacted} shows {secret}");
                }
            }
        }
    }

    #[test]
    fn the_dead_letter_queue_is_bounded() {
        let names = Names::new("staging").expect("valid");
        let queues = names.queues(DELIVERY_LIMIT);
        let dead = queues
            .iter()
            .find(|q| q.name == names.dead_letter_queue())
            .expect("a dead-letter queue");
        let argument = |key: &str| {
            dead.arguments
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        };
        assert_eq!(
            argument("x-max-length"),
            Some(&QueueArgument::Number(DEAD_LETTER_MAX_LENGTH))
        );
        assert_eq!(
            argument("x-overflow"),
            Some(&QueueArgument::Text("drop-head".into()))
        );
        assert!(argument("x-max-length-bytes").is_some());
        assert!(argument("x-message-ttl").is_some());
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "a b", "a:b", "ünï", &"x".repeat(65)] {
            assert!(Names::new(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
