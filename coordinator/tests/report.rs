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

fn costing(mut attempt: Attempt, cost_usd: Option<f64>, tokens: (u64, u64)) -> Attempt {
    attempt.usage = Some(regatta_proto::Usage {
        tokens_in: tokens.0,
        tokens_cached: 0,
        tokens_out: tokens.1,
        turns: 3,
        cost_usd,
    });
    attempt
}

#[test]
fn cost_is_summed_per_unit_and_cluster_and_the_total_projected() {
    let ok = |start, usd| {
        costing(
            attempt(1, Outcome::Succeeded, start, 100, ""),
            Some(usd),
            (10, 1),
        )
    };
    let boom = |n, start, usd| {
        costing(
            attempt(n, Outcome::Failed, start, 100, "boom"),
            Some(usd),
            (10, 1),
        )
    };
    let report = Report::build(&input(vec![
        unit("a", UnitState::Succeeded, vec![ok(1_000, 0.10)]),
        unit(
            "b",
            UnitState::Succeeded,
            vec![boom(1, 1_000, 0.05), {
                let mut again = ok(2_000, 0.15);
                again.attempt = 2;
                again
            }],
        ),
        unit("c", UnitState::NeedsReview, vec![boom(1, 3_000, 0.30)]),
        unit("d", UnitState::Pending, vec![]),
        unit(
            "e",
            UnitState::Running,
            vec![costing(
                Attempt {
                    ended_at_ms: None,
                    outcome: None,
                    ..attempt(1, Outcome::Succeeded, 4_000, 0, "")
                },
                Some(0.05),
                (10, 1),
            )],
        ),
        unit("f", UnitState::Ready, vec![]),
        // Units that will not run are not projected.
        unit("g", UnitState::Skipped, vec![]),
    ]));
    let cost = &report.cost;
    let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert_eq!(cost.sessions, 5);
    assert!(near(cost.spent_usd, 0.65), "{cost:?}");
    // Every attempt counts: b's retry cost twice.
    let b = cost.units.iter().find(|u| u.unit == "b").expect("b");
    assert_eq!(b.sessions, 2);
    assert!(near(b.cost_usd, 0.20));
    assert_eq!(cost.units[0].unit, "c", "most expensive first");
    let per_unit = cost.per_unit.as_ref().expect("per unit");
    assert_eq!(per_unit.units, 3);
    assert!(near(per_unit.mean_usd, 0.20) && near(per_unit.max_usd, 0.30));
    // 0.65 spent + 0.20 for d and f each + 0.15 left of e's mean.
    let projection = cost.projection.as_ref().expect("a projection");
    assert_eq!(projection.units_to_come, 3);
    assert!(!projection.from_calibration);
    assert!(near(projection.projected_total_usd, 1.20), "{projection:?}");
    // Both failures say `boom`: one cluster, their costs summed.
    assert_eq!(report.clusters.len(), 1);
    assert!(report.clusters[0].cost_usd.is_some_and(|c| near(c, 0.35)));
    let md = render::markdown(&report);
    assert!(md.contains("## Cost"), "{md}");
    assert!(md.contains("Projected total: **$1.20**"), "{md}");
    assert!(md.contains("2 units, $0.3500"), "the cluster's cost: {md}");
    let html = render::html(&report);
    assert!(html.contains("<h2>Cost</h2>") && html.contains("id=\"projection\""));
    assert!(html.contains("$0.6500"), "spent");
    let json: serde_json::Value = serde_json::from_str(&render::json(&report)).expect("json");
    assert!(json["cost"]["projection"]["projected_total_usd"]
        .as_f64()
        .is_some_and(|v| near(v, 1.2)));
    assert!(json["clusters"][0]["cost_usd"].as_f64().is_some());
}

#[test]
fn tokens_without_a_cost_are_priced_by_the_manifest_and_calibration_projects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = regatta_coordinator::manifest::Manifest::parse(
        "batch: b\nplaybook:\n  name: p\n  run: 'true'\n  prices:\n    version: '2026-11'\n    \
         models:\n      m: {input: 3, output: 15}\nunits:\n  - id: a\n  - id: b\n  - id: c\n  - id: d\n",
        "manifest.yaml",
        dir.path(),
    )
    .expect("a manifest");
    let tokens_only = |start| {
        costing(
            attempt(1, Outcome::Succeeded, start, 100, ""),
            None,
            (1_000_000, 100_000),
        )
    };
    let mut input = input(vec![
        unit("a", UnitState::Succeeded, vec![tokens_only(1_000)]),
        unit("b", UnitState::Succeeded, vec![tokens_only(2_000)]),
        unit("c", UnitState::Pending, vec![]),
        unit("d", UnitState::Pending, vec![]),
    ]);
    input.manifest = Some(manifest);
    input.summary.state = BatchState::AwaitingApproval;
    input.summary.calibration = Some(
        serde_json::from_value(serde_json::json!({
            "units": 2, "succeeded": 2, "failed": 0, "success_rate": 1.0,
            "mean_duration_ms": 100, "max_duration_ms": 100
        }))
        .expect("a calibration summary"),
    );
    let report = Report::build(&input);
    let cost = &report.cost;
    // 1M tokens in at $3 and 100k out at $15 per million: $4.50 a session.
    assert_eq!(cost.priced_by_table, 2);
    assert!((cost.spent_usd - 9.0).abs() < 1e-9, "{cost:?}");
    let projection = cost.projection.as_ref().expect("a projection");
    assert!(projection.from_calibration);
    assert!((projection.projected_total_usd - 18.0).abs() < 1e-9);
    assert!(render::markdown(&report).contains("from 2 calibration units"));
}

#[test]
fn a_batch_without_usage_says_so() {
    let report = Report::build(&input(vec![unit(
        "a",
        UnitState::Succeeded,
        vec![attempt(1, Outcome::Succeeded, 1_000, 100, "")],
    )]));
    assert_eq!(report.cost.sessions, 0);
    assert!(report.cost.projection.is_none());
    assert!(render::markdown(&report).contains("No session reported usage."));
    assert!(render::html(&report).contains("No session reported usage."));
}
