// Small DOM helpers shared by every page: an element builder, inline SVG icons, notices and dialogs.
// Everything is built with DOM calls (never innerHTML with data), so names and messages coming from
// the API cannot inject markup.
import { t } from "./i18n.js";

/** h("div", {class: "x", onclick: fn}, child, [children], "text") -> HTMLElement */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "class") {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else if (name in el && typeof value !== "string") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Like Element.append, but skips null/false/undefined (conditional children) and flattens arrays. */
export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Icons are paths on a 24x24 grid (drawn for this console), so nothing is fetched.
const ICONS = {
  library: "M3 4h7v7H3zM14 4h7v7h-7zM3 14h7v7H3zM14 14h7v7h-7z",
  pen: "M4 20l4-1 11-11-3-3L5 16l-1 4zM14 6l3 3",
  check: "M4 12l5 5L20 6",
  cross: "M6 6l12 12M18 6L6 18",
  model: "M12 3l8 4.5v9L12 21l-8-4.5v-9zM12 12l8-4.5M12 12v9M12 12L4 7.5",
  jobs: "M4 6h16M4 12h10M4 18h13",
  upload: "M12 16V4M7 9l5-5 5 5M4 20h16",
  undo: "M9 14L4 9l5-5M4 9h10a6 6 0 010 12h-3",
  redo: "M15 14l5-5-5-5M20 9H10a6 6 0 000 12h3",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13",
  zoomIn: "M11 4a7 7 0 100 14 7 7 0 000-14zM21 21l-5-5M8 11h6M11 8v6",
  zoomOut: "M11 4a7 7 0 100 14 7 7 0 000-14zM21 21l-5-5M8 11h6",
  fit: "M4 9V4h5M15 4h5v5M20 15v5h-5M9 20H4v-5",
  save: "M5 4h11l3 3v13H5zM8 4v5h7V4M8 20v-6h8v6",
  send: "M4 12l16-8-6 16-2-7z",
  next: "M5 12h14M13 6l6 6-6 6",
  logout: "M15 4h4v16h-4M10 8l-4 4 4 4M6 12h10",
  globe: "M12 3a9 9 0 100 18 9 9 0 000-18zM3 12h18M12 3c3 3 3 15 0 18M12 3c-3 3-3 15 0 18",
  review: "M9 11l2 2 4-4M5 4h14v16H5z",
  filter: "M4 5h16l-6 8v6l-4-2v-4z",
  spark: "M12 3v5M12 16v5M3 12h5M16 12h5M6 6l3 3M15 15l3 3M18 6l-3 3M9 15l-3 3",
  image: "M4 5h16v14H4zM4 16l5-5 4 4 3-3 4 4M15 9h.01",
  key: "M14 10a4 4 0 10-1.2 2.8L20 20M17 17l2-2",
  camera: "M4 8h3l2-3h6l2 3h3v11H4zM12 10a3.5 3.5 0 100 7 3.5 3.5 0 000-7z",
  print: "M7 9V4h10v5M7 17H4v-8h16v8h-3M7 14h10v6H7z",
};

export function icon(name, label) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", label ? "false" : "true");
  if (label) svg.setAttribute("aria-label", label);
  const path = document.createElementNS(NS, "path");
  path.setAttribute("d", ICONS[name] || ICONS.image);
  svg.append(path);
  return svg;
}

/** A button with an icon and a label; `attrs` go to the <button>. */
export function button(iconName, label, attrs = {}) {
  return h("button", { type: "button", ...attrs }, iconName ? icon(iconName) : null, h("span", {}, label));
}

// --- notices ---------------------------------------------------------------------------------------

/** Show a message in the page's notice area. Errors stay until closed (the user must read why
 *  nothing changed); others fade after a few seconds. */
export function notify(message, kind = "info") {
  const area = document.getElementById("notices");
  if (!area) return;
  const note = h("div", { class: ["notice", kind], role: kind === "error" ? "alert" : "status" },
    h("span", { class: "notice-text" }, message),
    h("button", { type: "button", class: "ghost notice-close", "aria-label": t("common.close"),
      onclick: () => note.remove() }, "×"));
  area.append(note);
  if (kind !== "error") setTimeout(() => note.remove(), 4000);
  while (area.children.length > 4) area.firstChild.remove();
}

export function clearNotices() {
  const area = document.getElementById("notices");
  if (area) clear(area);
}

/** The message to show for a failed call: the API's own message, prefixed by what we were doing. */
export function showError(err, doing) {
  const message = err && err.message ? err.message : String(err);
  notify(doing ? `${doing}：${message}` : message, "error");
}

// --- dialogs ---------------------------------------------------------------------------------------

/** A modal <dialog>. `actions` are [{label, value, primary, danger}]; resolves with the clicked value
 *  (or null when dismissed). `onSubmit(value)` may return false to keep the dialog open. */
export function dialog({ title, body, actions = [], onSubmit, wide = false }) {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: ["dialog", wide && "wide"] });
    const form = h("form", { method: "dialog" },
      h("h2", {}, title),
      h("div", { class: "dialog-body" }, body),
      h("div", { class: "dialog-actions" },
        actions.map((a) => h("button", {
          type: a.value === null ? "button" : "submit", value: a.value ?? "",
          class: [a.primary && "primary", a.danger && "danger"],
          onclick: a.value === null ? () => dlg.close("") : undefined,
        }, a.label))));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = event.submitter ? event.submitter.value : "";
      if (onSubmit && (await onSubmit(value)) === false) return;
      dlg.close(value);
    });
    dlg.append(form);
    dlg.addEventListener("close", () => {
      dlg.remove();
      resolve(dlg.returnValue || null);
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

export function formatDate(value, withTime = true) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const pad = (n) => String(n).padStart(2, "0");
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return withTime ? `${day} ${pad(d.getHours())}:${pad(d.getMinutes())}` : day;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Debounce: filters typed into text fields query once the user pauses. */
export function debounce(fn, ms = 300) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
