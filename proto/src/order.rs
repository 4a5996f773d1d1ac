//! A work order: everything a worker needs to run one attempt of one unit.
//!
//! The order is self-contained (command, environment, deadline, gates, lease
//! demand) so that a worker never reads the manifest and a re-published
//! attempt needs nothing but a new order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Message;

/// One attempt of one unit, as published by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrder {
    pub batch_id: String,
    pub unit_id: String,
    /// 1 for the first attempt; retries and re-runs of lost sessions count up.
    pub attempt: u32,
    /// Unique per attempt: events of any other session of the unit are stale.
    pub session_id: String,
    pub playbook: String,
    pub task: String,
    /// Shell command line, run with `/bin/sh -c` in `workdir`.
    pub run: String,
    pub workdir: String,
    /// Playbook environment overlaid with the unit's own.
    pub env: BTreeMap<String, String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The session's deadline, counted from its start.
    pub timeout_ms: u64,
    /// Verification gates that apply to this unit, in order.
    pub gates: Vec<GateSpec>,
    /// What the worker must hold in Redis while the session runs.
    pub leases: LeaseDemand,
    /// Milliseconds since the epoch when the coordinator published the order.
    pub published_at_ms: i64,
    /// Git mode: the repository the session works in (docs/git-mode.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<crate::git::GitOrder>,
    /// An agent session: its adapter, budget and prices; `None` for a
    /// session with neither (and from an older coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::agent::AgentOrder>,
    /// The batch budget's cap and this session's reservation against it;
    /// `None` for a batch without one (contract 9, docs/contracts.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_budget: Option<crate::batch_budget::BudgetReservation>,
}

impl Message for WorkOrder {
    const KIND: &'static str = "order";
}

/// A verification gate as the worker runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    pub name: String,
    pub run: String,
    pub fix: Option<String>,
    pub timeout_ms: Option<u64>,
    pub required: bool,
    /// How many times `fix` may run before the gate escalates.
    pub repairs: u32,
}

/// The semaphores a session holds, all acquired at once or none.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LeaseDemand {
    /// The batch's fleet-wide concurrency cap.
    pub concurrency: u32,
    /// Shared resources: (name, weight, capacity). Touched files appear as
    /// `file:<path>` with weight 1 and capacity 1.
    pub resources: Vec<ResourceDemand>,
}

/// A share of one shared resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceDemand {
    pub name: String,
    pub weight: u32,
    pub capacity: u32,
}

impl WorkOrder {
    /// A small order for tests and examples.
    pub fn example() -> Self {
        WorkOrder {
            batch_id: "b-1".into(),
            unit_id: "customer-pkg".into(),
            attempt: 1,
            session_id: "s-1".into(),
            playbook: "plsql-to-pg".into(),
            task: "Migrate CUSTOMER_PKG".into(),
            run: "echo migrating".into(),
            workdir: "/tmp".into(),
            env: BTreeMap::from([("PGHOST".into(), "127.0.0.1".into())]),
            inputs: vec!["plsql/customer_pkg.sql".into()],
            outputs: vec!["pg/customer_pkg.sql".into()],
            timeout_ms: 60_000,
            gates: vec![GateSpec {
                name: "test".into(),
                run: "true".into(),
                fix: Some("true".into()),
                timeout_ms: None,
                required: true,
                repairs: 2,
            }],
            leases: LeaseDemand {
                concurrency: 4,
                resources: vec![ResourceDemand {
                    name: "orders-db".into(),
                    weight: 1,
                    capacity: 2,
                }],
            },
            published_at_ms: 0,
            git: None,
            agent: None,
            batch_budget: None,
        }
    }
}
