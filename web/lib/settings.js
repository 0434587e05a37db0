// The panel's settings: the daemon's budget and warm set, prefetch, start at login, and (inside ComfyUI)
// whether ComfyUI's own loaders read through Hearth. Every change goes through the daemon's one Service
// (POST /v1/config, /v1/autostart; ComfyUI's /hearth/settings forwards), so the CLI, the tray and both
// panels always agree. Built once and updated in place: a re-render must not eat what the user is typing.
// Pure exports, no side effects on import.

import { bytes, h } from "./dom.js";

const WARM_MODES = [["on", "on"], ["paused", "paused"], ["off", "off (pinned only)"]];

/**
 * transport.settings(): Promise<{daemon: {budget, budget_bytes, warm_set, warm_set_size, prefetch?, eager_load?},
 *   autostart: {enabled}, stock_loaders?: {enabled, source, setting, env}}>
 * transport.changeSettings(changes): Promise<the same>; transport.setStockLoaders?(on): Promise<void>
 */
export function createSettings(transport, { notify, onChanged = () => {} }) {
  let doc = null, busy = false;
  const rows = {};
  const row = (key, label, control, hint) => {
    const hintEl = h("small.hearth-setting-hint", {}, hint || "");
    rows[key] = { control, hint: hintEl,
      el: h("div.hearth-setting", { dataset: { setting: key } }, h("label.hearth-label", { for: control.id }, label),
        h("div.hearth-setting-control", {}, control, hintEl)) };
    return rows[key].el;
  };
  const id = (k) => `hearth-setting-${k}-${Math.random().toString(36).slice(2, 8)}`;
  const text = (k, placeholder) => h("input.hearth-input", { id: id(k), type: "text", placeholder, autocomplete: "off",
    spellcheck: "false", size: 8, onchange: (e) => change({ [k]: e.target.value.trim() || "auto" }) });
  const toggle = (k) => h("input", { id: id(k), type: "checkbox", onchange: (e) => change({ [k]: e.target.checked }) });

  const budget = text("budget", "auto");
  const warm = h("select.hearth-input", { id: id("warm_set"), onchange: (e) => change({ warm_set: e.target.value }) },
    WARM_MODES.map(([v, t]) => h("option", { value: v }, t)));
  const warmSize = text("warm_set_size", "auto");
  const prefetch = toggle("prefetch");
  const autostart = toggle("autostart");
  const stock = h("input", { id: id("stock"), type: "checkbox", onchange: (e) => setStock(e.target.checked) });
  const body = h("div.hearth-settings-grid", {},
    row("budget", "Budget", budget, "how much shared memory the cache may use: a size (12G), a share of RAM (40%) or auto"),
    row("warm_set", "Warm set", warm, "refill the recently used models when the daemon starts"),
    row("warm_set_size", "Warm set size", warmSize, "how much that refill brings back (auto: the budget)"),
    row("prefetch", "Prefetch", prefetch, "fill the models of queued prompts while they wait"),
    row("autostart", "Start at login", autostart, "start the daemon when you log in (systemd user unit and XDG autostart)"),
    row("stock_loaders", "ComfyUI's loaders", stock, ""));
  const el = h("section.hearth-settings", {}, h("h3", {}, "Settings"), body);

  async function change(changes) {
    if (busy) return;
    busy = true;
    paint();
    try {
      doc = await transport.changeSettings(changes);
      onChanged(changes);
    } catch (e) {
      notify(e.message || String(e), "error");
    } finally {
      busy = false;
      paint(true);
    }
  }

  async function setStock(on) {
    if (!transport.setStockLoaders) return;
    busy = true;
    paint();
    try {
      await transport.setStockLoaders(on);
      doc = await transport.settings();
    } catch (e) {
      notify(e.message || String(e), "error");
    } finally {
      busy = false;
      paint(true);
    }
  }

  /** Show `doc`'s values; a field the user is editing keeps its text unless `force`. */
  function paint(force = false) {
    el.hidden = !doc;
    if (!doc) return;
    const d = doc.daemon || {};
    const set = (input, value) => {
      if (force || document.activeElement !== input) input.value = value;
    };
    set(budget, d.budget ?? "auto");
    rows.budget.hint.textContent = `${bytes(d.budget_bytes)} now; a size (12G), a share of RAM (40%) or auto`;
    set(warm, d.warm_set ?? "on");
    set(warmSize, d.warm_set_size ?? "auto");
    rows.warm_set.el.hidden = !("warm_set" in d);
    rows.warm_set_size.el.hidden = !("warm_set_size" in d);
    rows.prefetch.el.hidden = !("prefetch" in d);
    prefetch.checked = !!d.prefetch;
    autostart.checked = !!doc.autostart?.enabled;
    const sl = doc.stock_loaders;
    if (sl) {
      stock.checked = !!sl.enabled;
      stock.disabled = busy || sl.source === "env";
      rows.stock_loaders.hint.textContent = sl.source === "env"
        ? `set by ${sl.env} in ComfyUI's environment, which wins over this setting`
        : "ComfyUI's own loader nodes (Load Checkpoint, Load LoRA, ...) read through Hearth";
    } else {
      stock.hidden = true;
      rows.stock_loaders.hint.textContent = "whether ComfyUI's own loader nodes read through Hearth is a setting of "
        + "each ComfyUI: Settings \u203a Hearth there, or the Hearth tab of its sidebar";
    }
    for (const input of [budget, warm, warmSize, prefetch, autostart]) input.disabled = busy;
  }

  return {
    el,
    async load() {
      try { doc = await transport.settings(); } catch { doc = null; }
      paint(true);
    },
    /** A settings change seen in the activity (another panel, the CLI): read them again. */
    changed() { if (!busy) this.load(); },
  };
}
