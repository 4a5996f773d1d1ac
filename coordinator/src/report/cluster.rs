//! Failure clusters: failed sessions grouped by a normalised signature of
//! their reason and log tail, so that a hundred failures with one cause are
//! one line to read, and two causes are never one.
//!
//! Two steps, in the spirit of Kubernetes' triage and of Drain:
//! 1. **mask** what varies between occurrences of one cause (numbers, hex
//!    ids, UUIDs, paths, timestamps) token by token;
//! 2. **merge** templates of the same cut (outcome, failing gate, playbook)
//!    and the same length that agree on most tokens, the tokens where they
//!    differ becoming `<*>`.
//!
//! A cluster's id is a hash of its cut and template: the same cause gets the
//! same id in two batches' reports.

use std::collections::BTreeMap;

use serde::Serialize;

/// How many lines at the end of a log tail take part in the signature.
const TAIL_LINES: usize = 3;
/// The share of tokens two templates must agree on to be one cause.
const MERGE_SIMILARITY: f64 = 0.7;

/// One failed session, as the clustering sees it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub unit: String,
    pub session_id: String,
    /// `failed`, `timed_out`, `lost`...
    pub outcome: String,
    /// The required gate that failed, if one did.
    pub gate: Option<String>,
    pub playbook: String,
    pub reason: String,
    pub log_tail: String,
    /// The session's evidence pack, to link to.
    pub evidence: Option<String>,
    /// What the session cost (report/cost.rs), when it reported usage.
    pub cost_usd: Option<f64>,
}

/// Failures with one cause.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cluster {
    /// 12 hex digits, stable across batches for the same cut and template.
    pub id: String,
    pub outcome: String,
    pub gate: Option<String>,
    pub playbook: String,
    /// The masked signature; `<*>` where occurrences differ.
    pub template: String,
    /// Failed sessions in it.
    pub sessions: usize,
    /// Units with a failed session in it, in order of first appearance.
    pub units: Vec<String>,
    /// One occurrence's reason and log tail, unmasked.
    pub example: String,
    /// Evidence packs of its sessions (at most 20).
    pub evidence: Vec<String>,
    /// What its sessions cost, summed over those that reported usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// Masks what varies between occurrences of one cause in `text`.
pub fn mask(text: &str) -> String {
    text.split_whitespace()
        .map(mask_token)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_token(token: &str) -> String {
    // Punctuation around a token is kept: `'/tmp/x':` stays `'<path>':`.
    let start = token
        .find(|c: char| c.is_alphanumeric() || c == '/' || c == '.' || c == '~')
        .unwrap_or(token.len());
    let end = token
        .rfind(|c: char| c.is_alphanumeric() || c == '/')
        .map(|i| i + 1)
        .unwrap_or(start)
        .max(start);
    let (before, core, after) = (&token[..start], &token[start..end], &token[end..]);
    let masked = if core.is_empty() {
        String::new()
    } else if core.contains('/') && core.len() > 1 {
        "<path>".to_owned()
    } else if is_uuid(core) {
        "<uuid>".to_owned()
    } else if is_hex_id(core) {
        "<hex>".to_owned()
    } else if is_timestamp(core) {
        "<ts>".to_owned()
    } else {
        mask_numbers(core)
    };
    format!("{before}{masked}{after}")
}

fn is_uuid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_hex_id(text: &str) -> bool {
    if let Some(digits) = text.strip_prefix("0x") {
        return !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit());
    }
    text.len() >= 7
        && text.bytes().all(|b| b.is_ascii_hexdigit())
        && text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().any(|b| b.is_ascii_alphabetic())
        || text.len() >= 12 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_timestamp(text: &str) -> bool {
    text.bytes().any(|b| b.is_ascii_digit())
        && (text.contains(':') || text.matches('-').count() == 2)
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b':' | b'-' | b'T' | b'Z' | b'.' | b'+'))
}

/// `item13` -> `item<n>`, `42` -> `<n>`.
fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push_str("<n>");
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// The masked signature of a failure: its reason and the end of its log.
pub fn signature(reason: &str, log_tail: &str) -> String {
    let lines: Vec<&str> = log_tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    let mut text = mask(reason);
    for line in tail {
        text.push_str(" | ");
        text.push_str(&mask(line));
    }
    text
}

/// Groups failures into clusters, largest first.
pub fn clusters(failures: &[Failure]) -> Vec<Cluster> {
    // Cut first: one cause is never split across, two never merged over.
    type Cut = (String, Option<String>, String);
    /// A template's tokens and the failures it holds.
    type Group = (Vec<String>, Vec<usize>);
    let mut by_cut: BTreeMap<Cut, Vec<Group>> = BTreeMap::new();
    for (index, failure) in failures.iter().enumerate() {
        let cut = (
            failure.outcome.clone(),
            failure.gate.clone(),
            failure.playbook.clone(),
        );
        let tokens: Vec<String> = signature(&failure.reason, &failure.log_tail)
            .split(' ')
            .map(str::to_owned)
            .collect();
        let groups = by_cut.entry(cut).or_default();
        match groups
            .iter_mut()
            .find(|(template, _)| similar(template, &tokens))
        {
            Some((template, members)) => {
                for (kept, new) in template.iter_mut().zip(&tokens) {
                    if kept != new {
                        *kept = "<*>".to_owned();
                    }
                }
                members.push(index);
            }
            None => groups.push((tokens, vec![index])),
        }
    }
    let mut out = Vec::new();
    for ((outcome, gate, playbook), groups) in by_cut {
        for (template, members) in groups {
            let template = template.join(" ");
            let mut units: Vec<String> = Vec::new();
            for &m in &members {
                if !units.contains(&failures[m].unit) {
                    units.push(failures[m].unit.clone());
                }
            }
            let first = &failures[members[0]];
            out.push(Cluster {
                id: cluster_id(&outcome, gate.as_deref(), &playbook, &template),
                outcome: outcome.clone(),
                gate: gate.clone(),
                playbook: playbook.clone(),
                template,
                sessions: members.len(),
                units,
                example: example(first),
                evidence: members
                    .iter()
                    .filter_map(|&m| failures[m].evidence.clone())
                    .take(20)
                    .collect(),
                cost_usd: members
                    .iter()
                    .filter_map(|&m| failures[m].cost_usd)
                    .reduce(|a, b| a + b),
            });
        }
    }
    out.sort_by(|a, b| b.sessions.cmp(&a.sessions).then(a.id.cmp(&b.id)));
    out
}

/// Same length, and agreeing on most tokens.
fn similar(a: &[String], b: &[String]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len() as f64 >= MERGE_SIMILARITY
}

fn cluster_id(outcome: &str, gate: Option<&str>, playbook: &str, template: &str) -> String {
    let key = format!("{outcome}\n{}\n{playbook}\n{template}", gate.unwrap_or(""));
    regatta_proto::evidence::digest::sha256_hex(key.as_bytes())[..12].to_owned()
}

fn example(failure: &Failure) -> String {
    let lines: Vec<&str> = failure.log_tail.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n");
    if tail.trim().is_empty() {
        failure.reason.clone()
    } else {
        format!("{}\n{tail}", failure.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(unit: &str, gate: Option<&str>, reason: &str, log: &str) -> Failure {
        Failure {
            unit: unit.into(),
            session_id: format!("s-{unit}"),
            outcome: "failed".into(),
            gate: gate.map(str::to_owned),
            playbook: "p".into(),
            reason: reason.into(),
            log_tail: log.into(),
            evidence: None,
            cost_usd: None,
        }
    }

    #[test]
    fn masking_hides_numbers_ids_paths_and_times() {
        assert_eq!(
            mask("psql: error at line 42 in /srv/x/a.sql (session 9f86d081884c7d65)"),
            "psql: error at line <n> in <path> (session <hex>)"
        );
        assert_eq!(
            mask("2026-11-27T20:37:18Z request 3fa85f64-5717-4562-b3fc-2c963f66afa6 took 12ms"),
            "<ts> request <uuid> took <n>ms"
        );
        assert_eq!(
            mask("expected 'fetched:item13'"),
            "expected 'fetched:item<n>'"
        );
    }

    #[test]
    fn one_cause_with_different_numbers_and_paths_is_one_cluster() {
        let failures = vec![
            failure(
                "a",
                Some("test"),
                "gate test failed after 2 repairs",
                "FAIL tests/a_test.py line 12: assert 3 == 4",
            ),
            failure(
                "b",
                Some("test"),
                "gate test failed after 2 repairs",
                "FAIL tests/b_test.py line 97: assert 1 == 0",
            ),
            failure(
                "c",
                Some("test"),
                "gate test failed after 2 repairs",
                "FAIL tests/c_test.py line 5: assert 8 == 9",
            ),
        ];
        let clusters = clusters(&failures);
        assert_eq!(clusters.len(), 1, "{clusters:#?}");
        assert_eq!(clusters[0].units, vec!["a", "b", "c"]);
        assert_eq!(clusters[0].sessions, 3);
    }

    #[test]
    fn different_messages_gates_and_outcomes_are_not_merged() {
        let mut timed_out = failure("d", None, "the deadline of 30m passed", "");
        timed_out.outcome = "timed_out".into();
        let failures = vec![
            failure("a", Some("test"), "gate test failed", "FAIL: assert 3 == 4"),
            // The same text from another gate is another cause.
            failure("b", Some("lint"), "gate test failed", "FAIL: assert 3 == 4"),
            // Another message in the same gate is another cause.
            failure(
                "c",
                Some("test"),
                "gate test failed",
                "connection refused by the database server",
            ),
            timed_out,
        ];
        let clusters = clusters(&failures);
        assert_eq!(clusters.len(), 4, "{clusters:#?}");
    }

    #[test]
    fn near_identical_messages_merge_and_mark_where_they_differ() {
        let failures = vec![
            failure(
                "a",
                None,
                "the command exited with status 1",
                "error: table customers does not exist",
            ),
            failure(
                "b",
                None,
                "the command exited with status 1",
                "error: table orders does not exist",
            ),
        ];
        let clusters = clusters(&failures);
        assert_eq!(clusters.len(), 1, "{clusters:#?}");
        assert!(
            clusters[0].template.contains("table <*> does not exist"),
            "{}",
            clusters[0].template
        );
    }

    #[test]
    fn a_cluster_id_is_stable_for_the_same_cause() {
        let one = clusters(&[failure("a", None, "exit 1", "boom at 0x1f")]);
        let two = clusters(&[failure("z", None, "exit 1", "boom at 0x2e")]);
        assert_eq!(one[0].id, two[0].id);
        assert_eq!(one[0].id.len(), 12);
    }
}
