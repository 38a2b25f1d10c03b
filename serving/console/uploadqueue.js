// Site photos on a weak network: every photo is first put in a queue kept in IndexedDB (it survives
// a dropped connection, a closed tab and a dead battery), then sent; a send that fails for want of a
// network is tried again when the browser says the network is back (the `online` event) and on a
// growing timer, with the SAME Idempotency-Key each time, so a photo whose answer was lost on the way
// back is not stored twice (the server replays its first answer). Only a refusal by the server (a
// 4xx it will repeat) stops the retries; the inspector sees the reason and may discard the photo.
//
// Before queueing, a photo is downscaled on the device (canvas) to the long side the detector reads
// (GET /v1/organisation/capture), unless the organisation keeps originals: 4-6 MB from a phone
// camera become a few hundred KB, which is what decides whether an upload works on site at all.
import { getKey, upload } from "./api.js";
import { session } from "./store.js";

const DB_NAME = "hazardlens-uploads";
const STORE = "photos";
const RETRY_MS = [2000, 4000, 8000, 15000, 30000, 60000];
const JPEG_QUALITY = 0.9;

let dbPromise = null;
const listeners = new Set();
let timer = null;
let flushing = null;
let attempt = 0;

function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "key" });
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return dbPromise;
}

/** Run `fn(store)` in one transaction; resolves when it is committed. */
async function tx(mode, fn) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const t = db.transaction(STORE, mode);
    fn(t.objectStore(STORE));
    t.oncomplete = () => resolve();
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error);
  });
}

/** A key unique to this upload: kept with the photo, so every retry sends the same one. */
export function newKey() {
  if (crypto.randomUUID) return `console-${crypto.randomUUID()}`;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** The queued photos of `owner` (oldest first); every queued photo when no owner is given. */
export async function queued(owner) {
  const db = await openDb();
  const all = await new Promise((resolve, reject) => {
    const req = db.transaction(STORE, "readonly").objectStore(STORE).getAll();
    req.onsuccess = () => resolve(req.result || []);
    req.onerror = () => reject(req.error);
  });
  return all.filter((e) => !owner || e.owner === owner).sort((a, b) => a.created - b.created);
}

async function put(entry) {
  await tx("readwrite", (store) => { store.put(entry); });
}

export async function discard(key) {
  await tx("readwrite", (store) => { store.delete(key); });
  changed();
}

/** Tell `fn(event)` about every change: {type: "queued"|"sending"|"progress"|"waiting"|"failed"|"sent", entry, answer}. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function changed(event = { type: "changed" }) {
  for (const fn of [...listeners]) {
    try { fn(event); } catch (e) { console.error(e); }
  }
}

// --- preparing a photo ---------------------------------------------------------------------------

/** The photo as it will be sent: downscaled to `maxSide` (long side) as a JPEG, or the file itself
 *  when originals are kept, when it is already small enough, or when this browser cannot decode it
 *  (e.g. HEIC: the server then says whether it takes it). EXIF orientation is applied by the decoder,
 *  so the pixels are upright and the boxes the server answers are in the photo as shown. */
export async function preparePhoto(file, maxSide) {
  const original = { blob: file, name: file.name || "photo.jpg", width: null, height: null, resized: false };
  if (!maxSide) return original;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return original;
  }
  try {
    const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
    if (scale === 1) return { ...original, width: bitmap.width, height: bitmap.height };
    const width = Math.max(1, Math.round(bitmap.width * scale));
    const height = Math.max(1, Math.round(bitmap.height * scale));
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, width, height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
    if (!blob) return original;
    const name = (original.name.replace(/\.[^.]*$/, "") || "photo") + ".jpg";
    return { blob, name, width, height, resized: true };
  } finally {
    bitmap.close();
  }
}

// --- queueing and sending ------------------------------------------------------------------------

/** Who a queued photo belongs to: the organisation and the user who took it. A photo is only ever
 *  sent with its owner's key, never with the key of whoever logs in next on the same phone. */
export function ownerOf(me) {
  return `${me.org_code}/${me.name}`;
}

/** Queue a prepared photo of `owner` for `recordNo` with its form fields; sending starts at once. */
export async function enqueue({ owner, recordNo, fields, photo }) {
  const entry = {
    key: newKey(),
    owner,
    recordNo,
    fields,
    blob: photo.blob,
    name: photo.name,
    size: photo.blob.size,
    resized: photo.resized,
    created: Date.now(),
    attempts: 0,
    state: "queued",
    error: null,
  };
  await put(entry);
  changed({ type: "queued", entry });
  flush();
  return entry;
}

function retryable(err) {
  // No answer at all (offline, reset, lost response), or the server was busy or timed out.
  return err.status === 0 || err.status === 408 || err.status === 429 || err.status >= 500 || err.status === 401;
}

async function sendOne(entry) {
  const form = new FormData();
  form.append("file", entry.blob, entry.name);
  for (const [k, v] of Object.entries(entry.fields || {})) if (v !== null && v !== undefined && v !== "") form.append(k, v);
  entry.attempts += 1;
  entry.state = "sending";
  await put(entry);
  changed({ type: "sending", entry });
  try {
    const answer = await upload(`/v1/inspections/${encodeURIComponent(entry.recordNo)}/photos`, form,
      (f) => changed({ type: "progress", entry, fraction: f }), { "Idempotency-Key": entry.key });
    await tx("readwrite", (store) => { store.delete(entry.key); });
    changed({ type: "sent", entry, answer });
    return true;
  } catch (err) {
    entry.error = { status: err.status, code: err.code, message: err.message };
    entry.state = retryable(err) ? "waiting" : "failed";
    await put(entry);
    changed({ type: entry.state, entry });
    return entry.state === "failed";
  }
}

/** Send every queued photo of the logged-in user, oldest first (another user's wait for them);
 *  schedule a retry for those that could not reach the server. Concurrent calls share one run. */
export function flush() {
  if (flushing) return flushing;
  flushing = (async () => {
    clearTimeout(timer);
    timer = null;
    if (!getKey() || !session.me) return;
    let waiting = 0;
    for (const entry of await queued(ownerOf(session.me))) {
      if (entry.state === "failed") continue;
      if (!navigator.onLine) {
        // No network at all: do not even try; say so, and wait for the `online` event.
        waiting += 1;
        if (entry.state !== "waiting") { entry.state = "waiting"; await put(entry); changed({ type: "waiting", entry }); }
        continue;
      }
      if (!(await sendOne(entry))) waiting += 1;
    }
    if (waiting) {
      const delay = RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)];
      attempt += 1;
      timer = setTimeout(() => flush(), delay);
    } else {
      attempt = 0;
    }
  })().finally(() => { flushing = null; });
  return flushing;
}

/** Retry a refused photo once more (after the inspector fixed, e.g., the sector). */
export async function retry(key, fields) {
  const entry = (await queued()).find((e) => e.key === key);
  if (!entry) return;
  entry.state = "queued";
  entry.error = null;
  if (fields) entry.fields = { ...entry.fields, ...fields };
  await put(entry);
  changed({ type: "queued", entry });
  flush();
}

// The network is back: send now rather than at the next tick of the timer.
window.addEventListener("online", () => { attempt = 0; flush(); });
