//! Git mode's part of the unit lifecycle (docs/git-mode.md), pure: a
//! succeeded unit waits to land, its dependents start once it landed, a
//! branch that no longer merges re-runs once, a culprit needs review, and a
//! worker's report the train could not land fails.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use regatta_coordinator::dag::Dag;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{Batch, BatchState, Finish, Fleet, Report, UnitState};
use regatta_proto::git::{GitReport, UnitCommit};
use regatta_proto::Outcome;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A git-mode batch: a and b first, c after a, d after c.
fn batch(retries: u32) -> Batch {
    let yaml = format!(
        "batch: g\nretries: {retries}\nplaybook: {{name: p, run: 'true'}}\n\
         git: {{repo: /tmp/shop.git, base: main, integration: 'true'}}\n\
         units:\n  - id: a\n  - id: b\n  - {{id: c, depends_on: [a]}}\n  - {{id: d, depends_on: [c]}}\n"
    );
    let manifest = Manifest::parse(&yaml, "git.yaml", Path::new("/tmp"))
        .unwrap_or_else(|e| panic!("invalid test manifest: {e}"));
    let dag = Dag::build(&manifest).expect("dag");
    Batch::new("g-1".into(), manifest, dag)
}

fn report(commit: Option<&str>) -> GitReport {
    GitReport {
        base: COMMIT.into(),
        start: COMMIT.into(),
        commit: commit.map(|c| UnitCommit {
            commit: c.into(),
            tree: COMMIT.into(),
            files: Vec::new(),
            insertions: 1,
            deletions: 0,
        }),
        ..GitReport::default()
    }
}

/// The fleet's operations as these tests drive them.
trait Drive {
    fn publish(&mut self, batch: &str) -> Vec<String>;
    /// Starts and finishes a unit's current session.
    fn finish(&mut self, batch: &str, unit: &str, outcome: Outcome, git: Option<GitReport>);
}

impl Drive for Fleet {
    fn publish(&mut self, batch: &str) -> Vec<String> {
        static SESSIONS: AtomicU64 = AtomicU64::new(0);
        let mut new_session = || format!("s-{}", SESSIONS.fetch_add(1, Ordering::Relaxed) + 1);
        let effects = self.dispatch(batch, 0, &mut new_session);
        effects
            .publish
            .iter()
            .map(|&u| self[batch].units[u].id.clone())
            .collect()
    }

    fn finish(&mut self, batch: &str, unit: &str, outcome: Outcome, git: Option<GitReport>) {
        let index = self[batch].index_of(unit).expect("unit");
        let session = self[batch].units[index]
            .current()
            .map(|a| a.session_id.clone())
            .expect("a session");
        let started = Report::Started {
            worker: "w".into(),
            fencing: 1,
            at_ms: 1,
        };
        self.report(batch, index, &session, started);
        let finish = Finish {
            outcome,
            exit_code: Some(0),
            reason: None,
            at_ms: 2,
            log_tail: String::new(),
            log_path: String::new(),
            gates: Vec::new(),
            fencing: 1,
            evidence: None,
            git: git.map(Box::new),
            usage: None,
            worker: None,
            started_at_ms: None,
        };
        self.report(batch, index, &session, Report::Finished(finish));
    }
}

fn state(batch: &Batch, unit: &str) -> UnitState {
    batch.units[batch.index_of(unit).expect("unit")].state
}

#[test]
fn a_succeeded_unit_waits_to_land_and_its_dependents_start_only_then() {
    let mut fleet = Fleet::new();
    let batch = fleet.insert(batch(0), ());
    assert_eq!(fleet.publish(&batch), vec!["a", "b"]);
    fleet.finish(&batch, "a", Outcome::Succeeded, Some(report(Some(COMMIT))));
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
    assert!(
        fleet.publish(&batch).is_empty(),
        "c waits for a to land, not only to succeed"
    );
    assert_eq!(fleet[&batch].commit_of(0), Some(COMMIT));
    let effects = fleet[&batch].land(0);
    assert!(effects.changed.contains(&0));
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Landed);
    assert_eq!(fleet.publish(&batch), vec!["c"]);
    assert!(fleet[&batch].satisfies(0) && !fleet[&batch].satisfies(1));
}

#[test]
fn the_batch_succeeds_only_when_every_unit_has_landed_or_was_skipped() {
    let mut fleet = Fleet::new();
    let batch = fleet.insert(batch(0), ());
    for wave in [vec!["a", "b"], vec!["c"], vec!["d"]] {
        assert_eq!(fleet.publish(&batch), wave);
        for unit in &wave {
            fleet.finish(&batch, unit, Outcome::Succeeded, Some(report(Some(COMMIT))));
            assert_eq!(
                fleet[&batch].state,
                BatchState::Running,
                "{unit} has not landed yet"
            );
            let unit = fleet[&batch].index_of(unit).expect("unit");
            fleet[&batch].land(unit);
        }
    }
    assert_eq!(fleet[&batch].state, BatchState::Succeeded);
    assert_eq!(fleet[&batch].count(UnitState::Landed), 4);
}

#[test]
fn a_branch_that_no_longer_merges_reruns_once_on_the_tip_then_needs_review() {
    let mut fleet = Fleet::new();
    let batch = fleet.insert(batch(0), ());
    fleet.publish(&batch);
    fleet.finish(&batch, "a", Outcome::Succeeded, Some(report(Some(COMMIT))));
    let files = vec!["shared.txt".to_owned()];
    let (rerun, _) = fleet[&batch].rebase(0, "tip-1", &files);
    assert!(rerun);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
    assert_eq!(fleet[&batch].units[0].rebase_on.as_deref(), Some("tip-1"));
    assert_eq!(fleet[&batch].units[0].failures, 0, "a rebase is no retry");
    assert_eq!(fleet.publish(&batch), vec!["a"]);
    fleet.finish(&batch, "a", Outcome::Succeeded, Some(report(Some(COMMIT))));
    let (rerun, _) = fleet[&batch].rebase(0, "tip-2", &files);
    assert!(!rerun, "only one automatic re-run");
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    let reason = fleet[&batch].units[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("shared.txt"), "{reason}");
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Blocked);
}

#[test]
fn a_culprit_needs_review_and_its_descendants_wait() {
    let mut fleet = Fleet::new();
    let batch = fleet.insert(batch(3), ());
    fleet.publish(&batch);
    fleet.finish(&batch, "a", Outcome::Succeeded, Some(report(Some(COMMIT))));
    fleet[&batch].reject(0, "it breaks the integration tests: FAIL".into());
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Blocked);
    assert_eq!(state(&fleet[&batch], "d"), UnitState::Blocked);
    assert_eq!(
        state(&fleet[&batch], "b"),
        UnitState::Queued,
        "an innocent goes on"
    );
    // A person retries it: it runs again, and c waits for it to land.
    fleet[&batch].retry(0).expect("retry");
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Pending);
}

#[test]
fn dependencies_that_conflict_send_the_unit_to_review_without_spending_retries() {
    let mut fleet = Fleet::new();
    let batch = fleet.insert(batch(3), ());
    fleet.publish(&batch);
    let conflict = GitReport {
        conflict: Some(vec!["registry.sh".into()]),
        ..report(None)
    };
    fleet.finish(&batch, "a", Outcome::Failed, Some(conflict));
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Blocked);
}

#[test]
fn a_git_success_without_a_git_result_or_with_a_bad_commit_id_fails() {
    for git in [
        None,
        Some(report(Some("refs/heads/main"))),
        Some(report(Some("--stdin"))),
    ] {
        let mut fleet = Fleet::new();
        let batch = fleet.insert(batch(0), ());
        fleet.publish(&batch);
        fleet.finish(&batch, "a", Outcome::Succeeded, git.clone());
        assert_eq!(
            state(&fleet[&batch], "a"),
            UnitState::NeedsReview,
            "{git:?}"
        );
        let attempt = fleet[&batch].units[0].current().expect("attempt");
        assert_eq!(attempt.outcome, Some(Outcome::Failed));
        assert!(attempt.reason.is_some());
    }
    // A success that changed nothing is fine.
    let mut fleet = Fleet::new();
    let batch = fleet.insert(batch(0), ());
    fleet.publish(&batch);
    fleet.finish(&batch, "a", Outcome::Succeeded, Some(report(None)));
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
}
