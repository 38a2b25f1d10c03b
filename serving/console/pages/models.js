// Model versions: stage, metrics, the model card; promote and roll back for admins only (the same
// rule the API enforces, so a hidden button is a convenience, never the protection).
import { api } from "../api.js";
import { go } from "../app.js";
import { t } from "../i18n.js";
import { can, className } from "../store.js";
import { button, dialog, formatDate, h, notify, showError } from "../ui.js";

const STAGES = ["candidate", "staging", "production", "archived"];
const METRIC_ORDER = ["map50", "mAP50", "map50_95", "mAP50-95", "map", "precision", "recall", "f1"];

export async function render(view) {
  view.append(h("div", { class: "toolbar" }, h("h1", {}, t("models.title"))));
  let models;
  let serving = null;
  try {
    const answer = await api("/v1/models");
    models = answer.models || [];
    serving = answer.serving || null;
  } catch (e) {
    view.append(h("p", { class: "form-error", role: "alert" }, e.message));
    return null;
  }
  if (!models.length) { view.append(h("p", { class: "empty" }, t("models.empty"))); return null; }
  const admin = can("models:promote");
  const byName = new Map();
  for (const m of models) byName.set(m.name, [...(byName.get(m.name) || []), m]);

  for (const [name, versions] of byName) {
    const metricKeys = orderedMetrics(versions);
    view.append(h("section", { class: "panel", "data-model": name },
      h("div", { class: "toolbar" }, h("h2", {}, name), h("div", { class: "spacer" }),
        admin ? button("undo", t("models.rollback"), { class: "ghost", "data-testid": "rollback",
          onclick: () => rollback(name) }) : null),
      h("div", { class: "table-wrap" }, h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, t("models.version")), h("th", {}, t("models.stage")),
          metricKeys.map((k) => h("th", { class: "num" }, k)), h("th", {}, t("models.classes")),
          h("th", {}, t("models.created")), h("th", {}, ""))),
        h("tbody", {}, versions.map((m) => h("tr", { class: m.stage === "production" ? "highlight" : "" },
          h("td", {}, h("strong", {}, m.version),
            serving === m.version ? h("span", { class: "chip job-running", title: t("models.serving_hint") }, t("models.serving")) : null),
          h("td", {}, h("span", { class: ["chip", `stage-${m.stage}`] }, t(`stage.${m.stage}`))),
          metricKeys.map((k) => h("td", { class: "num" }, fmtMetric((m.metrics || {})[k]))),
          h("td", {}, String((m.classes || []).length)),
          h("td", {}, formatDate(m.created_at)),
          h("td", { class: "row-actions" },
            button(null, t("models.card"), { class: "ghost tiny", onclick: () => showCard(m) }),
            admin ? button("spark", t("models.promote"), { class: "tiny", "data-testid": `promote-${m.version}`,
              onclick: () => promote(m) }) : null))))))));
  }
  return null;
}

function orderedMetrics(versions) {
  const keys = new Set();
  for (const m of versions) for (const [k, v] of Object.entries(m.metrics || {})) if (typeof v === "number") keys.add(k);
  return [...keys].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)).slice(0, 6);
}

function rank(k) {
  const i = METRIC_ORDER.indexOf(k);
  return i < 0 ? 99 : i;
}

function fmtMetric(v) {
  if (typeof v !== "number") return "—";
  return v <= 1 ? v.toFixed(3) : v.toFixed(1);
}

function showCard(m) {
  const card = m.card || {};
  const perClass = card.per_class || (card.metrics && card.metrics.per_class);
  dialog({
    title: `${m.name} ${m.version}`, wide: true,
    body: [
      h("dl", { class: "meta" },
        [["models.stage", t(`stage.${m.stage}`)], ["models.dataset", m.dataset_version || "—"],
          ["models.weights", (m.weights_sha256 || "").slice(0, 16)], ["models.imgsz", m.imgsz],
          ["models.created", formatDate(m.created_at)], ["models.stage_changed", formatDate(m.stage_changed_at)]]
          .map(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v)])),
      h("h3", {}, t("models.classes")),
      h("p", {}, (m.classes || []).map((k) => className(k)).join("、")),
      perClass ? h("h3", {}, t("models.per_class")) : null,
      perClass ? h("pre", { class: "code" }, JSON.stringify(perClass, null, 2)) : null,
      h("h3", {}, t("models.card")),
      h("pre", { class: "code", "data-testid": "model-card" }, JSON.stringify(card, null, 2)),
    ],
    actions: [{ label: t("common.close"), value: null }],
  });
}

async function promote(m) {
  const select = h("select", { name: "stage" },
    STAGES.filter((s) => s !== m.stage).map((s) => h("option", { value: s, selected: s === "production" }, t(`stage.${s}`))));
  const ok = await dialog({
    title: t("models.promote_title", { name: m.name, version: m.version }),
    body: [h("p", { class: "muted" }, t("models.promote_hint")), h("label", { class: "field" }, h("span", {}, t("models.stage")), select)],
    actions: [{ label: t("common.cancel"), value: null }, { label: t("models.promote"), value: "go", primary: true }],
  });
  if (!ok) return;
  try {
    await api(`/v1/models/${encodeURIComponent(m.name)}/${encodeURIComponent(m.version)}/promote`,
      { method: "POST", body: { stage: select.value } });
    notify(t("models.promoted", { version: m.version, stage: t(`stage.${select.value}`) }), "success");
    go("#/models");
  } catch (e) {
    showError(e, t("models.promote"));
  }
}

async function rollback(name) {
  const ok = await dialog({ title: t("models.rollback"), body: h("p", {}, t("models.rollback_hint", { name })),
    actions: [{ label: t("common.cancel"), value: null }, { label: t("models.rollback"), value: "go", danger: true }] });
  if (!ok) return;
  try {
    const answer = await api(`/v1/models/${encodeURIComponent(name)}/rollback`, { method: "POST" });
    notify(t("models.rolled_back", { version: (answer && answer.version) || "" }), "success");
    go("#/models");
  } catch (e) {
    showError(e, t("models.rollback"));
  }
}
