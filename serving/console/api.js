// The one place that talks to the API. The key lives in sessionStorage (gone when the tab closes,
// never in a URL, a cookie or a log) and goes out as a bearer header. Errors come back as ApiError
// carrying the API's own {"error": {"code", "message"}}, which pages show as they are.
import { t } from "./i18n.js";

const KEY = "hazardlens.key";

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function errorFrom(status, body) {
  const err = body && body.error;
  if (err && err.message) return new ApiError(status, err.code || "error", err.message, err.details);
  return new ApiError(status, "http_" + status, t("error.http", { status }));
}

// A 401 means the key is wrong, expired or revoked: the app listens and returns to the login page.
function unauthorized(error) {
  window.dispatchEvent(new CustomEvent("hl:unauthorized", { detail: error }));
}

export function queryString(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.append(k, v);
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

/** api("/v1/samples", {query, method, body}) -> parsed JSON (null for 204). */
export async function api(path, { method = "GET", body, query, signal, raw = false } = {}) {
  const headers = {};
  const key = getKey();
  if (key) headers.Authorization = "Bearer " + key;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path + queryString(query), { method, headers, body: payload, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", t("error.network"));
  }
  if (!response.ok) {
    let parsed = null;
    try { parsed = await response.json(); } catch { /* not JSON: keep the generic message */ }
    const error = errorFrom(response.status, parsed);
    if (response.status === 401) unauthorized(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// --- images ------------------------------------------------------------------------------------
// <img src> cannot send a bearer header, so images are fetched as blobs and shown through object
// URLs. A small limiter keeps a fast scroll through thousands of thumbnails from opening hundreds of
// requests at once; entries are reference-counted so an URL is revoked once no element shows it.

const MAX_PARALLEL = 6;
let running = 0;
const waiting = [];
const blobs = new Map(); // path -> {promise, url, refs}

function schedule(task) {
  return new Promise((resolve, reject) => {
    const run = async () => {
      running += 1;
      try { resolve(await task()); } catch (e) { reject(e); } finally {
        running -= 1;
        const next = waiting.shift();
        if (next) next();
      }
    };
    if (running < MAX_PARALLEL) run(); else waiting.push(run);
  });
}

/** An object URL for an authenticated image; call releaseImage(path) when no longer shown. */
export function loadImage(path) {
  let entry = blobs.get(path);
  if (!entry) {
    entry = { refs: 0, url: null };
    entry.promise = schedule(async () => {
      const response = await api(path, { raw: true });
      const blob = await response.blob();
      entry.url = URL.createObjectURL(blob);
      return entry.url;
    });
    entry.promise.catch(() => blobs.delete(path));
    blobs.set(path, entry);
  }
  entry.refs += 1;
  return entry.promise;
}

export function releaseImage(path) {
  const entry = blobs.get(path);
  if (!entry) return;
  entry.refs -= 1;
  if (entry.refs <= 0) {
    blobs.delete(path);
    entry.promise.then((url) => URL.revokeObjectURL(url)).catch(() => {});
  }
}

/** Release every image (on logout, so nothing of one user's library stays in memory). */
export function releaseAllImages() {
  for (const path of [...blobs.keys()]) {
    const entry = blobs.get(path);
    blobs.delete(path);
    entry.promise.then((url) => URL.revokeObjectURL(url)).catch(() => {});
  }
}

// --- uploads -----------------------------------------------------------------------------------

/** POST a FormData with XMLHttpRequest, because fetch() reports no upload progress.
 *  onProgress(fraction 0..1); `headers` are extra request headers (e.g. Idempotency-Key).
 *  Resolves with the parsed JSON answer, rejects with ApiError (status 0: no answer at all). */
export function upload(path, form, onProgress, headers = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    const key = getKey();
    if (key) xhr.setRequestHeader("Authorization", "Bearer " + key);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* keep null */ }
      if (xhr.status >= 200 && xhr.status < 300) {
        if (onProgress) onProgress(1);
        resolve(body);
      } else {
        const error = errorFrom(xhr.status, body);
        if (xhr.status === 401) unauthorized(error);
        reject(error);
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", t("error.network"))));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", t("error.aborted"))));
    xhr.send(form);
  });
}
