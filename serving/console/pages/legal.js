// Provincial inspection items and classes under legal review (法制审核): an organisation's admin
// proposes one with its mandatory legal clause, the organisation's legal reviewers approve or reject
// it with a reason; the ministry (system organisation) sees every organisation's. Below them, the
// approved additions pulled from peer instances (federation), which the system organisation's
// admins adopt for one organisation here (national adoption). The API enforces every rule; the
// buttons shown here only follow the caller's permissions.
import { api } from "../api.js";
import { lang } from "../i18n.js";
import { can, session } from "../store.js";
import { button, dialog, formatDate, h, notify, showError } from "../ui.js";

const L = (zh, en) => (lang() === "zh" ? zh : en);

export async function render(view) {
  view.append(h("div", { class: "toolbar" }, h("h1", {}, L("新增检查事项与类别（法制审核）", "Provincial items and classes (legal review)")),
    h("div", { class: "spacer" }),
    can("taxonomy:propose") ? button("pen", L("提出新增", "Propose"), { "data-testid": "legal-propose",
      onclick: () => propose(view) }) : null));
  await ownAdditions(view);
  await pulledAdditions(view);
  return null;
}

/** The `additions` of `path`, or null after showing the API's error in the view. */
async function additionsOf(view, path) {
  try {
    return (await api(path)).additions || [];
  } catch (e) {
    view.append(h("p", { class: "form-error", role: "alert" }, e.message));
    return null;
  }
}

async function ownAdditions(view) {
  const rows = await additionsOf(view, "/v1/taxonomy/additions");
  if (rows === null) return;
  if (!rows.length) { view.append(h("p", { class: "empty" }, L("尚无新增事项或类别。", "No additions yet."))); return; }
  const reviewer = can("taxonomy:review");
  view.append(h("div", { class: "table-wrap" }, h("table", { class: "table", "data-testid": "legal-table" },
    h("thead", {}, h("tr", {}, [L("类型", "Kind"), L("键/编号", "Key"), L("组织", "Org"), L("状态", "Status"),
      L("法律条款", "Legal clause"), L("提出人", "Proposed by"), L("审核", "Review"), ""].map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((a) => h("tr", { "data-addition": a.id },
      h("td", {}, a.kind === "item" ? L("检查事项", "item") : L("类别", "class")),
      h("td", {}, h("strong", {}, a.key)),
      h("td", {}, a.org_code),
      h("td", {}, h("span", { class: ["chip", `stage-${a.status === "approved" ? "production" : a.status === "rejected" ? "archived" : "candidate"}`] }, a.status)),
      h("td", { title: a.legal_text || "" }, a.legal_citation || "—"),
      h("td", {}, `${a.proposed_by || "—"} · ${formatDate(a.created_at)}`),
      h("td", {}, a.reviewed_by ? `${a.reviewed_by}: ${a.review_reason || "—"}` : "—"),
      h("td", { class: "row-actions" }, reviewer && a.status === "pending" ? [
        button(null, L("批准", "Approve"), { class: "tiny", "data-testid": `approve-${a.id}`, onclick: () => decide(view, a, "approve") }),
        button(null, L("驳回", "Reject"), { class: "tiny danger", "data-testid": `reject-${a.id}`, onclick: () => decide(view, a, "reject") }),
      ] : null)))))));
}

async function pulledAdditions(view) {
  const rows = await additionsOf(view, "/v1/federation/additions");
  if (rows === null) return;
  view.append(h("h2", {}, L("其他实例的新增（供全国采纳）", "From other instances (for national adoption)")));
  if (!rows.length) {
    view.append(h("p", { class: "empty", "data-testid": "pulled-empty" }, L("尚未从其他实例拉取新增。", "Nothing pulled from other instances yet.")));
    return;
  }
  const system = Boolean(session.me && session.me.system);  // adoption is the system organisation's admins'
  view.append(h("div", { class: "table-wrap" }, h("table", { class: "table", "data-testid": "pulled-table" },
    h("thead", {}, h("tr", {}, [L("来源实例", "Instance"), L("组织", "Org"), L("类型", "Kind"), L("键/编号", "Key"),
      L("法律条款", "Legal clause"), L("审核通过", "Approved by"), L("采纳", "Adopted"), ""].map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((a) => h("tr", { "data-pulled": a.id },
      h("td", {}, a.instance),
      h("td", {}, a.org_code),
      h("td", {}, a.kind === "item" ? L("检查事项", "item") : L("类别", "class")),
      h("td", {}, h("strong", {}, a.key)),
      h("td", { title: a.legal_text || "" }, a.legal_citation || "—"),
      h("td", {}, `${a.reviewed_by || "—"} · ${formatDate(a.reviewed_at)}`),
      h("td", { "data-testid": `adopted-${a.id}` }, a.adopted_addition_id ? formatDate(a.adopted_at) : "—"),
      h("td", { class: "row-actions" }, system && !a.adopted_addition_id ? button(null, L("采纳", "Adopt"),
        { class: "tiny", "data-testid": `adopt-${a.id}`, onclick: () => adopt(view, a) }) : null)))))));
}

async function adopt(view, a) {
  const org = h("input", { maxlength: 12, "data-testid": "adopt-org", placeholder: L("留空：系统组织", "empty: the system organisation") });
  const answer = await dialog({
    title: `${L("采纳", "Adopt")} ${a.key}`,
    body: [h("p", {}, `${a.legal_citation}：${a.legal_text}`), h("label", {}, L("供哪个组织使用", "For organisation"), org)],
    actions: [{ label: L("取消", "Cancel"), value: null }, { label: L("采纳", "Adopt"), value: "ok", primary: true }],
  });
  if (answer !== "ok") return;
  try {
    const code = org.value.trim();
    await api(`/v1/federation/additions/${a.id}/adopt`, { method: "POST", body: code ? { org_code: code } : {} });
    notify(L("已采纳", "Adopted"));
  } catch (e) { showError(e, L("采纳", "Adopt")); }
  await reload(view);
}

async function reload(view) {
  view.replaceChildren();
  await render(view);
}

async function decide(view, a, decision) {
  const reason = h("textarea", { rows: 3, maxlength: 2000, "data-testid": "legal-reason" });
  const answer = await dialog({
    title: `${decision === "approve" ? L("批准", "Approve") : L("驳回", "Reject")} ${a.key}`,
    body: [h("p", {}, `${a.legal_citation}：${a.legal_text}`), h("label", {}, L("理由", "Reason"), reason)],
    actions: [{ label: L("取消", "Cancel"), value: null }, { label: L("确定", "OK"), value: "ok", primary: true }],
  });
  if (answer !== "ok") return;
  try {
    await api(`/v1/taxonomy/additions/${a.id}/review`, { method: "POST", body: { decision, reason: reason.value } });
    notify(L("已记录审核结论", "Decision recorded"));
  } catch (e) { showError(e, L("审核", "Review")); }
  await reload(view);
}

async function propose(view) {
  const kind = h("select", {}, h("option", { value: "class" }, L("类别", "class")), h("option", { value: "item" }, L("检查事项", "item")));
  const definition = h("textarea", { rows: 8, "data-testid": "legal-definition",
    placeholder: '{"key": "oil_leak", "name_zh": "漏油", "name_en": "oil leak", "sector": "general", "inspection_items": [], "severity": "medium", "finding_zh": "设备漏油", "is_hazard": true}' });
  const text = h("textarea", { rows: 3, maxlength: 5000, "data-testid": "legal-text" });
  const citation = h("input", { maxlength: 500, "data-testid": "legal-citation" });
  await dialog({
    title: L("提出新增（需法律条款）", "Propose (legal clause required)"), wide: true,
    body: [h("label", {}, L("类型", "Kind"), kind), h("label", {}, L("定义（JSON）", "Definition (JSON)"), definition),
      h("label", {}, L("强制性条款原文", "Mandatory clause text"), text), h("label", {}, L("出处", "Citation"), citation)],
    actions: [{ label: L("取消", "Cancel"), value: null }, { label: L("提交", "Submit"), value: "ok", primary: true }],
    onSubmit: async (value) => {
      if (value !== "ok") return true;
      let parsed;
      try { parsed = JSON.parse(definition.value || "{}"); } catch (e) { showError(e, L("定义", "Definition")); return false; }
      const clause = text.value.trim() || citation.value.trim() ? { text: text.value, citation: citation.value } : null;
      try {
        await api("/v1/taxonomy/additions", { method: "POST", body: { kind: kind.value, definition: parsed, legal_clause: clause } });
      } catch (e) { showError(e, L("提出新增", "Propose")); return false; }
      notify(L("已提交，等待法制审核", "Proposed; awaiting legal review"));
      return true;
    },
  });
  await reload(view);
}
