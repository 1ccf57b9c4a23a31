/** The gapfix HTTP API as used by the page: relative URLs, error envelopes, optional key. */

const KEY_STORAGE = "gapfix.apiKey";

/** An error reported by the service (envelope {"error": {type, message, param}}) or fetch. */
export class ApiError extends Error {
  constructor(message, { status = 0, type = "network_error", param = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.param = param;
  }
}

export function getApiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage disabled: the key lives for this page only */
  }
}

/** URL of an API path, relative to the page (works behind a path prefix too). */
export function apiUrl(path) {
  return new URL(path.replace(/^\//, ""), document.baseURI).toString();
}

const enc = encodeURIComponent;

/** Whether a key can travel in an HTTP header (printable ASCII, as the service's keys are). */
export function isValidApiKey(key) {
  return /^[\x21-\x7e]+$/.test(key);
}

function headers(json) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  const key = getApiKey();
  // a key no header can carry (saved before this check) is left out: the service answers
  // 401 and the page asks for a key, instead of fetch failing as if the service were down
  if (key && isValidApiKey(key)) out.Authorization = `Bearer ${key}`;
  return out;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON (a proxy page, an empty body) */
  }
  const env = body && typeof body === "object" ? body.error : null;
  if (env && typeof env === "object" && env.message) {
    return new ApiError(env.message, {
      status: response.status,
      type: env.type || "error",
      param: env.param ?? null,
    });
  }
  const detail = body && typeof body.detail === "string" ? `: ${body.detail}` : "";
  return new ApiError(`HTTP ${response.status} ${response.statusText}${detail}`.trim(), {
    status: response.status,
    type: "http_error",
  });
}

/** fetch + JSON + envelope errors. Throws ApiError; AbortError passes through. */
export async function request(path, { method = "GET", body, signal } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the gapfix service. Is it running?");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export function listCollections(signal) {
  return request("v1/collections", { signal });
}

export function search(collection, body, signal) {
  return request(`v1/collections/${enc(collection)}/search`, { method: "POST", body, signal });
}

export function gap(collection, signal) {
  return request(`v1/collections/${enc(collection)}/gap?pca=true`, { signal });
}

export function thumbnailPath(collection, id) {
  return `v1/collections/${enc(collection)}/items/${enc(id)}/thumbnail`;
}

/**
 * An <img>-usable URL for an item's thumbnail. Without an API key the browser loads (and
 * caches) the URL itself; with one, the image is fetched with the header into a blob URL.
 */
export async function thumbnailSrc(collection, id, signal) {
  const path = thumbnailPath(collection, id);
  if (!getApiKey()) return apiUrl(path);
  const response = await fetch(apiUrl(path), { headers: headers(false), signal });
  if (!response.ok) throw await errorFrom(response);
  return URL.createObjectURL(await response.blob());
}
