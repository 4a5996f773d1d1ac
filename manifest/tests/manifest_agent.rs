//! An agent session's settings in the manifest: `agent`, `budget` (playbook and unit),
//! `prices`, `retry_over_budget` and per-unit `retries`; each rule with its message and
//! position.

use std::path::Path;
use std::time::Duration;

use regatta_manifest::{Manifest, ManifestErrors};
use regatta_proto::{AgentAdapter, Budget};

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

/// A manifest whose playbook holds `playbook_lines` (indented by four spaces) after
/// `run`, and whose units are `unit_lines`; the playbook's extra lines start on line 4.
fn manifest(playbook_lines: &str, unit_lines: &str) -> String {
    format!(
        "batch: b\nplaybook:\n    run: claude -p \"$REGATTA_TASK\"\n{playbook_lines}units:\n{unit_lines}"
    )
}

const PRICES: &str = "    prices:
      version: \"2026-11\"
      default: gpt-5
      models:
        gpt-5: {input: 1.25, cached: 0.125, output: 10}
";

#[test]
fn agent_budget_prices_and_overrides_are_read() {
    let text = manifest(
        &format!(
            "    agent: codex-json
    budget: {{tokens: 2000000, cost_usd: 5, turns: 80, wall: 45m}}
    retry_over_budget: true
{PRICES}"
        ),
        "  - id: a\n  - id: b\n    retries: 4\n    budget: {turns: 3}\n",
    );
    let manifest = parse(&text).expect("valid");
    let playbook = &manifest.playbook;
    assert_eq!(playbook.agent, Some(AgentAdapter::CodexJson));
    assert!(playbook.retry_over_budget);
    let whole = Budget {
        tokens: Some(2_000_000),
        cost_usd: Some(5.0),
        turns: Some(80),
        wall: Some(Duration::from_secs(45 * 60)),
    };
    assert_eq!(playbook.budget.as_ref(), Some(&whole));
    let prices = playbook.prices.as_ref().expect("prices");
    assert_eq!(prices.version, "2026-11");
    assert_eq!(prices.models["gpt-5"].cached, Some(0.125));
    let (a, b) = (&manifest.units[0], &manifest.units[1]);
    assert_eq!(manifest.effective_retries(a), 1);
    assert_eq!(manifest.effective_retries(b), 4);
    assert_eq!(manifest.effective_budget(b).turns, Some(3));
    assert_eq!(manifest.effective_budget(b).tokens, Some(2_000_000));
    let order = manifest.agent_order(a).expect("an agent order");
    assert_eq!(order.adapter, Some(AgentAdapter::CodexJson));
    assert_eq!(order.budget, whole);
    // The manifest still round-trips through JSON, as the API receives it.
    let json = serde_json::to_string(&manifest).expect("json");
    let back: Manifest = serde_json::from_str(&json).expect("read back");
    assert_eq!(back, manifest);
    assert!(json.contains("\"agent\":\"codex-json\""), "{json}");
}

#[test]
fn a_manifest_without_agent_settings_has_no_agent_order() {
    let manifest = parse(&manifest("", "  - id: a\n")).expect("valid");
    assert_eq!(manifest.agent_order(&manifest.units[0]), None);
}

#[test]
fn budget_problems_are_reported_with_their_positions() {
    let text = manifest(
        "    agent: claude-json
    budget: {tokens: 0, cost_usd: -1, turnz: 3, wall: 0s}
",
        "  - id: a\n    budget: {turns: zero}\n",
    );
    assert_eq!(
        refused(&text),
        [
            "m.yaml:4:12: 'agent' must be 'claude-stream-json', 'codex-json' or 'cmd', found 'claude-json'",
            "m.yaml:5:22: 'budget.tokens' must be more than zero (leave it out for no limit)",
            "m.yaml:5:35: 'budget.cost_usd' must be more than zero (leave it out for no limit)",
            "m.yaml:5:39: unknown budget field 'turnz' (did you mean 'turns'?)",
            "m.yaml:5:55: 'budget.wall' must be more than zero (leave it out for no limit)",
            "m.yaml:8:21: unit 'a': 'turns' must be a whole number of 0 or more, found 'zero'",
        ]
    );
}

#[test]
fn prices_are_checked_and_a_cost_budget_needs_a_source_of_cost() {
    let text = manifest(
        "    agent: codex-json
    budget: {cost_usd: 5}
",
        "  - id: a\n",
    );
    let errors = refused(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("m.yaml:5:24: a 'cost_usd' budget with agent 'codex-json'"),
        "{errors:?}"
    );
    let text = manifest(
        "    prices:
      version: \"\"
      default: gpt5
      models:
        gpt-5: {input: -1, output: 10, extra: 1}
",
        "  - id: a\n",
    );
    let errors = refused(&text);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("unknown model price field 'extra'")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("missing required field 'version'")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("'input' price of model 'gpt-5' must be a number of 0 or more")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("unknown model 'gpt5' (did you mean 'gpt-5'?)")),
        "{errors:?}"
    );
}
