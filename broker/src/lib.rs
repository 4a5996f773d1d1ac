//! regatta's link to RabbitMQ, shared by the coordinator and the workers so
//! that both sides declare one topology and publish the same way.
//!
//! - [`link`]: one supervised connection per process, rebuilt with its
//!   topology whenever it is lost, however long the broker is away;
//! - [`topology`]: the fleet's queues, declared identically by both sides;
//! - [`publish`]: persistent, mandatory publishing with confirms;
//! - [`kept_channel`]: a channel kept from use to use, reopened once closed.

pub mod error;
pub mod kept_channel;
pub mod link;
pub mod publish;
pub mod topology;

pub use error::Error;
pub use kept_channel::KeptChannel;
pub use link::BrokerLink;
pub use publish::{check_confirmation, publish_confirmed, PublishError};
pub use topology::declare_topology;
