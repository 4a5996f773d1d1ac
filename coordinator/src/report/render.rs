//! A report in three formats: one self-contained HTML file (inline CSS and
//! SVG, nothing fetched when it is opened), Markdown, and JSON for scripts.

use std::fmt::Write as _;

use super::timeline::Timeline;
use super::tune::duration_text;
use super::Report;

/// The most session bars the HTML draws: beyond, the longest are drawn and
/// the page says how many were left out, so that it stays responsive.
pub const MAX_BARS: usize = 2_000;

pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Report of batch {} ({})\n",
        report.batch_id, report.batch_name
    );
    let _ = writeln!(
        md,
        "State **{}**, {} units, {} sessions; made {}.\n",
        report.state, report.units, report.sessions, report.generated_at
    );
    md.push_str("## Outcome funnel\n\n| stage | units | first units |\n|---|---:|---|\n");
    for stage in report.funnel.iter().filter(|s| s.count > 0) {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            stage.stage,
            stage.count,
            stage
                .units
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md.push_str("\n## Failure clusters\n\n");
    if report.clusters.is_empty() {
        md.push_str("No session failed.\n");
    }
    for c in &report.clusters {
        let _ = writeln!(
            md,
            "### `{}`: {} sessions, {} units{} ({}{})\n\n`{}`\n\nUnits: {}\n\n```\n{}\n```\n",
            c.id,
            c.sessions,
            c.units.len(),
            cluster_cost(c),
            c.outcome,
            c.gate
                .as_ref()
                .map(|g| format!(", gate {g}"))
                .unwrap_or_default(),
            c.template,
            c.units
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            c.example.trim_end()
        );
        for evidence in c.evidence.iter().take(3) {
            let _ = writeln!(md, "- evidence: `{evidence}`");
        }
    }
    md.push_str("\n## Durations (ms)\n\n| phase | count | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
    for p in &report.stats.phases {
        let cell = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            p.phase,
            p.count,
            cell(p.p50),
            cell(p.p90),
            cell(p.p99),
            cell(p.max)
        );
    }
    md.push_str("\nSlowest units: ");
    md.push_str(
        &report
            .stats
            .slowest
            .iter()
            .map(|(u, ms)| format!("{u} ({})", duration_text(*ms)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let _ = writeln!(
        md,
        "\n\nRetries: {} attempts over {} units.\n",
        report.stats.retries, report.stats.retried_units
    );
    if !report.stats.gates.is_empty() {
        md.push_str(
            "| gate | sessions | repairs | repaired | failures |\n|---|---:|---:|---:|---:|\n",
        );
        for g in &report.stats.gates {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                g.gate, g.sessions, g.repairs, g.repaired, g.failures
            );
        }
    }
    if let Some(conflicts) = &report.conflicts {
        let _ = writeln!(
            md,
            "\n## Branches that do not merge\n\n{} branches waiting to land, checked against each other and {}:\n",
            conflicts.branches.len(),
            conflicts.target
        );
        for c in &conflicts.conflicts {
            let _ = writeln!(md, "- {} x {}: {}", c.a, c.b, c.files.join(", "));
        }
    }
    let cp = &report.timeline.critical_path;
    if !cp.planned.is_empty() || !cp.actual.is_empty() {
        let _ = writeln!(
            md,
            "\n## Critical path\n\nPlanned: {}\n\nAs run ({}): {}\n",
            cp.planned.join(" -> "),
            duration_text(cp.actual_ms),
            cp.actual.join(" -> ")
        );
    }
    md.push_str(&report.cost.markdown());
    md.push_str("\n## Tuned playbook\n\n");
    if report.suggestions.yaml.is_empty() {
        md.push_str("Nothing to change from these figures.\n");
    } else {
        let _ = writeln!(md, "```yaml\n{}```", report.suggestions.yaml);
    }
    md
}

pub fn html(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>regatta report {id}</title>\
         <style>{CSS}</style></head><body><h1>Batch {id} <small>{name}</small></h1>\
         <p class=\"state {state}\">{state} · {units} units · {sessions} sessions · made {made}</p>",
        id = esc(&report.batch_id),
        name = esc(&report.batch_name),
        state = esc(&report.state),
        units = report.units,
        sessions = report.sessions,
        made = esc(&report.generated_at),
    );
    page.push_str("<h2>Outcome funnel</h2><table><tr><th>stage</th><th>units</th><th></th></tr>");
    let most = report
        .funnel
        .iter()
        .map(|s| s.count)
        .max()
        .unwrap_or(1)
        .max(1);
    for stage in report.funnel.iter().filter(|s| s.count > 0) {
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"n\">{}</td><td><div class=\"bar {}\" style=\"width:{}px\" title=\"{}\"></div></td></tr>",
            esc(&stage.stage),
            stage.count,
            esc(&stage.stage),
            (stage.count * 300 / most).max(1),
            esc(&stage.units.join(", "))
        );
    }
    page.push_str("</table><h2>Failure clusters</h2>");
    if report.clusters.is_empty() {
        page.push_str("<p>No session failed.</p>");
    }
    for c in &report.clusters {
        let _ = write!(
            page,
            "<details><summary><code>{}</code> {} sessions, {} units{} · {}{} · <code>{}</code></summary>\
             <p>Units: {}</p><pre>{}</pre>{}</details>",
            esc(&c.id),
            c.sessions,
            c.units.len(),
            cluster_cost(c),
            esc(&c.outcome),
            c.gate.as_ref().map(|g| format!(", gate {}", esc(g))).unwrap_or_default(),
            esc(&c.template),
            esc(&c.units.iter().take(50).cloned().collect::<Vec<_>>().join(", ")),
            esc(&c.example),
            c.evidence
                .iter()
                .take(5)
                .map(|e| format!("<div class=\"ev\">evidence: <code>{}</code></div>", esc(e)))
                .collect::<String>()
        );
    }
    if let Some(conflicts) = &report.conflicts {
        let _ = write!(
            page,
            "<h2>Branches that do not merge</h2><p>{} branches waiting to land, checked against each other and {}:</p><ul>",
            conflicts.branches.len(),
            esc(&conflicts.target)
        );
        for c in &conflicts.conflicts {
            let _ = write!(
                page,
                "<li>{} × {}: <code>{}</code></li>",
                esc(&c.a),
                esc(&c.b),
                esc(&c.files.join(", "))
            );
        }
        page.push_str("</ul>");
    }
    page.push_str("<h2>Timeline</h2>");
    gantt(&mut page, &report.timeline);
    let cp = &report.timeline.critical_path;
    if !cp.planned.is_empty() || !cp.actual.is_empty() {
        let _ = write!(
            page,
            "<p>Critical path planned: <code>{}</code><br>as run ({}): <code>{}</code></p>",
            esc(&cp.planned.join(" → ")),
            duration_text(cp.actual_ms),
            esc(&cp.actual.join(" → "))
        );
    }
    page.push_str("<h2>Durations</h2><table><tr><th>phase</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>histogram</th></tr>");
    for p in &report.stats.phases {
        let cell = |v: Option<u64>| v.map(duration_text).unwrap_or_else(|| "-".into());
        let top = p.histogram.iter().copied().max().unwrap_or(1).max(1);
        let bars: String = p
            .histogram
            .iter()
            .map(|&n| format!("<i style=\"height:{}px\" title=\"{n}\"></i>", n * 24 / top))
            .collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"h\">{bars}</td></tr>",
            esc(&p.phase),
            p.count,
            cell(p.p50),
            cell(p.p90),
            cell(p.p99),
            cell(p.max)
        );
    }
    page.push_str("</table>");
    let top = report
        .stats
        .utilisation
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    page.push_str("<p>Sessions running over time:</p><div class=\"h wide\">");
    for &n in &report.stats.utilisation {
        let _ = write!(
            page,
            "<i style=\"height:{}px\" title=\"{n}\"></i>",
            n * 40 / top
        );
    }
    page.push_str("</div><p>Slowest units: ");
    page.push_str(&esc(&report
        .stats
        .slowest
        .iter()
        .map(|(u, ms)| format!("{u} ({})", duration_text(*ms)))
        .collect::<Vec<_>>()
        .join(", ")));
    let _ = write!(
        page,
        "</p><p>Retries: {} attempts over {} units.</p>",
        report.stats.retries, report.stats.retried_units
    );
    if !report.stats.gates.is_empty() {
        page.push_str("<table><tr><th>gate</th><th>sessions</th><th>repairs</th><th>repaired</th><th>failures</th></tr>");
        for g in &report.stats.gates {
            let _ = write!(
                page,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&g.gate),
                g.sessions,
                g.repairs,
                g.repaired,
                g.failures
            );
        }
        page.push_str("</table>");
    }
    page.push_str(&report.cost.html(esc));
    page.push_str("<h2>Tuned playbook</h2>");
    if report.suggestions.yaml.is_empty() {
        page.push_str("<p>Nothing to change from these figures.</p>");
    } else {
        let _ = write!(page, "<pre>{}</pre>", esc(&report.suggestions.yaml));
    }
    page.push_str("</body></html>\n");
    page
}

/// The sessions as an SVG Gantt chart: a row per worker slot, each bar its
/// wait (pale), its command and its gates (darker), coloured by outcome.
fn gantt(page: &mut String, timeline: &Timeline) {
    if timeline.bars.is_empty() {
        page.push_str("<p>No session ran.</p>");
        return;
    }
    let mut bars: Vec<&super::timeline::Bar> = timeline.bars.iter().collect();
    if bars.len() > MAX_BARS {
        bars.sort_by_key(|b| std::cmp::Reverse(b.run_ms() + b.wait_ms()));
        let _ = write!(
            page,
            "<p>{} sessions: the {MAX_BARS} longest are drawn.</p>",
            timeline.bars.len()
        );
        bars.truncate(MAX_BARS);
    }
    let (width, row, label) = (1000.0, 14.0, 120.0);
    let span = (timeline.end_ms - timeline.start_ms).max(1) as f64;
    let x = |ms: i64| label + (ms - timeline.start_ms) as f64 / span * (width - label);
    let height = timeline.lanes.len() as f64 * row + 20.0;
    let _ = write!(
        page,
        "<svg class=\"gantt\" viewBox=\"0 0 {width} {height}\" width=\"100%\" role=\"img\">"
    );
    for (i, lane) in timeline.lanes.iter().enumerate() {
        let _ = write!(
            page,
            "<text x=\"2\" y=\"{}\">{} #{}</text>",
            i as f64 * row + 11.0,
            esc(&lane.worker),
            lane.slot
        );
    }
    for bar in bars {
        let y = bar.lane as f64 * row + 2.0;
        let (wait_x, start_x, end_x) = (x(bar.published_ms), x(bar.started_ms), x(bar.ended_ms));
        let gates_x = (end_x - bar.gates_ms as f64 / span * (width - label)).max(start_x);
        let _ = write!(
            page,
            "<g class=\"{}\"><title>{} #{} {} · waited {} · ran {} (gates {}, {} repairs)</title>\
             <rect class=\"wait\" x=\"{wait_x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\"/>\
             <rect x=\"{start_x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\"/>\
             <rect class=\"gates\" x=\"{gates_x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\"/></g>",
            esc(&bar.outcome),
            esc(&bar.unit),
            bar.attempt,
            esc(&bar.outcome),
            duration_text(bar.wait_ms()),
            duration_text(bar.run_ms()),
            duration_text(bar.gates_ms),
            bar.repairs,
            (start_x - wait_x).max(0.0),
            (end_x - start_x).max(0.5),
            (end_x - gates_x).max(0.0),
        );
    }
    page.push_str("</svg><p class=\"legend\"><span class=\"wait\">waiting</span> <span class=\"succeeded\">succeeded</span> <span class=\"failed\">failed</span> <span class=\"timed_out\">timed out</span> <span class=\"lost\">lost</span>; the darker end of a bar is its gates. <code>@integration</code> rows are the merge train's tests.</p>");
}

/// Escapes text for HTML.
/// A cluster's cost after its counts, when its sessions reported usage.
fn cluster_cost(cluster: &super::cluster::Cluster) -> String {
    cluster
        .cost_usd
        .map(|usd| format!(", {}", super::cost::usd(usd)))
        .unwrap_or_default()
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}\
h1 small{color:#777;font-weight:normal}table{border-collapse:collapse;margin:.5em 0}\
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}td.n{text-align:right}\
.bar{height:10px;background:#4a7}.bar.needs_review,.bar.blocked{background:#d64}\
.bar.passed_on_retry,.bar.repaired_by_gate,.bar.rebased{background:#db3}.bar.cancelled,.bar.skipped,.bar.not_done{background:#999}\
details{margin:.4em 0;padding:.3em;border:1px solid #eee}pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:20em}\
.h i{display:inline-block;width:8px;margin-right:1px;background:#58a;vertical-align:bottom}.h.wide i{width:12px}\
svg.gantt text{font-size:9px}svg.gantt rect{fill:#4a7}svg.gantt .failed rect,svg.gantt .timed_out rect{fill:#d64}\
svg.gantt .lost rect,svg.gantt .interrupted rect{fill:#a7a}svg.gantt rect.wait{fill:#ddd}svg.gantt rect.gates{fill:#276}\
.legend span{padding:0 4px}.legend .wait{background:#ddd}.legend .succeeded{background:#4a7}.legend .failed,.legend .timed_out{background:#d64}.legend .lost{background:#a7a}";
