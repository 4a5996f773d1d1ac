//! The HTTP API under attack: forged log paths, idle and half-sent
//! connections, oversized and slow bodies, tokens, and an open listen
//! address. Each test would pass against a coordinator without the fix only
//! if the attack failed by itself.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::UnitState;
use regatta_proto::{EventKind, Outcome, SessionEvent};
use regatta_tests::{binary, rabbitmq, redis, write_file, Fleet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A one-unit manifest whose unit is never run (the fleets here have no worker).
fn one_unit_manifest(dir: &Path) -> Manifest {
    write_file(
        dir,
        "manifest.yaml",
        "batch: api\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: victim\n",
    );
    Manifest::load(&dir.join("manifest.yaml")).expect("valid manifest")
}

/// The host and port of an API address such as `http://127.0.0.1:1234`.
fn host_port(api: &str) -> String {
    api.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Sends raw bytes on a new connection and returns the response's status
/// line and body (or what went wrong), waiting at most `timeout`.
async fn raw_request(api: &str, bytes: &[u8], timeout: Duration) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(host_port(api)).await?;
        stream.write_all(bytes).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => format!("(connection failed: {e})"),
        Err(_) => format!("(no answer within {timeout:?})"),
    }
}

/// A `finished` event for the unit's session, signed with the fleet's own
/// secret (as a compromised worker, or anyone holding the secret, could).
fn forged_finished(batch: &str, unit: &str, session: &str, log_path: &str) -> SessionEvent {
    SessionEvent {
        batch_id: batch.to_owned(),
        unit_id: unit.to_owned(),
        session_id: session.to_owned(),
        attempt: 1,
        fencing: 0,
        worker: "forger".into(),
        at_ms: 1,
        kind: EventKind::Finished {
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 1,
            reason: None,
            log_tail: "the tail the event carried".into(),
            log_path: log_path.to_owned(),
            gates: Vec::new(),
            evidence: None,
            git: None,
            usage: None,
            started_at_ms: None,
            lease_wait_ms: None,
        },
    }
}

/// Item 1 of issue 18: a validly signed `finished` event names a file
/// outside the artifact store as the session's log; the log endpoint used
/// to read and serve it.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_log_path_never_makes_the_api_serve_a_file_outside_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = tempfile::tempdir().expect("store");
    let outside = tempfile::tempdir().expect("outside");
    let secret_text = format!("TOP-SECRET-{}", uuid::Uuid::new_v4().simple());
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, format!("{secret_text}\n")).expect("write the secret");
    let store_path = store.path().display().to_string();
    let fleet = Fleet::start_with_env(
        "api-log",
        0,
        1,
        "30s",
        &[("REGATTA_ARTIFACT_STORE", &store_path)],
    )
    .await;
    let client = fleet.client();
    let batch = client
        .enqueue(&one_unit_manifest(dir.path()))
        .await
        .expect("enqueue");

    // The unit is published (queued) but no worker takes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let units = client.units(&batch, None).await.expect("units");
        if let Some(attempt) = units[0].history.last() {
            break attempt.session_id.clone();
        }
        assert!(Instant::now() < deadline, "the unit was never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    fleet
        .publish_events(&[forged_finished(
            &batch,
            "victim",
            &session,
            &secret.display().to_string(),
        )])
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let units = client.units(&batch, None).await.expect("units");
        if units[0].state == UnitState::Succeeded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the forged event was never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let log = client.log(&batch, "victim").await.expect("log");
    assert!(
        !log.tail.contains(&secret_text),
        "the API served the file the event named: {log:?}"
    );
    assert_eq!(log.tail, "the tail the event carried", "{log:?}");
    assert_ne!(log.log_path, secret.display().to_string());

    // A symlink planted where the log belongs is not followed either.
    let session_dir = store.path().join(&batch).join("victim").join(&session);
    std::fs::create_dir_all(&session_dir).expect("session folder");
    std::os::unix::fs::symlink(&secret, session_dir.join("session.log")).expect("symlink");
    let log = client.log(&batch, "victim").await.expect("log");
    assert!(
        !log.tail.contains(&secret_text),
        "the API followed a symlink out of the store: {log:?}"
    );

    // The real log, where the store keeps it, is what the API serves.
    std::fs::remove_file(session_dir.join("session.log")).expect("remove the link");
    std::fs::write(session_dir.join("session.log"), "line one\nline two\n").expect("log");
    let log = client.log(&batch, "victim").await.expect("log");
    assert_eq!(log.tail, "line one\nline two", "{log:?}");
    fleet.stop().await;
}

/// Item 8: a request's headers must arrive within the header timeout,
/// whether the client sends nothing or half a request line.
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_half_sent_connections_are_closed_after_the_header_timeout() {
    let fleet = Fleet::start_with_env(
        "api-header",
        0,
        1,
        "30s",
        &[("REGATTA_HEADER_TIMEOUT", "1s")],
    )
    .await;
    for (what, bytes) in [
        ("an idle connection", &b""[..]),
        ("half a request line", &b"GET /heal"[..]),
        (
            "headers without their end",
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n"[..],
        ),
    ] {
        let started = Instant::now();
        let answer = raw_request(&fleet.api, bytes, Duration::from_secs(15)).await;
        let took = started.elapsed();
        println!("{what}: closed after {took:?} with {answer:?}");
        assert!(
            !answer.starts_with("(no answer"),
            "{what} was still open after 15 s with a 1 s header timeout"
        );
    }
    fleet.stop().await;
}

/// Raises this process's open-file limit to its hard limit, so that the
/// test's own sockets do not run out.
fn raise_own_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

/// A `regatta serve` of the test's own, with an open-file limit of
/// `fd_limit` and its stderr kept in a file, printed on failure.
struct LimitedCoordinator {
    child: std::process::Child,
    api: String,
    namespace: String,
    log: tempfile::NamedTempFile,
}

impl LimitedCoordinator {
    async fn start(test: &str, fd_limit: u64, env: &[(&str, &str)]) -> LimitedCoordinator {
        use std::os::unix::process::CommandExt;
        drop(rabbitmq().await);
        drop(redis().await);
        let namespace = regatta_tests::unique_namespace(test);
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut command = std::process::Command::new(binary("regatta"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("REGATTA_NAMESPACE", &namespace)
            .env("REGATTA_SECRET", regatta_tests::new_secret())
            .env("REGATTA_AMQP_URL", regatta_tests::amqp_url())
            .env("REGATTA_REDIS_URL", regatta_tests::redis_url())
            .env("REGATTA_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log.reopen().expect("reopen the log"));
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    fd_limit,
                    fd_limit,
                )
                .map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().expect("start regatta serve");
        let stdout = child.stdout.take().expect("stdout");
        let first = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            std::thread::spawn(move || for _ in lines {});
            first
        });
        let first = tokio::time::timeout(Duration::from_secs(60), first)
            .await
            .expect("the coordinator printed its address within 60 s")
            .expect("read its address");
        let mut coordinator = LimitedCoordinator {
            child,
            api: String::new(),
            namespace,
            log,
        };
        match first.strip_prefix("listening on ") {
            Some(api) => coordinator.api = api.to_owned(),
            None => coordinator.fail(&format!("did not start: first line {first:?}")),
        }
        coordinator
    }

    /// Fails the test with the coordinator's log.
    fn fail(&mut self, why: &str) -> ! {
        let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let _ = std::io::stderr().write_all(log.as_bytes());
        panic!("{why} (the coordinator's log is above)");
    }

    async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        regatta_tests::delete_queues(&rabbitmq().await, &self.namespace).await;
        regatta_tests::delete_keys(&mut redis().await, &self.namespace).await;
    }
}

impl Drop for LimitedCoordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Item 8: 1000 connections, some idle, some with half a request line, held
/// open against a coordinator whose open-file limit is 600 (a default soft
/// limit is 1024, and Redis, RabbitMQ and logs need theirs too). `/healthz`
/// and an authenticated request must still be answered within 2 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_idle_connections_do_not_take_the_api_down() {
    raise_own_fd_limit();
    let token = "t0ken-for-the-flood";
    let mut coordinator = LimitedCoordinator::start(
        "api-flood",
        600,
        &[
            ("REGATTA_API_TOKEN", token),
            ("REGATTA_HEADER_TIMEOUT", "60s"),
        ],
    )
    .await;
    let address = host_port(&coordinator.api);
    let opened = Instant::now();
    // All at once: a full backlog stalls a connect, and the flood is what
    // it is; the question is whether the API still answers beside it.
    let connects = (0..1000).map(|i| {
        let address = address.clone();
        async move {
            let connect = TcpStream::connect(&address);
            let mut stream = tokio::time::timeout(Duration::from_secs(3), connect)
                .await
                .ok()?
                .ok()?;
            if i % 3 == 0 {
                let _ = stream.write_all(b"GET /v1/batches HTTP/1.1\r\nHo").await;
            }
            Some(stream)
        }
    });
    let mut held: Vec<TcpStream> = futures::future::join_all(connects)
        .await
        .into_iter()
        .flatten()
        .collect();
    println!(
        "held {} connections, opened in {:?}",
        held.len(),
        opened.elapsed()
    );

    // Let the accept loop drain the backlog the burst filled (a SYN that
    // finds it full is retried by the kernel a second later).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let started = Instant::now();
    let health = client
        .get(format!("{}/healthz", coordinator.api))
        .send()
        .await;
    let health_took = started.elapsed();
    let started = Instant::now();
    let batches = client
        .get(format!("{}/v1/batches", coordinator.api))
        .bearer_auth(token)
        .send()
        .await;
    let batches_took = started.elapsed();
    println!("under the flood: /healthz in {health_took:?}, /v1/batches in {batches_took:?}");
    match (&health, &batches) {
        (Ok(h), Ok(b)) if h.status() == 200 && b.status() == 200 => {}
        _ => coordinator.fail(&format!(
            "the API did not answer within 2 s while {} connections were held: \
             /healthz {health:?}, /v1/batches {batches:?}",
            held.len()
        )),
    }

    // Room was made by closing the flood's oldest idle sockets.
    let mut closed = 0;
    for stream in &mut held {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    println!("{closed} of the flood's connections were closed to make room");
    assert!(
        closed > 0,
        "no idle connection was closed although the coordinator can hold fewer than 600"
    );
    drop(held);
    coordinator.stop().await;
}

/// Item 14: a manifest over `--max-manifest-bytes` is refused with 413
/// naming the flag, whether its length is declared or it comes chunked; a
/// body that trickles in past `--body-timeout` gets 408.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_slow_bodies_are_refused() {
    let fleet = Fleet::start_with_env(
        "api-body",
        0,
        1,
        "30s",
        &[
            ("REGATTA_MAX_MANIFEST_BYTES", "100000"),
            ("REGATTA_BODY_TIMEOUT", "1s"),
        ],
    )
    .await;
    let big = format!("{{\"manifest\": \"{}\"}}", "x".repeat(200_000));
    let response = reqwest::Client::new()
        .post(format!("{}/v1/batches", fleet.api))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("post");
    let status = response.status();
    let mut text = response.text().await.unwrap_or_default();
    text.truncate(300);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--max-manifest-bytes"), "{text}");

    // Chunked, with no length to refuse it by: refused as it passes the cap.
    let mut chunked = b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for chunk in big.as_bytes().chunks(10_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut answer = raw_request(&fleet.api, &chunked, Duration::from_secs(15)).await;
    answer.truncate(300);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A declared body that never comes: 408 after the body timeout.
    let started = Instant::now();
    let mut answer = raw_request(
        &fleet.api,
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\nConnection: close\r\n\r\n{\"manifest\"",
        Duration::from_secs(15),
    )
    .await;
    println!("a stalled body was answered after {:?}", started.elapsed());
    answer.truncate(300);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    fleet.stop().await;
}

/// Item 14: with a token set, `/metrics` wants it too (it names batch ids)
/// unless `--metrics-public`; the scheme is case-insensitive (RFC 7235).
#[tokio::test(flavor = "multi_thread")]
async fn the_token_guards_metrics_and_any_case_of_bearer_is_accepted() {
    let token = "s3cret-token";
    let fleet =
        Fleet::start_with_env("api-token", 0, 1, "30s", &[("REGATTA_API_TOKEN", token)]).await;
    let client = reqwest::Client::new();
    let get = |path: &str, authorization: Option<String>| {
        let mut request = client.get(format!("{}{path}", fleet.api));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        async move { request.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(get("/healthz", None).await, 200);
    assert_eq!(
        get("/metrics", None).await,
        401,
        "metrics without the token"
    );
    assert_eq!(get("/metrics", Some(format!("Bearer {token}"))).await, 200);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        assert_eq!(
            get("/v1/batches", Some(format!("{scheme} {token}"))).await,
            200,
            "scheme {scheme}"
        );
    }
    assert_eq!(get("/v1/batches", Some("Bearer wrong".into())).await, 401);
    assert_eq!(
        get("/v1/batches", Some(format!("Basic {token}"))).await,
        401
    );
    fleet.stop().await;

    let public = Fleet::start_with_env(
        "api-metrics-public",
        0,
        1,
        "30s",
        &[
            ("REGATTA_API_TOKEN", token),
            ("REGATTA_METRICS_PUBLIC", "true"),
        ],
    )
    .await;
    let status = reqwest::get(format!("{}/metrics", public.api))
        .await
        .expect("scrape")
        .status();
    assert_eq!(
        status, 200,
        "--metrics-public serves metrics without the token"
    );
    let status = reqwest::get(format!("{}/v1/batches", public.api))
        .await
        .expect("list")
        .status();
    assert_eq!(status, 401, "--metrics-public opens /metrics only");
    public.stop().await;
}

/// Item 15: `serve` on a non-loopback address without a token is refused,
/// saying how to fix it, unless `--insecure`.
#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_an_open_address_without_a_token() {
    let namespace = regatta_tests::unique_namespace("api-open");
    let mut serve = std::process::Command::new(binary("regatta"));
    serve
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("REGATTA_NAMESPACE", &namespace)
        .env("REGATTA_SECRET", regatta_tests::new_secret())
        .env("REGATTA_AMQP_URL", regatta_tests::amqp_url())
        .env("REGATTA_REDIS_URL", regatta_tests::redis_url())
        .env_remove("REGATTA_API_TOKEN")
        .env("REGATTA_LOG", "warn");
    let mut refused = serve
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.try_wait().expect("wait for serve") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = refused.kill();
            let _ = refused.wait();
            regatta_tests::delete_queues(&rabbitmq().await, &namespace).await;
            regatta_tests::delete_keys(&mut redis().await, &namespace).await;
            panic!("serve was still running on 0.0.0.0 without a token after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = refused.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        !status.success(),
        "serve started on 0.0.0.0 without a token"
    );
    assert!(
        stderr.contains("--insecure") && stderr.contains("REGATTA_API_TOKEN"),
        "the refusal says how to fix it: {stderr}"
    );

    drop(rabbitmq().await);
    drop(redis().await);
    let namespace = regatta_tests::unique_namespace("api-insecure");
    let mut insecure = std::process::Command::new(binary("regatta"))
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure"])
        .env("REGATTA_NAMESPACE", &namespace)
        .env("REGATTA_SECRET", regatta_tests::new_secret())
        .env("REGATTA_AMQP_URL", regatta_tests::amqp_url())
        .env("REGATTA_REDIS_URL", regatta_tests::redis_url())
        .env_remove("REGATTA_API_TOKEN")
        .env("REGATTA_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start serve --insecure");
    let stdout = insecure.stdout.take().expect("stdout");
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .next()
                .and_then(Result::ok)
                .unwrap_or_default()
        }),
    )
    .await
    .expect("serve --insecure started within 60 s")
    .expect("join");
    let _ = insecure.kill();
    let _ = insecure.wait();
    regatta_tests::delete_queues(&rabbitmq().await, &namespace).await;
    regatta_tests::delete_keys(&mut redis().await, &namespace).await;
    assert!(first.starts_with("listening on "), "{first:?}");
}
