use super::*;
use crate::scheduler::Attempt;
use regatta_proto::{EvidenceRef, Outcome};

/// The fleet secret the batch packs of these tests are signed with.
const SECRET: &[u8] = b"fleet-secret";

fn sha(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes a session pack the way a worker does; returns its reference.
fn worker_session(store: &Path, unit: &str, session: &str) -> EvidenceRef {
    let dir = store.join("b-1").join(unit).join(session);
    let output = format!("-- {unit}\nselect 1;\n");
    write(&dir.join("outputs/pg/out.sql"), output.as_bytes());
    write(&dir.join("artifacts/report.txt"), b"report");
    write(&dir.join("session.log"), b"log\n");
    let pack = serde_json::json!({
        "schema_version": 1,
        "playbook": "p",
        "batch_id": "b-1",
        "unit_id": unit,
        "session_id": session,
        "attempt": 1,
        "timestamp": "2026-11-25T10:00:00.000Z",
        "artifacts": [
            {"filename": "pg/out.sql", "sha256": sha(output.as_bytes()), "stage": "output", "path": "outputs/pg/out.sql", "bytes": output.len()},
            {"filename": "report.txt", "sha256": sha(b"report"), "stage": "artifact", "path": "artifacts/report.txt", "bytes": 6},
            {"filename": "session.log", "sha256": sha(b"log\n"), "stage": "log", "path": "session.log", "bytes": 4}
        ],
        "log": {"filename": "session.log", "sha256": sha(b"log\n"), "path": "session.log", "bytes": 4},
        "verification": {"tests_passed": true, "lint_clean": true, "security_scan_clean": true, "gates_failed_and_auto_fixed": []},
        "knowledge_updates": [],
        "escalations": []
    });
    let bytes = serde_json::to_vec_pretty(&pack).unwrap();
    let path = dir.join(SESSION_PACK_FILE);
    write(&path, &bytes);
    EvidenceRef {
        path: path.display().to_string(),
        sha256: sha(&bytes),
    }
}

fn attempt(session: &str, evidence: Option<EvidenceRef>) -> Attempt {
    Attempt {
        attempt: 1,
        session_id: session.into(),
        worker: Some("w0".into()),
        fencing: 1,
        published_at_ms: 0,
        started_at_ms: Some(1),
        ended_at_ms: Some(2),
        outcome: Some(Outcome::Succeeded),
        exit_code: Some(0),
        reason: None,
        log_tail: String::new(),
        log_path: String::new(),
        gates: Vec::new(),
        evidence,
        trace: None,
        git: None,
        usage: None,
        reserved_micros: None,
    }
}

fn unit(id: &str, state: UnitState, history: Vec<Attempt>) -> UnitView {
    UnitView {
        id: id.into(),
        state,
        attempt: history.len() as u32,
        failures: 0,
        reason: None,
        waiting_for: None,
        history,
        depends_on: Vec::new(),
    }
}

fn facts() -> BatchFacts {
    BatchFacts {
        batch_id: "b-1".into(),
        batch_name: "b".into(),
        batch_state: "succeeded".into(),
        manifest_sha256: "m".repeat(64),
        train: None,
    }
}

struct Fixture {
    _temp: tempfile::TempDir,
    out: PathBuf,
    assembled: Assembled,
}

fn fixture() -> Fixture {
    let temp = tempfile::tempdir().unwrap();
    let store = temp.path().join("store");
    let a = worker_session(&store, "a", "s-a");
    let b = worker_session(&store, "b", "s-b");
    let units = vec![
        unit("a", UnitState::Succeeded, vec![attempt("s-a", Some(a))]),
        // Two attempts: the pack of the later one is taken.
        unit(
            "b",
            UnitState::Succeeded,
            vec![attempt("s-old", None), attempt("s-b", Some(b))],
        ),
        unit("never-ran", UnitState::Blocked, vec![]),
    ];
    let out = temp.path().join("out");
    let assembled = assemble(&facts(), &units, &store, &out, SECRET).unwrap();
    Fixture {
        _temp: temp,
        out,
        assembled,
    }
}

#[test]
fn an_assembled_folder_verifies() {
    let f = fixture();
    assert!(
        f.assembled.problems.is_empty(),
        "{:?}",
        f.assembled.problems
    );
    assert_eq!((f.assembled.packs, f.assembled.files), (2, 6));
    let pack = &f.assembled.pack;
    assert_eq!(pack.units.len(), 3);
    assert_eq!(
        pack.units[1].pack.as_deref(),
        Some("sessions/b/s-b/evidence-pack.json")
    );
    assert_eq!(pack.units[2].pack, None);
    assert_eq!(pack.units[2].state, UnitState::Blocked);
    let result = verify(&f.out, Some(SECRET));
    assert!(result.is_clean(), "{:?}", result.problems);
    assert_eq!((result.packs, result.files), (2, 6));
    assert!(result
        .summary()
        .starts_with("evidence verified: 2 session packs and 6 files"));
}

#[test]
fn a_changed_byte_is_named_by_its_path() {
    let f = fixture();
    let path = f.out.join("sessions/a/s-a/outputs/pg/out.sql");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let result = verify(&f.out, Some(SECRET));
    assert_eq!(result.problems.len(), 1, "{:?}", result.problems);
    let shown = result.problems[0].to_string();
    assert!(
        shown.starts_with("sessions/a/s-a/outputs/pg/out.sql: sha256 mismatch"),
        "{shown}"
    );
}

#[test]
fn a_removed_file_is_named_by_its_path() {
    let f = fixture();
    std::fs::remove_file(f.out.join("sessions/b/s-b/session.log")).unwrap();
    let result = verify(&f.out, Some(SECRET));
    let shown: Vec<String> = result.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown, vec!["sessions/b/s-b/session.log: missing"]);
}

#[test]
fn an_edited_session_pack_breaks_the_batch_packs_hash() {
    let f = fixture();
    let path = f.out.join("sessions/a/s-a/evidence-pack.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"attempt\": 1", "\"attempt\": 2")).unwrap();
    let result = verify(&f.out, Some(SECRET));
    let shown: Vec<String> = result.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].starts_with("sessions/a/s-a/evidence-pack.json: sha256 mismatch"));
}

#[test]
fn paths_that_escape_the_folder_are_refused() {
    let f = fixture();
    // Point a listed file outside through a symlink, and an entry at `..`.
    let log = f.out.join("sessions/a/s-a/session.log");
    let outside = f.out.parent().unwrap().join("outside.log");
    std::fs::write(&outside, b"log\n").unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&outside, &log).unwrap();
    let batch_path = f.out.join(BATCH_PACK_FILE);
    let mut batch: BatchPack =
        serde_json::from_slice(&std::fs::read(&batch_path).unwrap()).unwrap();
    batch.units[1].pack = Some("../store/b-1/b/s-b/evidence-pack.json".into());
    std::fs::write(&batch_path, serde_json::to_vec(&batch).unwrap()).unwrap();
    let result = verify(&f.out, None);
    let shown: Vec<String> = result.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        shown,
        vec![
            "sessions/a/s-a/session.log: the path escapes the folder",
            "../store/b-1/b/s-b/evidence-pack.json: the path escapes the folder",
        ]
    );
}

#[test]
fn a_missing_batch_pack_is_a_problem_not_a_panic() {
    let temp = tempfile::tempdir().unwrap();
    let result = verify(temp.path(), Some(SECRET));
    assert_eq!(result.problems[0].to_string(), "batch-pack.json: missing");
}

#[test]
fn assembling_refuses_a_folder_in_use_and_reports_a_tampered_store() {
    let temp = tempfile::tempdir().unwrap();
    let store = temp.path().join("store");
    let a = worker_session(&store, "a", "s-a");
    std::fs::write(store.join("b-1/a/s-a/artifacts/report.txt"), b"changed").unwrap();
    let units = vec![unit(
        "a",
        UnitState::Succeeded,
        vec![attempt("s-a", Some(a))],
    )];
    let used = temp.path().join("used");
    write(&used.join("x"), b"x");
    assert!(matches!(
        assemble(&facts(), &units, &store, &used, SECRET),
        Err(EvidenceError::OutNotEmpty(_))
    ));
    let out = temp.path().join("out");
    let assembled = assemble(&facts(), &units, &store, &out, SECRET).unwrap();
    assert_eq!(assembled.problems.len(), 1, "{:?}", assembled.problems);
    assert!(assembled.problems[0].path.ends_with("artifacts/report.txt"));
    assert!(!verify(&out, Some(SECRET)).is_clean());
}

#[test]
fn a_finished_event_without_evidence_still_decodes() {
    // An older worker's event has no `evidence` field.
    #[derive(Serialize)]
    enum OldKind {
        Finished {
            outcome: Outcome,
            exit_code: Option<i32>,
            duration_ms: u64,
            reason: Option<String>,
            log_tail: String,
            log_path: String,
            gates: Vec<regatta_proto::GateReport>,
        },
    }
    let old = OldKind::Finished {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 1,
        reason: None,
        log_tail: String::new(),
        log_path: String::new(),
        gates: Vec::new(),
    };
    let bytes = rmp_serde::to_vec_named(&old).unwrap();
    let kind: regatta_proto::EventKind = rmp_serde::from_slice(&bytes).unwrap();
    assert!(matches!(
        kind,
        regatta_proto::EventKind::Finished { evidence: None, .. }
    ));
}

#[test]
fn a_symlink_planted_in_the_store_is_refused_and_nothing_outside_is_copied() {
    let temp = tempfile::tempdir().unwrap();
    let store = temp.path().join("store");
    let a = worker_session(&store, "a", "s-a");
    let b = worker_session(&store, "b", "s-b");
    let secret_file = temp.path().join("outside-secret.txt");
    std::fs::write(&secret_file, b"the host's secret\n").unwrap();
    // A listed artifact replaced by a symlink to a file outside the store,
    // and a listed folder replaced by a symlink to a folder outside.
    let report = store.join("b-1/a/s-a/artifacts/report.txt");
    std::fs::remove_file(&report).unwrap();
    std::os::unix::fs::symlink(&secret_file, &report).unwrap();
    let outside_dir = temp.path().join("outside-dir");
    write(&outside_dir.join("pg/out.sql"), b"outside\n");
    let outputs = store.join("b-1/b/s-b/outputs");
    std::fs::remove_dir_all(&outputs).unwrap();
    std::os::unix::fs::symlink(&outside_dir, &outputs).unwrap();
    let units = vec![
        unit("a", UnitState::Succeeded, vec![attempt("s-a", Some(a))]),
        unit("b", UnitState::Succeeded, vec![attempt("s-b", Some(b))]),
    ];
    let out = temp.path().join("out");
    let assembled = assemble(&facts(), &units, &store, &out, SECRET).unwrap();
    let shown: Vec<String> = assembled.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0]
            .ends_with("b-1/a/s-a/artifacts/report.txt: a symlink, not a regular file: refused"),
        "{shown:?}"
    );
    assert!(
        shown[1].ends_with("b-1/b/s-b/outputs/pg/out.sql: a symlink, not a regular file: refused"),
        "{shown:?}"
    );
    // Nothing from outside reached the auditor's folder.
    assert!(!out.join("sessions/a/s-a/artifacts/report.txt").exists());
    assert!(!out.join("sessions/b/s-b/outputs/pg/out.sql").exists());
    let mut copied = Vec::new();
    collect_files(&out, &mut copied);
    for file in copied {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("the host's secret") && bytes != b"outside\n",
            "{} holds an outside file",
            file.display()
        );
    }
}

fn collect_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            collect_files(&entry.path(), found);
        } else {
            found.push(entry.path());
        }
    }
}

#[test]
fn an_edited_log_with_every_hash_recomputed_fails_the_signature() {
    let f = fixture();
    assert!(verify(&f.out, Some(SECRET)).is_clean());
    // Edit a log, recompute its sha256 in the session pack, and the session
    // pack's in the batch pack: every hash matches again.
    let session = f.out.join("sessions/a/s-a");
    std::fs::write(session.join("session.log"), b"nothing to see\n").unwrap();
    let pack_path = session.join(SESSION_PACK_FILE);
    let mut pack: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pack_path).unwrap()).unwrap();
    let forged = sha(b"nothing to see\n");
    pack["artifacts"][2]["sha256"] = forged.clone().into();
    pack["log"]["sha256"] = forged.into();
    let pack_bytes = serde_json::to_vec_pretty(&pack).unwrap();
    std::fs::write(&pack_path, &pack_bytes).unwrap();
    let batch_path = f.out.join(BATCH_PACK_FILE);
    let mut batch: BatchPack =
        serde_json::from_slice(&std::fs::read(&batch_path).unwrap()).unwrap();
    batch.units[0].pack_sha256 = Some(sha(&pack_bytes));
    std::fs::write(&batch_path, serde_json::to_vec_pretty(&batch).unwrap()).unwrap();

    assert!(
        verify(&f.out, None).is_clean(),
        "hashes alone no longer see the edit"
    );
    let result = verify(&f.out, Some(SECRET));
    let shown: Vec<String> = result.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0].starts_with("batch-pack.json.sig: bad signature"),
        "{shown:?}"
    );
    // The right folder under another key fails too.
    let g = fixture();
    let other = verify(&g.out, Some(b"another-secret"));
    assert_eq!(other.problems.len(), 1, "{:?}", other.problems);
    assert!(matches!(
        other.problems[0].kind,
        ProblemKind::BadSignature(_)
    ));
}

#[test]
fn a_fifo_named_batch_pack_is_refused_without_blocking() {
    let temp = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(
        &temp.path().join(BATCH_PACK_FILE),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let dir = temp.path().to_path_buf();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(verify(&dir, Some(SECRET)));
    });
    let result = result
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("verify returned instead of blocking on the FIFO");
    let shown: Vec<String> = result.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        shown,
        vec!["batch-pack.json: a FIFO, not a regular file: refused"]
    );
}

#[test]
fn a_succeeded_unit_without_a_pack_is_named_by_assembly_and_verification() {
    let temp = tempfile::tempdir().unwrap();
    let store = temp.path().join("store");
    let a = worker_session(&store, "a", "s-a");
    let mut failed = attempt("s-old", Some(worker_session(&store, "c", "s-old")));
    failed.outcome = Some(Outcome::Failed);
    let units = vec![
        unit("a", UnitState::Succeeded, vec![attempt("s-a", Some(a))]),
        // Its store was full: the session left no pack.
        unit("b", UnitState::Succeeded, vec![attempt("s-b", None)]),
        // Only an earlier failure left a pack: it vouches for no success.
        unit(
            "c",
            UnitState::Succeeded,
            vec![failed, attempt("s-c", None)],
        ),
        unit("skipped", UnitState::Skipped, vec![]),
    ];
    let out = temp.path().join("out");
    let assembled = assemble(&facts(), &units, &store, &out, SECRET).unwrap();
    let shown: Vec<String> = assembled.problems.iter().map(|p| p.to_string()).collect();
    let expected = vec![
        "unit 'b' succeeded but has no evidence pack of its succeeding session".to_owned(),
        "unit 'c' succeeded but has no evidence pack of its succeeding session".to_owned(),
    ];
    assert_eq!(shown, expected);
    let result = verify(&out, Some(SECRET));
    let shown: Vec<String> = result.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown, expected);
}

#[test]
fn a_session_id_that_climbs_out_of_the_store_is_named_and_not_followed() {
    let temp = tempfile::tempdir().unwrap();
    let store = temp.path().join("store");
    // A pack two levels up from the unit's folder, where `../..` would lead.
    let evidence = worker_session(&store, "a", "s-a");
    let units = vec![unit(
        "a",
        UnitState::NeedsReview,
        vec![attempt("../../b-1/a/s-a", Some(evidence))],
    )];
    let out = temp.path().join("out");
    let assembled = assemble(&facts(), &units, &store, &out, SECRET).unwrap();
    let shown: Vec<String> = assembled.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        shown,
        vec!["a/../../b-1/a/s-a: the path escapes the folder"]
    );
    assert_eq!((assembled.packs, assembled.files), (0, 0));
    assert_eq!(assembled.pack.units[0].pack, None);
    assert!(!out.join(SESSIONS_DIR).exists());
}
