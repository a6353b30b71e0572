// The solver's page: "Ask" posts to /v1/solve, "Run" draws /v1/run (refreshed every few seconds).
// Plain DOM and inline SVG; model output is always inserted as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 3000;
const STRATEGIES = ["greedy", "majority", "rerank"];  // shown only when the API's schema lists them
let runTimer = null;

function el(tag, attrs = {}, text = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `HTTP ${response.status}`;
    throw Object.assign(new Error(message), { status: response.status });
  }
  return body;
}

const pct = (x) => (x === null || x === undefined ? "-" : `${(100 * x).toFixed(1)}%`);
const secs = (s) => (s === null || s === undefined ? "" : s >= 90 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`);

// ---------------------------------------------------------------------------------------------- views
function show(view) {
  for (const name of ["ask", "run"]) {
    $(`${name}-view`).hidden = name !== view;
    $(`tab-${name}`).classList.toggle("active", name === view);
  }
  clearInterval(runTimer);
  if (view === "run") {
    refreshRun();
    runTimer = setInterval(refreshRun, REFRESH_MS);
  }
}

async function refreshLiveModel() {
  try {
    const health = await getJSON("/healthz");
    $("live-model").textContent = `live model: ${health.model_version || "none"}`;
  } catch (e) {
    $("live-model").textContent = "solver unreachable";
  }
}

// ------------------------------------------------------------------------------------------------ ask
async function loadStrategies() {
  let offered = ["greedy", "majority"];
  try {
    const schema = (await getJSON("/openapi.json")).components.schemas.SolveRequest.properties.strategy;
    offered = schema.enum || (schema.anyOf || []).flatMap((s) => s.enum || [s.const]).filter(Boolean);
  } catch (e) { /* the defaults the API has always had */ }
  for (const s of STRATEGIES.filter((s) => offered.includes(s))) $("strategy").append(el("option", { value: s }, s));
  $("strategy").addEventListener("change", syncN);
  syncN();
}

function syncN() {
  $("n").disabled = $("strategy").value === "greedy";
}

// A calculator annotation `<<48/2=24>>`: with the calculator on, the text after `=` is forced by it.
const ANNOTATION = /<<([^<>=]*)=([^<>]*)>>/g;

function renderRationale(target, text, calculatorOn) {
  target.replaceChildren();
  let last = 0;
  for (const m of text.matchAll(ANNOTATION)) {
    target.append(text.slice(last, m.index), `<<${m[1]}=`);
    if (calculatorOn) target.append(el("mark", { class: "calc", title: `${m[1]} = ${m[2]}, forced by the calculator` }, m[2]));
    else target.append(m[2]);
    target.append(">>");
    last = m.index + m[0].length;
  }
  target.append(text.slice(last));
}

async function solve(event) {
  event.preventDefault();
  const strategy = $("strategy").value;
  const calculatorOn = $("calculator").checked;
  const request = { question: $("question").value, strategy, calculator: calculatorOn };
  if (strategy !== "greedy") request.n = Number($("n").value);
  $("solve").disabled = true;
  $("ask-error").hidden = true;
  try {
    const body = await getJSON("/v1/solve", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) });
    $("answer").textContent = body.answer === null ? "(no answer)" : body.answer;
    $("answer-model").textContent = body.model_version;
    renderRationale($("rationale"), body.rationale, calculatorOn);
    $("calc-legend").hidden = !calculatorOn || !$("rationale").querySelector("mark.calc");
    const clusters = body.clusters || (body.answer === null ? [] : [{ answer: body.answer, votes: body.votes }]);
    const reranked = body.rule !== null && body.rule !== undefined;  // clusters carry verifier scores
    const rows = $("clusters").tBodies[0];
    rows.replaceChildren(...clusters.map((c) => {
      const tr = el("tr");
      tr.append(el("td", {}, c.answer === null ? "(none)" : String(c.answer)), el("td", {}, String(c.votes)),
                el("td", {}, pct(c.votes / body.n)));
      if (reranked) tr.append(el("td", {}, c.best_score.toFixed(3)), el("td", {}, c.summed_score.toFixed(3)));
      if (reranked && c.answer === body.answer) tr.classList.add("chosen");
      return tr;
    }));
    for (const th of $("clusters").querySelectorAll("th.score")) th.hidden = !reranked;
    $("rerank-legend").hidden = !reranked;
    if (reranked) {
      $("rerank-legend").textContent = `chosen by ${body.rule} (K = ${body.top_k}) with verifier ` +
        `${body.verifier_version}; the rationale is the chosen answer's best-scored sample`;
    }
    $("clusters-box").hidden = body.n < 2;
    $("result").hidden = false;
  } catch (e) {
    $("ask-error").textContent = e.message;
    $("ask-error").hidden = false;
  } finally {
    $("solve").disabled = false;
  }
}

// ------------------------------------------------------------------------------------------------ run
async function refreshRun() {
  try {
    const run = await getJSON("/v1/run");
    $("run-error").hidden = true;
    renderRun(run);
    $("run-body").hidden = false;
  } catch (e) {
    $("run-error").textContent = e.status === 404 ? `No run to show: ${e.message}` : `Could not read the run: ${e.message}`;
    $("run-error").hidden = false;
    $("run-body").hidden = true;
  }
}

function renderRun(run) {
  $("run-title").textContent = `Run ${run.name}`;
  const running = run.stages.filter((s) => s.status === "running").map((s) => s.name);
  const total = run.stages.reduce((sum, s) => sum + (s.seconds || 0), 0);
  $("run-status").textContent = `mode ${run.mode} · ${run.status}` +
    (running.length ? ` · in progress: ${running.join(", ")}` : "") + ` · ${secs(total)} of stages · ${run.run_dir}`;
  drawAccuracy($("accuracy-chart"), run.iterations);
  drawData($("data-chart"), run.iterations);
  drawStages(run.stages);
  $("serving-version").textContent = run.serving.model_version || "none";
  $("serving-history").textContent = `served so far: ${run.serving.history.join(" → ") || "-"}`;
  $("promotions").tBodies[0].replaceChildren(...run.promotions.map((p) => {
    const tr = el("tr");
    const decision = p.rollback ? "rollback" : p.promoted ? "promoted" : `kept ${p.live}`;
    tr.append(el("td", {}, p.version + (p.version === run.live ? " (live)" : "")), el("td", {}, pct(p.dev_accuracy)),
              el("td", {}, decision));
    return tr;
  }));
}

// The chart frame shared by both charts: returns x(i) for iteration index i and y(v) for value v.
const BOX = { left: 44, right: 410, top: 28, bottom: 226 };

function niceStep(top) {  // the smallest 1, 2 or 5 times a power of ten that spans `top` in at most 5 steps
  for (let magnitude = 10 ** Math.floor(Math.log10(top / 5)); ; magnitude *= 10) {
    for (const m of [1, 2, 5]) if (top / (m * magnitude) <= 5) return m * magnitude;
  }
}

function frame(svg, count, top, yLabel, format) {
  svg.replaceChildren();
  const step = niceStep(top);
  const ticks = Math.max(1, Math.ceil(top / step - 1e-9));
  const yMax = ticks * step;
  const x = (i) => BOX.left + (BOX.right - BOX.left) * (i + 0.5) / Math.max(count, 1);
  const y = (v) => BOX.bottom - (BOX.bottom - BOX.top) * v / yMax;
  for (let k = 0; k <= ticks; k++) {
    const v = step * k;
    svg.append(el("line", { x1: BOX.left, x2: BOX.right, y1: y(v), y2: y(v), class: "axis" }, null, SVG));
    svg.append(el("text", { x: BOX.left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v), SVG));
  }
  for (let i = 0; i < count; i++) {
    svg.append(el("text", { x: x(i), y: BOX.bottom + 16, "text-anchor": "middle" }, String(i), SVG));
  }
  svg.append(el("text", { x: (BOX.left + BOX.right) / 2, y: BOX.bottom + 31, "text-anchor": "middle" },
                "iteration (0 = warm-up SFT)", SVG));
  svg.append(el("text", { x: 12, y: BOX.top - 12 }, yLabel, SVG));
  return { x, y };
}

function legend(svg, entries) {
  const width = (label) => 30 + 6.5 * label.length;  // swatch, gap and the label at 11 px
  let x0 = BOX.right - entries.reduce((sum, [label]) => sum + width(label), 0);
  entries.forEach(([label, color, dashed]) => {
    svg.append(el("line", { x1: x0, x2: x0 + 18, y1: 12, y2: 12, stroke: color, "stroke-width": 3,
                            "stroke-dasharray": dashed ? "5 3" : "none" }, null, SVG));
    svg.append(el("text", { x: x0 + 23, y: 16 }, label, SVG));
    x0 += width(label);
  });
}

function drawAccuracy(svg, rows) {
  const values = rows.flatMap((r) => [r.dev, r.test]).filter((v) => v !== null && v !== undefined);
  const { x, y } = frame(svg, rows.length, Math.max(0.05, ...values), "greedy accuracy", (v) => `${+(100 * v).toFixed(1)}%`);
  for (const [key, color, dashed] of [["dev", "var(--dev)", false], ["test", "var(--test)", true]]) {
    const points = rows.map((r, i) => [i, r[key]]).filter(([, v]) => v !== null && v !== undefined);
    if (points.length > 1) {
      svg.append(el("polyline", { points: points.map(([i, v]) => `${x(i)},${y(v)}`).join(" "), fill: "none",
                                  stroke: color, "stroke-width": 2.5, "stroke-dasharray": dashed ? "6 4" : "none",
                                  class: `line-${key}` }, null, SVG));
    }
    for (const [i, v] of points) {
      svg.append(el("circle", { cx: x(i), cy: y(v), r: 4.5, fill: color, class: `point-${key}` }, null, SVG));
      // dev's value above-left of its point, test's below-right: close values stay readable
      const dev = key === "dev";
      svg.append(el("text", { x: x(i) + (dev ? -8 : 8), y: y(v) + (dev ? -6 : 14), "text-anchor": dev ? "end" : "start" },
                    pct(v), SVG));
    }
  }
  legend(svg, [["dev", "var(--dev)", false], ["test", "var(--test)", true]]);
}

function drawData(svg, rows) {
  const values = rows.flatMap((r) => [r.pairs || 0, r.pseudo_labels || 0]);
  const { x, y } = frame(svg, rows.length, Math.max(4, ...values), "count", (v) => String(Math.round(v)));
  const width = Math.min(28, (BOX.right - BOX.left) / Math.max(rows.length, 1) / 3);
  rows.forEach((r, i) => {
    [["pairs", "var(--dev)", -1], ["pseudo_labels", "var(--test)", 0]].forEach(([key, color, offset]) => {
      const v = r[key];
      if (v === null || v === undefined) return;
      svg.append(el("rect", { x: x(i) + offset * width, y: y(v), width: width - 2, height: BOX.bottom - y(v),
                              fill: color, class: `bar-${key}` }, null, SVG));
      svg.append(el("text", { x: x(i) + offset * width + width / 2 - 1, y: y(v) - 4, "text-anchor": "middle" },
                    String(v), SVG));
    });
  });
  legend(svg, [["DPO pairs", "var(--dev)", false], ["pseudo-labels", "var(--test)", false]]);
}

function drawStages(stages) {
  const longest = Math.max(1, ...stages.map((s) => s.seconds || 0));
  $("stages").replaceChildren(...stages.map((s) => {
    const li = el("li", { class: s.status || "", title: s.error || s.status || "" });
    const track = el("div");
    track.append(el("div", { class: "bar", style: `width:${(100 * (s.seconds || 0) / longest).toFixed(1)}%` }));
    li.append(el("span", { class: "name" }, s.name + (s.status === "running" ? " ⋯" : s.status === "failed" ? " ✗" : "")),
              track, el("span", { class: "secs" }, secs(s.seconds)));
    return li;
  }));
}

// ------------------------------------------------------------------------------------------------ start
$("ask-form").addEventListener("submit", solve);
window.addEventListener("hashchange", () => show(location.hash === "#run" ? "run" : "ask"));
loadStrategies();
refreshLiveModel();
setInterval(refreshLiveModel, 10 * REFRESH_MS);
show(location.hash === "#run" ? "run" : "ask");
