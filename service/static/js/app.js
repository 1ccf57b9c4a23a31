/** gapfix search page: collection picker, text/image/"more like this" search, gap panel. */

import * as api from "./api.js";
import { busyAfter, h, plural, shorten } from "./dom.js";
import { renderGap } from "./gap.js";
import { releaseThumbnails, renderColumn, resultText } from "./results.js";

const $ = (sel) => document.querySelector(sel);
const el = {
  collection: $("#collection"),
  info: $("#collection-info"),
  form: $("#search-form"),
  q: $("#q"),
  searchButton: $("#search-button"),
  file: $("#image-file"),
  drop: $("#dropzone"),
  k: $("#k"),
  results: $("#results"),
  raw: $("#col-raw"),
  corrected: $("#col-corrected"),
  empty: $("#empty"),
  status: $("#status"),
  error: $("#error"),
  busy: $("#search-busy"),
  query: $("#query"),
  queryBody: $("#query-body"),
  queryHeading: $("#query-heading"),
  gapBody: $("#gap-body"),
  gapBusy: $("#gap-busy"),
  gapRefresh: $("#gap-refresh"),
  keyForm: $("#key-form"),
  keyInput: $("#api-key"),
  keyState: $("#key-state"),
  forgetKey: $("#forget-key"),
  settings: $("#settings"),
};

const STORE_COLLECTION = "gapfix.collection";
const STORE_VIEW = "gapfix.view";
const MAX_IMAGE_SIDE = 1024;
const QUERY_SHOWN_CHARS = 200; // a longer text query is shown cut (in full as its tooltip)

const state = {
  collections: [],
  current: null,
  query: null,
  seq: 0,
  searchCtl: null,
  searchDone: null,
  gapCtl: null,
  gapDone: null,
  previewUrl: null,
  pollTimer: null,
};

function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* storage disabled */
  }
}

function recall(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ messages
function showError(err) {
  if (!err) {
    el.error.hidden = true;
    el.error.replaceChildren();
    return;
  }
  const hint =
    err.status === 401 || err.status === 403
      ? " Set an API key under “API key” at the top."
      : err.status === 429
        ? " The service is busy; try again in a moment."
        : "";
  el.error.replaceChildren(h("strong", { text: "Error:" }), " ", err.message + hint);
  el.error.hidden = false;
}

function showEmpty(title, ...body) {
  el.raw.hidden = true;
  el.corrected.hidden = true;
  el.empty.replaceChildren(h("h3", { text: title }), ...body.map((b) => h("p", {}, b)));
  el.empty.hidden = false;
}

const code = (text) => h("code", { text });

// ------------------------------------------------------------------ collections
function transformOf(c) {
  const t = c.transform;
  if (t && typeof t === "object") return { method: t.method ?? null, status: t.status ?? null };
  return { method: t ?? null, status: c.transform_status ?? null };
}

function countsOf(c) {
  const counts = c.counts || {};
  const total = (counts.image || 0) + (counts.text || 0) + (counts.document || 0);
  return { ...counts, total: c.count ?? total };
}

function describe(c) {
  const n = countsOf(c);
  const t = transformOf(c);
  const parts = [
    `${plural(n.total, "item")} (${plural(n.image || 0, "image")}, ${plural(n.text || 0, "text")}, ` +
      `${plural(n.document || 0, "document")})`,
  ];
  if (c.dim) parts.push(`${c.dim}-d`);
  if (c.index) parts.push(`${c.index} index`);
  if (t.status === "rebuilding") parts.push("new transform being applied…");
  else if (t.status === "failed") parts.push("last transform fit failed");
  parts.push(t.method ? `transform: ${t.method}` : "no transform: corrected = raw");
  return parts.join(" · ");
}

function setSearchEnabled(enabled) {
  for (const control of [el.q, el.searchButton, el.file]) control.disabled = !enabled;
}

function introMessage(c) {
  const n = countsOf(c);
  if (n.total === 0) {
    showEmpty(
      `“${c.name}” is empty`,
      ["Add images and texts with ", code(`POST /v1/collections/${c.name}/items`), ", then search."],
    );
  } else {
    showEmpty(
      `Search “${c.name}”`,
      `Type a description, or drop an image. Results from the raw and the gap-corrected ` +
        `embeddings appear side by side; click any result for more like it.`,
    );
  }
}

async function loadCollections(preferred) {
  let data;
  try {
    data = await api.listCollections();
  } catch (err) {
    el.collection.replaceChildren(h("option", { value: "", text: "unavailable" }));
    el.collection.disabled = true;
    setSearchEnabled(false);
    showError(err);
    showEmpty("Collections could not be loaded", err.message);
    if (err.status === 401 || err.status === 403) {
      el.settings.open = true;
      el.keyInput.focus();
    }
    return;
  }
  showError(null); // loaded: an earlier failure (a missing or wrong key) is over
  state.collections = Array.isArray(data.collections) ? data.collections : [];
  if (!state.collections.length) {
    el.collection.replaceChildren(h("option", { value: "", text: "no collections" }));
    el.collection.disabled = true;
    setSearchEnabled(false);
    el.info.textContent = "";
    el.gapBody.replaceChildren();
    showEmpty(
      "No collections yet",
      ["Create one with ", code('POST /v1/collections {"name": "photos"}'), " and add items with ",
        code("POST /v1/collections/photos/items"), "; then reload this page."],
    );
    return;
  }
  const names = state.collections.map((c) => c.name);
  el.collection.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
  el.collection.disabled = false;
  setSearchEnabled(true);
  const saved = recall(STORE_COLLECTION);
  const pick = [preferred, state.current?.name, saved].find((n) => n && names.includes(n));
  await selectCollection(pick || names[0]);
}

async function selectCollection(name) {
  const c = state.collections.find((x) => x.name === name);
  if (!c) return;
  if (state.current && state.current.name !== name && state.query?.kind === "id") {
    state.query = null; // an item id means nothing in another collection
    el.query.hidden = true;
  }
  state.current = c;
  el.collection.value = name;
  remember(STORE_COLLECTION, name);
  el.info.textContent = describe(c);
  const t = transformOf(c);
  el.corrected.querySelector(".transform-name").textContent = t.method || "no transform";
  pollWhileRebuilding(c);
  const gapLoading = loadGap();
  if (state.query) await runSearch(state.query);
  else introMessage(c);
  await gapLoading;
}

/** While a transform is being applied, refresh the collection until it is active. */
function pollWhileRebuilding(c) {
  clearTimeout(state.pollTimer);
  if (transformOf(c).status !== "rebuilding") return;
  state.pollTimer = setTimeout(async () => {
    try {
      const data = await api.listCollections();
      const fresh = (data.collections || []).find((x) => x.name === c.name);
      if (!fresh || state.current?.name !== c.name) return;
      const idx = state.collections.findIndex((x) => x.name === c.name);
      state.collections[idx] = fresh;
      if (transformOf(fresh).status === "rebuilding") pollWhileRebuilding(fresh);
      else await selectCollection(c.name);
    } catch {
      /* the next user action reports errors */
    }
  }, 2000);
}

// ------------------------------------------------------------------ gap panel
async function loadGap() {
  const c = state.current;
  if (!c) return;
  state.gapCtl?.abort();
  state.gapDone?.();
  const ctl = new AbortController();
  state.gapCtl = ctl;
  const done = busyAfter(el.gapBusy, {
    text: "Computing statistics…",
    slowText: "Still computing: large collections take a few seconds…",
  });
  state.gapDone = done;
  try {
    const g = await api.gap(c.name, ctl.signal);
    if (ctl.signal.aborted) return;
    renderGap(el.gapBody, g, c.name);
  } catch (err) {
    if (err.name === "AbortError") return;
    el.gapBody.replaceChildren(h("p", { class: "column-error", text: err.message }));
  } finally {
    if (state.gapCtl === ctl) done();
  }
}

// ------------------------------------------------------------------ search
function checkedModalities() {
  return [...el.form.querySelectorAll('input[name="modality"]:checked')].map((i) => i.value);
}

function renderQuery(query) {
  const parts = [];
  if (query.preview) {
    const img = h("img", { src: query.preview, alt: "" });
    img.addEventListener("error", () => img.remove(), { once: true });
    parts.push(img);
  }
  if (query.kind === "text") {
    const text = query.body.text;
    parts.push(h("q", { text: shorten(text, QUERY_SHOWN_CHARS), title: text }));
  }
  else if (query.kind === "image") parts.push(h("span", { text: `image “${query.label}”` }));
  else parts.push(h("span", {}, "more like ", h("strong", { text: query.label })));
  el.queryBody.replaceChildren(...parts);
  el.query.hidden = false;
}

function settle(outcome) {
  if (outcome.status === "fulfilled") {
    const results = outcome.value && Array.isArray(outcome.value.results) ? outcome.value.results : [];
    return { results };
  }
  return { error: outcome.reason };
}

async function runSearch(query) {
  const c = state.current;
  if (!c) {
    showError(new api.ApiError("Pick a collection first."));
    return;
  }
  const modalities = checkedModalities();
  if (!modalities.length) {
    showError(new api.ApiError("Pick at least one kind of result to return (images, texts, documents)."));
    return;
  }
  state.searchCtl?.abort();
  state.searchDone?.();
  const ctl = new AbortController();
  const seq = ++state.seq;
  state.searchCtl = ctl;
  state.query = query;
  renderQuery(query);
  showError(null);
  const done = busyAfter(el.busy, {
    text: "Searching…",
    slowText: "Still searching: encoding a large image or a busy service can take a few seconds…",
  });
  state.searchDone = done;
  el.results.setAttribute("aria-busy", "true");
  const k = Number(el.k.value);
  const body = (corrected) => ({ query: query.body, k, modalities, corrected });
  const outcomes = await Promise.allSettled([
    api.search(c.name, body(false), ctl.signal),
    api.search(c.name, body(true), ctl.signal),
  ]);
  if (seq !== state.seq) return; // superseded by a newer query
  done();
  el.results.removeAttribute("aria-busy");
  const [raw, corrected] = outcomes.map(settle);
  releaseThumbnails();
  if (raw.error && corrected.error) {
    showError(corrected.error);
    el.raw.hidden = true;
    el.corrected.hidden = true;
    el.empty.hidden = true;
    el.status.textContent = "Search failed.";
    return;
  }
  el.empty.hidden = true;
  const common = { collection: c.name, onPick: moreLikeThis, signal: ctl.signal };
  renderColumn(el.raw, { ...common, space: "raw", outcome: raw, other: corrected.results });
  renderColumn(el.corrected, {
    ...common,
    space: "corrected",
    outcome: corrected,
    other: raw.results,
  });
  el.status.textContent = summarize(raw, corrected, k);
}

function summarize(raw, corrected, k) {
  const bits = [];
  if (corrected.results) bits.push(`Corrected: ${plural(corrected.results.length, "result")}`);
  else bits.push(`Corrected search failed: ${corrected.error.message}`);
  if (raw.results) bits.push(`raw: ${plural(raw.results.length, "result")}`);
  else bits.push(`raw search failed: ${raw.error.message}`);
  if (raw.results && corrected.results) {
    const ids = new Set(raw.results.map((r) => r.id));
    const shared = corrected.results.filter((r) => ids.has(r.id)).length;
    bits.push(`${shared} of top ${k} shared`);
  }
  return `${bits.join("; ")}.`;
}

function moreLikeThis(result) {
  const text = resultText(result);
  const label = text ? `${result.id} (${shorten(text, 60)})` : result.id;
  const thumb = result.modality !== "text" && result.has_thumbnail !== false;
  const preview = thumb ? api.apiUrl(api.thumbnailPath(state.current.name, result.id)) : null;
  runSearch({ kind: "id", body: { id: result.id }, label, preview: api.getApiKey() ? null : preview });
  el.queryHeading.focus();
}

// ------------------------------------------------------------------ images
function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** Base64 of the image, scaled down first when larger than the model could use. */
async function encodeImage(file) {
  let blob = file;
  try {
    const bitmap = await createImageBitmap(file);
    const side = Math.max(bitmap.width, bitmap.height);
    if (side > MAX_IMAGE_SIDE) {
      const f = MAX_IMAGE_SIDE / side;
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(bitmap.width * f));
      canvas.height = Math.max(1, Math.round(bitmap.height * f));
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      blob = (await new Promise((res) => canvas.toBlob(res, "image/jpeg", 0.92))) || file;
    }
    bitmap.close();
  } catch {
    /* not decodable here: send as is and let the service explain */
  }
  return blobToBase64(blob);
}

async function searchImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(new api.ApiError(`“${file.name}” is not an image (${file.type}).`));
    return;
  }
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  let image;
  try {
    image = await encodeImage(file);
  } catch {
    showError(new api.ApiError(`Could not read “${file.name}”.`));
    return;
  }
  await runSearch({
    kind: "image",
    body: { image },
    label: file.name || "pasted image",
    preview: state.previewUrl,
  });
}

function imageFrom(items) {
  for (const item of items || []) {
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && (!file.type || file.type.startsWith("image/"))) return file;
  }
  return null;
}

// ------------------------------------------------------------------ wiring
function bind() {
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.q.value.trim();
    if (!text) {
      showError(new api.ApiError("Type something to search for, or pick an image."));
      el.q.focus();
      return;
    }
    runSearch({ kind: "text", body: { text }, label: text });
  });
  el.collection.addEventListener("change", () => selectCollection(el.collection.value));
  el.file.addEventListener("change", () => {
    const file = el.file.files[0];
    el.file.value = "";
    searchImage(file);
  });
  for (const input of el.form.querySelectorAll('input[name="modality"]')) {
    input.addEventListener("change", () => state.query && runSearch(state.query));
  }
  el.k.addEventListener("change", () => state.query && runSearch(state.query));
  for (const input of el.form.querySelectorAll('input[name="view"]')) {
    input.addEventListener("change", () => {
      el.results.dataset.view = input.value;
      remember(STORE_VIEW, input.value);
    });
  }
  const savedView = recall(STORE_VIEW);
  const viewInput = savedView && el.form.querySelector(`input[name="view"][value="${savedView}"]`);
  if (viewInput) {
    viewInput.checked = true;
    el.results.dataset.view = savedView;
  }

  // Drops anywhere on the page search by image (and never navigate away to the file).
  let depth = 0;
  document.addEventListener("dragenter", (e) => {
    if (![...(e.dataTransfer?.types || [])].includes("Files")) return;
    depth += 1;
    el.drop.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) el.drop.classList.remove("dragging");
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    el.drop.classList.remove("dragging");
    const file = imageFrom(e.dataTransfer?.files);
    if (file && !el.file.disabled) searchImage(file);
  });
  document.addEventListener("paste", (e) => {
    const file = imageFrom(e.clipboardData?.items);
    if (file && !el.file.disabled) {
      e.preventDefault();
      searchImage(file);
    }
  });
  document.addEventListener("keydown", (e) => {
    const typing = e.target.closest?.("input, textarea, select, [contenteditable]");
    if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      el.q.focus();
      el.q.select();
    }
  });

  el.gapRefresh.addEventListener("click", () => loadCollections());
  el.keyInput.value = api.getApiKey();
  el.keyState.textContent = api.getApiKey() ? "A key is saved." : "No key saved.";
  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = el.keyInput.value.trim();
    if (key && !api.isValidApiKey(key)) {
      el.keyState.textContent = "Not saved: an API key is printable ASCII (no spaces or accents).";
      el.keyInput.focus();
      return;
    }
    api.setApiKey(key);
    el.keyState.textContent = api.getApiKey() ? "Key saved." : "No key saved.";
    loadCollections();
  });
  el.forgetKey.addEventListener("click", () => {
    api.setApiKey("");
    el.keyInput.value = "";
    el.keyState.textContent = "Key forgotten.";
    loadCollections();
  });
}

bind();
loadCollections();
