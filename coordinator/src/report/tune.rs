//! The tuned playbook: concrete changes computed from the figures, as a
//! YAML snippet with the reason for each line beside it.

use serde::Serialize;

use super::cluster::Cluster;
use super::stats::Stats;
use super::{quantile, Input};

/// A cluster this large (in units) is worth a fix in the playbook.
const CLUSTER_WORTH_A_FIX: usize = 2;
/// A gate that needs repairs in this share of its sessions should be folded
/// into the command.
const REPAIR_SHARE: f64 = 0.1;

/// The suggestions, and the snippet that applies them.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Suggestions {
    pub items: Vec<Suggestion>,
    /// YAML to paste into the manifest or playbook, each line commented.
    pub yaml: String,
}

/// One change and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Suggestion {
    /// The manifest key it changes (`timeout`, `concurrency`, `units.<id>.touches`,
    /// `gates.<name>`, `cluster`), or what it is about.
    pub key: String,
    /// The value to set, when there is one.
    pub value: Option<String>,
    pub why: String,
}

impl Suggestions {
    pub fn build(input: &Input, stats: &Stats, clusters: &[Cluster]) -> Suggestions {
        let mut items = Vec::new();
        if let Some(item) = timeout(input, stats) {
            items.push(item);
        }
        if let Some(item) = concurrency(input, stats) {
            items.push(item);
        }
        for gate in &stats.gates {
            let share = gate.repaired as f64 / gate.sessions.max(1) as f64;
            if gate.repaired > 0 && share >= REPAIR_SHARE {
                items.push(Suggestion {
                    key: format!("gates.{}", gate.gate),
                    value: None,
                    why: format!(
                        "passed only after its fix in {} of {} sessions ({} repairs): fold the fix into `run`",
                        gate.repaired, gate.sessions, gate.repairs
                    ),
                });
            }
        }
        items.extend(undeclared_writes(input));
        for cluster in clusters
            .iter()
            .filter(|c| c.units.len() >= CLUSTER_WORTH_A_FIX)
        {
            items.push(Suggestion {
                key: "cluster".into(),
                value: Some(cluster.id.clone()),
                why: format!(
                    "{} units failed the same way ({}{}): {}",
                    cluster.units.len(),
                    cluster.outcome,
                    cluster
                        .gate
                        .as_ref()
                        .map(|g| format!(", gate {g}"))
                        .unwrap_or_default(),
                    cluster.template
                ),
            });
        }
        let yaml = snippet(&items);
        Suggestions { items, yaml }
    }
}

/// The deadline from the observed p99 of successful sessions, with half
/// again as headroom.
fn timeout(input: &Input, stats: &Stats) -> Option<Suggestion> {
    let p99 = quantile(&stats.succeeded_runs_ms, 0.99)?;
    let suggested = round_up(p99 + p99 / 2);
    let configured = input
        .manifest
        .as_ref()
        .and_then(|m| m.timeout.or(m.playbook.timeout));
    let why = match configured {
        Some(now) if stats.timed_out > 0 => format!(
            "{} sessions ran out of the {} deadline; successful ones took up to {} (p99)",
            stats.timed_out,
            duration_text(now.as_millis() as u64),
            duration_text(p99)
        ),
        Some(now) => format!(
            "successful sessions took up to {} (p99); the deadline is {}",
            duration_text(p99),
            duration_text(now.as_millis() as u64)
        ),
        None => format!(
            "successful sessions took up to {} (p99); half again as headroom",
            duration_text(p99)
        ),
    };
    Some(Suggestion {
        key: "timeout".into(),
        value: Some(duration_text(suggested)),
        why,
    })
}

/// A larger cap when units mostly waited to start, and the cap was reached.
fn concurrency(input: &Input, stats: &Stats) -> Option<Suggestion> {
    let cap = input.summary.concurrency;
    let wait = stats.phases.iter().find(|p| p.phase == "wait")?.p50?;
    let run = stats.phases.iter().find(|p| p.phase == "session")?.p50?;
    let busiest = stats.utilisation.iter().copied().max().unwrap_or(0);
    if wait <= run || busiest < cap {
        return None;
    }
    Some(Suggestion {
        key: "concurrency".into(),
        value: Some((cap * 2).to_string()),
        why: format!(
            "units waited a median {} to start, longer than the {} they ran, and all {cap} slots were busy: \
             raise the cap if the fleet and the shared resources allow",
            duration_text(wait),
            duration_text(run)
        ),
    })
}

/// Git mode: units that changed files they did not declare.
fn undeclared_writes(input: &Input) -> Vec<Suggestion> {
    let mut items = Vec::new();
    for unit in &input.units {
        let mut outside: Vec<String> = unit
            .history
            .iter()
            .filter_map(|a| a.git.as_ref())
            .flat_map(|g| g.outside_writes.iter().cloned())
            .collect();
        if outside.is_empty() {
            continue;
        }
        let declared = input
            .manifest
            .as_ref()
            .and_then(|m| m.units.iter().find(|u| u.id == unit.id))
            .map(|u| u.touches.clone())
            .unwrap_or_default();
        outside.sort();
        outside.dedup();
        let mut touches = declared;
        touches.extend(outside.iter().cloned());
        items.push(Suggestion {
            key: format!("units.{}.touches", unit.id),
            value: Some(format!("[{}]", touches.join(", "))),
            why: format!(
                "it changed {} outside its touches and outputs",
                outside.join(", ")
            ),
        });
    }
    items
}

fn snippet(items: &[Suggestion]) -> String {
    let mut yaml = String::new();
    for item in items {
        match (item.key.as_str(), &item.value) {
            ("timeout" | "concurrency", Some(value)) => {
                yaml.push_str(&format!("{}: {value}    # {}\n", item.key, item.why));
            }
            (key, Some(value)) if key.starts_with("units.") => {
                let unit = key
                    .trim_start_matches("units.")
                    .trim_end_matches(".touches");
                yaml.push_str(&format!(
                    "# units: - id: {unit}\n#     touches: {value}    # {}\n",
                    item.why
                ));
            }
            ("cluster", Some(id)) => {
                yaml.push_str(&format!("# cluster {id}: {}\n", item.why));
            }
            (key, _) => yaml.push_str(&format!("# {key}: {}\n", item.why)),
        }
    }
    yaml
}

/// Rounds a duration up to a value people write: whole seconds under two
/// minutes, whole minutes under two hours, whole hours beyond.
fn round_up(ms: u64) -> u64 {
    let (second, minute, hour) = (1_000, 60_000, 3_600_000);
    let unit = if ms < 2 * minute {
        second
    } else if ms < 2 * hour {
        minute
    } else {
        hour
    };
    ms.div_ceil(unit).max(1) * unit
}

/// A duration in the manifest's grammar (`90s`, `12m`, `3h`, `250ms`).
pub fn duration_text(ms: u64) -> String {
    let (second, minute, hour) = (1_000, 60_000, 3_600_000);
    if ms >= hour && ms.is_multiple_of(hour) {
        format!("{}h", ms / hour)
    } else if ms >= minute && ms.is_multiple_of(minute) {
        format!("{}m", ms / minute)
    } else if ms >= second && ms.is_multiple_of(second) {
        format!("{}s", ms / second)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_what_people_write_and_parse_back() {
        assert_eq!(duration_text(round_up(1_200)), "2s");
        assert_eq!(duration_text(round_up(150_001)), "3m");
        assert_eq!(duration_text(round_up(3 * 3_600_000 + 1)), "4h");
        for ms in [1_200, 90_000, 150_001, 7_300_000] {
            let text = duration_text(round_up(ms));
            let parsed = regatta_proto::duration::parse(&text).expect("the manifest grammar");
            assert!(parsed.as_millis() as u64 >= ms, "{text} < {ms} ms");
        }
    }
}
