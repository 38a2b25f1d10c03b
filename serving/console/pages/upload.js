// Upload photos and zips of photos with per-file progress. Inspectors upload from poor networks,
// so files go one at a time with XMLHttpRequest (fetch reports no upload progress), and one failed
// file does not stop the others. Zips go to /v1/samples/archive, which reports each entry.
import { upload } from "../api.js";
import { lang, t } from "../i18n.js";
import { session } from "../store.js";
import { dialog, formatBytes, h, notify } from "../ui.js";

export async function openUpload(onDone) {
  const zh = lang() !== "en";
  const files = [];
  const list = h("ul", { class: "upload-list", "data-testid": "upload-list" });
  const input = h("input", { type: "file", multiple: true, accept: "image/*,.heic,.heif,.zip",
    "data-testid": "upload-input", onchange: (e) => addFiles(e.target.files) });
  const drop = h("label", { class: "dropzone" }, input,
    h("strong", {}, t("upload.choose")), h("span", { class: "muted" }, t("upload.hint")));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });

  const sector = h("select", { name: "sector", required: true, "data-testid": "upload-sector" },
    h("option", { value: "" }, t("upload.pick_sector")),
    session.taxonomy.sectors.map((s) => h("option", { value: s.key }, zh ? s.name_zh : s.name_en)));
  const scope = h("select", { name: "scope" },
    h("option", { value: "private" }, t("scope.private")), h("option", { value: "shared" }, t("scope.shared")));
  const site = h("input", { name: "site_id", placeholder: t("upload.optional") });
  const camera = h("input", { name: "camera_id", placeholder: t("upload.optional") });
  const field = (label, el) => h("label", { class: "field" }, h("span", {}, label), el);

  function addFiles(fileList) {
    for (const file of fileList) {
      const row = { file, bar: h("progress", { max: 1, value: 0 }), state: h("span", { class: "muted" }, formatBytes(file.size)) };
      files.push(row);
      list.append(h("li", {}, h("span", { class: "upload-name" }, file.name), row.bar, row.state));
    }
  }

  let running = false;
  await dialog({
    title: t("upload.title"), wide: true,
    body: [h("div", { class: "form-grid" }, field(t("filter.sector"), sector), field(t("filter.scope"), scope),
      field(t("filter.site"), site), field(t("filter.camera"), camera)), drop, list],
    actions: [{ label: t("common.close"), value: null }, { label: t("upload.start"), value: "go", primary: true }],
    onSubmit: async () => {
      if (running) return false;
      if (!sector.value) { notify(t("upload.need_sector"), "error"); sector.focus(); return false; }
      if (!files.length) { notify(t("upload.need_files"), "error"); return false; }
      running = true;
      const meta = { sector: sector.value, scope: scope.value, site_id: site.value.trim(), camera_id: camera.value.trim() };
      const totals = { stored: 0, duplicate: 0, failed: 0 };
      for (const row of files.splice(0)) await sendOne(row, meta, totals);
      running = false;
      notify(t("upload.summary", totals), totals.failed ? "error" : "success");
      if (onDone) onDone();
      return false; // keep the dialog open so the per-file results stay readable
    },
  });
}

async function sendOne(row, meta, totals) {
  // A zip goes whole to the archive endpoint, which answers a per-entry summary.
  if (/\.zip$/i.test(row.file.name)) await sendArchive(row, meta, totals);
  else await sendFile(row, meta, totals);
}

async function sendArchive(row, meta, totals) {
  const form = new FormData();
  form.append("file", row.file, row.file.name);
  for (const [k, v] of Object.entries(meta)) if (v) form.append(k, v);
  row.state.textContent = t("upload.sending");
  try {
    const s = await upload("/v1/samples/archive", form, (f) => { row.bar.value = f; });
    totals.stored += s.stored;
    totals.duplicate += s.deduplicated;
    totals.failed += s.refused.length;
    row.state.replaceChildren(t("upload.archive_summary", { stored: s.stored, duplicate: s.deduplicated,
      refused: s.refused.length, skipped: s.skipped.length }),
    ...s.refused.map((r) => h("div", { class: "form-error" }, `${r.name}: ${r.message}`)));
    row.state.className = s.refused.length ? "" : "ok";
  } catch (e) {
    fail(row, e.message, totals);
  }
}

async function sendFile(row, meta, totals) {
  const form = new FormData();
  form.append("file", row.file, row.file.name);
  for (const [k, v] of Object.entries(meta)) if (v) form.append(k, v);
  row.state.textContent = t("upload.sending");
  try {
    const answer = await upload("/v1/samples", form, (f) => { row.bar.value = f; });
    const sample = answer && (answer.sample || answer);
    const dup = Boolean(sample && sample.deduplicated);
    totals[dup ? "duplicate" : "stored"] += 1;
    row.state.replaceChildren(h("a", { href: `#/sample/${sample.id}` },
      dup ? t("upload.duplicate", { id: sample.id }) : t("upload.stored", { id: sample.id })));
    row.state.className = "ok";
  } catch (e) {
    fail(row, e.message, totals);
  }
}

function fail(row, message, totals) {
  totals.failed += 1;
  row.bar.value = 0;
  row.state.textContent = message;
  row.state.className = "form-error";
}
