//! The worker's ear on the fleet's control channel (`Keys::control_channel`):
//! the coordinator publishes there when a batch is cancelled or a session's
//! leases are taken from it, so that the session stops within a second
//! instead of at its next lease renewal (a third of the lease TTL away).
//!
//! A notice only makes the sessions it concerns renew their leases at once;
//! the renewal's answer decides, as it always did (a cancelled batch's lease
//! is extended while its session dies: cancel does not revoke leases). A
//! notice lost while the subscription was down costs time, never safety:
//! after a reconnect every session renews at once, and the periodic renewal
//! stays the fallback.

use std::time::Duration;

use futures::StreamExt;
use regatta_proto::{Keys, Notice};
use regatta_telemetry::backoff::Backoff;
use regatta_telemetry::tasks::Tasks;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What a session's heartbeat hears.
#[derive(Debug, Clone)]
enum Heard {
    Notice(Notice),
    /// The subscription was down a while: any notice may have been missed.
    Missed,
}

/// The worker's subscription, shared by every slot.
#[derive(Clone)]
pub struct Notices {
    sender: broadcast::Sender<Heard>,
}

impl Notices {
    /// Subscribes to the fleet's control channel in `tasks`, and keeps
    /// subscribing (with backoff) whenever the connection is lost, until
    /// `stop`.
    pub fn start(
        redis_url: &str,
        keys: &Keys,
        stop: &CancellationToken,
        tasks: &mut Tasks,
    ) -> Notices {
        let (sender, _) = broadcast::channel(256);
        let subscriber = subscribe(redis_url.to_owned(), keys.control_channel(), sender.clone());
        let stop = stop.clone();
        tasks.spawn("control subscriber", async move {
            tokio::select! {
                _ = subscriber => {}
                _ = stop.cancelled() => {}
            }
        });
        Notices { sender }
    }

    /// A listener for one session's heartbeat.
    pub fn listen(&self) -> Listener {
        Listener {
            receiver: self.sender.subscribe(),
        }
    }
}

/// One session's view of the notices.
pub struct Listener {
    receiver: broadcast::Receiver<Heard>,
}

impl Listener {
    /// Returns when a notice concerns this session (its batch or itself),
    /// or when notices may have been missed. Cancel-safe, for `select!`.
    pub async fn concerning(&mut self, batch_id: &str, session_id: &str) {
        loop {
            match self.receiver.recv().await {
                Ok(Heard::Notice(notice)) if notice.concerns(batch_id, session_id) => return,
                Ok(Heard::Notice(_)) => {}
                Ok(Heard::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

impl Listener {
    /// Returns the sessions of the next `released` notice: the coordinator
    /// released their leases itself. Cancel-safe, for `select!`.
    pub async fn released(&mut self) -> Vec<String> {
        loop {
            match self.receiver.recv().await {
                Ok(Heard::Notice(Notice::Released { session_ids })) => return session_ids,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

/// Subscribes, relays every notice to the listeners, and subscribes again
/// when the connection is lost.
async fn subscribe(url: String, channel: String, sender: broadcast::Sender<Heard>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut subscribed_before = false;
    loop {
        match listen_once(&url, &channel, &sender, &mut subscribed_before).await {
            Ok(()) => {
                tracing::warn!(%channel, "control channel subscription ended; subscribing again");
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "cannot subscribe to the control channel (cancels are heard at the next lease renewal meanwhile); retrying");
            }
        }
        backoff.wait().await;
    }
}

/// One subscription, until its connection ends.
async fn listen_once(
    url: &str,
    channel: &str,
    sender: &broadcast::Sender<Heard>,
    subscribed_before: &mut bool,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    tracing::debug!(%channel, "listening for control notices");
    if std::mem::replace(subscribed_before, true) {
        // Whatever was published while away: every session renews now.
        let _ = sender.send(Heard::Missed);
    }
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(text) = message.get_payload::<String>() else {
            continue;
        };
        match Notice::parse(&text) {
            // No listener (no session running) is fine.
            Some(notice) => {
                let _ = sender.send(Heard::Notice(notice));
            }
            None => tracing::debug!(%text, "unknown control notice ignored"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_wakes_for_its_batch_or_session_and_after_a_gap_only() {
        let (sender, _) = broadcast::channel(16);
        let notices = Notices { sender };
        let mut listener = notices.listen();
        let send = |heard| notices.sender.send(heard).expect("a listener");
        send(Heard::Notice(Notice::Cancel {
            batch_id: "other".into(),
        }));
        send(Heard::Notice(Notice::Revoke {
            session_id: "s1".into(),
        }));
        let woke = tokio::time::timeout(Duration::from_secs(1), listener.concerning("b", "s1"));
        woke.await.expect("woken by its session's revoke");
        send(Heard::Notice(Notice::Cancel {
            batch_id: "other".into(),
        }));
        let idle = tokio::time::timeout(Duration::from_millis(100), listener.concerning("b", "s1"));
        assert!(idle.await.is_err(), "another batch's cancel is not its own");
        send(Heard::Missed);
        let woke = tokio::time::timeout(Duration::from_secs(1), listener.concerning("b", "s1"));
        woke.await
            .expect("woken after notices may have been missed");
    }
}
