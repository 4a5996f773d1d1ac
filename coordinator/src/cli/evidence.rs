//! `regatta evidence` gathers a batch's evidence into one folder;
//! `regatta verify-evidence` re-checks every hash in such a folder. The
//! logic is in [`regatta_coordinator::evidence`]; this file only talks to
//! the API and prints.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use regatta_coordinator::client::ApiClient;
use regatta_coordinator::evidence::{self, BatchFacts, BATCH_PACK_FILE, SIGNATURE_FILE};
use regatta_coordinator::manifest::Manifest;

use super::Connection;

/// Exit code 2: the evidence is incomplete or does not match its hashes.
const NOT_VERIFIED: u8 = 2;

/// `regatta evidence BATCH --out DIR [--artifact-dir STORE] [--manifest FILE]`
pub async fn evidence(
    connection: &Connection,
    batch: &str,
    out: &Path,
    store: &Path,
    manifest: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let Some(secret) = fleet_secret(connection)? else {
        eprintln!(
            "regatta: the batch pack is signed with the fleet secret: set REGATTA_SECRET_FILE (or REGATTA_SECRET) as for `regatta serve`"
        );
        return Ok(ExitCode::from(NOT_VERIFIED));
    };
    let api = ApiClient::new(&connection.api, connection.api_token.clone());
    let summary = api.batch(batch).await?;
    let units = api.units(batch, None).await?;
    if !summary.state.is_terminal() {
        eprintln!(
            "regatta: batch {batch} is still {}; units in flight are listed with their latest finished session",
            summary.state.as_str()
        );
    }
    let Some(manifest_sha256) = manifest_sha256(connection, batch, &summary.name, manifest).await?
    else {
        return Ok(ExitCode::from(NOT_VERIFIED));
    };
    let train = match summary.train {
        Some(_) => Some(api.train(batch).await?),
        None => None,
    };
    let facts = BatchFacts {
        batch_id: summary.id.clone(),
        batch_name: summary.name.clone(),
        batch_state: summary.state.as_str().to_owned(),
        manifest_sha256,
        train,
    };
    let (store, out_dir) = (store.to_path_buf(), out.to_path_buf());
    let assembled = tokio::task::spawn_blocking(move || {
        evidence::assemble(&facts, &units, &store, &out_dir, secret.as_bytes())
    })
    .await
    .context("the evidence task failed")??;
    for problem in &assembled.problems {
        eprintln!("{problem}");
    }
    println!(
        "{}: {} units, {} session packs, {} files",
        out.join(BATCH_PACK_FILE).display(),
        assembled.pack.units.len(),
        assembled.packs,
        assembled.files
    );
    if assembled.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "regatta: {} problems in the artifact store: the pack will not verify",
            assembled.problems.len()
        );
        Ok(ExitCode::from(NOT_VERIFIED))
    }
}

/// The sha256 of the batch's manifest: as the coordinator reports it, or
/// computed from `--manifest` (which must then be the batch's). `None`,
/// after saying why, when neither is available or they disagree.
async fn manifest_sha256(
    connection: &Connection,
    batch: &str,
    batch_name: &str,
    manifest: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let reported = reported_manifest_sha256(connection, batch).await;
    let computed = match manifest {
        None => None,
        Some(path) => {
            let manifest = match Manifest::load(path) {
                Ok(manifest) => manifest,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(None);
                }
            };
            if manifest.batch != batch_name {
                eprintln!(
                    "regatta: {} is the manifest of batch '{}', not of '{batch_name}'",
                    path.display(),
                    manifest.batch
                );
                return Ok(None);
            }
            Some(manifest.sha256())
        }
    };
    match (reported, computed) {
        (Some(reported), Some(computed)) if reported != computed => {
            eprintln!(
                "regatta: the manifest given hashes to {computed}, but batch {batch} ran under {reported}"
            );
            Ok(None)
        }
        (Some(sha256), _) | (None, Some(sha256)) => Ok(Some(sha256)),
        (None, None) => {
            eprintln!(
                "regatta: the coordinator does not report the manifest's sha256; pass --manifest FILE (the manifest batch {batch} was enqueued from)"
            );
            Ok(None)
        }
    }
}

/// Reads `manifest_sha256` from the batch's API record when the coordinator
/// provides it (a field newer than the typed client).
async fn reported_manifest_sha256(connection: &Connection, batch: &str) -> Option<String> {
    let url = format!(
        "{}/v1/batches/{batch}",
        connection.api.trim_end_matches('/')
    );
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = &connection.api_token {
        request = request.bearer_auth(token);
    }
    let value: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
    value
        .get("manifest_sha256")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The fleet's secret from `--secret-file` or `--secret` (or their
/// variables), checked as `serve` checks it; `None` when none was given.
fn fleet_secret(connection: &Connection) -> anyhow::Result<Option<regatta_secret::FleetSecret>> {
    match connection.load_secret() {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("regatta: {warning}");
            }
            Ok(Some(loaded.secret))
        }
        Err(regatta_secret::Error::Missing) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `regatta verify-evidence DIR`: each problem on its own line, then exit 2;
/// or one summary line and exit 0. With the fleet secret (`--secret-file`,
/// `REGATTA_SECRET`) the batch pack's signature is checked too; without it
/// only the hashes are, which anyone able to write the folder can recompute,
/// and a warning says so.
pub async fn verify(connection: &Connection, dir: &Path) -> anyhow::Result<ExitCode> {
    let folder = dir.to_path_buf();
    let secret = fleet_secret(connection)?;
    let result = tokio::task::spawn_blocking(move || {
        evidence::verify(&folder, secret.as_ref().map(|s| s.as_bytes()))
    })
    .await
    .context("the verification task failed")?;
    if !result.signature_checked {
        eprintln!(
            "regatta: {SIGNATURE_FILE} not checked: give the fleet secret (REGATTA_SECRET_FILE or REGATTA_SECRET) to check that the hashes themselves were not rewritten"
        );
    }
    if result.is_clean() {
        println!("{}", result.summary());
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &result.problems {
        println!("{problem}");
    }
    eprintln!(
        "regatta: {}: {} problems ({} session packs and {} files checked)",
        dir.display(),
        result.problems.len(),
        result.packs,
        result.files
    );
    Ok(ExitCode::from(NOT_VERIFIED))
}
