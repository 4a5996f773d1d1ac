//! Bad input never takes a worker down: garbage and badly signed orders go
//! to the dead-letter queue with their reason, and valid work goes on.

use std::time::Duration;

use lapin::BasicProperties;
use regatta_broker as broker;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_proto::{seal, Names, Signer, WorkOrder};
use regatta_tests::{rabbitmq, write_file, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_forged_orders_are_dead_lettered_and_work_goes_on() {
    let fleet = Fleet::start("dead", 1, 1, "30s").await;
    let names = Names::new(&fleet.namespace).expect("names");
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    broker::declare_topology(&channel, &names)
        .await
        .expect("topology");
    let forged = seal(
        &WorkOrder::example(),
        &Signer::new(b"not the fleet's secret"),
    );
    for payload in [b"\x00garbage".to_vec(), forged] {
        broker::publish_confirmed(
            &channel,
            &names.work_queue(),
            &payload,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }

    let letters = regatta_tests::dead_letters(&channel, &names, 2, Duration::from_secs(20)).await;
    let reasons: Vec<String> = letters.into_iter().map(|(_, reason)| reason).collect();
    assert_eq!(
        reasons.len(),
        2,
        "two dead letters within 20 s: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not a regatta message")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("bad signature")),
        "{reasons:?}"
    );

    // The worker is still there and runs valid work.
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: ok\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: fine\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(30))
            .await
            .state,
        BatchState::Succeeded
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_event_is_dead_lettered_by_the_coordinator() {
    let fleet = Fleet::start("dead-event", 0, 1, "30s").await;
    let names = Names::new(&fleet.namespace).expect("names");
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    broker::declare_topology(&channel, &names)
        .await
        .expect("topology");
    broker::publish_confirmed(
        &channel,
        &names.events_queue(),
        b"not an event",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let letters = regatta_tests::dead_letters(&channel, &names, 1, Duration::from_secs(20)).await;
    let (payload, reason) = letters.first().expect("a dead letter within 20 s");
    assert_eq!(payload, b"not an event");
    assert!(reason.contains("not a regatta message"), "{reason}");
    fleet.stop().await;
}
