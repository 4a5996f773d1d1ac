//! A huge enqueue does not stall the coordinator: while it validates,
//! builds and stores a batch of hundreds of thousands of units, its API
//! keeps answering and its namespace lock keeps being renewed (a lock that
//! lapsed would let a standby take over mid-enqueue).

use std::time::{Duration, Instant};

use regatta_coordinator::api::EnqueueRequest;
use regatta_coordinator::manifest::Manifest;
use regatta_tests::stall::Watch;
use regatta_tests::Fleet;

/// Units of the batch: enough that the enqueue takes seconds in a debug
/// build, few enough that the test stays under a minute.
const UNITS: usize = 200_000;

/// Units per dependency layer: each depends on up to three units of the
/// layer before.
const WIDTH: usize = 10_000;

/// The largest value the coordinator may store in one piece (1 MiB).
const MAX_STORED_VALUE: usize = 1 << 20;

/// Shared resources; every third unit uses one.
const RESOURCES: usize = 8;

/// A manifest of `UNITS` units in layers of `WIDTH`, shaped like a real
/// migration's (a task, an output, a resource, a fan-in), as JSON.
fn layered_manifest() -> String {
    let mut units = Vec::with_capacity(UNITS);
    for i in 0..UNITS {
        let mut unit = format!(
            r#"{{"id":"u{i:06}","task":"migrate package {i}","outputs":["out/u{i:06}.sql"]"#
        );
        if i >= WIDTH {
            let layer = i - i % WIDTH - WIDTH;
            let deps: Vec<String> = (0..1 + i % 3)
                .map(|k| format!(r#""u{:06}""#, layer + (i * 7 + k * 13) % WIDTH))
                .collect();
            unit.push_str(&format!(r#","depends_on":[{}]"#, deps.join(",")));
        }
        if i % 3 == 0 {
            unit.push_str(&format!(r#","uses":["db-{}"]"#, i % RESOURCES));
        }
        unit.push('}');
        units.push(unit);
    }
    let resources: Vec<String> = (0..RESOURCES)
        .map(|r| format!(r#""db-{r}":{}"#, 5 + r))
        .collect();
    format!(
        r#"{{"batch":"load","concurrency":100,"timeout":"10m","resources":{{{}}},"playbook":{{"name":"noop","run":"true","gates":[{{"name":"build","run":"true"}}]}},"units":[{}]}}"#,
        resources.join(","),
        units.join(",")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_enqueue_keeps_the_api_answering_and_the_lock_renewed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest =
        Manifest::parse(&layered_manifest(), "load.json", dir.path()).expect("valid manifest");
    // Serialised before the watch starts: the test's own threads stay free.
    let body = serde_json::to_vec(&EnqueueRequest { manifest }).expect("request body");
    // A short lock TTL (renewed every second): a renewal late by 2 s or
    // more shows as a lapse.
    let env = [
        ("REGATTA_LOCK_TTL", "3s"),
        ("REGATTA_MAX_MANIFEST_BYTES", "1000000000"),
    ];
    let mut fleet = Fleet::start_with_env("enqueue-load", 0, 1, "30s", &env).await;
    let lock_key = regatta_proto::Keys::new(&fleet.namespace)
        .expect("keys")
        .coordinator();
    let mut redis = regatta_tests::redis().await;
    let holder: Option<String> = redis::cmd("GET")
        .arg(&lock_key)
        .query_async(&mut redis)
        .await
        .expect("read the lock");

    let watch = Watch::coordinator(&fleet).await;
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/batches", fleet.api))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("enqueue request");
    let enqueued = started.elapsed();
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    // A stall right after the answer (the batch's first dispatch) counts too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stall = watch.stop().await;
    eprintln!(
        "{UNITS} units enqueued in {:.2} s (HTTP {status}); worst /healthz {} ms over {} polls \
         ({} failed); lowest lock PTTL {} ms over {} reads; slowest Redis answer {} ms",
        enqueued.as_secs_f64(),
        stall.worst_healthz.as_millis(),
        stall.healthz_samples,
        stall.healthz_failures,
        stall.min_lock_pttl_ms,
        stall.lock_samples,
        stall.worst_redis.as_millis(),
    );

    assert!(status.is_success(), "enqueue refused: {status} {text}");
    assert!(
        fleet.coordinator_exit().is_none(),
        "the coordinator stopped during the enqueue"
    );
    assert!(
        stall.lock_samples > 0 && !stall.lock_lapsed(),
        "the coordinator lock lapsed during the enqueue: {stall:?}"
    );
    let after: Option<String> = redis::cmd("GET")
        .arg(&lock_key)
        .query_async(&mut redis)
        .await
        .expect("read the lock");
    assert_eq!(after, holder, "the same coordinator holds the lock");
    assert!(
        stall.healthz_samples > 0 && stall.healthz_failures == 0,
        "/healthz failed during the enqueue: {stall:?}"
    );
    assert!(
        stall.worst_healthz < Duration::from_secs(3),
        "/healthz took {:?} to answer during the enqueue",
        stall.worst_healthz
    );
    let batch: serde_json::Value = serde_json::from_str(&text).expect("enqueue answer");
    let id = batch["batch_id"].as_str().expect("batch id");
    let summary = fleet.client().batch(id).await.expect("batch summary");
    assert_eq!(summary.total, UNITS, "{summary:?}");

    // No value of the batch's record is so large that storing it kept
    // Redis busy: the manifest went in pieces.
    let record_key = regatta_proto::Keys::new(&fleet.namespace)
        .expect("keys")
        .batch(id);
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&record_key)
        .query_async(&mut redis)
        .await
        .expect("record fields");
    for field in &fields {
        let length: usize = redis::cmd("HSTRLEN")
            .arg(&record_key)
            .arg(field)
            .query_async(&mut redis)
            .await
            .expect("field length");
        assert!(
            length <= MAX_STORED_VALUE,
            "field {field} of {record_key} holds {length} bytes"
        );
    }
    // And a restarted coordinator reads the same manifest back.
    fleet.restart_coordinator().await;
    let restored = fleet.client().batch(id).await.expect("restored batch");
    assert_eq!(restored.total, UNITS, "{restored:?}");
    assert_eq!(restored.manifest_sha256, summary.manifest_sha256);
    fleet.stop().await;
}

/// A batch whose manifest is over 1 MiB is stored in pieces, without the
/// single `manifest` field; its orders must still be known to the lease
/// script (which refuses orders of batches never stored) and run.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_stored_in_pieces_runs_its_units() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Twenty units with 60 KB tasks: over one piece, yet each task fits a
    // process's environment (128 KiB a variable).
    let task = "x".repeat(60_000);
    let mut yaml =
        String::from("batch: pieces\nplaybook:\n  name: p\n  run: 'echo done'\nunits:\n");
    for i in 0..20 {
        yaml.push_str(&format!("  - id: u{i}\n    task: {task}\n"));
    }
    assert!(yaml.len() > MAX_STORED_VALUE);
    regatta_tests::write_file(dir.path(), "manifest.yaml", &yaml);
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    let fleet = Fleet::start("pieces", 1, 2, "30s").await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let mut con = regatta_tests::redis().await;
    let keys = regatta_proto::Keys::new(&fleet.namespace).expect("keys");
    let pieces: Option<String> = redis::cmd("HGET")
        .arg(keys.batch(&batch))
        .arg("manifest_pieces")
        .query_async(&mut con)
        .await
        .expect("hget");
    assert!(
        pieces.is_some_and(|n| n != "0"),
        "the manifest is stored in pieces"
    );
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(
        summary.state,
        regatta_coordinator::scheduler::BatchState::Succeeded,
        "{summary:?}"
    );
    fleet.stop().await;
}
