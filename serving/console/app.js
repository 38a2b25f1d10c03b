// Entry point: the top bar, the login gate and a hash router (#/library, #/sample/12, ...). Hash
// routes keep deep links working from a static index.html, and keep the API key out of every URL.
import { getKey, releaseAllImages, setKey } from "./api.js";
import { lang, setLang, t } from "./i18n.js";
import { can, loadSession, resetSession, session } from "./store.js";
import { button, clear, clearNotices, h, icon, notify } from "./ui.js";

const ROUTES = {
  login: () => import("./pages/login.js"),
  library: () => import("./pages/library.js"),
  sample: () => import("./pages/sample.js"),
  annotate: () => import("./pages/annotate.js"),
  review: () => import("./pages/review.js"),
  models: () => import("./pages/models.js"),
  jobs: () => import("./pages/jobs.js"),
  inspections: () => import("./pages/inspections.js"),
  record: () => import("./pages/record.js"),
  dashboard: () => import("./pages/dashboard.js"),
  legal: () => import("./pages/legal.js"),
};

const NAV = [
  { route: "inspections", label: "nav.inspections", icon: "camera", permission: "inspections:read" },
  { route: "library", label: "nav.library", icon: "library" },
  { route: "annotate", label: "nav.annotate", icon: "pen", permission: "annotations:write" },
  { route: "review", label: "nav.review", icon: "review", permission: "annotations:review" },
  { route: "models", label: "nav.models", icon: "model", permission: "models:read" },
  { route: "jobs", label: "nav.jobs", icon: "jobs", permission: "jobs:read" },
  { route: "dashboard", label: "nav.dashboard", icon: "spark", permission: "inspections:read" },
  { route: "legal", label: "nav.legal", icon: "review", permission: "taxonomy:read_additions" },
];

let cleanup = null;
let renderToken = 0;

/** "#/sample/12?x=1" -> {name: "sample", args: ["12"], query: URLSearchParams} */
export function parseHash(hash = location.hash) {
  const body = hash.replace(/^#\/?/, "");
  const [path, qs = ""] = body.split("?");
  const [name = "", ...args] = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: name || "library", args, query: new URLSearchParams(qs) };
}

export function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function renderTopbar() {
  const bar = document.getElementById("topbar");
  clear(bar);
  const current = parseHash().name;
  bar.append(h("a", { class: "brand", href: "#/library" },
    h("img", { src: "favicon.svg", alt: "", width: 26, height: 26 }),
    h("span", { class: "brand-text" }, t("app.title"))));
  if (session.me) {
    bar.append(h("nav", { class: "nav", "aria-label": t("nav.main") },
      NAV.filter((n) => !n.permission || can(n.permission)).map((n) =>
        h("a", { href: `#/${n.route}`, class: ["nav-link", current === n.route && "active"],
          "data-route": n.route }, icon(n.icon), h("span", {}, t(n.label))))));
    const me = session.me;
    bar.append(h("div", { class: "who", title: me.permissions.join(", ") },
      h("span", { class: "who-name" }, me.name),
      h("span", { class: "who-org", "data-testid": "me-org" }, me.org_code),
      h("span", { class: ["role-badge", `role-${me.role}`], "data-testid": "me-role" }, t(`role.${me.role}`))));
  } else {
    bar.append(h("div", { class: "spacer" }));
  }
  bar.append(button("globe", lang() === "zh" ? "English" : "中文", {
    class: "ghost lang-toggle", "data-testid": "lang-toggle", title: t("app.language"),
    onclick: () => { setLang(lang() === "zh" ? "en" : "zh"); document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en"; route(); },
  }));
  if (session.me) {
    bar.append(button("logout", t("nav.logout"), { class: "ghost", "data-testid": "logout", onclick: () => logout() }));
  }
}

export function logout(message) {
  setKey(null);
  resetSession();
  releaseAllImages();
  clearNotices();
  if (message) notify(message, "error");
  go("#/login");
}

async function route() {
  const token = ++renderToken;
  const target = parseHash();
  if (cleanup) { try { cleanup(); } catch (e) { console.error(e); } cleanup = null; }
  // Log in first; then load who we are once per session (a reload keeps the key for this tab).
  if (!getKey() && target.name !== "login") { go("#/login"); return; }
  if (getKey() && !session.me) {
    try { await loadSession(); } catch (e) {
      if (token !== renderToken) return;
      if (e.status !== 401) logout(e.message);  // 401 is handled by the hl:unauthorized listener
      return;
    }
  }
  if (token !== renderToken) return;
  if (target.name === "login" && session.me) { go("#/library"); return; }
  const load = ROUTES[target.name];
  renderTopbar();
  const view = document.getElementById("view");
  if (!load) { clear(view).append(h("p", { class: "empty" }, t("app.not_found"))); return; }
  let page;
  try {
    page = await load();
  } catch (e) {
    // A page's module that could not be fetched (a server restart, a flaky link) says so and offers
    // a retry, instead of leaving the previous page on screen as if the click had not happened.
    if (token !== renderToken) return;
    console.error(e);
    clear(view).append(h("div", { class: "empty", role: "alert", "data-testid": "route-error" },
      h("p", {}, t("app.load_failed", { message: e.message || String(e) })),
      button("undo", t("app.retry"), { onclick: () => route() })));
    return;
  }
  if (token !== renderToken) return;
  // Each render gets a container of its own: a page whose render is still awaiting the API when the
  // user (or a test) moves on keeps appending to its own container, now detached, never into the
  // page that replaced it (a late library grid once landed on the review page).
  const root = h("div", { class: "page-root" });
  view.className = `view view-${target.name}`;
  clear(view).append(root);
  cleanup = (await page.render(root, target)) || null;
  if (token !== renderToken && cleanup) { cleanup(); cleanup = null; }
}

window.addEventListener("hl:unauthorized", (event) => {
  // Wrong, expired or revoked key: say why (the API's message) and ask for a key again.
  const message = event.detail && event.detail.message;
  if (parseHash().name === "login" && !session.me) return; // the login page shows its own error
  logout(t("login.session_ended", { message }));
});

window.addEventListener("hashchange", route);
document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
route();
