//! `regatta validate` and `regatta plan`: offline checks of a manifest.

use std::path::Path;
use std::process::ExitCode;

use regatta_coordinator::dag::Dag;
use regatta_coordinator::manifest::{Manifest, ManifestErrors};
use regatta_coordinator::plan::Plan;

/// Exit code 2: the manifest was refused.
const REFUSED: u8 = 2;

fn load(path: &Path) -> Result<(Manifest, Dag), ManifestErrors> {
    let manifest = Manifest::load(path)?;
    let dag = Dag::build(&manifest)?;
    Ok((manifest, dag))
}

fn refuse(path: &Path, errors: &ManifestErrors, json: bool) -> ExitCode {
    if json {
        let list: Vec<serde_json::Value> = errors
            .errors
            .iter()
            .map(|e| {
                serde_json::json!({
                    "source": e.source,
                    "line": e.line,
                    "column": e.column,
                    "unit": e.unit,
                    "message": e.kind.to_string(),
                })
            })
            .collect();
        let value = serde_json::json!({"valid": false, "manifest": path.display().to_string(), "errors": list});
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        eprintln!("{errors}");
        eprintln!("{}: {} error(s)", path.display(), errors.errors.len());
    }
    ExitCode::from(REFUSED)
}

pub fn validate(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    match load(path) {
        Ok((manifest, dag)) => {
            if json {
                let value = serde_json::json!({"valid": true, "manifest": path.display().to_string(), "summary": manifest.summary(&dag)});
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{}", manifest.summary(&dag));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => Ok(refuse(path, &errors, json)),
    }
}

pub fn plan(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    match load(path) {
        Ok((manifest, dag)) => {
            let plan = Plan::of(&manifest, &dag);
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => Ok(refuse(path, &errors, json)),
    }
}
