// regatta's live dashboard: plain JavaScript over the coordinator's JSON API.
// Every data call carries the bearer token kept in this browser session
// (sessionStorage); nothing is fetched from anywhere but the coordinator.
// Data is written with textContent only, never parsed as HTML.
"use strict";

const TOKEN_KEY = "regatta-token";
const STATES = ["pending", "ready", "queued", "running", "succeeded", "landed",
  "needs_review", "blocked", "cancelled", "skipped"];
const ENDED = ["succeeded", "landed", "needs_review", "blocked", "cancelled", "skipped"];
/// Units drawn one by one in an expanded level, at most (a 10,000-unit level
/// is drawn as counts, and 500 at a time when asked).
const DRAWN_PER_LEVEL = 500;
/// A level this small is drawn expanded from the start.
const OPEN_LEVEL = 60;
/// Above this many units, the unit list is fetched every 5 s instead of every second.
const LARGE_BATCH = 2000;

// ---- small helpers -------------------------------------------------------

/// Builds an element: h("a", {href: "#/"}, "text", child...).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function age(ms) {
  if (ms === undefined || ms === null) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d";
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function duration(from, to) {
  if (!from) return "";
  const s = ((to || Date.now()) - from) / 1000;
  return s < 60 ? s.toFixed(1) + "s" : Math.floor(s / 60) + "m" + Math.round(s % 60) + "s";
}

/// An outcome as the sessions API and the metrics spell it: `TimedOut` is `timed_out`.
function outcomeName(outcome) {
  return String(outcome).replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

function enc(part) {
  return encodeURIComponent(part);
}

function setStatus(text, error) {
  const status = document.getElementById("status");
  status.textContent = text || "";
  status.className = error ? "error" : "";
}

/// The ids of a list, the first `max` of them and how many more.
function someOf(ids, max) {
  if (!ids || ids.length === 0) return h("span", { class: "muted" }, "none");
  const shown = ids.slice(0, max).join(", ");
  return ids.length > max ? shown + " and " + (ids.length - max) + " more" : shown;
}

function stateBar(counts, total) {
  const bar = h("div", { class: "bar", title: STATES.filter(s => counts[s]).map(s => s + " " + counts[s]).join(", ") });
  for (const state of STATES) {
    const n = counts[state] || 0;
    if (n > 0 && total > 0) {
      // Set through the DOM: the page's CSP refuses inline style attributes.
      const part = h("span", { class: "s-" + state });
      part.style.width = (100 * n / total) + "%";
      bar.append(part);
    }
  }
  return bar;
}

function chips(counts) {
  return STATES.filter(s => counts[s]).map(s => h("span", { class: "chip s-" + s, "data-state": s }, s + " " + counts[s]));
}

function ended(counts) {
  return ENDED.reduce((n, s) => n + (counts[s] || 0), 0);
}

// ---- the API ---------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, options) {
  const headers = { "Accept": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = Object.assign({ headers }, options || {});
  if (init.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(init.body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized(path);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: text }; }
  if (!response.ok) {
    const why = body && body.error ? body.error : response.statusText;
    throw new Error(response.status + ": " + why);
  }
  return body;
}

let uiConfig = null;
async function config() {
  if (!uiConfig) uiConfig = await api("/v1/ui-config");
  return uiConfig;
}

// ---- pages -------------------------------------------------------------------

/// The page on screen: it refreshes itself every second.
let page = null;
let busy = false;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "batch" && parts[1] && parts[2] === "unit" && parts[3]) return new UnitPage(parts[1], parts[3]);
  if (parts[0] === "batch" && parts[1]) return new BatchPage(parts[1]);
  return new BatchesPage();
}

function crumbs(...links) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...links.map(([text, href]) => h("a", { href }, text)));
}

async function tick() {
  if (busy || !page) return;
  busy = true;
  const current = page;
  try {
    await current.refresh();
    if (current === page && !document.getElementById("status").classList.contains("error")) {
      setStatus("updated " + new Date().toLocaleTimeString());
    }
  } catch (e) {
    if (current !== page) return;
    if (e instanceof Unauthorized) {
      document.getElementById("view").replaceChildren(h("p", { id: "auth-needed" },
        "401: the coordinator refused this request without its API token. Enter REGATTA_API_TOKEN above."));
      setStatus("401 Unauthorized: enter the API token", true);
      document.getElementById("token").focus();
    } else {
      setStatus(String(e.message || e), true);
    }
  } finally {
    busy = false;
  }
}

function show() {
  page = route();
  uiConfig = null;
  setStatus("");
  document.getElementById("view").replaceChildren(h("p", { class: "muted" }, "Loading…"));
  busy = false;
  tick();
}

class BatchesPage {
  constructor() {
    crumbs(["batches", "#/"]);
  }

  async refresh() {
    const batches = await api("/v1/batches");
    const rows = batches.map(b => h("tr", { "data-batch": b.id },
      h("td", {}, h("a", { href: "#/batch/" + enc(b.id) }, b.name), h("div", { class: "muted mono" }, b.id)),
      h("td", {}, h("span", { class: "chip s-" + stateClass(b.state) }, b.state)),
      h("td", {}, ended(b.counts) + " / " + b.total, stateBar(b.counts, b.total)),
      h("td", {}, age(b.created_ms)),
    ));
    document.getElementById("view").replaceChildren(h("section", {},
      h("h1", {}, "Batches"),
      batches.length === 0 ? h("p", { class: "muted" }, "No batch yet: regatta enqueue MANIFEST") :
        h("table", { id: "batches" }, h("tr", {}, h("th", {}, "batch"), h("th", {}, "state"),
          h("th", {}, "progress"), h("th", {}, "age")), rows)));
  }
}

/// A batch state drawn with the colour of the unit state it resembles.
function stateClass(state) {
  return { running: "running", calibrating: "running", awaiting_approval: "ready", paused: "pending",
    succeeded: "succeeded", failed: "needs_review", cancelled: "cancelled" }[state] || "pending";
}

/// Runs a control action after the person confirms it.
async function act(question, path, body, after) {
  if (!confirm(question)) return;
  try {
    await api(path, { method: "POST", body: body || {} });
    setStatus("done: " + question.replace(/\?$/, ""));
    if (after) after();
  } catch (e) {
    setStatus(e instanceof Unauthorized ? "401 Unauthorized: enter the API token" : String(e.message || e), true);
  }
}

class BatchPage {
  constructor(id) {
    this.id = id;
    this.base = "/v1/batches/" + enc(id);
    this.units = null;
    this.unitsAt = 0;
    this.open = new Set();
    this.shown = new Map();
    this.logs = new Map();
    this.renderedAt = null;
    crumbs(["batches", "#/"], [id, "#/batch/" + enc(id)]);
  }

  async refresh() {
    const started = performance.now();
    const summary = await api(this.base);
    const large = summary.total > LARGE_BATCH;
    const stale = Date.now() - this.unitsAt > (large ? 5000 : 900);
    if (!this.units || stale) {
      this.units = await api(this.base + "/units");
      this.unitsAt = Date.now();
      this.levels = levels(this.units);
      await this.fetchLogs();
    }
    const train = summary.train ? await api(this.base + "/train").catch(e => ({ error: String(e.message || e) })) : null;
    this.render(summary, train);
    const view = document.getElementById("view");
    view.setAttribute("data-rendered", "batch");
    view.setAttribute("data-render-ms", String(Math.round(performance.now() - started)));
    // How long the first full view took after the page started, for anyone
    // who measures it (the browser test does).
    if (performance.getEntriesByName("regatta-batch-rendered").length === 0) {
      performance.mark("regatta-batch-rendered");
    }
  }

  /// The log tails of the review queue's units (fetched once per session).
  async fetchLogs() {
    const review = this.units.filter(u => u.state === "needs_review").slice(0, 20);
    await Promise.all(review.map(async u => {
      const last = u.history[u.history.length - 1];
      const key = u.id + "/" + (last ? last.session_id : "");
      if (this.logs.has(key)) return;
      try {
        const log = await api(this.base + "/units/" + enc(u.id) + "/log");
        this.logs.set(key, log.tail || "(empty log)");
      } catch (e) {
        if (e instanceof Unauthorized) throw e;
        this.logs.set(key, "(no log: " + (e.message || e) + ")");
      }
    }));
  }

  render(summary, train) {
    this.last = [summary, train];
    const id = this.id;
    const again = () => { this.unitsAt = 0; tick(); };
    const done = ended(summary.counts);
    const percent = summary.total ? Math.round(100 * done / summary.total) : 0;
    const head = h("section", { id: "summary" },
      h("h1", {}, summary.name, " ", h("span", { id: "batch-state", class: "chip s-" + stateClass(summary.state) }, summary.state)),
      h("div", { class: "muted mono" }, summary.id, " · created ", age(summary.created_ms), " ago",
        summary.ended_ms ? " · ended " + age(summary.ended_ms) + " ago" : "",
        " · concurrency ", summary.concurrency),
      h("p", {}, h("span", { id: "progress", class: "progress-text", "data-done": done, "data-total": summary.total },
        done + " / " + summary.total + " units ended (" + percent + "%)")),
      stateBar(summary.counts, summary.total),
      h("p", { id: "counts" }, chips(summary.counts)),
      summary.calibration ? h("p", { class: "muted" }, "calibration: " + JSON.stringify(summary.calibration)) : null,
      summary.budget ? h("p", { id: "budget", class: "muted" }, "batch budget: $" + summary.budget.reserved_usd.toFixed(2) +
        " reserved + $" + summary.budget.spent_usd.toFixed(2) + " spent of $" + summary.budget.cap_usd.toFixed(2)) : null);
    const controls = h("section", { id: "controls", class: "actions" },
        h("button", { id: "pause", onclick: () => act("Pause batch " + id + "?", this.base + "/pause", {}, again) }, "pause"),
        h("button", { id: "resume", onclick: () => act("Resume batch " + id + "?", this.base + "/resume", {}, again) }, "resume"),
        h("button", { id: "approve", onclick: () => act("Approve the calibration of batch " + id + "?", this.base + "/approve", {}, again) }, "approve"),
        h("button", { id: "cancel", onclick: () => act("Cancel batch " + id + "? Running sessions are stopped.", this.base + "/cancel", {}, again) }, "cancel"));
    const width = Math.max(300, document.getElementById("view").clientWidth - 40);
    const sections = [head, controls, this.reviewQueue(again), this.waiting(summary), this.running(),
      timelineSection(this.units, Date.now(), width)];
    if (train) sections.push(trainSection(train));
    sections.push(this.dag());
    place(document.getElementById("view"), sections);
  }

  reviewQueue(again) {
    const review = this.units.filter(u => u.state === "needs_review");
    const items = review.slice(0, 20).map(u => {
      const last = u.history[u.history.length - 1];
      const key = u.id + "/" + (last ? last.session_id : "");
      return h("div", { class: "review", "data-unit": u.id },
        h("strong", {}, h("a", { href: "#/batch/" + enc(this.id) + "/unit/" + enc(u.id) }, u.id)),
        " ", h("span", { class: "muted" }, "attempt " + u.attempt + ": " + (u.reason || "no reason given")),
        h("div", { class: "actions" },
          h("button", { class: "retry", "data-unit": u.id,
            onclick: () => act("Retry unit " + u.id + "?", this.base + "/retry", { unit: u.id }, again) }, "retry"),
          h("button", { class: "skip", "data-unit": u.id,
            onclick: () => act("Skip unit " + u.id + "? Its dependents will run.", this.base + "/skip", { unit: u.id }, again) }, "skip")),
        h("pre", {}, this.logs.get(key) || "(loading the log…)"));
    });
    return h("section", { id: "review" },
      h("h2", {}, "Review queue (" + review.length + ")"),
      review.length > 1 ? h("button", { id: "retry-all",
        onclick: () => act("Retry all " + review.length + " units that need review?", this.base + "/retry", { needs_review: true }, again) },
      "retry all") : null,
      review.length === 0 ? h("p", { class: "muted" }, "No unit needs review.") : items,
      review.length > 20 ? h("p", { class: "muted" }, (review.length - 20) + " more not shown") : null);
  }

  waiting(summary) {
    const ready = this.units.filter(u => u.state === "ready");
    const resources = summary.resources.map(r => h("tr", {},
      h("td", {}, r.name), h("td", {}, r.in_use + " / " + r.capacity),
      h("td", {}, someOf(r.holders, 20)), h("td", {}, someOf(r.waiting, 20))));
    return h("section", { id: "waiting" },
      h("h2", {}, "Resources and waiting units"),
      summary.resources.length === 0 ? h("p", { class: "muted" }, "The batch uses no shared resource.") :
        h("table", { id: "resources" }, h("tr", {}, h("th", {}, "resource"), h("th", {}, "in use (fleet)"),
          h("th", {}, "held by"), h("th", {}, "waiting")), resources),
      ready.length === 0 ? null : h("table", { id: "ready" },
        h("tr", {}, h("th", {}, "ready unit (" + ready.length + ")"), h("th", {}, "waiting for")),
        ready.slice(0, 50).map(u => h("tr", {}, h("td", {}, u.id), h("td", {}, u.waiting_for || "a free slot")))),
      ready.length > 50 ? h("p", { class: "muted" }, (ready.length - 50) + " more ready units") : null);
  }

  running() {
    const running = this.units.filter(u => u.state === "running" || u.state === "queued");
    return h("section", { id: "running" },
      h("h2", {}, "Running now (" + running.length + ")"),
      running.length === 0 ? h("p", { class: "muted" }, "Nothing runs.") :
        h("table", {}, h("tr", {}, h("th", {}, "unit"), h("th", {}, "state"), h("th", {}, "worker"), h("th", {}, "for")),
          running.slice(0, 50).map(u => {
            const last = u.history[u.history.length - 1] || {};
            return h("tr", {}, h("td", {}, h("a", { href: "#/batch/" + enc(this.id) + "/unit/" + enc(u.id) }, u.id)),
              h("td", {}, u.state), h("td", {}, last.worker || ""),
              h("td", {}, duration(last.started_at_ms || last.published_at_ms)));
          })));
  }

  /// The DAG, one row per level: counts by state, its units when expanded.
  dag() {
    const { rows, known } = this.levels;
    const section = h("section", { id: "dag" }, h("h2", {}, "Units by level"),
      known ? null : h("p", { class: "muted" },
        "This coordinator does not list dependencies with its units: they are grouped in one level."));
    rows.forEach((level, index) => {
      const counts = {};
      for (const u of level) counts[u.state] = (counts[u.state] || 0) + 1;
      const open = this.open.has(index) || (level.length <= OPEN_LEVEL && !this.open.has(-1 - index));
      const row = h("div", { class: "level", "data-level": index },
        h("div", { class: "head", onclick: () => {
          if (open) { this.open.delete(index); this.open.add(-1 - index); } else { this.open.add(index); this.open.delete(-1 - index); }
          this.render(...this.last);
        } }, h("strong", {}, (open ? "▾ " : "▸ ") + "level " + index), h("span", {}, level.length + " units"),
        stateBar(counts, level.length), h("span", {}, chips(counts))));
      if (open) {
        const limit = this.shown.get(index) || DRAWN_PER_LEVEL;
        row.append(h("div", { class: "units" }, level.slice(0, limit).map(u =>
          h("a", { class: "unit s-" + u.state, href: "#/batch/" + enc(this.id) + "/unit/" + enc(u.id), title: u.state }, u.id))));
        if (level.length > limit) {
          row.append(h("button", { onclick: () => { this.shown.set(index, limit + DRAWN_PER_LEVEL); this.render(...this.last); } },
            "show " + Math.min(DRAWN_PER_LEVEL, level.length - limit) + " more of " + (level.length - limit)));
        }
      }
      section.append(row);
    });
    return section;
  }
}

/// Puts fresh sections in the view, keeping every section whose content did
/// not change: a button someone is about to click stays the same element.
function place(view, sections) {
  const old = Array.from(view.children);
  const same = old.length === sections.length && old.every((o, i) => o.id && o.id === sections[i].id);
  if (!same) {
    view.replaceChildren(...sections);
    return;
  }
  sections.forEach((fresh, i) => {
    if (!old[i].isEqualNode(fresh)) old[i].replaceWith(fresh);
  });
}

/// Lays units out by level (0: no dependency; n: one more than its deepest
/// dependency) when they list their `depends_on`; one level otherwise.
function levels(units) {
  const known = units.some(u => Array.isArray(u.depends_on));
  if (!known) return { rows: [units], known };
  const byId = new Map(units.map(u => [u.id, u]));
  const level = new Map();
  for (const start of units) {
    // Depth-first without recursion: a 10,000-deep chain must not overflow.
    const stack = [start];
    while (stack.length) {
      const u = stack[stack.length - 1];
      if (level.has(u.id)) { stack.pop(); continue; }
      const deps = (u.depends_on || []).map(d => byId.get(d)).filter(Boolean);
      const missing = deps.filter(d => !level.has(d.id));
      if (missing.length) { stack.push(...missing); continue; }
      level.set(u.id, deps.reduce((m, d) => Math.max(m, level.get(d.id) + 1), 0));
      stack.pop();
    }
  }
  const rows = [];
  for (const u of units) {
    const l = level.get(u.id);
    (rows[l] = rows[l] || []).push(u);
  }
  return { rows: rows.filter(Boolean), known };
}

function trainSection(train) {
  if (train.error) return h("section", { id: "train" }, h("h2", {}, "Merge train"), h("p", {}, train.error));
  return h("section", { id: "train" },
    h("h2", {}, "Merge train → " + train.target + " (" + train.merge + (train.started ? "" : ", not started") + ")"),
    h("p", { class: "mono" }, "tip " + (train.tip || "unknown") + " · window " + train.window),
    train.waiting ? h("p", { class: "error" }, "waiting: " + train.waiting) : null,
    h("p", {}, "landed " + train.landed.length + ": ", someOf(train.landed, 20)),
    h("p", {}, "waiting to land " + train.waiting_to_land.length + ": ", someOf(train.waiting_to_land, 20)),
    train.suspects.length ? h("p", {}, "bisection suspects: ", someOf(train.suspects, 20)) : null,
    h("table", {}, h("tr", {}, h("th", {}, "candidate"), h("th", {}, "state"), h("th", {}, "units"), h("th", {}, "detail")),
      train.candidates.slice(-20).reverse().map(c => h("tr", {},
        h("td", { class: "mono" }, "#" + c.id + (c.bisecting ? " (bisecting)" : "")),
        h("td", {}, c.state),
        h("td", {}, someOf(c.units.map(u => u[0]), 10)),
        h("td", {}, c.detail || "")))));
}

class UnitPage {
  constructor(batch, unit) {
    this.batch = batch;
    this.unit = unit;
    this.base = "/v1/batches/" + enc(batch);
    crumbs(["batches", "#/"], [batch, "#/batch/" + enc(batch)], [unit, "#/batch/" + enc(batch) + "/unit/" + enc(unit)]);
  }

  async refresh() {
    const [units, log, cfg] = await Promise.all([
      api(this.base + "/units"),
      api(this.base + "/units/" + enc(this.unit) + "/log").catch(e => {
        if (e instanceof Unauthorized) throw e;
        return { tail: "(no log: " + (e.message || e) + ")" };
      }),
      config(),
    ]);
    const unit = units.find(u => u.id === this.unit);
    if (!unit) throw new Error("no unit " + this.unit + " in batch " + this.batch);
    const trace = id => cfg.trace_url && id ? h("a", { href: cfg.trace_url.replace("{trace_id}", enc(id)), target: "_blank", rel: "noopener" }, "trace") : "";
    const sessions = unit.history.slice().reverse().map(a => h("tr", {},
      h("td", {}, a.attempt), h("td", { class: "mono" }, a.session_id),
      h("td", {}, a.outcome ? outcomeName(a.outcome) : (a.started_at_ms ? "running" : "queued")),
      h("td", {}, a.worker || ""), h("td", {}, when(a.started_at_ms)),
      h("td", {}, duration(a.started_at_ms, a.ended_at_ms)),
      h("td", {}, a.exit_code === null || a.exit_code === undefined ? "" : a.exit_code),
      h("td", {}, a.reason || ""),
      h("td", {}, a.gates.map(g => h("div", {}, g.name + ": " + (g.passed ? "passed" : "failed") +
        (g.repairs ? " after " + g.repairs + " repairs" : "") + (g.required ? "" : " (optional)")))),
      h("td", { class: "mono" }, a.evidence ? [h("div", {}, a.evidence.path), h("div", {}, "sha256 " + a.evidence.sha256)] : ""),
      h("td", {}, trace(a.trace && a.trace.trace_id))));
    document.getElementById("view").replaceChildren(
      h("section", { id: "unit" },
        h("h1", {}, unit.id, " ", h("span", { class: "chip s-" + unit.state, id: "unit-state" }, unit.state)),
        h("p", {}, "attempt " + unit.attempt + ", failures " + unit.failures),
        unit.reason ? h("p", {}, "reason: " + unit.reason) : null,
        unit.waiting_for ? h("p", {}, "waiting for: " + unit.waiting_for) : null),
      h("section", { id: "sessions" }, h("h2", {}, "Sessions"),
        h("table", {}, h("tr", {}, ["attempt", "session", "state", "worker", "started", "took", "exit", "reason",
          "gates", "evidence", "trace"].map(t => h("th", {}, t))), sessions)),
      h("section", { id: "log" }, h("h2", {}, "Log tail"),
        log.log_path ? h("p", { class: "muted mono" }, log.log_path) : null,
        h("pre", {}, log.tail || "(empty)")));
  }
}

// ---- start -------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  form.addEventListener("submit", event => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    input.value = "";
    show();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    show();
  });
  window.addEventListener("hashchange", show);
  setInterval(tick, 1000);
  show();
});
