//! `regatta report`: a batch's report written as HTML, Markdown and JSON
//! (coordinator/src/report.rs says what is in it).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use regatta_coordinator::client::ApiClient;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::report::{render, Input, Report};

use super::Connection;

/// Which files to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Html,
    Md,
    Json,
    All,
}

pub async fn report(
    connection: &Connection,
    batch: &str,
    out: Option<&Path>,
    format: Format,
    manifest: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(&connection.api, connection.api_token.clone());
    let summary = api.batch(batch).await?;
    let units = api.units(batch, None).await?;
    let train = match summary.train {
        Some(_) => Some(api.train(batch).await?),
        None => None,
    };
    // Git mode: which of the branches waiting to land do not merge (a
    // repository that does not answer leaves that part out).
    let conflicts = match &train {
        Some(train) if !train.waiting_to_land.is_empty() => api.conflicts(batch).await.ok(),
        _ => None,
    };
    let manifest = match manifest {
        Some(path) => match Manifest::load(path) {
            Ok(manifest) => Some(manifest),
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!(
                    "{}: cannot read the manifest; no report written",
                    path.display()
                );
                return Ok(ExitCode::from(2));
            }
        },
        None => None,
    };
    let input = Input {
        summary,
        units,
        train,
        manifest,
        conflicts,
    };
    let started = std::time::Instant::now();
    let report = tokio::task::spawn_blocking(move || Report::build(&input))
        .await
        .context("the report task failed")?;
    let default_out = format!("regatta-report-{batch}");
    let out = out.unwrap_or(Path::new(&default_out));
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    let wanted = |f: Format| format == f || format == Format::All;
    if wanted(Format::Html) {
        written.push(("report.html", render::html(&report)));
    }
    if wanted(Format::Md) {
        written.push(("report.md", render::markdown(&report)));
    }
    if wanted(Format::Json) {
        written.push(("report.json", render::json(&report)));
    }
    for (name, text) in written {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    eprintln!(
        "report of {} sessions over {} units, {} failure clusters, in {:?}",
        report.sessions,
        report.units,
        report.clusters.len(),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
