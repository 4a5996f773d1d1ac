//! The batch budget in the scheduler (contract 9, docs/contracts.md): what a
//! session reserves, admission under the cap, settling at the reported cost,
//! a lost session's reservation kept as spent, a hand-back's given back, the
//! reason a unit waits, and the ledger rebuilt by a restarted coordinator.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use regatta_coordinator::dag::Dag;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::order::work_order;
use regatta_coordinator::scheduler::{Batch, Finish, Fleet, Report, UnitState};
use regatta_proto::{BudgetReservation, BudgetSpend, Outcome, Usage};

const NOW: i64 = 1_000_000;

fn batch(header: &str, playbook: &str, units: &str) -> Batch {
    let yaml = format!(
        "batch: b\nplaybook: {{name: p, run: 'true'{playbook}}}\n{header}\nunits:\n{units}"
    );
    let manifest = Manifest::parse(&yaml, "test.yaml", Path::new("/tmp"))
        .unwrap_or_else(|errors| panic!("invalid test manifest:\n{errors}\n---\n{yaml}"));
    let dag = Dag::build(&manifest).expect("a valid manifest builds its DAG");
    Batch::new("b-1".into(), manifest, dag)
}

/// `n` independent units `u0`, `u1`, ...
/// A fleet holding `batch` alone, and the batch's id.
fn fleet_of(batch: Batch) -> (Fleet<()>, String) {
    let mut fleet = Fleet::new();
    let id = fleet.insert(batch, ());
    (fleet, id)
}

fn units(n: usize) -> String {
    (0..n).map(|i| format!("  - {{id: u{i}}}\n")).collect()
}

fn new_session() -> String {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    format!("s-{}", SESSIONS.fetch_add(1, Ordering::Relaxed))
}

fn publish(fleet: &mut Fleet, batch: &str) -> Vec<String> {
    let effects = fleet.dispatch(batch, NOW, &mut new_session);
    let b = &fleet[batch];
    effects
        .publish
        .iter()
        .map(|&u| b.units[u].id.clone())
        .collect()
}

fn index(batch: &Batch, unit: &str) -> usize {
    batch.index_of(unit).expect("a unit of the batch")
}

fn send(fleet: &mut Fleet, batch: &str, unit: &str, report: Report) {
    let u = index(&fleet[batch], unit);
    let session = fleet[batch].units[u]
        .current()
        .expect("an attempt")
        .session_id
        .clone();
    fleet.report(batch, u, &session, report);
}

fn started() -> Report {
    Report::Started {
        worker: "w".into(),
        fencing: 3,
        at_ms: NOW + 1,
    }
}

fn finished(outcome: Outcome, cost_usd: Option<f64>) -> Report {
    Report::Finished(Finish {
        outcome,
        exit_code: Some(0),
        reason: None,
        at_ms: NOW + 100,
        log_tail: String::new(),
        log_path: String::new(),
        gates: Vec::new(),
        fencing: if outcome == Outcome::Lost { 0 } else { 3 },
        evidence: None,
        git: None,
        usage: cost_usd.map(|cost| Usage {
            cost_usd: Some(cost),
            ..Usage::default()
        }),
        worker: None,
        started_at_ms: None,
    })
}

fn run(fleet: &mut Fleet, batch: &str, unit: &str, outcome: Outcome, cost: Option<f64>) {
    send(fleet, batch, unit, started());
    send(fleet, batch, unit, finished(outcome, cost));
}

fn spend(reserved: f64, spent: f64, cap: f64) -> Option<BudgetSpend> {
    let m = regatta_proto::batch_budget::micros;
    Some(BudgetSpend {
        reserved_micros: m(reserved),
        spent_micros: m(spent),
        cap_micros: m(cap),
    })
}

#[test]
fn the_estimate_is_the_units_cap_then_the_playbooks_then_the_default() {
    let b = batch(
        "budget: {cost_usd: 100}",
        ", budget: {cost_usd: 2}",
        "  - {id: own, budget: {cost_usd: 0.5}}\n  - {id: plain}\n",
    );
    assert_eq!(b.reservation(0), 500_000);
    assert_eq!(b.reservation(1), 2_000_000);
    let b = batch("budget: {cost_usd: 100}", "", &units(1));
    assert_eq!(
        b.reservation(0),
        regatta_proto::batch_budget::micros(
            regatta_coordinator::scheduler::DEFAULT_RESERVATION_USD
        )
    );
}

#[test]
fn after_calibration_the_estimate_is_the_calibration_units_p90_cost() {
    let (mut fleet, id) = fleet_of(batch(
        "budget: {cost_usd: 1000}\ncalibration: 10\ncalibration_auto: 0.5",
        ", budget: {cost_usd: 5}",
        &format!(
            "{}  - {{id: capped, budget: {{cost_usd: 0.25}}}}\n",
            units(12)
        ),
    ));
    assert_eq!(publish(&mut fleet, &id).len(), 10);
    // While calibrating, the playbook's cap is the estimate.
    assert_eq!(fleet[&id].reservation(index(&fleet[&id], "u11")), 5_000_000);
    for i in 0..10 {
        // Costs $0.10 .. $1.00: the p90 by nearest rank is $0.90.
        run(
            &mut fleet,
            &id,
            &format!("u{i}"),
            Outcome::Succeeded,
            Some(0.1 * (i + 1) as f64),
        );
    }
    let b = &fleet[&id];
    assert_eq!(b.state, regatta_coordinator::scheduler::BatchState::Running);
    assert_eq!(b.reservation(index(b, "u11")), 900_000);
    // A unit's own cap still wins.
    assert_eq!(b.reservation(index(b, "capped")), 250_000);
}

#[test]
fn units_that_do_not_fit_wait_with_the_budget_shown_and_start_once_spend_settles() {
    let (mut fleet, id) = fleet_of(batch(
        "budget: {cost_usd: 3}\nconcurrency: 10",
        ", budget: {cost_usd: 1}",
        &units(6),
    ));
    assert_eq!(publish(&mut fleet, &id), ["u0", "u1", "u2"]);
    assert_eq!(fleet[&id].budget_spend(), spend(3.0, 0.0, 3.0));
    let waiting = fleet.waiting_for(&id, index(&fleet[&id], "u3"));
    assert_eq!(
        waiting.as_deref(),
        Some("batch budget: $3.00 reserved + $0.00 spent of $3.00")
    );
    // Each order carries the cap and its reservation.
    let order = work_order(&fleet[&id], 0, NOW);
    assert_eq!(
        order.batch_budget,
        Some(BudgetReservation {
            cap_micros: 3_000_000,
            reserve_micros: 1_000_000
        })
    );
    // The actual cost replaces the reservation: $2 reserved + $0.40 spent
    // leaves $0.60, less than a reservation.
    run(&mut fleet, &id, "u0", Outcome::Succeeded, Some(0.4));
    assert_eq!(fleet[&id].budget_spend(), spend(2.0, 0.4, 3.0));
    assert!(publish(&mut fleet, &id).is_empty());
    run(&mut fleet, &id, "u1", Outcome::Succeeded, Some(0.4));
    assert_eq!(publish(&mut fleet, &id), ["u3"]);
    assert_eq!(fleet[&id].budget_spend(), spend(2.0, 0.8, 3.0));
    // A lost session's reservation is spent whole: nothing is known of
    // what it cost before its worker died.
    send(&mut fleet, &id, "u2", started());
    send(&mut fleet, &id, "u2", finished(Outcome::Lost, None));
    assert_eq!(fleet[&id].budget_spend(), spend(1.0, 1.8, 3.0));
    // Its retry does not fit now: the rest waits.
    assert!(publish(&mut fleet, &id).is_empty());
    assert_eq!(fleet[&id].units[2].state, UnitState::Ready);
    let waiting = fleet.waiting_for(&id, index(&fleet[&id], "u2"));
    assert_eq!(
        waiting.as_deref(),
        Some("batch budget: $1.00 reserved + $1.80 spent of $3.00")
    );
}

#[test]
fn a_hand_back_gives_its_reservation_back_and_shows_redis_reason() {
    let (mut fleet, id) = fleet_of(batch(
        "budget: {cost_usd: 10}",
        ", budget: {cost_usd: 1}",
        &units(2),
    ));
    assert_eq!(publish(&mut fleet, &id).len(), 2);
    let reason = "batch budget: $9.50 reserved + $0.00 spent of $10.00";
    send(
        &mut fleet,
        &id,
        "u1",
        Report::Deferred {
            reason: reason.into(),
            received_at_ms: NOW,
        },
    );
    assert_eq!(fleet[&id].budget_spend(), spend(1.0, 0.0, 10.0));
    let waiting = fleet.waiting_for(&id, index(&fleet[&id], "u1"));
    assert_eq!(waiting.as_deref(), Some(reason));
}

#[test]
fn a_restarted_coordinator_rebuilds_the_ledger_from_the_records() {
    let (mut fleet, id) = fleet_of(batch(
        "budget: {cost_usd: 10}",
        ", budget: {cost_usd: 2}",
        &units(3),
    ));
    assert_eq!(publish(&mut fleet, &id).len(), 3);
    run(&mut fleet, &id, "u0", Outcome::Succeeded, Some(0.75));
    send(&mut fleet, &id, "u1", started());
    send(&mut fleet, &id, "u1", finished(Outcome::Lost, None));
    let before = fleet[&id].budget_spend();
    assert_eq!(before, spend(2.0, 2.75, 10.0));
    let b = &fleet[&id];
    let records: HashMap<_, _> = b.units.iter().map(|r| (r.id.clone(), r.clone())).collect();
    let dag = Dag::build(&b.manifest).expect("dag");
    let restored = Batch::restore(b.id.clone(), b.manifest.clone(), dag, b.state, records);
    assert_eq!(restored.budget_spend(), before);
}

#[test]
fn a_redis_that_lost_its_data_gets_running_reservations_back_as_spent() {
    let (mut fleet, id) = fleet_of(batch(
        "budget: {cost_usd: 10}",
        ", budget: {cost_usd: 2}",
        &units(3),
    ));
    assert_eq!(publish(&mut fleet, &id).len(), 3);
    run(&mut fleet, &id, "u0", Outcome::Succeeded, Some(0.5));
    send(&mut fleet, &id, "u1", started());
    // u1 runs (its lease is forgotten with the data), u2 is still queued.
    assert_eq!(fleet[&id].budget_spend(), spend(4.0, 0.5, 10.0));
    assert_eq!(fleet[&id].budget_after_loss(), spend(0.0, 2.5, 10.0));
}

#[test]
fn a_batch_without_a_budget_reserves_nothing() {
    let (mut fleet, id) = fleet_of(batch("concurrency: 3", "", &units(4)));
    assert_eq!(publish(&mut fleet, &id).len(), 3);
    assert_eq!(fleet[&id].budget_spend(), None);
    assert_eq!(work_order(&fleet[&id], 0, NOW).batch_budget, None);
    assert_eq!(fleet[&id].units[0].history[0].reserved_micros, None);
}

/// A session shorter than the worker's `--started-after` sends no
/// `started`: its `Finished` carries the start, and settles at its cost as
/// Redis does, not as an order refused before it ran.
#[test]
fn a_short_sessions_finished_alone_settles_at_its_cost() {
    let (mut fleet, id) = fleet_of(batch(
        "budget: {cost_usd: 3}\nconcurrency: 10",
        ", budget: {cost_usd: 1}",
        &units(2),
    ));
    assert_eq!(publish(&mut fleet, &id), ["u0", "u1"]);
    let Report::Finished(mut finish) = finished(Outcome::Succeeded, Some(0.4)) else {
        unreachable!("finished() builds a Finished")
    };
    finish.started_at_ms = Some(NOW + 1);
    finish.worker = Some("w".into());
    send(&mut fleet, &id, "u0", Report::Finished(finish));
    assert_eq!(fleet[&id].budget_spend(), spend(1.0, 0.4, 3.0));
}
