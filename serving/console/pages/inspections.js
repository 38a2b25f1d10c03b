// Inspection records (执法检查记录) of the caller's organisation: filter by record number, enterprise,
// sector, inspector, date and whether findings still await a decision; newest first, a page at a
// time (keyset cursor). Filters live in the hash (#/inspections?open=true) so a view can be
// bookmarked. An inspector starts a new record here; its first photo opens it on the server.
import { api } from "../api.js";
import { go } from "../app.js";
import { lang, t } from "../i18n.js";
import { can, sectorName, session } from "../store.js";
import { button, debounce, dialog, h, showError } from "../ui.js";
import { lazyImage, releaseLazy } from "./common.js";

const PAGE = 30;
const FILTERS = ["record", "enterprise", "sector", "inspector", "date_from", "date_to", "open"];

export function recordHash(recordNo, query = {}) {
  const qs = new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString();
  return `#/record/${encodeURIComponent(recordNo)}${qs ? "?" + qs : ""}`;
}

export function render(view, { query }) {
  const filters = Object.fromEntries(FILTERS.map((f) => [f, query.get(f) || ""]));
  const list = h("div", { class: "record-list", "data-testid": "record-list" });
  const more = button("next", t("records.more"), { class: "ghost", hidden: true, "data-testid": "records-more", onclick: () => load() });
  const empty = h("p", { class: "empty", hidden: true, "data-testid": "records-empty" }, t("records.empty"));
  let cursor = null;
  let generation = 0;

  async function load(reset = false) {
    const mine = reset ? ++generation : generation;
    if (reset) { releaseLazy(list); list.replaceChildren(); cursor = null; }
    more.disabled = true;
    try {
      const answer = await api("/v1/inspections", { query: { ...filters, limit: PAGE, cursor } });
      if (mine !== generation) return;
      for (const r of answer.items) list.append(recordCard(r));
      cursor = answer.next_cursor || null;
      more.hidden = !cursor;
      empty.hidden = list.children.length > 0;
    } catch (e) {
      if (mine === generation) list.append(h("p", { class: "form-error", role: "alert", "data-testid": "records-error" }, e.message));
    } finally {
      more.disabled = false;
    }
  }

  function changed() {
    const qs = new URLSearchParams(Object.entries(filters).filter(([, v]) => v)).toString();
    history.replaceState(null, "", `#/inspections${qs ? "?" + qs : ""}`);
    load(true);
  }
  const typed = debounce(changed, 350);
  const text = (name, label) => h("label", { class: "field" }, h("span", {}, label),
    h("input", { value: filters[name], "data-filter": name, maxlength: name === "record" ? 200 : 100,
      oninput: (e) => { filters[name] = e.target.value.trim(); typed(); } }));
  const date = (name, label) => h("label", { class: "field" }, h("span", {}, label),
    h("input", { type: "date", value: filters[name], "data-filter": name,
      onchange: (e) => { filters[name] = e.target.value; changed(); } }));
  const select = (name, label, options) => h("label", { class: "field" }, h("span", {}, label),
    h("select", { "data-filter": name, onchange: (e) => { filters[name] = e.target.value; changed(); } },
      options.map(([value, text]) => h("option", { value, selected: value === filters[name] }, text))));

  const filterBar = h("details", { class: "panel filters record-filters", open: window.innerWidth > 860 || FILTERS.some((f) => filters[f]) },
    h("summary", {}, t("filter.title")),
    h("div", { class: "form-grid" },
      text("record", t("records.record_no")),
      text("enterprise", t("record.enterprise")),
      select("sector", t("filter.sector"), [["", t("filter.any")],
        ...session.taxonomy.sectors.map((s) => [s.key, lang() === "en" ? s.name_en : s.name_zh])]),
      text("inspector", t("record.inspector")),
      date("date_from", t("records.date_from")),
      date("date_to", t("records.date_to")),
      select("open", t("records.open"), [["", t("filter.any")], ["true", t("records.open_true")], ["false", t("records.open_false")]])));

  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, t("records.title")), h("div", { class: "spacer" }),
      can("inspections:write") ? button("camera", t("records.new"), { class: "primary", "data-testid": "new-record",
        onclick: () => newRecord() }) : null),
    filterBar, list, empty, more);
  load(true);
  return () => { generation += 1; releaseLazy(list); };
}

function recordCard(r) {
  const f = r.findings;
  return h("a", { class: "record-card", href: recordHash(r.record_no), "data-testid": "record-card", "data-record-no": r.record_no },
    lazyImage(`/v1/samples/${r.cover_sample_id}/thumbnail`, r.record_no),
    h("div", { class: "record-card-body" },
      h("strong", { class: "record-card-no" }, r.record_no),
      h("span", { class: "muted" }, r.enterprise_ids.join("、")),
      h("span", { class: "muted small" }, [r.sectors.map(sectorName).join("、"), r.inspector_ids.join("、"),
        r.first_at ? r.first_at.slice(0, 10) : ""].filter(Boolean).join(" · ")),
      h("span", { class: "counts" },
        h("span", { class: "chip" }, t("records.photos", { n: r.photos })),
        f.suggested ? h("span", { class: "chip finding-suggested", "data-testid": "open-count" }, t("record.n_suggested", { n: f.suggested })) : null,
        f.confirmed ? h("span", { class: "chip finding-confirmed" }, t("record.n_confirmed", { n: f.confirmed })) : null,
        f.rejected ? h("span", { class: "chip finding-rejected" }, t("record.n_rejected", { n: f.rejected })) : null)));
}

async function newRecord() {
  const input = (name, attrs = {}) => h("input", { name, maxlength: 100, "data-testid": `new-${name}`, ...attrs });
  const no = input("record_no", { required: true, maxlength: 200, placeholder: t("records.record_no_hint") });
  const ent = input("enterprise", { required: true });
  const insp = input("inspector");
  const sector = h("select", { required: true, "data-testid": "new-sector" }, h("option", { value: "" }, t("upload.pick_sector")),
    session.taxonomy.sectors.map((s) => h("option", { value: s.key }, lang() === "en" ? s.name_en : s.name_zh)));
  const field = (label, el) => h("label", { class: "field" }, h("span", {}, label), el);
  const ok = await dialog({
    title: t("records.new"),
    body: h("div", { class: "form-grid" }, field(t("records.record_no"), no), field(t("record.enterprise"), ent),
      field(t("filter.sector"), sector), field(t("record.inspector"), insp)),
    actions: [{ label: t("common.cancel"), value: null }, { label: t("records.open_record"), value: "go", primary: true }],
    onSubmit: () => {
      if (!no.value.trim() || no.value.includes("/") || !ent.value.trim() || !sector.value) {
        showError(t("records.new_invalid"));
        return false;
      }
      return true;
    },
  });
  if (ok) go(recordHash(no.value.trim(), { new: "1", enterprise: ent.value.trim(), sector: sector.value, inspector: insp.value.trim() }));
}
