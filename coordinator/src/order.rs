//! Builds the work order of one unit attempt from the batch's manifest.

use regatta_proto::git::{unit_branch, GitSession};
use regatta_proto::{GateSpec, GitOrder, LeaseDemand, ResourceDemand, WorkOrder};

use crate::scheduler::Batch;

/// The order for the unit's current attempt.
pub fn work_order(batch: &Batch, unit: usize, now_ms: i64) -> WorkOrder {
    let manifest = &batch.manifest;
    let spec = &manifest.units[unit];
    let record = &batch.units[unit];
    let playbook = &manifest.playbook;
    // What runs is the manifest's to say: the order only carries it.
    let gates = manifest
        .gates_for(spec)
        .map(|gate| GateSpec {
            name: gate.name.clone(),
            run: gate.run.clone(),
            fix: gate.fix.clone(),
            timeout_ms: gate.timeout.map(|t| t.as_millis() as u64),
            required: gate.required,
            repairs: gate.repair_limit(),
        })
        .collect();
    let resources = batch
        .demand(unit)
        .iter()
        .map(|(name, weight)| ResourceDemand {
            name: name.clone(),
            weight: *weight,
            capacity: batch.capacity(name),
        })
        .collect();
    WorkOrder {
        batch_id: batch.id.clone(),
        unit_id: spec.id.clone(),
        attempt: record.attempt,
        session_id: record
            .current()
            .map(|a| a.session_id.clone())
            .unwrap_or_default(),
        playbook: playbook.name.clone(),
        task: spec.task.clone(),
        run: manifest.effective_run(spec).to_owned(),
        workdir: manifest.workdir.display().to_string(),
        env: manifest.effective_env(spec),
        inputs: spec.inputs.clone(),
        outputs: spec.outputs.clone(),
        timeout_ms: manifest.effective_timeout(spec).as_millis() as u64,
        gates,
        leases: LeaseDemand {
            concurrency: manifest.concurrency,
            resources,
        },
        published_at_ms: now_ms,
        git: git_order(batch, unit),
        agent: manifest.agent_order(spec),
        batch_budget: batch_budget(batch, unit),
    }
}

/// The batch budget's cap and the reservation the dispatch recorded for
/// the unit's current attempt (contract 9, docs/contracts.md).
fn batch_budget(batch: &Batch, unit: usize) -> Option<regatta_proto::BudgetReservation> {
    let spend = batch.budget_spend()?;
    let reserve_micros = batch.units[unit].current()?.reserved_micros?;
    Some(regatta_proto::BudgetReservation {
        cap_micros: spend.cap_micros,
        reserve_micros,
    })
}

/// Git mode: the repository part of a unit's order (docs/git-mode.md). A
/// first run starts at the pinned base with its landed dependencies'
/// commits merged in; a rebase starts at the tip its branch failed to merge
/// onto, which holds those already.
fn git_order(batch: &Batch, unit: usize) -> Option<GitOrder> {
    let git = batch.manifest.git.as_ref()?;
    let spec = &batch.manifest.units[unit];
    let record = &batch.units[unit];
    let target = format!("refs/heads/{}", git.target);
    let (session, base, dependencies) = match &record.rebase_on {
        Some(tip) => (GitSession::Rebase, tip.clone(), Vec::new()),
        None => {
            let dependencies = batch
                .dag
                .dependencies(unit)
                // Only what landed: a skipped dependency's commit (or a
                // failed one's) never reaches the target through its dependents.
                .filter(|&dep| batch.units[dep].state == crate::scheduler::UnitState::Landed)
                .filter_map(|dep| {
                    let commit = batch.commit_of(dep)?;
                    Some((batch.units[dep].id.clone(), commit.to_owned()))
                })
                .collect();
            (
                GitSession::Unit,
                batch.git_base.clone().unwrap_or_else(|| git.base.clone()),
                dependencies,
            )
        }
    };
    let writes = git
        .strict_writes
        .then(|| spec.touches.iter().chain(&spec.outputs).cloned().collect());
    Some(GitOrder {
        repo: git.repo.clone(),
        session,
        base,
        // The target holds every landed commit, the base and the tips a
        // rebase starts from.
        fetch: vec![target],
        dependencies,
        branch: Some(unit_branch(&batch.id, &spec.id)),
        writes,
    })
}
