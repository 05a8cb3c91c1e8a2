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
  $("patient-view").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("who").textContent = signedIn ? `${who.name} (${who.scope} key)` : "";
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
  } catch (error) {
    $("record-body").replaceChildren();
    document.querySelector("#neighbours tbody").replaceChildren();
    $("patient-error").textContent = error.message;
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

document.addEventListener("DOMContentLoaded", () => {
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
