//! A session's workspace (base plus merged dependencies), the commit of its
//! edits, the write-set check, and that no hook of the repository runs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{git, identity, Fixture};
use regatta_git::change::{commit_all, outside_write_set, ChangedFile, FileStatus};
use regatta_git::workspace::Workspace;
use regatta_git::Error;

#[tokio::test]
async fn workspace_merges_two_dependencies_and_is_removed_idempotently() {
    let fixture = Fixture::new();
    let a = fixture.branch("a", "main", &[("a.txt", Some("from a\n"))]);
    let b = fixture.branch("b", "main", &[("src/lib.rs", Some("pub fn g() {}\n"))]);
    let mirror = fixture.mirror().await;
    mirror.fetch(&[&fixture.base, &a, &b]).await.unwrap();
    let path = fixture.temp.path().join("sessions/s1");
    let deps = vec![("a".to_owned(), a.clone()), ("b".to_owned(), b.clone())];

    let workspace = Workspace::create(&mirror, &path, &fixture.base, &deps, &identity())
        .await
        .unwrap();
    assert_eq!(workspace.base, fixture.base);
    assert_eq!(workspace.dependencies, deps);
    assert_eq!(
        std::fs::read_to_string(path.join("a.txt")).unwrap(),
        "from a\n"
    );
    assert_eq!(
        std::fs::read_to_string(path.join("src/lib.rs")).unwrap(),
        "pub fn g() {}\n"
    );
    assert_eq!(git(&path, &["rev-parse", "HEAD"]), workspace.start);
    let subjects = git(&path, &["log", "--first-parent", "--format=%s|%an", "HEAD"]);
    assert_eq!(
        subjects.lines().collect::<Vec<_>>(),
        vec![
            "Merge dependency b|regatta b1/u1",
            "Merge dependency a|regatta b1/u1",
            "base|Seed"
        ]
    );
    let parents = git(&path, &["rev-parse", "HEAD^2", "HEAD^1^2", "HEAD^1^1"]);
    assert_eq!(
        parents.lines().collect::<Vec<_>>(),
        vec![&b, &a, &fixture.base]
    );

    workspace.remove(&mirror).await.unwrap();
    assert!(!path.exists());
    let listed = git(mirror.git().dir(), &["worktree", "list", "--porcelain"]);
    assert!(!listed.contains("sessions/s1"), "{listed}");
    workspace.remove(&mirror).await.unwrap();
}

#[tokio::test]
async fn conflicting_dependencies_are_named_with_their_files() {
    let fixture = Fixture::new();
    let a = fixture.branch("a", "main", &[("shared.txt", Some("A\ntwo\nthree\n"))]);
    let b = fixture.branch("b", "main", &[("shared.txt", Some("B\ntwo\nthree\n"))]);
    let c = fixture.branch("c", "main", &[("c.txt", Some("c\n"))]);
    let moved = fixture.branch("moved", "main", &[("shared.txt", Some("M\ntwo\nthree\n"))]);
    let mirror = fixture.mirror().await;
    mirror.fetch(&[&a, &b, &c, &moved]).await.unwrap();
    let path = fixture.temp.path().join("s");

    let deps = [
        ("a".to_owned(), a.clone()),
        ("c".to_owned(), c),
        ("b".to_owned(), b),
    ];
    let error = Workspace::create(&mirror, &path, &fixture.base, &deps, &identity())
        .await
        .unwrap_err();
    match error {
        Error::Conflict { what, files } => {
            assert_eq!(what, "dependencies a and b");
            assert_eq!(files, vec!["shared.txt"]);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(!path.exists());

    // A dependency that conflicts with the base alone.
    let deps = [("a".to_owned(), a)];
    let error = Workspace::create(&mirror, &path, &moved, &deps, &identity())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Conflict { what, files } if what == "dependency a" && files == &["shared.txt"]),
        "{error:?}"
    );
}

#[tokio::test]
async fn commit_all_records_adds_modifies_deletes_and_renames() {
    let fixture = Fixture::new();
    let mirror = fixture.mirror().await;
    mirror.fetch(&["main"]).await.unwrap();
    let path = fixture.temp.path().join("s");
    let workspace = Workspace::create(&mirror, &path, &fixture.base, &[], &identity())
        .await
        .unwrap();
    assert_eq!(workspace.start, fixture.base);
    assert_eq!(
        commit_all(&path, &identity(), "nothing").await.unwrap(),
        None
    );

    std::fs::write(path.join("added.txt"), "x\ny\n").unwrap();
    std::fs::write(path.join("readme.md"), "# demo\nmore\n").unwrap();
    std::fs::remove_file(path.join("src/lib.rs")).unwrap();
    std::fs::create_dir_all(path.join("moved")).unwrap();
    std::fs::rename(path.join("shared.txt"), path.join("moved/shared.txt")).unwrap();
    let message = "regatta b1/u1 task t session s";
    let unit = commit_all(&path, &identity(), message)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(unit.parent, fixture.base);
    assert_eq!(git(&path, &["rev-parse", "HEAD"]), unit.commit);
    assert_eq!(git(&path, &["rev-parse", "HEAD^{tree}"]), unit.tree);
    assert_eq!(git(&path, &["log", "-1", "--format=%s|%an|%cn|%P"]), {
        format!("{message}|regatta b1/u1|regatta b1/u1|{}", fixture.base)
    });
    let file = |path: &str, status, from: Option<&str>| ChangedFile {
        path: path.to_owned(),
        status,
        from: from.map(str::to_owned),
    };
    assert_eq!(
        unit.files,
        vec![
            file("added.txt", FileStatus::Added, None),
            file("moved/shared.txt", FileStatus::Renamed, Some("shared.txt")),
            file("readme.md", FileStatus::Modified, None),
            file("src/lib.rs", FileStatus::Deleted, None),
        ]
    );
    assert_eq!((unit.insertions, unit.deletions), (3, 1));
    let json = serde_json::to_value(&unit.files[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"path": "added.txt", "status": "added"})
    );
    assert_eq!(commit_all(&path, &identity(), "again").await.unwrap(), None);
}

#[tokio::test]
async fn workspace_commit_trusts_neither_head_nor_the_git_file() {
    let fixture = Fixture::new();
    let mirror = fixture.mirror().await;
    mirror.fetch(&["main"]).await.unwrap();
    let path = fixture.temp.path().join("s");
    let workspace = Workspace::create(&mirror, &path, &fixture.base, &[], &identity())
        .await
        .unwrap();
    assert!(workspace.git_dir.starts_with(mirror.git().dir()));
    std::fs::write(path.join("session.txt"), "s\n").unwrap();
    git(&path, &["add", "-A"]);
    git(
        &path,
        &["commit", "--quiet", "-m", "the session's own commit"],
    );
    std::fs::write(path.join("later.txt"), "l\n").unwrap();
    // The session points the worktree at a repository of its own.
    let decoy = fixture.temp.path().join("decoy");
    git(
        fixture.temp.path(),
        &["init", "--quiet", decoy.to_str().unwrap()],
    );
    let decoy_git = format!("gitdir: {}\n", decoy.join(".git").display());
    std::fs::write(path.join(".git"), decoy_git).unwrap();

    let unit = workspace
        .commit(&identity(), "unit")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unit.parent, workspace.start);
    let paths: Vec<&str> = unit.files.iter().map(|file| file.path.as_str()).collect();
    assert_eq!(paths, vec!["later.txt", "session.txt"]);
    assert_eq!(mirror.resolve(&unit.commit).await.unwrap(), unit.commit);
    let head = git(&workspace.git_dir, &["rev-parse", "HEAD"]);
    assert_eq!(head, unit.commit);
    assert_eq!(git(&decoy, &["count-objects"]), "0 objects, 0 kilobytes");
}

#[test]
fn outside_write_set_finds_paths_no_entry_covers() {
    let modified = |path: &str| ChangedFile {
        path: path.to_owned(),
        status: FileStatus::Modified,
        from: None,
    };
    let renamed = ChangedFile {
        path: "out/new.sql".to_owned(),
        status: FileStatus::Renamed,
        from: Some("schema/old.sql".to_owned()),
    };
    let allowed = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    let files = vec![
        modified("schema/customer.sql"),
        modified("schema/customers/extra.sql"),
        modified("out/pg/a.sql"),
        modified("README.md"),
        renamed,
    ];

    assert_eq!(
        outside_write_set(&files, &allowed(&["./schema/customer.sql", "out/"])),
        vec!["README.md", "schema/customers/extra.sql", "schema/old.sql"]
    );
    // A folder entry covers what is under it, not a sibling sharing a prefix.
    assert_eq!(
        outside_write_set(&files, &allowed(&["schema", "out", "README.md"])),
        Vec::<String>::new()
    );
    assert_eq!(
        outside_write_set(&files, &allowed(&["."])),
        Vec::<String>::new()
    );
    assert_eq!(outside_write_set(&[], &allowed(&[])), Vec::<String>::new());
    assert_eq!(
        outside_write_set(&[modified("a")], &allowed(&[])),
        vec!["a"]
    );
    assert_eq!(
        outside_write_set(&[modified("ab")], &allowed(&["a"])),
        vec!["ab"]
    );
}

/// Writes an executable script that appends `name` to `markers`.
fn plant(script: &Path, markers: &Path, name: &str) {
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    let body = format!(
        "#!/bin/sh\necho {name} >> '{}'\n",
        markers.join("ran").display()
    );
    std::fs::write(script, body).unwrap();
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn no_hook_or_fsmonitor_of_the_repository_runs() {
    let fixture = Fixture::new();
    let mirror = fixture.mirror().await;
    mirror.fetch(&["main"]).await.unwrap();
    let markers = fixture.temp.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let planted = fixture.temp.path().join("planted-hooks");
    for hook in [
        "post-checkout",
        "reference-transaction",
        "pre-commit",
        "post-commit",
    ] {
        plant(&mirror.git().dir().join("hooks").join(hook), &markers, hook);
        plant(&planted.join(hook), &markers, hook);
    }
    let fsmonitor = fixture.temp.path().join("fsmonitor.sh");
    plant(&fsmonitor, &markers, "fsmonitor");
    let dir = mirror.git().dir();
    git(
        dir,
        &["config", "core.hooksPath", planted.to_str().unwrap()],
    );
    git(
        dir,
        &["config", "core.fsmonitor", fsmonitor.to_str().unwrap()],
    );

    let path = fixture.temp.path().join("s");
    let workspace = Workspace::create(&mirror, &path, &fixture.base, &[], &identity())
        .await
        .unwrap();
    std::fs::write(path.join("x.txt"), "x\n").unwrap();
    commit_all(&path, &identity(), "unit")
        .await
        .unwrap()
        .unwrap();
    workspace.remove(&mirror).await.unwrap();
    assert!(!markers.join("ran").exists());

    // The planted hooks are live: plain git runs them.
    let other = fixture.temp.path().join("plain");
    git(
        dir,
        &[
            "worktree",
            "add",
            "--detach",
            other.to_str().unwrap(),
            &fixture.base,
        ],
    );
    let ran = std::fs::read_to_string(markers.join("ran")).unwrap();
    assert!(ran.contains("post-checkout"), "{ran}");
}

/// Sessions of one worker add and remove worktrees of one mirror at once:
/// a `worktree prune` of one must never delete another's half-made entry
/// (seen in the 200-unit git benchmark before the two were serialised).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worktrees_added_and_removed_at_once_never_break_each_other() {
    let fixture = Fixture::new();
    let mirror = std::sync::Arc::new(fixture.mirror().await);
    mirror.fetch(&[fixture.base.as_str()]).await.unwrap();
    let root = fixture.temp.path().join("sessions");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (mirror, base, path) = (
            mirror.clone(),
            fixture.base.clone(),
            root.join(format!("s{i}/workspace")),
        );
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let workspace = Workspace::create(&mirror, &path, &base, &[], &identity())
                    .await
                    .unwrap_or_else(|e| panic!("session {i} round {round}: {e}"));
                assert!(path.join("shared.txt").exists());
                workspace.remove(&mirror).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.expect("no session failed");
    }
}
