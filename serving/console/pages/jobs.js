// Background jobs (training, exports): status, progress and logs, polled while any is running.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { append, formatDate, h } from "../ui.js";

const POLL_MS = 2000;
const ACTIVE = new Set(["queued", "running"]);

export async function render(view, { args }) {
  const list = h("div", { class: "jobs", "data-testid": "jobs" });
  const detail = h("section", { class: "panel job-detail", "data-testid": "job-detail" });
  const selected = args[0] ? Number(args[0]) : null;
  view.append(h("div", { class: "toolbar" }, h("h1", {}, t("jobs.title"))), h("div", { class: "jobs-layout" }, list, detail));
  let timer = null;
  let stopped = false;
  let logEl = null;

  async function refresh() {
    let jobs = [];
    try {
      const answer = await api("/v1/jobs");
      jobs = Array.isArray(answer) ? answer : answer.items || [];
      list.replaceChildren(...jobs.map((j) => row(j, j.id === selected)));
      if (!jobs.length) list.append(h("p", { class: "empty" }, t("jobs.empty")));
    } catch (e) {
      list.replaceChildren(h("p", { class: "form-error", role: "alert" }, e.message));
      return;
    }
    let active = jobs.some((j) => ACTIVE.has(j.status));
    if (selected) {
      try {
        const job = await api(`/v1/jobs/${selected}`);
        active = active || ACTIVE.has(job.status);
        renderDetail(job);
      } catch (e) {
        detail.replaceChildren(h("p", { class: "form-error", role: "alert" }, e.message));
      }
    } else if (!detail.firstChild) {
      detail.append(h("p", { class: "muted" }, t("jobs.pick")));
    }
    if (active && !stopped) timer = setTimeout(refresh, POLL_MS);
  }

  function renderDetail(job) {
    // Keep the log's scroll position unless the reader is following its end.
    const follow = !logEl || logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 20;
    logEl = h("pre", { class: "code log", "data-testid": "job-log" }, job.log || t("jobs.no_log"));
    detail.replaceChildren();
    append(detail,
      h("h2", {}, `${t("jobs.job")} #${job.id} · ${job.kind}`),
      progress(job),
      h("dl", { class: "meta" },
        [["jobs.status", t(`job.${job.status}`)], ["jobs.created", formatDate(job.created_at)],
          ["jobs.started", formatDate(job.started_at)], ["jobs.finished", formatDate(job.finished_at)],
          ["jobs.message", job.message || "—"]].map(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v)])),
      job.error ? h("p", { class: "callout warn" }, job.error) : null,
      job.params ? h("details", {}, h("summary", {}, t("jobs.params")), h("pre", { class: "code" }, JSON.stringify(job.params, null, 2))) : null,
      job.result ? h("details", { open: true }, h("summary", {}, t("jobs.result")), h("pre", { class: "code" }, JSON.stringify(job.result, null, 2))) : null,
      h("h3", {}, t("jobs.log")), logEl);
    if (follow) logEl.scrollTop = logEl.scrollHeight;
  }

  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function progress(job) {
  const p = Math.max(0, Math.min(1, Number(job.progress) || 0));
  return h("div", { class: "progress-line" },
    h("progress", { max: 1, value: job.status === "completed" ? 1 : p }),
    h("span", { class: "muted" }, `${Math.round((job.status === "completed" ? 1 : p) * 100)}%`));
}

function row(job, active) {
  return h("a", { class: ["job-row", active && "active"], href: `#/jobs/${job.id}`, "data-job-id": job.id },
    h("div", { class: "job-head" }, h("strong", {}, `#${job.id} ${job.kind}`),
      h("span", { class: ["chip", `job-${job.status}`] }, t(`job.${job.status}`))),
    progress(job),
    h("div", { class: "muted small" }, job.message || formatDate(job.created_at)));
}
