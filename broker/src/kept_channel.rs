//! A channel kept from one use to the next and opened again once it closed:
//! opening one per message or per unit costs the broker more than the
//! messages themselves, and a closed channel never opens again.

use std::future::Future;

use lapin::Channel;

/// A channel that outlives its uses, replaced when the broker closed it.
#[derive(Default)]
pub struct KeptChannel {
    channel: Option<Channel>,
}

impl KeptChannel {
    pub fn new() -> KeptChannel {
        KeptChannel::default()
    }

    /// The kept channel while it is open; otherwise one from `open`, kept
    /// for the next use. `open`'s error is the caller's, as is the pause
    /// before trying again.
    pub async fn get_or_open<E, F>(&mut self, open: impl FnOnce() -> F) -> Result<&Channel, E>
    where
        F: Future<Output = Result<Channel, E>>,
    {
        match self.channel.take() {
            Some(open) if open.status().connected() => Ok(self.channel.insert(open)),
            _ => Ok(self.channel.insert(open().await?)),
        }
    }

    /// Closes the kept channel, if any: after an error its deliveries are
    /// void, and the next use opens a fresh one.
    pub async fn close(&mut self, reason: &str) {
        if let Some(channel) = self.channel.take() {
            let _ = channel.close(200, reason.into()).await;
        }
    }
}
