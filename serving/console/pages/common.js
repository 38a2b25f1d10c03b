// Pieces several pages share: authenticated thumbnails, status chips, class chips, and an image with
// its boxes drawn over it in class colours.
import { loadImage, releaseImage } from "../api.js";
import { t } from "../i18n.js";
import { classColor, className } from "../store.js";
import { h } from "../ui.js";

export const STATUSES = ["unlabeled", "in_progress", "submitted", "approved", "rejected"];

export function sampleStatus(s) {
  return s.annotation_status || s.status || "unlabeled";
}

export function statusChip(status) {
  return h("span", { class: ["chip", `status-${status}`], "data-status": status }, t(`status.${status}`));
}

export function classChip(key, extra) {
  return h("span", { class: "class-chip", title: key },
    h("i", { class: "swatch", style: { background: classColor(key) } }), className(key), extra ? ` ${extra}` : null);
}

/** An <img> for an authenticated path, loaded when it scrolls near the viewport and released when
 *  it goes far away again, so a long infinite scroll keeps only nearby thumbnails in memory. */
const nearObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const img = e.target;
    if (e.isIntersecting && !img.dataset.loaded) {
      img.dataset.loaded = "1";
      loadImage(img.dataset.path).then((url) => {
        if (img.dataset.loaded) { img.src = url; img.classList.add("ready"); }
      }).catch(() => img.classList.add("broken"));
    }
  }
}, { rootMargin: "600px 0px" });

const farObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const img = e.target;
    if (!e.isIntersecting && img.dataset.loaded) {
      delete img.dataset.loaded;
      img.removeAttribute("src");
      img.classList.remove("ready");
      releaseImage(img.dataset.path);
    }
  }
}, { rootMargin: "3000px 0px" });

export function lazyImage(path, alt = "") {
  const img = h("img", { alt, class: "lazy", dataset: { path }, draggable: "false" });
  nearObserver.observe(img);
  farObserver.observe(img);
  return img;
}

/** Stop watching (and release) every lazy image inside `root`: called when a page goes away. */
export function releaseLazy(root) {
  for (const img of root.querySelectorAll("img.lazy")) {
    nearObserver.unobserve(img);
    farObserver.unobserve(img);
    if (img.dataset.loaded) {
      delete img.dataset.loaded;
      releaseImage(img.dataset.path);
    }
  }
}

/** The sample's image with `boxes` drawn over it (an SVG in image pixels, so it scales with the
 *  image). Returns {el, setBoxes(boxes), dispose()}. */
export function boxedImage(sampleId, width, height, boxes = [], { dashed = false, maxHeight = "72vh" } = {}) {
  const path = `/v1/samples/${sampleId}/image`;
  const img = h("img", { alt: `#${sampleId}`, draggable: "false" });
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "box-overlay");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  // The width is capped so that the height stays within the viewport; the aspect ratio then keeps
  // the SVG's image pixels exactly over the image's.
  const el = h("div", { class: "boxed-image",
    style: { aspectRatio: `${width} / ${height}`, width: `min(100%, calc(${maxHeight} * ${width / height}))` } }, img, svg);
  let released = false;
  loadImage(path).then((url) => { if (!released) img.src = url; }).catch(() => el.classList.add("broken"));

  function setBoxes(list) {
    while (svg.firstChild) svg.firstChild.remove();
    for (const b of list) {
      const color = classColor(b.class_key);
      const rect = document.createElementNS(NS, "rect");
      rect.setAttribute("x", b.x1);
      rect.setAttribute("y", b.y1);
      rect.setAttribute("width", Math.max(0, b.x2 - b.x1));
      rect.setAttribute("height", Math.max(0, b.y2 - b.y1));
      rect.setAttribute("fill", "none");
      rect.setAttribute("stroke", color);
      rect.setAttribute("stroke-width", "2");
      rect.setAttribute("vector-effect", "non-scaling-stroke");
      if (dashed || b.confidence !== undefined) rect.setAttribute("stroke-dasharray", "6 4");
      const title = document.createElementNS(NS, "title");
      title.textContent = className(b.class_key) + (b.confidence !== undefined ? ` ${(b.confidence * 100).toFixed(0)}%` : "");
      rect.append(title);
      svg.append(rect);
    }
  }
  setBoxes(boxes);
  return { el, setBoxes, dispose() { released = true; releaseImage(path); } };
}

/** Class counts of a box list, for legends and review summaries. */
export function countByClass(boxes) {
  const counts = new Map();
  for (const b of boxes || []) counts.set(b.class_key, (counts.get(b.class_key) || 0) + 1);
  return counts;
}

export function legend(boxes) {
  const counts = countByClass(boxes);
  if (!counts.size) return h("p", { class: "muted" }, t("sample.no_boxes"));
  return h("div", { class: "legend" }, [...counts].map(([k, n]) => classChip(k, `×${n}`)));
}
