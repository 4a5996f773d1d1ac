//! Git mode's commands (docs/git-mode.md): `merge` starts a manual train,
//! `train` shows its history, `conflicts` the branches that do not merge.

use std::process::ExitCode;

use regatta_coordinator::client::ApiClient;
use regatta_coordinator::service::{ConflictsView, TrainView};

use super::Connection;

fn client(connection: &Connection) -> ApiClient {
    ApiClient::new(&connection.api, connection.api_token.clone())
}

pub async fn merge(connection: &Connection, batch: &str) -> anyhow::Result<ExitCode> {
    let train = client(connection).merge(batch).await?;
    println!(
        "merge train of {} started: {} landed, {} waiting to land, target {} at {}",
        train.batch_id,
        train.landed.len(),
        train.waiting_to_land.len(),
        train.target,
        short(train.tip.as_deref())
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn show(connection: &Connection, batch: &str, json: bool) -> anyhow::Result<ExitCode> {
    let train = client(connection).train(batch).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&train)?);
    } else {
        print!("{}", render_train(&train));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn conflicts(
    connection: &Connection,
    batch: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let view = client(connection).conflicts(batch).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render_conflicts(&view));
    }
    Ok(ExitCode::SUCCESS)
}

/// A commit id as people compare them.
fn short(commit: Option<&str>) -> &str {
    commit.map(|c| &c[..c.len().min(12)]).unwrap_or("-")
}

fn render_train(train: &TrainView) -> String {
    let mut out = format!(
        "train of {} onto {} ({}, {}): target at {}, window {}\n",
        train.batch_id,
        train.target,
        train.merge,
        if train.started {
            "running"
        } else {
            "waiting for `regatta merge`"
        },
        short(train.tip.as_deref()),
        train.window,
    );
    if let Some(why) = &train.waiting {
        out.push_str(&format!("waiting: {why}\n"));
    }
    out.push_str(&format!(
        "landed {}, waiting to land {}{}\n",
        train.landed.len(),
        train.waiting_to_land.len(),
        if train.suspects.is_empty() {
            String::new()
        } else {
            format!(", bisecting {}", train.suspects.join(" "))
        }
    ));
    for c in &train.candidates {
        let units: Vec<&str> = c.units.iter().map(|(u, _)| u.as_str()).collect();
        out.push_str(&format!(
            "#{:<4} {:<10} {}{} on {} -> {}\n",
            c.id,
            c.state,
            if c.bisecting { "(bisect) " } else { "" },
            if units.is_empty() {
                "-".to_owned()
            } else {
                units.join(" ")
            },
            short(c.tip.as_deref()),
            short(c.commit.as_deref()),
        ));
        if let Some(detail) = &c.detail {
            for line in detail.lines().take(6) {
                out.push_str(&format!("       {line}\n"));
            }
        }
    }
    out
}

fn render_conflicts(view: &ConflictsView) -> String {
    let mut out = format!(
        "{} branches of {} checked against each other and {} at {}: {} conflicting pairs\n",
        view.branches.len(),
        view.batch_id,
        view.target,
        short(Some(&view.tip)),
        view.conflicts.len()
    );
    for c in &view.conflicts {
        out.push_str(&format!("{} x {}: {}\n", c.a, c.b, c.files.join(", ")));
    }
    out
}
