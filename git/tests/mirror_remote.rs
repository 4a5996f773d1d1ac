//! The mirror and the remote: open, fetch, resolve, pins, pushes and the
//! compare-and-swap that moves the target.

mod common;

use common::{git, Fixture};
use regatta_git::mirror::Mirror;
use regatta_git::remote::{self, Swap};
use regatta_git::Error;

#[tokio::test]
async fn mirror_opens_fetches_names_and_ids_and_resolves() {
    let fixture = Fixture::new();
    let mirror = fixture.mirror().await;
    assert!(mirror.git().dir().join("HEAD").exists());
    assert_eq!(
        git(mirror.git().dir(), &["rev-parse", "--is-bare-repository"]),
        "true"
    );
    assert!(matches!(
        mirror.resolve("main").await,
        Err(Error::NotInMirror { .. })
    ));

    mirror.fetch(&["main"]).await.unwrap();
    assert_eq!(mirror.resolve("main").await.unwrap(), fixture.base);
    assert_eq!(
        mirror.resolve("refs/heads/main").await.unwrap(),
        fixture.base
    );

    // A commit known only by its id, then one already present (no fetch).
    let feature = fixture.branch("feature", "main", &[("new.txt", Some("new\n"))]);
    mirror.fetch(&[&feature, &fixture.base]).await.unwrap();
    assert_eq!(mirror.resolve(&feature).await.unwrap(), feature);
    assert!(matches!(
        mirror.resolve("feature").await,
        Err(Error::NotInMirror { .. })
    ));

    let missing = mirror.fetch(&["no-such-branch"]).await.unwrap_err();
    assert!(matches!(&missing, Error::NotOnRemote { rev, .. } if rev == "no-such-branch"));

    // Reopening is fine; the same folder for another remote is not.
    let again = fixture.mirror().await;
    assert_eq!(again.resolve("main").await.unwrap(), fixture.base);
    let other = Mirror::open(mirror.git().dir(), "/somewhere/else.git").await;
    assert!(matches!(other, Err(Error::MirrorOfAnotherRemote { .. })));
}

#[tokio::test]
async fn two_opens_racing_to_create_the_mirror_both_succeed() {
    let fixture = Fixture::new();
    let dir = fixture.temp.path().join("nested/mirror.git");
    let url = fixture.remote_url();
    let (first, second) = tokio::join!(Mirror::open(&dir, &url), Mirror::open(&dir, &url));
    let (first, second) = (first.unwrap(), second.unwrap());
    first.fetch(&["main"]).await.unwrap();
    assert_eq!(second.resolve("main").await.unwrap(), fixture.base);
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec!["mirror.git"]);
}

#[tokio::test]
async fn pins_branches_tags_and_ids_and_names_an_unknown_rev() {
    let fixture = Fixture::new();
    let tagged = fixture.branch("release", "main", &[("release.txt", Some("1\n"))]);
    git(&fixture.seed, &["tag", "-a", "-m", "one", "v1", &tagged]);
    git(&fixture.seed, &["push", "--quiet", "origin", "v1"]);
    let by_id = fixture.branch("other", "main", &[("other.txt", Some("2\n"))]);
    let mirror = fixture.mirror().await;

    assert_eq!(remote::pin(&mirror, "main").await.unwrap(), fixture.base);
    assert_eq!(remote::pin(&mirror, "v1").await.unwrap(), tagged);
    assert_eq!(remote::pin(&mirror, &by_id).await.unwrap(), by_id);
    // The pinned commits are in the mirror now.
    assert_eq!(mirror.resolve(&tagged).await.unwrap(), tagged);
    assert_eq!(mirror.resolve(&by_id).await.unwrap(), by_id);

    let unknown = remote::pin(&mirror, "nope").await.unwrap_err();
    assert!(matches!(&unknown, Error::NotOnRemote { rev, .. } if rev == "nope"));
    assert!(unknown.to_string().contains("nope"));
    let unknown_id = "0123456789abcdef0123456789abcdef01234567";
    let unknown = remote::pin(&mirror, unknown_id).await.unwrap_err();
    assert!(matches!(&unknown, Error::NotOnRemote { rev, .. } if rev == unknown_id));
}

#[tokio::test]
async fn push_replaces_what_the_branch_held() {
    let fixture = Fixture::new();
    let first = fixture.branch("one", "main", &[("a.txt", Some("a\n"))]);
    let second = fixture.branch("two", "main", &[("b.txt", Some("b\n"))]);
    let mirror = fixture.mirror().await;
    mirror.fetch(&[&first, &second]).await.unwrap();

    remote::push(&mirror, &first, "regatta/b1/u1")
        .await
        .unwrap();
    assert_eq!(
        fixture.remote_ref("refs/heads/regatta/b1/u1"),
        Some(first.clone())
    );
    // Not a fast-forward: replaced all the same.
    remote::push(&mirror, &second, "refs/heads/regatta/b1/u1")
        .await
        .unwrap();
    assert_eq!(fixture.remote_ref("refs/heads/regatta/b1/u1"), Some(second));
    assert_eq!(
        remote::tip(&mirror, "regatta/b1/u1").await.unwrap(),
        fixture.remote_ref("refs/heads/regatta/b1/u1")
    );
    assert_eq!(remote::tip(&mirror, "absent").await.unwrap(), None);
}

#[tokio::test]
async fn compare_and_swap_moves_the_target_only_from_the_expected_commit() {
    let fixture = Fixture::new();
    let tested = fixture.branch("candidate", "main", &[("c.txt", Some("c\n"))]);
    let mirror = fixture.mirror().await;
    mirror.fetch(&[&tested]).await.unwrap();

    let swap = remote::compare_and_swap(&mirror, "main", &fixture.base, &tested)
        .await
        .unwrap();
    assert_eq!(swap, Swap::Moved);
    assert_eq!(fixture.remote_ref("refs/heads/main"), Some(tested.clone()));

    // Someone else moves main; a swap from the stale tip overwrites nothing.
    let theirs = fixture.branch("main", &tested, &[("theirs.txt", Some("t\n"))]);
    let late = fixture.branch("late", &tested, &[("late.txt", Some("l\n"))]);
    mirror.fetch(&[&late]).await.unwrap();
    let swap = remote::compare_and_swap(&mirror, "main", &tested, &late)
        .await
        .unwrap();
    assert_eq!(
        swap,
        Swap::Raced {
            actual: Some(theirs.clone())
        }
    );
    assert_eq!(fixture.remote_ref("refs/heads/main"), Some(theirs));
}

#[tokio::test]
async fn an_unreachable_remote_is_an_error_not_a_race() {
    let fixture = Fixture::new();
    let gone = fixture.temp.path().join("gone.git");
    let mirror = Mirror::open(&fixture.temp.path().join("m.git"), gone.to_str().unwrap())
        .await
        .unwrap();
    let base = fixture.base.clone();
    let result = remote::compare_and_swap(&mirror, "main", &base, &base).await;
    assert!(matches!(result, Err(Error::Command { .. })), "{result:?}");
}
