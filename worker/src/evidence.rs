//! Session evidence packs: when a session ends (succeeded or not), its files
//! go into the [`artifact`](crate::artifact) store and `evidence-pack.json`
//! is written beside them, saying what ran, what each gate concluded, what
//! was repaired, what escalated, and the sha256 of every stored file.
//!
//! The pack is a superset of the shape teams already file for audits
//! (`playbook`, `session_id`, `timestamp`, `artifacts`, `verification`,
//! `knowledge_updates`, `escalations`); its types, shared with the
//! coordinator that reads it, are in [`regatta_proto::evidence`], and its
//! versioned schema is documented in `docs/evidence-pack.md`. The finished event carries the
//! pack's path and sha256, so the coordinator can vouch for it later.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use regatta_proto::evidence::{
    iso8601, verification, Escalation, LogRef, PricesRef, SessionPack, PACK_FILE, SCHEMA_VERSION,
};
use regatta_proto::{EvidenceRef, GateReport, Outcome, WorkOrder};
use sha2::{Digest, Sha256};

use crate::artifact::{ArtifactError, ArtifactStore, Collection, SessionFiles};
use crate::session_log::KeptLog;

/// What the worker knows about a session once it is over.
#[derive(Debug, Clone)]
pub struct SessionEnd<'a> {
    pub order: &'a WorkOrder,
    pub worker: &'a str,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub reason: Option<&'a str>,
    pub gates: &'a [GateReport],
    /// What the session's log kept ([`crate::session_log`]).
    pub log: &'a KeptLog,
    /// The session's `REGATTA_ARTIFACT_DIR`.
    pub artifact_dir: &'a Path,
    /// The session's trace, when spans are exported.
    pub trace_id: Option<&'a str>,
    /// Git mode: what the session did with the repository.
    pub git: Option<&'a regatta_proto::GitReport>,
    /// What the session used, also when it was killed over its budget.
    pub usage: Option<&'a regatta_proto::Usage>,
    /// The agent's stdout, stored with stage `transcript`.
    pub transcript: Option<&'a Path>,
    /// The price table the usage was priced with.
    pub prices: Option<&'a regatta_proto::Prices>,
}

/// Why a session's evidence could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The pack could not be written: check the store's disk.
    #[error("cannot write the evidence pack {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the evidence pack: {0}")]
    Encode(#[from] serde_json::Error),
}

impl EvidenceError {
    /// Says whether the worker's own store failed (cannot be written, full,
    /// tampered with), rather than a file of the session: such a fault is
    /// not the unit's, and the session is handed back uncounted.
    pub fn is_worker_fault(&self) -> bool {
        match self {
            EvidenceError::Artifact(ArtifactError::Source { .. })
            | EvidenceError::Artifact(ArtifactError::UnsafeId(_)) => false,
            EvidenceError::Artifact(_) | EvidenceError::Write { .. } | EvidenceError::Encode(_) => {
                true
            }
        }
    }
}

/// Stores a session's files and writes its pack. A session whose evidence
/// cannot be stored must not count as succeeded: the caller decides what
/// it becomes (see `fault`).
pub async fn record_session(
    store: &ArtifactStore,
    end: &SessionEnd<'_>,
) -> Result<EvidenceRef, EvidenceError> {
    let written = write_session_pack(store, end).await;
    match &written {
        Ok(evidence) => {
            tracing::debug!(path = %evidence.path, sha256 = %evidence.sha256, "evidence pack written");
        }
        Err(e) => {
            tracing::error!(error = %e, store = %store.root().display(), "cannot record the session's evidence");
        }
    }
    written
}

/// Copies the session's files into the store, writes `evidence-pack.json`
/// beside them, makes them all durable ([`crate::durable`]) and returns
/// where the pack is and its sha256.
pub async fn write_session_pack(
    store: &ArtifactStore,
    end: &SessionEnd<'_>,
) -> Result<EvidenceRef, EvidenceError> {
    let order = end.order;
    let files = SessionFiles {
        batch_id: order.batch_id.clone(),
        unit_id: order.unit_id.clone(),
        session_id: order.session_id.clone(),
        workdir: PathBuf::from(&order.workdir),
        outputs: order.outputs.clone(),
        inputs: order.inputs.clone(),
        artifact_dir: end.artifact_dir.to_path_buf(),
        log: end.log.clone(),
        transcript_path: end.transcript.map(Path::to_path_buf),
    };
    let mut collection = store.collect(files).await?;
    let pack = build_pack(end, &collection, Utc::now());
    let mut bytes = serde_json::to_vec_pretty(&pack)?;
    bytes.push(b'\n');
    let path = collection.session_dir.join(PACK_FILE);
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let target = path.clone();
    tokio::task::spawn_blocking(move || write_new(&target, &bytes))
        .await
        .map_err(|e| EvidenceError::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| EvidenceError::Write {
            path: path.display().to_string(),
            source,
        })?;
    collection.to_sync.push(path.clone());
    crate::durable::sync(std::mem::take(&mut collection.to_sync))
        .await
        .map_err(|why| EvidenceError::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(why),
        })?;
    Ok(EvidenceRef {
        path: path.display().to_string(),
        sha256,
    })
}

/// Writes a file that must not exist, so a symlink in its place is never
/// followed; [`crate::durable`] syncs it with the rest of the session's.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)
}

/// Builds the pack of a session from what it did and what was stored.
pub fn build_pack(
    end: &SessionEnd<'_>,
    collection: &Collection,
    now: DateTime<Utc>,
) -> SessionPack {
    let order = end.order;
    let gates_not_run: Vec<String> = order
        .gates
        .iter()
        .filter(|spec| !end.gates.iter().any(|report| report.name == spec.name))
        .map(|spec| spec.name.clone())
        .collect();
    let escalations = match end.reason {
        Some(reason) if end.outcome.counts_as_attempt() => vec![Escalation {
            reason: reason.to_owned(),
            gate: end
                .gates
                .iter()
                .find(|g| g.required && !g.passed)
                .map(|g| g.name.clone()),
        }],
        _ => Vec::new(),
    };
    SessionPack {
        schema_version: SCHEMA_VERSION,
        playbook: order.playbook.clone(),
        batch_id: order.batch_id.clone(),
        unit_id: order.unit_id.clone(),
        session_id: order.session_id.clone(),
        attempt: order.attempt,
        worker: end.worker.to_owned(),
        timestamp: iso8601(now),
        started_at: iso8601(end.started_at),
        ended_at: iso8601(end.ended_at),
        duration_ms: (end.ended_at - end.started_at).num_milliseconds().max(0) as u64,
        outcome: end.outcome.as_str().to_owned(),
        exit_code: end.exit_code,
        reason: end.reason.map(str::to_owned),
        artifacts: collection.files.clone(),
        rejected: collection.rejected.clone(),
        inputs: collection.inputs.clone(),
        log: collection.log().map(|log| LogRef {
            filename: log.filename.clone(),
            sha256: log.sha256.clone(),
            path: log.path.clone(),
            bytes: log.bytes,
        }),
        verification: verification(end.gates, &gates_not_run),
        gates: end.gates.to_vec(),
        gates_not_run,
        knowledge_updates: Vec::new(),
        escalations,
        trace_id: end.trace_id.map(str::to_owned),
        git: end.git.cloned(),
        usage: end.usage.cloned(),
        prices: end.prices.map(|prices| PricesRef {
            version: prices.version.clone(),
            sha256: prices.sha256(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regatta_proto::evidence::{Stage, StoredFile};

    fn gate(name: &str, passed: bool, repairs: u32) -> GateReport {
        GateReport {
            name: name.into(),
            passed,
            required: true,
            repairs,
            duration_ms: 5,
        }
    }

    #[test]
    fn verification_follows_gate_names() {
        let gates = [
            gate("build", true, 0),
            gate("unit-tests", true, 1),
            gate("Lint", false, 2),
        ];
        let v = verification(&gates, &["security-scan".into()]);
        assert!(v.tests_passed);
        assert!(!v.lint_clean);
        assert!(!v.security_scan_clean, "a scan that never ran is not clean");
        assert_eq!(v.gates_failed_and_auto_fixed, vec!["unit-tests".to_owned()]);
        let none = verification(&[], &[]);
        assert!(none.tests_passed && none.lint_clean && none.security_scan_clean);
    }

    fn end<'a>(
        order: &'a WorkOrder,
        gates: &'a [GateReport],
        outcome: Outcome,
        reason: Option<&'a str>,
    ) -> SessionEnd<'a> {
        let started_at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        SessionEnd {
            order,
            worker: "w0",
            started_at,
            ended_at: started_at + chrono::Duration::milliseconds(1500),
            outcome,
            exit_code: Some(0),
            reason,
            gates,
            log: &KeptLog::Empty,
            artifact_dir: Path::new("/nowhere/artifacts"),
            usage: None,
            transcript: None,
            prices: None,
            trace_id: None,
            git: None,
        }
    }

    #[test]
    fn the_pack_has_the_audit_fields_with_their_names() {
        let order = WorkOrder::example();
        let gates = [gate("test", true, 1)];
        let collection = Collection {
            files: vec![StoredFile {
                filename: "session.log".into(),
                sha256: "ab".into(),
                stage: Stage::Log,
                path: "session.log".into(),
                bytes: 2,
            }],
            ..Collection::default()
        };
        let pack = build_pack(
            &end(&order, &gates, Outcome::Succeeded, None),
            &collection,
            Utc::now(),
        );
        let json = serde_json::to_value(&pack).unwrap();
        for field in [
            "playbook",
            "session_id",
            "timestamp",
            "artifacts",
            "verification",
            "knowledge_updates",
            "escalations",
            "schema_version",
            "unit_id",
            "batch_id",
            "attempt",
            "started_at",
            "ended_at",
            "outcome",
            "exit_code",
            "gates",
            "log",
        ] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        assert_eq!(json["playbook"], "plsql-to-pg");
        assert_eq!(json["started_at"], "2026-11-25T10:00:00.000Z");
        assert_eq!(json["ended_at"], "2026-11-25T10:00:01.500Z");
        assert_eq!(json["duration_ms"], 1500);
        assert_eq!(json["outcome"], "succeeded");
        assert_eq!(json["artifacts"][0]["stage"], "log");
        assert_eq!(json["log"]["filename"], "session.log");
        assert_eq!(json["log"]["sha256"], "ab");
        assert_eq!(
            json["verification"]["gates_failed_and_auto_fixed"],
            serde_json::json!(["test"])
        );
        assert_eq!(json["gates"][0]["repairs"], 1);
        assert_eq!(json["escalations"], serde_json::json!([]));
        assert_eq!(json["knowledge_updates"], serde_json::json!([]));
    }

    #[test]
    fn a_failed_session_escalates_with_its_gate() {
        let order = WorkOrder::example();
        let gates = [gate("test", false, 2)];
        let reason = "gate test failed after 2 repairs";
        let pack = build_pack(
            &end(&order, &gates, Outcome::Failed, Some(reason)),
            &Collection::default(),
            Utc::now(),
        );
        assert_eq!(
            pack.escalations,
            vec![Escalation {
                reason: reason.into(),
                gate: Some("test".into())
            }]
        );
        assert!(!pack.verification.tests_passed);
        // An interrupted session is not the unit's fault: nothing escalates.
        let pack = build_pack(
            &end(&order, &[], Outcome::Interrupted, Some("worker shut down")),
            &Collection::default(),
            Utc::now(),
        );
        assert!(pack.escalations.is_empty());
        assert_eq!(pack.gates_not_run, vec!["test".to_owned()]);
    }

    #[tokio::test]
    async fn a_written_pack_hashes_to_its_reference() {
        let temp = tempfile::tempdir().unwrap();
        let session = temp.path().join("work/s");
        std::fs::create_dir_all(session.join("artifacts")).unwrap();
        std::fs::write(session.join("artifacts/notes.md"), "notes").unwrap();
        let mut order = WorkOrder::example();
        order.workdir = temp.path().display().to_string();
        order.outputs = vec!["out.sql".into()];
        order.inputs = vec!["in.sql".into()];
        std::fs::write(temp.path().join("out.sql"), "select 1;").unwrap();
        std::fs::write(temp.path().join("in.sql"), "begin null; end;").unwrap();
        let store = ArtifactStore::new(temp.path().join("store"));
        let log = KeptLog::Memory(b"hello\n".to_vec());
        let artifact_dir = session.join("artifacts");
        let gates = [gate("test", true, 0)];
        let end = SessionEnd {
            log: &log,
            artifact_dir: &artifact_dir,
            usage: None,
            transcript: None,
            prices: None,
            ..end(&order, &gates, Outcome::Succeeded, None)
        };
        let evidence = write_session_pack(&store, &end).await.unwrap();
        assert!(Path::new(&evidence.path).is_absolute());
        assert!(evidence
            .path
            .ends_with("b-1/customer-pkg/s-1/evidence-pack.json"));
        let bytes = std::fs::read(&evidence.path).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), evidence.sha256);
        let pack: SessionPack = serde_json::from_slice(&bytes).unwrap();
        let stages: Vec<(&str, serde_json::Value)> = pack
            .artifacts
            .iter()
            .map(|a| (a.filename.as_str(), serde_json::to_value(a.stage).unwrap()))
            .collect();
        assert_eq!(
            stages,
            vec![
                ("out.sql", serde_json::json!("output")),
                ("notes.md", serde_json::json!("artifact")),
                ("session.log", serde_json::json!("log"))
            ]
        );
        assert_eq!(pack.inputs.len(), 1);
        assert_eq!(pack.inputs[0].filename, "in.sql");
        let dir = Path::new(&evidence.path).parent().unwrap();
        for artifact in &pack.artifacts {
            let stored = std::fs::read(dir.join(&artifact.path)).unwrap();
            assert_eq!(hex::encode(Sha256::digest(&stored)), artifact.sha256);
        }
    }
}
