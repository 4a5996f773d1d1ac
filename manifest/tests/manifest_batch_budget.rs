//! The batch's `budget:` (contract 9, docs/contracts.md): read, checked strictly, each
//! problem with its position, and kept through the JSON the API receives.

use std::path::Path;

use regatta_manifest::{BatchBudget, Manifest, ManifestErrors};

fn parse(yaml: &str) -> Result<Manifest, ManifestErrors> {
    Manifest::parse(yaml, "m.yaml", Path::new("/srv/batches"))
}

/// Parses text expected to be refused; returns each error as printed.
fn refused(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(manifest) => panic!("expected errors, got {manifest:#?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// A manifest whose playbook ends with `playbook_extra`, then `budget_line` (on line 4
/// after an empty `playbook_extra`).
fn text(playbook_extra: &str, budget_line: &str) -> String {
    format!("batch: b\nplaybook:\n  run: ./agent.sh\n{playbook_extra}{budget_line}\nunits:\n  - id: a\n")
}

#[test]
fn a_batch_budget_is_read_and_round_trips_through_json() {
    let manifest = parse(&text("", "budget: {cost_usd: 500}")).expect("valid");
    assert_eq!(manifest.budget, Some(BatchBudget { cost_usd: 500.0 }));
    let json = serde_json::to_string(&manifest).expect("json");
    assert!(json.contains("\"budget\":{\"cost_usd\":500.0}"), "{json}");
    let back: Manifest = serde_json::from_str(&json).expect("read back");
    assert_eq!(back, manifest);
    back.check().expect("still valid");
    let none = parse(&text("", "")).expect("valid");
    assert_eq!(none.budget, None);
}

#[test]
fn batch_budget_problems_are_reported_with_their_positions() {
    assert_eq!(
        refused(&text("", "budget: {cost_usd: 0, tokens: 5}")),
        [
            "m.yaml:4:20: 'budget.cost_usd' must be more than zero (leave it out for no limit)",
            "m.yaml:4:23: unknown batch budget field 'tokens'",
        ]
    );
    assert_eq!(
        refused(&text("", "budget: {cost_usd: lots}")),
        ["m.yaml:4:20: 'cost_usd' must be a number, found 'lots'"]
    );
    assert_eq!(
        refused(&text("", "budget: {cost_us: 5}")),
        [
            "m.yaml:4:10: unknown batch budget field 'cost_us' (did you mean 'cost_usd'?)",
            "m.yaml:4:10: missing required field 'cost_usd'",
        ]
    );
    assert_eq!(
        refused(&text("", "budget: 500")),
        ["m.yaml:4:1: 'budget' must be a mapping with 'cost_usd', found 500"]
    );
}

#[test]
fn a_batch_budget_needs_a_source_of_cost() {
    let errors = refused(&text("  agent: codex-json\n", "budget: {cost_usd: 50}"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("m.yaml:5:20: a 'cost_usd' budget with agent 'codex-json'"),
        "{errors:?}"
    );
}

#[test]
fn a_batch_budget_from_json_is_checked_too() {
    let mut manifest = parse(&text("", "budget: {cost_usd: 5}")).expect("valid");
    manifest.budget = Some(BatchBudget { cost_usd: f64::NAN });
    let errors = manifest.check().expect_err("refused");
    let text = errors.to_string();
    assert!(
        text.contains("'budget.cost_usd' must be more than zero"),
        "{text}"
    );
}
