//! The dead-letter queue is bounded: it holds valid signed orders too and
//! only a human reads it, so past its length limit the oldest letters go.

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use regatta_broker as broker;
use regatta_proto::names::DEAD_LETTER_MAX_LENGTH;
use regatta_proto::Names;
use regatta_tests::{rabbitmq, unique_namespace};

#[tokio::test(flavor = "multi_thread")]
async fn the_dead_letter_queue_drops_its_oldest_letters_past_its_limit() {
    let namespace = unique_namespace("dead-limit");
    let names = Names::new(&namespace).expect("names");
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    broker::declare_topology(&channel, &names)
        .await
        .expect("topology");

    let extra = 50;
    let total = DEAD_LETTER_MAX_LENGTH + extra;
    let mut confirms = Vec::with_capacity(total as usize);
    for i in 0..total {
        let confirm = channel
            .basic_publish(
                "".into(),
                names.dead_letter_queue().as_str().into(),
                BasicPublishOptions::default(),
                format!("letter {i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish a letter");
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.await.expect("the broker confirms a letter");
    }

    let queue = channel
        .queue_declare(
            names.dead_letter_queue().as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the dead-letter queue exists");
    let depth = i64::from(queue.message_count());
    let oldest = channel
        .basic_get(
            names.dead_letter_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("get a letter")
        .map(|message| String::from_utf8_lossy(&message.delivery.data).into_owned());
    regatta_tests::delete_queues(&connection, &namespace).await;
    let _ = connection.close(200, "done".into()).await;

    assert_eq!(
        depth, DEAD_LETTER_MAX_LENGTH,
        "{total} letters were published into a queue limited to {DEAD_LETTER_MAX_LENGTH}"
    );
    assert_eq!(
        oldest.as_deref(),
        Some(format!("letter {extra}").as_str()),
        "the oldest letters are the ones dropped"
    );
}
