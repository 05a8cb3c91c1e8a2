// The ehrembed console: a thin client of the /v1 API. The key lives in sessionStorage only and goes out
// as a Bearer header to this origin; every patient view is an audited API request. Text from the server is
// put in the page as text nodes, never as HTML.
"use strict";

const KEY = "ehrembed.key";
const $ = (id) => document.getElementById(id);

function key() {
  return sessionStorage.getItem(KEY);
}

async function api(path, body) {
  const headers = { Authorization: "Bearer " + key() };
  const init = body === undefined ? { headers } : {
    method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (answer.error && answer.error.message) || response.statusText;
    throw new Error(message);
  }
  return answer;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function show(signedIn, who) {
  $("sign-in-view").hidden = signedIn;
  $("app-view").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("who").textContent = signedIn ? `${who.name} (${who.scope} key)` : "";
}

// --- pages -------------------------------------------------------------------------------------------

let currentPage = "patient-page";
const LOADERS = {}; // page id -> async function that (re)loads it for the chosen dataset

function showPage(id) {
  currentPage = id;
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== id;
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.page === id) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  refreshPage();
}

function refreshPage() {
  const load = LOADERS[currentPage];
  if (load && $("dataset").value) load();
}

async function signIn(secret) {
  sessionStorage.setItem(KEY, secret);
  try {
    const who = await api("/v1/whoami");
    const datasets = await api("/v1/datasets");
    const select = $("dataset");
    select.replaceChildren(...datasets.map((d) => el("option", `${d.name} (${d.subjects} patients)`, { value: d.name })));
    const tasks = await api("/v1/tasks");
    $("task").replaceChildren(...tasks.map((t) => el("option", t.name, { value: t.name })));
    const encoders = await api("/v1/encoders");
    $("encoder").replaceChildren(...encoders.map((name) => el("option", name, { value: name })));
    show(true, who);
    refreshPage();
  } catch (error) {
    sessionStorage.removeItem(KEY);
    show(false);
    $("sign-in-error").textContent = `Sign-in failed: ${error.message}`;
  }
}

function renderRecord(markdown) {
  // Headings and list items of the record's Markdown, as elements with text content only.
  const body = $("record-body");
  const parts = [];
  let list = null;
  for (const line of markdown.split("\n")) {
    const heading = /^(#{1,4})\s+(.*)$/.exec(line);
    if (heading) {
      list = null;
      parts.push(el("h" + Math.min(heading[1].length + 3, 6), heading[2]));
    } else if (line.startsWith("- ")) {
      if (!list) {
        list = el("ul");
        parts.push(list);
      }
      list.append(el("li", line.slice(2)));
    } else if (line.trim()) {
      list = null;
      parts.push(el("p", line));
    }
  }
  body.replaceChildren(...parts);
}

function shared(explanation) {
  const names = [...explanation.conditions, ...explanation.medications, ...explanation.procedures];
  return names.map((c) => c.description || c.code).join("; ") || explanation.summary || "";
}

function renderNeighbours(result) {
  const rows = result.neighbors.map((n) => {
    const row = el("tr");
    const age = n.age === null ? "?" : Math.floor(n.age);
    row.append(el("td", n.rank), el("td", n.subject_id), el("td", n.score.toFixed(3)),
      el("td", `${n.sex || "?"}, ${age}`), el("td", shared(n.explanation)));
    return row;
  });
  document.querySelector("#neighbours tbody").replaceChildren(...rows);
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) search.append(name, value);
  }
  return search.toString();
}

async function openPatient() {
  const dataset = $("dataset").value;
  const subject = $("subject").value;
  const asOf = $("as-of").value ? $("as-of").value + "T23:59:59" : "";
  $("patient-error").textContent = "";
  try {
    const record = await api(`/v1/patients/${encodeURIComponent(subject)}/record?${query({ dataset, as_of: asOf })}`);
    renderRecord(record.record);
    await searchSimilar();
    await loadOutlook();
  } catch (error) {
    $("record-body").replaceChildren();
    document.querySelector("#neighbours tbody").replaceChildren();
    $("patient-error").textContent = error.message;
  }
}

async function loadOutlook() {
  const subject = encodeURIComponent($("subject").value);
  const params = { dataset: $("dataset").value, horizon_days: 365, top: 10,
    as_of: $("as-of").value ? $("as-of").value + "T23:59:59" : "" };
  const body = document.querySelector("#outlook-table tbody");
  $("outlook-status").textContent = "";
  try {
    const outlook = await api(`/v1/patients/${subject}/outlook?${query(params)}`);
    body.replaceChildren(...outlook.items.map((item) => {
      const row = el("tr");
      row.append(el("td", item.code), el("td", item.description), el("td", `${(100 * item.probability).toFixed(1)} %`));
      return row;
    }));
    $("outlook-status").textContent = `Model ${outlook.model}, as of ${outlook.as_of.slice(0, 10)}.`;
  } catch (error) {
    body.replaceChildren();
    $("outlook-status").textContent = `No outlook: ${error.message}`;
  }
}

async function searchSimilar() {
  const filters = new FormData($("filters"));
  const params = {
    dataset: $("dataset").value,
    k: 10,
    as_of: $("as-of").value ? $("as-of").value + "T23:59:59" : "",
    sex: filters.get("sex"),
    min_age: filters.get("min_age"),
    max_age: filters.get("max_age"),
    split: filters.get("split"),
    has_code: filters.get("has_code"),
  };
  const subject = encodeURIComponent($("subject").value);
  const table = $("neighbours");
  table.setAttribute("aria-busy", "true");
  try {
    renderNeighbours(await api(`/v1/patients/${subject}/similar?${query(params)}`));
  } finally {
    table.setAttribute("aria-busy", "false");
  }
}

async function fitHead() {
  const body = {
    dataset: $("dataset").value, task: $("task").value, encoder: $("encoder").value,
    head: $("head-kind").value, max_examples: 120,
  };
  const head = await api("/v1/heads", body);
  $("head-id").value = head.head_id;
  const auroc = head.metrics.auroc === undefined ? "no validation AUROC" : `validation AUROC ${head.metrics.auroc.toFixed(3)}`;
  $("head-card").textContent = `Head ${head.head_id}: ${head.kind} on ${head.encoder}, ${head.n_examples} examples ` +
    `(${head.n_positive} positive), ${auroc}.`;
}

function renderRisk(prediction) {
  $("probability").textContent = `Risk: ${(100 * prediction.probability).toFixed(1)}% as of ${prediction.as_of}`;
  const rows = prediction.similar_examples.map((e) => {
    const row = el("tr");
    const label = e.boolean_value === undefined ? e.label : e.boolean_value;
    row.append(el("td", e.subject_id), el("td", e.prediction_time), el("td", label ? "positive" : "negative"),
      el("td", Number(e.similarity).toFixed(3)));
    return row;
  });
  document.querySelector("#evidence tbody").replaceChildren(...rows);
  const passages = prediction.guidelines.map((g) => {
    const item = el("li");
    item.append(el("strong", `${g.title} — ${g.section}: `), document.createTextNode(g.passage));
    if (g.doi) {
      item.append(document.createTextNode(" "));
      item.append(el("a", `doi:${g.doi}`, { href: `https://doi.org/${g.doi}`, rel: "noreferrer noopener" }));
    }
    return item;
  });
  $("passages").replaceChildren(...passages);
}

async function predictRisk() {
  const body = { subject_ids: [Number($("subject").value)], evidence: 3, guidelines: 2 };
  if ($("as-of").value) body.as_of = $("as-of").value + "T23:59:59";
  const result = await api(`/v1/heads/${encodeURIComponent($("head-id").value)}/predict`, body);
  renderRisk(result.predictions[0]);
}

function reportRiskErrors(action) {
  $("risk-error").textContent = "";
  action().catch((error) => {
    $("risk-error").textContent = error.message;
  });
}

// --- dataset page ------------------------------------------------------------------------------------

const percent = (part, whole) => (whole ? `${(100 * part / whole).toFixed(1)}%` : "—");

function rows(tbody, data, cells) {
  document.querySelector(tbody).replaceChildren(...data.map((item) => {
    const row = el("tr");
    row.append(...cells(item).map((text) => el("td", text)));
    return row;
  }));
}

async function datasetDetail() {
  return api(`/v1/datasets/${encodeURIComponent($("dataset").value)}`);
}

LOADERS["dataset-page"] = async () => {
  $("dataset-error").textContent = "";
  try {
    const detail = await datasetDetail();
    const stats = detail.stats;
    const coverage = stats.description_coverage;
    const facts = [
      ["Subjects", detail.subjects.toLocaleString()],
      ["Events", detail.events.toLocaleString()],
      ["Distinct codes", stats.codes.toLocaleString()],
      ["Time range", stats.time_range.map((t) => (t || "?").slice(0, 10)).join(" to ")],
      ["Splits", Object.entries(stats.splits).map(([name, n]) => `${name} ${n}`).join(", ")],
      ["Events with a description", `${(100 * coverage.event_coverage).toFixed(1)}%`],
      ["Codes with a description", `${(100 * coverage.code_coverage).toFixed(1)}%`],
      ["Similar-patient index", detail.index ? "yes" : "none recorded"],
    ];
    $("dataset-summary").replaceChildren(...facts.flatMap(([term, value]) => [el("dt", term), el("dd", value)]));
    rows("#coverage-table tbody", Object.entries(stats.coverage_by_vocabulary),
      ([name, c]) => [name, c.events.toLocaleString(), percent(c.events_described, c.events)]);
    rows("#top-codes tbody", stats.top_codes, (c) => [c.code, c.description || "(no description)", c.events.toLocaleString()]);
    const built = [
      ...detail.embeddings.map((a) => ["embeddings", a.name, a.encoder || "", a.created_at.slice(0, 16)]),
      ...detail.indexes.map((a) => ["index", a.name, a.encoder || "", a.created_at.slice(0, 16)]),
      ...detail.reports.map((name) => ["report", name, "", ""]),
    ];
    rows("#built-table tbody", built, (cells) => cells);
  } catch (error) {
    $("dataset-error").textContent = error.message;
  }
};

// --- benchmark report page ---------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#0b5cad", "#b35806", "#1b7837", "#762a83", "#a40e26", "#4a5562", "#8c510a", "#01665e"];
let report = null;

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function plotReport(head) {
  // Macro AUROC against k (categorical axis, in the report's k order), one line and CI band per encoder.
  const data = report.macro_auroc.filter((r) => r.head === head && r.auroc !== null);
  const ks = report.ks;
  const width = 640, height = 360, left = 56, right = 150, top = 16, bottom = 44;
  const values = data.flatMap((r) => [r.auroc, r.auroc_lo ?? r.auroc, r.auroc_hi ?? r.auroc]);
  const low = Math.max(0, Math.floor((Math.min(...values) - 0.02) * 20) / 20);
  const high = Math.min(1, Math.ceil((Math.max(...values) + 0.02) * 20) / 20);
  const x = (k) => left + (ks.length === 1 ? 0.5 : ks.indexOf(k) / (ks.length - 1)) * (width - left - right);
  const y = (v) => top + (1 - (v - low) / (high - low || 1)) * (height - top - bottom);
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
    "aria-label": `Macro AUROC against k for the ${head} head; the table below gives the numbers`,
  });
  for (let tick = low; tick <= high + 1e-9; tick += 0.05) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), stroke: "#e1e4e8" }));
    chart.append(svg("text", { x: left - 8, y: y(tick) + 4, "text-anchor": "end", "font-size": 12 }, tick.toFixed(2)));
  }
  for (const k of ks) {
    chart.append(svg("text", { x: x(k), y: height - bottom + 18, "text-anchor": "middle", "font-size": 12 }, k));
  }
  chart.append(svg("text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle", "font-size": 13 },
    "k (labelled examples per class)"));
  chart.append(svg("text", { x: 14, y: (top + height - bottom) / 2, "text-anchor": "middle", "font-size": 13,
    transform: `rotate(-90 14 ${(top + height - bottom) / 2})` }, "macro AUROC"));
  report.encoders.forEach((encoder, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const points = ks.map((k) => data.find((r) => r.encoder === encoder && r.k === k)).filter(Boolean);
    if (!points.length) return;
    const banded = points.filter((r) => r.auroc_lo !== null && r.auroc_hi !== null);
    if (banded.length > 1) {
      const outline = [...banded.map((r) => `${x(r.k)},${y(r.auroc_hi)}`),
        ...banded.reverse().map((r) => `${x(r.k)},${y(r.auroc_lo)}`)];
      chart.append(svg("polygon", { points: outline.join(" "), fill: colour, "fill-opacity": 0.12, stroke: "none" }));
    }
    const line = svg("polyline", { points: points.map((r) => `${x(r.k)},${y(r.auroc)}`).join(" "),
      fill: "none", stroke: colour, "stroke-width": 2, class: "series" });
    line.append(svg("title", {}, encoder));
    chart.append(line);
    for (const r of points) chart.append(svg("circle", { cx: x(r.k), cy: y(r.auroc), r: 3.5, fill: colour }));
    const legendY = top + 14 + 20 * i;
    chart.append(svg("line", { x1: width - right + 12, x2: width - right + 32, y1: legendY - 4, y2: legendY - 4,
      stroke: colour, "stroke-width": 3 }));
    chart.append(svg("text", { x: width - right + 38, y: legendY, "font-size": 13 }, encoder));
  });
  $("report-plot").replaceChildren(chart);
}

function tableHead(selector, names) {
  const row = el("tr");
  row.append(...names.map((name) => el("th", name, { scope: "col" })));
  document.querySelector(selector).replaceChildren(row);
}

function reportTables(head) {
  const ks = report.ks;
  const value = (r) => (r === undefined || r.auroc === null ? "—" : r.auroc.toFixed(3) +
    (r.auroc_lo === null ? "" : ` (${r.auroc_lo.toFixed(3)}–${r.auroc_hi.toFixed(3)})`));
  tableHead("#report-table thead", ["encoder", ...ks.map((k) => `k=${k}`)]);
  rows("#report-table tbody", report.encoders, (encoder) => [encoder,
    ...ks.map((k) => value(report.macro_auroc.find((r) => r.head === head && r.encoder === encoder && r.k === k)))]);
  const tally = report.wins_ties_losses.filter((r) => r.head === head);
  const versus = [...new Set(tally.map((r) => r.encoder))];
  tableHead("#report-wtl thead", ["encoder", ...ks.map((k) => `k=${k}`)]);
  rows("#report-wtl tbody", versus, (encoder) => [encoder, ...ks.map((k) => {
    const r = tally.find((t) => t.encoder === encoder && t.k === k);
    return r ? `${r.wins} / ${r.ties} / ${r.losses}` : "—";
  })]);
}

function drawReport() {
  const head = $("report-head").value;
  if (!report || !head) return;
  plotReport(head);
  reportTables(head);
}

async function openReport() {
  const name = $("report").value;
  $("report-error").textContent = "";
  report = null;
  if (!name) {
    $("report-name").textContent = "No benchmark report is recorded for this dataset (run `ehrembed benchmark`).";
    $("report-plot").replaceChildren();
    return;
  }
  report = await api(`/v1/reports/${encodeURIComponent(name)}`);
  $("report-name").textContent = `${report.title} (${report.created_at.slice(0, 16)})`;
  const previous = $("report-head").value;
  $("report-head").replaceChildren(...report.heads.map((h) => el("option", h, { value: h })));
  if (report.heads.includes(previous)) $("report-head").value = previous;
  drawReport();
}

LOADERS["report-page"] = async () => {
  try {
    const reports = await api(`/v1/reports?${query({ dataset: $("dataset").value })}`);
    $("report").replaceChildren(...reports.map((r) => el("option", `${r.title} — ${r.name}`, { value: r.name })));
    await openReport();
  } catch (error) {
    $("report-error").textContent = error.message;
  }
};

// --- export page -------------------------------------------------------------------------------------

LOADERS["export-page"] = async () => {
  $("export-error").textContent = "";
  try {
    const detail = await datasetDetail();
    $("export-set").replaceChildren(...detail.embeddings.map((a) =>
      el("option", `${a.name} (${a.encoder || "?"}, ${a.dim || "?"} dims)`, { value: a.name })));
  } catch (error) {
    $("export-error").textContent = error.message;
  }
};

async function download() {
  // One page of the set through the audited export route; saved with the name the server gives it.
  const params = {
    dataset: $("dataset").value, encoder: $("export-set").value, format: $("export-format").value,
    offset: $("export-offset").value || 0, limit: $("export-limit").value,
  };
  const response = await fetch(`/v1/embeddings/export?${query(params)}`, { headers: { Authorization: "Bearer " + key() } });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    throw new Error((answer.error && answer.error.message) || response.statusText);
  }
  const disposition = response.headers.get("Content-Disposition") || "";
  const filename = (/filename="([^"]+)"/.exec(disposition) || [])[1] || `embeddings.${params.format}`;
  const blob = await response.blob();
  const link = el("a", "", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  const offset = Number(params.offset), got = Number(response.headers.get("X-Rows"));
  const total = Number(response.headers.get("X-Total-Rows"));
  $("export-status").textContent = `Saved ${filename}: rows ${offset + 1}–${offset + got} of ${total}.`;
  $("export-next").disabled = offset + got >= total;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showPage(tab.dataset.page));
  }
  $("dataset").addEventListener("change", refreshPage);
  $("report").addEventListener("change", () => openReport().catch((error) => {
    $("report-error").textContent = error.message;
  }));
  $("report-head").addEventListener("change", drawReport);
  $("export-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("export-error").textContent = "";
    download().catch((error) => {
      $("export-error").textContent = error.message;
    });
  });
  $("export-next").addEventListener("click", () => {
    $("export-offset").value = Number($("export-offset").value || 0) + Number($("export-limit").value);
    $("export-form").requestSubmit();
  });
  $("head-form").addEventListener("submit", (event) => {
    event.preventDefault();
    reportRiskErrors(fitHead);
  });
  $("head-pick").addEventListener("submit", (event) => {
    event.preventDefault();
    reportRiskErrors(predictRisk);
  });
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    $("sign-in-error").textContent = "";
    signIn($("api-key").value.trim());
    $("api-key").value = "";
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    show(false);
  });
  $("patient-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openPatient();
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    searchSimilar().catch((error) => {
      $("patient-error").textContent = error.message;
    });
  });
  if (key()) signIn(key());
  else show(false);
});
