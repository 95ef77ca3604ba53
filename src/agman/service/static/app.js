// agman web page: choose a query image (drop / file picker) or a catalog item (paged through
// /items), weight attributes, search, see the ranked grid with each item's labels (those matching
// the reference value marked), how many match per attribute and what the query is predicted to be;
// ask for more results; click any tile or the query to load its attention heatmap.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  file: null,        // File chosen but not uploaded yet
  queryId: null,     // id the server gave the last upload (reused while weights change)
  item: null,        // catalog item used as the query
  heatTarget: null,  // {item} or {query} whose attention is shown
  examplesAt: 0,     // offset of the catalog page shown
  lastK: 0,          // k of the results shown
};
const EXAMPLES_PER_PAGE = 12;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

function selectedWeights() {
  const out = [];
  for (const row of document.querySelectorAll(".attr")) {
    const box = row.querySelector("input[type=checkbox]");
    const slider = row.querySelector("input[type=range]");
    if (box.checked && Number(slider.value) > 0) out.push(box.value + ":" + slider.value);
  }
  return out;
}

function buildAttributes(info) {
  const host = $("attributes");
  host.textContent = "";
  info.attributes.forEach((attr, i) => {
    const row = document.createElement("div");
    row.className = "attr";
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = attr.name;
    box.checked = i === 0;
    box.dataset.attribute = attr.name;
    label.append(box, " " + attr.name);
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "0";
    slider.max = "5";
    slider.step = "0.5";
    slider.value = "1";
    slider.setAttribute("aria-label", "weight of " + attr.name);
    const out = document.createElement("output");
    out.textContent = "1";
    slider.addEventListener("input", () => { out.textContent = slider.value; });
    row.append(label, slider, out);
    host.append(row);
  });
}

async function loadExamples(offset) {
  const params = new URLSearchParams({ offset: String(offset), limit: String(EXAMPLES_PER_PAGE) });
  const response = await fetch("/items?" + params.toString());
  if (!response.ok) { showError("cannot list the catalog: " + (await errorText(response))); return; }
  const page = await response.json();
  state.examplesAt = page.offset;
  const host = $("examples");
  host.textContent = "";
  for (const it of page.items) {
    const img = document.createElement("img");
    img.src = it.image_url;
    img.alt = it.id;
    img.title = it.id + labelText(it.labels);
    img.dataset.id = it.id;
    img.loading = "lazy";
    img.addEventListener("click", () => chooseItem(it.id, img.src));
    host.append(img);
  }
  const last = page.offset + page.items.length;
  $("examples-range").textContent = page.total ? (page.offset + 1) + "–" + last + " of " + page.total : "empty catalog";
  $("examples-prev").disabled = page.offset === 0;
  $("examples-next").disabled = last >= page.total;
}

function labelText(labels) {
  const names = Object.keys(labels || {});
  return names.length ? "\n" + names.map((n) => n + ": " + labels[n]).join("\n") : "";
}

function setPreview(src) {
  const preview = $("query-preview");
  preview.src = src;
  preview.hidden = false;
  $("drop-hint").textContent = "Drop or click to change the query";
  $("search").disabled = false;
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  state.queryId = null;
  state.item = null;
  setPreview(URL.createObjectURL(file));
  showError("");
}

function chooseItem(id, src) {
  state.item = id;
  state.file = null;
  state.queryId = null;
  setPreview(src);
  showError("");
}

async function postSearch(useQueryId) {
  const form = new FormData();
  if (state.item) form.append("item", state.item);
  else if (useQueryId && state.queryId) form.append("query", state.queryId);
  else form.append("image", state.file, state.file.name || "query");
  for (const w of selectedWeights()) form.append("attributes", w);
  form.append("k", $("k").value);
  form.append("exclude_self", $("exclude-self").checked ? "true" : "false");
  form.append("annotated_only", $("annotated-only").checked ? "true" : "false");
  if ($("filter").value.trim()) form.append("filter", $("filter").value);
  return fetch("/search", { method: "POST", body: form });
}

function clearResults() {
  for (const id of ["results", "predicted", "matches"]) $(id).textContent = "";
  $("summary").textContent = "";
  $("more").hidden = true;
  $("heat-panel").hidden = true;
  state.heatTarget = null;
  document.body.dataset.results = "none";
}

function fail(message) {  // an error never leaves the results of an earlier search on show
  clearResults();
  showError(message);
}

async function runSearch(options) {
  const more = Boolean(options && options.more);
  showError("");
  if (!state.file && !state.item && !state.queryId) { fail("choose a query image first"); return; }
  if (selectedWeights().length === 0) { fail("tick at least one attribute with a weight above 0"); return; }
  $("search").disabled = true;
  $("more").disabled = true;
  $("summary").textContent = "searching…";
  try {
    let response = await postSearch(true);
    if (response.status === 404 && state.queryId && state.file) {  // upload expired on the server
      state.queryId = null;
      response = await postSearch(false);
    }
    if (!response.ok) {
      fail(await errorText(response));
      return;
    }
    const body = await response.json();
    if (body.query.kind === "upload") state.queryId = body.query.id;
    renderResults(body, more);
  } catch (e) {
    fail("request failed: " + e);
  } finally {
    $("search").disabled = false;
    $("more").disabled = false;
  }
}

function moreResults() {  // the same query again with twice the results, up to the server's max k
  const k = Math.min(state.info.max_k, Math.max(1, state.lastK) * 2);
  $("k").value = String(k);
  runSearch({ more: true });
}

function chip(text, className, title) {
  const el = document.createElement("span");
  el.className = "chip" + (className ? " " + className : "");
  el.textContent = text;
  if (title) el.title = title;
  return el;
}

function renderPredicted(body) {
  const host = $("predicted");
  host.textContent = "";
  const names = Object.keys(body.predicted || {});
  if (!names.length) return;
  host.append("predicted: ");
  for (const n of names) {
    const p = body.predicted[n];
    const el = chip(n + ": " + p.value + " (" + Math.round(100 * p.share) + "%)", "predicted",
      p.votes + " of the query's " + p.of + " nearest labelled items in " + n + " are " + p.value);
    el.dataset.attribute = n;
    el.dataset.value = p.value;
    host.append(el, " ");
  }
}

function renderMatches(body) {
  const host = $("matches");
  host.textContent = "";
  for (const n of Object.keys(body.summary || {})) {
    const s = body.summary[n];
    const row = document.createElement("div");
    row.className = "match-row" + (s.queried ? " queried" : "");
    row.dataset.attribute = n;
    row.dataset.matches = String(s.matches);
    row.dataset.of = String(s.of);
    const source = s.source === "query" ? "the query's value" : "predicted";
    row.textContent = n + ": " + s.matches + " of " + s.of + " match " + s.value + " (" + source + ")" +
      (s.unknown ? ", " + s.unknown + " unlabelled" : "");
    host.append(row);
  }
}

function renderTile(r, names, reference) {
  const tile = document.createElement("figure");
  tile.className = "result" + (r.correct === true ? " correct" : r.correct === false ? " wrong" : "");
  tile.dataset.id = r.id;
  const img = document.createElement("img");
  img.src = r.image_url;
  img.alt = r.id;
  const cap = document.createElement("figcaption");
  const per = names.length > 1 ? " (" + names.map((n) => n + " " + r.scores[n].toFixed(3)).join(", ") + ")" : "";
  cap.innerHTML = '<span class="rank"></span> <span class="score"></span><div class="id"></div><div class="chips"></div>';
  cap.querySelector(".rank").textContent = "#" + r.rank;
  cap.querySelector(".score").textContent = r.score.toFixed(4) + per;
  cap.querySelector(".id").textContent = r.id;
  const chips = cap.querySelector(".chips");
  for (const n of Object.keys(r.labels || {})) {
    const matched = r.matches ? r.matches[n] : undefined;
    const mark = matched === true ? " ✓" : "";
    const title = n + " = " + r.labels[n] +
      (matched === undefined ? "" : (matched ? ", matches " : ", differs from ") + reference[n]);
    const el = chip(n + ": " + r.labels[n] + mark, matched === true ? "match" : matched === false ? "miss" : "", title);
    el.dataset.attribute = n;
    chips.append(el);
  }
  tile.append(img, cap);
  tile.addEventListener("click", () => {
    document.querySelectorAll(".result.selected").forEach((t) => t.classList.remove("selected"));
    tile.classList.add("selected");
    showHeatmap({ item: r.id, label: "result #" + r.rank + " " + r.id });
  });
  return tile;
}

function heaviest(weights) {  // the attribute with the largest weight (the first of equals)
  return Object.keys(weights).reduce((best, n) => (best === null || weights[n] > weights[best] ? n : best), null);
}

function renderResults(body, keepHeatAttribute) {
  const names = Object.keys(body.attributes);
  $("summary").textContent = body.results.length + " of " + body.candidates + " items, " +
    names.map((n) => n + " ×" + body.attributes[n]).join(" + ") +
    " (" + (body.exact ? "exact" : "approximate") + ", " + body.took_ms.toFixed(1) + " ms)";
  renderPredicted(body);
  renderMatches(body);
  const reference = {};
  for (const n of Object.keys(body.summary || {})) reference[n] = body.summary[n].value;
  const host = $("results");
  host.textContent = "";
  for (const r of body.results) host.append(renderTile(r, names, reference));
  state.lastK = body.k;
  $("more").hidden = !(body.results.length === body.k && body.k < state.info.max_k && body.k < body.candidates);
  const select = $("heat-attr");
  const previous = select.value;
  select.textContent = "";
  for (const n of names) {
    const opt = document.createElement("option");
    opt.value = n;
    opt.textContent = n;
    select.append(opt);
  }
  // a new search shows the map of its most heavily weighted attribute; "more results" keeps the choice
  select.value = keepHeatAttribute && names.includes(previous) ? previous : heaviest(body.attributes);
  document.body.dataset.results = String(body.results.length);
  const q = body.query.kind === "item" ? { item: body.query.id } : { query: body.query.id };
  showHeatmap(Object.assign(q, { label: "query" }));
}

function showHeatmap(target) {
  state.heatTarget = target;
  const attr = $("heat-attr").value;
  if (!attr) return;
  const params = new URLSearchParams({ attribute: attr });
  if (target.item !== undefined) params.set("item", target.item);
  else params.set("query", target.query);
  const panel = $("heat-panel");
  panel.hidden = false;
  const img = $("heatmap");
  img.onerror = async () => {
    const response = await fetch(img.src);
    $("heat-caption").textContent = "no heatmap: " + (await errorText(response));
  };
  img.src = "/attention?" + params.toString();
  $("heat-caption").textContent = target.label + " — attention for " + attr;
}

function wireDropZone() {
  const zone = $("drop");
  ["dragenter", "dragover"].forEach((ev) => zone.addEventListener(ev, (e) => {
    e.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((ev) => zone.addEventListener(ev, (e) => {
    e.preventDefault();
    zone.classList.remove("over");
  }));
  zone.addEventListener("drop", (e) => {
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
}

async function init() {
  wireDropZone();
  $("search").addEventListener("click", () => runSearch());
  $("more").addEventListener("click", moreResults);
  $("examples-prev").addEventListener("click",
    () => loadExamples(Math.max(0, state.examplesAt - EXAMPLES_PER_PAGE)));
  $("examples-next").addEventListener("click", () => loadExamples(state.examplesAt + EXAMPLES_PER_PAGE));
  $("heat-attr").addEventListener("change", () => { if (state.heatTarget) showHeatmap(state.heatTarget); });
  try {
    const response = await fetch("/info");
    if (!response.ok) throw new Error(await errorText(response));
    const info = await response.json();
    state.info = info;
    $("k").max = String(info.max_k);
    $("status").textContent = info.items + " items · " + info.model + " · " + info.index_type +
      " index · checkpoint " + info.checkpoint;
    buildAttributes(info);
    await loadExamples(0);
    document.body.dataset.ready = "true";
  } catch (e) {
    $("status").textContent = "cannot load /info: " + e.message;
  }
}

init();
