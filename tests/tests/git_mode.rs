//! Git mode end to end (docs/git-mode.md): a real coordinator and workers,
//! real RabbitMQ and Redis, and a real bare git remote in a temp folder.
//! Each test checks the merge train's invariant against the remote's log of
//! every commit its target branch pointed to.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{BatchState, UnitState};
use regatta_coordinator::service::UnitView;
use regatta_tests::git_repo::{check_train, Remote};
use regatta_tests::{write_file, Fleet};

fn manifest(dir: &Path, yaml: &str) -> Manifest {
    write_file(dir, "manifest.yaml", yaml);
    Manifest::load(&dir.join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("test manifest is valid: {e}"))
}

fn unit<'a>(units: &'a [UnitView], id: &str) -> &'a UnitView {
    units
        .iter()
        .find(|u| u.id == id)
        .unwrap_or_else(|| panic!("unit {id} in {units:?}"))
}

/// The integration test of the toy codebase: no module may say BROKEN.
const CHECK: &str = "#!/bin/sh\nif grep -l BROKEN mod*.txt; then echo 'integration: a module is broken' >&2; exit 1; fi\necho 'integration: all modules pass'\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_git_batch_lands_in_dependency_order_and_the_unit_that_breaks_integration_is_found() {
    let mut files = vec![("check.sh", CHECK.to_owned())];
    for n in 1..=6 {
        files.push((
            Box::leak(format!("mod{n}.txt").into_boxed_str()),
            "old\n".to_owned(),
        ));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let remote = Remote::with_files(&files);
    let base = remote.tip("main");
    let dir = tempfile::tempdir().expect("temp dir");
    // m3 depends on m1, m5 on m3: a chain that must land in order; m4
    // breaks the integration test and m6 depends on it.
    let m = manifest(
        dir.path(),
        &format!(
            r#"batch: git-train
concurrency: 4
retries: 0
playbook:
  name: migrate
  run: 'printf "${{CONTENT:-new}}\n" > "mod${{N}}.txt"'
git:
  repo: {repo}
  base: main
  integration: sh check.sh
  integration_timeout: 1m
  window: 4
  merge: manual
units:
  - {{id: m1, touches: [mod1.txt], env: {{N: "1"}}}}
  - {{id: m2, touches: [mod2.txt], env: {{N: "2"}}}}
  - {{id: m3, touches: [mod3.txt], env: {{N: "3"}}, depends_on: [m1]}}
  - {{id: m4, touches: [mod4.txt], env: {{N: "4", CONTENT: BROKEN}}}}
  - {{id: m5, touches: [mod5.txt], env: {{N: "5"}}, depends_on: [m3]}}
  - {{id: m6, touches: [mod6.txt], env: {{N: "6"}}, depends_on: [m4]}}
"#,
            repo = remote.url()
        ),
    );
    let fleet = Fleet::start("git-train", 2, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    // The train starts once the first wave has run, so that its first
    // candidate is m1, m2 and m4: it fails, and bisection lands m1 and m2.
    wait_for_units(&fleet, &batch, &["m1", "m2", "m4"], UnitState::Succeeded).await;
    client.merge(&batch).await.expect("merge");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    // m4 broke integration: it needs review and m6 waits for it.
    assert_eq!(summary.state, BatchState::Failed, "{summary:?}");
    let units = client.units(&batch, None).await.expect("units");
    for id in ["m1", "m2", "m3", "m5"] {
        assert_eq!(
            unit(&units, id).state,
            UnitState::Landed,
            "{id}: {units:#?}"
        );
    }
    let m4 = unit(&units, "m4");
    assert_eq!(m4.state, UnitState::NeedsReview, "{m4:#?}");
    let reason = m4.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("breaks the integration tests") && reason.contains("a module is broken"),
        "the culprit's reason names the integration failure and its log: {reason}"
    );
    assert_eq!(unit(&units, "m6").state, UnitState::Blocked);

    // The remote holds exactly the tested commits and the landed units.
    let train = client.train(&batch).await.expect("train");
    let depends_on = BTreeMap::from([("m3", vec!["m1"]), ("m5", vec!["m3"]), ("m6", vec!["m4"])]);
    check_train(&remote, &train, &depends_on, &["m4"], &[]);
    let merged = remote.merged_units("main", &batch);
    assert_eq!(
        merged.len(),
        4,
        "m1, m2, m3 and m5 landed once each: {merged:?}"
    );
    assert_eq!(remote.file("main", "mod1.txt"), "new");
    assert_eq!(remote.file("main", "mod4.txt"), "old");
    // The candidate holding m4 failed; its first half landed on its own
    // (a bisection step), which left m4 as the culprit without another run.
    assert!(
        train.candidates.iter().any(|c| c.state == "failed"),
        "a candidate failed: {train:#?}"
    );
    assert!(
        train
            .candidates
            .iter()
            .any(|c| c.bisecting && c.state == "landed"),
        "a bisection step landed the innocent half: {train:#?}"
    );

    // Each unit's attempt records its commit, and the branch it pushed.
    let m1 = unit(&units, "m1");
    let report = m1.history[0].git.as_ref().expect("git report");
    assert_eq!(report.base, base, "the base was pinned at enqueue");
    let commit = report.commit.as_ref().expect("m1 changed mod1.txt");
    assert_eq!(commit.files.len(), 1);
    assert_eq!(commit.files[0].path, "mod1.txt");
    assert_eq!(
        remote.tip(&format!("regatta/{batch}/m1")),
        commit.commit,
        "the unit's branch holds its commit"
    );
    // m3 started from m1's landed commit.
    let m3 = unit(&units, "m3");
    let m3_report = m3.history[0].git.as_ref().expect("git report");
    assert_eq!(
        m3_report.dependencies,
        vec![("m1".to_owned(), commit.commit.clone())]
    );

    // Landing shows in the status, /metrics, the CLI and the evidence.
    let status = summary
        .train
        .as_ref()
        .expect("a git batch's status shows its train");
    assert_eq!((status.landed, status.failed), (4, 1), "{status:?}");
    assert_eq!(status.tip.as_deref(), Some(remote.tip("main").as_str()));
    let metrics = reqwest::get(format!("{}/metrics", fleet.api))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for line in [
        r#"regatta_train_candidates_total{result="failed"} 1"#,
        "regatta_landed_units_total 4",
        "regatta_train_bisection_steps_total 1",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        r#"regatta_units{{batch="{batch}",state="landed"}} 4"#
    )));
    let sessions = client.sessions(&batch, None).await.expect("sessions");
    let integration: Vec<_> = sessions
        .iter()
        .filter(|s| s.unit == regatta_proto::INTEGRATION_UNIT)
        .collect();
    assert_eq!(
        integration.len(),
        status.tested,
        "every candidate tested was an integration session: {integration:#?}"
    );
    assert!(integration.iter().any(|s| s.state == "failed"));
    let log = client
        .log(&batch, regatta_proto::INTEGRATION_UNIT)
        .await
        .expect("the integration's log");
    assert!(log.tail.contains("integration"), "{log:?}");
    let shown = regatta(&fleet, &["train", &batch]).await;
    assert!(
        shown.contains("failed") && shown.contains("(bisect)"),
        "{shown}"
    );
    let out = dir.path().join("evidence");
    let store = fleet.artifact_store();
    let args = [
        "evidence",
        &batch,
        "--out",
        out.to_str().expect("utf-8"),
        "--artifact-dir",
        store.to_str().expect("utf-8"),
    ];
    regatta(&fleet, &args).await;
    let pack: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("batch-pack.json")).expect("batch pack written"),
    )
    .expect("batch pack is JSON");
    let candidates = pack["train"]["candidates"]
        .as_array()
        .expect("the train's record");
    let landed: Vec<&str> = candidates
        .iter()
        .filter(|c| c["state"] == "landed")
        .filter_map(|c| c["commit"].as_str())
        .collect();
    assert!(
        landed.contains(&remote.tip("main").as_str()),
        "the pack names the landed commits, the target's tip among them"
    );
    fleet.stop().await;
}

/// Runs the `regatta` CLI against the fleet; returns its stdout.
async fn regatta(fleet: &Fleet, args: &[&str]) -> String {
    let output = tokio::process::Command::new(regatta_tests::binary("regatta"))
        .args(args)
        .env("REGATTA_API", &fleet.api)
        .env("REGATTA_SECRET", &fleet.secret)
        .env_remove("REGATTA_API_TOKEN")
        .output()
        .await
        .expect("run regatta");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "regatta {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits until each of `units` is in `state`.
async fn wait_for_units(fleet: &Fleet, batch: &str, units: &[&str], state: UnitState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let views = fleet.client().units(batch, None).await.expect("units");
        if units.iter().all(|u| unit(&views, u).state == state) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{units:?} did not all become {state:?}: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_train_waits_for_merge_lists_conflicts_and_rebases_a_unit_once() {
    let remote = Remote::with_files(&[("shared.txt", "base\n"), ("other.txt", "base\n")]);
    let dir = tempfile::tempdir().expect("temp dir");
    // a and b rewrite the same file: their branches conflict. c writes a
    // file it did not declare.
    let m = manifest(
        dir.path(),
        &format!(
            r#"batch: git-manual
concurrency: 4
retries: 0
playbook:
  name: edit
  run: 'printf "$CONTENT\n" > "$FILE"'
git:
  repo: {repo}
  base: main
  integration: "true"
  merge: manual
units:
  - {{id: a, touches: [shared.txt], env: {{FILE: shared.txt, CONTENT: from-a}}}}
  - {{id: b, touches: [shared.txt], env: {{FILE: shared.txt, CONTENT: from-b}}}}
  - {{id: c, touches: [shared.txt], env: {{FILE: other.txt, CONTENT: from-c}}}}
"#,
            repo = remote.url()
        ),
    );
    let fleet = Fleet::start("git-manual", 1, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");

    // The sessions run; nothing lands until `merge`.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let units = loop {
        let units = client.units(&batch, None).await.expect("units");
        let settled = units
            .iter()
            .all(|u| matches!(u.state, UnitState::Succeeded | UnitState::NeedsReview));
        if settled {
            break units;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions did not end: {units:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = unit(&units, "c");
    assert_eq!(c.state, UnitState::NeedsReview);
    let reason = c.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("outside its touches and outputs") && reason.contains("other.txt"),
        "strict_writes names the file: {reason}"
    );
    assert!(c.history[0]
        .gates
        .iter()
        .any(|g| g.name == "write-set" && !g.passed));
    let train = client.train(&batch).await.expect("train");
    assert!(!train.started && train.landed.is_empty(), "{train:#?}");
    let initial = remote.tip("main");

    let conflicts = client.conflicts(&batch).await.expect("conflicts");
    assert_eq!(conflicts.tip, initial);
    assert_eq!(conflicts.conflicts.len(), 1, "{conflicts:#?}");
    let pair = &conflicts.conflicts[0];
    assert_eq!((pair.a.as_str(), pair.b.as_str()), ("a", "b"));
    assert_eq!(pair.files, vec!["shared.txt".to_owned()]);
    // The status and the report show it too.
    let status = regatta(&fleet, &["status", &batch]).await;
    assert!(status.contains("conflict: a x b: shared.txt"), "{status}");
    let out = dir.path().join("report");
    let out_arg = out.to_str().expect("utf-8");
    regatta(
        &fleet,
        &["report", &batch, "--out", out_arg, "--format", "md"],
    )
    .await;
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("- a x b: shared.txt"), "{md}");

    client.merge(&batch).await.expect("merge");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(
        summary.state,
        BatchState::Failed,
        "c needs review: {summary:?}"
    );
    let units = client.units(&batch, None).await.expect("units");
    assert_eq!(unit(&units, "a").state, UnitState::Landed);
    let b = unit(&units, "b");
    assert_eq!(b.state, UnitState::Landed, "{b:#?}");
    // b no longer merged once a landed: it ran once more on the new tip.
    assert_eq!(b.history.len(), 2, "{b:#?}");
    let rebased = b.history[1].git.as_ref().expect("git report");
    assert_ne!(
        rebased.base, initial,
        "the re-run started from the tip a landed"
    );
    assert_eq!(remote.file("main", "shared.txt"), "from-b");
    let train = client.train(&batch).await.expect("train");
    check_train(&remote, &train, &BTreeMap::new(), &[], &[]);
    assert!(
        train.candidates.iter().any(|c| c.state == "conflicted"),
        "{train:#?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_train_survives_an_outside_push_a_killed_integration_worker_and_a_coordinator_kill() {
    let remote = Remote::with_files(&[
        ("check.sh", CHECK),
        ("mod1.txt", "old\n"),
        ("mod2.txt", "old\n"),
        ("mod3.txt", "old\n"),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    // The integration takes a while, so that the faults land mid-test.
    let m = manifest(
        dir.path(),
        &format!(
            r#"batch: git-faults
concurrency: 4
retries: 0
playbook:
  name: migrate
  run: 'printf "new\n" > "mod${{N}}.txt"'
git:
  repo: {repo}
  base: main
  integration: sleep 2; sh check.sh
  integration_timeout: 1m
units:
  - {{id: m1, touches: [mod1.txt], env: {{N: "1"}}}}
  - {{id: m2, touches: [mod2.txt], env: {{N: "2"}}}}
  - {{id: m3, touches: [mod3.txt], env: {{N: "3"}}}}
"#,
            repo = remote.url()
        ),
    );
    let mut fleet = Fleet::start("git-faults", 2, 2, "3s").await;
    let batch = fleet.client().enqueue(&m).await.expect("enqueue");

    // 1. A colleague pushes to the target while a candidate is tested: the
    //    swap fails and the candidate is rebuilt on the new tip.
    let testing = wait_for_integration(&fleet, &batch).await;
    let outside = remote.push_outside("main", "colleague.txt", "hello\n");

    // 2. The worker running the next integration session dies: its lease
    //    expires and the candidate is tested again elsewhere.
    let next = loop {
        let session = wait_for_integration(&fleet, &batch).await;
        if session.0 != testing.0 {
            break session;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let worker = next
        .1
        .trim_start_matches('w')
        .parse::<usize>()
        .expect("worker index");
    fleet.kill_worker(worker);
    fleet.add_worker(2);

    // 3. The coordinator is killed mid-train and restarted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.restart_coordinator().await;

    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let client = fleet.client();
    let train = client.train(&batch).await.expect("train");
    assert!(
        train.candidates.iter().any(|c| c.state == "raced"),
        "the outside push made a swap fail: {train:#?}"
    );
    check_train(
        &remote,
        &train,
        &BTreeMap::new(),
        &[],
        std::slice::from_ref(&outside),
    );
    let outcomes: Vec<_> = train
        .integration_sessions
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert!(
        outcomes.contains(&Some(regatta_proto::Outcome::Lost)),
        "the killed worker's integration session was lost and tested again: {outcomes:?}"
    );
    let merged = remote.merged_units("main", &batch);
    let mut sorted = merged.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["m1", "m2", "m3"],
        "each landed once: {merged:?}"
    );
    assert_eq!(
        remote.file("main", "colleague.txt"),
        "hello",
        "nothing was overwritten"
    );
    fleet.stop().await;
}

/// Waits until an integration session holds a lease; returns its session
/// and the worker running it.
async fn wait_for_integration(fleet: &Fleet, batch: &str) -> (String, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leases = fleet.client().leases().await.unwrap_or_default();
        if let Some(lease) = leases
            .iter()
            .find(|l| l.batch_id == batch && l.unit_id == regatta_proto::INTEGRATION_UNIT)
        {
            return (lease.session_id.clone(), lease.worker.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no integration session started within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_remote_makes_the_train_wait_and_say_why_then_go_on() {
    let remote = Remote::with_files(&[("mod1.txt", "old\n")]);
    let dir = tempfile::tempdir().expect("temp dir");
    let m = manifest(
        dir.path(),
        &format!(
            r#"batch: git-unreachable
playbook:
  name: migrate
  run: 'printf "new\n" > mod1.txt'
git:
  repo: {repo}
  base: main
  integration: "true"
  merge: manual
units:
  - {{id: m1, touches: [mod1.txt]}}
"#,
            repo = remote.url()
        ),
    );
    let fleet = Fleet::start("git-unreachable", 1, 1, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    wait_for_units(&fleet, &batch, &["m1"], UnitState::Succeeded).await;

    // The remote goes away; the train is started and must say why it waits.
    let away = remote.dir.with_extension("away");
    std::fs::rename(&remote.dir, &away).expect("move the remote away");
    client.merge(&batch).await.expect("merge");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let why = loop {
        let train = client.train(&batch).await.expect("train");
        if let Some(why) = train.waiting {
            break why;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the train never said why it waits: {train:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        why.contains(&remote.url()),
        "the reason names the remote: {why}"
    );
    let status = client.batch(&batch).await.expect("status");
    assert_eq!(status.train.and_then(|t| t.waiting), Some(why));
    assert_eq!(
        unit(&client.units(&batch, None).await.expect("units"), "m1").state,
        UnitState::Succeeded
    );

    // It comes back: the train goes on by itself and lands the unit.
    std::fs::rename(&away, &remote.dir).expect("bring the remote back");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    assert_eq!(summary.train.and_then(|t| t.waiting), None);
    assert_eq!(remote.file("main", "mod1.txt"), "new");
    fleet.stop().await;
}
