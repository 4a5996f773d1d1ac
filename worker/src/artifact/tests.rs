use super::*;
use std::os::unix::fs::symlink;

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn sha(content: &str) -> String {
    regatta_proto::evidence::sha256_hex(content.as_bytes())
}

struct Setup {
    _temp: tempfile::TempDir,
    store: ArtifactStore,
    files: SessionFiles,
    outside: PathBuf,
}

fn setup(outputs: &[&str]) -> Setup {
    let temp = tempfile::tempdir().unwrap();
    let workdir = temp.path().join("repo");
    let session = temp.path().join("work/b/u/s");
    let outside = temp.path().join("secret.txt");
    write(&outside, "top secret");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::create_dir_all(session.join("artifacts")).unwrap();
    Setup {
        store: ArtifactStore::new(temp.path().join("store")),
        files: SessionFiles {
            batch_id: "b".into(),
            unit_id: "u".into(),
            session_id: "s".into(),
            workdir,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            inputs: Vec::new(),
            artifact_dir: session.join("artifacts"),
            log: KeptLog::Memory(b"log line\n".to_vec()),
            transcript_path: None,
        },
        outside,
        _temp: temp,
    }
}

#[test]
fn outputs_artifacts_and_the_log_are_copied_and_hashed() {
    let s = setup(&["pg/a.sql", "./pg/b.sql", "missing.sql"]);
    write(&s.files.workdir.join("pg/a.sql"), "select 1;");
    write(&s.files.workdir.join("pg/b.sql"), "select 2;");
    write(&s.files.artifact_dir.join("report.txt"), "ok");
    write(&s.files.artifact_dir.join("deep/diff.patch"), "+x");
    let collection = s.store.collect_blocking(&s.files).unwrap();
    let summary: Vec<(&str, Stage, &str)> = collection
        .files
        .iter()
        .map(|f| (f.filename.as_str(), f.stage, f.path.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("pg/a.sql", Stage::Output, "outputs/pg/a.sql"),
            ("./pg/b.sql", Stage::Output, "outputs/pg/b.sql"),
            (
                "deep/diff.patch",
                Stage::Artifact,
                "artifacts/deep/diff.patch"
            ),
            ("report.txt", Stage::Artifact, "artifacts/report.txt"),
            ("session.log", Stage::Log, "session.log"),
        ]
    );
    assert_eq!(collection.files[0].sha256, sha("select 1;"));
    assert_eq!(collection.log().unwrap().sha256, sha("log line\n"));
    let dir = s.store.root().join("b/u/s");
    assert_eq!(collection.session_dir, std::fs::canonicalize(&dir).unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.join("outputs/pg/a.sql")).unwrap(),
        "select 1;"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("artifacts/deep/diff.patch")).unwrap(),
        "+x"
    );
    assert!(collection.rejected.is_empty(), "{:?}", collection.rejected);
}

#[test]
fn paths_that_climb_out_or_are_absolute_are_refused() {
    let s = setup(&["../secret.txt", "/etc/hostname", "a/../../secret.txt"]);
    let collection = s.store.collect_blocking(&s.files).unwrap();
    assert_eq!(collection.rejected.len(), 3, "{:?}", collection.rejected);
    assert!(collection.files.iter().all(|f| f.stage == Stage::Log));
    assert!(!s.store.root().join("secret.txt").exists());
    assert!(!s.store.root().join("b/u/secret.txt").exists());
}

#[test]
fn symlinks_pointing_outside_are_refused_and_inside_ones_followed() {
    let s = setup(&["out/leak.sql", "out/ok.sql"]);
    std::fs::create_dir_all(s.files.workdir.join("out")).unwrap();
    symlink(&s.outside, s.files.workdir.join("out/leak.sql")).unwrap();
    write(&s.files.workdir.join("real.sql"), "real");
    symlink(
        s.files.workdir.join("real.sql"),
        s.files.workdir.join("out/ok.sql"),
    )
    .unwrap();
    symlink(&s.outside, s.files.artifact_dir.join("leak.txt")).unwrap();
    symlink(
        s.outside.parent().unwrap(),
        s.files.artifact_dir.join("loop"),
    )
    .unwrap();
    write(&s.files.artifact_dir.join("real.txt"), "inside");
    symlink(
        s.files.artifact_dir.join("real.txt"),
        s.files.artifact_dir.join("alias.txt"),
    )
    .unwrap();
    let collection = s.store.collect_blocking(&s.files).unwrap();
    let rejected: Vec<&str> = collection
        .rejected
        .iter()
        .map(|r| r.filename.as_str())
        .collect();
    assert_eq!(rejected, vec!["out/leak.sql", "leak.txt", "loop"]);
    let stored: Vec<&str> = collection.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        stored,
        vec![
            "outputs/out/ok.sql",
            "artifacts/alias.txt",
            "artifacts/real.txt",
            "session.log"
        ]
    );
    // Nothing secret landed anywhere in the store.
    let mut all = Vec::new();
    walk(
        &std::fs::canonicalize(s.store.root()).unwrap(),
        Path::new(""),
        Path::new("/"),
        &mut all,
    );
    for (entry, _) in all {
        let text = std::fs::read_to_string(entry.unwrap()).unwrap();
        assert!(!text.contains("top secret"));
    }
}

#[test]
fn a_symlink_planted_in_the_store_does_not_redirect_writes() {
    let s = setup(&["out/a.sql"]);
    write(&s.files.workdir.join("out/a.sql"), "a");
    let dir = s.store.root().join("b/u/s");
    std::fs::create_dir_all(&dir).unwrap();
    let elsewhere = s.outside.parent().unwrap().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    symlink(&elsewhere, dir.join("outputs")).unwrap();
    let error = s.store.collect_blocking(&s.files).unwrap_err();
    assert!(matches!(error, ArtifactError::Escapes(_)), "{error}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn ids_must_be_one_plain_segment() {
    let store = ArtifactStore::new("/store");
    assert_eq!(
        store.session_dir("b", "u", "s").unwrap(),
        PathBuf::from("/store/b/u/s")
    );
    for bad in ["..", ".", "a/b", "/abs", "", "./a"] {
        assert!(store.session_dir(bad, "u", "s").is_err(), "{bad:?}");
        assert!(store.session_dir("b", bad, "s").is_err(), "{bad:?}");
        assert!(store.session_dir("b", "u", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_collection_under_an_unsafe_id_writes_nothing() {
    let mut s = setup(&[]);
    s.files.unit_id = "../..".into();
    let error = s.store.collect_blocking(&s.files).unwrap_err();
    assert!(matches!(error, ArtifactError::UnsafeId(_)), "{error}");
    assert!(error.to_string().contains("'../..'"), "{error}");
    assert!(!s.store.root().exists(), "the store was not even created");
}

#[test]
fn the_input_and_the_copy_of_a_stored_file_have_the_recorded_hash() {
    let s = setup(&["big.bin"]);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.files.workdir.join("big.bin"), &bytes).unwrap();
    let mut files = s.files.clone();
    files.inputs = vec!["big.bin".into()];
    let collection = s.store.collect_blocking(&files).unwrap();
    let stored = &collection.files[0];
    let expected = regatta_proto::evidence::sha256_hex(&bytes);
    assert_eq!(
        (stored.sha256.as_str(), stored.bytes),
        (expected.as_str(), 300_000)
    );
    let input = &collection.inputs[0];
    assert_eq!(
        (input.sha256.as_str(), input.bytes),
        (expected.as_str(), 300_000)
    );
    let copy = std::fs::read(collection.session_dir.join("outputs/big.bin")).unwrap();
    assert_eq!(copy, bytes);
}

#[test]
fn an_empty_log_leaves_no_file_and_a_spilled_one_is_hashed_where_it_is() {
    let mut s = setup(&[]);
    s.files.log = KeptLog::Empty;
    let collection = s.store.collect_blocking(&s.files).unwrap();
    assert!(collection.files.is_empty(), "{:?}", collection.files);
    assert!(!collection.session_dir.join("session.log").exists());
    // What a fresh session folder needs synced: the folders that gained an
    // entry (the store's root, the batch's, the unit's) and its own.
    let root = std::fs::canonicalize(s.store.root()).unwrap();
    assert_eq!(
        collection.to_sync,
        vec![
            root.clone(),
            root.join("b"),
            root.join("b/u"),
            root.join("b/u/s")
        ]
    );

    let (path, mut file) = s.store.open_log("b", "u", "s2").unwrap();
    std::io::Write::write_all(&mut file, b"spilled\n").unwrap();
    s.files.session_id = "s2".into();
    s.files.log = KeptLog::Spilled(path.clone());
    let collection = s.store.collect_blocking(&s.files).unwrap();
    assert_eq!(collection.log().unwrap().sha256, sha("spilled\n"));
    assert!(
        collection.to_sync.contains(&path),
        "{:?}",
        collection.to_sync
    );
    // A spilled log anywhere but its session's folder is refused.
    s.files.session_id = "s3".into();
    let error = s.store.collect_blocking(&s.files).unwrap_err();
    assert!(matches!(error, ArtifactError::Escapes(_)), "{error}");
}
