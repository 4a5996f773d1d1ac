//! Chaos that restarts the shared RabbitMQ: run alone, after every other
//! test, by `scripts/test.sh` (each test here is `#[ignore]`d so that a plain
//! `cargo test` never restarts the broker under the feet of other tests).
//! The broker is always started again, even when an assertion fails.

use std::process::Command;
use std::time::Duration;

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::invariants::{
    check_fleet_batch, layered_units, write_session_script, Recording,
};
use regatta_tests::{write_file, Fleet};

/// Starts the broker's application again when dropped.
struct BrokerStopped;

impl BrokerStopped {
    fn stop() -> BrokerStopped {
        rabbitmqctl("stop_app");
        BrokerStopped
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

fn rabbitmqctl(command: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(command)
        .status()
        .unwrap_or_else(|e| panic!("rabbitmqctl {command}: {e}: this test needs the local RabbitMQ's rabbitmqctl (scripts/services.sh installs it)"));
    assert!(status.success(), "rabbitmqctl {command} failed: {status}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "restarts the shared RabbitMQ: scripts/test.sh runs it alone, after the other tests"]
async fn a_broker_restart_mid_batch_is_waited_out_and_the_batch_completes() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_session_script(dir.path());
    let timings = dir.path().join("timings.txt");
    let units = layered_units(5, 4, "");
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: broker-restart\nconcurrency: 4\nretries: 2\nplaybook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '0.8'}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let fleet = Fleet::start("chaos-broker", 2, 2, "30s").await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    // Let the batch get going, then take the broker away for a while.
    for _ in 0..100 {
        if Recording::read(&timings).sessions.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let _stopped = BrokerStopped::stop();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(180)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let report = check_fleet_batch(&fleet, &batch, &manifest, &timings).await;
    assert!(report.is_clean(), "{report}");
    fleet.stop().await;
}

/// Sets RabbitMQ's `consumer_timeout` and puts the old value back when dropped.
struct ConsumerTimeout(String);

impl ConsumerTimeout {
    fn set(ms: u64) -> ConsumerTimeout {
        let output = Command::new("rabbitmqctl")
            .args(["eval", "application:get_env(rabbit, consumer_timeout)."])
            .output()
            .expect("rabbitmqctl eval: this test needs the local RabbitMQ's rabbitmqctl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // `{ok,1800000}`, or `undefined` when the broker's default applies.
        let previous = text
            .trim()
            .strip_prefix("{ok,")
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or("1800000")
            .to_owned();
        set_consumer_timeout(&ms.to_string());
        ConsumerTimeout(previous)
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        set_consumer_timeout(&self.0);
    }
}

fn set_consumer_timeout(value: &str) {
    let status = Command::new("rabbitmqctl")
        .args([
            "eval",
            &format!("application:set_env(rabbit, consumer_timeout, {value})."),
        ])
        .status()
        .expect("rabbitmqctl eval");
    assert!(status.success(), "cannot set consumer_timeout to {value}");
}

/// Contract 2: a session longer than RabbitMQ's `consumer_timeout` neither
/// gets its channel closed (406) nor its order redelivered, because the
/// worker acks its delivery as soon as its claim is in Redis.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "changes the shared RabbitMQ's consumer_timeout: scripts/test.sh runs it alone, after the other tests"]
async fn a_session_longer_than_consumer_timeout_runs_once() {
    let _timeout = ConsumerTimeout::set(60_000);
    let dir = tempfile::tempdir().expect("temp dir");
    write_session_script(dir.path());
    let timings = dir.path().join("timings.txt");
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: long-session\ntimeout: 10m\nretries: 1\nplaybook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '150'}}\nunits:\n  - id: long\n",
            timings.display()
        ),
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    // Channels read consumer_timeout when they open: start the fleet after.
    let fleet = Fleet::start("chaos-consumer-timeout", 1, 1, "30s").await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(300)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = fleet.client().units(&batch, None).await.expect("units");
    assert_eq!(
        units[0].history.len(),
        1,
        "one attempt: {:?}",
        units[0].history
    );
    let recording = Recording::read(&timings);
    assert_eq!(
        recording.sessions.len(),
        1,
        "the order ran once: {recording:?}"
    );
    fleet.stop().await;
}
