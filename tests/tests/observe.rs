//! Observability end to end: `/metrics` shows a finished batch's counts.

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
        "batch: metered\nretries: 1\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: a\n  - id: b\n  - id: c\n    depends_on: [a]\n  - id: broken\n    run: exit 1\n  - id: after-broken\n    depends_on: [broken]\n",
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
    assert_eq!(units("needs_review"), Some(1.0));
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
    assert_eq!(sample(&text, "regatta_retries_total"), Some(1.0));
    assert_eq!(sample(&text, "regatta_published_orders_total"), Some(5.0));
    assert_eq!(
        sample(&text, "regatta_session_duration_seconds_count"),
        Some(5.0)
    );
    assert_eq!(sample(&text, "regatta_queue_wait_seconds_count"), Some(5.0));
    assert_eq!(sample(&text, "regatta_dead_lettered_messages"), Some(0.0));
    fleet.stop().await;
}

/// Spans received by a minimal OTLP/HTTP receiver.
#[derive(Clone, Default)]
struct Received(std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>);

#[derive(Clone, Debug)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: std::collections::BTreeMap<String, String>,
}

async fn receive(
    axum::extract::State(received): axum::extract::State<Received>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    };
    let mut spans = received.0.lock().unwrap_or_else(|p| p.into_inner());
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: span.trace_id.clone(),
                    span_id: span.span_id.clone(),
                    parent_span_id: span.parent_span_id.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }
    axum::http::StatusCode::OK
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_unit_across_coordinator_and_workers() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: traced\nplaybook:\n  name: p\n  run: 'true'\n  gates:\n    - name: check\n      run: 'true'\nunits:\n  - id: first\n  - id: second\n    depends_on: [first]\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let fleet = Fleet::start_with_env("traces", 2, 1, "30s", &env).await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(30))
            .await
            .state,
        BatchState::Succeeded
    );

    // Wait for the exporters' batches to arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = received.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let of = |name: &str| {
            spans
                .iter()
                .filter(|s| {
                    s.name == name && s.attributes.get("unit").map(String::as_str) == Some("second")
                })
                .count()
        };
        if of("publish") > 0
            && of("session") > 0
            && of("result") >= 2
            && spans.iter().any(|s| s.name == "gate")
        {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans never arrived: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name && s.attributes.get("unit").map(String::as_str) == Some("second")
            })
            .unwrap_or_else(|| panic!("no {name} span for unit second"))
    };
    let publish = find("publish");
    let session = find("session");
    assert_eq!(publish.service, "regatta-coordinator");
    assert_eq!(session.service, "regatta-worker");
    assert_eq!(
        session.trace_id, publish.trace_id,
        "the worker's session continues the publish's trace"
    );
    assert_eq!(
        session.parent_span_id, publish.span_id,
        "the session's parent is the publish span"
    );
    assert_eq!(session.attributes.get("batch"), Some(&batch));
    assert!(session.attributes.contains_key("session"));
    // The session's children: the lease acquisition, the command and the gate.
    for child in ["lease.acquire", "command", "gate"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == child && s.parent_span_id == session.span_id),
            "no {child} span under the session {session:?}: {spans:#?}"
        );
    }
    // The coordinator's handling of the results joins the same trace.
    let results: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.name == "result" && s.attributes.get("unit").map(String::as_str) == Some("second")
        })
        .collect();
    assert!(results
        .iter()
        .all(|r| r.trace_id == publish.trace_id && r.service == "regatta-coordinator"));
    assert!(results.iter().any(|r| r.parent_span_id == session.span_id));
    fleet.stop().await;
}
