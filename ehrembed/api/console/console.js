// The ehrembed console: a thin client of the /v1 API. The key lives in sessionStorage only and goes out
// as a Bearer header to this origin; every patient view is an audited API request. Text from the server is
// put in the page as text nodes, never as HTML.
"use strict";

const KEY = "ehrembed.key";
const $ = (id) => document.getElementById(id);

function key() {
  return sessionStorage.getItem(KEY);
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + key() } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    throw new Error(message);
  }
  return body;
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

document.addEventListener("DOMContentLoaded", () => {
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
