//! Git mode's part of the unit lifecycle (docs/git-mode.md): a unit whose
//! session succeeded waits to land; the merge train lands it, sends it back
//! to run again on the target's new tip, or hands it to a person.
//!
//! ```text
//! running --succeeded--> succeeded (waiting to land) --train--> landed
//! succeeded --branch no longer merges (once)--> ready (a rebase attempt)
//! succeeded --breaks integration, or does not merge twice--> needs_review
//! ```
//!
//! Dependents start only once a unit has landed, so no unit ever builds on
//! a change the train may still refuse.

use super::{Batch, Effects, UnitState};

impl Batch {
    /// Says whether the batch runs in git mode.
    pub fn git_mode(&self) -> bool {
        self.manifest.git.is_some()
    }

    /// Says whether `unit` no longer holds its dependents back: landed or
    /// skipped, or (outside git mode) succeeded.
    pub fn satisfies(&self, unit: usize) -> bool {
        match self.units[unit].state {
            UnitState::Succeeded => !self.git_mode(),
            UnitState::Landed | UnitState::Skipped => true,
            _ => false,
        }
    }

    /// The commit of the unit's latest attempt, if it made one.
    pub fn commit_of(&self, unit: usize) -> Option<&str> {
        let report = self.units[unit].current()?.git.as_ref()?;
        Some(report.commit.as_ref()?.commit.as_str())
    }

    /// The files in which the dependencies of the unit's latest attempt
    /// conflicted, if they did.
    pub(super) fn dependency_conflict(&self, unit: usize) -> Option<Vec<String>> {
        let report = self.units[unit].current()?.git.as_ref()?;
        report.conflict.clone()
    }

    /// Why a worker's report of a git-mode success cannot be landed: no
    /// git result (an old or forged worker), or a commit that is no object
    /// id (the train passes it to git). `None` when it can.
    pub(super) fn unusable_git_result(
        &self,
        outcome: regatta_proto::Outcome,
        git: Option<&regatta_proto::GitReport>,
    ) -> Option<String> {
        if !self.git_mode() || outcome != regatta_proto::Outcome::Succeeded {
            return None;
        }
        let Some(git) = git else {
            return Some("the worker reported a git-mode success without its git result".into());
        };
        match &git.commit {
            Some(commit) if !regatta_proto::git::is_object_id(&commit.commit) => Some(format!(
                "the worker reported a commit that is no object id: {:?}",
                commit.commit.chars().take(80).collect::<String>()
            )),
            _ => None,
        }
    }

    /// The train landed `unit`: its dependents may start.
    pub fn land(&mut self, unit: usize) -> Effects {
        let mut effects = Effects::default();
        if self.units[unit].state != UnitState::Succeeded {
            return effects;
        }
        self.set_state(unit, UnitState::Landed);
        self.units[unit].reason = None;
        self.units[unit].rebase_on = None;
        effects.changed.insert(unit);
        self.release_dependents(unit, &mut effects);
        self.update_batch_state();
        effects
    }

    /// The unit's branch no longer merges onto the target's tip: it runs
    /// once more on `tip` (not counted as a retry); a second time, a person
    /// decides. Returns whether it was sent back to run.
    pub fn rebase(&mut self, unit: usize, tip: &str, files: &[String]) -> (bool, Effects) {
        let mut effects = Effects::default();
        if self.units[unit].state != UnitState::Succeeded {
            return (false, effects);
        }
        effects.changed.insert(unit);
        let files = files.join(", ");
        if self.units[unit].rebases >= 1 {
            self.reject_into(
                unit,
                format!("its branch does not merge onto the target, even re-run on a newer tip: conflicts in {files}"),
                &mut effects,
            );
            return (false, effects);
        }
        let record = &mut self.units[unit];
        record.rebases += 1;
        record.rebase_on = Some(tip.to_owned());
        record.reason = Some(format!(
            "re-running on the target's tip: its branch conflicts there in {files}"
        ));
        self.set_state(unit, UnitState::Ready);
        self.update_batch_state();
        (true, effects)
    }

    /// The unit broke the integration tests (or cannot land): it needs a
    /// person, and its descendants wait for it.
    pub fn reject(&mut self, unit: usize, reason: String) -> Effects {
        let mut effects = Effects::default();
        if self.units[unit].state != UnitState::Succeeded {
            return effects;
        }
        effects.changed.insert(unit);
        self.reject_into(unit, reason, &mut effects);
        effects
    }

    fn reject_into(&mut self, unit: usize, reason: String, effects: &mut Effects) {
        self.units[unit].reason = Some(reason);
        self.set_state(unit, UnitState::NeedsReview);
        self.block_descendants(unit, effects);
        self.update_batch_state();
    }
}
