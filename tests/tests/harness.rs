//! Proves the harness: real RabbitMQ and Redis answer, and a signed work
//! order survives a round trip through a durable quorum queue.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use regatta_broker as broker;
use regatta_proto::{open, seal, Keys, Names, Signer, WorkOrder};
use regatta_tests::{delete_keys, delete_queues, rabbitmq, redis, unique_namespace};

#[tokio::test]
async fn a_signed_order_round_trips_through_the_work_queue() {
    let namespace = unique_namespace("harness");
    let names = Names::new(&namespace).expect("valid namespace");
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    broker::declare_topology(&channel, &names)
        .await
        .expect("topology");

    let signer = Signer::new(b"harness-secret");
    let order = WorkOrder::example();
    broker::publish_confirmed(
        &channel,
        &names.work_queue(),
        &seal(&order, &signer),
        BasicProperties::default(),
    )
    .await
    .expect("publish confirmed");

    let mut consumer = channel
        .basic_consume(
            names.work_queue().as_str().into(),
            "harness".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
    let received: WorkOrder = open(&delivery.data, &signer).expect("opens");
    assert_eq!(received, order);
    delivery.ack(BasicAckOptions::default()).await.expect("ack");

    delete_queues(&connection, &namespace).await;
}

#[tokio::test]
async fn an_unroutable_publish_is_an_error_not_a_silent_drop() {
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    let queue = unique_namespace("nowhere");
    let err = broker::publish_confirmed(&channel, &queue, b"x", BasicProperties::default())
        .await
        .expect_err("no queue by that name");
    assert!(matches!(err, broker::PublishError::Unroutable(_)), "{err}");
}

#[tokio::test]
async fn redis_keys_carry_the_namespace() {
    let namespace = unique_namespace("harness");
    let keys = Keys::new(&namespace).expect("valid namespace");
    let mut con = redis().await;
    let _: () = redis::cmd("HSET")
        .arg(keys.batch("b1"))
        .arg("state")
        .arg("running")
        .query_async(&mut con)
        .await
        .expect("hset");
    let state: String = redis::cmd("HGET")
        .arg(keys.batch("b1"))
        .arg("state")
        .query_async(&mut con)
        .await
        .expect("hget");
    assert_eq!(state, "running");
    delete_keys(&mut con, &namespace).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(keys.everything())
        .query_async(&mut con)
        .await
        .expect("keys");
    assert!(left.is_empty());
}
