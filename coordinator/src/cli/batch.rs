//! The commands that submit and steer batches through the HTTP API.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use regatta_coordinator::client::ApiClient;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{BatchState, UnitState};
use regatta_coordinator::service::BatchSummary;

use super::path_map::PathMap;
use super::Connection;

fn client(connection: &Connection) -> ApiClient {
    ApiClient::new(&connection.api, connection.api_token.clone())
}

/// Exit code 2: the input was refused (a bad manifest).
const REFUSED: u8 = 2;

pub async fn enqueue(
    connection: &Connection,
    path: &Path,
    path_map: Option<&PathMap>,
    wait: bool,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let mut manifest = match Manifest::load(path) {
        Ok(manifest) => manifest,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: refused, nothing was enqueued", path.display());
            return Ok(ExitCode::from(REFUSED));
        }
    };
    if let Some(map) = path_map {
        if let Err(error) = map.apply(&mut manifest) {
            eprintln!("{error}");
            eprintln!("{}: refused, nothing was enqueued", path.display());
            return Ok(ExitCode::from(REFUSED));
        }
    }
    let api = client(connection);
    let batch_id = api.enqueue(&manifest).await?;
    println!("{batch_id}");
    if watch {
        return follow(&api, &batch_id, true).await;
    }
    if wait {
        return follow(&api, &batch_id, false).await;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn watch(connection: &Connection, batch: &str) -> anyhow::Result<ExitCode> {
    follow(&client(connection), batch, true).await
}

/// Polls a batch until it ends; with `show`, draws a progress bar (or plain
/// lines when stderr is not a terminal). Exit 0 when it succeeded.
async fn follow(api: &ApiClient, batch: &str, show: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let summary = api.batch(batch).await?;
        if show {
            let line = progress_line(&summary, started.elapsed());
            if tty {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
            } else if line != last_line {
                eprintln!("{line}");
            }
            last_line = line;
        }
        if summary.state.is_terminal() {
            if show && tty {
                eprintln!();
            }
            if show {
                eprintln!("batch {batch} {}", summary.state.as_str());
            }
            return Ok(if summary.state == BatchState::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(Duration::from_millis(if show { 250 } else { 200 })).await;
    }
}

fn count(summary: &BatchSummary, state: UnitState) -> usize {
    summary.counts.get(&state).copied().unwrap_or(0)
}

/// `[#######---------] 12/20 done · 3 running · 1 needs review · ETA 14s`
fn progress_line(summary: &BatchSummary, elapsed: Duration) -> String {
    let done = count(summary, UnitState::Succeeded)
        + count(summary, UnitState::Landed)
        + count(summary, UnitState::Skipped);
    let finished = done
        + count(summary, UnitState::NeedsReview)
        + count(summary, UnitState::Blocked)
        + count(summary, UnitState::Cancelled);
    let total = summary.total.max(1);
    let width = 30;
    let filled = finished * width / total;
    let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
    let eta = if finished > 0 && finished < total {
        let per_unit = elapsed.as_secs_f64() / finished as f64;
        format!(
            " · ETA {}s",
            (per_unit * (total - finished) as f64).ceil() as u64
        )
    } else {
        String::new()
    };
    let mut line = format!(
        "[{bar}] {done}/{} done · {} running · {} queued",
        summary.total,
        count(summary, UnitState::Running),
        count(summary, UnitState::Queued)
    );
    for (state, label) in [
        (UnitState::NeedsReview, "needs review"),
        (UnitState::Blocked, "blocked"),
        (UnitState::Cancelled, "cancelled"),
    ] {
        let n = count(summary, state);
        if n > 0 {
            line.push_str(&format!(" · {n} {label}"));
        }
    }
    line.push_str(&format!(" · {}{eta}", summary.state.as_str()));
    line
}

pub async fn status(
    connection: &Connection,
    batch: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let api = client(connection);
    match batch {
        None => {
            let batches = api.batches().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&batches)?);
            } else if batches.is_empty() {
                println!("no batches");
            } else {
                for summary in &batches {
                    println!(
                        "{:<40} {:<10} {}",
                        summary.id,
                        summary.state.as_str(),
                        counts_text(summary)
                    );
                }
            }
            if !json {
                print_workers(&api).await;
            }
        }
        Some(batch) => {
            let summary = api.batch(batch).await?;
            let waiting = api.units(batch, Some("ready")).await?;
            if json {
                let workers = api.workers().await.unwrap_or_default();
                let value =
                    serde_json::json!({"batch": summary, "ready": waiting, "workers": workers});
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "batch {} ({}): {}",
                summary.id,
                summary.name,
                summary.state.as_str()
            );
            println!("units: {} total, {}", summary.total, counts_text(&summary));
            println!("concurrency cap: {}", summary.concurrency);
            if let Some(budget) = &summary.budget {
                println!("{budget}");
            }
            if let Some(train) = &summary.train {
                let tip = train.tip.as_deref().map(|t| &t[..t.len().min(12)]);
                println!(
                    "merge train onto {} at {}: {} landed, {} waiting to land, {} candidates tested ({} passed, {} failed){}",
                    train.target,
                    tip.unwrap_or("-"),
                    train.landed,
                    train.waiting_to_land,
                    train.tested,
                    train.passed,
                    train.failed,
                    if train.started { "" } else { "; waiting for `regatta merge`" }
                );
                if let Some(why) = &train.waiting {
                    println!("merge train waits: {why}");
                }
                if train.waiting_to_land > 1 {
                    if let Ok(view) = api.conflicts(batch).await {
                        for c in &view.conflicts {
                            println!("conflict: {} x {}: {}", c.a, c.b, c.files.join(", "));
                        }
                    }
                }
            }
            for resource in &summary.resources {
                println!(
                    "resource {}: {}/{} in use",
                    resource.name, resource.in_use, resource.capacity
                );
            }
            for unit in waiting.iter().filter(|u| u.waiting_for.is_some()).take(20) {
                println!(
                    "  {} waits for {}",
                    unit.id,
                    unit.waiting_for.as_deref().unwrap_or("?")
                );
            }
            print_workers(&api).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `workers: 3 live, 1 unhealthy`, then why each unhealthy one takes no
/// work; nothing from a coordinator too old to list them.
async fn print_workers(api: &ApiClient) {
    let Ok(workers) = api.workers().await else {
        return;
    };
    let unhealthy: Vec<_> = workers.iter().filter(|w| !w.healthy).collect();
    println!(
        "workers: {} live, {} unhealthy",
        workers.len(),
        unhealthy.len()
    );
    for worker in unhealthy {
        println!(
            "  worker {} takes no work: {}",
            worker.worker,
            worker.reason.as_deref().unwrap_or("unhealthy")
        );
    }
}

fn counts_text(summary: &BatchSummary) -> String {
    summary
        .counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn sessions(
    connection: &Connection,
    batch: &str,
    state: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let sessions = client(connection).sessions(batch, state).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &sessions {
        let gates: Vec<String> = s
            .gates
            .iter()
            .map(|g| {
                format!(
                    "{}:{}{}",
                    g.name,
                    if g.passed { "pass" } else { "FAIL" },
                    if g.repairs > 0 {
                        format!("(repaired x{})", g.repairs)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        println!(
            "{:<24} #{:<2} {:<12} {:<32} {}{}{}{}",
            s.unit,
            s.attempt,
            s.state,
            s.session_id,
            s.worker.as_deref().unwrap_or("-"),
            s.usage
                .as_ref()
                .map(|u| format!("  usage {u}"))
                .unwrap_or_default(),
            if gates.is_empty() {
                String::new()
            } else {
                format!("  gates {}", gates.join(" "))
            },
            s.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn retry(
    connection: &Connection,
    batch: &str,
    unit: Option<&str>,
    needs_review: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        unit.is_some() || needs_review,
        "name a unit, or pass --needs-review to retry every unit that needs review"
    );
    let summary = client(connection).retry(batch, unit).await?;
    println!("batch {}: {}", summary.id, summary.state.as_str());
    Ok(ExitCode::SUCCESS)
}

pub async fn skip(connection: &Connection, batch: &str, unit: &str) -> anyhow::Result<ExitCode> {
    let summary = client(connection).skip(batch, unit).await?;
    println!("batch {}: {}", summary.id, summary.state.as_str());
    Ok(ExitCode::SUCCESS)
}

pub async fn control(
    connection: &Connection,
    batch: &str,
    action: &str,
) -> anyhow::Result<ExitCode> {
    let summary = client(connection)
        .control(batch, action)
        .await
        .with_context(|| format!("{action} {batch}"))?;
    println!("batch {}: {}", summary.id, summary.state.as_str());
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(connection: &Connection, batch: &str, unit: &str) -> anyhow::Result<ExitCode> {
    let log = client(connection).log(batch, unit).await?;
    if let Some(session) = &log.session_id {
        eprintln!("session {session}: {}", log.log_path);
    }
    println!("{}", log.tail);
    Ok(ExitCode::SUCCESS)
}

pub async fn leases(connection: &Connection, json: bool) -> anyhow::Result<ExitCode> {
    let leases = client(connection).leases().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&leases)?);
        return Ok(ExitCode::SUCCESS);
    }
    if leases.is_empty() {
        println!("no live leases");
    }
    let now = chrono::Utc::now().timestamp_millis();
    for lease in &leases {
        let held: Vec<String> = lease
            .semaphores
            .iter()
            .map(|(k, w)| format!("{k}x{w}"))
            .collect();
        println!(
            "{:<32} {:<16} {}/{} #{} fence {} expires in {} ms  {}",
            lease.session_id,
            lease.worker,
            lease.batch_id,
            lease.unit_id,
            lease.attempt,
            lease.fencing,
            lease.expires_at_ms - now,
            held.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
