//! Git mode's part of the unit lifecycle (docs/git-mode.md), pure: a
//! succeeded unit waits to land, its dependents start once it landed, a
//! branch that no longer merges re-runs once, a culprit needs review, and a
//! worker's report the train could not land fails.

use std::collections::BTreeMap;
use std::path::Path;

use regatta_coordinator::dag::Dag;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{Batch, BatchState, Finish, Report, UnitState};
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

struct Run {
    usage: BTreeMap<String, u32>,
    sessions: u32,
}

impl Run {
    fn new() -> Run {
        Run {
            usage: BTreeMap::new(),
            sessions: 0,
        }
    }

    fn dispatch(&mut self, batch: &mut Batch) -> Vec<String> {
        let sessions = &mut self.sessions;
        let mut new_session = || {
            *sessions += 1;
            format!("s-{sessions}")
        };
        let effects = batch.dispatch(0, &mut self.usage, &mut new_session);
        effects
            .publish
            .iter()
            .map(|&u| batch.units[u].id.clone())
            .collect()
    }

    fn finish(&mut self, batch: &mut Batch, unit: &str, outcome: Outcome, git: Option<GitReport>) {
        let index = batch.index_of(unit).expect("unit");
        let session = batch.units[index]
            .current()
            .map(|a| a.session_id.clone())
            .expect("a session");
        let started = Report::Started {
            worker: "w".into(),
            fencing: 1,
            at_ms: 1,
        };
        batch.report(index, &session, started, &mut self.usage);
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
        };
        batch.report(index, &session, Report::Finished(finish), &mut self.usage);
    }
}

fn state(batch: &Batch, unit: &str) -> UnitState {
    batch.units[batch.index_of(unit).expect("unit")].state
}

#[test]
fn a_succeeded_unit_waits_to_land_and_its_dependents_start_only_then() {
    let mut batch = batch(0);
    let mut run = Run::new();
    assert_eq!(run.dispatch(&mut batch), vec!["a", "b"]);
    run.finish(
        &mut batch,
        "a",
        Outcome::Succeeded,
        Some(report(Some(COMMIT))),
    );
    assert_eq!(state(&batch, "a"), UnitState::Succeeded);
    assert!(
        run.dispatch(&mut batch).is_empty(),
        "c waits for a to land, not only to succeed"
    );
    assert_eq!(batch.commit_of(0), Some(COMMIT));
    let effects = batch.land(0);
    assert!(effects.changed.contains(&0));
    assert_eq!(state(&batch, "a"), UnitState::Landed);
    assert_eq!(run.dispatch(&mut batch), vec!["c"]);
    assert!(batch.satisfies(0) && !batch.satisfies(1));
}

#[test]
fn the_batch_succeeds_only_when_every_unit_has_landed_or_was_skipped() {
    let mut batch = batch(0);
    let mut run = Run::new();
    for wave in [vec!["a", "b"], vec!["c"], vec!["d"]] {
        assert_eq!(run.dispatch(&mut batch), wave);
        for unit in &wave {
            run.finish(
                &mut batch,
                unit,
                Outcome::Succeeded,
                Some(report(Some(COMMIT))),
            );
            assert_eq!(
                batch.state,
                BatchState::Running,
                "{unit} has not landed yet"
            );
            batch.land(batch.index_of(unit).expect("unit"));
        }
    }
    assert_eq!(batch.state, BatchState::Succeeded);
    assert_eq!(batch.count(UnitState::Landed), 4);
}

#[test]
fn a_branch_that_no_longer_merges_reruns_once_on_the_tip_then_needs_review() {
    let mut batch = batch(0);
    let mut run = Run::new();
    run.dispatch(&mut batch);
    run.finish(
        &mut batch,
        "a",
        Outcome::Succeeded,
        Some(report(Some(COMMIT))),
    );
    let files = vec!["shared.txt".to_owned()];
    let (rerun, _) = batch.rebase(0, "tip-1", &files);
    assert!(rerun);
    assert_eq!(state(&batch, "a"), UnitState::Ready);
    assert_eq!(batch.units[0].rebase_on.as_deref(), Some("tip-1"));
    assert_eq!(batch.units[0].failures, 0, "a rebase is no retry");
    assert_eq!(run.dispatch(&mut batch), vec!["a"]);
    run.finish(
        &mut batch,
        "a",
        Outcome::Succeeded,
        Some(report(Some(COMMIT))),
    );
    let (rerun, _) = batch.rebase(0, "tip-2", &files);
    assert!(!rerun, "only one automatic re-run");
    assert_eq!(state(&batch, "a"), UnitState::NeedsReview);
    let reason = batch.units[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("shared.txt"), "{reason}");
    assert_eq!(state(&batch, "c"), UnitState::Blocked);
}

#[test]
fn a_culprit_needs_review_and_its_descendants_wait() {
    let mut batch = batch(3);
    let mut run = Run::new();
    run.dispatch(&mut batch);
    run.finish(
        &mut batch,
        "a",
        Outcome::Succeeded,
        Some(report(Some(COMMIT))),
    );
    batch.reject(0, "it breaks the integration tests: FAIL".into());
    assert_eq!(state(&batch, "a"), UnitState::NeedsReview);
    assert_eq!(state(&batch, "c"), UnitState::Blocked);
    assert_eq!(state(&batch, "d"), UnitState::Blocked);
    assert_eq!(state(&batch, "b"), UnitState::Queued, "an innocent goes on");
    // A person retries it: it runs again, and c waits for it to land.
    batch.retry(0).expect("retry");
    assert_eq!(state(&batch, "c"), UnitState::Pending);
}

#[test]
fn dependencies_that_conflict_send_the_unit_to_review_without_spending_retries() {
    let mut batch = batch(3);
    let mut run = Run::new();
    run.dispatch(&mut batch);
    let conflict = GitReport {
        conflict: Some(vec!["registry.sh".into()]),
        ..report(None)
    };
    run.finish(&mut batch, "a", Outcome::Failed, Some(conflict));
    assert_eq!(state(&batch, "a"), UnitState::NeedsReview);
    assert_eq!(state(&batch, "c"), UnitState::Blocked);
}

#[test]
fn a_git_success_without_a_git_result_or_with_a_bad_commit_id_fails() {
    for git in [
        None,
        Some(report(Some("refs/heads/main"))),
        Some(report(Some("--stdin"))),
    ] {
        let mut batch = batch(0);
        let mut run = Run::new();
        run.dispatch(&mut batch);
        run.finish(&mut batch, "a", Outcome::Succeeded, git.clone());
        assert_eq!(state(&batch, "a"), UnitState::NeedsReview, "{git:?}");
        let attempt = batch.units[0].current().expect("attempt");
        assert_eq!(attempt.outcome, Some(Outcome::Failed));
        assert!(attempt.reason.is_some());
    }
    // A success that changed nothing is fine.
    let mut batch = batch(0);
    let mut run = Run::new();
    run.dispatch(&mut batch);
    run.finish(&mut batch, "a", Outcome::Succeeded, Some(report(None)));
    assert_eq!(state(&batch, "a"), UnitState::Succeeded);
}
