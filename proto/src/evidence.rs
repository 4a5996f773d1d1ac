//! The session evidence pack, `evidence-pack.json`: what a worker writes
//! when a session ends and what the coordinator reads to verify it.
//!
//! The worker fills a [`SessionPack`] and writes it beside the files it
//! stored; the coordinator reads the part it checks, [`SessionPackFiles`].
//! Both are defined here so that writer and reader cannot drift apart. The
//! schema is versioned ([`SCHEMA_VERSION`]) and documented in
//! `docs/evidence-pack.md`: field names and order are part of the format
//! (auditors hash the bytes), so reorder or rename nothing without a new
//! version.
//!
//! The store's layout and path rules are in [`layout`], the hashing both
//! sides record and check in [`digest`]. Everything here is plain data and
//! pure functions over what it is given: opening files stays with the
//! worker and the coordinator.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::event::GateReport;

pub mod digest;
pub mod layout;

pub use digest::{copy_hashed, hash_reader, sha256_hex, CopyError, Hashed, Sha256Writer};
pub use layout::{
    plain_relative, session_dir, single_segment, UnsafeId, ARTIFACTS_DIR, LOG_FILE, OUTPUTS_DIR,
    PACK_FILE,
};

/// The version of the session pack's schema; bumped on any change that is
/// not a new optional field.
pub const SCHEMA_VERSION: u32 = 1;

/// `evidence-pack.json`, schema version 1 (see `docs/evidence-pack.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPack {
    pub schema_version: u32,
    pub playbook: String,
    pub batch_id: String,
    pub unit_id: String,
    pub session_id: String,
    pub attempt: u32,
    /// The worker that ran the session.
    pub worker: String,
    /// When the pack was written (ISO 8601, UTC).
    pub timestamp: String,
    pub started_at: String,
    pub ended_at: String,
    pub duration_ms: u64,
    /// `succeeded`, `failed`, `timed_out`, `lost`, `interrupted` or `cancelled`.
    pub outcome: String,
    pub exit_code: Option<i32>,
    /// Why the session failed, as the coordinator shows it.
    pub reason: Option<String>,
    /// Every stored file: outputs, then artifacts, then the log.
    pub artifacts: Vec<StoredFile>,
    /// Files the store refused to keep (paths escaping the workdir, symlinks
    /// pointing outside), with why.
    pub rejected: Vec<RejectedFile>,
    /// Declared inputs, hashed (not copied) when the session ended.
    pub inputs: Vec<HashedInput>,
    /// The session log, also listed in `artifacts` with stage `log`.
    pub log: Option<LogRef>,
    /// Each gate that ran, in order.
    pub gates: Vec<GateReport>,
    /// Gates that apply to the unit but never ran (the command failed, an
    /// earlier required gate escalated, or the session was stopped).
    pub gates_not_run: Vec<String>,
    pub verification: Verification,
    /// Reserved for what a session learnt for the next ones; always empty in
    /// schema version 1.
    pub knowledge_updates: Vec<serde_json::Value>,
    /// What a reviewer must look at: the failure that ended the session.
    pub escalations: Vec<Escalation>,
    /// The session's trace (32 hex digits) in the fleet's tracing UI, when
    /// spans are exported; absent from packs written before.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Git mode: the base, the dependency commits merged in, the unit's
    /// commit and tree, each changed file and the diffstat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<crate::git::GitReport>,
    /// An agent session's usage (tokens, turns, cost), also when it was
    /// killed over its budget; absent for a session that reported none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::agent::Usage>,
    /// The price table the session's cost was computed with: its version and
    /// the SHA-256 of its canonical JSON; absent when the playbook has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<PricesRef>,
}

/// Names the price table a session was priced with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricesRef {
    pub version: String,
    pub sha256: String,
}

/// Where a stored file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A declared output of the unit, relative to the workdir.
    Output,
    /// A file the session left in its `REGATTA_ARTIFACT_DIR`.
    Artifact,
    /// The session's log.
    Log,
    /// An agent session's stdout stream, as the agent wrote it.
    Transcript,
}

/// One file copied into the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// The name a reviewer knows it by: the declared output path, the path
    /// inside the artifact folder, or `session.log`.
    pub filename: String,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    pub stage: Stage,
    /// Where the copy is, relative to the session's folder of the store.
    pub path: String,
    pub bytes: u64,
}

/// A file the session produced that the store refused to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedFile {
    pub filename: String,
    pub stage: Stage,
    pub reason: String,
}

/// A declared input, hashed but not copied: it belongs to whoever produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashedInput {
    pub filename: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The session log's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRef {
    pub filename: String,
    pub sha256: String,
    /// Relative to the pack's folder.
    pub path: String,
    pub bytes: u64,
}

/// The audit summary of the gates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// No gate named like `test` failed or was left unrun.
    pub tests_passed: bool,
    /// No gate named like `lint` failed or was left unrun.
    pub lint_clean: bool,
    /// No gate named like `security`, `scan`, `sast`, `audit` or `vuln`
    /// failed or was left unrun.
    pub security_scan_clean: bool,
    /// Gates that failed, were repaired by their `fix`, then passed.
    pub gates_failed_and_auto_fixed: Vec<String>,
}

/// One reason the session needs a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// The same words as the session's reason (`gate test failed after 2 repairs`).
    pub reason: String,
    /// The required gate that could not be repaired, when that was the cause.
    pub gate: Option<String>,
}

/// The part of a session pack that verification reads; the rest is kept as
/// written. Lenient on purpose: it reads any pack that has these fields,
/// whatever else it has or lacks, and does not check `schema_version`
/// (readers ignore what they do not know, see `docs/evidence-pack.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SessionPackFiles {
    pub schema_version: u32,
    pub batch_id: String,
    pub unit_id: String,
    pub session_id: String,
    pub artifacts: Vec<PackedFile>,
    pub log: Option<PackedFile>,
}

/// A file a session pack lists, as verification reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PackedFile {
    pub filename: String,
    pub sha256: String,
    /// Where the file is, relative to the session pack's folder; a pack
    /// without it names a file nobody can check.
    pub path: Option<String>,
}

/// Derives the audit summary from the gates' names and results.
///
/// A kind of check is clean when no gate of that kind failed or was left
/// unrun; a unit with no gate of a kind is clean for it (nothing was asked).
pub fn verification(gates: &[GateReport], gates_not_run: &[String]) -> Verification {
    let clean = |words: &[&str]| {
        let named = |name: &str| {
            let name = name.to_lowercase();
            words.iter().any(|word| name.contains(word))
        };
        gates.iter().all(|g| g.passed || !named(&g.name))
            && !gates_not_run.iter().any(|name| named(name))
    };
    Verification {
        tests_passed: clean(&["test"]),
        lint_clean: clean(&["lint"]),
        security_scan_clean: clean(&["security", "scan", "sast", "audit", "vuln"]),
        gates_failed_and_auto_fixed: gates
            .iter()
            .filter(|g| g.passed && g.repairs > 0)
            .map(|g| g.name.clone())
            .collect(),
    }
}

/// A time as packs spell it: ISO 8601, UTC, milliseconds, `Z`.
pub fn iso8601(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Outcome;

    fn example_pack() -> SessionPack {
        let log = StoredFile {
            filename: "session.log".into(),
            sha256: "9e4b".into(),
            stage: Stage::Log,
            path: "session.log".into(),
            bytes: 412,
        };
        let gates = vec![GateReport {
            name: "test".into(),
            passed: true,
            required: true,
            repairs: 1,
            duration_ms: 41,
        }];
        SessionPack {
            schema_version: SCHEMA_VERSION,
            playbook: "plsql-to-pg".into(),
            batch_id: "b-1".into(),
            unit_id: "orders-pkg".into(),
            session_id: "s-1".into(),
            attempt: 1,
            worker: "build-7:4242".into(),
            timestamp: "2026-11-25T10:00:02.310Z".into(),
            started_at: "2026-11-25T10:00:00.120Z".into(),
            ended_at: "2026-11-25T10:00:02.295Z".into(),
            duration_ms: 2175,
            outcome: Outcome::Failed.as_str().into(),
            exit_code: None,
            reason: Some("gate lint failed after 2 repairs".into()),
            artifacts: vec![
                StoredFile {
                    filename: "out/pg/orders_pkg.sql".into(),
                    sha256: "5f0c".into(),
                    stage: Stage::Output,
                    path: "outputs/out/pg/orders_pkg.sql".into(),
                    bytes: 271,
                },
                log.clone(),
            ],
            rejected: vec![RejectedFile {
                filename: "../escape.sql".into(),
                stage: Stage::Output,
                reason: "it leaves the workdir".into(),
            }],
            inputs: vec![HashedInput {
                filename: "input/orders_pkg.sql".into(),
                sha256: "c3f1".into(),
                bytes: 247,
            }],
            log: Some(LogRef {
                filename: log.filename,
                sha256: log.sha256,
                path: log.path,
                bytes: log.bytes,
            }),
            verification: verification(&gates, &["lint".into()]),
            gates,
            gates_not_run: vec!["lint".into()],
            knowledge_updates: Vec::new(),
            escalations: vec![Escalation {
                reason: "gate lint failed after 2 repairs".into(),
                gate: None,
            }],
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            git: None,
            usage: Some(crate::agent::Usage {
                tokens_in: 1200,
                tokens_out: 300,
                turns: 2,
                ..Default::default()
            }),
            prices: None,
        }
    }

    #[test]
    fn a_pack_round_trips_through_json() {
        let pack = example_pack();
        let bytes = serde_json::to_vec_pretty(&pack).unwrap();
        let read: SessionPack = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read, pack);
        assert_eq!(serde_json::to_vec_pretty(&read).unwrap(), bytes);
    }

    #[test]
    fn a_pack_written_before_trace_ids_still_loads() {
        let mut value = serde_json::to_value(example_pack()).unwrap();
        value.as_object_mut().unwrap().remove("trace_id");
        let read: SessionPack = serde_json::from_value(value).unwrap();
        assert_eq!(read.trace_id, None);
        assert_eq!(read.session_id, "s-1");
    }

    #[test]
    fn fields_are_written_in_the_documented_order() {
        let text = serde_json::to_string(&example_pack()).unwrap();
        let order = [
            "schema_version",
            "playbook",
            "batch_id",
            "unit_id",
            "session_id",
            "attempt",
            "worker",
            "timestamp",
            "started_at",
            "ended_at",
            "duration_ms",
            "outcome",
            "exit_code",
            "reason",
            "artifacts",
            "rejected",
            "inputs",
            "log",
            "gates",
            "gates_not_run",
            "verification",
            "knowledge_updates",
            "escalations",
            "trace_id",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|field| {
                text.find(&format!("\"{field}\":"))
                    .unwrap_or_else(|| panic!("missing {field}: {text}"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        // Absent values are written as null, never skipped.
        assert!(text.contains("\"exit_code\":null"), "{text}");
        assert!(text.contains("\"stage\":\"output\""), "{text}");
    }

    #[test]
    fn the_reader_sees_what_the_writer_wrote() {
        let pack = example_pack();
        let bytes = serde_json::to_vec(&pack).unwrap();
        let files: SessionPackFiles = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(files.schema_version, SCHEMA_VERSION);
        assert_eq!(
            (files.batch_id, files.unit_id, files.session_id),
            (pack.batch_id, pack.unit_id, pack.session_id)
        );
        let listed: Vec<(&str, &str, Option<&str>)> = files
            .artifacts
            .iter()
            .chain(files.log.iter())
            .map(|f| (f.filename.as_str(), f.sha256.as_str(), f.path.as_deref()))
            .collect();
        assert_eq!(
            listed,
            vec![
                (
                    "out/pg/orders_pkg.sql",
                    "5f0c",
                    Some("outputs/out/pg/orders_pkg.sql")
                ),
                ("session.log", "9e4b", Some("session.log")),
                ("session.log", "9e4b", Some("session.log")),
            ]
        );
    }

    #[test]
    fn the_reader_does_not_check_the_schema_version() {
        // Readers ignore what they do not know; the version is reported, not
        // enforced, so a newer pack still verifies by its hashes.
        let mut json = serde_json::to_value(example_pack()).unwrap();
        json["schema_version"] = serde_json::json!(SCHEMA_VERSION + 1);
        json["a_future_field"] = serde_json::json!(true);
        let files: SessionPackFiles = serde_json::from_value(json).unwrap();
        assert_eq!(files.schema_version, SCHEMA_VERSION + 1);
    }

    #[test]
    fn verification_counts_unrun_gates_as_not_clean() {
        let v = example_pack().verification;
        assert!(v.tests_passed);
        assert!(!v.lint_clean, "a lint gate that never ran is not clean");
        assert!(v.security_scan_clean, "no scan was asked for");
        assert_eq!(v.gates_failed_and_auto_fixed, vec!["test".to_owned()]);
    }

    #[test]
    fn times_are_written_in_utc_with_milliseconds() {
        let time = DateTime::parse_from_rfc3339("2026-11-25T11:00:00.5+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(iso8601(time), "2026-11-25T10:00:00.500Z");
    }
}
