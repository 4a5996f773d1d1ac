//! Merging without a worktree: the conflict matrix and merge candidates.

mod common;

use common::{git, identity, Fixture};
use regatta_git::candidate::{self, UnitConflict};
use regatta_git::conflicts::{conflict_matrix, Conflict};

/// The target moved past the base (readme.md) and five unit branches made
/// from the base: u1 and u2 conflict, u3 conflicts with the target, u4 and
/// u5 merge with everything.
struct Units {
    fixture: Fixture,
    target: String,
    units: Vec<(String, String)>,
}

fn units() -> Units {
    let fixture = Fixture::new();
    let base = fixture.base.clone();
    let target = fixture.branch("main", &base, &[("readme.md", Some("# target\n"))]);
    let mut units = Vec::new();
    let mut unit = |name: &str, files: &[(&str, Option<&str>)]| {
        units.push((name.to_owned(), fixture.branch(name, &base, files)));
    };
    unit(
        "u1",
        &[
            ("shared.txt", Some("U1\ntwo\nthree\n")),
            ("both.txt", Some("1\n")),
        ],
    );
    unit(
        "u2",
        &[
            ("shared.txt", Some("U2\ntwo\nthree\n")),
            ("both.txt", Some("2\n")),
        ],
    );
    unit("u3", &[("readme.md", Some("# u3\n"))]);
    unit("u4", &[("u4.txt", Some("four\n"))]);
    unit("u5", &[("src/lib.rs", Some("pub fn five() {}\n"))]);
    Units {
        fixture,
        target,
        units,
    }
}

#[tokio::test]
async fn conflict_matrix_names_the_pairs_that_do_not_merge() {
    let Units {
        fixture,
        target,
        units,
    } = units();
    let mirror = fixture.mirror().await;
    let mut wants: Vec<&str> = units.iter().map(|(_, commit)| commit.as_str()).collect();
    wants.push(&target);
    mirror.fetch(&wants).await.unwrap();

    // u2 before u1: each pair still names the unit that sorts first as `a`.
    let order = ["u2", "u1", "u3", "u4"];
    let branches: Vec<(String, String)> = order
        .iter()
        .map(|name| units.iter().find(|(unit, _)| unit == name).unwrap().clone())
        .collect();
    let conflicts = conflict_matrix(mirror.git(), &target, &branches)
        .await
        .unwrap();
    assert_eq!(
        conflicts,
        vec![
            Conflict {
                a: "target".into(),
                b: "u3".into(),
                files: vec!["readme.md".into()]
            },
            Conflict {
                a: "u1".into(),
                b: "u2".into(),
                files: vec!["both.txt".into(), "shared.txt".into()]
            },
        ]
    );
    assert_eq!(
        conflict_matrix(mirror.git(), &target, &[]).await.unwrap(),
        vec![]
    );
}

#[tokio::test]
async fn candidate_is_the_tip_plus_one_merge_commit_per_unit() {
    let Units {
        fixture,
        target,
        units,
    } = units();
    let mirror = fixture.mirror().await;
    let mut wants: Vec<&str> = units.iter().map(|(_, commit)| commit.as_str()).collect();
    wants.push(&target);
    mirror.fetch(&wants).await.unwrap();
    let pick = |names: &[&str]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|name| units.iter().find(|(unit, _)| unit == name).unwrap().clone())
            .collect()
    };
    let message = |unit: &str| format!("Merge regatta/b1/{unit}");
    let window = pick(&["u1", "u4", "u5"]);

    let built = candidate::build(mirror.git(), &target, &window, message, &identity())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(built.base, target);
    assert_eq!(built.merges.len(), 3);
    assert_eq!(built.commit, built.merges[2].1);
    let dir = mirror.git().dir();
    let mut previous = target.clone();
    for ((unit, merge), (_, unit_commit)) in built.merges.iter().zip(&window) {
        let line = git(dir, &["log", "-1", "--format=%P|%s|%an", merge]);
        assert_eq!(
            line,
            format!("{previous} {unit_commit}|Merge regatta/b1/{unit}|regatta b1/u1")
        );
        previous = merge.clone();
    }
    let show = |path: &str| git(dir, &["show", &format!("{}:{path}", built.commit)]);
    assert_eq!(show("readme.md"), "# target");
    assert_eq!(show("shared.txt"), "U1\ntwo\nthree");
    assert_eq!(show("u4.txt"), "four");
    assert_eq!(show("src/lib.rs"), "pub fn five() {}");

    let conflicted = candidate::build(
        mirror.git(),
        &target,
        &pick(&["u4", "u1", "u2"]),
        message,
        &identity(),
    )
    .await
    .unwrap();
    assert_eq!(
        conflicted,
        Err(UnitConflict {
            unit: "u2".into(),
            files: vec!["both.txt".into(), "shared.txt".into()]
        })
    );
}
