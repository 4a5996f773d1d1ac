// The batch page's running timeline: a Gantt chart of every session that
// started, over the workers' slots, laid out as `regatta report`'s timeline
// is (coordinator/src/report/timeline.rs). It is drawn on one canvas, so a
// 10,000-session batch costs one element and a few milliseconds, not
// 10,000 DOM nodes. Loaded before app.js, which calls timelineSection (and
// whose h and outcomeName it uses).
"use strict";

/// Rows taller than this are never drawn; the chart is at most ~480 px high.
const TIMELINE_ROW_PX = 16;
const TIMELINE_MAX_PX = 480;
/// Room on the left for the lanes' worker names, when rows are tall enough.
const TIMELINE_LABEL_PX = 160;

/// Sessions that started (a running one ends `now`), each on a lane: a
/// worker's sessions that overlap take one lane each.
function timelineOf(units, now) {
  const bars = [];
  for (const unit of units) {
    for (const a of unit.history || []) {
      if (a.started_at_ms === null || a.started_at_ms === undefined) continue;
      const running = a.ended_at_ms === null || a.ended_at_ms === undefined;
      const end = Math.max(running ? now : a.ended_at_ms, a.started_at_ms);
      const gates = (a.gates || []).reduce((sum, g) => sum + (g.duration_ms || 0), 0);
      bars.push({
        unit: unit.id, worker: a.worker || "?",
        published: Math.min(a.published_at_ms || a.started_at_ms, a.started_at_ms),
        start: a.started_at_ms, end, gates: Math.min(gates, end - a.started_at_ms),
        outcome: running ? "running" : outcomeName(a.outcome),
      });
    }
  }
  bars.sort((x, y) => x.start - y.start);
  const lanes = [];
  const byWorker = new Map();
  for (const bar of bars) {
    let own = byWorker.get(bar.worker);
    if (!own) { own = []; byWorker.set(bar.worker, own); }
    let free = own.find(lane => lane.until <= bar.start);
    if (!free) {
      free = { lane: lanes.length, until: 0 };
      lanes.push({ worker: bar.worker, slot: own.length });
      own.push(free);
    }
    free.until = bar.end;
    bar.lane = free.lane;
  }
  // Rows by worker, then slot: one worker's slots sit together.
  const order = lanes.map((_, i) => i)
    .sort((a, b) => lanes[a].worker.localeCompare(lanes[b].worker) || lanes[a].slot - lanes[b].slot);
  const row = new Array(lanes.length);
  order.forEach((lane, i) => { row[lane] = i; });
  let start = Infinity, end = -Infinity;
  for (const bar of bars) {
    start = Math.min(start, bar.published);
    end = Math.max(end, bar.end);
  }
  return { bars, lanes, row, order, start, end };
}

/// The colour of a session's run by how it ended.
function runColour(outcome, css) {
  if (outcome === "running") return css("--running");
  if (outcome === "succeeded") return css("--succeeded");
  if (outcome === "cancelled" || outcome === "interrupted") return css("--cancelled");
  return css("--needs_review");
}

/// Draws the chart: per session, its wait (queue and leases) pale, its run
/// in its outcome's colour, and the gates at the run's end darker.
function drawTimeline(canvas, t, width) {
  const rows = Math.max(1, t.lanes.length);
  const rowPx = Math.max(1, Math.min(TIMELINE_ROW_PX, Math.floor(TIMELINE_MAX_PX / rows)));
  const label = rowPx >= 10 ? TIMELINE_LABEL_PX : 0;
  const axis = 16;
  canvas.width = Math.max(200, Math.floor(width));
  canvas.height = rows * rowPx + axis;
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const style = getComputedStyle(document.documentElement);
  const css = name => style.getPropertyValue(name).trim() || "#888";
  const span = Math.max(1, t.end - t.start);
  const scale = (canvas.width - label - 4) / span;
  const x = ms => label + (ms - t.start) * scale;
  const bar = rowPx > 3 ? rowPx - 2 : rowPx;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  if (label) {
    ctx.fillStyle = css("--muted");
    t.order.forEach((lane, i) => {
      const l = t.lanes[lane];
      ctx.fillText((l.worker + " #" + l.slot).slice(0, 26), 2, i * rowPx + rowPx / 2);
    });
  }
  const wait = css("--pending");
  const gates = "rgba(16, 36, 62, 0.55)";
  // Read each colour once: a style lookup per bar costs more than the bar.
  const colours = new Map();
  const colour = outcome => {
    if (!colours.has(outcome)) colours.set(outcome, runColour(outcome, css));
    return colours.get(outcome);
  };
  for (const b of t.bars) {
    const y = t.row[b.lane] * rowPx;
    const from = x(b.published), started = x(b.start), to = x(b.end);
    if (started - from >= 1) {
      ctx.fillStyle = wait;
      ctx.fillRect(from, y, started - from, bar);
    }
    ctx.fillStyle = colour(b.outcome);
    ctx.fillRect(started, y, Math.max(1, to - started), bar);
    if (b.gates > 0) {
      const g = b.gates * scale;
      if (g >= 1) {
        ctx.fillStyle = gates;
        ctx.fillRect(to - g, y, g, bar);
      }
    }
  }
  ctx.fillStyle = css("--muted");
  const y = rows * rowPx + axis / 2;
  ctx.fillText(new Date(t.start).toLocaleTimeString(), label, y);
  const total = "+" + ((t.end - t.start) / 1000).toFixed(1) + " s";
  ctx.fillText(total, canvas.width - ctx.measureText(total).width - 4, y);
}

/// The page's timeline section for these units, drawn `width` pixels wide.
function timelineSection(units, now, width) {
  const started = performance.now();
  const t = timelineOf(units, now);
  const running = t.bars.filter(b => b.outcome === "running").length;
  const section = h("section", { id: "timeline" },
    h("h2", {}, "Timeline (" + t.bars.length + " sessions on " + t.lanes.length + " worker slots" +
      (running ? ", " + running + " running" : "") + ")"));
  if (t.bars.length === 0) {
    section.append(h("p", { class: "muted" }, "No session has started yet."));
    return section;
  }
  const canvas = h("canvas", {
    id: "timeline-chart", role: "img", "data-bars": t.bars.length, "data-lanes": t.lanes.length,
    "data-running": running, "data-end": t.end,
    "aria-label": "Gantt chart of " + t.bars.length + " sessions over " + t.lanes.length + " worker slots",
  });
  drawTimeline(canvas, t, width);
  canvas.setAttribute("data-draw-ms", String(Math.round(performance.now() - started)));
  section.append(canvas, h("p", { class: "muted legend" },
    h("span", { class: "chip s-pending" }, "waiting (queue, leases)"),
    h("span", { class: "chip s-running" }, "running"),
    h("span", { class: "chip s-succeeded" }, "succeeded"),
    h("span", { class: "chip s-needs_review" }, "failed"),
    h("span", { class: "chip gates" }, "gates"),
    " one row per worker slot; " + new Date(t.start).toLocaleTimeString() + " to " +
      new Date(t.end).toLocaleTimeString()));
  return section;
}
