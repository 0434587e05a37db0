// The compact meter for ComfyUI's top bar, where resource-monitor packs keep theirs: the cache's share of its
// budget and the machine's RAM in use, two small bars; a click opens Hearth's sidebar tab. Pure exports.

import { bytes, h, pct } from "./dom.js";

export function createMeter({ onClick }) {
  const cacheFill = h("span.hearth-meter-fill");
  const ramFill = h("span.hearth-meter-fill");
  const cacheText = h("span.hearth-meter-value");
  const ramText = h("span.hearth-meter-value");
  const item = (label, value, fillEl) => h(`span.hearth-meter-item.is-${label.toLowerCase()}`, {},
    h("span.hearth-meter-head", {}, h("span.hearth-meter-label", {}, label), value),
    h("span.hearth-meter-bar", {}, fillEl));
  const el = h("button.hearth-meter", { type: "button", onclick: onClick, "aria-label": "Hearth: open the panel" },
    h("span.hearth-flame", { "aria-hidden": "true" }),
    item("cache", cacheText, cacheFill), item("RAM", ramText, ramFill));

  return {
    el,
    /** Show a status document ({daemon: "up", used, budget, ram, segments} or {daemon: "down", reason}). */
    update(doc) {
      const up = doc && doc.daemon !== "down";
      el.classList.toggle("is-down", !up);
      if (!up) {
        cacheText.textContent = "off";
        ramText.textContent = "";
        cacheFill.style.width = ramFill.style.width = "0%";
        el.title = `Hearth's daemon is not reachable${doc?.reason ? `: ${doc.reason}` : ""}. Click for the panel.`;
        return;
      }
      const used = doc.used ?? 0, budget = doc.budget ?? 0;
      const ram = doc.ram || {};
      const ramUsed = (ram.total ?? 0) - (ram.available ?? 0);
      const cacheShare = pct(used, budget), ramShare = pct(ramUsed, ram.total);
      cacheText.textContent = `${bytes(used)}`;
      ramText.textContent = `${ramShare.toFixed(0)}%`;
      cacheFill.style.width = `${cacheShare.toFixed(1)}%`;
      ramFill.style.width = `${ramShare.toFixed(1)}%`;
      cacheFill.classList.toggle("is-hot", cacheShare > 90);
      ramFill.classList.toggle("is-hot", ramShare > 90);
      const held = (doc.segments || []).filter((s) => (s.holders || []).length).length;
      el.title = `Hearth cache: ${bytes(used)} of ${bytes(budget)} budget in ${(doc.segments || []).length} models`
        + ` (${held} in use)\nRAM: ${bytes(ramUsed)} of ${bytes(ram.total)} in use\nClick for Hearth's panel.`;
    },
  };
}
