// The dashboard (统计看板): inspection findings for a period, by what became of them (confirmed,
// corrected, rejected, pending), by a chosen dimension and by month, and each model version's field
// precision; CSV exports of the same figures. Charts: Chart.js, shipped in ../vendor/ (no CDN: the
// console runs on intranets and its Content-Security-Policy allows only its own origin).
// The page's strings live here (both languages) so that it stays one file; the nav label is in i18n.js.
import { api } from "../api.js";
import { lang } from "../i18n.js";
import { session } from "../store.js";
import { button, h, showError } from "../ui.js";

const TEXT = {
  zh: {
    title: "统计看板",
    from: "起始日期", to: "截止日期", group: "分组", org: "单位代码", all_orgs: "全部单位",
    refresh: "刷新", csv: "导出 CSV", csv_models: "导出模型精度 CSV",
    findings: "疑似隐患", pending: "待确认", confirmed: "已确认", corrected: "已更正", rejected: "已否定",
    outcomes: "执法人员的处理结果", by_group: "按{group}统计", by_month: "按月统计",
    models: "模型现场精度（执法人员确认或更正的比例）",
    model_version: "模型版本", class: "类别", decided: "已处理", precision: "现场精度",
    empty: "所选期间没有检查发现。", chart_failed: "图表库未能加载：{message}",
    sector: "行业领域", item: "检查事项", class_dim: "类别", rule: "规则", enterprise: "企业", month: "月份",
    org_dim: "单位", none: "（无）",
  },
  en: {
    title: "Dashboard",
    from: "From", to: "To", group: "Group by", org: "Organisation", all_orgs: "All organisations",
    refresh: "Refresh", csv: "Export CSV", csv_models: "Export model precision CSV",
    findings: "Suggested findings", pending: "Pending", confirmed: "Confirmed", corrected: "Corrected",
    rejected: "Rejected",
    outcomes: "What inspectors decided", by_group: "By {group}", by_month: "By month",
    models: "Field precision of the models (share confirmed or corrected by inspectors)",
    model_version: "Model version", class: "Class", decided: "Decided", precision: "Precision",
    empty: "No findings in this period.", chart_failed: "The chart library did not load: {message}",
    sector: "sector", item: "inspection item", class_dim: "class", rule: "rule", enterprise: "enterprise",
    month: "month", org_dim: "organisation", none: "(none)",
  },
};

function tx(key, vars) {
  let text = (TEXT[lang()] || TEXT.zh)[key] ?? key;
  if (vars) text = text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
  return text;
}

const OUTCOMES = ["confirmed", "corrected", "rejected", "pending"];
const COLORS = { confirmed: "#1a7f37", corrected: "#bf8700", rejected: "#cf222e", pending: "#8c959f" };
const DIMENSIONS = ["class", "sector", "item", "rule", "enterprise", "org"];

let chartLib = null;

/** Chart.js from the console's own files: the UMD build sets globalThis.Chart when imported. */
async function loadChart() {
  if (!chartLib) {
    chartLib = import("../vendor/chart.umd.min.js").then(() => globalThis.Chart);
    chartLib.catch(() => { chartLib = null; });
  }
  return chartLib;
}

function dimLabel(dim) {
  return tx(dim === "class" ? "class_dim" : dim === "org" ? "org_dim" : dim);
}

function monthsAgo(n) {
  const d = new Date();
  d.setMonth(d.getMonth() - n, 1);
  return d.toISOString().slice(0, 10);
}

export async function render(view, { query }) {
  const charts = [];
  const system = Boolean(session.me && session.me.system);  // the API says (HAZARDLENS_SYSTEM_ORG)
  const state = {
    from: query.get("from") || monthsAgo(11),
    to: query.get("to") || "",
    group: DIMENSIONS.includes(query.get("group")) ? query.get("group") : "class",
    org: query.get("org") || "",
  };
  const fromInput = h("input", { type: "date", value: state.from, "data-testid": "dash-from" });
  const toInput = h("input", { type: "date", value: state.to, "data-testid": "dash-to" });
  const groupSelect = h("select", { "data-testid": "dash-group" },
    DIMENSIONS.filter((d) => d !== "org" || system).map((d) =>
      h("option", { value: d, selected: d === state.group }, dimLabel(d))));
  const orgInput = system ? h("input", { type: "text", value: state.org, placeholder: tx("all_orgs"),
    maxlength: 12, "data-testid": "dash-org" }) : null;
  // Layout in CSSOM styles (allowed by the CSP's style-src 'self'; the shared style.css stays as it is).
  const tiles = h("div", { class: "dash-tiles", "data-testid": "dash-tiles",
    style: { display: "flex", flexWrap: "wrap", gap: "12px", margin: "12px 0" } });
  const body = h("div", { class: "dash-body" });
  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, tx("title"))),
    h("form", { class: "filters dash-filters", onsubmit: (e) => { e.preventDefault(); load(); } },
      h("label", {}, tx("from"), fromInput), h("label", {}, tx("to"), toInput),
      h("label", {}, tx("group"), groupSelect), orgInput ? h("label", {}, tx("org"), orgInput) : null,
      button("filter", tx("refresh"), { type: "submit", "data-testid": "dash-refresh" }),
      button("save", tx("csv"), { type: "button", class: "ghost", "data-testid": "dash-csv",
        onclick: () => download("/v1/stats/findings", "findings.csv", true) }),
      button("save", tx("csv_models"), { type: "button", class: "ghost", "data-testid": "dash-csv-models",
        onclick: () => download("/v1/stats/models", "model-precision.csv", false) })),
    tiles, body);

  function params(withGroup) {
    const q = { from: fromInput.value, to: toInput.value, org: orgInput ? orgInput.value.trim() : "" };
    if (withGroup) q.group_by = groupSelect.value;
    return q;
  }

  async function download(path, name, withGroup) {
    try {
      const response = await api(path, { query: { ...params(withGroup), format: "csv" }, raw: true });
      const url = URL.createObjectURL(await response.blob());
      const a = h("a", { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) { showError(e); }
  }

  function destroyCharts() {
    while (charts.length) charts.pop().destroy();
  }

  async function load() {
    destroyCharts();
    body.replaceChildren(h("p", { class: "loading" }, "…"));
    let grouped, monthly, models, Chart;
    try {
      [grouped, monthly, models] = await Promise.all([
        api("/v1/stats/findings", { query: params(true) }),
        api("/v1/stats/findings", { query: { ...params(false), group_by: "month" } }),
        api("/v1/stats/models", { query: params(false) }),
      ]);
    } catch (e) {
      body.replaceChildren(h("p", { class: "form-error", role: "alert" }, e.message));
      return;
    }
    renderTiles(grouped.total);
    body.replaceChildren();
    if (!grouped.total.findings) {
      body.append(h("p", { class: "empty", "data-testid": "dash-empty" }, tx("empty")));
      return;
    }
    try { Chart = await loadChart(); } catch (e) {
      body.append(h("p", { class: "form-error", role: "alert" }, tx("chart_failed", { message: e.message })));
    }
    const panels = [
      panel(tx("outcomes"), "dash-chart-outcomes"),
      panel(tx("by_group", { group: dimLabel(groupSelect.value) }), "dash-chart-groups"),
      panel(tx("by_month"), "dash-chart-months"),
    ];
    body.append(h("div", { class: "dash-charts", style: { display: "grid", gap: "12px",
      gridTemplateColumns: "repeat(auto-fit, minmax(300px, 1fr))", marginBottom: "12px" } },
    panels.map((p) => p.el)), modelTable(models.models));
    if (!Chart) return;
    const total = grouped.total;
    charts.push(new Chart(panels[0].canvas, {
      type: "doughnut",
      data: { labels: OUTCOMES.map((o) => tx(o)),
        datasets: [{ data: OUTCOMES.map((o) => total[o]), backgroundColor: OUTCOMES.map((o) => COLORS[o]) }] },
      options: { animation: false, maintainAspectRatio: false },
    }));
    charts.push(stacked(Chart, panels[1].canvas, grouped.groups.slice(0, 20), groupSelect.value, "y"));
    const months = [...monthly.groups].sort((a, b) => a.key.month.localeCompare(b.key.month));
    charts.push(stacked(Chart, panels[2].canvas, months, "month", "x"));
  }

  function renderTiles(total) {
    tiles.replaceChildren(...["findings", ...OUTCOMES].map((o) =>
      h("div", { class: ["panel", "dash-tile", `dash-${o}`], "data-testid": `dash-${o}`,
        style: { minWidth: "110px", borderTop: `4px solid ${COLORS[o] || "#0969da"}` } },
      h("strong", { class: "dash-count", style: { display: "block", fontSize: "1.6em" } }, String(total[o] ?? 0)),
      h("span", {}, tx(o)))));
  }

  load();
  return () => destroyCharts();
}

function label(group, dim) {
  const value = group.key[dim];
  const name = group.label && group.label[dim];
  if (!value) return tx("none");
  return name && lang() === "zh" ? `${name}（${value}）` : value;
}

function stacked(Chart, canvas, groups, dim, axis) {
  return new Chart(canvas, {
    type: "bar",
    data: {
      labels: groups.map((g) => label(g, dim)),
      datasets: OUTCOMES.map((o) => ({ label: tx(o), data: groups.map((g) => g[o]), backgroundColor: COLORS[o] })),
    },
    options: {
      indexAxis: axis, animation: false, maintainAspectRatio: false,
      scales: { x: { stacked: true }, y: { stacked: true, ticks: { precision: 0 } } },
    },
  });
}

function panel(title, testid) {
  const canvas = h("canvas", { role: "img", "aria-label": title });
  const el = h("section", { class: "panel dash-chart", "data-testid": testid },
    h("h2", {}, title), h("div", { class: "dash-canvas", style: { position: "relative", height: "280px" } }, canvas));
  return { el, canvas };
}

function pct(v) {
  return v === null || v === undefined ? "—" : `${Math.round(v * 1000) / 10}%`;
}

function modelTable(rows) {
  return h("section", { class: "panel" }, h("h2", {}, tx("models")),
    h("table", { class: "table dash-models", "data-testid": "dash-models" },
      h("thead", {}, h("tr", {}, [tx("model_version"), tx("class"), tx("findings"), tx("decided"), tx("confirmed"),
        tx("corrected"), tx("rejected"), tx("precision")].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((m) => h("tr", { class: m.class_key === "all" ? "dash-total" : "" },
        h("td", {}, m.model_version), h("td", {}, m.class_key === "all" ? m.name_zh : `${m.name_zh}`),
        h("td", {}, String(m.findings)), h("td", {}, String(m.decided)),
        h("td", {}, pct(m.confirmed_share)), h("td", {}, pct(m.corrected_share)),
        h("td", {}, pct(m.rejected_share)), h("td", { "data-testid": "dash-precision" }, pct(m.precision)))))));
}
