//! Agent sessions end to end: a real fleet runs examples/agent-migration's
//! fake agent, printing Claude Code's stream-json or codex's JSON turn by
//! turn, or reporting through REGATTA_USAGE. Each session's usage reaches
//! the API, the evidence pack and `/metrics`; a session crossing its token,
//! turn, cost or wall budget is killed within one turn, as `over_budget`,
//! with its usage kept; its transcript is in its evidence pack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regatta_coordinator::api::SessionView;
use regatta_coordinator::evidence::sha256_file;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::{write_file, Fleet};
use serde_json::Value;

fn fake_agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/agent-migration/fake-agent.py")
        .canonicalize()
        .expect("the fake agent exists")
}

fn load(dir: &Path, yaml: &str) -> Manifest {
    write_file(dir, "manifest.yaml", yaml);
    Manifest::load(&dir.join("manifest.yaml")).unwrap_or_else(|e| panic!("valid manifest: {e}"))
}

fn session_of<'a>(sessions: &'a [SessionView], unit: &str) -> &'a SessionView {
    sessions
        .iter()
        .rev()
        .find(|s| s.unit == unit)
        .unwrap_or_else(|| panic!("no session of {unit}: {sessions:#?}"))
}

fn read_pack(session: &SessionView) -> (Value, PathBuf) {
    let evidence = session.evidence.as_ref().expect("an evidence pack");
    let path = Path::new(&evidence.path);
    assert_eq!(sha256_file(path).expect("pack readable"), evidence.sha256);
    let pack = serde_json::from_slice(&std::fs::read(path).expect("pack")).expect("JSON");
    (pack, path.parent().expect("pack folder").to_path_buf())
}

/// Every turn takes 0.2 s: a kill "within one turn" leaves the usage at
/// the turn that crossed the limit.
const TURN: &str = "0.2";

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_metered_and_killed_within_one_turn_of_their_budgets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = fake_agent();
    let manifest = load(
        dir.path(),
        &format!(
            "batch: agent
concurrency: 8
timeout: 60s
playbook:
  name: agent
  run: python3 {agent}
  agent: claude-stream-json
  env: {{FAKE_AGENT_TURN_SECONDS: '{TURN}', FAKE_AGENT_TOKENS_IN: '1000', FAKE_AGENT_TOKENS_OUT: '200'}}
  prices:
    version: test-1
    models:
      m: {{input: 10, output: 50}}
units:
  - id: normal
    env: {{FAKE_AGENT_TURNS: '3', FAKE_AGENT_GARBAGE: '1'}}
  - id: tokens
    env: {{FAKE_AGENT_TURNS: '20'}}
    budget: {{tokens: 3000}}
  - id: wall
    env: {{FAKE_AGENT_TURNS: '200'}}
    budget: {{wall: 3s}}
",
            agent = agent.display()
        ),
    );
    // Codex reports no cost: its tokens are priced by the table.
    let codex_dir = tempfile::tempdir().expect("temp dir");
    let codex = load(
        codex_dir.path(),
        &format!(
            "batch: codex
timeout: 60s
playbook:
  name: codex
  run: python3 {agent}
  agent: codex-json
  env: {{FAKE_AGENT_FORMAT: codex, FAKE_AGENT_TURNS: '20', FAKE_AGENT_TURN_SECONDS: '{TURN}'}}
  prices:
    version: test-1
    models:
      m: {{input: 10, output: 50}}
units:
  - id: turns
    budget: {{turns: 2}}
  - id: cost
    budget: {{cost_usd: 0.05}}
",
            agent = agent.display()
        ),
    );
    let prices_sha = manifest.playbook.prices.as_ref().expect("prices").sha256();
    let fleet = Fleet::start("agent", 2, 4, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let codex_batch = client.enqueue(&codex).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(90)).await;
    assert_eq!(summary.state, BatchState::Failed, "{summary:?}");
    fleet
        .wait_for_end(&codex_batch, Duration::from_secs(90))
        .await;
    let mut sessions = client.sessions(&batch, None).await.expect("sessions");
    sessions.extend(client.sessions(&codex_batch, None).await.expect("sessions"));

    // A normal session: the `result` event's totals and cost; the garbage
    // lines are noted in its log, not fatal.
    let normal = session_of(&sessions, "normal");
    assert_eq!(normal.state, "succeeded", "{normal:#?}");
    let usage = normal.usage.as_ref().expect("usage of a normal session");
    assert_eq!(
        (usage.tokens_in, usage.tokens_out, usage.turns),
        (3000, 600, 3)
    );
    assert_eq!(usage.cost_usd, Some(0.03));
    let (pack, pack_dir) = read_pack(normal);
    assert_eq!(pack["usage"]["turns"], 3);
    assert_eq!(pack["prices"]["version"], "test-1");
    assert_eq!(pack["prices"]["sha256"], prices_sha.as_str());
    let transcript = pack["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .find(|a| a["stage"] == "transcript")
        .unwrap_or_else(|| panic!("no transcript in {pack:#}"));
    assert_eq!(transcript["filename"], "transcript.jsonl");
    let stored = pack_dir.join(transcript["path"].as_str().expect("path"));
    assert_eq!(
        sha256_file(&stored).expect("stored transcript"),
        transcript["sha256"].as_str().expect("sha256")
    );
    let text = std::fs::read_to_string(&stored).expect("transcript");
    assert!(text.contains("\"type\": \"result\""), "{text}");
    assert!(text.contains("this line is not JSON"), "{text}");
    let log = std::fs::read_to_string(pack_dir.join("session.log")).expect("stored log");
    assert!(
        log.contains("[regatta: agent stream: line 5 is not JSON"),
        "{log}"
    );
    assert!(log.contains("ended in the middle of a line"), "{log}");

    // Each budget: killed at the turn that crossed it, over_budget, with the
    // usage at the kill kept in the API and the evidence pack.
    let over = |unit: &str, turns: u64, words: &str| {
        let session = session_of(&sessions, unit);
        assert_eq!(session.state, "over_budget", "{session:#?}");
        let reason = session.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(words), "{unit}: {reason}");
        let usage = session.usage.clone().expect("usage kept when killed");
        assert_eq!(
            usage.turns, turns,
            "{unit} was not killed within one turn: {usage}"
        );
        let (pack, _) = read_pack(session);
        assert_eq!(pack["outcome"], "over_budget");
        assert_eq!(pack["usage"]["turns"], turns);
        assert!(
            pack["artifacts"]
                .as_array()
                .expect("artifacts")
                .iter()
                .any(|a| a["stage"] == "transcript"),
            "{pack:#}"
        );
        usage
    };
    let tokens = over("tokens", 3, "tokens 3600 reached the limit of 3000");
    assert_eq!(tokens.tokens(), 3600);
    over("turns", 2, "turns 2 reached the limit of 2");
    // Codex reports no cost: 1000 in at $10/M and 200 out at $50/M make $0.02 a turn.
    let cost = over("cost", 3, "reached the limit of $0.05");
    assert!(
        (cost.cost_usd.unwrap_or_default() - 0.06).abs() < 1e-9,
        "{cost}"
    );
    let wall = session_of(&sessions, "wall");
    let ran = wall.ended_at_ms.unwrap_or_default() - wall.started_at_ms.unwrap_or_default();
    assert!(
        (3_000..8_000).contains(&ran),
        "the wall budget of 3s let it run {ran} ms"
    );
    // At 0.2 s a turn, after the interpreter's start: over a second on a
    // busy machine, hence a 3 s budget, so that some turns are metered.
    let wall_usage = over(
        "wall",
        wall.usage.as_ref().map_or(0, |u| u.turns),
        "wall time",
    );
    assert!((1..=16).contains(&wall_usage.turns), "{wall_usage}");
    // Not retried by default.
    assert_eq!(sessions.iter().filter(|s| s.unit == "tokens").count(), 1);

    let metrics = reqwest::get(format!("{}/metrics", fleet.api))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let line = format!("regatta_tokens_total{{batch=\"{batch}\",kind=\"out\"}}");
    assert!(metrics.contains(&line), "{metrics}");
    let cost_line = format!("regatta_cost_usd_total{{batch=\"{batch}\",outcome=\"over_budget\"}}");
    assert!(metrics.contains(&cost_line), "{metrics}");
    assert!(
        metrics.contains("regatta_sessions_total{outcome=\"over_budget\"}"),
        "{metrics}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_reports_its_usage_through_regatta_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = load(
        dir.path(),
        &format!(
            "batch: channel
timeout: 60s
playbook:
  name: channel
  run: python3 {agent}
  env: {{FAKE_AGENT_FORMAT: channel, FAKE_AGENT_TURNS: '4', FAKE_AGENT_COST_PER_TURN: '0.5', FAKE_AGENT_TURN_SECONDS: '0.3'}}
units:
  - id: reported
  - id: capped
    budget: {{cost_usd: 1.2}}
",
            agent = fake_agent().display()
        ),
    );
    let fleet = Fleet::start("agent-channel", 1, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    let sessions = client.sessions(&batch, None).await.expect("sessions");
    let reported = session_of(&sessions, "reported");
    assert_eq!(reported.state, "succeeded", "{reported:#?}");
    let usage = reported.usage.as_ref().expect("usage through the channel");
    assert_eq!(
        (usage.tokens_in, usage.turns, usage.cost_usd),
        (4000, 4, Some(2.0))
    );
    // No adapter: stdout stays in the log, and there is no transcript.
    let (pack, _) = read_pack(reported);
    assert!(
        !pack["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .any(|a| a["stage"] == "transcript"),
        "{pack:#}"
    );
    // The channel is polled: the kill comes within a poll of the crossing.
    let capped = session_of(&sessions, "capped");
    assert_eq!(capped.state, "over_budget", "{capped:#?}");
    let usage = capped.usage.as_ref().expect("usage kept");
    assert_eq!(usage.cost_usd, Some(1.5), "{usage}");
    fleet.stop().await;
}

/// A worker killed with -9 takes its session's usage with it (the usage
/// file and the transcript are on its disk): the attempt ends `lost` with no
/// usage, the unit re-runs elsewhere, and only the re-run's usage is
/// recorded. This is the documented behaviour (README, "Agent sessions").
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_session_leaves_only_the_reruns_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = load(
        dir.path(),
        &format!(
            "batch: killed
timeout: 60s
playbook:
  name: agent
  run: python3 {agent}
  agent: claude-stream-json
  env: {{FAKE_AGENT_TURNS: '6', FAKE_AGENT_TURN_SECONDS: '0.3'}}
units:
  - id: work
",
            agent = fake_agent().display()
        ),
    );
    let mut fleet = Fleet::start("agent-kill", 0, 1, "3s").await;
    fleet.add_worker(1);
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = client.sessions(&batch, None).await.expect("sessions");
        if sessions.iter().any(|s| s.state == "running") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{sessions:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few turns in, the worker dies.
    tokio::time::sleep(Duration::from_millis(900)).await;
    fleet.kill_worker(0);
    fleet.add_worker(1);
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let sessions = client.sessions(&batch, None).await.expect("sessions");
    let states: Vec<(&str, Option<u64>)> = sessions
        .iter()
        .map(|s| (s.state.as_str(), s.usage.as_ref().map(|u| u.turns)))
        .collect();
    assert_eq!(states, [("lost", None), ("succeeded", Some(6))]);
    fleet.stop().await;
}
