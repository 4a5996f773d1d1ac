//! Observability end to end: `/metrics` shows a finished batch's counts,
//! and the spans exported over OTLP make one trace per unit attempt, linked
//! to what made it ready, with errors marked as errors.

use std::time::Duration;

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::{write_file, Fleet};

/// The value of one sample line of the Prometheus text, by its exact prefix.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_the_counts_of_a_finished_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: metered\nretries: 1\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: a\n  - id: b\n  - id: c\n    depends_on: [a]\n  - id: broken\n    run: exit 1\n  - id: after-broken\n    depends_on: [broken]\n  - id: slow\n    run: sleep 30\n    timeout: 500ms\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let fleet = Fleet::start("metrics", 2, 2, "30s").await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(60))
            .await
            .state,
        BatchState::Failed
    );

    let text = reqwest::get(format!("{}/metrics", fleet.api))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let units = |state: &str| {
        sample(
            &text,
            &format!("regatta_units{{batch=\"{batch}\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(units("succeeded"), Some(3.0), "{text}");
    assert_eq!(units("needs_review"), Some(2.0));
    assert_eq!(units("blocked"), Some(1.0));
    assert_eq!(units("running"), Some(0.0));
    assert_eq!(
        sample(&text, "regatta_sessions_total{outcome=\"succeeded\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "regatta_sessions_total{outcome=\"failed\"}"),
        Some(2.0)
    );
    // Spelled as the API and the evidence pack spell it (the label once
    // said `timedout`).
    assert_eq!(
        sample(&text, "regatta_sessions_total{outcome=\"timed_out\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "regatta_retries_total"), Some(2.0));
    assert_eq!(sample(&text, "regatta_published_orders_total"), Some(7.0));
    assert_eq!(
        sample(&text, "regatta_session_duration_seconds_count"),
        Some(7.0)
    );
    assert_eq!(sample(&text, "regatta_queue_wait_seconds_count"), Some(7.0));
    assert_eq!(sample(&text, "regatta_dead_lettered_messages"), Some(0.0));
    fleet.stop().await;
}

/// Spans received by a minimal OTLP/HTTP receiver.
#[derive(Clone, Default)]
struct Received(std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>);

type Attributes = std::collections::BTreeMap<String, AttributeValue>;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AttributeValue;

#[derive(Clone, Debug)]
struct ReceivedSpan {
    resource: Attributes,
    name: String,
    kind: i32,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Attributes,
    /// (code, message): 0 unset, 1 ok, 2 error.
    status: (i32, String),
    events: Vec<(String, Attributes)>,
    /// (trace id, span id, attributes) of each link.
    links: Vec<(Vec<u8>, Vec<u8>, Attributes)>,
}

/// OTLP's span kinds and status codes, as numbers on the wire.
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const OK: i32 = 1;
const ERROR: i32 = 2;

impl ReceivedSpan {
    fn text(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(AttributeValue::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    /// An attribute that arrived as an integer (never as text).
    fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(AttributeValue::IntValue(i)) => Some(*i),
            _ => None,
        }
    }

    fn resource_text(&self, key: &str) -> Option<&str> {
        match self.resource.get(key) {
            Some(AttributeValue::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn trace_hex(&self) -> String {
        self.trace_id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Attributes {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.value.clone()?)))
        .collect()
}

async fn receive(
    axum::extract::State(received): axum::extract::State<Received>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut spans = received.0.lock().unwrap_or_else(|p| p.into_inner());
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    resource: resource.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: span.trace_id.clone(),
                    span_id: span.span_id.clone(),
                    parent_span_id: span.parent_span_id.clone(),
                    attributes: attributes(&span.attributes),
                    status: span
                        .status
                        .as_ref()
                        .map(|s| (s.code, s.message.clone()))
                        .unwrap_or_default(),
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| {
                            (
                                l.trace_id.clone(),
                                l.span_id.clone(),
                                attributes(&l.attributes),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    axum::http::StatusCode::OK
}

/// Starts the receiver; returns its endpoint.
async fn otlp_receiver(received: &Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    endpoint
}

/// A batch with a dependency (`after` waits for `flaky`), a unit retried
/// (`flaky` fails its first attempt), a gate repaired once (`mended`), a
/// gate that escalates after its repair (`doomed`, twice: it is retried)
/// and a session past its deadline (`slow`, twice).
const TRACED_BATCH: &str = r#"batch: traced
retries: 1
playbook:
  name: p
  run: 'true'
  gates:
    - name: mendable
      run: 'test -f "$REGATTA_ARTIFACT_DIR/mended"'
      fix: 'touch "$REGATTA_ARTIFACT_DIR/mended"'
      repairs: 2
    - name: hopeless
      run: 'exit 3'
      fix: 'true'
      repairs: 1
units:
  - id: flaky
    run: 'test "$REGATTA_ATTEMPT" -gt 1'
    verify: []
  - id: after
    depends_on: [flaky]
    verify: []
  - id: mended
    verify: [mendable]
  - id: doomed
    verify: [hopeless]
  - id: slow
    run: 'sleep 30'
    timeout: 500ms
    verify: []
"#;

#[tokio::test(flavor = "multi_thread")]
async fn each_attempt_is_one_linked_trace_with_its_errors_marked() {
    let received = Received::default();
    let endpoint = otlp_receiver(&received).await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "manifest.yaml", TRACED_BATCH);
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // Every session reports `started`, so that its span is checked too
        // (by default only sessions longer than a second do).
        ("REGATTA_STARTED_AFTER", "0s"),
    ];
    let fleet = Fleet::start_with_env("traces", 2, 2, "30s", &env).await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(60))
            .await
            .state,
        BatchState::Failed,
        "doomed needs review; the rest succeed"
    );
    let sessions = fleet
        .client()
        .sessions(&batch, None)
        .await
        .expect("sessions");
    // flaky twice, after, mended, doomed twice, slow twice.
    assert_eq!(sessions.len(), 8, "{sessions:#?}");

    // Wait until every session's publish, session and finished result arrived.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = received.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let complete = sessions.iter().all(|s| {
            ["publish", "session", "result.finished"]
                .iter()
                .all(|name| {
                    spans
                        .iter()
                        .any(|sp| sp.name == *name && sp.text("session") == Some(&s.session_id))
                })
        });
        if complete {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans never arrived: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let session_of = |unit: &str, attempt: u32| {
        sessions
            .iter()
            .find(|s| s.unit == unit && s.attempt == attempt)
            .unwrap_or_else(|| panic!("no session {unit} #{attempt}: {sessions:#?}"))
    };
    let span_of = |name: &str, session: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.text("session") == Some(session))
            .unwrap_or_else(|| panic!("no {name} span of session {session}"))
    };
    let children = |parent: &ReceivedSpan, name: &str| -> Vec<&ReceivedSpan> {
        spans
            .iter()
            .filter(|s| {
                s.name == name
                    && s.trace_id == parent.trace_id
                    && s.parent_span_id == parent.span_id
            })
            .collect()
    };

    // One trace per attempt: each publish is a root, the worker's session
    // and the coordinator's results join it, and the trace id is the one the
    // API and the evidence pack give.
    let mut traces = std::collections::BTreeSet::new();
    for s in &sessions {
        let publish = span_of("publish", &s.session_id);
        assert!(
            publish.parent_span_id.is_empty(),
            "publish of {} #{} has a parent",
            s.unit,
            s.attempt
        );
        assert!(
            traces.insert(publish.trace_id.clone()),
            "two attempts share a trace"
        );
        assert_eq!(
            s.trace_id.as_deref(),
            Some(publish.trace_hex().as_str()),
            "API trace id of {} #{}",
            s.unit,
            s.attempt
        );
        let pack_path = &s.evidence.as_ref().expect("an evidence pack").path;
        let pack: regatta_proto::evidence::SessionPack =
            serde_json::from_slice(&std::fs::read(pack_path).expect("read pack")).expect("pack");
        assert_eq!(
            pack.trace_id, s.trace_id,
            "the pack names the session's trace"
        );
        let session = span_of("session", &s.session_id);
        assert_eq!(session.trace_id, publish.trace_id);
        assert_eq!(
            session.parent_span_id, publish.span_id,
            "the session's parent is its publish"
        );
        for name in ["result.started", "result.finished"] {
            let result = span_of(name, &s.session_id);
            assert_eq!(
                result.trace_id, publish.trace_id,
                "{name} of {} #{}",
                s.unit, s.attempt
            );
            assert_eq!(
                result.parent_span_id, session.span_id,
                "{name} is under the session"
            );
        }
        // Nothing of another attempt in this trace.
        for other in spans.iter().filter(|sp| sp.trace_id == publish.trace_id) {
            if let Some(id) = other.text("session") {
                assert_eq!(
                    id, s.session_id,
                    "{} of another session in {}'s trace",
                    other.name, s.unit
                );
            }
        }
        for child in ["lease.acquire", "command"] {
            assert_eq!(
                children(session, child).len(),
                1,
                "{child} under {} #{}",
                s.unit,
                s.attempt
            );
        }
    }
    assert_eq!(traces.len(), 8);

    // Links: the retry follows from the failed attempt's result and trace;
    // the dependent unit follows from the result that made it ready.
    let link = |from: &ReceivedSpan, relation: &str| {
        from.links
            .iter()
            .find(|(_, _, a)| {
                a.get("regatta.link") == Some(&AttributeValue::StringValue(relation.into()))
            })
            .map(|(trace, span, _)| (trace.clone(), span.clone()))
            .unwrap_or_else(|| panic!("no {relation} link on {} {:?}", from.name, from.links))
    };
    let flaky1 = session_of("flaky", 1);
    let flaky2 = session_of("flaky", 2);
    let retry = span_of("publish", &flaky2.session_id);
    let first_publish = span_of("publish", &flaky1.session_id);
    let first_result = span_of("result.finished", &flaky1.session_id);
    assert_eq!(
        link(retry, "previous_attempt"),
        (
            first_publish.trace_id.clone(),
            first_publish.span_id.clone()
        )
    );
    assert_eq!(
        link(retry, "made_ready"),
        (first_result.trace_id.clone(), first_result.span_id.clone())
    );
    let after = span_of("publish", &session_of("after", 1).session_id);
    let unblocking = span_of("result.finished", &flaky2.session_id);
    assert_eq!(
        link(after, "made_ready"),
        (unblocking.trace_id.clone(), unblocking.span_id.clone())
    );
    assert_eq!(after.links.len(), 1, "a first attempt has no previous one");

    // Errors are errors, with the reason `regatta sessions` gives.
    let error_with = |span: &ReceivedSpan, reason: &str| {
        assert_eq!(
            span.status,
            (ERROR, reason.to_owned()),
            "{} {:?}",
            span.name,
            span.attributes
        );
        assert!(
            span.events.iter().any(|(name, a)| name == "exception"
                && a.get("exception.message") == Some(&AttributeValue::StringValue(reason.into()))),
            "no exception event on {}: {:?}",
            span.name,
            span.events
        );
    };
    let failed_reason = flaky1.reason.as_deref().expect("a reason");
    assert_eq!(failed_reason, "the command exited with status 1");
    error_with(span_of("session", &flaky1.session_id), failed_reason);
    error_with(first_result, failed_reason);
    let failed_command = children(span_of("session", &flaky1.session_id), "command")[0];
    error_with(failed_command, failed_reason);
    assert_eq!(failed_command.int("process.exit.code"), Some(1));
    for attempt in [1, 2] {
        let doomed = session_of("doomed", attempt);
        let reason = doomed.reason.as_deref().expect("a reason");
        assert_eq!(reason, "gate hopeless failed after 1 repairs");
        let session = span_of("session", &doomed.session_id);
        error_with(session, reason);
        error_with(span_of("result.finished", &doomed.session_id), reason);
        let gate = children(session, "gate");
        assert_eq!(gate.len(), 1);
        error_with(gate[0], reason);
        assert_eq!(gate[0].int("gate.repairs"), Some(1));
    }
    for attempt in [1, 2] {
        let slow = session_of("slow", attempt);
        assert_eq!(slow.state, "timed_out");
        let reason = slow.reason.as_deref().expect("a reason");
        assert_eq!(
            reason,
            "the deadline of 500ms passed; the session was killed"
        );
        let session = span_of("session", &slow.session_id);
        error_with(session, reason);
        let command = children(session, "command")[0];
        error_with(
            command,
            "the deadline of 500ms passed; the command was killed",
        );
        assert_eq!(command.text("process.signal"), Some("SIGTERM"));
        assert_eq!(command.text("command.ending"), Some("timed_out"));
    }
    // Successes are OK, a repaired gate too, with its numbered repair.
    let mended = span_of("session", &session_of("mended", 1).session_id);
    let gate = children(mended, "gate");
    assert_eq!(gate.len(), 1);
    assert_eq!(gate[0].status.0, OK);
    assert_eq!(gate[0].int("gate.repairs"), Some(1));
    let repairs = children(gate[0], "repair");
    assert_eq!(repairs.len(), 1);
    assert_eq!(repairs[0].int("repair.number"), Some(1));
    assert!(!repairs[0].attributes.contains_key("attempt"));
    for s in sessions.iter().filter(|s| s.state == "succeeded") {
        for name in ["publish", "session", "result.finished"] {
            assert_eq!(
                span_of(name, &s.session_id).status.0,
                OK,
                "{name} of {} #{}",
                s.unit,
                s.attempt
            );
        }
        let command = children(span_of("session", &s.session_id), "command")[0];
        assert_eq!(command.status.0, OK);
        assert_eq!(command.int("process.exit.code"), Some(0));
        assert!(command.int("command.duration_ms").is_some());
    }

    // Kinds and messaging attributes on what crosses RabbitMQ; integers as
    // integers; the lease acquisition's demand, wait and fencing number.
    let work_queue = format!("{}.work", fleet.namespace);
    let events_queue = format!("{}.events", fleet.namespace);
    for s in &sessions {
        let publish = span_of("publish", &s.session_id);
        let session = span_of("session", &s.session_id);
        let result = span_of("result.finished", &s.session_id);
        assert_eq!(
            (publish.kind, session.kind, result.kind),
            (PRODUCER, CONSUMER, CONSUMER)
        );
        for (span, operation, queue) in [
            (publish, "send", &work_queue),
            (session, "process", &work_queue),
            (result, "process", &events_queue),
        ] {
            assert_eq!(
                span.text("messaging.system"),
                Some("rabbitmq"),
                "{}",
                span.name
            );
            assert_eq!(span.text("messaging.operation.type"), Some(operation));
            assert_eq!(
                span.text("messaging.destination.name"),
                Some(queue.as_str())
            );
            assert_eq!(
                span.text("messaging.message.id"),
                Some(s.session_id.as_str())
            );
            assert!(span
                .int("messaging.message.body.size")
                .is_some_and(|n| n > 0));
            assert_eq!(
                span.int("attempt"),
                Some(i64::from(s.attempt)),
                "{} attempt as an integer",
                span.name
            );
        }
        let lease = children(session, "lease.acquire")[0];
        assert!(lease.text("lease.resources").is_some());
        assert!(lease.int("lease.wait_ms").is_some());
        assert_eq!(lease.int("lease.fencing"), result.int("fencing"));
        assert!(lease.int("lease.fencing").is_some_and(|f| f > 0));
        assert_eq!(lease.status.0, OK);
        // The resource says which service, version, instance and host.
        assert_eq!(
            publish.resource_text("service.name"),
            Some("regatta-coordinator")
        );
        assert_eq!(
            session.resource_text("service.name"),
            Some("regatta-worker")
        );
        assert_eq!(
            session.resource_text("service.instance.id"),
            s.worker.as_deref()
        );
        for span in [publish, session] {
            assert_eq!(
                span.resource_text("service.version"),
                Some(env!("CARGO_PKG_VERSION"))
            );
            assert!(span
                .resource_text("host.name")
                .is_some_and(|h| !h.is_empty()));
        }
    }
    fleet.stop().await;
}

/// Waits until `ready` says the received spans hold what the test needs.
async fn spans_when(
    received: &Received,
    what: &str,
    ready: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let spans = received.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if ready(&spans) {
            return spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never arrived: {:#?}",
            spans
                .iter()
                .map(|s| (&s.name, s.text("session")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_republished_and_then_lost_attempt_stays_one_trace_ending_in_error() {
    let received = Received::default();
    let endpoint = otlp_receiver(&received).await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: lost\nretries: 0\nplaybook:\n  name: p\n  run: 'sleep 30'\nunits:\n  - id: stuck\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    // No worker yet: the order waits in the queue while the coordinator
    // restarts and publishes it again.
    let mut fleet = Fleet::start_with_env("traces-lost", 0, 1, "2s", &env).await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    spans_when(&received, "the first publish", |spans| {
        spans.iter().any(|s| s.name == "publish")
    })
    .await;
    fleet.restart_coordinator().await;
    fleet.add_worker(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fleet
        .client()
        .sessions(&batch, Some("running"))
        .await
        .map(|s| s.is_empty())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the session never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.kill_worker(0);
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(30))
            .await
            .state,
        BatchState::Failed
    );
    let sessions = fleet
        .client()
        .sessions(&batch, None)
        .await
        .expect("sessions");
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let lost = &sessions[0];
    assert_eq!(lost.state, "lost");
    let reason = lost.reason.clone().expect("a reason");
    assert_eq!(reason, "lost: worker w0 stopped renewing its leases");
    let session_id = lost.session_id.clone();
    let spans = spans_when(&received, "the reaped result", |spans| {
        spans
            .iter()
            .any(|s| s.name == "result.finished" && s.text("session") == Some(&session_id))
    })
    .await;

    let publishes: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "publish" && s.text("session") == Some(&session_id))
        .collect();
    assert_eq!(
        publishes.len(),
        2,
        "published, then again after the restart"
    );
    let first = publishes
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("a root publish");
    let again = publishes
        .iter()
        .find(|s| !s.parent_span_id.is_empty())
        .expect("a second publish");
    assert_eq!(lost.trace_id.as_deref(), Some(first.trace_hex().as_str()));
    assert_eq!(
        again.trace_id, first.trace_id,
        "the re-publish joins the attempt's trace"
    );
    assert_eq!(again.parent_span_id, first.span_id);
    let result = spans
        .iter()
        .find(|s| s.name == "result.finished" && s.text("session") == Some(&session_id))
        .expect("the reaped result");
    assert_eq!(
        result.trace_id, first.trace_id,
        "the reaped result is in the attempt's trace"
    );
    assert_eq!(result.parent_span_id, first.span_id);
    assert_eq!(result.status, (ERROR, reason.clone()));
    assert!(result.events.iter().any(|(name, a)| name == "exception"
        && a.get("exception.message") == Some(&AttributeValue::StringValue(reason.clone()))));
    fleet.stop().await;
}

/// Copies the demo (manifest, scripts, inputs) into `to`, so its outputs
/// land there and not in the repository.
fn copy_demo(to: &std::path::Path) {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    std::fs::copy(demo.join("manifest.yaml"), to.join("manifest.yaml")).expect("manifest");
    for folder in ["scripts", "input"] {
        std::fs::create_dir_all(to.join(folder)).expect("folder");
        for entry in std::fs::read_dir(demo.join(folder)).expect("demo folder") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), to.join(folder).join(entry.file_name())).expect("copy");
        }
    }
}

/// How deep a span sits in its trace (a root is 1).
fn depth(spans: &[ReceivedSpan], span: &ReceivedSpan) -> usize {
    let mut depth = 1;
    let mut parent = span.parent_span_id.clone();
    while let Some(up) = spans
        .iter()
        .find(|s| !parent.is_empty() && s.span_id == parent && s.trace_id == span.trace_id)
    {
        depth += 1;
        parent = up.parent_span_id.clone();
    }
    depth
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_batch_is_one_shallow_trace_per_attempt() {
    let received = Received::default();
    let endpoint = otlp_receiver(&received).await;
    let dir = tempfile::tempdir().expect("temp dir");
    copy_demo(dir.path());
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let fleet = Fleet::start_with_env("traces-demo", 3, 2, "30s", &env).await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(90))
            .await
            .state,
        BatchState::Succeeded
    );
    let sessions = fleet
        .client()
        .sessions(&batch, None)
        .await
        .expect("sessions");
    assert_eq!(sessions.len(), 21, "20 units, warmup twice");
    let spans = spans_when(&received, "every session's result", |spans| {
        sessions.iter().all(|s| {
            spans
                .iter()
                .any(|sp| sp.name == "result.finished" && sp.text("session") == Some(&s.session_id))
        })
    })
    .await;
    let traces: std::collections::BTreeSet<_> = spans.iter().map(|s| &s.trace_id).collect();
    let largest = traces
        .iter()
        .map(|t| spans.iter().filter(|s| &&s.trace_id == t).count())
        .max()
        .unwrap_or(0);
    let deepest = spans.iter().map(|s| depth(&spans, s)).max().unwrap_or(0);
    let mut errors: Vec<_> = spans
        .iter()
        .filter(|s| s.status.0 == ERROR)
        .map(|s| s.name.as_str())
        .collect();
    errors.sort_unstable();
    println!(
        "demo batch: {} spans in {} traces for {} sessions; largest trace {largest} spans, \
         deepest span at level {deepest}; ERROR spans: {errors:?}",
        spans.len(),
        traces.len(),
        sessions.len()
    );
    assert_eq!(traces.len(), sessions.len(), "one trace per attempt");
    // publish > session > gate > command: four levels, whatever the batch's size.
    assert_eq!(deepest, 4);
    // warmup's first attempt: its command, its session and its result.
    assert_eq!(errors, ["command", "result.finished", "session"]);
    fleet.stop().await;
}
