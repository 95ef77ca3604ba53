// agman web page: choose a query image (drop / file picker) or a catalog item, weight attributes,
// search, see the ranked grid, click any tile or the query to load its attention heatmap.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  file: null,        // File chosen but not uploaded yet
  queryId: null,     // id the server gave the last upload (reused while weights change)
  item: null,        // catalog item used as the query
  heatTarget: null,  // {item} or {query} whose attention is shown
};

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

function buildExamples(info) {
  const host = $("examples");
  host.textContent = "";
  for (const id of info.examples) {
    const img = document.createElement("img");
    img.src = "/items/" + id.split("/").map(encodeURIComponent).join("/") + "/image";
    img.alt = id;
    img.title = id;
    img.loading = "lazy";
    img.addEventListener("click", () => chooseItem(id, img.src));
    host.append(img);
  }
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

async function runSearch() {
  showError("");
  if (!state.file && !state.item && !state.queryId) { showError("choose a query image first"); return; }
  if (selectedWeights().length === 0) { showError("tick at least one attribute with a weight above 0"); return; }
  $("search").disabled = true;
  $("summary").textContent = "searching…";
  try {
    let response = await postSearch(true);
    if (response.status === 404 && state.queryId && state.file) {  // upload expired on the server
      state.queryId = null;
      response = await postSearch(false);
    }
    if (!response.ok) {
      showError(await errorText(response));
      $("summary").textContent = "";
      return;
    }
    const body = await response.json();
    if (body.query.kind === "upload") state.queryId = body.query.id;
    renderResults(body);
  } catch (e) {
    showError("request failed: " + e);
  } finally {
    $("search").disabled = false;
  }
}

function renderResults(body) {
  const names = Object.keys(body.attributes);
  $("summary").textContent = body.results.length + " of " + body.candidates + " items, " +
    names.map((n) => n + " ×" + body.attributes[n]).join(" + ") +
    " (" + (body.exact ? "exact" : "approximate") + ", " + body.took_ms.toFixed(1) + " ms)";
  const host = $("results");
  host.textContent = "";
  for (const r of body.results) {
    const tile = document.createElement("figure");
    tile.className = "result" + (r.correct === true ? " correct" : r.correct === false ? " wrong" : "");
    tile.dataset.id = r.id;
    const img = document.createElement("img");
    img.src = r.image_url;
    img.alt = r.id;
    const cap = document.createElement("figcaption");
    const per = names.length > 1 ? " (" + names.map((n) => r.scores[n].toFixed(3)).join(", ") + ")" : "";
    cap.innerHTML = '<span class="rank"></span> <span class="score"></span><div class="id"></div>';
    cap.querySelector(".rank").textContent = "#" + r.rank;
    cap.querySelector(".score").textContent = r.score.toFixed(4) + per;
    cap.querySelector(".id").textContent = r.id;
    tile.append(img, cap);
    tile.addEventListener("click", () => {
      document.querySelectorAll(".result.selected").forEach((t) => t.classList.remove("selected"));
      tile.classList.add("selected");
      showHeatmap({ item: r.id, label: "result #" + r.rank + " " + r.id });
    });
    host.append(tile);
  }
  const select = $("heat-attr");
  const previous = select.value;
  select.textContent = "";
  for (const n of names) {
    const opt = document.createElement("option");
    opt.value = n;
    opt.textContent = n;
    select.append(opt);
  }
  if (names.includes(previous)) select.value = previous;
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
  $("search").addEventListener("click", runSearch);
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
    buildExamples(info);
    document.body.dataset.ready = "true";
  } catch (e) {
    $("status").textContent = "cannot load /info: " + e.message;
  }
}

init();
