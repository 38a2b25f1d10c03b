// Review: the queue (disagreements between curators first, as the API orders it) and, for one
// sample, the submitted revision side by side with the previous one; approve, or send back
// (退回修改) with a reason the curator will see.
import { api } from "../api.js";
import { go } from "../app.js";
import { t } from "../i18n.js";
import { can, className, session } from "../store.js";
import { append, button, dialog, formatDate, h, notify, showError } from "../ui.js";
import { boxedImage, countByClass, legend, sampleStatus, statusChip } from "./common.js";

export async function render(view, { args }) {
  const wanted = args[0] ? Number(args[0]) : null;
  const queueEl = h("ol", { class: "review-queue", "data-testid": "review-queue" });
  const pane = h("section", { class: "review-pane", "data-testid": "review-pane" });
  const disposers = [];
  view.append(h("div", { class: "toolbar" }, h("h1", {}, t("review.title"))),
    h("div", { class: "review-layout" }, h("aside", { class: "panel" }, h("h2", {}, t("review.queue")), queueEl), pane));

  let items = [];
  try {
    items = (await api("/v1/review/queue", { query: { limit: 200 } })).items || [];
  } catch (e) {
    // A role without the review right gets the API's own explanation here.
    queueEl.append(h("li", { class: "form-error", role: "alert", "data-testid": "review-error" }, e.message));
  }
  for (const item of items) {
    const score = item.agreement;
    queueEl.append(h("li", {}, h("a", {
      href: `#/review/${item.sample_id}`, class: ["queue-item", item.sample_id === wanted && "active"],
      "data-sample-id": item.sample_id },
    h("strong", {}, `#${item.sample_id}`),
    h("span", { class: "muted" }, `${t("sample.revision", { n: item.revision_number })} · ${item.author || "—"}`),
    score !== null && score !== undefined && score < 1
      ? h("span", { class: "chip status-rejected", title: t("review.agreement_hint") }, t("review.disagreement", { p: Math.round(score * 100) }))
      : null)));
  }
  if (!items.length && can("annotations:review")) queueEl.append(h("li", { class: "muted" }, t("review.queue_empty")));

  const target = wanted ?? (items[0] && items[0].sample_id);
  if (target) await renderSample(pane, target, items, disposers);
  else pane.append(h("p", { class: "empty" }, t("review.pick")));
  return () => disposers.forEach((d) => d());
}

async function renderSample(pane, id, items, disposers) {
  let current;
  let revisions;
  try {
    [current, revisions] = await Promise.all([
      api(`/v1/samples/${id}/annotations`),
      api(`/v1/samples/${id}/annotations/history`).then((r) => r.revisions || []),
    ]);
  } catch (e) {
    pane.append(h("div", { class: "page-error", role: "alert", "data-testid": "page-error" }, h("p", {}, e.message)));
    return;
  }
  const rev = current.revision;
  const previous = rev ? (revisions.find((r) => r.id === rev.parent_id) || revisions.filter((r) => r.number < rev.number).pop()) : null;
  const status = sampleStatus(current);
  const left = boxedImage(id, current.width, current.height, previous ? previous.boxes : []);
  const right = boxedImage(id, current.width, current.height, current.boxes);
  disposers.push(() => left.dispose(), () => right.dispose());

  const side = (title, revision, image, testid) => h("figure", { class: "review-side", "data-testid": testid },
    h("figcaption", {}, h("strong", {}, title),
      revision ? h("span", { class: "muted" }, ` ${t("sample.revision", { n: revision.number })} · ${revision.author} · ${formatDate(revision.created_at)}`) : null,
      revision ? statusChip(revision.status) : null),
    image.el, legend(revision ? revision.boxes : []),
    revision && revision.reason ? h("p", { class: "callout warn" }, h("strong", {}, t("review.reason")), "：", revision.reason) : null);

  const mayReview = can("annotations:review");
  const actions = h("div", { class: "actions" });
  if (mayReview && status === "submitted") {
    actions.append(
      button("check", t("review.approve"), { class: "success", "data-testid": "approve", onclick: () => decide("approve") }),
      button("cross", t("review.reject"), { class: "danger", "data-testid": "reject", onclick: () => decide("reject") }));
  } else if (!mayReview) {
    actions.append(h("p", { class: "callout", role: "note", "data-testid": "no-review-right" },
      t("review.no_right", { role: t(`role.${session.me.role}`) })));
  } else {
    actions.append(h("p", { class: "muted" }, t("review.not_submitted", { status: t(`status.${status}`) })));
  }

  async function decide(action) {
    let reason = null;
    if (action === "reject") {
      const area = h("textarea", { rows: 4, required: true, maxlength: 2000, "data-testid": "reject-reason-input",
        placeholder: t("review.reason_placeholder") });
      const ok = await dialog({ title: t("review.reject_title"), body: [h("p", { class: "muted" }, t("review.reject_hint")), area],
        actions: [{ label: t("common.cancel"), value: null }, { label: t("review.reject"), value: "reject", danger: true }],
        onSubmit: () => Boolean(area.value.trim()) });
      if (!ok) return;
      reason = area.value.trim();
    }
    try {
      await api(`/v1/samples/${id}/annotations/${action}`, { method: "POST", body: reason !== null ? { reason } : undefined });
      notify(t(action === "approve" ? "review.approved" : "review.rejected", { id }), "success");
      const next = items.find((i) => i.sample_id !== id);
      go(next ? `#/review/${next.sample_id}` : "#/review");
    } catch (e) {
      showError(e, t(action === "approve" ? "review.approve" : "review.reject"));
    }
  }

  append(pane,
    h("div", { class: "toolbar" }, h("h2", {}, h("a", { href: `#/sample/${id}` }, t("sample.title", { id }))),
      statusChip(status), h("div", { class: "spacer" }), actions),
    h("div", { class: "side-by-side" },
      side(t("review.previous"), previous, left, "review-previous"),
      side(t("review.current"), rev, right, "review-current")),
    diffTable(previous ? previous.boxes : [], current.boxes));
}

function diffTable(before, after) {
  const a = countByClass(before);
  const b = countByClass(after);
  const keys = [...new Set([...a.keys(), ...b.keys()])];
  if (!keys.length) return h("p", { class: "muted" }, t("review.no_boxes_either"));
  return h("table", { class: "table diff" },
    h("thead", {}, h("tr", {}, h("th", {}, t("review.class")), h("th", {}, t("review.previous")), h("th", {}, t("review.current")))),
    h("tbody", {}, keys.map((k) => {
      const x = a.get(k) || 0;
      const y = b.get(k) || 0;
      return h("tr", { class: x === y ? "" : "changed" }, h("td", {}, className(k)), h("td", {}, x), h("td", {}, y));
    })));
}
