/** Small DOM helpers: element builder, SVG builder, number formatting. No framework. */

/** SVG namespace identifier (a name, never fetched). */
export const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Build an HTML element: h("li", {class: "x"}, child, "text", [more]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** Build an SVG element (same signature as h). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** ``text`` cut to ``max`` characters, with an ellipsis when it was longer. */
export function shorten(text, max) {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** Format a number for display: fixed digits, "–" for missing values. */
export function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  return value.toFixed(digits);
}

/** "1 image", "3 texts". */
export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/**
 * Show a busy indicator only when work outlasts `delayMs` (so fast queries never flicker).
 * Returns a `done()` function. `slowText` replaces the label after `slowMs`.
 */
export function busyAfter(el, { delayMs = 200, slowMs = 4000, text, slowText } = {}) {
  const label = el.querySelector(".busy-text");
  const timer = setTimeout(() => {
    if (label && text) label.textContent = text;
    el.hidden = false;
  }, delayMs);
  const slowTimer = slowText
    ? setTimeout(() => {
        if (label) label.textContent = slowText;
      }, slowMs)
    : null;
  return () => {
    clearTimeout(timer);
    if (slowTimer) clearTimeout(slowTimer);
    el.hidden = true;
  };
}
