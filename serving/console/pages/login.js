// Log in with an API key. The key is checked against GET /v1/me before it is kept; a wrong,
// expired or revoked key shows the API's own reason and is not kept.
import { setKey } from "../api.js";
import { go } from "../app.js";
import { t } from "../i18n.js";
import { can, loadSession, resetSession } from "../store.js";
import { h, icon } from "../ui.js";

export function render(view) {
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off",
    spellcheck: "false", required: true, placeholder: "hl_…", "data-testid": "login-key" });
  const error = h("p", { class: "form-error", role: "alert", "data-testid": "login-error", hidden: true });
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "login-submit" }, t("login.submit"));
  const form = h("form", { class: "login-card", autocomplete: "off" },
    h("div", { class: "login-mark" }, icon("key")),
    h("h1", {}, t("app.title")),
    h("p", { class: "muted" }, t("login.intro")),
    h("label", { for: "api-key" }, t("login.key")),
    input, error, submit,
    h("p", { class: "hint" }, t("login.hint")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    submit.disabled = true;
    error.hidden = true;
    setKey(key);
    try {
      await loadSession();
      input.value = "";
      // An inspector works on inspection records; the library is for those who label it.
      go(can("inspections:write") && !can("annotations:write") ? "#/inspections" : "#/library");
    } catch (e) {
      setKey(null);
      resetSession();
      error.textContent = t("login.failed", { message: e.message });
      error.hidden = false;
      input.select();
    } finally {
      submit.disabled = false;
    }
  });
  view.append(h("div", { class: "login-wrap" }, form));
  input.focus();
}
