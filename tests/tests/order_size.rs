//! An order larger than the broker accepts is never published (RabbitMQ
//! refuses it, and it used to be re-sent forever): its unit fails with the
//! reason and ends in needs_review; the rest of the batch goes on.

use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::UnitState;
use regatta_proto::Names;
use regatta_tests::{rabbitmq, write_file, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn an_order_over_the_brokers_limit_needs_review_instead_of_looping() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 17 MiB of environment: over the 16 MiB that RabbitMQ 4 accepts.
    let manifest = serde_json::json!({
        "batch": "order-size",
        "retries": 1,
        "playbook": {"name": "p", "run": "true"},
        "units": [
            {"id": "huge", "env": {"BLOB": "x".repeat(17 << 20)}},
            {"id": "small"},
            {"id": "after-huge", "depends_on": ["huge"]},
        ],
    });
    write_file(dir.path(), "manifest.json", &manifest.to_string());
    let manifest = Manifest::load(&dir.path().join("manifest.json")).expect("valid manifest");
    let fleet = Fleet::start("order-size", 0, 1, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");

    let deadline = Instant::now() + Duration::from_secs(60);
    let huge = loop {
        let units = client.units(&batch, None).await.expect("units");
        let huge = units.iter().find(|u| u.id == "huge").expect("huge").clone();
        if huge.state == UnitState::NeedsReview {
            break huge;
        }
        assert!(
            Instant::now() < deadline,
            "the oversized unit never reached needs_review: {:?} {:?}",
            huge.state,
            huge.reason
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reason = huge.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("exceeds the broker's limit of 16777216"),
        "{reason}"
    );
    assert_eq!(huge.history.len(), 2, "one attempt and its one retry");
    let units = client.units(&batch, None).await.expect("units");
    let state = |id: &str| units.iter().find(|u| u.id == id).map(|u| u.state);
    assert_eq!(state("small"), Some(UnitState::Queued));
    assert_eq!(state("after-huge"), Some(UnitState::Blocked));

    // Only the small unit's order reached the work queue.
    let names = Names::new(&fleet.namespace).expect("names");
    let connection = rabbitmq().await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            names.work_queue().as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the work queue exists");
    assert_eq!(queue.message_count(), 1);
    let _ = connection.close(200, "done".into()).await;
    fleet.stop().await;
}
