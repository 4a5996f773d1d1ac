//! Gates, escalations and evidence packs end to end: a real coordinator,
//! real workers sharing one artifact store, real RabbitMQ and Redis, and
//! the `regatta` CLI run as a process.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use regatta_coordinator::api::SessionView;
use regatta_coordinator::evidence::sha256_file;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{BatchState, UnitState};
use regatta_tests::{binary, write_file, Fleet};
use serde_json::Value;

/// Writes each declared output and one extra artifact, then logs a line.
const MIGRATE: &str = r#"#!/bin/sh
set -eu
printf '%s\n' "$REGATTA_OUTPUTS" | while IFS= read -r path; do
  [ -n "$path" ] || continue
  mkdir -p "$(dirname "$path")"
  printf 'migrated %s (attempt %s)\n' "$REGATTA_UNIT_ID" "$REGATTA_ATTEMPT" >"$path"
done
printf 'notes of %s\n' "$REGATTA_UNIT_ID" >"$REGATTA_ARTIFACT_DIR/notes.txt"
echo "migrated $REGATTA_UNIT_ID"
"#;

/// A playbook whose `test` gate fails until its `fix` has run once for the
/// unit; units named `hopeless*` never pass it.
const PLAYBOOK: &str = "playbook:\n  name: gated\n  run: ./migrate.sh\n  gates:\n    \
    - name: test\n      \
      run: 'case $REGATTA_UNIT_ID in hopeless*) exit 1;; esac; test -f fixed-$REGATTA_UNIT_ID'\n      \
      fix: 'touch fixed-$REGATTA_UNIT_ID'\n      repairs: 2\n";

fn manifest(dir: &Path, yaml: &str) -> (Manifest, PathBuf) {
    write_file(dir, "migrate.sh", MIGRATE);
    write_file(dir, "manifest.yaml", yaml);
    let path = dir.join("manifest.yaml");
    let manifest = Manifest::load(&path).unwrap_or_else(|e| panic!("test manifest is valid: {e}"));
    (manifest, path)
}

fn session_of<'a>(sessions: &'a [SessionView], unit: &str) -> &'a SessionView {
    sessions
        .iter()
        .rev()
        .find(|s| s.unit == unit)
        .unwrap_or_else(|| panic!("no session of {unit}: {sessions:?}"))
}

/// Reads a session's evidence pack, checking it against the reference the
/// coordinator recorded and that it lies in the fleet's artifact store.
fn read_pack(fleet: &Fleet, session: &SessionView) -> Value {
    let evidence = session
        .evidence
        .as_ref()
        .unwrap_or_else(|| panic!("session without evidence: {session:?}"));
    let path = Path::new(&evidence.path);
    let store = std::fs::canonicalize(fleet.artifact_store()).expect("the store exists");
    assert!(
        path.starts_with(&store),
        "{} is not in {}",
        path.display(),
        store.display()
    );
    assert!(path.ends_with(
        Path::new(&session.unit)
            .join(&session.session_id)
            .join("evidence-pack.json")
    ));
    assert_eq!(sha256_file(path).expect("pack readable"), evidence.sha256);
    serde_json::from_slice(&std::fs::read(path).expect("pack")).expect("pack is JSON")
}

async fn regatta(fleet: &Fleet, args: &[&str]) -> Output {
    tokio::process::Command::new(binary("regatta"))
        .args(args)
        .env("REGATTA_API", &fleet.api)
        // The batch pack is signed, and checked, with the fleet secret.
        .env("REGATTA_SECRET", &fleet.secret)
        .env_remove("REGATTA_API_TOKEN")
        .output()
        .await
        .expect("run regatta")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gate_repaired_by_its_fix_succeeds_and_its_evidence_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (m, _) = manifest(
        dir.path(),
        &format!(
            "batch: repaired\nretries: 0\n{PLAYBOOK}units:\n  - id: repairable\n    \
             inputs: [input.sql]\n    outputs: [out/repairable.sql]\n"
        ),
    );
    write_file(dir.path(), "input.sql", "begin null; end;\n");
    let fleet = Fleet::start("ev-repair", 1, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");

    let sessions = client.sessions(&batch, None).await.expect("sessions");
    let session = session_of(&sessions, "repairable");
    assert_eq!(session.state, "succeeded");
    assert_eq!(session.gates.len(), 1);
    let gate = &session.gates[0];
    assert_eq!(
        (gate.name.as_str(), gate.passed, gate.repairs),
        ("test", true, 1)
    );

    let pack = read_pack(&fleet, session);
    assert_eq!(pack["schema_version"], 1);
    assert_eq!(pack["playbook"], "gated");
    assert_eq!(pack["batch_id"], batch.as_str());
    assert_eq!(pack["unit_id"], "repairable");
    assert_eq!(pack["session_id"], session.session_id.as_str());
    assert_eq!(pack["attempt"], 1);
    assert_eq!(pack["outcome"], "succeeded");
    assert_eq!(pack["exit_code"], 0);
    for time in ["timestamp", "started_at", "ended_at"] {
        let value = pack[time].as_str().unwrap_or_default();
        assert!(chrono_like(value), "{time} is not ISO 8601 UTC: {value:?}");
    }
    assert_eq!(
        pack["verification"],
        serde_json::json!({
            "tests_passed": true,
            "lint_clean": true,
            "security_scan_clean": true,
            "gates_failed_and_auto_fixed": ["test"],
        })
    );
    assert_eq!(pack["gates"][0]["name"], "test");
    assert_eq!(pack["gates"][0]["passed"], true);
    assert_eq!(pack["gates"][0]["required"], true);
    assert_eq!(pack["gates"][0]["repairs"], 1);
    assert!(pack["gates"][0]["duration_ms"].is_u64());
    assert_eq!(pack["escalations"], serde_json::json!([]));
    assert_eq!(pack["knowledge_updates"], serde_json::json!([]));

    // Every file is listed with its stage, and its sha256 matches both the
    // file in the workdir and the copy in the store.
    let artifacts = pack["artifacts"].as_array().expect("artifacts");
    let listed: Vec<(&str, &str)> = artifacts
        .iter()
        .map(|a| {
            (
                a["filename"].as_str().unwrap_or_default(),
                a["stage"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("out/repairable.sql", "output"),
            ("notes.txt", "artifact"),
            ("session.log", "log"),
        ]
    );
    let output_sha = sha256_file(&dir.path().join("out/repairable.sql")).expect("output");
    assert_eq!(artifacts[0]["sha256"], output_sha.as_str());
    let pack_dir = Path::new(&session.evidence.as_ref().expect("evidence").path)
        .parent()
        .expect("pack folder")
        .to_path_buf();
    for artifact in artifacts {
        let stored = pack_dir.join(artifact["path"].as_str().expect("path"));
        assert_eq!(
            sha256_file(&stored).expect("stored copy"),
            artifact["sha256"].as_str().expect("sha256")
        );
    }
    assert_eq!(pack["log"]["filename"], "session.log");
    assert_eq!(pack["log"]["sha256"], artifacts[2]["sha256"]);
    let log = std::fs::read_to_string(pack_dir.join("session.log")).expect("stored log");
    assert!(log.contains("migrated repairable"), "{log}");
    assert_eq!(
        pack["inputs"][0]["sha256"],
        sha256_file(&dir.path().join("input.sql"))
            .expect("input")
            .as_str()
    );
    fleet.stop().await;
}

/// `2026-11-25T10:00:00.000Z`: date, `T`, time, `Z`.
fn chrono_like(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && value.ends_with('Z')
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gate_that_cannot_be_fixed_escalates_to_review_everywhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (m, _) = manifest(
        dir.path(),
        &format!(
            "batch: unfixable\nretries: 0\n{PLAYBOOK}units:\n  - id: hopeless\n    \
             outputs: [out/hopeless.sql]\n"
        ),
    );
    let fleet = Fleet::start("ev-escalate", 1, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Failed, "{summary:?}");
    let reason = "gate test failed after 2 repairs";

    // The API.
    let units = client.units(&batch, None).await.expect("units");
    assert_eq!(units[0].state, UnitState::NeedsReview);
    assert_eq!(units[0].reason.as_deref(), Some(reason));
    let sessions = client
        .sessions(&batch, Some("needs_review"))
        .await
        .expect("sessions");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(session.reason.as_deref(), Some(reason));
    assert_eq!(
        (session.gates[0].passed, session.gates[0].repairs),
        (false, 2)
    );

    // The CLI, as an operator runs it.
    let output = regatta(&fleet, &["sessions", &batch, "--json"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&output.stdout).expect("sessions JSON");
    let cli_session = listed
        .iter()
        .find(|s| s["unit"] == "hopeless")
        .expect("the session is listed");
    assert_eq!(cli_session["reason"], reason);
    assert_eq!(cli_session["unit_state"], "needs_review");
    assert_eq!(cli_session["gates"][0]["repairs"], 2);
    let evidence = session.evidence.as_ref().expect("evidence");
    assert_eq!(cli_session["evidence"]["path"], evidence.path.as_str());
    assert_eq!(cli_session["evidence"]["sha256"], evidence.sha256.as_str());

    // The evidence pack.
    let pack = read_pack(&fleet, session);
    assert_eq!(pack["outcome"], "failed");
    assert_eq!(
        pack["escalations"],
        serde_json::json!([{"reason": reason, "gate": "test"}])
    );
    assert_eq!(pack["verification"]["tests_passed"], false);
    assert_eq!(
        pack["verification"]["gates_failed_and_auto_fixed"],
        serde_json::json!([])
    );
    assert_eq!(pack["gates"][0]["passed"], false);
    assert_eq!(pack["gates"][0]["repairs"], 2);
    // The output the session did write is kept as evidence of the failure.
    assert_eq!(pack["artifacts"][0]["filename"], "out/hopeless.sql");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_declared_output_fails_the_session_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (m, _) = manifest(
        dir.path(),
        "batch: forgetful\nretries: 0\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  \
         - id: forgetful\n    outputs: [out/never-written.sql]\n",
    );
    let fleet = Fleet::start("ev-missing", 1, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Failed, "{summary:?}");
    let sessions = client.sessions(&batch, None).await.expect("sessions");
    let session = session_of(&sessions, "forgetful");
    assert_eq!(session.state, "failed");
    let reason = "declared output 'out/never-written.sql' is missing";
    assert_eq!(session.reason.as_deref(), Some(reason));
    let pack = read_pack(&fleet, session);
    assert_eq!(pack["escalations"][0]["reason"], reason);
    assert_eq!(pack["escalations"][0]["gate"], Value::Null);
    let stages: Vec<&str> = pack["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .filter_map(|a| a["stage"].as_str())
        .collect();
    // `true` wrote nothing: no log file either, and the pack says so.
    assert!(stages.is_empty(), "nothing was stored: {stages:?}");
    assert_eq!(pack["log"], Value::Null);
    let pack_dir = Path::new(session.evidence.as_ref().expect("evidence").path.as_str())
        .parent()
        .expect("the pack's folder")
        .to_path_buf();
    let stored: Vec<String> = std::fs::read_dir(&pack_dir)
        .expect("the session's folder")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        stored,
        vec!["evidence-pack.json"],
        "one file per quiet session"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_pack_verifies_until_a_byte_changes_or_a_file_goes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (m, manifest_path) = manifest(
        dir.path(),
        &format!(
            "batch: audited\nretries: 0\n{PLAYBOOK}units:\n  \
             - id: first\n    outputs: [out/first.sql]\n  \
             - id: second\n    depends_on: [first]\n    outputs: [out/second.sql]\n  \
             - id: hopeless\n    outputs: [out/hopeless.sql]\n  \
             - id: after-hopeless\n    depends_on: [hopeless]\n"
        ),
    );
    let fleet = Fleet::start("ev-pack", 2, 2, "30s").await;
    let batch = fleet.client().enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Failed, "{summary:?}");

    let out = dir.path().join("pack");
    let store = fleet.artifact_store();
    let output = regatta(
        &fleet,
        &[
            "evidence",
            &batch,
            "--out",
            out.to_str().expect("utf-8 path"),
            "--artifact-dir",
            store.to_str().expect("utf-8 path"),
            "--manifest",
            manifest_path.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "regatta evidence failed:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );

    let batch_pack: Value =
        serde_json::from_slice(&std::fs::read(out.join("batch-pack.json")).expect("batch pack"))
            .expect("batch pack JSON");
    assert_eq!(batch_pack["schema_version"], 1);
    assert_eq!(batch_pack["batch_id"], batch.as_str());
    assert_eq!(batch_pack["batch_name"], "audited");
    assert_eq!(batch_pack["batch_state"], "failed");
    assert_eq!(batch_pack["manifest_sha256"], m.sha256().as_str());
    let units = batch_pack["units"].as_array().expect("units");
    let states: Vec<(&str, &str)> = units
        .iter()
        .map(|u| {
            (
                u["unit_id"].as_str().unwrap_or_default(),
                u["state"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("first", "succeeded"),
            ("second", "succeeded"),
            ("hopeless", "needs_review"),
            ("after-hopeless", "blocked"),
        ]
    );
    assert_eq!(units[3]["pack"], Value::Null, "a blocked unit never ran");
    for unit in &units[..3] {
        let pack = out.join(unit["pack"].as_str().expect("pack path"));
        assert_eq!(
            sha256_file(&pack).expect("session pack copied"),
            unit["pack_sha256"].as_str().expect("pack sha256")
        );
    }

    // Fresh: everything matches.
    let verified = regatta(&fleet, &["verify-evidence", out.to_str().expect("utf-8")]).await;
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}{}",
        text(&verified.stdout),
        text(&verified.stderr)
    );
    let stdout = text(&verified.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("evidence verified: 3 session packs and 9 files"),
        "{stdout}"
    );

    // One byte of one artifact changed: named, exit 2.
    let first = units[0]["pack"].as_str().expect("pack");
    let first_dir = Path::new(first).parent().expect("session folder");
    let notes = format!("{}/artifacts/notes.txt", first_dir.display());
    let original = std::fs::read(out.join(&notes)).expect("notes");
    let mut changed = original.clone();
    changed[0] ^= 0x20;
    std::fs::write(out.join(&notes), &changed).expect("tamper");
    let tampered = regatta(&fleet, &["verify-evidence", out.to_str().expect("utf-8")]).await;
    assert_eq!(tampered.status.code(), Some(2));
    let report = text(&tampered.stdout);
    assert_eq!(report.lines().count(), 1, "{report}");
    assert!(
        report.starts_with(&format!("{notes}: sha256 mismatch")),
        "{report}"
    );

    // Restored, then one file removed: named, exit 2.
    std::fs::write(out.join(&notes), &original).expect("restore");
    let second = units[1]["pack"].as_str().expect("pack");
    let output_file = format!(
        "{}/outputs/out/second.sql",
        Path::new(second).parent().expect("folder").display()
    );
    let second_output = std::fs::read(out.join(&output_file)).expect("output");
    std::fs::remove_file(out.join(&output_file)).expect("remove");
    let removed = regatta(&fleet, &["verify-evidence", out.to_str().expect("utf-8")]).await;
    assert_eq!(removed.status.code(), Some(2));
    assert_eq!(
        text(&removed.stdout).trim(),
        format!("{output_file}: missing")
    );

    // Restored, then a log edited with every hash above it recomputed: the
    // hashes match again, the signature does not.
    std::fs::write(out.join(&output_file), &second_output).expect("restore");
    let second_pack = Path::new(second).parent().expect("folder").to_path_buf();
    forge_log(&out, &second_pack, 1);
    let forged = regatta(&fleet, &["verify-evidence", out.to_str().expect("utf-8")]).await;
    assert_eq!(
        forged.status.code(),
        Some(2),
        "{}{}",
        text(&forged.stdout),
        text(&forged.stderr)
    );
    let report = text(&forged.stdout);
    assert!(
        report.starts_with("batch-pack.json.sig: bad signature"),
        "{report}"
    );
    fleet.stop().await;
}

/// Rewrites a session's log in a batch pack's folder and recomputes its
/// sha256 in the session pack, and the session pack's in the batch pack
/// (entry `unit_index`), as someone able to write the folder could.
fn forge_log(dir: &Path, session_dir: &Path, unit_index: usize) {
    let forged_log = b"nothing happened\n";
    std::fs::write(dir.join(session_dir).join("session.log"), forged_log).expect("edit the log");
    let forged_sha = sha256_file(&dir.join(session_dir).join("session.log")).expect("hash");
    let pack_path = dir.join(session_dir).join("evidence-pack.json");
    let mut pack: Value =
        serde_json::from_slice(&std::fs::read(&pack_path).expect("pack")).expect("pack JSON");
    for artifact in pack["artifacts"].as_array_mut().expect("artifacts") {
        if artifact["stage"] == "log" {
            artifact["sha256"] = forged_sha.clone().into();
        }
    }
    pack["log"]["sha256"] = forged_sha.into();
    std::fs::write(
        &pack_path,
        serde_json::to_vec_pretty(&pack).expect("encode"),
    )
    .expect("write");
    let batch_path = dir.join("batch-pack.json");
    let mut batch: Value =
        serde_json::from_slice(&std::fs::read(&batch_path).expect("batch pack")).expect("JSON");
    batch["units"][unit_index]["pack_sha256"] = sha256_file(&pack_path).expect("hash").into();
    std::fs::write(
        &batch_path,
        serde_json::to_vec_pretty(&batch).expect("encode"),
    )
    .expect("write");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_evidence_refuses_a_fifo_for_a_batch_pack_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("batch-pack.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let started = std::time::Instant::now();
    let run = tokio::process::Command::new(binary("regatta"))
        .arg("verify-evidence")
        .arg(dir.path())
        .env("REGATTA_SECRET", regatta_tests::new_secret())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("verify-evidence returned instead of blocking on the FIFO")
        .expect("run regatta");
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert_eq!(
        text(&output.stdout).trim(),
        "batch-pack.json: a FIFO, not a regular file: refused"
    );
    println!(
        "verify-evidence on a FIFO returned in {:?}",
        started.elapsed()
    );
}

/// Copies a folder (files and sub-folders, permissions kept), leaving out `out/`.
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("readable folder") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() != "out" {
                copy_folder(&path, &to.join(entry.file_name()));
            }
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy file");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gates_example_repairs_one_unit_and_escalates_another() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gates");
    let dir = tempfile::tempdir().expect("temp dir");
    copy_folder(&example, dir.path());
    let m = Manifest::load(&dir.path().join("manifest.yaml")).expect("the example is valid");
    let fleet = Fleet::start("ev-example", 1, 3, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Failed, "{summary:?}");
    let units = client.units(&batch, None).await.expect("units");
    let states: Vec<(&str, UnitState)> = units.iter().map(|u| (u.id.as_str(), u.state)).collect();
    assert_eq!(
        states,
        vec![
            ("customer-pkg", UnitState::Succeeded),
            ("orders-pkg", UnitState::Succeeded),
            ("hierarchy-pkg", UnitState::NeedsReview),
            ("reports-pkg", UnitState::Blocked),
        ]
    );
    let sessions = client.sessions(&batch, None).await.expect("sessions");

    let clean = read_pack(&fleet, session_of(&sessions, "customer-pkg"));
    assert_eq!(
        clean["verification"]["gates_failed_and_auto_fixed"],
        serde_json::json!([])
    );
    let repaired = read_pack(&fleet, session_of(&sessions, "orders-pkg"));
    assert_eq!(
        repaired["verification"]["gates_failed_and_auto_fixed"],
        serde_json::json!(["test"])
    );
    let files: Vec<&str> = repaired["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .filter_map(|a| a["filename"].as_str())
        .collect();
    assert_eq!(
        files,
        vec![
            "out/pg/orders_pkg.sql",
            "test-report.txt",
            "translation.diff",
            "session.log"
        ]
    );
    let escalated = read_pack(&fleet, session_of(&sessions, "hierarchy-pkg"));
    assert_eq!(
        escalated["escalations"],
        serde_json::json!([{"reason": "gate test failed after 2 repairs", "gate": "test"}])
    );
    assert_eq!(escalated["verification"]["tests_passed"], false);
    assert_eq!(escalated["gates_not_run"], serde_json::json!(["lint"]));
    fleet.stop().await;
}
