/** Result columns: a grid of cards (thumbnail and/or text, rank, modality, score). */

import { thumbnailSrc } from "./api.js";
import { fmt, h, plural } from "./dom.js";

let blobUrls = [];

/** Forget blob: URLs made for the previous results (keyed thumbnails). */
export function releaseThumbnails() {
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
}

/** The display text of a result: its text, else a caption/title from metadata. */
export function resultText(r) {
  for (const value of [r.text, r.caption]) if (typeof value === "string" && value) return value;
  const m = r.metadata || {};
  for (const key of ["text", "caption", "title", "name"]) {
    if (typeof m[key] === "string" && m[key]) return m[key];
  }
  return "";
}

function thumbnail(collection, r, signal) {
  const alt = resultText(r) || `Image ${r.id}`;
  const img = h("img", { class: "thumb", alt, decoding: "async" });
  img.addEventListener(
    "error",
    () => img.replaceWith(h("span", { class: "thumb missing", text: "no preview" })),
    { once: true },
  );
  thumbnailSrc(collection, r.id, signal)
    .then((src) => {
      if (src.startsWith("blob:")) blobUrls.push(src);
      img.src = src;
    })
    .catch((err) => {
      if (err.name !== "AbortError") img.dispatchEvent(new Event("error"));
    });
  return img;
}

function card(collection, r, rank, otherRanks, space, onPick, signal) {
  const text = resultText(r);
  const hasThumb = r.has_thumbnail ?? r.modality !== "text";
  let moved = null;
  let dropped = false;
  if (otherRanks) {
    const there = otherRanks.get(r.id);
    if (space === "corrected") {
      moved =
        there === undefined
          ? h("span", { class: "moved new", text: "new vs raw" })
          : h("span", { class: "moved", text: `raw #${there}` });
    } else if (there === undefined) {
      dropped = true;
      moved = h("span", { class: "moved", text: "not in corrected" });
    }
  }
  const metadata = r.metadata && Object.keys(r.metadata).length ? JSON.stringify(r.metadata) : "";
  const button = h(
    "button",
    {
      type: "button",
      class: `card${dropped ? " dropped" : ""}`,
      dataset: { id: r.id, modality: r.modality },
      title: metadata ? `More like this\n${metadata}` : "More like this",
      onclick: () => onPick(r),
    },
    h("span", { class: "visually-hidden", text: "More like this: " }),
    hasThumb ? thumbnail(collection, r, signal) : null,
    text ? h("span", { class: `card-text${hasThumb ? "" : " only"}`, text }) : null,
    h(
      "span",
      { class: "card-foot" },
      h("span", { class: "rank", text: `#${rank}` }),
      h("span", { class: `badge ${r.modality}`, text: r.modality }),
      h("span", { class: "score", title: "cosine score", text: fmt(r.score) }),
      moved,
      h("span", { class: "card-id", text: r.id }),
    ),
  );
  return h("li", {}, button);
}

/** Count results per modality: "4 images · 8 texts". */
export function modalityMix(results) {
  const counts = new Map();
  for (const r of results) counts.set(r.modality, (counts.get(r.modality) || 0) + 1);
  return [...counts.entries()].map(([m, n]) => plural(n, m)).join(" · ");
}

/**
 * Fill one result column. `outcome` is {results} or {error}; `other` is the other column's
 * results (for "raw #n" / "new" marks), or null.
 */
export function renderColumn(col, { collection, space, outcome, other, onPick, signal }) {
  const grid = col.querySelector(".grid");
  const meta = col.querySelector(".column-meta");
  grid.replaceChildren();
  col.querySelector(".column-error")?.remove();
  col.hidden = false;
  if (outcome.error) {
    meta.textContent = "";
    grid.before(h("p", { class: "column-error", text: outcome.error.message }));
    return;
  }
  const results = outcome.results;
  if (!results.length) {
    meta.textContent = "No results. Try more modalities or another query.";
    return;
  }
  const otherRanks = other ? new Map(other.map((r, i) => [r.id, i + 1])) : null;
  const parts = [plural(results.length, "result"), modalityMix(results)];
  if (otherRanks) {
    const shared = results.filter((r) => otherRanks.has(r.id)).length;
    parts.push(`${shared} shared with ${space === "raw" ? "corrected" : "raw"}`);
  }
  meta.textContent = parts.join(" · ");
  grid.append(
    ...results.map((r, i) => card(collection, r, i + 1, otherRanks, space, onPick, signal)),
  );
}
