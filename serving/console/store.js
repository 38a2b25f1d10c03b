// What the whole console knows once logged in: who the caller is (GET /v1/me) and the taxonomy
// (GET /v1/taxonomy), plus the class colours and names derived from it.
import { api } from "./api.js";
import { lang } from "./i18n.js";

export const session = { me: null, taxonomy: null };

const colors = new Map();

export async function loadSession() {
  const [me, taxonomy] = await Promise.all([api("/v1/me"), api("/v1/taxonomy")]);
  session.me = me;
  session.taxonomy = taxonomy;
  colors.clear();
  (taxonomy.classes || []).forEach((c, i) => colors.set(c.key, colorAt(i)));
  return session;
}

export function resetSession() {
  session.me = null;
  session.taxonomy = null;
  colors.clear();
}

/** Whether the caller's role allows `permission` (the same table the API enforces). */
export function can(permission) {
  return Boolean(session.me && session.me.permissions && session.me.permissions.includes(permission));
}

// Golden-angle hues give neighbouring classes clearly different colours, and a class keeps its
// colour for as long as the taxonomy file keeps its order.
function colorAt(i) {
  const hue = Math.round((i * 137.508 + 8) % 360);
  return `hsl(${hue} 78% 46%)`;
}

export function classColor(key) {
  if (!colors.has(key)) {
    let hash = 0;
    for (const ch of String(key)) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
    colors.set(key, colorAt(hash % 97));
  }
  return colors.get(key);
}

export function classInfo(key) {
  return (session.taxonomy && session.taxonomy.classes.find((c) => c.key === key)) || null;
}

export function className(key) {
  const c = classInfo(key);
  if (!c) return key;
  return lang() === "en" ? c.name_en : c.name_zh;
}

export function sectorName(key) {
  const s = session.taxonomy && session.taxonomy.sectors.find((x) => x.key === key);
  if (!s) return key || "—";
  return lang() === "en" ? s.name_en : s.name_zh;
}

/** Active classes, those relevant to `sector` first (a curator labelling a dust sample mostly needs
 *  dust classes, but a helmet can appear anywhere). */
export function classesFor(sector) {
  const all = (session.taxonomy ? session.taxonomy.classes : []).filter((c) => c.active !== false);
  if (!sector) return all;
  const itemSector = new Map((session.taxonomy.items || []).map((i) => [i.code, i.sector]));
  const relevant = (c) => c.sector === sector || (c.inspection_items || []).some((code) => itemSector.get(code) === sector);
  return [...all.filter(relevant), ...all.filter((c) => !relevant(c))];
}
