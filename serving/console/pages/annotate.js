// The annotator: the canvas editor plus the class picker, the box list, model suggestions, and the
// save / submit / next workflow. Without an id it shows the caller's work queue.
import { api, loadImage, releaseImage } from "../api.js";
import { go } from "../app.js";
import { BoxEditor, isTyping } from "../editor.js";
import { lang, t } from "../i18n.js";
import { can, classColor, className, classesFor, session } from "../store.js";
import { append, button, h, notify, showError } from "../ui.js";
import { sampleStatus, statusChip } from "./common.js";

export async function render(view, { args }) {
  if (!args[0]) return renderQueue(view);
  const id = Number(args[0]);
  let sample;
  let current;
  try {
    [sample, current] = await Promise.all([api(`/v1/samples/${id}`), api(`/v1/samples/${id}/annotations`)]);
  } catch (e) {
    view.append(h("div", { class: "page-error", role: "alert", "data-testid": "page-error" },
      h("h1", {}, t("sample.unavailable")), h("p", {}, e.message), h("a", { href: "#/library" }, t("sample.back"))));
    return null;
  }
  return renderEditor(view, sample, current);
}

async function renderQueue(view) {
  view.append(h("div", { class: "toolbar" }, h("h1", {}, t("annotate.queue_title"))));
  const list = h("div", { class: "queue-list", "data-testid": "labeling-queue" });
  view.append(list);
  try {
    const answer = await api("/v1/labeling/queue", { query: { limit: 200 } });
    const items = answer.items || [];
    if (!items.length) {
      list.append(h("p", { class: "empty" }, t("annotate.queue_empty"), " ",
        h("a", { href: "#/library?status=unlabeled" }, t("annotate.browse_unlabeled"))));
    }
    for (const item of items) {
      list.append(h("a", { class: "queue-item", href: `#/annotate/${item.sample_id}` },
        h("strong", {}, `#${item.sample_id}`), statusChip(item.status),
        h("span", { class: "muted" }, [item.org_code, item.original_name].filter(Boolean).join(" · "))));
    }
  } catch (e) {
    list.append(h("p", { class: "form-error", role: "alert" }, e.message));
  }
  return null;
}

function renderEditor(view, sample, current) {
  const id = sample.id;
  const zh = lang() !== "en";
  const readOnly = !can("annotations:write");
  const classes = classesFor(sample.sector);
  const hotkeys = classes.slice(0, 9).map((c) => c.key);
  let currentClass = hotkeys[0] || (classes[0] && classes[0].key);
  let saved = JSON.stringify(current.boxes || []);
  let status = sampleStatus(current);
  let pendingSuggestion = null; // suggestion whose boxes were taken into the editor
  let suggestions = [];
  let busy = false;

  const label = (key) => {
    const n = hotkeys.indexOf(key);
    return `${n >= 0 ? n + 1 + " " : ""}${className(key)}`;
  };
  const canvas = h("canvas", { class: "editor-canvas", tabindex: "0", "data-testid": "annotator-canvas",
    "aria-label": t("annotate.canvas_label") });
  const zoomLabel = h("span", { "data-testid": "zoom" }, "100%");
  const posLabel = h("span", { class: "muted" });
  const boxList = h("ol", { class: "box-list", "data-testid": "box-list" });
  const classList = h("ul", { class: "class-list", role: "listbox", "data-testid": "class-list" });
  const statusSlot = h("span", {}, statusChip(status));
  const suggestionBox = h("div", { class: "suggestions", "data-testid": "suggestions" });
  const dirtyMark = h("span", { class: "dirty", hidden: true }, t("annotate.unsaved"));

  const editor = new BoxEditor(canvas, {
    colorOf: classColor, labelOf: label, currentClass: () => currentClass, readOnly,
    onChange: () => { renderBoxes(); updateButtons(); },
    onSelect: (i) => { if (i >= 0) { currentClass = editor.boxes[i].class_key; renderClasses(); } renderBoxes(); },
    onView: ({ scale, at }) => {
      zoomLabel.textContent = `${Math.round(scale * 100)}%`;
      if (at) posLabel.textContent = `x ${Math.round(at.x)} · y ${Math.round(at.y)}`;
    },
  });

  // --- toolbar ---------------------------------------------------------------------------------
  const btn = {
    undo: button("undo", t("annotate.undo"), { class: "ghost", title: "Ctrl+Z", onclick: () => editor.undo() }),
    redo: button("redo", t("annotate.redo"), { class: "ghost", title: "Ctrl+Shift+Z / Ctrl+Y", onclick: () => editor.redo() }),
    del: button("trash", t("annotate.delete"), { class: "ghost", title: "Delete", onclick: () => editor.deleteSelected() }),
    zoomIn: button("zoomIn", "", { class: "ghost icon-only", title: `${t("annotate.zoom_in")} (+)`, onclick: () => editor.zoomBy(1.5) }),
    zoomOut: button("zoomOut", "", { class: "ghost icon-only", title: `${t("annotate.zoom_out")} (-)`, onclick: () => editor.zoomBy(1 / 1.5) }),
    fit: button("fit", "", { class: "ghost icon-only", title: `${t("annotate.fit")} (0)`, onclick: () => editor.fit() }),
    save: button("save", t("annotate.save"), { class: "", "data-testid": "save", title: "Ctrl+S", onclick: () => save() }),
    submit: button("send", t("annotate.submit"), { class: "primary", "data-testid": "submit", onclick: () => submit() }),
    next: button("next", t("annotate.next"), { class: "ghost", "data-testid": "next", onclick: () => next() }),
  };

  function dirty() { return JSON.stringify(editor.getBoxes()) !== saved || pendingSuggestion !== null; }

  function updateButtons() {
    btn.undo.disabled = readOnly || !editor.canUndo;
    btn.redo.disabled = readOnly || !editor.canRedo;
    btn.del.disabled = readOnly || editor.selected < 0;
    btn.save.disabled = readOnly || busy || !dirty();
    btn.submit.disabled = readOnly || busy || (!dirty() && !["in_progress"].includes(status));
    dirtyMark.hidden = !dirty();
  }

  // --- side panel ------------------------------------------------------------------------------
  const search = h("input", { type: "search", class: "class-search", placeholder: t("annotate.search_class"),
    "data-testid": "class-search", oninput: () => renderClasses(),
    onkeydown: (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        const first = classList.querySelector("li");
        if (first) pickClass(first.dataset.key);
        search.blur();
      } else if (e.key === "Escape") { search.value = ""; renderClasses(); search.blur(); }
    } });

  function pickClass(key) {
    currentClass = key;
    editor.setSelectedClass(key);
    renderClasses();
  }

  function renderClasses() {
    const q = search.value.trim().toLowerCase();
    const shown = classes.filter((c) => !q || c.key.includes(q) || c.name_zh.includes(q) || c.name_en.toLowerCase().includes(q));
    classList.replaceChildren(...shown.map((c) => {
      const n = hotkeys.indexOf(c.key);
      return h("li", { role: "option", "aria-selected": String(c.key === currentClass), dataset: { key: c.key },
        class: ["class-option", c.key === currentClass && "active"], onclick: () => pickClass(c.key) },
        h("span", { class: "hotkey" }, n >= 0 ? String(n + 1) : ""),
        h("i", { class: "swatch", style: { background: classColor(c.key) } }),
        h("span", { class: "class-names" }, h("span", {}, zh ? c.name_zh : c.name_en),
          h("small", { class: "muted" }, zh ? c.name_en : c.name_zh)),
        c.is_hazard ? h("span", { class: ["sev", `sev-${c.severity}`], title: t(`severity.${c.severity}`) }, "!") : null);
    }));
    if (!shown.length) classList.append(h("li", { class: "muted" }, t("annotate.no_class")));
  }

  function renderBoxes() {
    boxList.replaceChildren(...editor.boxes.map((b, i) => h("li", {
      class: ["box-row", i === editor.selected && "active"], onclick: () => editor.select(i, { reveal: true }) },
      h("i", { class: "swatch", style: { background: classColor(b.class_key) } }),
      h("span", { class: "box-name" }, className(b.class_key)),
      h("small", { class: "muted" }, `${Math.round(b.x2 - b.x1)}×${Math.round(b.y2 - b.y1)}`),
      readOnly ? null : h("button", { type: "button", class: "ghost tiny", "aria-label": t("annotate.delete"),
        onclick: (e) => { e.stopPropagation(); editor.select(i); editor.deleteSelected(); } }, "×"))));
    if (!editor.boxes.length) boxList.append(h("li", { class: "muted" }, t("annotate.no_boxes")));
    updateButtons();
  }

  async function loadSuggestions() {
    try {
      const answer = await api(`/v1/samples/${id}/suggestions`);
      suggestions = answer.items || [];
    } catch { suggestions = []; }
    renderSuggestions();
  }

  function renderSuggestions() {
    const open = suggestions.filter((s) => s.status === "open" && s.id !== pendingSuggestion);
    editor.setSuggestions(open.flatMap((s) => s.boxes));
    suggestionBox.replaceChildren();
    if (!open.length) {
      suggestionBox.append(h("p", { class: "muted" }, t("annotate.no_suggestions")));
      if (!readOnly) {
        suggestionBox.append(button("spark", t("annotate.ask_model"), { class: "tiny", "data-testid": "ask-model",
          onclick: async (e) => {
            e.currentTarget.disabled = true;
            try {
              const answer = await api("/v1/suggestions/request", { method: "POST", body: { sample_ids: [Number(id)] } });
              suggestions = (answer.items || []).concat(suggestions);
              renderSuggestions();
            } catch (err) { showError(err, t("annotate.ask_model")); e.currentTarget.disabled = false; }
          } }));
      }
      return;
    }
    for (const s of open) {
      suggestionBox.append(h("div", { class: "suggestion", "data-suggestion-id": s.id },
        h("div", {}, h("strong", {}, s.model_version), " ", h("span", { class: "muted" }, t("sample.boxes_n", { n: s.boxes.length }))),
        readOnly ? null : h("div", { class: "row" },
          button("check", t("annotate.use_suggestion"), { class: "tiny", title: t("annotate.use_suggestion_hint"), onclick: () => {
            pendingSuggestion = s.id;
            editor.addBoxes(s.boxes.map(({ class_key, x1, y1, x2, y2 }) => ({ class_key, x1, y1, x2, y2 })));
            renderSuggestions();
          } }),
          button("cross", t("annotate.dismiss"), { class: "tiny ghost", onclick: async () => {
            try {
              await api(`/v1/suggestions/${s.id}/dismiss`, { method: "POST" });
              suggestions = suggestions.filter((x) => x.id !== s.id);
              renderSuggestions();
            } catch (e) { showError(e, t("annotate.dismiss")); }
          } }))));
    }
  }

  // --- workflow --------------------------------------------------------------------------------
  function setStatus(next) {
    status = next;
    statusSlot.replaceChildren(statusChip(status));
  }

  async function save() {
    if (readOnly || busy) return false;
    busy = true;
    updateButtons();
    const boxes = editor.getBoxes();
    try {
      if (pendingSuggestion !== null) {
        // Boxes that started from a model suggestion are saved through it, so the revision records
        // the model version and the suggestion is closed as accepted (with the curator's edits).
        await api(`/v1/suggestions/${pendingSuggestion}/accept`, { method: "POST", body: { boxes } });
        pendingSuggestion = null;
        const fresh = await api(`/v1/samples/${id}/annotations`);
        setStatus(sampleStatus(fresh));
        saved = JSON.stringify(fresh.boxes);
      } else {
        const answer = await api(`/v1/samples/${id}/annotations`, { method: "PUT", body: { boxes } });
        setStatus(sampleStatus(answer));
        saved = JSON.stringify(answer.boxes);
        if (answer.repairs && answer.repairs.length) notify(t("annotate.repaired", { list: answer.repairs.join("; ") }), "info");
        editor.setBoxes(answer.boxes, { resetHistory: false });
      }
      notify(t("annotate.saved"), "success");
      return true;
    } catch (e) {
      showError(e, t("annotate.save_failed"));
      return false;
    } finally {
      busy = false;
      updateButtons();
    }
  }

  async function submit() {
    if (readOnly || busy) return;
    if (dirty() && !(await save())) return;
    busy = true;
    updateButtons();
    try {
      const answer = await api(`/v1/samples/${id}/annotations/submit`, { method: "POST" });
      setStatus(sampleStatus(answer));
      notify(t("annotate.submitted"), "success");
    } catch (e) {
      showError(e, t("annotate.submit_failed"));
    } finally {
      busy = false;
      updateButtons();
    }
  }

  async function next() {
    if (dirty() && !(await save())) return;
    try {
      const answer = await api("/v1/labeling/queue/next");
      const item = answer.item;
      if (item && item.sample_id !== id) { go(`#/annotate/${item.sample_id}`); return; }
      // Nothing assigned: carry on with the library's unlabeled or sent-back samples.
      for (const s of ["rejected", "unlabeled", "in_progress"]) {
        const page = await api("/v1/samples", { query: { status: s, limit: 2 } });
        const other = (page.items || []).find((x) => x.id !== id);
        if (other) { go(`#/annotate/${other.id}`); return; }
      }
      notify(t("annotate.queue_empty"), "info");
    } catch (e) {
      showError(e, t("annotate.next"));
    }
  }

  // --- keyboard --------------------------------------------------------------------------------
  function onKey(e) {
    if (isTyping(e.target)) return;
    const mod = e.ctrlKey || e.metaKey;
    const k = e.key;
    if (mod && k.toLowerCase() === "z") { e.preventDefault(); if (e.shiftKey) editor.redo(); else editor.undo(); return; }
    if (mod && k.toLowerCase() === "y") { e.preventDefault(); editor.redo(); return; }
    if (mod && k.toLowerCase() === "s") { e.preventDefault(); save(); return; }
    if (mod) return;
    if (/^[1-9]$/.test(k) && hotkeys[Number(k) - 1]) { pickClass(hotkeys[Number(k) - 1]); return; }
    if (k === "Delete" || k === "Backspace") { e.preventDefault(); editor.deleteSelected(); return; }
    if (k === "Escape") { editor.select(-1); return; }
    if (k === "+" || k === "=") { editor.zoomBy(1.5); return; }
    if (k === "-") { editor.zoomBy(1 / 1.5); return; }
    if (k === "0") { editor.fit(); return; }
    if (k === "/") { e.preventDefault(); search.focus(); return; }
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (arrows[k] && editor.selected >= 0) {
      e.preventDefault();
      const step = e.shiftKey ? 10 : 1;
      editor.nudge(arrows[k][0] * step, arrows[k][1] * step);
    }
  }
  window.addEventListener("keydown", onKey);
  const beforeUnload = (e) => { if (dirty()) { e.preventDefault(); e.returnValue = ""; } };
  window.addEventListener("beforeunload", beforeUnload);

  // --- layout ----------------------------------------------------------------------------------
  const rev = current.revision;
  append(view,
    h("div", { class: "toolbar editor-toolbar" },
      h("a", { href: `#/sample/${id}`, class: "back" }, "← ", t("sample.title", { id })), statusSlot, dirtyMark,
      h("div", { class: "spacer" }),
      h("div", { class: "tool-group" }, btn.undo, btn.redo, btn.del),
      h("div", { class: "tool-group" }, btn.zoomOut, zoomLabel, btn.zoomIn, btn.fit),
      h("div", { class: "tool-group" }, btn.save, btn.submit, btn.next)),
    readOnly ? h("div", { class: "callout", role: "note" }, t("annotate.read_only", { role: t(`role.${session.me.role}`) })) : null,
    rev && rev.status === "rejected" && rev.reason
      ? h("div", { class: "callout warn", "data-testid": "reject-reason" }, h("strong", {}, t("review.sent_back")), " ",
        rev.reason, rev.reviewer ? h("span", { class: "muted" }, ` — ${rev.reviewer}`) : null) : null,
    h("div", { class: "editor-layout" },
      h("div", { class: "editor-stage" }, canvas,
        h("div", { class: "editor-status" }, posLabel, h("span", { class: "muted" }, t("annotate.shortcuts")))),
      h("aside", { class: "editor-side" },
        h("section", {}, h("h2", {}, t("annotate.classes")), search, classList),
        h("section", {}, h("h2", {}, t("annotate.boxes")), boxList),
        h("section", {}, h("h2", {}, t("annotate.suggestions")), suggestionBox))));

  renderClasses();
  editor.setBoxes(current.boxes || []);
  updateButtons();
  loadSuggestions();

  const imagePath = `/v1/samples/${id}/image`;
  let alive = true;
  loadImage(imagePath).then((url) => {
    const img = new Image();
    img.onload = () => {
      if (!alive) return;
      editor.setImage(img, sample.width, sample.height);
      canvas.dataset.ready = "1"; // lets tests and screenshots wait for the image
    };
    img.src = url;
  }).catch((e) => showError(e, t("annotate.image_failed")));
  canvas.focus({ preventScroll: true });

  return () => {
    alive = false;
    window.removeEventListener("keydown", onKey);
    window.removeEventListener("beforeunload", beforeUnload);
    editor.destroy();
    releaseImage(imagePath);
  };
}
