// One inspection record (执法检查记录), made for a phone on site: take a photo with the camera, see the
// model's suggested findings (疑似隐患) drawn on it, and decide each one: confirm, correct (move or
// redraw the box, change the class) or reject with a reason. Decisions go through
// POST /v1/findings/{id}/review, the same call the enforcement system makes, so what reaches the
// sample library (a submitted feedback revision, a hard_negative tag) is the same either way.
// Photos go through the upload queue (uploadqueue.js): downscaled on the device, kept in IndexedDB
// until the server has them, resent with the same Idempotency-Key when the network returns.
import { api, loadImage, releaseImage } from "../api.js";
import { BoxEditor } from "../editor.js";
import { lang, t } from "../i18n.js";
import { can, classColor, className, classesFor, sectorName, session } from "../store.js";
import { append, button, clear, dialog, formatBytes, formatDate, h, icon, notify, showError } from "../ui.js";
import { discard, enqueue, flush, ownerOf, preparePhoto, queued, retry, subscribe } from "../uploadqueue.js";

const NS = "http://www.w3.org/2000/svg";

export async function render(view, { args, query }) {
  const recordNo = args[0] || "";
  const disposers = [];
  let record;
  try {
    record = await api(`/v1/inspections/${encodeURIComponent(recordNo)}`);
  } catch (e) {
    // A new record has no photo yet (404 record_not_found); its first photo opens it.
    if (!(e.status === 404 && e.code === "record_not_found" && query.get("new"))) {
      view.append(h("div", { class: "page-error", role: "alert", "data-testid": "page-error" },
        h("h1", {}, t("record.unavailable")), h("p", {}, e.message),
        h("a", { href: "#/inspections" }, t("record.back"))));
      return null;
    }
    record = { record_no: recordNo, photos: [], summary: { photos: 0, suggested: 0, confirmed: 0, rejected: 0 } };
  }
  const capture = await api("/v1/organisation/capture").catch(() => ({ keep_original_photos: false, upload_max_side: 1280 }));
  const last = record.photos[record.photos.length - 1] || {};
  const defaults = {
    enterprise_id: last.enterprise_id || query.get("enterprise") || "",
    sector: last.sector || query.get("sector") || "",
    inspector_id: last.inspector_id || query.get("inspector") || "",
  };

  const summary = h("div", { class: "record-summary", "data-testid": "record-summary" });
  const photosEl = h("div", { class: "record-photos", "data-testid": "record-photos" });
  const queueEl = h("ul", { class: "upload-queue", "data-testid": "upload-queue" });
  const mayWrite = can("inspections:write");
  const mayReview = can("findings:review");

  // --- header --------------------------------------------------------------------------------------
  const printBtn = button("print", t("record.print"), { class: "ghost", "data-testid": "print-record",
    onclick: () => printRecord(recordNo) });
  append(view,
    h("div", { class: "toolbar record-toolbar" },
      h("a", { href: "#/inspections", class: "back" }, "← ", t("nav.inspections")),
      h("h1", { "data-testid": "record-no" }, recordNo),
      h("div", { class: "spacer" }), record.photos.length ? printBtn : null),
    summary);

  function renderSummary() {
    const s = record.summary;
    const ents = [...new Set(record.photos.map((p) => p.enterprise_id).filter(Boolean))];
    const insp = [...new Set(record.photos.map((p) => p.inspector_id).filter(Boolean))];
    const sectors = [...new Set(record.photos.map((p) => p.sector).filter(Boolean))];
    clear(summary).append(
      h("dl", { class: "meta compact" },
        h("dt", {}, t("record.enterprise")), h("dd", {}, ents.join("、") || defaults.enterprise_id || "—"),
        h("dt", {}, t("record.inspector")), h("dd", {}, insp.join("、") || defaults.inspector_id || "—"),
        h("dt", {}, t("filter.sector")), h("dd", {}, (sectors.length ? sectors : [defaults.sector]).map(sectorName).join("、"))),
      h("div", { class: "counts" },
        h("span", { class: "chip finding-suggested", "data-testid": "count-suggested" }, t("record.n_suggested", { n: s.suggested })),
        h("span", { class: "chip finding-confirmed", "data-testid": "count-confirmed" }, t("record.n_confirmed", { n: s.confirmed })),
        h("span", { class: "chip finding-rejected", "data-testid": "count-rejected" }, t("record.n_rejected", { n: s.rejected }))));
  }

  // --- capture -------------------------------------------------------------------------------------
  const field = (label, el) => h("label", { class: "field" }, h("span", {}, label), el);
  const enterprise = h("input", { value: defaults.enterprise_id, maxlength: 100, required: true, "data-testid": "photo-enterprise" });
  const inspector = h("input", { value: defaults.inspector_id, maxlength: 100, "data-testid": "photo-inspector" });
  const sector = h("select", { required: true, "data-testid": "photo-sector" },
    h("option", { value: "" }, t("upload.pick_sector")),
    session.taxonomy.sectors.map((s) => h("option", { value: s.key, selected: s.key === defaults.sector },
      lang() === "en" ? s.name_en : s.name_zh)));
  const cameraInput = h("input", { type: "file", accept: "image/*", capture: "environment", class: "visually-hidden",
    "data-testid": "capture-input", onchange: (e) => { addPhotos(e.target.files); e.target.value = ""; } });
  const details = h("details", { class: "capture-details", open: !record.photos.length || !defaults.enterprise_id || !defaults.sector },
    h("summary", {}, t("record.photo_details")),
    h("div", { class: "form-grid" },
      field(t("record.enterprise"), enterprise), field(t("filter.sector"), sector), field(t("record.inspector"), inspector)));
  const sizeNote = h("p", { class: "muted small", "data-testid": "capture-size" },
    capture.upload_max_side ? t("record.downscale_note", { side: capture.upload_max_side }) : t("record.original_note"));
  if (mayWrite) {
    view.append(h("section", { class: "panel capture" },
      h("label", { class: "btn primary capture-button", "data-testid": "capture-button" },
        icon("camera"), h("span", {}, t("record.take_photo")), cameraInput),
      sizeNote, details, queueEl));
  }
  view.append(photosEl);

  async function addPhotos(files) {
    const fields = { enterprise_id: enterprise.value.trim(), sector: sector.value, inspector_id: inspector.value.trim() };
    if (!fields.enterprise_id || !fields.sector) {
      details.open = true;
      notify(t("record.need_details"), "error");
      (fields.enterprise_id ? sector : enterprise).focus();
      return;
    }
    for (const file of files) {
      try {
        const photo = await preparePhoto(file, capture.keep_original_photos ? null : capture.upload_max_side);
        // A downscaled JPEG carries no EXIF: say when the photo was taken (the file's time).
        const taken = photo.resized && file.lastModified ? new Date(file.lastModified).toISOString() : null;
        await enqueue({ owner: ownerOf(session.me), recordNo, fields: { ...fields, ...(taken ? { captured_at: taken } : {}) }, photo });
      } catch (e) {
        showError(e, t("record.take_photo"));
      }
    }
  }

  // --- the queue -----------------------------------------------------------------------------------
  const progress = new Map();
  async function renderQueue() {
    const entries = (await queued(ownerOf(session.me))).filter((e) => e.recordNo === recordNo);
    clear(queueEl);
    for (const e of entries) {
      const state = ["waiting", "queued"].includes(e.state) && !navigator.onLine ? "offline" : e.state;
      const bar = h("progress", { max: 1, value: progress.get(e.key) || 0 });
      queueEl.append(h("li", { class: ["queue-entry", `queue-${state}`], "data-testid": "queued-photo", "data-state": state, "data-key": e.key },
        h("span", { class: "upload-name" }, e.name, h("small", { class: "muted" }, ` · ${formatBytes(e.size)}`)),
        state === "sending" ? bar : null,
        h("span", { class: "queue-state" }, t(`record.queue_${state}`)),
        e.error && state === "failed" ? h("span", { class: "form-error" }, e.error.message) : null,
        state === "failed" ? button("undo", t("record.retry"), { class: "ghost", onclick: () => retry(e.key, {
          enterprise_id: enterprise.value.trim(), sector: sector.value, inspector_id: inspector.value.trim() }) }) : null,
        state === "failed" || state === "offline" || state === "waiting"
          ? button("trash", t("record.discard"), { class: "ghost", "data-testid": "discard-photo", onclick: () => discard(e.key) }) : null));
    }
  }
  const unsubscribe = subscribe(async (event) => {
    if (event.type === "progress") { progress.set(event.entry.key, event.fraction); return; }
    if (event.entry && event.entry.recordNo !== recordNo) return;
    if (event.type === "sent") {
      progress.delete(event.entry.key);
      notify(event.answer && event.answer.replayed ? t("record.sent_replayed") : t("record.sent"), "success");
      await reload();
    }
    await renderQueue();
  });
  const onNetwork = () => renderQueue();
  window.addEventListener("online", onNetwork);
  window.addEventListener("offline", onNetwork);
  disposers.push(unsubscribe, () => window.removeEventListener("online", onNetwork),
    () => window.removeEventListener("offline", onNetwork));

  // --- photos and findings ---------------------------------------------------------------------------
  const shown = new Map(); // photo_id -> {el, dispose}
  async function reload() {
    try {
      record = await api(`/v1/inspections/${encodeURIComponent(recordNo)}`);
    } catch (e) {
      if (e.status !== 404) showError(e);
      return;
    }
    renderSummary();
    renderPhotos();
    if (record.photos.length && !printBtn.isConnected) view.querySelector(".record-toolbar").append(printBtn);
  }

  function renderPhotos() {
    for (const { dispose } of shown.values()) dispose();
    shown.clear();
    clear(photosEl);
    if (!record.photos.length) {
      photosEl.append(h("p", { class: "empty", "data-testid": "no-photos" }, t("record.no_photos")));
      return;
    }
    // Newest first: on site the photo just taken is the one to decide on.
    for (const photo of [...record.photos].reverse()) {
      const card = photoCard(photo, { mayReview, onDecided: reload });
      shown.set(photo.photo_id, card);
      photosEl.append(card.el);
    }
  }

  renderSummary();
  renderPhotos();
  await renderQueue();
  flush(); // this user's photos left from an earlier visit (or a closed tab) go now
  return () => { disposers.forEach((d) => d()); for (const { dispose } of shown.values()) dispose(); };
}

// --- one photo ---------------------------------------------------------------------------------------

function photoCard(photo, { mayReview, onDecided }) {
  const size = photo.image || { width: 1, height: 1 };
  const path = `/v1/samples/${photo.sample_id}/image`;
  const img = h("img", { alt: `#${photo.sample_id}`, draggable: "false" });
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "box-overlay");
  svg.setAttribute("viewBox", `0 0 ${size.width} ${size.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const figure = h("div", { class: "boxed-image", style: { aspectRatio: `${size.width} / ${size.height}` } }, img, svg);
  let released = false;
  loadImage(path).then((url) => { if (!released) img.src = url; }).catch(() => figure.classList.add("broken"));
  photo.findings.forEach((f, i) => drawFinding(svg, f, i + 1, size));
  const list = h("ol", { class: "finding-list" }, photo.findings.map((f, i) => findingCard(photo, f, i + 1, { mayReview, onDecided })));
  const el = h("article", { class: "panel photo-card", "data-testid": "photo-card", "data-photo-id": photo.photo_id },
    h("div", { class: "photo-head" },
      h("strong", {}, t("record.photo", { id: photo.photo_id })),
      h("span", { class: "muted" }, `${formatDate(photo.captured_at || photo.created_at)} · ${photo.enterprise_id || ""}`),
      photo.model ? h("span", { class: "muted small" }, `${photo.model.name}:${photo.model.version}`) : null),
    figure,
    photo.findings.length ? list : h("p", { class: "muted", "data-testid": "no-findings" }, t("record.no_findings")));
  return { el, dispose() { released = true; releaseImage(path); } };
}

function drawFinding(svg, f, n, size) {
  const box = (f.review && f.review.box) || f.box;
  const key = (f.review && f.review.class_key) || f.class_key;
  const color = f.status === "rejected" ? "#9aa0a6" : classColor(key);
  const g = document.createElementNS(NS, "g");
  g.setAttribute("class", `finding-box finding-${f.status}`);
  g.dataset.findingId = f.id;
  const rect = document.createElementNS(NS, "rect");
  for (const [k, v] of Object.entries({ x: box.x1, y: box.y1, width: Math.max(0, box.x2 - box.x1), height: Math.max(0, box.y2 - box.y1) })) {
    rect.setAttribute(k, v);
  }
  rect.setAttribute("fill", "none");
  rect.setAttribute("stroke", color);
  rect.setAttribute("stroke-width", f.status === "confirmed" ? "3" : "2");
  rect.setAttribute("vector-effect", "non-scaling-stroke");
  if (f.status !== "confirmed") rect.setAttribute("stroke-dasharray", "6 4");
  // The finding's number in a tag at the box's corner, sized to the photo so it reads on a phone.
  const r = Math.max(size.width, size.height) / 40;
  const tag = document.createElementNS(NS, "circle");
  tag.setAttribute("cx", box.x1);
  tag.setAttribute("cy", box.y1);
  tag.setAttribute("r", r);
  tag.setAttribute("fill", color);
  const text = document.createElementNS(NS, "text");
  text.setAttribute("x", box.x1);
  text.setAttribute("y", box.y1);
  text.setAttribute("font-size", r * 1.3);
  text.setAttribute("text-anchor", "middle");
  text.setAttribute("dominant-baseline", "central");
  text.setAttribute("fill", "#fff");
  text.textContent = String(n);
  const title = document.createElementNS(NS, "title");
  title.textContent = `${n}. ${className(key)} ${(f.confidence * 100).toFixed(0)}%`;
  g.append(rect, tag, text, title);
  svg.append(g);
}

function itemTitle(code) {
  const item = session.taxonomy && (session.taxonomy.items || []).find((i) => i.code === code);
  if (!item) return code;
  return `${code} ${lang() === "en" ? item.title_en : item.title_zh}`;
}

function findingCard(photo, f, n, { mayReview, onDecided }) {
  const key = (f.review && f.review.class_key) || f.class_key;
  const pct = `${Math.round(f.confidence * 100)}%`;
  const actions = h("div", { class: "finding-actions" });
  if (f.status === "suggested" && mayReview) {
    actions.append(
      button("check", t("record.confirm"), { class: "success", "data-testid": "confirm-finding", onclick: () => decide("confirmed") }),
      button("pen", t("record.correct"), { "data-testid": "correct-finding", onclick: () => correct() }),
      button("cross", t("record.reject"), { class: "danger", "data-testid": "reject-finding", onclick: () => reject() }));
  }
  const review = f.review || {};
  const outcome = f.status === "suggested" ? null : h("p", { class: "muted small finding-outcome", "data-testid": "finding-outcome" },
    t(review.corrected ? "record.was_corrected" : `record.was_${f.status}`, { by: review.by || "—", at: formatDate(review.at) }),
    review.reason ? h("span", { "data-testid": "finding-reason" }, ` · ${t("review.reason")}：${review.reason}`) : null);
  const card = h("li", { class: ["finding", `finding-${f.status}`], "data-testid": "finding", "data-finding-id": f.id, "data-status": f.status },
    h("div", { class: "finding-head" },
      h("span", { class: "finding-no", style: { background: f.status === "rejected" ? "#9aa0a6" : classColor(key) } }, String(n)),
      h("strong", { class: "finding-class" }, className(key)),
      key !== f.class_key ? h("s", { class: "muted small" }, className(f.class_key)) : null,
      h("span", { class: "confidence", "data-testid": "confidence", title: t("record.confidence") }, pct),
      h("span", { class: ["chip", `finding-${f.status}`] }, t(`record.status_${f.status}`))),
    f.finding ? h("p", { class: "finding-text" }, f.finding) : null,
    f.inspection_items.length ? h("div", { class: "finding-items" }, h("span", { class: "label" }, t("record.items")),
      h("ul", {}, f.inspection_items.map((c) => h("li", {}, itemTitle(c))))) : null,
    f.legal_basis.length ? h("div", { class: "finding-basis" }, h("span", { class: "label" }, t("record.legal_basis")),
      h("ul", {}, f.legal_basis.map((b) => h("li", {}, b)))) : null,
    outcome, actions);

  async function send(body, doing) {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      await api(`/v1/findings/${f.id}/review`, { method: "POST", body });
      notify(t(`record.done_${body.decision === "rejected" ? "rejected" : body.box || body.class_key ? "corrected" : "confirmed"}`, { n }), "success");
      await onDecided();
      return true;
    } catch (e) {
      showError(e, doing);
      for (const b of actions.querySelectorAll("button")) b.disabled = false;
      return false;
    }
  }

  function decide(decision) { return send({ decision }, t("record.confirm")); }

  async function reject() {
    const area = h("textarea", { rows: 3, required: true, maxlength: 2000, "data-testid": "finding-reason-input",
      placeholder: t("record.reason_placeholder") });
    const presets = h("div", { class: "reason-presets" }, ["record.reason_not_hazard", "record.reason_wrong_object", "record.reason_unclear"]
      .map((k) => h("button", { type: "button", class: "chip-button", onclick: () => { area.value = t(k); area.focus(); } }, t(k))));
    await dialog({
      title: t("record.reject_title", { n }),
      body: [h("p", { class: "muted" }, `${n}. ${className(key)} ${pct}`), presets, area],
      actions: [{ label: t("common.cancel"), value: null }, { label: t("record.reject"), value: "reject", danger: true }],
      onSubmit: async () => {
        const reason = area.value.trim();
        if (!reason) { area.focus(); return false; }
        return send({ decision: "rejected", reason }, t("record.reject"));
      },
    });
  }

  async function correct() {
    const canvas = h("canvas", { class: "correct-canvas", "data-testid": "correct-canvas", tabindex: "0" });
    const classes = classesFor(photo.sector);
    const select = h("select", { "data-testid": "correct-class" },
      classes.map((c) => h("option", { value: c.key, selected: c.key === f.class_key }, lang() === "en" ? c.name_en : c.name_zh)));
    const editor = new BoxEditor(canvas, {
      colorOf: classColor, labelOf: className, currentClass: () => select.value,
      // One box only: a newly drawn box replaces the suggested one (a redraw).
      onChange: () => {
        if (editor && editor.boxes.length > 1) { editor.boxes = [editor.boxes[editor.boxes.length - 1]]; editor.select(0); }
        if (editor) canvas.dataset.box = JSON.stringify(editor.getBoxes()[0] || null);
      },
    });
    select.addEventListener("change", () => { if (editor.boxes[0]) { editor.select(0); editor.setSelectedClass(select.value); } });
    const path = `/v1/samples/${photo.sample_id}/image`;
    const image = new Image();
    loadImage(path).then((url) => {
      image.onload = () => {
        editor.setImage(image, photo.image.width, photo.image.height);
        editor.setBoxes([{ ...f.box, class_key: f.class_key }]);
        editor.select(0);
        canvas.dataset.ready = "1";
      };
      image.src = url;
    }).catch((e) => showError(e));
    try {
      await dialog({
        title: t("record.correct_title", { n }), wide: true,
        body: [h("p", { class: "muted small" }, t("record.correct_hint")), h("label", { class: "field" }, h("span", {}, t("filter.class")), select),
          h("div", { class: "correct-stage" }, canvas)],
        actions: [{ label: t("common.cancel"), value: null }, { label: t("record.save_correction"), value: "save", primary: true }],
        onSubmit: async () => {
          const [b] = editor.getBoxes();
          if (!b) return false;
          return send({ decision: "confirmed", class_key: select.value, box: { x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 } }, t("record.correct"));
        },
      });
    } finally {
      editor.destroy();
      releaseImage(path);
    }
  }

  return card;
}

// --- print -------------------------------------------------------------------------------------------

/** The printable record (GET /v1/inspections/{no}/report.pdf): fetched with the key (a plain link
 *  cannot send it) and opened from a blob URL. */
async function printRecord(recordNo) {
  try {
    const response = await api(`/v1/inspections/${encodeURIComponent(recordNo)}/report.pdf`, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const a = h("a", { href: url, download: `${recordNo}.pdf` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (e) {
    showError(e, t("record.print"));
  }
}
