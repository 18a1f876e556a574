// The gateway's status page. Polls admin/status (one request at a time, at most every
// poll_seconds, paused while the tab is hidden) and draws it. Every value reaches the page as
// text (textContent, attributes), never as markup. The admin token, when the gateway has one,
// lives in this tab's sessionStorage only and goes out only as the Authorization header of the
// admin POSTs below, each asked for with a confirmation.
"use strict";

const TOKEN_KEY = "gateway-admin-token";
const STATUS_URL = "admin/status";
let pollSeconds = 2;
let timer = null;
let polling = false;
let last = null;          // the last document received
let lastOkAt = null;      // Date.now() of the last good answer
let tokenRequired = false;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- small DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") el.textContent = String(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

// ---------------------------------------------------------------- formatting

const dash = "–";
function num(v) { return v === null || v === undefined ? dash : Number(v).toLocaleString("en-US"); }
function pct(v) {
  if (v === null || v === undefined) return dash;
  const p = v * 100;
  return (p >= 99.95 || p === 0 ? p.toFixed(0) : p >= 99 ? p.toFixed(2) : p.toFixed(1)) + " %";
}
function ms(v) {
  if (v === null || v === undefined) return dash;
  return v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s" : Math.round(v) + " ms";
}
function bytes(v) {
  if (!v) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + " " + units[i];
}
function span(seconds) {
  const s = Math.abs(seconds);
  if (s < 90) return Math.round(s) + " s";
  if (s < 90 * 60) return Math.round(s / 60) + " min";
  if (s < 48 * 3600) return (s / 3600).toFixed(1) + " h";
  return Math.round(s / 86400) + " d";
}
function clock(iso) {
  if (!iso) return dash;
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleTimeString([], { hour12: false });
}
// Relative to the gateway's clock, so a browser with a wrong clock still reads right.
function relative(iso) {
  if (!iso || !last) return "";
  const delta = (Date.parse(iso) - Date.parse(last.gateway.now)) / 1000;
  if (isNaN(delta)) return "";
  if (Math.abs(delta) < 1) return "now";
  return delta > 0 ? "in " + span(delta) : span(delta) + " ago";
}
function when(iso) {
  if (!iso) return dash;
  const rel = relative(iso);
  return rel ? `${clock(iso)} (${rel})` : clock(iso);
}
function stateLabel(b) {
  if (b.state === "half_open") return "half-open";
  return b.forced && b.state === "open" ? "open (forced)" : b.state;
}
function errorsClass(win) {
  if (!win || !win.requests) return "";
  const rate = win.errors / win.requests;
  return rate >= 0.2 ? "bad" : rate > 0.02 ? "warn" : "";
}

// ---------------------------------------------------------------- drawing

function sparkline(spark, what) {
  const req = spark.requests || [], err = spark.errors || [];
  const n = Math.max(req.length, err.length, 1);
  const width = 2 * n, height = 26;
  const top = Math.max(1, ...req, ...err);
  const el = svg("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
                          role: "img", "data-field": "sparkline" });
  const errTotal = err.reduce((a, b) => a + b, 0);
  const title = svg("title", {});
  title.textContent = `${what}: errors per 10 s over 15 min (red) against requests (grey): ${errTotal} errors, ` +
                      `at most ${Math.max(0, ...err)} in 10 s`;
  el.append(title);
  el.append(svg("rect", { class: "base", x: 0, y: height - 1, width, height: 1 }));  // the 15 minutes' frame
  for (let i = 0; i < n; i++) {
    const r = req[i] || 0, e = err[i] || 0;
    if (r) {
      const rh = Math.max(1, (r / top) * height);
      el.append(svg("rect", { class: "r", x: 2 * i, y: height - rh, width: 1.6, height: rh }));
    }
    if (e) {
      const eh = Math.max(3, (e / top) * height);
      el.append(svg("rect", { class: "e", x: 2 * i, y: height - eh, width: 1.6, height: eh }));
    }
  }
  return el;
}

function figure(field, value, label, cls) {
  return h("div", { class: "figure" + (cls ? " " + cls : "") },
           h("b", { "data-field": field, text: value }), h("span", {}, label));
}

function drawOverview(doc) {
  const g = doc.gateway, m = doc.last_1m, q = doc.last_15m;
  const parts = [
    h("span", {}, "all upstreams, 1 min: ", h("b", { "data-field": "requests-1m", text: num(m.requests) }),
      " requests, ", h("b", { text: pct(m.success_rate) }), " ok, p95 ", ms(m.p95_ms)),
    h("span", {}, "15 min: ", num(q.requests), " requests, ", pct(q.success_rate), " ok"),
    h("span", {}, "in flight: ", num(g.inflight)),
    h("span", {}, `cache (${doc.cache.store}): `, num(doc.cache.entries), " entries, ", bytes(doc.cache.bytes),
      doc.cache.store_errors ? h("span", { class: "bad", text: ` · ${doc.cache.store_errors} store errors` }) : ""),
  ];
  if (g.redis) parts.push(h("span", { class: g.redis.up ? "" : "bad" }, "redis: ", g.redis.up ? "up" : "DOWN"));
  if (doc.unrouted.last_15m.requests) {
    parts.push(h("span", {}, "no upstream matched (15 min): ", num(doc.unrouted.last_15m.requests)));
  }
  $("overview").replaceChildren(...parts);
  // One chip per upstream, worst breaker state and last minute: a phone sees every upstream at once.
  $("chips").replaceChildren(...doc.upstreams.map((up) => {
    const state = worstState(up);
    const rate = up.last_1m.success_rate;
    return h("a", { class: "chip", href: `#upstream-${up.name}`, "data-state": state, "data-chip": up.name },
      h("b", { text: up.name }), " ", state === "closed" ? "" : `breaker ${state.replace("_", "-")} · `,
      rate === null ? "idle" : `${pct(rate)} ok`);
  }));
}

function worstState(up) {
  const states = up.breakers.map((b) => b.state);
  return states.includes("open") ? "open" : states.includes("half_open") ? "half_open" : "closed";
}

function drawBreaker(b) {
  const scope = b.route && b.route !== "-" ? `route ${b.route}` : "whole upstream";
  const facts = [h("span", { text: `failures ${num(b.failures)}` })];
  if (b.opened_at) facts.push(h("span", {}, "opened ", h("span", { "data-field": "opened-at", text: when(b.opened_at) })));
  if (b.state === "open" && !b.forced && b.next_probe_at) {
    facts.push(h("span", {}, "next probe ", h("span", { "data-field": "next-probe", text: when(b.next_probe_at) })));
  }
  if (b.forced) facts.push(h("span", { class: "bad", text: "held open by an operator until reset" }));
  if (b.recovery_s !== undefined && b.state !== "closed") facts.push(h("span", { text: `recovery ${span(b.recovery_s)}` }));
  const actions = h("span", { class: "actions" },
    h("button", { type: "button", "data-action": "reset", "data-breaker": b.name, text: "Reset" }),
    h("button", { type: "button", class: "danger", "data-action": "open", "data-breaker": b.name, text: "Force open" }));
  const transitions = (b.transitions || []).slice(0, 4).map((t) =>
    h("li", { text: `${clock(t.at)} (${relative(t.at)}) ${t.from} → ${t.to}${t.cause ? " · " + t.cause : ""}` }));
  return h("div", { class: "breaker", "data-breaker": b.name, "data-state": b.state },
    h("div", { class: "line" },
      h("span", { class: "badge", "data-state": b.state, "data-field": "breaker-state", text: stateLabel(b) }),
      h("b", { text: `breaker ${b.name}` }), h("span", { class: "muted", text: scope }), ...facts, actions),
    transitions.length ? h("ol", { class: "transitions", "aria-label": "latest transitions" }, transitions)
                       : h("span", { class: "muted small", text: "no transition since the gateway started" }));
}

function rateText(limits) {
  if (!limits || !limits.length) return dash;
  return limits.map((l) => {
    const rate = `${Number(l.rate_per_s.toPrecision(3))}/s burst ${l.burst}`;
    if (l.scope === "global" && l.tokens_min === undefined) return `${rate} (shared)`;
    if (l.tokens_min === null || l.tokens_min === undefined) return `${rate}, full`;
    const keys = l.key ? `, ${l.keys} key${l.keys === 1 ? "" : "s"}` : "";
    const out = l.exhausted ? `, ${l.exhausted} empty` : "";
    return `${rate}: ${Math.max(0, Math.floor(l.tokens_min))} left${keys}${out}`;
  }).join("; ");
}

function quotaText(quota) {
  if (!quota) return null;
  const rows = Array.isArray(quota.windows) ? quota.windows : null;
  if (!rows) {
    return Object.entries(quota).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  }
  return rows.map((w) => {
    const who = w.key ? `${w.key} ` : "";
    return `${who}${w.window}: ${num(w.remaining)}/${num(w.limit)} left`;
  }).join("; ");
}

// The route table's columns; cache, rate-limit and quota columns only where a route has them.
const COLUMNS = [
  { title: "route", cell: (up, r) => h("td", { class: "name" }, h("b", { text: r.default ? "(other requests)" : r.name }),
      h("span", { class: "path", text: r.default ? `${up.prefix}/…` : `${r.methods.join(" ")} ${up.prefix}${r.path}` })) },
  { title: "req 1 min", num: true, field: "requests-1m", text: (r) => num(r.last_1m.requests) },
  { title: "ok 1 min", num: true, field: "success-1m", text: (r) => pct(r.last_1m.success_rate),
    cls: (r) => errorsClass(r.last_1m) },
  { title: "req 15 min", num: true, field: "requests-15m", text: (r) => num(r.last_15m.requests) },
  { title: "ok 15 min", num: true, field: "success-15m", text: (r) => pct(r.last_15m.success_rate),
    cls: (r) => errorsClass(r.last_15m) },
  { title: "p50 / p95 1 min", num: true, field: "latency-1m", text: (r) => `${ms(r.last_1m.p50_ms)} / ${ms(r.last_1m.p95_ms)}` },
  { title: "errors, 15 min", cell: (up, r) => h("td", { "data-label": "errors, 15 min" },
      sparkline(r.sparkline, `${up.name} ${r.name}`),
      h("span", { class: "muted small", "data-field": "errors-15m", text: `${num(r.last_15m.errors)} errors` })) },
  { title: "cache hits 15 min", num: true, when: (up) => up.routes.some((r) => r.cache), field: "hit-ratio-15m",
    text: (r) => r.cache ? `${pct(r.last_15m.hit_ratio)} of ${num(r.last_15m.cache_lookups)}` : "not cached" },
  { title: "STALE 1 / 15 min", num: true, when: (up) => up.routes.some((r) => r.cache), field: "stale",
    text: (r) => r.cache ? `${num(r.last_1m.stale)} / ${num(r.last_15m.stale)}` : dash,
    cls: (r) => r.last_1m.stale ? "warn" : "" },
  { title: "rate limit", when: (up) => up.routes.some((r) => r.rate_limit && r.rate_limit.length), field: "rate-limit",
    text: (r) => rateText(r.rate_limit) + (r.last_15m.throttled ? ` · ${num(r.last_15m.throttled)} refused (15 min)` : "") },
  { title: "quota", when: (up) => up.routes.some((r) => r.quota), field: "quota",
    text: (r) => quotaText(r.quota) || dash },
];

function drawRoutes(up) {
  const columns = COLUMNS.filter((c) => !c.when || c.when(up));
  // An upstream's unmatched requests get a row when it has no routes, or when some came in.
  const routes = up.routes.filter((r) => !r.default || up.routes.length === 1 || r.last_15m.requests);
  const row = (r) => h("tr", { "data-route": r.name }, columns.map((c) => c.cell ? c.cell(up, r) :
    h("td", { class: (c.num ? "num " : "") + (c.cls ? c.cls(r) : ""), "data-label": c.title, "data-field": c.field,
              text: c.text(r) })));
  return h("table", { class: "routes" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "", text: c.title })))),
    h("tbody", {}, routes.map(row)));
}

function drawUpstream(up) {
  const m = up.last_1m, q = up.last_15m;
  const worst = worstState(up);
  const caches = up.routes.some((r) => r.cache) || q.cache_lookups > 0;
  const limits = up.routes.some((r) => r.rate_limit && r.rate_limit.length) || q.throttled > 0;
  const figures = h("div", { class: "figures" },
    figure("success-1m", pct(m.success_rate),
           ["ok, last minute (", h("span", { "data-field": "requests-1m", text: num(m.requests) }), " requests)"],
           errorsClass(m)),
    figure("errors-1m", num(m.errors), "errors, last minute", m.errors ? errorsClass(m) || "warn" : ""),
    figure("success-15m", pct(q.success_rate),
           ["ok, 15 min (", h("span", { "data-field": "requests-15m", text: num(q.requests) }), " requests)"],
           errorsClass(q)),
    figure("errors-15m", num(q.errors), "errors, 15 min", ""),
    figure("latency-1m", `${ms(m.p50_ms)} / ${ms(m.p95_ms)}`, "p50 / p95, last minute", ""),
    figure("inflight", `${num(up.inflight)} · ${num(up.queued)}`,
           `in flight · queued (limit ${up.max_concurrent} + ${up.max_queue})`, up.queued ? "warn" : ""),
    caches && figure("hit-ratio-15m", pct(q.hit_ratio), `cache hits, 15 min (${num(q.cache_lookups)} lookups)`, ""),
    caches && figure("stale-15m", num(q.stale), `STALE served, 15 min (${num(up.cache.stale_served)} since start)`,
                     q.stale ? "warn" : ""),
    limits && figure("throttled-15m", num(q.throttled), "429s from the rate limits, 15 min", q.throttled ? "warn" : ""),
    h("div", { class: "figure" }, sparkline(up.sparkline, up.name), h("span", { text: "errors per 10 s, 15 min" })));
  const head = h("div", { class: "head" },
    h("h2", { text: up.name }),
    h("span", { class: "badge", "data-state": worst, "data-field": "upstream-breaker", text: `breaker ${worst.replace("_", "-")}` }),
    h("span", { class: "muted small", text: `${up.kind} · ${up.prefix}` }));
  return h("section", { class: "card upstream", id: `upstream-${up.name}`, "data-upstream": up.name },
    head, figures, up.breakers.map(drawBreaker), h("div", { class: "scroll" }, drawRoutes(up)));
}

const ERRORS_SHOWN = 12;
let allErrors = false;

function drawErrors(errors) {
  const shown = allErrors ? errors : errors.slice(0, ERRORS_SHOWN);
  const rows = shown.map((e) => h("tr", {},
    h("td", { class: "mono", title: e.at, text: clock(e.at) }),
    h("td", { class: "bad", title: `answered by: ${e.source}`, text: e.code || `upstream ${e.status}` }),
    h("td", { class: "num", text: e.status }),
    h("td", { text: e.upstream }),
    h("td", { text: e.route }),
    h("td", { text: e.method }),
    h("td", { class: "rid", text: e.request_id })));
  $("errors").tBodies[0].replaceChildren(...rows);
  $("errors-none").hidden = rows.length > 0;
  const more = $("errors-more");
  more.hidden = errors.length <= ERRORS_SHOWN;
  more.textContent = allErrors ? `Show the latest ${ERRORS_SHOWN}` : `Show all ${errors.length}`;
}

$("errors-more").addEventListener("click", () => { allErrors = !allErrors; if (last) drawErrors(last.errors); });

function drawPurgeChoices(upstreams) {
  const select = $("purge-upstream");
  const names = upstreams.map((u) => u.name);
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (have.join("\n") === names.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(h("option", { value: "", text: "every upstream" }),
                         ...names.map((n) => h("option", { value: n, text: n })));
  select.value = names.includes(chosen) ? chosen : "";
}

function draw(doc) {
  last = doc;
  const g = doc.gateway;
  const overall = $("overall");
  const state = g.draining ? "draining" : g.status;
  overall.dataset.state = state;
  overall.textContent = state;
  $("updated").textContent = `updated ${clock(g.now)} · v${g.version}`;
  drawOverview(doc);
  $("upstreams").replaceChildren(...doc.upstreams.map(drawUpstream));
  drawErrors(doc.errors);
  drawPurgeChoices(doc.upstreams);
  tokenRequired = doc.admin.token_required;
  drawLogin();
  const hist = doc.history;
  const since = Date.parse(g.now) - Date.parse(g.counting_since);
  const partial = since < hist.buckets * hist.bucket_seconds * 1000
    ? ` Counting since ${clock(g.counting_since)} (${span(since / 1000)} ago).` : "";
  $("footer").textContent =
    `"1 min" is the last ${hist.minute_buckets} buckets of ${hist.bucket_seconds} s (the current one included); ` +
    `"15 min" is the last ${hist.buckets}.${partial} Refreshes every ${pollSeconds} s.`;
}

// ---------------------------------------------------------------- polling

function schedule(delay) {
  clearTimeout(timer);
  if (document.hidden) return;            // resumed by visibilitychange
  timer = setTimeout(poll, delay);
}

async function poll() {
  if (polling) return;
  polling = true;
  try {
    const resp = await fetch(STATUS_URL, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const doc = await resp.json();
    if (doc.poll_seconds) pollSeconds = Math.max(2, Number(doc.poll_seconds));
    draw(doc);
    lastOkAt = Date.now();
    $("main").classList.remove("stale");
    $("conn").textContent = "";
    $("conn").classList.remove("bad");
  } catch (err) {
    $("main").classList.add("stale");
    $("conn").classList.add("bad");
    $("conn").textContent = lastOkAt
      ? `no answer from the gateway since ${new Date(lastOkAt).toLocaleTimeString([], { hour12: false })}`
      : "no answer from the gateway";
  } finally {
    polling = false;
    schedule(pollSeconds * 1000);
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) clearTimeout(timer);
  else poll();
});

// ---------------------------------------------------------------- the admin token

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function drawLogin() {
  const have = Boolean(token());
  $("login").hidden = !tokenRequired || have;
  $("logged").hidden = !tokenRequired || !have;
}

function useToken() {
  const value = $("token").value.trim();
  $("token").value = "";
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  drawLogin();
  notice("Token kept for this tab; the gateway checks it on the first action.", "ok");
}

$("token-use").addEventListener("click", useToken);
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") useToken(); });
$("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); drawLogin(); });

// ---------------------------------------------------------------- confirmations and actions

let noticeTimer = null;
function notice(text, kind) {
  const el = $("notice");
  el.textContent = text;
  el.className = "notice " + (kind || "");
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

function confirmAction(text, okLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").removeEventListener("click", ok);
      $("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = () => done(false);
    $("confirm-ok").addEventListener("click", ok);
    $("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);     // Escape
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

function needToken() {
  if (!tokenRequired || token()) return false;
  drawLogin();
  notice("This gateway has an admin token: enter it first.", "bad");
  $("token").focus();
  return true;
}

async function post(path, body) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method: "POST", headers, cache: "no-store",
                               body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    notice("The gateway did not answer.", "bad");
    return null;
  }
  let data = null;
  try { data = await resp.json(); } catch (err) { data = null; }
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenRequired = true;
    drawLogin();
    notice("The gateway refused the admin token: enter it again.", "bad");
    return null;
  }
  if (!resp.ok) {
    const why = data && data.error && data.error.message ? data.error.message : `HTTP ${resp.status}`;
    notice(why, "bad");
    return null;
  }
  return data;
}

const BREAKER_ACTIONS = {
  reset: {
    label: "Reset",
    text: (name) => `Reset breaker ${name}? It closes now: requests go to the upstream again.`,
    done: (name) => `Breaker ${name} reset: closed.`,
  },
  open: {
    label: "Force open",
    text: (name) => `Force breaker ${name} open? Its requests get 503 breaker_open (or a STALE answer from the ` +
                    `cache) until someone resets it.`,
    done: (name) => `Breaker ${name} forced open until reset.`,
  },
};

$("upstreams").addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-action]");
  if (!button) return;
  const name = button.dataset.breaker, action = BREAKER_ACTIONS[button.dataset.action];
  if (!action || needToken()) return;
  if (!(await confirmAction(action.text(name), action.label))) return;
  const done = await post(`admin/breakers/${encodeURIComponent(name)}/${button.dataset.action}`);
  if (done) { notice(action.done(name), "ok"); poll(); }
});

$("purge").addEventListener("click", async () => {
  const upstream = $("purge-upstream").value;
  const prefix = $("purge-prefix").value.trim();
  if (prefix && !prefix.startsWith("/")) { notice("The path prefix starts with '/', as the backend calls the gateway.", "bad"); return; }
  if (needToken()) return;
  const what = `${upstream ? `upstream ${upstream}` : "every upstream"}${prefix ? ` under ${prefix}` : ""}`;
  if (!(await confirmAction(`Purge the cached answers of ${what}? The next requests go to the upstream.`, "Purge"))) return;
  const body = {};
  if (upstream) body.upstream = upstream;
  if (prefix) body.path_prefix = prefix;
  const done = await post("admin/cache/purge", body);
  if (done) { notice(`Purged ${done.deleted} cached answer${done.deleted === 1 ? "" : "s"} of ${what}.`, "ok"); poll(); }
});

poll();
