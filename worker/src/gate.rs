//! Verification gates: after the session's command succeeds, each gate runs
//! in order; a failing gate with a `fix` is repaired and re-run, up to its
//! repair budget, then escalates.

use std::time::{Duration, Instant};

use regatta_proto::{GateReport, GateSpec};
use tracing::Instrument;

use crate::command::{run_command, CommandSpec, Ending, Stop};
use crate::Error;

/// What the gates concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct GateVerdict {
    pub reports: Vec<GateReport>,
    /// Why the session fails, when a required gate could not be repaired.
    pub escalation: Option<String>,
    /// The gates were interrupted by `stop`.
    pub stopped: bool,
}

/// Runs the gates in order; stops at the first required gate that escalates.
pub async fn run_gates(
    gates: &[GateSpec],
    base: &CommandSpec,
    stop: &Stop,
) -> Result<GateVerdict, Error> {
    let mut reports = Vec::with_capacity(gates.len());
    for gate in gates {
        let span = tracing::info_span!(
            "gate",
            gate = %gate.name,
            gate.required = gate.required,
            gate.repairs = tracing::field::Empty,
            gate.passed = tracing::field::Empty,
        );
        let Some(report) = run_gate(gate, base, stop).instrument(span.clone()).await? else {
            return Ok(GateVerdict {
                reports,
                escalation: None,
                stopped: true,
            });
        };
        span.record("gate.repairs", i64::from(report.repairs));
        span.record("gate.passed", report.passed);
        let passed = report.passed;
        let escalate = !passed && report.required;
        let repairs = report.repairs;
        reports.push(report);
        if escalate {
            let reason = format!("gate {} failed after {repairs} repairs", gate.name);
            // The escalation is the gate's error: a person must look.
            regatta_telemetry::status::failed(&span, "gate.escalated", &reason);
            return Ok(GateVerdict {
                reports,
                escalation: Some(reason),
                stopped: false,
            });
        }
        if passed {
            regatta_telemetry::status::succeeded(&span);
        } else {
            // An optional gate that failed does not fail the session, but
            // it is still a failed gate.
            let reason = format!("optional gate {} failed after {repairs} repairs", gate.name);
            regatta_telemetry::status::failed(&span, "gate.failed", &reason);
        }
    }
    Ok(GateVerdict {
        reports,
        escalation: None,
        stopped: false,
    })
}

/// Runs one gate with its repairs; `None` when `stop` interrupted it.
async fn run_gate(
    gate: &GateSpec,
    base: &CommandSpec,
    stop: &Stop,
) -> Result<Option<GateReport>, Error> {
    let started = Instant::now();
    let spec = |command: &str| CommandSpec {
        command: command.to_owned(),
        timeout: gate
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(base.timeout),
        // Gates and repairs are the fleet's checks, not the agent's spend.
        meter: None,
        ..base.clone()
    };
    let mut repairs = 0;
    let passed = loop {
        match run_command(&spec(&gate.run), stop).await?.0 {
            Ending::Exited(0) => break true,
            Ending::Stopped | Ending::Abandoned | Ending::SupervisorLost => return Ok(None),
            Ending::Exited(_) | Ending::TimedOut | Ending::OverBudget => {}
        }
        let Some(fix) = gate.fix.as_deref() else {
            break false;
        };
        if repairs >= gate.repairs {
            break false;
        }
        repairs += 1;
        tracing::info!(gate = %gate.name, repairs = i64::from(repairs), "gate failed; running its fix");
        let fix_spec = spec(fix);
        // `repair.number`, not `attempt`: that is the unit's attempt.
        let repair = run_command(&fix_spec, stop).instrument(tracing::info_span!(
            "repair",
            gate = %gate.name,
            repair.number = i64::from(repairs),
            repair.of = i64::from(gate.repairs),
        ));
        if matches!(
            repair.await?.0,
            Ending::Stopped | Ending::Abandoned | Ending::SupervisorLost
        ) {
            return Ok(None);
        }
    };
    Ok(Some(GateReport {
        name: gate.name.clone(),
        passed,
        required: gate.required,
        repairs,
        duration_ms: started.elapsed().as_millis() as u64,
    }))
}
