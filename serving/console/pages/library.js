// The library browser: filters, an infinitely scrolling grid (keyset cursor, so page 200 costs the
// same as page 1) and the upload dialog.
import { api } from "../api.js";
import { go } from "../app.js";
import { lang, t } from "../i18n.js";
import { can, classesFor, sectorName, session } from "../store.js";
import { button, debounce, h, icon, showError } from "../ui.js";
import { STATUSES, classChip, lazyImage, releaseLazy, sampleStatus, statusChip } from "./common.js";
import { openUpload } from "./upload.js";

const PAGE = 60;
// Filter names are the API's query parameters, and the page keeps them in its own hash
// (#/library?sector=dust) so that a filtered view can be bookmarked or shared.
const FILTERS = ["sector", "class", "status", "org", "scope", "site", "camera",
  "captured_from", "captured_to", "created_from", "created_to"];

export function render(view, { query }) {
  const filters = Object.fromEntries(FILTERS.map((f) => [f, query.get(f) || ""]));
  const grid = h("div", { class: "grid", "data-testid": "sample-grid" });
  const sentinel = h("div", { class: "sentinel" });
  const counter = h("span", { class: "muted", "data-testid": "sample-count" });
  const emptyNote = h("p", { class: "empty", hidden: true }, t("library.empty"));
  let cursor = null;
  let done = false;
  let loading = false;
  let generation = 0;
  let loaded = 0;
  let controller = null;

  async function loadMore() {
    if (loading || done) return;
    loading = true;
    const mine = generation;
    sentinel.classList.add("busy");
    controller = new AbortController();
    try {
      const answer = await api("/v1/samples", {
        query: { ...apiFilters(filters), limit: PAGE, cursor }, signal: controller.signal,
      });
      if (mine !== generation) return;
      for (const s of answer.items || []) grid.append(card(s));
      loaded += (answer.items || []).length;
      cursor = answer.next_cursor || null;
      done = !cursor;
      counter.textContent = t(done ? "library.count_all" : "library.count_more", { n: loaded });
      emptyNote.hidden = loaded > 0;
    } catch (e) {
      if (e.name === "AbortError") return;
      done = true;
      showError(e, t("library.load_failed"));
    } finally {
      if (mine === generation) {
        loading = false;
        sentinel.classList.remove("busy");
        // A tall screen may show the sentinel again right away: keep filling until it scrolls.
        if (!done && isVisible(sentinel)) queueMicrotask(loadMore);
      }
    }
  }

  function reload() {
    generation += 1;
    if (controller) controller.abort();
    releaseLazy(grid);
    grid.replaceChildren();
    cursor = null;
    done = false;
    loading = false;
    loaded = 0;
    counter.textContent = "";
    const qs = new URLSearchParams(Object.entries(filters).filter(([, v]) => v)).toString();
    history.replaceState(null, "", `#/library${qs ? "?" + qs : ""}`);
    loadMore();
  }

  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, { rootMargin: "800px 0px" });

  const toolbar = h("div", { class: "toolbar" },
    h("h1", {}, t("library.title")), counter, h("div", { class: "spacer" }),
    can("samples:write") ? button("upload", t("upload.button"), {
      class: "primary", "data-testid": "upload-open",
      onclick: () => openUpload(() => reload()),
    }) : null);

  view.append(toolbar, filterBar(filters, reload), grid, emptyNote, sentinel);
  observer.observe(sentinel);
  reload();

  return () => {
    generation += 1;
    if (controller) controller.abort();
    observer.disconnect();
    releaseLazy(grid);
  };
}

function isVisible(el) {
  const r = el.getBoundingClientRect();
  return r.top < window.innerHeight + 800;
}

/** The console's filter values -> the API's query (dates become whole days in local time). */
function apiFilters(f) {
  const out = {};
  for (const [k, v] of Object.entries(f)) {
    if (!v) continue;
    if (k.endsWith("_from")) out[k] = new Date(`${v}T00:00:00`).toISOString();
    else if (k.endsWith("_to")) out[k] = new Date(`${v}T23:59:59.999`).toISOString();
    else out[k] = v;
  }
  return out;
}

function card(s) {
  const status = sampleStatus(s);
  const classes = s.class_keys || [];
  return h("a", { class: "card", href: `#/sample/${s.id}`, "data-sample-id": s.id, "data-testid": "sample-card" },
    h("div", { class: "thumb" }, lazyImage(`/v1/samples/${s.id}/thumbnail`, s.original_name || `#${s.id}`),
      h("span", { class: "thumb-status" }, statusChip(status))),
    h("div", { class: "card-body" },
      h("div", { class: "card-title" }, h("strong", {}, `#${s.id}`), h("span", { class: "muted" }, sectorName(s.sector))),
      h("div", { class: "card-meta muted" }, [s.org_code, s.site_id, s.camera_id].filter(Boolean).join(" · ")),
      classes.length ? h("div", { class: "card-classes" }, classes.slice(0, 3).map((k) => classChip(k)),
        classes.length > 3 ? h("span", { class: "muted" }, `+${classes.length - 3}`) : null) : null));
}

function filterBar(filters, onChange) {
  const tax = session.taxonomy;
  const changed = () => onChange();
  const later = debounce(changed, 350);
  const set = (name, value, typing) => {
    filters[name] = value;
    if (name === "sector") {
      const select = bar.querySelector('[data-filter="class"]');
      select.replaceChildren(h("option", { value: "" }, t("filter.any")),
        classOptions().map(([v, text]) => h("option", { value: v, selected: filters.class === v }, text)));
    }
    (typing ? later : changed)();
  };
  const zh = lang() !== "en";

  const select = (name, options, label) => h("label", { class: "field" }, h("span", {}, label),
    h("select", { name, "data-filter": name, onchange: (e) => set(name, e.target.value) },
      h("option", { value: "" }, t("filter.any")),
      options.map(([value, text]) => h("option", { value, selected: filters[name] === value }, text))));
  const text = (name, label, placeholder = "") => h("label", { class: "field" }, h("span", {}, label),
    h("input", { type: "search", name, "data-filter": name, value: filters[name], placeholder,
      oninput: (e) => set(name, e.target.value.trim(), true) }));
  const dateInput = (name, label) => h("input", { type: "date", name, "data-filter": name, value: filters[name],
    "aria-label": label, onchange: (e) => set(name, e.target.value) });
  const range = (prefix, label) => h("div", { class: "field field-range" }, h("span", {}, label),
    h("div", { class: "range" }, dateInput(`${prefix}_from`, `${label} ${t("filter.from")}`), h("span", { class: "muted" }, "–"),
      dateInput(`${prefix}_to`, `${label} ${t("filter.to")}`)));

  // Classes relevant to the chosen sector are listed first (and change with it).
  const classOptions = () => classesFor(filters.sector || null).map((c) => [c.key, zh ? c.name_zh : c.name_en]);
  const bar = h("form", { class: "filters", "aria-label": t("filter.title"), onsubmit: (e) => e.preventDefault() },
    h("span", { class: "filters-icon" }, icon("filter")),
    select("sector", tax.sectors.map((s) => [s.key, zh ? s.name_zh : s.name_en]), t("filter.sector")),
    select("class", classOptions(), t("filter.class")),
    select("status", STATUSES.map((s) => [s, t(`status.${s}`)]), t("filter.status")),
    text("org", t("filter.org"), "420000"),
    select("scope", [["private", t("scope.private")], ["shared", t("scope.shared")]], t("filter.scope")),
    text("site", t("filter.site")),
    text("camera", t("filter.camera")),
    range("captured", t("filter.captured")), range("created", t("filter.created")),
    button(null, t("filter.reset"), { class: "ghost", "data-testid": "filter-reset", onclick: () => {
      for (const k of Object.keys(filters)) filters[k] = "";
      go("#/library");
    } }));
  return bar;
}
