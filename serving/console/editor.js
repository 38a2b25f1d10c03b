// The box editor: one <canvas> showing the image and its boxes, with pointer events for mouse, pen
// and touch alike. Boxes are kept in pixels of the (EXIF-oriented) image, the API's coordinates;
// the view (scale + offset) only changes how they are drawn, so zooming to 40x to box a 12-pixel
// helmet never changes what is saved.
//
//   drag on empty image     draw a box of the current class
//   drag a box / a handle   move / resize it
//   wheel, pinch            zoom at the pointer
//   space+drag, middle drag, two fingers   pan
//
// Every finished gesture is one undo step (a snapshot of the box list: lists are small, and
// snapshots cannot drift the way inverse operations can).

const HANDLES = ["nw", "n", "ne", "e", "se", "s", "sw", "w"];
const CURSORS = { nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize",
  n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize" };
const MAX_SCALE = 40;
const HISTORY = 200;

export class BoxEditor {
  constructor(canvas, { colorOf, labelOf, currentClass, onChange, onSelect, onView, readOnly = false }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.colorOf = colorOf;
    this.labelOf = labelOf;
    this.currentClass = currentClass;
    this.onChange = onChange || (() => {});
    this.onSelect = onSelect || (() => {});
    this.onView = onView || (() => {});
    this.readOnly = readOnly;
    this.image = null;
    this.imageW = 1;
    this.imageH = 1;
    this.boxes = [];
    this.suggestions = [];
    this.selected = -1;
    this.past = [];
    this.future = [];
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.pointers = new Map();
    this.gesture = null;
    this.hover = null;
    this.spaceDown = false;
    this.needsDraw = false;
    this.fitted = false;
    this._bind();
  }

  // --- public API -------------------------------------------------------------------------------

  setImage(image, width, height) {
    this.image = image;
    this.imageW = width || image.naturalWidth;
    this.imageH = height || image.naturalHeight;
    this.resize();
    this.fit();
  }

  setBoxes(boxes, { resetHistory = true } = {}) {
    this.boxes = boxes.map(cleanBox);
    this.selected = -1;
    if (resetHistory) { this.past = []; this.future = []; }
    this.onSelect(-1);
    this.onChange();
    this.draw();
  }

  getBoxes() {
    return this.boxes.map((b) => ({ class_key: b.class_key, x1: round(b.x1), y1: round(b.y1), x2: round(b.x2), y2: round(b.y2) }));
  }

  setSuggestions(boxes) {
    this.suggestions = boxes || [];
    this.draw();
  }

  /** Add boxes as one undoable step (accepting a model suggestion into the editor). */
  addBoxes(boxes) {
    const before = this.snapshot();
    for (const b of boxes) this.boxes.push(cleanBox(b));
    this.commit(before);
  }

  get canUndo() { return this.past.length > 0; }
  get canRedo() { return this.future.length > 0; }

  undo() {
    if (!this.past.length) return;
    this.future.push(this.snapshot());
    this.restore(this.past.pop());
  }

  redo() {
    if (!this.future.length) return;
    this.past.push(this.snapshot());
    this.restore(this.future.pop());
  }

  select(index, { reveal = false } = {}) {
    this.selected = index >= 0 && index < this.boxes.length ? index : -1;
    if (reveal && this.selected >= 0) this.reveal(this.boxes[this.selected]);
    this.onSelect(this.selected);
    this.draw();
  }

  deleteSelected() {
    if (this.readOnly || this.selected < 0) return;
    const before = this.snapshot();
    this.boxes.splice(this.selected, 1);
    this.selected = -1;
    this.onSelect(-1);
    this.commit(before);
  }

  setSelectedClass(key) {
    if (this.readOnly || this.selected < 0 || this.boxes[this.selected].class_key === key) return;
    const before = this.snapshot();
    this.boxes[this.selected].class_key = key;
    this.commit(before);
  }

  /** Move the selected box by whole image pixels (arrow keys: precise for tiny objects). */
  nudge(dx, dy) {
    if (this.readOnly || this.selected < 0) return;
    const before = this.snapshot();
    const b = this.boxes[this.selected];
    const mx = clamp(dx, -b.x1, this.imageW - b.x2);
    const my = clamp(dy, -b.y1, this.imageH - b.y2);
    b.x1 += mx; b.x2 += mx; b.y1 += my; b.y2 += my;
    this.commit(before);
  }

  fit() {
    const { w, h } = this.cssSize();
    const s = Math.min(w / this.imageW, h / this.imageH) * 0.96;
    this.scale = s > 0 && Number.isFinite(s) ? s : 1;
    this.tx = (w - this.imageW * this.scale) / 2;
    this.ty = (h - this.imageH * this.scale) / 2;
    this.fitted = true;
    this.viewChanged();
  }

  zoomBy(factor, cx, cy) {
    const { w, h } = this.cssSize();
    if (cx === undefined) { cx = w / 2; cy = h / 2; }
    const minScale = Math.min(w / this.imageW, h / this.imageH) / 4;
    const next = clamp(this.scale * factor, minScale, MAX_SCALE);
    const ix = (cx - this.tx) / this.scale;
    const iy = (cy - this.ty) / this.scale;
    this.scale = next;
    this.tx = cx - ix * next;
    this.ty = cy - iy * next;
    this.fitted = false;
    this.viewChanged();
  }

  /** Resize the backing store to the element's size times the device pixel ratio (sharp on
   *  tablets), keeping the image point at the centre where it was. */
  resize() {
    const { w, h } = this.cssSize();
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(w * dpr));
    const ch = Math.max(1, Math.round(h * dpr));
    if (this.canvas.width !== cw || this.canvas.height !== ch) {
      const oldW = this.canvas.width / dpr;
      const oldH = this.canvas.height / dpr;
      this.canvas.width = cw;
      this.canvas.height = ch;
      if (this.fitted) this.fit();
      else { this.tx += (w - oldW) / 2; this.ty += (h - oldH) / 2; }
    }
    this.draw();
  }

  destroy() {
    this.resizeObserver.disconnect();
    window.removeEventListener("keydown", this._onKey);
    window.removeEventListener("keyup", this._onKey);
    window.removeEventListener("blur", this._onBlur);
  }

  // --- state ------------------------------------------------------------------------------------

  snapshot() { return JSON.stringify(this.boxes); }

  restore(snap) {
    this.boxes = JSON.parse(snap);
    if (this.selected >= this.boxes.length) { this.selected = -1; this.onSelect(-1); }
    this.onChange();
    this.draw();
  }

  commit(before) {
    if (before === this.snapshot()) { this.draw(); return; }
    this.past.push(before);
    if (this.past.length > HISTORY) this.past.shift();
    this.future = [];
    this.onChange();
    this.draw();
  }

  viewChanged() {
    this.onView({ scale: this.scale });
    this.draw();
  }

  reveal(b) {
    const { w, h } = this.cssSize();
    const sx = b.x1 * this.scale + this.tx;
    const sy = b.y1 * this.scale + this.ty;
    const ex = b.x2 * this.scale + this.tx;
    const ey = b.y2 * this.scale + this.ty;
    if (sx < 0 || sy < 0 || ex > w || ey > h) {
      this.tx += w / 2 - (sx + ex) / 2;
      this.ty += h / 2 - (sy + ey) / 2;
      this.fitted = false;
      this.viewChanged();
    }
  }

  // --- geometry ---------------------------------------------------------------------------------

  cssSize() {
    const r = this.canvas.getBoundingClientRect();
    return { w: r.width || 1, h: r.height || 1 };
  }

  toImage(sx, sy) {
    return { x: (sx - this.tx) / this.scale, y: (sy - this.ty) / this.scale };
  }

  local(event) {
    const r = this.canvas.getBoundingClientRect();
    return { x: event.clientX - r.left, y: event.clientY - r.top };
  }

  handlePoints(b) {
    const x1 = b.x1 * this.scale + this.tx;
    const y1 = b.y1 * this.scale + this.ty;
    const x2 = b.x2 * this.scale + this.tx;
    const y2 = b.y2 * this.scale + this.ty;
    const mx = (x1 + x2) / 2;
    const my = (y1 + y2) / 2;
    return { nw: [x1, y1], n: [mx, y1], ne: [x2, y1], e: [x2, my], se: [x2, y2], s: [mx, y2], sw: [x1, y2], w: [x1, my] };
  }

  /** What is under a screen point: a handle of the selected box, else the smallest box containing
   *  it (so a helmet inside a person box can still be picked), else nothing. */
  hitTest(p, touch) {
    const tol = touch ? 16 : 7;
    if (this.selected >= 0) {
      const pts = this.handlePoints(this.boxes[this.selected]);
      for (const name of HANDLES) {
        const [hx, hy] = pts[name];
        if (Math.abs(p.x - hx) <= tol && Math.abs(p.y - hy) <= tol) return { kind: "handle", handle: name, index: this.selected };
      }
    }
    const q = this.toImage(p.x, p.y);
    const pad = tol / this.scale / 2;
    let best = -1;
    let bestArea = Infinity;
    this.boxes.forEach((b, i) => {
      if (q.x >= b.x1 - pad && q.x <= b.x2 + pad && q.y >= b.y1 - pad && q.y <= b.y2 + pad) {
        const area = (b.x2 - b.x1) * (b.y2 - b.y1);
        if (area < bestArea) { best = i; bestArea = area; }
      }
    });
    return best >= 0 ? { kind: "box", index: best } : { kind: "none" };
  }

  // --- events -----------------------------------------------------------------------------------

  _bind() {
    const c = this.canvas;
    c.style.touchAction = "none"; // we handle pinch and pan ourselves
    c.addEventListener("pointerdown", (e) => this.pointerDown(e));
    c.addEventListener("pointermove", (e) => this.pointerMove(e));
    c.addEventListener("pointerup", (e) => this.pointerUp(e));
    c.addEventListener("pointercancel", (e) => this.pointerUp(e, true));
    c.addEventListener("pointerleave", () => { this.hover = null; this.draw(); });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const p = this.local(e);
      const unit = e.deltaMode === 1 ? 0.05 : 0.0015;
      this.zoomBy(Math.exp(-e.deltaY * unit), p.x, p.y);
    }, { passive: false });
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    this._onKey = (e) => {
      if (e.code !== "Space" || isTyping(e.target)) return;
      e.preventDefault(); // no page scroll while panning
      const down = e.type === "keydown";
      if (down !== this.spaceDown) { this.spaceDown = down; this.updateCursor(); }
    };
    this._onBlur = () => { this.spaceDown = false; this.updateCursor(); };
    window.addEventListener("keydown", this._onKey);
    window.addEventListener("keyup", this._onKey);
    window.addEventListener("blur", this._onBlur);
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(c);
  }

  pointerDown(e) {
    this.canvas.focus({ preventScroll: true });
    const p = this.local(e);
    this.pointers.set(e.pointerId, p);
    try { this.canvas.setPointerCapture(e.pointerId); } catch { /* synthetic events */ }
    if (this.pointers.size === 2) {
      // A second finger turns any gesture into pinch-zoom + two-finger pan; an unfinished draw or
      // move by the first finger is undone, since the user clearly meant to zoom.
      if (this.gesture && this.gesture.before) this.restore(this.gesture.before);
      const [a, b] = [...this.pointers.values()];
      this.gesture = { kind: "pinch", dist: distance(a, b), mid: midpoint(a, b), scale: this.scale, tx: this.tx, ty: this.ty };
      return;
    }
    if (this.pointers.size > 2) return;
    if (this.spaceDown || e.button === 1 || (e.button === 0 && e.altKey) || !this.image) {
      this.gesture = { kind: "pan", start: p, tx: this.tx, ty: this.ty };
      this.updateCursor();
      return;
    }
    if (e.button !== 0) return;
    const hit = this.hitTest(p, e.pointerType === "touch");
    const img = this.toImage(p.x, p.y);
    if (this.readOnly) {
      if (hit.kind !== "none") this.select(hit.index);
      this.gesture = { kind: "pan", start: p, tx: this.tx, ty: this.ty };
      return;
    }
    if (hit.kind === "handle") {
      this.gesture = { kind: "resize", handle: hit.handle, index: hit.index, before: this.snapshot() };
    } else if (hit.kind === "box") {
      this.select(hit.index);
      const b = this.boxes[hit.index];
      this.gesture = { kind: "move", index: hit.index, start: img, orig: { ...b }, before: this.snapshot() };
    } else {
      this.select(-1);
      const x = clamp(img.x, 0, this.imageW);
      const y = clamp(img.y, 0, this.imageH);
      this.gesture = { kind: "draw", start: { x, y }, end: { x, y }, screenStart: p, before: this.snapshot() };
    }
    this.draw();
  }

  pointerMove(e) {
    const p = this.local(e);
    if (this.pointers.has(e.pointerId)) this.pointers.set(e.pointerId, p);
    const g = this.gesture;
    this.hover = { p, touch: e.pointerType === "touch" };
    if (!g) { this.updateCursor(); this.onView({ scale: this.scale, at: this.toImage(p.x, p.y) }); this.draw(); return; }
    if (g.kind === "pinch") {
      if (this.pointers.size < 2) return;
      const [a, b] = [...this.pointers.values()];
      const { w, h } = this.cssSize();
      const minScale = Math.min(w / this.imageW, h / this.imageH) / 4;
      const scale = clamp(g.scale * distance(a, b) / (g.dist || 1), minScale, MAX_SCALE);
      const mid = midpoint(a, b);
      // Keep the image point that was under the fingers' first midpoint under their midpoint now.
      const ix = (g.mid.x - g.tx) / g.scale;
      const iy = (g.mid.y - g.ty) / g.scale;
      this.scale = scale;
      this.tx = mid.x - ix * scale;
      this.ty = mid.y - iy * scale;
      this.fitted = false;
      this.viewChanged();
      return;
    }
    if (g.kind === "pan") {
      this.tx = g.tx + p.x - g.start.x;
      this.ty = g.ty + p.y - g.start.y;
      this.fitted = false;
      this.viewChanged();
      return;
    }
    const img = this.toImage(p.x, p.y);
    if (g.kind === "draw") {
      g.end = { x: clamp(img.x, 0, this.imageW), y: clamp(img.y, 0, this.imageH) };
    } else if (g.kind === "move") {
      const b = this.boxes[g.index];
      const o = g.orig;
      const dx = clamp(img.x - g.start.x, -o.x1, this.imageW - o.x2);
      const dy = clamp(img.y - g.start.y, -o.y1, this.imageH - o.y2);
      b.x1 = o.x1 + dx; b.x2 = o.x2 + dx; b.y1 = o.y1 + dy; b.y2 = o.y2 + dy;
    } else if (g.kind === "resize") {
      const b = this.boxes[g.index];
      const x = clamp(img.x, 0, this.imageW);
      const y = clamp(img.y, 0, this.imageH);
      if (g.handle.includes("w")) b.x1 = x;
      if (g.handle.includes("e")) b.x2 = x;
      if (g.handle.includes("n")) b.y1 = y;
      if (g.handle.includes("s")) b.y2 = y;
    }
    this.draw();
  }

  pointerUp(e, cancelled = false) {
    this.pointers.delete(e.pointerId);
    const g = this.gesture;
    if (!g) return;
    if (g.kind === "pinch") {
      if (this.pointers.size === 0) this.gesture = null;
      return;
    }
    this.gesture = null;
    if (cancelled && g.before) { this.restore(g.before); return; }
    if (g.kind === "draw") {
      const p = this.local(e);
      const dragged = Math.abs(p.x - g.screenStart.x) > 3 && Math.abs(p.y - g.screenStart.y) > 3;
      const box = normalise({ class_key: this.currentClass(), x1: g.start.x, y1: g.start.y, x2: g.end.x, y2: g.end.y });
      if (dragged && box.x2 - box.x1 >= 1 && box.y2 - box.y1 >= 1 && box.class_key) {
        this.boxes.push(box);
        this.selected = this.boxes.length - 1;
        this.onSelect(this.selected);
        this.commit(g.before);
      } else {
        this.draw();
      }
    } else if (g.kind === "move" || g.kind === "resize") {
      const b = this.boxes[g.index];
      Object.assign(b, normalise(b));
      if (b.x2 - b.x1 < 1 || b.y2 - b.y1 < 1) { this.restore(g.before); return; }
      this.commit(g.before);
    }
    this.updateCursor();
  }

  updateCursor() {
    let cursor = "crosshair";
    const g = this.gesture;
    if (g && g.kind === "pan") cursor = "grabbing";
    else if (this.spaceDown) cursor = "grab";
    else if (g && g.kind === "move") cursor = "move";
    else if (g && g.kind === "resize") cursor = CURSORS[g.handle];
    else if (this.hover && !this.readOnly) {
      const hit = this.hitTest(this.hover.p, this.hover.touch);
      if (hit.kind === "handle") cursor = CURSORS[hit.handle];
      else if (hit.kind === "box") cursor = "move";
    } else if (this.readOnly) cursor = "default";
    this.canvas.style.cursor = cursor;
  }

  // --- drawing ----------------------------------------------------------------------------------

  draw() {
    if (this.needsDraw) return;
    this.needsDraw = true;
    requestAnimationFrame(() => { this.needsDraw = false; this.paint(); });
  }

  paint() {
    const ctx = this.ctx;
    const dpr = window.devicePixelRatio || 1;
    const { w, h } = this.cssSize();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#1d2128";
    ctx.fillRect(0, 0, w, h);
    if (!this.image) return;
    // Past 3x, show real pixels instead of a blur: edges of a small object are where they are.
    ctx.imageSmoothingEnabled = this.scale < 3;
    ctx.drawImage(this.image, this.tx, this.ty, this.imageW * this.scale, this.imageH * this.scale);
    ctx.font = "12px 'Noto Sans CJK SC', 'Microsoft YaHei', 'PingFang SC', sans-serif";
    ctx.textBaseline = "top";

    // Suggestions carry only their confidence, and boxes too small on screen for their name carry
    // only their hotkey number: with a dozen helmets in a frame, full names would hide the image.
    for (const s of this.suggestions) this.paintBox(s, { dashed: true, label: s.confidence !== undefined ? `${(s.confidence * 100).toFixed(0)}%` : "" });
    this.boxes.forEach((b, i) => { if (i !== this.selected) this.paintBox(b, { label: this.labelOf(b.class_key), compact: true }); });
    if (this.selected >= 0) {
      const b = this.boxes[this.selected];
      this.paintBox(b, { selected: true, label: this.labelOf(b.class_key) });
      const pts = this.handlePoints(b);
      const size = this.hover && this.hover.touch ? 10 : 7;
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = this.colorOf(b.class_key);
      ctx.fillStyle = "#fff";
      for (const name of HANDLES) {
        const [x, y] = pts[name];
        ctx.fillRect(x - size / 2, y - size / 2, size, size);
        ctx.strokeRect(x - size / 2, y - size / 2, size, size);
      }
    }
    const g = this.gesture;
    if (g && g.kind === "draw") {
      const key = this.currentClass();
      this.paintBox(normalise({ class_key: key, x1: g.start.x, y1: g.start.y, x2: g.end.x, y2: g.end.y }),
        { dashed: true, label: this.labelOf(key) });
    }
    // Crosshair lines help line a box up with the edge of a small object.
    if (!g && this.hover && !this.hover.touch && !this.readOnly && !this.spaceDown) {
      const { p } = this.hover;
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = "rgba(255,255,255,.55)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(0, Math.round(p.y) + 0.5); ctx.lineTo(w, Math.round(p.y) + 0.5);
      ctx.moveTo(Math.round(p.x) + 0.5, 0); ctx.lineTo(Math.round(p.x) + 0.5, h);
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }

  paintBox(b, { selected = false, dashed = false, label = "", compact = false }) {
    const ctx = this.ctx;
    const x = b.x1 * this.scale + this.tx;
    const y = b.y1 * this.scale + this.ty;
    const w = (b.x2 - b.x1) * this.scale;
    const h = (b.y2 - b.y1) * this.scale;
    const color = this.colorOf(b.class_key);
    if (selected) {
      ctx.globalAlpha = 0.18;
      ctx.fillStyle = color;
      ctx.fillRect(x, y, w, h);
      ctx.globalAlpha = 1;
    }
    ctx.setLineDash(dashed ? [6, 4] : []);
    ctx.lineWidth = selected ? 3 : 2;
    ctx.strokeStyle = "rgba(0,0,0,.55)";
    ctx.strokeRect(x - 0.5, y - 0.5, w + 1, h + 1);
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
    if (label && compact && ctx.measureText(label).width > w + 24) label = label.split(" ")[0];
    if (label) {
      const tw = ctx.measureText(label).width + 8;
      const ly = y >= 18 ? y - 18 : y + h + 2;
      ctx.globalAlpha = dashed ? 0.75 : 1;
      ctx.fillStyle = color;
      ctx.fillRect(x, ly, tw, 17);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, x + 4, ly + 2);
      ctx.globalAlpha = 1;
    }
  }
}

function cleanBox(b) {
  return normalise({ class_key: b.class_key, x1: +b.x1, y1: +b.y1, x2: +b.x2, y2: +b.y2 });
}

function normalise(b) {
  return { class_key: b.class_key, x1: Math.min(b.x1, b.x2), y1: Math.min(b.y1, b.y2), x2: Math.max(b.x1, b.x2), y2: Math.max(b.y1, b.y2) };
}

function round(v) { return Math.round(v * 10) / 10; }
function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
function distance(a, b) { return Math.hypot(a.x - b.x, a.y - b.y); }
function midpoint(a, b) { return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 }; }
export function isTyping(el) {
  return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
}
