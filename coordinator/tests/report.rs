//! `regatta report` on made-up batches: the funnel, the clusters, the
//! suggestions, and the size of a 10,000-session report.

use std::collections::BTreeMap;

use regatta_coordinator::report::{render, Input, Report};
use regatta_coordinator::scheduler::{Attempt, BatchState, UnitState};
use regatta_coordinator::service::{BatchSummary, UnitView};
use regatta_proto::{GateReport, Outcome};

fn attempt(n: u32, outcome: Outcome, start: i64, run_ms: i64, log: &str) -> Attempt {
    Attempt {
        attempt: n,
        session_id: format!("s-{start}-{n}"),
        worker: Some(format!("w{}", start % 3)),
        fencing: 1,
        published_at_ms: start - 50,
        started_at_ms: Some(start),
        ended_at_ms: Some(start + run_ms),
        outcome: Some(outcome),
        exit_code: Some(if outcome == Outcome::Succeeded { 0 } else { 1 }),
        reason: (outcome != Outcome::Succeeded).then(|| "the command exited with status 1".into()),
        log_tail: log.into(),
        log_path: String::new(),
        gates: Vec::new(),
        evidence: None,
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

fn input(units: Vec<UnitView>) -> Input {
    Input {
        summary: BatchSummary {
            id: "b-1".into(),
            name: "b".into(),
            state: BatchState::Failed,
            total: units.len(),
            counts: BTreeMap::new(),
            created_ms: 0,
            ended_ms: None,
            manifest_sha256: String::new(),
            concurrency: 4,
            resources: Vec::new(),
            calibration: None,
            train: None,
            budget: None,
        },
        units,
        train: None,
        manifest: None,
        conflicts: None,
    }
}

#[test]
fn the_funnel_tells_first_passes_retries_repairs_and_reviews_apart() {
    let mut repaired = attempt(1, Outcome::Succeeded, 1_000, 100, "");
    repaired.gates.push(GateReport {
        name: "lint".into(),
        passed: true,
        required: true,
        repairs: 1,
        duration_ms: 20,
    });
    let report = Report::build(&input(vec![
        unit(
            "a",
            UnitState::Succeeded,
            vec![attempt(1, Outcome::Succeeded, 1_000, 100, "")],
        ),
        unit("b", UnitState::Succeeded, vec![repaired]),
        unit(
            "c",
            UnitState::Succeeded,
            vec![
                attempt(1, Outcome::Failed, 1_000, 100, "boom"),
                attempt(2, Outcome::Succeeded, 2_000, 100, ""),
            ],
        ),
        unit(
            "d",
            UnitState::NeedsReview,
            vec![attempt(1, Outcome::Failed, 1_000, 100, "boom")],
        ),
        unit("e", UnitState::Blocked, vec![]),
    ]));
    let count = |stage: &str| {
        report
            .funnel
            .iter()
            .find(|s| s.stage == stage)
            .map(|s| (s.count, s.units.clone()))
            .expect("stage")
    };
    assert_eq!(count("first_pass"), (1, vec!["a".to_owned()]));
    assert_eq!(count("repaired_by_gate"), (1, vec!["b".to_owned()]));
    assert_eq!(count("passed_on_retry"), (1, vec!["c".to_owned()]));
    assert_eq!(count("needs_review"), (1, vec!["d".to_owned()]));
    assert_eq!(count("blocked"), (1, vec!["e".to_owned()]));
    // c's and d's failures are one cause.
    assert_eq!(report.clusters.len(), 1);
    assert_eq!(report.clusters[0].units, vec!["c", "d"]);
}

#[test]
fn suggestions_follow_the_figures() {
    let mut units = Vec::new();
    // Twenty units that take 10 to 40 s, one that ran out of time, and a
    // gate that needed its fix in a quarter of the sessions.
    for i in 0..20 {
        let mut a = attempt(1, Outcome::Succeeded, 1_000 * i, 10_000 + 1_500 * i, "");
        a.gates.push(GateReport {
            name: "format".into(),
            passed: true,
            required: true,
            repairs: u32::from(i % 4 == 0),
            duration_ms: 100,
        });
        units.push(unit(&format!("u{i}"), UnitState::Succeeded, vec![a]));
    }
    units.push(unit(
        "slow",
        UnitState::NeedsReview,
        vec![attempt(1, Outcome::TimedOut, 0, 60_000, "")],
    ));
    let mut wrote = attempt(1, Outcome::Failed, 0, 1_000, "");
    wrote.git = Some(regatta_proto::GitReport {
        outside_writes: vec!["src/registry.py".into()],
        ..Default::default()
    });
    units.push(unit("w", UnitState::NeedsReview, vec![wrote]));
    let report = Report::build(&input(units));
    let items = &report.suggestions.items;
    let timeout = items
        .iter()
        .find(|s| s.key == "timeout")
        .expect("a timeout");
    // p99 of successful sessions is 38.5 s: half again is 58 s.
    assert_eq!(timeout.value.as_deref(), Some("58s"), "{timeout:?}");
    assert!(items.iter().any(|s| s.key == "gates.format"), "{items:#?}");
    let touches = items
        .iter()
        .find(|s| s.key == "units.w.touches")
        .expect("touches");
    assert_eq!(touches.value.as_deref(), Some("[src/registry.py]"));
    assert!(
        report.suggestions.yaml.contains("timeout: 58s"),
        "{}",
        report.suggestions.yaml
    );
    // Nothing waited on the cap: no concurrency suggestion.
    assert!(!items.iter().any(|s| s.key == "concurrency"));
}

#[test]
fn ten_thousand_sessions_make_a_report_quickly_and_a_page_of_bounded_size() {
    let mut units = Vec::new();
    for i in 0..10_000i64 {
        let outcome = if i % 97 == 0 {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        let log = format!("error: table t{i} is locked by pid {}", 1000 + i);
        units.push(unit(
            &format!("u{i:05}"),
            UnitState::Succeeded,
            vec![attempt(1, outcome, 10 * i, 500 + i % 300, &log)],
        ));
    }
    let input = input(units);
    let started = std::time::Instant::now();
    let report = Report::build(&input);
    let html = render::html(&report);
    let md = render::markdown(&report);
    let json = render::json(&report);
    println!(
        "report of 10,000 sessions: built and rendered in {:?}; html {} KiB, md {} KiB, json {} KiB",
        started.elapsed(),
        html.len() / 1024,
        md.len() / 1024,
        json.len() / 1024
    );
    assert_eq!(report.sessions, 10_000);
    assert_eq!(report.clusters.len(), 1, "one cause, masked");
    assert_eq!(report.clusters[0].sessions, 104);
    let drawn = html.matches("<g class=").count();
    assert_eq!(
        drawn,
        render::MAX_BARS,
        "the page draws at most {} bars",
        render::MAX_BARS
    );
    assert!(html.contains("10000 sessions: the 2000 longest are drawn"));
}
