//! The broker link rebuilds a lost connection by itself (lapin does not):
//! every process of a fleet loses RabbitMQ, and new connections are refused,
//! several times during a batch; each comes back with its topology, its
//! consumers and its publishers, and the batch completes. The broker is
//! taken away by a proxy in front of it, so only this test's fleet sees the
//! outage and the test runs beside the others.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use regatta_broker::BrokerLink;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_proto::Names;
use regatta_tests::invariants::{
    check_fleet_batch, layered_units, write_session_script, Recording,
};
use regatta_tests::proxy::Proxy;
use regatta_tests::{rabbitmq, unique_namespace, write_file, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_connection_is_rebuilt_with_the_topology_it_lost() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let names = Names::new(&unique_namespace("link")).expect("names");
    let link = BrokerLink::connect(&url, "regatta-tests link", names.clone())
        .await
        .expect("connect through the proxy");
    link.channel().await.expect("a channel");

    // The broker goes away, and its queues with it (a new, empty node).
    proxy.cut();
    let direct = rabbitmq().await;
    regatta_tests::delete_queues(&direct, names.namespace()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = link.channel().await;
    assert!(refused.is_err(), "a channel while the broker is away");
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains(&format!("127.0.0.1:{}", proxy.port)),
        "the error names the broker: {message}"
    );

    proxy.restore();
    // Callers back off between attempts; so does this one.
    let mut attempts = 0;
    let channel = loop {
        match link.channel().await {
            Ok(channel) => break channel,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no channel once the broker is back: {e}"),
        }
    };
    assert_eq!(link.rebuilds(), 1);
    for queue in names.queues(regatta_proto::names::DELIVERY_LIMIT) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.name.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("queue {} declared again: {e}", queue.name));
    }
    regatta_tests::delete_queues(&direct, names.namespace()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_that_loses_the_broker_three_times_reconnects_and_completes_its_batch() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let dir = tempfile::tempdir().expect("temp dir");
    write_session_script(dir.path());
    let timings = dir.path().join("timings.txt");
    let units = layered_units(6, 4, "    uses: [db]\n");
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: link\nretries: 2\nresources: {{db: 3}}\nplaybook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '0.4'}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let env = [("REGATTA_AMQP_URL", url.as_str())];
    let fleet = Fleet::start_with_env("chaos-link", 2, 2, "5s", &env).await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let mut seen = 0;
    for cut in 0..3 {
        // Wait for progress since the last outage, then take the broker away.
        for _ in 0..300 {
            if Recording::read(&timings).sessions.len() >= seen + 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen = Recording::read(&timings).sessions.len();
        assert!(
            seen < manifest.units.len(),
            "the batch ended before outage {cut}; make the units slower"
        );
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.restore();
    }
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let report = check_fleet_batch(&fleet, &batch, &manifest, &timings).await;
    assert!(report.is_clean(), "{report}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_channel_is_reused_while_open_and_replaced_once_the_broker_closes_it() {
    let names = Names::new(&unique_namespace("kept")).expect("names");
    let link = BrokerLink::connect(
        &regatta_tests::amqp_url(),
        "regatta-tests kept",
        names.clone(),
    )
    .await
    .expect("connect");
    let mut kept = regatta_broker::KeptChannel::new();
    let first = kept
        .get_or_open(|| link.channel())
        .await
        .expect("a channel")
        .id();
    let again = kept
        .get_or_open(|| async { Err::<lapin::Channel, _>("must not open while one is open") })
        .await
        .expect("the kept channel")
        .id();
    assert_eq!(again, first, "an open channel is kept");

    // The broker closes a channel that declares a missing queue passively.
    let missing = kept
        .get_or_open(|| link.channel())
        .await
        .expect("the kept channel")
        .queue_declare(
            format!("{}.missing", names.namespace()).as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(missing.is_err(), "a missing queue is refused");
    let replaced = kept
        .get_or_open(|| link.channel())
        .await
        .expect("a fresh channel")
        .clone();
    assert_ne!(replaced.id(), first, "a closed channel is replaced");
    assert!(replaced.status().connected());
    regatta_tests::delete_queues(&rabbitmq().await, names.namespace()).await;
}
