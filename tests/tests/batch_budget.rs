//! The batch budget (contract 9, docs/contracts.md), against the real Redis and
//! a real fleet: the lease script reserves with the leases or refuses with the
//! ledger's words, the release settles once at the actual cost, the reaper
//! keeps a lost session's reservation as spent; and a batch of fake agent
//! sessions under 4 workers x 4 slots never spends past its cap, while the
//! units that do not fit wait with the reason shown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::UnitState;
use regatta_proto::{scripts, Keys, LeaseOwner};
use regatta_tests::{binary, delete_keys, redis, unique_namespace, write_file, Fleet};

// ---------------------------------------------------------------------------
// The scripts, one step at a time
// ---------------------------------------------------------------------------

/// A namespace with one stored batch `b` whose units `u0`.. are queued, each
/// as session `s-<unit>`, as the lease script checks before it grants.
struct Ledger {
    con: MultiplexedConnection,
    keys: Keys,
    namespace: String,
}

impl Ledger {
    async fn new(test: &str, units: usize) -> Ledger {
        let namespace = unique_namespace(test);
        let keys = Keys::new(&namespace).expect("keys");
        let mut con = redis().await;
        let _: () = con.set(keys.epoch(), "1").await.expect("epoch");
        let _: () = con
            .hset(keys.batch("b"), "manifest", "{}")
            .await
            .expect("batch");
        for i in 0..units {
            let record = serde_json::json!({
                "state": "queued",
                "history": [{"session_id": format!("s-u{i}")}],
            });
            let _: () = con
                .hset(keys.units("b"), format!("u{i}"), record.to_string())
                .await
                .expect("unit record");
        }
        Ledger {
            con,
            keys,
            namespace,
        }
    }

    /// Runs the lease script for unit `u<i>` under a cap, reserving `reserve`.
    async fn acquire(&mut self, i: usize, cap: u64, reserve: u64) -> (i64, String) {
        let session = format!("s-u{i}");
        let owner = LeaseOwner {
            worker: "w".into(),
            batch_id: "b".into(),
            unit_id: format!("u{i}"),
            attempt: 1,
            session_id: session.clone(),
        };
        let answer: Vec<redis::Value> = redis::Script::new(scripts::ACQUIRE)
            .key(self.keys.leases())
            .key(self.keys.lease(&session))
            .key(self.keys.fence())
            .key(self.keys.batch("b"))
            .key(self.keys.done(&session))
            .key(self.keys.epoch())
            .key(self.keys.quiet())
            .key(self.keys.units("b"))
            .key(self.keys.batch_budget("b"))
            .key(self.keys.batch_semaphore("b"))
            .arg(&session)
            .arg(30_000)
            .arg(owner.encode())
            .arg(format!("u{i}"))
            .arg("claim")
            .arg(cap)
            .arg(reserve)
            .arg(100)
            .arg(1)
            .invoke_async(&mut self.con)
            .await
            .expect("the lease script runs");
        let code = match answer.first() {
            Some(redis::Value::Int(code)) => *code,
            other => panic!("unexpected answer {other:?}"),
        };
        let text = match answer.get(1) {
            Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(redis::Value::Int(n)) => n.to_string(),
            _ => String::new(),
        };
        (code, text)
    }

    /// Releases unit `u<i>`'s session under `fence`, settling at `actual`.
    async fn release(&mut self, i: usize, fence: &str, actual: Option<u64>) -> i64 {
        let session = format!("s-u{i}");
        redis::Script::new(scripts::RELEASE)
            .key(self.keys.leases())
            .key(self.keys.lease(&session))
            .key(self.keys.done(&session))
            .arg(&session)
            .arg(fence)
            .arg(actual.map(|a| a.to_string()).unwrap_or_default())
            .invoke_async(&mut self.con)
            .await
            .expect("the release script runs")
    }

    /// The ledger: (reserved, spent) in micro-dollars.
    async fn read(&mut self) -> (i64, i64) {
        let (reserved, spent): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.keys.batch_budget("b"))
            .arg("reserved")
            .arg("spent")
            .query_async(&mut self.con)
            .await
            .expect("ledger");
        (reserved.unwrap_or(0), spent.unwrap_or(0))
    }

    async fn fence_of(&mut self, i: usize) -> String {
        self.con
            .hget(self.keys.lease(&format!("s-u{i}")), "fence")
            .await
            .expect("fence")
    }

    async fn clean(mut self) {
        delete_keys(&mut self.con, &self.namespace).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lease_script_reserves_all_or_none_and_refuses_with_the_ledger() {
    let mut ledger = Ledger::new("budget-reserve", 3).await;
    // $10 cap, $4 reservations: two fit, the third does not.
    assert_eq!(ledger.acquire(0, 10_000_000, 4_000_000).await.0, 1);
    assert_eq!(ledger.acquire(1, 10_000_000, 4_000_000).await.0, 1);
    assert_eq!(ledger.read().await, (8_000_000, 0));
    let (code, reason) = ledger.acquire(2, 10_000_000, 4_000_000).await;
    assert_eq!(code, -5);
    assert_eq!(
        reason,
        "batch budget: $8.00 reserved + $0.00 spent of $10.00"
    );
    // Refused whole: no lease, no slot, no reservation.
    let leases: i64 = ledger.con.zcard(ledger.keys.leases()).await.expect("zcard");
    let slots: i64 = ledger
        .con
        .zcard(ledger.keys.batch_semaphore("b"))
        .await
        .expect("zcard");
    assert_eq!((leases, slots), (2, 2));
    assert_eq!(ledger.read().await, (8_000_000, 0));
    ledger.clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_release_settles_once_at_the_actual_cost_and_only_under_its_fence() {
    let mut ledger = Ledger::new("budget-settle", 3).await;
    for i in 0..3 {
        assert_eq!(ledger.acquire(i, 10_000_000, 3_000_000).await.0, 1);
    }
    let fence = ledger.fence_of(0).await;
    // Another holder's fence settles nothing.
    assert_eq!(ledger.release(0, "999999", Some(1)).await, -1);
    assert_eq!(ledger.read().await, (9_000_000, 0));
    // The actual cost replaces the reservation ...
    assert_eq!(ledger.release(0, &fence, Some(1_250_000)).await, 1);
    assert_eq!(ledger.read().await, (6_000_000, 1_250_000));
    // ... once: the coordinator's release after the worker's changes nothing.
    assert_eq!(ledger.release(0, &fence, Some(1_250_000)).await, 0);
    assert_eq!(ledger.read().await, (6_000_000, 1_250_000));
    // An unknown cost spends the reservation whole.
    let fence = ledger.fence_of(1).await;
    assert_eq!(ledger.release(1, &fence, None).await, 1);
    assert_eq!(ledger.read().await, (3_000_000, 4_250_000));
    ledger.clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reaped_lease_keeps_its_reservation_as_spent() {
    let mut ledger = Ledger::new("budget-reap", 2).await;
    assert_eq!(ledger.acquire(0, 10_000_000, 2_000_000).await.0, 1);
    assert_eq!(ledger.acquire(1, 10_000_000, 2_000_000).await.0, 1);
    // The holder of u0 died: its lease expired.
    let _: () = ledger
        .con
        .zadd(ledger.keys.leases(), "s-u0", 1)
        .await
        .expect("expire");
    let reaped: Vec<String> = redis::Script::new(scripts::REAP)
        .key(ledger.keys.leases())
        .arg(ledger.keys.lease(""))
        .arg(100)
        .arg(ledger.keys.done(""))
        .invoke_async(&mut ledger.con)
        .await
        .expect("reap");
    assert_eq!(reaped.first().map(String::as_str), Some("s-u0"));
    assert_eq!(ledger.read().await, (2_000_000, 2_000_000));
    // The dead session's late release finds no lease and settles nothing.
    assert_eq!(ledger.release(0, "", Some(1)).await, 0);
    assert_eq!(ledger.read().await, (2_000_000, 2_000_000));
    ledger.clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cap_nothing_is_reserved() {
    let mut ledger = Ledger::new("budget-none", 1).await;
    assert_eq!(ledger.acquire(0, 0, 5_000_000).await.0, 1);
    let exists: bool = ledger
        .con
        .exists(ledger.keys.batch_budget("b"))
        .await
        .expect("exists");
    assert!(!exists);
    let fence = ledger.fence_of(0).await;
    assert_eq!(ledger.release(0, &fence, Some(7)).await, 1);
    assert_eq!(ledger.read().await, (0, 0));
    ledger.clean().await;
}

// ---------------------------------------------------------------------------
// A fleet of 4 workers x 4 slots under a batch budget
// ---------------------------------------------------------------------------

fn fake_agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/agent-migration/fake-agent.py")
        .canonicalize()
        .expect("the fake agent exists")
}

/// Units in the batch; each session costs [`SESSION_COST`] and reserves the
/// playbook's cost cap, [`RESERVATION`].
const UNITS: usize = 24;
const SESSION_COST: f64 = 0.4;
const RESERVATION: f64 = 0.6;
const CAP: f64 = 5.0;

fn micros(usd: f64) -> i64 {
    regatta_proto::batch_budget::micros(usd) as i64
}

/// What `sessions` says the ended sessions cost, in micro-dollars, and how many ended.
async fn reported_spend(fleet: &Fleet, batch: &str) -> (i64, usize) {
    let sessions = fleet
        .client()
        .sessions(batch, None)
        .await
        .expect("sessions");
    let ended: Vec<_> = sessions
        .iter()
        .filter(|s| s.ended_at_ms.is_some())
        .collect();
    let spend = ended
        .iter()
        .map(|s| micros(s.usage.as_ref().and_then(|u| u.cost_usd).unwrap_or(0.0)))
        .sum();
    (spend, ended.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_budget_is_never_exceeded_under_four_workers_of_four_slots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let units: String = (0..UNITS)
        .map(|i| format!("  - id: pkg-{i:02}\n"))
        .collect();
    let yaml = format!(
        "batch: budgeted
concurrency: 16
timeout: 60s
budget: {{cost_usd: {CAP}}}
playbook:
  name: agent
  run: python3 {agent}
  agent: claude-stream-json
  env: {{FAKE_AGENT_TURNS: '4', FAKE_AGENT_TURN_SECONDS: '0.25', FAKE_AGENT_COST_PER_TURN: '0.1'}}
  budget: {{cost_usd: {RESERVATION}}}
  prices:
    version: test-1
    models:
      m: {{input: 10, output: 50}}
units:
{units}",
        agent = fake_agent().display()
    );
    write_file(dir.path(), "manifest.yaml", &yaml);
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    let fleet = Fleet::start("batch-budget", 4, 4, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let mut con = redis().await;
    let cap = micros(CAP);

    // Observe while it runs: Redis's ledger and the usage records.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut observations = 0;
    let mut max_reserved = 0;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let (reserved, spent): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(keys.batch_budget(&batch))
            .arg("reserved")
            .arg("spent")
            .query_async(&mut con)
            .await
            .expect("ledger");
        let (reserved, spent) = (reserved.unwrap_or(0), spent.unwrap_or(0));
        let (reported, ended) = reported_spend(&fleet, &batch).await;
        observations += 1;
        max_reserved = max_reserved.max(reserved);
        assert!(
            spent <= cap + reserved,
            "spent {spent} beyond the cap {cap} + reservations {reserved}"
        );
        // Each session costs less than it reserves: spend and reservations
        // together stay within the cap.
        assert!(spent + reserved <= cap, "{spent} + {reserved} > {cap}");
        assert!(
            reported <= cap,
            "the usage records add up to {reported} > {cap}"
        );
        assert!(reserved <= 16 * micros(RESERVATION), "{reserved}");
        let summary = client.batch(&batch).await.expect("summary");
        let in_flight = summary.counts.get(&UnitState::Queued).copied().unwrap_or(0)
            + summary
                .counts
                .get(&UnitState::Running)
                .copied()
                .unwrap_or(0);
        if in_flight == 0 && ended > 0 && reserved == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break;
            }
        } else {
            quiet_since = None;
        }
        assert!(
            Instant::now() < deadline,
            "the batch did not settle within 2 minutes: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // At the end: nothing reserved; what Redis counts as spent is what the
    // usage records and the evidence packs say the sessions cost.
    let (reserved, spent): (i64, i64) = redis::cmd("HMGET")
        .arg(keys.batch_budget(&batch))
        .arg("reserved")
        .arg("spent")
        .query_async(&mut con)
        .await
        .expect("ledger");
    let (reported, ended) = reported_spend(&fleet, &batch).await;
    assert_eq!((reserved, spent), (0, reported));
    let sessions = client.sessions(&batch, None).await.expect("sessions");
    let mut packed = 0;
    for session in sessions.iter().filter(|s| s.ended_at_ms.is_some()) {
        assert_eq!(session.state, "succeeded", "{session:#?}");
        let evidence = session.evidence.as_ref().expect("an evidence pack");
        let pack: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&evidence.path).expect("pack")).expect("JSON");
        packed += micros(
            pack["usage"]["cost_usd"]
                .as_f64()
                .expect("a cost in the pack"),
        );
    }
    assert_eq!(packed, spent);
    // Every run costs $0.40 and reserves $0.60: twelve fit a $5 cap (the
    // twelfth when $4.40 was spent), a thirteenth would not ($4.80 + $0.60).
    assert_eq!(ended, 12, "sessions ended");
    assert_eq!(spent, micros(12.0 * SESSION_COST));
    assert!(
        max_reserved > micros(RESERVATION),
        "sessions ran side by side"
    );

    // The rest waits, with the reason shown in the API and in `status`.
    let why = "batch budget: $0.00 reserved + $4.80 spent of $5.00";
    let ready = client.units(&batch, Some("ready")).await.expect("units");
    assert_eq!(ready.len(), UNITS - 12);
    for unit in &ready {
        assert_eq!(unit.waiting_for.as_deref(), Some(why), "{unit:#?}");
    }
    let summary = client.batch(&batch).await.expect("summary");
    let budget = summary.budget.expect("the budget in the summary");
    assert_eq!((budget.cap_usd, budget.reserved_usd), (CAP, 0.0));
    assert!((budget.spent_usd - 4.8).abs() < 1e-9, "{budget:?}");
    let status = std::process::Command::new(binary("regatta"))
        .args(["status", &batch])
        .env("REGATTA_API", &fleet.api)
        .env_remove("REGATTA_API_TOKEN")
        .output()
        .expect("regatta status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&format!("\n{why}\n")), "{text}");
    assert!(text.contains(&format!("pkg-12 waits for {why}")), "{text}");
    let metrics = reqwest::get(format!("{}/metrics", fleet.api))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let line = format!("regatta_batch_budget_usd{{batch=\"{batch}\",part=\"spent\"}} 4.8");
    assert!(metrics.contains(&line), "{metrics}");
    println!(
        "{observations} observations; at most ${} reserved at once",
        max_reserved as f64 / 1e6
    );
    fleet.stop().await;
}
