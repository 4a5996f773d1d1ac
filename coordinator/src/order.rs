//! Builds the work order of one unit attempt from the batch's manifest.

use regatta_proto::{GateSpec, LeaseDemand, ResourceDemand, WorkOrder};

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
    }
}
