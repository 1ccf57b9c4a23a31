/** Gap panel: statistics raw vs corrected, and the 2-D PCA picture of both modalities. */

import { fmt, h, plural, s } from "./dom.js";

const SIZE = 300;
const PAD = 16;

const get = (obj, path) => path.reduce((o, k) => (o == null ? undefined : o[k]), obj);

/**
 * Statistic rows: [label, accessor(stats, space), digits, direction] where direction says
 * which way is a smaller gap: -1 (lower is better), +1 (higher is better), 0 (neutral), or
 * {target: x} (closer to x is better).
 */
const ROWS = [
  [
    "Centroid gap ‖μ_image − μ_text‖",
    (g, sp) => get(g, ["centroid_gap", sp]) ?? get(g, [sp, "centroid_gap"]),
    3,
    -1,
  ],
  ["Centroid cosine", (g, sp) => get(g, [sp, "centroid_cosine"]), 3, +1],
  [
    "Separability (held-out accuracy; 0.5 = none)",
    (g, sp) => get(g, [sp, "separability", "accuracy"]),
    3,
    { target: 0.5 },
  ],
  ["Mean cosine within images", (g, sp) => get(g, [sp, "cone_image", "mean_cosine"]), 3, 0],
  ["Mean cosine within texts", (g, sp) => get(g, [sp, "cone_text", "mean_cosine"]), 3, 0],
  [
    "Dimensions carrying 90% of the gap",
    (g, sp) => get(g, [sp, "gap_dimensions", "dims_for_90pct"]),
    0,
    0,
  ],
  ["Mean paired cosine", (g, sp) => get(g, [sp, "paired", "mean_paired_cosine"]), 3, +1],
  ["Relative modality gap", (g, sp) => get(g, [sp, "paired", "relative_modality_gap"]), 3, -1],
];

function statsTable(g) {
  const body = [];
  for (const [label, pick, digits, direction] of ROWS) {
    const raw = pick(g, "raw");
    const corrected = pick(g, "corrected");
    if (raw === undefined && corrected === undefined) continue;
    let cls = null;
    if (direction && typeof raw === "number" && typeof corrected === "number") {
      const delta =
        typeof direction === "object"
          ? Math.abs(raw - direction.target) - Math.abs(corrected - direction.target)
          : (corrected - raw) * direction;
      if (Math.abs(delta) > 1e-6) cls = delta > 0 ? "better" : "worse";
    }
    body.push(
      h(
        "tr",
        {},
        h("th", { scope: "row", text: label }),
        h("td", { text: fmt(raw, digits) }),
        h(
          "td",
          { class: cls, title: cls ? `${cls === "better" ? "smaller" : "larger"} gap` : null },
          fmt(corrected, digits),
          cls
            ? h("span", {
                class: "visually-hidden",
                text: cls === "better" ? " (smaller gap)" : " (larger gap)",
              })
            : null,
        ),
      ),
    );
  }
  const rows = g.rows || {};
  const counts = g.counts || {};
  const captionBits = [
    `Computed on ${plural(rows.image ?? counts.image ?? 0, "image vector")} and ` +
      `${plural(rows.text ?? counts.text ?? 0, "text vector")}`,
  ];
  if (g.paired) captionBits.push("paired (documents)");
  if (g.sampled) captionBits.push("a random sample");
  captionBits.push(g.transform ? `transform: ${g.transform}` : "no transform: corrected = raw");
  return h(
    "div",
    { class: "stats-wrap" },
    h(
      "table",
      { class: "stats" },
      h("caption", { text: `${captionBits.join(", ")}.` }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col", text: "Statistic" }),
          h("th", { scope: "col", text: "Raw" }),
          h("th", { scope: "col", text: "Corrected" }),
        ),
      ),
      h("tbody", {}, body),
    ),
  );
}

function extent(pcas) {
  let m = 1e-9;
  for (const p of pcas) {
    for (const pts of [p.image, p.text]) {
      for (const [x, y] of pts) m = Math.max(m, Math.abs(x), Math.abs(y));
    }
  }
  return m * 1.08;
}

function dots(points, map) {
  return points.map(([x, y]) => `M${map(x, y)}h0`).join("");
}

/** One PCA scatter as inline SVG: image dots, text squares, pair lines, centroid gap line. */
export function pcaPlot(p, { title, scale, pairs: showPairs }) {
  const half = SIZE / 2;
  const k = (half - PAD) / scale;
  const xy = (x, y) => [half + x * k, half - y * k];
  const map = (x, y) => xy(x, y).map((v) => v.toFixed(1)).join(" ");
  const paired = showPairs && p.paired && p.image.length === p.text.length;
  const pairs = paired
    ? p.image.map((pt, i) => `M${map(pt[0], pt[1])}L${map(p.text[i][0], p.text[i][1])}`).join("")
    : "";
  const ci = p.image_centroid;
  const ct = p.text_centroid;
  const dist = Math.hypot(ci[0] - ct[0], ci[1] - ct[1]);
  const [ix, iy] = xy(ci[0], ci[1]);
  const [tx, ty] = xy(ct[0], ct[1]);
  const ev = p.explained_variance || [];
  const desc =
    `${title}: ${plural(p.image.length, "image point")}, ${plural(p.text.length, "text point")}` +
    `${paired ? " with pair lines" : ""}; centroids ${fmt(dist)} apart in the plane.`;
  const svg = s(
    "svg",
    {
      viewBox: `0 0 ${SIZE} ${SIZE}`,
      role: "img",
      "aria-label": desc,
      class: "pca",
      dataset: { images: p.image.length, texts: p.text.length },
    },
    s("line", { class: "axis", x1: PAD, y1: half, x2: SIZE - PAD, y2: half }),
    s("line", { class: "axis", x1: half, y1: PAD, x2: half, y2: SIZE - PAD }),
    pairs ? s("path", { class: "pair-lines", d: pairs, fill: "none", "stroke-width": 0.7 }) : null,
    s("path", {
      class: "pt-image",
      d: dots(p.image, map),
      "stroke-width": 5,
      "stroke-linecap": "round",
      "stroke-opacity": 0.75,
    }),
    s("path", {
      class: "pt-text",
      d: dots(p.text, map),
      "stroke-width": 4.5,
      "stroke-linecap": "square",
      "stroke-opacity": 0.75,
    }),
    s("line", { class: "gap-line", x1: ix, y1: iy, x2: tx, y2: ty, "stroke-width": 2.5 }),
    s("circle", { class: "centroid-image", cx: ix, cy: iy, r: 6, "stroke-width": 2 }),
    s("rect", {
      class: "centroid-text",
      x: tx - 5.5,
      y: ty - 5.5,
      width: 11,
      height: 11,
      "stroke-width": 2,
    }),
    ev.length >= 2
      ? s("text", {
          class: "plot-label",
          x: PAD,
          y: SIZE - 6,
          text: `PC1 ${Math.round(ev[0] * 100)}% · PC2 ${Math.round(ev[1] * 100)}%`,
        })
      : null,
  );
  return h(
    "figure",
    { class: "plot", dataset: { space: title.toLowerCase() } },
    svg,
    h(
      "figcaption",
      {},
      h("strong", { text: title }),
      ` · centroids ${fmt(dist)} apart in this plane`,
    ),
  );
}

function legend(pairs) {
  const item = (cls, text) => h("li", {}, h("span", { class: `swatch ${cls}` }), text);
  return h(
    "ul",
    { class: "legend", "aria-label": "Legend" },
    item("image", "image"),
    item("text", "text"),
    pairs ? item("pair", "pair (same document)") : null,
    item("centroid", "centroid gap"),
  );
}

/** Normalise the PCA part of a /gap response to {raw, corrected} (either may be null). */
export function pcaOf(g) {
  const p = g.pca || {};
  const ok = (x) => x && Array.isArray(x.image) && Array.isArray(x.text) && x.image.length;
  return { raw: ok(p.raw) ? p.raw : null, corrected: ok(p.corrected) ? p.corrected : null };
}

/** Render a /gap?pca=true response into the panel body. */
export function renderGap(body, g, collection) {
  body.replaceChildren();
  body.classList.remove("has-plots");
  const hasStats = g.raw || g.corrected;
  if (!hasStats) {
    const counts = g.counts || {};
    const total = (counts.image || 0) + (counts.text || 0) + (counts.document || 0);
    body.append(
      h(
        "p",
        { class: "empty" },
        total
          ? `${g.note || "Gap statistics need at least 2 image and 2 text vectors"}. ` +
              `“${collection}” has ${plural(counts.image || 0, "image")}, ` +
              `${plural(counts.text || 0, "text")} and ${plural(counts.document || 0, "document")}.`
          : `“${collection}” is empty: add images and texts to see its modality gap.`,
      ),
    );
    return;
  }
  body.append(statsTable(g));
  const pca = pcaOf(g);
  const present = [pca.raw, pca.corrected].filter(Boolean);
  if (!present.length) return;
  const scale = extent(present);
  // Pair lines join row i of each modality only when the rows really are pairs: a collection
  // of documents (image + text of the same item). Equal counts alone prove nothing.
  const pairs = Boolean(g.paired);
  body.classList.add("has-plots");
  body.append(
    h(
      "div",
      { class: "plots" },
      pca.raw ? pcaPlot(pca.raw, { title: "Raw", scale, pairs }) : null,
      pca.corrected ? pcaPlot(pca.corrected, { title: "Corrected", scale, pairs }) : null,
      legend(pairs),
    ),
  );
}
