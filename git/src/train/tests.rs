use super::*;

/// `n` units, none depending on another.
fn independent(n: usize) -> Vec<(UnitIx, Vec<UnitIx>)> {
    (0..n).map(|i| (i, Vec::new())).collect()
}

/// `n` units, each depending on the one before.
fn chain(n: usize) -> Vec<(UnitIx, Vec<UnitIx>)> {
    (0..n)
        .map(|i| (i, if i == 0 { Vec::new() } else { vec![i - 1] }))
        .collect()
}

fn commit_of(unit: UnitIx) -> String {
    format!("u{unit}")
}

fn offer_all(train: &mut Train, units: impl IntoIterator<Item = UnitIx>) {
    for unit in units {
        train.offer(unit, Some(commit_of(unit)));
    }
}

fn ixs(planned: &Planned) -> Vec<UnitIx> {
    planned.units.iter().map(|(u, _)| *u).collect()
}

/// Builds, passes and lands candidate `id` on `tip`; returns the landing.
fn pass_and_land(train: &mut Train, id: u64, tip: &str) -> Landing {
    train.built(id, tip.to_owned(), format!("c{id}"));
    train.passed(id, format!("s{id}"));
    train.landed(id)
}

fn build_and_fail(train: &mut Train, id: u64, tip: &str) -> Verdict {
    train.built(id, tip.to_owned(), format!("c{id}"));
    train.failed(id, format!("s{id}"), "red".to_owned())
}

/// Transitive descendants of `roots` (and the roots).
fn closure(units: &[(UnitIx, Vec<UnitIx>)], roots: &[UnitIx]) -> Vec<UnitIx> {
    let mut out: Vec<UnitIx> = roots.to_vec();
    for (unit, deps) in units {
        if deps.iter().any(|d| out.contains(d)) && !out.contains(unit) {
            out.push(*unit);
        }
    }
    out
}

/// A coordinator stand-in: builds every candidate on the simulated target,
/// runs a simulated integration (it fails iff the candidate holds a broken
/// unit), moves the target by compare-and-swap and checks the invariants.
struct Sim {
    train: Train,
    dag: Vec<(UnitIx, Vec<UnitIx>)>,
    broken: Vec<UnitIx>,
    /// Candidate ids whose compare-and-swap an outsider wins.
    race_at: Vec<u64>,
    /// Candidate ids whose build conflicts on their last unit.
    conflict_at: Vec<u64>,
    /// Serialise and restore the train after every call, as a coordinator
    /// killed between calls would.
    crash_every_call: bool,
    tip: String,
    /// Every commit this driver moved the target to.
    target_log: Vec<String>,
    runs: usize,
    culprits: Vec<UnitIx>,
    calls: usize,
}

impl Sim {
    fn new(window: u32, dag: Vec<(UnitIx, Vec<UnitIx>)>, broken: Vec<UnitIx>) -> Sim {
        Sim {
            train: Train::new(window, dag.clone()),
            dag,
            broken,
            race_at: Vec::new(),
            conflict_at: Vec::new(),
            crash_every_call: false,
            tip: "t0".to_owned(),
            target_log: Vec::new(),
            runs: 0,
            culprits: Vec::new(),
            calls: 0,
        }
    }

    fn crash(&mut self) {
        self.calls += 1;
        if self.crash_every_call {
            let stored = serde_json::to_string(&self.train).unwrap();
            let resumed: Train = serde_json::from_str(&stored).unwrap();
            assert_eq!(resumed, self.train);
            self.train = resumed;
        }
    }

    fn offer_all(&mut self) {
        for (unit, _) in self.dag.clone() {
            self.train.offer(unit, Some(commit_of(unit)));
            self.crash();
        }
    }

    /// One candidate from plan to its end; false when nothing is eligible.
    fn step(&mut self) -> bool {
        let Some(planned) = self.train.next_candidate() else {
            return false;
        };
        self.crash();
        let id = planned.id;
        let units = ixs(&planned);
        if self.conflict_at.contains(&id) {
            let unit = *units.last().unwrap();
            self.train.conflicted(id, unit, vec!["a.txt".to_owned()]);
            self.crash();
            // The coordinator re-runs it on the new tip and offers it again.
            self.train
                .offer(unit, Some(format!("{}-rebased", commit_of(unit))));
            self.crash();
            return true;
        }
        let commit = format!("c{id}");
        self.train.built(id, self.tip.clone(), commit.clone());
        self.crash();
        self.train.testing(id, format!("s{id}"));
        self.crash();
        self.runs += 1;
        if units.iter().any(|u| self.broken.contains(u)) {
            let verdict = self.train.failed(id, format!("s{id}"), "red".to_owned());
            self.crash();
            match verdict {
                Verdict::Culprit(unit) => self.culprits.push(unit),
                Verdict::Bisecting => {}
                Verdict::Stale => panic!("candidate {id} was in flight"),
            }
            return true;
        }
        self.train.passed(id, format!("s{id}"));
        self.crash();
        if self.race_at.contains(&id) {
            self.tip = format!("outside-{id}");
            self.train.raced(id, Some(self.tip.clone()));
            self.crash();
            return true;
        }
        let record = self.train.in_flight().unwrap().clone();
        assert_eq!(
            record.state,
            CandidateState::Passed,
            "CAS only a passed candidate"
        );
        assert_eq!(
            record.tip.as_deref(),
            Some(self.tip.as_str()),
            "CAS from the built tip"
        );
        self.tip = commit.clone();
        self.target_log.push(commit);
        let landing = self.train.landed(id);
        self.crash();
        assert!(landing.units.starts_with(&units));
        if let Some(unit) = landing.culprit {
            self.culprits.push(unit);
        }
        true
    }

    fn run(&mut self) {
        let mut guard = 0;
        while self.step() {
            guard += 1;
            assert!(guard < 500, "the train does not converge");
        }
    }

    /// The invariants of issue 13, checked on the finished run.
    fn check(&self) {
        let landed = self.train.landed_units();
        for (i, unit) in landed.iter().enumerate() {
            assert!(!landed[..i].contains(unit), "{unit} landed twice");
            let deps = &self.dag.iter().find(|(u, _)| u == unit).unwrap().1;
            for dep in deps {
                assert!(
                    landed[..i].contains(dep),
                    "{unit} landed before its dep {dep}"
                );
            }
            assert!(!self.broken.contains(unit), "broken unit {unit} landed");
        }
        for commit in &self.target_log {
            let record = self
                .train
                .history()
                .iter()
                .find(|r| r.commit.as_ref() == Some(commit))
                .unwrap();
            assert_eq!(record.state, CandidateState::Landed);
            assert!(record.integration_session.is_some());
        }
        let doomed = closure(&self.dag, &self.broken);
        for (unit, _) in &self.dag {
            assert_eq!(
                landed.contains(unit),
                !doomed.contains(unit),
                "unit {unit}: innocents land, the broken and their descendants do not"
            );
        }
        let mut culprits = self.culprits.clone();
        culprits.sort();
        assert_eq!(culprits, self.train.culprits());
        assert!(self.train.in_flight().is_none());
    }
}

#[test]
fn window_grows_after_landings_and_halves_after_failures() {
    let mut train = Train::new(4, independent(40));
    offer_all(&mut train, 0..40);
    let first = train.next_candidate().unwrap();
    assert_eq!(ixs(&first), vec![0, 1, 2, 3]);
    pass_and_land(&mut train, first.id, "t0");
    assert_eq!(train.window(), 5);
    let second = train.next_candidate().unwrap();
    assert_eq!(second.units.len(), 5);
    pass_and_land(&mut train, second.id, "c1");
    assert_eq!(train.window(), 6);
    let third = train.next_candidate().unwrap();
    assert_eq!(
        build_and_fail(&mut train, third.id, "c2"),
        Verdict::Bisecting
    );
    assert_eq!(train.window(), 3);
    // Bisection candidates are halves of the range, not windows.
    let half = train.next_candidate().unwrap();
    assert_eq!(half.units.len(), 3);
    assert!(half_is_prefix(&half, &third));
    build_and_fail(&mut train, half.id, "c2");
    assert_eq!(train.window(), 1);
    let quarter = train.next_candidate().unwrap();
    assert_eq!(quarter.units.len(), 2);
    build_and_fail(&mut train, quarter.id, "c2");
    assert_eq!(train.window(), 1, "never below 1");
    // A landing inside a bisection leaves the window alone.
    let one = train.next_candidate().unwrap();
    assert_eq!(one.units.len(), 1);
    let landing = pass_and_land(&mut train, one.id, "c2");
    assert_eq!(train.window(), 1);
    assert_eq!(landing.culprit, Some(ixs(&quarter)[1]));
}

fn half_is_prefix(half: &Planned, whole: &Planned) -> bool {
    whole.units.starts_with(&half.units)
}

#[test]
fn a_zero_window_counts_as_one() {
    let mut train = Train::new(0, independent(3));
    offer_all(&mut train, 0..3);
    assert_eq!(train.window(), 1);
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![0]);
}

#[test]
fn a_chain_lands_in_order_across_candidates() {
    let mut train = Train::new(1, chain(3));
    offer_all(&mut train, [2, 1, 0]);
    let first = train.next_candidate().unwrap();
    assert_eq!(ixs(&first), vec![0]);
    assert_eq!(pass_and_land(&mut train, first.id, "t0").units, vec![0]);
    // The window grew to 2: the rest of the chain fits in one candidate.
    let second = train.next_candidate().unwrap();
    assert_eq!(ixs(&second), vec![1, 2]);
    assert_eq!(pass_and_land(&mut train, second.id, "c1").units, vec![1, 2]);
    assert_eq!(train.landed_units(), &[0, 1, 2]);
    assert!(train.next_candidate().is_none());
    assert!(train.is_done(3));
}

#[test]
fn a_dependency_may_be_earlier_in_the_same_candidate() {
    let mut train = Train::new(4, chain(3));
    offer_all(&mut train, 0..3);
    let planned = train.next_candidate().unwrap();
    assert_eq!(
        planned.units,
        vec![
            (0, "u0".to_owned()),
            (1, "u1".to_owned()),
            (2, "u2".to_owned())
        ]
    );
}

#[test]
fn a_unit_waits_for_a_dependency_not_on_offer() {
    // 0 <- 1, 2 independent; only 1 and 2 offered.
    let mut train = Train::new(4, vec![(0, vec![]), (1, vec![0]), (2, vec![])]);
    offer_all(&mut train, [1, 2]);
    let planned = train.next_candidate().unwrap();
    assert_eq!(ixs(&planned), vec![2]);
    pass_and_land(&mut train, planned.id, "t0");
    assert!(train.next_candidate().is_none());
    assert_eq!(train.waiting(), vec![1]);
    assert!(!train.is_done(3));
    train.offer(0, Some(commit_of(0)));
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![0, 1]);
}

#[test]
fn dependencies_outside_the_batch_count_as_landed() {
    let mut train = Train::new(2, vec![(3, vec![99]), (4, vec![3])]);
    offer_all(&mut train, [3, 4]);
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![3, 4]);
}

#[test]
fn nothing_is_planned_while_a_candidate_is_in_flight() {
    let mut train = Train::new(1, independent(2));
    offer_all(&mut train, 0..2);
    let first = train.next_candidate().unwrap();
    assert_eq!(first.id, 1);
    assert!(train.next_candidate().is_none());
    assert_eq!(train.in_flight().unwrap().id, 1);
    pass_and_land(&mut train, first.id, "t0");
    assert_eq!(train.next_candidate().unwrap().id, 2);
}

#[test]
fn a_unit_that_changed_nothing_lands_without_a_candidate() {
    let mut train = Train::new(4, vec![(0, vec![]), (1, vec![]), (2, vec![1])]);
    assert_eq!(train.offer(1, None), vec![1]);
    let record = train.history().last().unwrap();
    assert_eq!(record.state, CandidateState::Unchanged { unit: 1 });
    assert!(record.units.is_empty() && record.commit.is_none());
    assert_eq!(train.landed_units(), &[1]);
    // Its descendant is eligible at once.
    train.offer(2, Some(commit_of(2)));
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![2]);
}

#[test]
fn an_unchanged_unit_waits_for_its_dependencies_then_lands_with_them() {
    let mut train = Train::new(4, vec![(0, vec![]), (1, vec![0]), (2, vec![1])]);
    assert!(train.offer(1, None).is_empty());
    train.offer(2, Some(commit_of(2)));
    assert!(
        train.next_candidate().is_none(),
        "2 waits for 1, which waits for 0"
    );
    train.offer(0, Some(commit_of(0)));
    let planned = train.next_candidate().unwrap();
    assert_eq!(ixs(&planned), vec![0], "an unchanged unit is never merged");
    let landing = pass_and_land(&mut train, planned.id, "t0");
    assert_eq!(landing.units, vec![0, 1]);
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![2]);
}

#[test]
fn a_skipped_unit_counts_as_landed_for_its_descendants() {
    let mut train = Train::new(4, vec![(0, vec![]), (1, vec![0]), (2, vec![0])]);
    train.offer(1, Some(commit_of(1)));
    train.offer(2, None);
    assert!(train.next_candidate().is_none());
    assert_eq!(train.skip(0), vec![2]);
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![1]);
    assert!(!train.landed_units().contains(&0), "skipped is not landed");
    // Offering a skipped unit later changes nothing.
    assert!(train.offer(0, Some(commit_of(0))).is_empty());
    assert!(!train.waiting().contains(&0));
}

#[test]
fn skipping_a_unit_in_flight_abandons_its_candidate() {
    let mut train = Train::new(4, independent(2));
    offer_all(&mut train, 0..2);
    let planned = train.next_candidate().unwrap();
    train.skip(1);
    assert!(train.in_flight().is_none());
    assert_eq!(
        train.history()[0].state,
        CandidateState::Abandoned { unit: 1 }
    );
    let next = train.next_candidate().unwrap();
    assert_eq!((next.id, ixs(&next)), (planned.id + 1, vec![0]));
}

#[test]
fn withdrawing_a_unit_in_flight_abandons_the_candidate_and_stale_results_are_ignored() {
    let mut train = Train::new(4, independent(3));
    offer_all(&mut train, 0..3);
    let planned = train.next_candidate().unwrap();
    train.built(planned.id, "t0".to_owned(), "c1".to_owned());
    train.withdraw(1);
    assert!(train.in_flight().is_none());
    assert_eq!(
        train.history()[0].state,
        CandidateState::Abandoned { unit: 1 }
    );
    // The integration result of the abandoned candidate arrives late.
    train.passed(planned.id, "s1".to_owned());
    assert_eq!(train.landed(planned.id), Landing::default());
    assert_eq!(
        train.failed(planned.id, "s1".to_owned(), "red".to_owned()),
        Verdict::Stale
    );
    assert!(train.landed_units().is_empty());
    let next = train.next_candidate().unwrap();
    assert_eq!(ixs(&next), vec![0, 2]);
    assert_eq!(train.waiting(), vec![0, 2]);
}

#[test]
fn withdrawing_a_unit_not_in_flight_keeps_the_candidate() {
    let mut train = Train::new(1, independent(2));
    offer_all(&mut train, 0..2);
    let planned = train.next_candidate().unwrap();
    train.withdraw(1);
    assert_eq!(train.in_flight().unwrap().id, planned.id);
    assert_eq!(pass_and_land(&mut train, planned.id, "t0").units, vec![0]);
    assert!(train.next_candidate().is_none());
    assert!(train.is_done(1));
}

#[test]
fn a_new_commit_abandons_the_candidate_holding_the_old_one_and_a_replay_does_not() {
    let mut train = Train::new(4, independent(2));
    offer_all(&mut train, 0..2);
    let planned = train.next_candidate().unwrap();
    train.offer(0, Some(commit_of(0)));
    assert_eq!(
        train.in_flight().unwrap().id,
        planned.id,
        "same offer again"
    );
    train.offer(0, Some("u0-v2".to_owned()));
    assert!(train.in_flight().is_none());
    let next = train.next_candidate().unwrap();
    assert_eq!(next.units[0], (0, "u0-v2".to_owned()));
}

#[test]
fn a_conflict_drops_the_candidate_and_withdraws_the_unit() {
    let mut train = Train::new(4, vec![(0, vec![]), (1, vec![]), (2, vec![1]), (3, vec![])]);
    offer_all(&mut train, 0..4);
    let planned = train.next_candidate().unwrap();
    train.conflicted(planned.id, 1, vec!["src/a.rs".to_owned()]);
    assert!(train.in_flight().is_none());
    assert_eq!(
        train.history()[0].state,
        CandidateState::Conflicted {
            unit: 1,
            files: vec!["src/a.rs".to_owned()]
        }
    );
    assert_eq!(train.waiting(), vec![0, 2, 3]);
    // 2 depends on the withdrawn unit: it waits.
    let next = train.next_candidate().unwrap();
    assert_eq!(ixs(&next), vec![0, 3]);
    pass_and_land(&mut train, next.id, "t0");
    train.offer(1, Some("u1-rebased".to_owned()));
    assert_eq!(
        train.next_candidate().unwrap().units,
        vec![(1, "u1-rebased".to_owned()), (2, "u2".to_owned())]
    );
}

#[test]
fn a_lost_race_plans_the_same_units_again() {
    let mut train = Train::new(2, independent(4));
    offer_all(&mut train, [2, 3]);
    let planned = train.next_candidate().unwrap();
    train.built(planned.id, "t0".to_owned(), "c1".to_owned());
    train.passed(planned.id, "s1".to_owned());
    train.raced(planned.id, Some("t1".to_owned()));
    assert_eq!(
        train.history()[0].state,
        CandidateState::Raced {
            actual: Some("t1".to_owned())
        }
    );
    assert_eq!(train.window(), 2, "a race is no verdict");
    // A unit earlier in the order arrives meanwhile: the raced units still go first.
    offer_all(&mut train, [0]);
    let again = train.next_candidate().unwrap();
    assert_eq!(again.units, planned.units);
    assert_eq!(again.id, planned.id + 1);
    let landing = pass_and_land(&mut train, again.id, "t1");
    assert_eq!(landing.units, vec![2, 3]);
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![0]);
}

#[test]
fn a_race_during_a_bisection_restarts_from_the_whole_range() {
    let mut train = Train::new(4, independent(4));
    offer_all(&mut train, 0..4);
    let whole = train.next_candidate().unwrap();
    assert_eq!(
        build_and_fail(&mut train, whole.id, "t0"),
        Verdict::Bisecting
    );
    let half = train.next_candidate().unwrap();
    assert!(train.in_flight().unwrap().bisecting);
    train.built(half.id, "t0".to_owned(), "c2".to_owned());
    train.passed(half.id, "s2".to_owned());
    train.raced(half.id, Some("t1".to_owned()));
    assert_eq!(train.suspects(), None);
    let again = train.next_candidate().unwrap();
    assert_eq!(again.units, whole.units);
    assert!(!train.in_flight().unwrap().bisecting);
}

#[test]
fn rebuild_keeps_the_plan_and_forgets_the_build() {
    let mut train = Train::new(2, independent(2));
    offer_all(&mut train, 0..2);
    let planned = train.next_candidate().unwrap();
    train.built(planned.id, "t0".to_owned(), "c1".to_owned());
    train.testing(planned.id, "s1".to_owned());
    assert_eq!(train.in_flight().unwrap().state, CandidateState::Testing);
    train.rebuild(planned.id);
    let record = train.in_flight().unwrap();
    assert_eq!(record.state, CandidateState::Planned);
    assert_eq!((record.tip.clone(), record.commit.clone()), (None, None));
    assert_eq!(record.integration_session, None);
    assert_eq!(record.units, planned.units);
    // A result before the new build is ignored.
    train.passed(planned.id, "s1".to_owned());
    assert_eq!(train.in_flight().unwrap().state, CandidateState::Planned);
    assert_eq!(
        pass_and_land(&mut train, planned.id, "t1").units,
        vec![0, 1]
    );
}

#[test]
fn landing_needs_a_pass() {
    let mut train = Train::new(1, independent(1));
    offer_all(&mut train, 0..1);
    let planned = train.next_candidate().unwrap();
    train.built(planned.id, "t0".to_owned(), "c1".to_owned());
    assert_eq!(train.landed(planned.id), Landing::default());
    assert!(train.landed_units().is_empty());
    train.passed(planned.id, "s1".to_owned());
    assert_eq!(train.landed(planned.id).units, vec![0]);
    assert_eq!(train.landed(planned.id), Landing::default(), "lands once");
    assert_eq!(train.landed_units(), &[0]);
}

#[test]
fn a_one_unit_failure_names_its_culprit_and_its_descendants_wait() {
    let mut train = Train::new(1, vec![(0, vec![]), (1, vec![0]), (2, vec![])]);
    offer_all(&mut train, 0..3);
    let planned = train.next_candidate().unwrap();
    assert_eq!(
        build_and_fail(&mut train, planned.id, "t0"),
        Verdict::Culprit(0)
    );
    assert_eq!(train.culprits(), vec![0]);
    assert_eq!(ixs(&train.next_candidate().unwrap()), vec![2]);
    // Retried and offered again, it is eligible again.
    train.offer(0, Some("u0-fixed".to_owned()));
    assert!(train.culprits().is_empty());
}

#[test]
fn a_prefix_built_on_another_tip_does_not_convict_the_rest() {
    let mut train = Train::new(2, independent(2));
    offer_all(&mut train, 0..2);
    let whole = train.next_candidate().unwrap();
    assert_eq!(
        build_and_fail(&mut train, whole.id, "t0"),
        Verdict::Bisecting
    );
    let half = train.next_candidate().unwrap();
    assert_eq!(ixs(&half), vec![0]);
    // The target moved before the prefix was built.
    let landing = pass_and_land(&mut train, half.id, "t1");
    assert_eq!(landing.culprit, None);
    assert!(train.culprits().is_empty());
    let rest = train.next_candidate().unwrap();
    assert_eq!(ixs(&rest), vec![1]);
    assert!(!train.in_flight().unwrap().bisecting);
}

#[test]
fn withdrawing_a_suspect_ends_the_bisection() {
    let mut train = Train::new(4, independent(4));
    offer_all(&mut train, 0..4);
    let whole = train.next_candidate().unwrap();
    build_and_fail(&mut train, whole.id, "t0");
    assert_eq!(train.suspects(), Some(&[0, 1, 2, 3][..]));
    train.withdraw(3);
    assert_eq!(train.suspects(), None);
    let next = train.next_candidate().unwrap();
    assert_eq!(ixs(&next), vec![0, 1], "the pool, by the halved window");
}

/// Runs until the culprit is known; returns the integration runs it took.
fn runs_to_find(dag: Vec<(UnitIx, Vec<UnitIx>)>, culprit: UnitIx) -> (usize, Sim) {
    let n = dag.len();
    let mut sim = Sim::new(n as u32, dag, vec![culprit]);
    sim.offer_all();
    while sim.culprits.is_empty() {
        assert!(sim.step(), "stopped before finding the culprit");
    }
    let runs = sim.runs;
    sim.run();
    (runs, sim)
}

#[test]
fn bisection_finds_every_culprit_within_log2_runs_plus_one() {
    for n in 1..=8usize {
        let bound = (n as f64).log2().ceil() as usize + 1;
        for culprit in 0..n {
            for dag in [independent(n), chain(n)] {
                let (runs, sim) = runs_to_find(dag, culprit);
                assert_eq!(sim.culprits, vec![culprit], "n={n} culprit={culprit}");
                assert!(
                    runs <= bound,
                    "n={n} culprit={culprit}: {runs} runs > {bound}"
                );
                sim.check();
            }
        }
    }
}

#[test]
fn two_culprits_are_both_found_and_the_innocents_land() {
    let mut sim = Sim::new(8, independent(8), vec![2, 5]);
    sim.offer_all();
    sim.run();
    sim.check();
    assert_eq!(sim.train.landed_units().len(), 6);
    let mut culprits = sim.culprits.clone();
    culprits.sort();
    assert_eq!(culprits, vec![2, 5]);
}

#[test]
fn descendants_of_a_culprit_wait_while_innocents_land() {
    // 0 <- 1 <- 2, 3 and 4 independent, 5 depends on 3.
    let dag = vec![
        (0, vec![]),
        (1, vec![0]),
        (2, vec![1]),
        (3, vec![]),
        (4, vec![]),
        (5, vec![3]),
    ];
    let mut sim = Sim::new(6, dag, vec![1]);
    sim.offer_all();
    sim.run();
    sim.check();
    assert_eq!(sim.culprits, vec![1]);
    assert!(!sim.train.landed_units().contains(&2));
    assert_eq!(sim.train.waiting(), vec![2]);
    assert!(!sim.train.is_done(6));
    // The culprit is fixed and offered again: it and its descendant land.
    sim.broken.clear();
    sim.culprits.clear();
    sim.train.offer(1, Some("u1-fixed".to_owned()));
    sim.run();
    sim.check();
    assert!(sim.train.is_done(6));
}

#[test]
fn every_stored_state_resumes_with_the_same_continuation() {
    let build = |crash| {
        let mut sim = Sim::new(
            3,
            chain(3)
                .into_iter()
                .chain(independent(9).into_iter().skip(3))
                .collect(),
            vec![4, 7],
        );
        sim.race_at = vec![2];
        sim.conflict_at = vec![5];
        sim.crash_every_call = crash;
        sim.offer_all();
        sim.run();
        sim
    };
    let straight = build(false);
    let crashing = build(true);
    straight.check();
    crashing.check();
    assert!(crashing.calls > 20);
    assert_eq!(straight.train, crashing.train);
    assert_eq!(straight.target_log, crashing.target_log);
}

#[test]
fn a_run_resumed_from_any_step_ends_the_same() {
    let dag: Vec<_> = independent(7);
    let mut reference = Sim::new(4, dag.clone(), vec![3]);
    reference.race_at = vec![1];
    reference.offer_all();
    let mut snapshots = vec![serde_json::to_string(&reference.train).unwrap()];
    let mut tips = vec![reference.tip.clone()];
    while reference.step() {
        snapshots.push(serde_json::to_string(&reference.train).unwrap());
        tips.push(reference.tip.clone());
    }
    reference.check();
    for (stored, tip) in snapshots.iter().zip(tips) {
        let mut resumed = Sim::new(4, dag.clone(), vec![3]);
        resumed.race_at = vec![1];
        resumed.train = serde_json::from_str(stored).unwrap();
        resumed.tip = tip;
        resumed.run();
        assert_eq!(resumed.train, reference.train);
    }
}

/// A small deterministic generator, so the property runs need no crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_batches_keep_the_invariants() {
    let mut rng = XorShift(0x5eed_cafe_f00d);
    for _ in 0..300 {
        let n = 1 + rng.below(12) as usize;
        let dag: Vec<(UnitIx, Vec<UnitIx>)> = (0..n)
            .map(|i| (i, (0..i).filter(|_| rng.below(4) == 0).collect()))
            .collect();
        let broken: Vec<UnitIx> = (0..n).filter(|_| rng.below(5) == 0).collect();
        let mut sim = Sim::new(1 + rng.below(6) as u32, dag.clone(), broken);
        sim.race_at = (1..30).filter(|_| rng.below(6) == 0).collect();
        sim.conflict_at = (1..30).filter(|_| rng.below(8) == 0).collect();
        sim.crash_every_call = rng.below(2) == 0;
        // Offer in a shuffled order, some changing nothing.
        let mut order: Vec<UnitIx> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let unchanged: Vec<UnitIx> = (0..n)
            .filter(|u| !sim.broken.contains(u) && rng.below(6) == 0)
            .collect();
        for unit in order {
            let commit = (!unchanged.contains(&unit)).then(|| commit_of(unit));
            sim.train.offer(unit, commit);
            sim.crash();
            if rng.below(3) == 0 {
                sim.step();
            }
        }
        sim.run();
        sim.check();
        let doomed = closure(&dag, &sim.broken);
        assert_eq!(sim.train.is_done(n), doomed.is_empty());
    }
}
