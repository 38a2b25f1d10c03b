// One sample: the image with its current boxes, its metadata, near-duplicates, and its full trail
// (annotation revisions and the audit log, 存档留痕).
import { api } from "../api.js";
import { has, t } from "../i18n.js";
import { can, className, sectorName } from "../store.js";
import { append, formatBytes, formatDate, h, showError } from "../ui.js";
import { boxedImage, lazyImage, legend, releaseLazy, sampleStatus, statusChip } from "./common.js";

export async function render(view, { args }) {
  const id = Number(args[0]);
  let sample;
  try {
    sample = await api(`/v1/samples/${id}`);
  } catch (e) {
    // Another organisation's private sample is a 404 like a missing one: say so and stop.
    view.append(h("div", { class: "page-error", role: "alert", "data-testid": "page-error" },
      h("h1", {}, t("sample.unavailable")), h("p", {}, e.message),
      h("a", { href: "#/library" }, t("sample.back"))));
    return null;
  }
  const [current, revisions, origin] = await Promise.all([
    api(`/v1/samples/${id}/annotations`).catch((e) => { showError(e); return null; }),
    api(`/v1/samples/${id}/annotations/history`).then((r) => r.revisions || []).catch(() => []),
    // pulled from another instance (federation): where from; 404 for the library's own samples
    api(`/v1/samples/${id}/origin`).catch(() => null),
  ]);
  const boxes = current ? current.boxes : [];
  const image = boxedImage(id, sample.width, sample.height, boxes);
  const status = sampleStatus(current || sample);
  const rejected = [...revisions].reverse().find((r) => r.status === "rejected");

  const actions = h("div", { class: "actions" },
    can("annotations:write") ? h("a", { class: "btn primary", href: `#/annotate/${id}`, "data-testid": "open-annotator" }, t("sample.annotate")) : null,
    can("annotations:review") && status === "submitted"
      ? h("a", { class: "btn", href: `#/review/${id}`, "data-testid": "open-review" }, t("sample.review")) : null);

  const meta = [
    ["sample.status", statusChip(status)],
    ["sample.sector", sectorName(sample.sector)],
    ["sample.org", sample.org_code],
    ["sample.origin", origin ? `${origin.instance} · ${origin.org_code} · #${origin.origin_sample_id}` : null],
    ["sample.scope", t(`scope.${sample.scope}`)],
    ["sample.source", has(`source.${sample.source}`) ? t(`source.${sample.source}`) : sample.source],
    ["sample.site", sample.site_id],
    ["sample.enterprise", sample.enterprise_id],
    ["sample.camera", sample.camera_id],
    ["sample.record", sample.inspection_record],
    ["sample.captured", formatDate(sample.captured_at)],
    ["sample.created", formatDate(sample.created_at)],
    ["sample.uploader", sample.uploader],
    ["sample.size", `${sample.width} × ${sample.height} · ${(sample.format || "").toUpperCase()} · ${formatBytes(sample.size_bytes)}`],
    ["sample.name", sample.original_name],
    ["sample.gps", sample.gps ? `${sample.gps.lat.toFixed(5)}, ${sample.gps.lon.toFixed(5)}` : null],
    ["sample.tags", (sample.tags || []).join("、")],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");

  const dups = h("div", { class: "strip", "data-testid": "near-duplicates" }, h("p", { class: "muted" }, "…"));
  const trail = h("ol", { class: "timeline", "data-testid": "history" }, h("li", { class: "muted" }, "…"));

  append(view,
    h("div", { class: "toolbar" },
      h("a", { href: "#/library", class: "back" }, "← ", t("nav.library")),
      h("h1", {}, t("sample.title", { id })), statusChip(status), h("div", { class: "spacer" }), actions),
    rejected && status === "rejected"
      ? h("div", { class: "callout warn", "data-testid": "reject-reason" }, h("strong", {}, t("review.sent_back")), " ", rejected.reason) : null,
    h("div", { class: "sample-layout" },
      h("section", { class: "sample-image" }, image.el, legend(boxes)),
      h("aside", { class: "panel" },
        h("h2", {}, t("sample.metadata")),
        h("dl", { class: "meta" }, meta.map(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v)])))),
    h("section", { class: "panel" }, h("h2", {}, t("sample.near_duplicates")), dups),
    h("section", { class: "panel" }, h("h2", {}, t("sample.history")), trail));

  loadNearDuplicates(id, dups);
  loadTrail(id, revisions, trail);
  return () => { image.dispose(); releaseLazy(dups); };
}

async function loadNearDuplicates(id, box) {
  try {
    const answer = await api(`/v1/samples/${id}/near-duplicates`);
    const items = Array.isArray(answer) ? answer : answer.items || [];
    box.replaceChildren();
    if (!items.length) { box.append(h("p", { class: "muted" }, t("sample.no_duplicates"))); return; }
    for (const d of items) {
      const other = d.sample || d;
      const otherId = other.id ?? d.sample_id ?? d.other_id;
      box.append(h("a", { class: "mini-card", href: `#/sample/${otherId}` },
        lazyImage(`/v1/samples/${otherId}/thumbnail`, `#${otherId}`),
        h("span", {}, `#${otherId}`, d.distance !== undefined ? h("small", { class: "muted" }, ` · ${t("sample.distance", { d: d.distance })}`) : null)));
    }
  } catch (e) {
    box.replaceChildren(h("p", { class: "form-error" }, e.message));
  }
}

async function loadTrail(id, revisions, list) {
  let events = [];
  try {
    const answer = await api(`/v1/samples/${id}/history`);
    events = Array.isArray(answer) ? answer : answer.items || answer.events || [];
  } catch (e) {
    // Audit reading needs its own right (audit:read); revisions alone still tell the story.
    if (e.status !== 403) showError(e);
  }
  const byRevision = new Map(revisions.map((r) => [r.id, r]));
  list.replaceChildren();
  const entries = events.length ? events.map((e) => ({ at: e.at, node: auditEntry(e, byRevision) }))
    : revisions.map((r) => ({ at: r.created_at, node: revisionEntry(r) }));
  entries.sort((a, b) => String(b.at).localeCompare(String(a.at)));
  if (!entries.length) list.append(h("li", { class: "muted" }, t("sample.no_history")));
  for (const e of entries) list.append(e.node);
}

function revisionEntry(r) {
  return h("li", { class: ["event", `event-${r.status}`] },
    h("div", { class: "event-head" }, h("strong", {}, t("sample.revision", { n: r.number })), statusChip(r.status),
      h("span", { class: "muted" }, `${r.author} · ${formatDate(r.created_at)}`)),
    h("div", { class: "muted" }, t("sample.boxes_n", { n: r.boxes.length }), r.reason ? ` · ${r.reason}` : ""));
}

function auditEntry(e, byRevision) {
  const after = e.after || {};
  const rev = e.entity === "annotation_revision" ? byRevision.get(Number(e.entity_id)) : null;
  const details = [];
  if (after.revision_number) details.push(t("sample.revision", { n: after.revision_number }));
  if (Array.isArray(after.boxes)) details.push(t("sample.boxes_n", { n: after.boxes.length }));
  if (after.reason) details.push(`${t("review.reason")}：${after.reason}`);
  if (after.class_keys && after.class_keys.length) details.push(after.class_keys.map(className).join("、"));
  const key = `audit.${e.action}`;
  return h("li", { class: ["event", `event-${(e.action || "").replace(".", "-")}`] },
    h("div", { class: "event-head" }, h("strong", {}, has(key) ? t(key) : e.action),
      rev ? statusChip(rev.status) : null,
      h("span", { class: "muted" }, `${e.actor} · ${formatDate(e.at)}`)),
    details.length ? h("div", { class: "muted" }, details.join(" · ")) : null);
}
