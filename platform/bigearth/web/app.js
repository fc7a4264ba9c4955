// The BigEarthNet explorer: a grid of archived patches with filters, a map, a patch view with the model's
// probabilities, its land-cover map beside the archive's reference map, and nearest neighbours, and uploads. Plain JavaScript against the service's own /v1 API; every
// file it loads comes from this origin (see bigearth/serving/web.py).
"use strict";

const PAGE = 24;
const NEIGHBOURS = 6;
const MODES = [
  { title: "Nearest neighbours, fused S1+S2", using: "fused", needs: ["fused"] },
  { title: "Nearest neighbours, S2 (optical)", using: "s2", needs: ["s2"] },
  { title: "S1 → S2: optical patches found by the radar patch", using: "s2", query_modality: "s1", needs: ["s1", "s2"] },
];
const SEASONS = ["winter", "spring", "summer", "autumn"];

const state = {
  key: sessionStorage.getItem("bigearth-api-key") || "",
  facets: null,
  filter: {}, // the filter applied (Apply / Reset), not the form's unapplied state: its cursors belong to it
  cursors: [null],
  page: 0,
  pageSeq: 0, // the answer of an older page request is dropped
  items: [],
  current: null,
  viewSeq: 0, // what an older patch view still had in flight never reaches the one shown now
};

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// ------------------------------------------------------------------------------------------------ the API
class ApiProblem extends Error {
  constructor(message, status, field, code = null) {
    super(message);
    this.status = status;
    this.field = field;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("X-API-Key", state.key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new ApiProblem(`the service did not answer (${e.message})`, 0, null);
  }
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
    throw new ApiProblem(message, response.status, body && body.field, body && body.error);
  }
  return response;
}

const postJSON = async (path, body) =>
  (await api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })).json();

function showError(where, e) {
  let text = `${where}: ${e.message}`;
  if (e.field) text += ` (field: ${e.field})`;
  if (e.status === 401) text += ". Enter the service's API key at the top of the page.";
  if (e.status === 429 || e.status === 503) text += ". The service is busy; try again in a moment.";
  const box = el("div", { class: "error" }, el("p", { text }));
  box.append(el("button", { type: "button", "aria-label": "Dismiss this message", text: "×", onclick: () => box.remove() }));
  $("#errors").append(box);
}

function clearErrors() {
  $("#errors").replaceChildren();
}

// Quicklooks are fetched (the API key travels in a header, which an <img src> cannot send) and shown as blobs.
const quicklooks = new Map();
async function quicklook(img, patchId, scale = 1, stillWanted = () => true) {
  const key = `${patchId}@${scale}`;
  try {
    if (!quicklooks.has(key)) {
      const blob = await (await api(`/v1/patches/${encodeURIComponent(patchId)}/rgb.png?scale=${scale}`)).blob();
      quicklooks.set(key, URL.createObjectURL(blob));
    }
    if (stillWanted()) img.src = quicklooks.get(key);
  } catch (e) {
    if (stillWanted()) img.alt = `No quicklook for ${patchId}: ${e.message}`;
  }
}

// ------------------------------------------------------------------------------------------------ filters
function checkboxes(container, name, counts, labelOf = (v) => v) {
  container.replaceChildren();
  for (const [value, n] of Object.entries(counts)) {
    const input = el("input", { type: "checkbox", name, value });
    container.append(el("label", {}, input, ` ${labelOf(value)} `, el("span", { class: "count", text: `(${n})` })));
  }
}

function renderFilters(f) {
  checkboxes($("#f-split"), "split", f.split);
  checkboxes($("#f-country"), "country", f.country);
  const seasons = Object.fromEntries(SEASONS.filter((s) => s in f.season).map((s) => [s, f.season[s]]));
  checkboxes($("#f-season"), "season", seasons);
  const select = $("#f-labels");
  select.replaceChildren();
  const ordered = f.classes.length ? f.classes : Object.keys(f.labels);
  for (const name of ordered) {
    select.append(el("option", { value: name, text: `${name} (${f.labels[name] || 0})` }));
  }
}

function checked(name) {
  return [...document.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
}

function currentFilter() {
  const filter = {};
  for (const name of ["split", "country", "season"]) {
    const values = checked(name);
    if (values.length) filter[name] = values;
  }
  const labels = [...$("#f-labels").selectedOptions].map((o) => o.value);
  if (labels.length) filter[$("input[name=labels-mode]:checked").value === "all" ? "labels_all" : "labels_any"] = labels;
  if ($("#f-from").value) filter.date_from = $("#f-from").value;
  if ($("#f-to").value) filter.date_to = $("#f-to").value;
  return filter;
}

// ------------------------------------------------------------------------------------------------ the grid
function card(patchId, payload, extra = []) {
  const img = el("img", { alt: `True-colour quicklook of ${patchId}`, width: "120", height: "120", loading: "lazy" });
  const labels = (payload.labels || []).join(", ");
  const place = [payload.country, (payload.date || "").slice(0, 10)].filter(Boolean).join(" · ");
  const button = el(
    "button",
    { type: "button", class: "card", "data-patch": patchId, onclick: () => openPatch(patchId) },
    img,
    ...extra,
    el("span", { class: "lbl", text: labels }),
    el("span", { class: "id", text: `${place} · ${patchId}` }),
  );
  quicklook(img, patchId);
  return el("li", {}, button);
}

function applyFilter() {
  state.filter = currentFilter();
  state.cursors = [null];
  state.page = 0;
  return loadPage();
}

async function loadPage() {
  const at = state.page;
  const seq = ++state.pageSeq;
  const body = { filter: state.filter, limit: PAGE, cursor: state.cursors[at] };
  $("#page-info").textContent = "Loading…";
  let page;
  try {
    page = await postJSON("/v1/browse", body);
  } catch (e) {
    if (seq !== state.pageSeq) return;
    $("#page-info").textContent = "";
    showError("Browsing the archive", e);
    return;
  }
  if (seq !== state.pageSeq) return; // a newer request (another page, another filter) owns the grid
  state.items = page.items;
  state.cursors[at + 1] = page.next_cursor;
  state.cursors.length = at + 2;
  const grid = $("#grid");
  grid.replaceChildren(...page.items.map((it) => card(it.patch_id, it.payload)));
  if (!page.items.length) grid.append(el("li", { class: "help", text: "No archived pair matches these filters." }));
  const first = at * PAGE + (page.items.length ? 1 : 0);
  $("#page-info").textContent =
    `${first}–${at * PAGE + page.items.length} of ${page.total} pairs` + (page.total ? "" : " (none match)");
  $("#grid").setAttribute("data-total", String(page.total));
  $("#prev").disabled = at === 0;
  $("#next").disabled = !page.next_cursor;
  drawPoints(page.items);
}

// ------------------------------------------------------------------------------------------------ the map
// Equirectangular, x scaled by cos(52°) so Europe keeps its shape; y grows southwards.
const K = Math.cos((52 * Math.PI) / 180);
const project = (lon, lat) => [lon * K, -lat];

async function drawCountries() {
  try {
    const world = await (await api("/web/countries.geojson")).json();
    const g = $("#map-countries");
    for (const f of world.features) {
      let d = "";
      for (const polygon of f.geometry.coordinates) {
        for (const ring of polygon) {
          d += ring.map(([lon, lat], i) => `${i ? "L" : "M"}${project(lon, lat).map((v) => v.toFixed(2)).join(" ")}`).join("") + "Z";
        }
      }
      const path = svg("path", { d, "data-name": f.properties.name });
      path.append(Object.assign(svg("title"), { textContent: f.properties.name }));
      g.append(path);
    }
  } catch (e) {
    showError("Country outlines", e);
  }
}

function drawPoints(items) {
  const g = $("#map-points");
  g.replaceChildren();
  const located = items.filter((it) => it.payload.location);
  const countries = new Set(items.map((it) => it.payload.country));
  for (const path of document.querySelectorAll("#map-countries path")) {
    path.classList.toggle("has", countries.has(path.getAttribute("data-name")));
  }
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const it of located) {
    const [x, y] = project(it.payload.location.lon, it.payload.location.lat);
    [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
    const dot = svg("circle", { cx: x.toFixed(3), cy: y.toFixed(3), r: "0.25", tabindex: "0", "data-patch": it.patch_id });
    dot.append(Object.assign(svg("title"), { textContent: `${it.patch_id} (${it.payload.country})` }));
    dot.addEventListener("click", () => openPatch(it.patch_id));
    dot.addEventListener("keydown", (ev) => ev.key === "Enter" && openPatch(it.patch_id));
    g.append(dot);
  }
  const map = $("#map");
  if (!located.length) {
    const [ax, ay] = project(-12, 71);
    const [bx, by] = project(35, 35);
    map.setAttribute("viewBox", `${ax} ${ay} ${bx - ax} ${by - ay}`);
    return;
  }
  const pad = 2.5; // degrees around the points, at least a country's width across
  const w = Math.max(x1 - x0 + 2 * pad, 12);
  const h = Math.max(y1 - y0 + 2 * pad, 7);
  const r = Math.max(w, h * 2) / 150;
  for (const c of g.children) c.setAttribute("r", r.toFixed(3));
  map.setAttribute("viewBox", `${((x0 + x1) / 2 - w / 2).toFixed(2)} ${((y0 + y1) / 2 - h / 2).toFixed(2)} ${w.toFixed(2)} ${h.toFixed(2)}`);
  $("#map-caption").textContent = `Where the ${located.length} patches on this page lie (patch centres, WGS84).`;
}

// ------------------------------------------------------------------------------------------------ the patch view
function meta(pairs) {
  const dl = $("#view-meta");
  dl.replaceChildren();
  for (const [k, v] of pairs) if (v !== undefined && v !== null && v !== "") dl.append(el("dt", { text: k }), el("dd", { text: String(v) }));
}

function probabilities(result, truth) {
  const tbody = $("#view-probs tbody");
  tbody.replaceChildren();
  const chosen = new Set(result.labels);
  const entries = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const bar = el("span", { class: "bar", "aria-hidden": "true" });
    bar.style.width = `${Math.round(p * 160)}px`;
    const row = el(
      "tr",
      { class: [chosen.has(name) ? "yes" : "", truth.has(name) ? "true" : ""].join(" ").trim() || undefined },
      el("td", { text: name }),
      el("td", {}, bar, el("span", { text: p.toFixed(3) })),
      el("td", { text: chosen.has(name) ? "✓ predicted" : "" }),
    );
    tbody.append(row);
  }
  $("#view-model").textContent =
    `Model ${result.model.name} (${result.model.version}); predicted: probability over ${result.threshold}.` +
    ` Predicted: ${result.labels.join(", ") || "none"}.`;
}

async function neighbours(query, truth, seq) {
  const box = $("#view-neighbours");
  box.replaceChildren();
  const have = new Set((state.facets && state.facets.vectors) || []);
  for (const mode of MODES) {
    if (!mode.needs.every((v) => have.has(v))) continue;
    if (query.modalities && !query.modalities.has(mode.query_modality || mode.using)) continue;
    const section = el("section", { class: "neighbours", "aria-label": mode.title }, el("h3", { text: mode.title }));
    const list = el("ul", { class: "grid" });
    section.append(list);
    box.append(section);
    const request = { k: NEIGHBOURS, using: mode.using, query_modality: mode.query_modality || null };
    try {
      const result = query.patchId
        ? await postJSON("/v1/search", { ...request, patch_id: query.patchId })
        : await (await api("/v1/search", { method: "POST", body: query.form(request) })).json();
      if (seq !== state.viewSeq) return; // the view shows another patch now
      for (const hit of result.hits) {
        const shared = (hit.payload.labels || []).filter((l) => truth.has(l));
        const extra = [
          el("span", { class: "score", text: `score ${hit.score.toFixed(3)}` }),
          el("span", { class: "lbl shared", text: truth.size ? `shared: ${shared.join(", ") || "none"}` : "" }),
        ];
        list.append(card(hit.patch_id, hit.payload, extra));
      }
      if (!result.hits.length) list.append(el("li", { class: "help", text: "No neighbours." }));
    } catch (e) {
      if (seq !== state.viewSeq) return;
      list.append(el("li", { class: "help", text: `Not available: ${e.message}` }));
    }
  }
}

// ------------------------------------------------------------------------------------------------ land-cover maps
// The model's map (POST /v1/segment, a PNG in its JSON) over the quicklook, beside the archive's reference map
// (GET .../reference.png); the section stays hidden when the service serves no segmentation model (facets).
const seg = { prediction: null, reference: null, wanted: "prediction" }; // wanted: the layer last chosen
const LAYER_CAPTIONS = {
  prediction: "The model's land-cover map over the quicklook.",
  reference: "The reference map over the quicklook.",
  none: "The quicklook alone.",
};

function segLayer() {
  // the layer chosen last, else (not there for this patch) the first there is; the choice itself is kept
  const inputs = [...document.querySelectorAll('input[name="seg-layer"]')];
  const shown = inputs.find((i) => i.value === seg.wanted && !i.disabled) || inputs.find((i) => !i.disabled);
  shown.checked = true;
  const layer = shown.value;
  const overlay = $("#seg-overlay");
  const src = layer === "none" ? null : seg[layer];
  overlay.hidden = !src;
  if (src) overlay.src = src;
  else overlay.removeAttribute("src");
  overlay.alt = src ? `${layer === "prediction" ? "Predicted" : "Reference"} land-cover map over the quicklook` : "";
  overlay.style.opacity = String($("#seg-opacity").value / 100);
  $("#seg-overlay-caption").textContent = LAYER_CAPTIONS[layer];
}

function segLegend(entries, shares) {
  const items = entries.map(({ name, colour }) => {
    const share = shares[name] || 0;
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = colour;
    const text = `${name}${share ? `: ${share < 0.001 ? "<0.1" : (share * 100).toFixed(1)} %` : ""}`;
    return el("li", { class: share ? undefined : "absent", "data-colour": colour }, swatch, el("span", { text }));
  });
  $("#seg-legend").replaceChildren(...items);
}

function resetSeg() {
  seg.prediction = seg.reference = null;
  $("#view-seg").hidden = true;
  $("#seg-base").removeAttribute("src");
  $("#seg-reference").removeAttribute("src");
  $("#seg-reference").alt = "";
  $("#seg-legend").replaceChildren();
  $("#seg-model").textContent = "";
  for (const input of document.querySelectorAll('input[name="seg-layer"]')) input.disabled = input.value !== "none";
  segLayer();
}

async function landCover(query, seq) {
  if (!(state.facets && state.facets.segmentation)) return; // no model: the section stays hidden
  $("#view-seg").hidden = false;
  $("#seg-model").textContent = "Mapping…";
  $("#seg-reference-caption").textContent = "The archive's reference map (CORINE Land Cover, 19 classes).";
  const predicted = query.patchId
    ? postJSON("/v1/segment", { patch_id: query.patchId })
    : api("/v1/segment", { method: "POST", body: query.form(null) }).then((r) => r.json());
  const reference = !query.patchId
    ? Promise.reject(new Error("an upload has none"))
    : !state.facets.reference_maps
    ? Promise.reject(new Error("the shard set holds none (ingested without them)"))
    : api(`/v1/patches/${encodeURIComponent(query.patchId)}/reference.png`).then((r) => r.blob());
  const [p, r] = await Promise.allSettled([predicted, reference]);
  if (seq !== state.viewSeq) return; // the view shows another patch now
  const refImg = $("#seg-reference");
  if (r.status === "fulfilled") {
    seg.reference = URL.createObjectURL(r.value);
    refImg.src = seg.reference;
    refImg.alt = `The archive's reference land-cover map of ${query.patchId}`;
  } else {
    $("#seg-reference-caption").textContent = `No reference map: ${r.reason.message}`;
  }
  if (p.status === "fulfilled") {
    const m = p.value;
    seg.prediction = `data:image/png;base64,${m.png}`;
    segLegend(m.legend, m.shares);
    $("#seg-model").textContent =
      `Model ${m.model.name} (${m.model.version}); the legend gives each class's share of the ${m.scored_pixels} pixels.`;
  } else {
    $("#seg-model").textContent = `Not mapped: ${p.reason.message}`;
  }
  for (const input of document.querySelectorAll('input[name="seg-layer"]')) {
    input.disabled = input.value !== "none" && !seg[input.value];
  }
  segLayer();
}

function openView(title) {
  state.viewSeq += 1;
  const view = $("#view");
  view.hidden = false;
  $("#view-title").textContent = title;
  $("#view-probs tbody").replaceChildren();
  $("#view-model").textContent = "Classifying…";
  $("#view-neighbours").replaceChildren();
  resetSeg();
  $("#close").focus();
  return state.viewSeq;
}

async function openPatch(patchId) {
  if (location.hash !== `#patch=${encodeURIComponent(patchId)}`) {
    history.pushState(null, "", `#patch=${encodeURIComponent(patchId)}`);
  }
  state.current = patchId;
  const seq = openView(patchId);
  const img = $("#view-img");
  img.removeAttribute("src");
  img.alt = `True-colour quicklook of ${patchId} (B04, B03, B02)`;
  meta([]);
  $("#view-labels").replaceChildren();
  quicklook(img, patchId, 2, () => seq === state.viewSeq);
  quicklook($("#seg-base"), patchId, 2, () => seq === state.viewSeq);
  landCover({ patchId }, seq); // beside the classification: it reports its own failures in its section
  let info;
  try {
    info = await (await api(`/v1/patches/${encodeURIComponent(patchId)}`)).json();
  } catch (e) {
    if (seq !== state.viewSeq) return;
    $("#view-model").textContent = "";
    showError(`Patch ${patchId}`, e);
    return;
  }
  if (seq !== state.viewSeq) return;
  meta([
    ["split", info.split],
    ["country", info.country],
    ["tile", info.tile],
    ["S2 acquired", info.s2_acquisition],
    ["S1 acquired", info.s1_acquisition],
    ["S1 patch", info.s1_name],
    ["centre", `${info.location.lat.toFixed(4)}° N, ${info.location.lon.toFixed(4)}° E`],
    ["snow / cloud", `${info.snow ? "snow" : "no snow"} / ${info.cloud ? "cloud" : "no cloud"}`],
  ]);
  const truth = new Set(info.labels);
  $("#view-labels").replaceChildren(...info.labels.map((l) => el("li", { text: l })));
  try {
    const result = await postJSON("/v1/classify", { patch_id: patchId });
    if (seq !== state.viewSeq) return;
    probabilities(result, truth);
  } catch (e) {
    if (seq !== state.viewSeq) return;
    $("#view-model").textContent = `Not classified: ${e.message}`;
  }
  await neighbours({ patchId }, truth, seq);
}

function closeView(fromHistory = false) {
  $("#view").hidden = true;
  state.current = null;
  state.viewSeq += 1; // what the closed view had in flight is dropped
  // the entry of the closed view becomes the page's own: no new entry, Back goes where it went before
  if (!fromHistory && location.hash) history.replaceState(null, "", location.pathname + location.search);
  const back = state.lastFocus;
  if (back && document.body.contains(back)) back.focus();
}

// ------------------------------------------------------------------------------------------------ uploads
const BAND = /(?:^|[_\-.])(B0[1-9]|B1[0-2]|B8A|VV|VH)\.tiff?$/i;

async function upload(files) {
  files = [...files];
  if (!files.length) return;
  clearErrors();
  const isNpz = (f) => f.name.toLowerCase().endsWith(".npz");
  const ignored = files.filter((f) => !BAND.test(f.name) && !isNpz(f));
  files = files.filter((f) => BAND.test(f.name) || isNpz(f)); // a folder's metadata JSON is left out
  const bands = files.filter((f) => BAND.test(f.name)).map((f) => f.name.match(BAND)[1].toUpperCase());
  const npz = files.some(isNpz);
  if (!bands.length && !npz) {
    const names = ignored.map((f) => f.name).join(", ");
    showError("Upload", new Error(`${names}: expected band GeoTIFFs named …_B02.tif, …_VV.tif (or one .npz)`));
    return;
  }
  const modalities = new Set();
  if (npz || bands.some((b) => b.startsWith("B"))) modalities.add("s2");
  if (npz || bands.some((b) => b === "VV" || b === "VH")) modalities.add("s1");
  if (modalities.has("s1") && modalities.has("s2")) modalities.add("fused");
  const form = (extra) => {
    const data = new FormData();
    for (const f of files) data.append(f.name, f, f.name);
    if (extra) data.append("request", JSON.stringify(extra));
    return data;
  };
  state.current = "upload";
  const seq = openView(`Your upload: ${files.length} file${files.length > 1 ? "s" : ""} (${npz ? ".npz" : bands.join(", ")})`);
  const img = $("#view-img");
  img.removeAttribute("src");
  img.alt = modalities.has("s2") ? "True-colour quicklook of your upload (B04, B03, B02)" : "No quicklook: an S1-only upload (the quicklook is optical)";
  if (modalities.has("s2")) {
    api("/v1/quicklook?scale=2", { method: "POST", body: form(null) })
      .then((r) => r.blob())
      .then((blob) => seq === state.viewSeq && (img.src = $("#seg-base").src = URL.createObjectURL(blob)))
      .catch((e) => seq === state.viewSeq && (img.alt = `No quicklook: ${e.message}`));
  }
  meta([
    ["files", files.map((f) => f.name).join(", ")],
    ["left out", ignored.map((f) => f.name).join(", ")],
  ]);
  $("#view-labels").replaceChildren(el("li", { text: "unknown (an upload)" }));
  landCover({ form }, seq);
  try {
    const result = await (await api("/v1/classify", { method: "POST", body: form(null) })).json();
    if (seq !== state.viewSeq) return;
    probabilities(result, new Set());
  } catch (e) {
    if (seq !== state.viewSeq) return;
    $("#view-model").textContent = `Not classified: ${e.message}`;
    showError("Classifying the upload", e);
  }
  await neighbours({ form, modalities }, new Set(), seq);
}

// ------------------------------------------------------------------------------------------------ wiring
async function start() {
  $("#api-key").value = state.key;
  $("#auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("bigearth-api-key", state.key);
    clearErrors();
    init();
  });
  $("#filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors();
    applyFilter();
  });
  $("#filters").addEventListener("reset", () => setTimeout(applyFilter)); // after the form has cleared
  $("#prev").addEventListener("click", () => {
    if (state.page > 0) {
      state.page -= 1;
      loadPage();
    }
  });
  $("#next").addEventListener("click", () => {
    if (state.cursors[state.page + 1]) {
      state.page += 1;
      loadPage();
    }
  });
  $("#close").addEventListener("click", () => closeView());
  $("#view").addEventListener("click", (ev) => ev.target === $("#view") && closeView());
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("#view").hidden) closeView();
  });
  document.addEventListener("focusin", (ev) => {
    if ($("#view").hidden) state.lastFocus = ev.target;
  });
  window.addEventListener("popstate", route);
  const drop = $("#drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    upload(ev.dataTransfer.files);
  });
  drop.addEventListener("click", () => $("#upload-files").click());
  drop.addEventListener("keydown", (ev) => (ev.key === "Enter" || ev.key === " ") && $("#upload-files").click());
  $("#upload-files").addEventListener("change", (ev) => upload(ev.target.files));
  for (const input of document.querySelectorAll('input[name="seg-layer"]')) {
    input.addEventListener("change", () => {
      seg.wanted = input.value;
      segLayer();
    });
  }
  $("#seg-opacity").addEventListener("input", segLayer);
  await drawCountries();
  await init();
}

async function init() {
  try {
    state.facets = await (await api("/v1/facets")).json();
  } catch (e) {
    $("#summary").textContent = "The archive could not be read.";
    showError("Loading the archive's facets", e);
    return;
  }
  const f = state.facets;
  $("#summary").textContent =
    `${f.total} pairs indexed · ${Object.keys(f.country).length} countries · vectors: ${f.vectors.join(", ")}`;
  renderFilters(f);
  await applyFilter();
  route();
}

function route() {
  const m = location.hash.match(/^#patch=(.+)$/);
  if (m) openPatch(decodeURIComponent(m[1]));
  else if (!$("#view").hidden) closeView(true);
}

document.addEventListener("DOMContentLoaded", start);
