//! The fleet's queues, declared by whoever connects first; idempotent, so
//! coordinator and workers both declare them on every new connection.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;
use regatta_proto::names::DELIVERY_LIMIT;
use regatta_proto::{Names, QueueArgument};

/// Declares every queue of the fleet, durable, with the arguments of
/// [`Names::queues`].
pub async fn declare_topology(channel: &Channel, names: &Names) -> lapin::Result<()> {
    for queue in names.queues(DELIVERY_LIMIT) {
        let mut arguments = FieldTable::default();
        for (key, value) in queue.arguments {
            let value = match value {
                QueueArgument::Text(text) => AMQPValue::LongString(LongString::from(text)),
                QueueArgument::Number(n) => AMQPValue::LongLongInt(n),
            };
            arguments.insert(key.into(), value);
        }
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.name.as_str().into(), options, arguments)
            .await;
        if let Err(e) = declared {
            // The broker names the argument that differs; say what to do.
            if e.to_string().contains("PRECONDITION_FAILED") {
                tracing::error!(
                    queue = %queue.name,
                    error = %e,
                    "the queue exists with other arguments (declared by an older regatta: the \
                     dead-letter queue gained a length limit and a TTL); drain it, delete it \
                     (`rabbitmqctl delete_queue {}`) and start again",
                    queue.name
                );
            }
            return Err(e);
        }
    }
    Ok(())
}
