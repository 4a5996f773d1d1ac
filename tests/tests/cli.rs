//! The `regatta` command line against a real fleet: what scripts rely on
//! (the batch id alone on the first line, exit codes) and what people read.

use std::process::{Command, Output};
use std::time::Duration;

use regatta_tests::{binary, write_file, Fleet};

fn regatta(api: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(binary("regatta"));
    command
        .args(args)
        .env("REGATTA_API", api)
        .env_remove("REGATTA_API_TOKEN");
    if let Some(token) = token {
        command.env("REGATTA_API_TOKEN", token);
    }
    command.output().expect("run regatta")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_prints_the_batch_id_and_wait_exits_by_outcome() {
    let fleet = Fleet::start("cli", 2, 2, "30s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "good.yaml",
        "batch: good\nplaybook:\n  name: p\n  run: echo hello from $REGATTA_UNIT_ID\nunits:\n  - id: one\n  - id: two\n    depends_on: [one]\n",
    );
    write_file(
        dir.path(),
        "bad.yaml",
        "batch: bad\nretries: 0\nplaybook:\n  name: p\n  run: 'echo boom >&2; exit 4'\nunits:\n  - id: doomed\n",
    );
    let api = fleet.api.clone();
    let good = dir.path().join("good.yaml").display().to_string();
    let bad = dir.path().join("bad.yaml").display().to_string();
    let (api2, good2, bad2) = (api.clone(), good.clone(), bad.clone());
    let (ok, failed) = tokio::task::spawn_blocking(move || {
        (
            regatta(&api2, None, &["enqueue", &good2, "--wait"]),
            regatta(&api2, None, &["enqueue", &bad2, "--wait"]),
        )
    })
    .await
    .expect("join");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let batch = stdout(&ok).lines().next().unwrap_or_default().to_owned();
    assert!(
        batch.starts_with("good-"),
        "the first line is the batch id alone: {:?}",
        stdout(&ok)
    );
    let bad_batch = stdout(&failed)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();

    let status = regatta(&api, None, &["status", &batch]);
    assert!(stdout(&status).contains("succeeded"), "{}", stdout(&status));
    let sessions = regatta(
        &api,
        None,
        &["sessions", &bad_batch, "--state", "needs_review"],
    );
    assert!(
        stdout(&sessions).contains("doomed"),
        "{}",
        stdout(&sessions)
    );
    assert!(
        stdout(&sessions).contains("status 4"),
        "{}",
        stdout(&sessions)
    );
    let json = regatta(&api, None, &["sessions", &batch, "--json"]);
    let parsed: serde_json::Value =
        serde_json::from_str(&stdout(&json)).expect("--json prints JSON");
    assert_eq!(parsed.as_array().map(Vec::len), Some(2));
    let logs = regatta(&api, None, &["logs", &batch, "two"]);
    assert!(
        stdout(&logs).contains("hello from two"),
        "{}",
        stdout(&logs)
    );
    let logs = regatta(&api, None, &["logs", &bad_batch, "doomed"]);
    assert!(stdout(&logs).contains("boom"), "{}", stdout(&logs));
    let missing = regatta(&api, None, &["status", "no-such-batch"]);
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        stderr(&missing).contains("no such batch"),
        "{}",
        stderr(&missing)
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_manifest_is_refused_whole_with_every_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "bad.yaml",
        "batch: bad\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: a\n    depends_on: [b]\n  - id: b\n    depends_on: [a]\n  - id: a\n  - id: c\n    timeout: 4 hours\n",
    );
    let path = dir.path().join("bad.yaml").display().to_string();
    // Nothing listens here: a refused manifest never reaches the API.
    for command in [
        vec!["validate", path.as_str()],
        vec!["enqueue", path.as_str()],
    ] {
        let output = regatta("http://127.0.0.1:9", None, &command);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command:?}: {}",
            stderr(&output)
        );
        let errors = stderr(&output);
        assert!(errors.contains("duplicate"), "{errors}");
        assert!(errors.contains("->"), "the cycle is printed: {errors}");
        assert!(errors.contains("4 hours"), "{errors}");
        assert!(
            errors.contains(":6:") || errors.contains(":10:"),
            "positions are given: {errors}"
        );
    }
    let good = regatta(
        "http://127.0.0.1:9",
        None,
        &["validate", "../examples/demo/manifest.yaml"],
    );
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    assert_eq!(stdout(&good).lines().count(), 1, "a one-line summary");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_wants_the_token_when_one_is_set() {
    let fleet =
        Fleet::start_with_env("auth", 0, 1, "30s", &[("REGATTA_API_TOKEN", "s3cret")]).await;
    let api = fleet.api.clone();
    let denied = reqwest::get(format!("{api}/v1/batches"))
        .await
        .expect("get");
    assert_eq!(denied.status().as_u16(), 401);
    let health = reqwest::get(format!("{api}/healthz")).await.expect("get");
    assert_eq!(health.status().as_u16(), 200);
    let wrong = regatta(&api, Some("nope"), &["status"]);
    assert_ne!(wrong.status.code(), Some(0));
    assert!(stderr(&wrong).contains("401"), "{}", stderr(&wrong));
    let right = regatta(&api, Some("s3cret"), &["status"]);
    assert_eq!(right.status.code(), Some(0), "{}", stderr(&right));
    assert!(stdout(&right).contains("no batches"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    fleet.stop().await;
}

#[test]
fn serve_refuses_a_lock_ttl_or_reap_interval_it_cannot_use() {
    for (flag, value) in [
        ("--lock-ttl", "0s"),
        ("--lock-ttl", "200ms"),
        ("--reap-interval", "0s"),
    ] {
        let output = Command::new(binary("regatta"))
            .args(["serve", "--listen", "127.0.0.1:0", flag, value])
            .env("REGATTA_SECRET", regatta_tests::new_secret())
            .output()
            .expect("run regatta serve");
        assert!(!output.status.success(), "{flag} {value} was accepted");
        assert!(
            stderr(&output).contains(flag),
            "the error names {flag}: {}",
            stderr(&output)
        );
    }
}

/// Runs a binary whose arguments should be refused before it does anything;
/// one that accepts them and goes on (to connect, to serve) is stopped and
/// reported instead of hanging the test.
fn refused_at_once(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(binary(name))
        .args(args)
        .envs(env.iter().copied())
        .env("REGATTA_SECRET", regatta_tests::new_secret())
        .env("REGATTA_AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .env("REGATTA_REDIS_URL", "redis://127.0.0.1:1/")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reap");
            panic!("{name} {args:?} {env:?} was accepted: {}", stderr(&output));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// A binary, its arguments, its environment, and the flag its error must name.
type Refusal = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn duration_flags_read_the_manifests_grammar_and_nothing_else() {
    // Each of these is a duration to humantime, which the flags used before;
    // a manifest refuses them, so the flags must too, naming the flag and
    // the forms they take.
    let cases: [Refusal; 8] = [
        (
            "regatta",
            &["serve", "--lease-ttl", "2min"],
            &[],
            "--lease-ttl",
        ),
        (
            "regatta",
            &["serve", "--lock-ttl", "1h 30m"],
            &[],
            "--lock-ttl",
        ),
        (
            "regatta",
            &["serve", "--reap-interval", "1sec"],
            &[],
            "--reap-interval",
        ),
        (
            "regatta",
            &["serve", "--header-timeout", "10secs"],
            &[],
            "--header-timeout",
        ),
        (
            "regatta",
            &["serve"],
            &[("REGATTA_BODY_TIMEOUT", "1min")],
            "--body-timeout",
        ),
        ("regatta-worker", &["--lease-ttl", "3x"], &[], "--lease-ttl"),
        (
            "regatta-worker",
            &["--lease-ttl", "30 s"],
            &[],
            "--lease-ttl",
        ),
        (
            "regatta-worker",
            &[],
            &[("REGATTA_GRACE", "2min")],
            "--grace",
        ),
    ];
    for (name, args, env, flag) in cases {
        let output = refused_at_once(name, args, env);
        let error = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{name} {args:?} {env:?}: {error}"
        );
        assert!(error.contains(flag), "the error names {flag}: {error}");
        assert!(
            error.contains("'1h30m'"),
            "the error shows the forms: {error}"
        );
    }
}
