// Small DOM and formatting helpers for Hearth's panel. Pure exports, no side effects: ComfyUI imports
// every .js file under web/ as an extension, so this module must do nothing when merely imported.

/** Create an element: h("div.a.b", {title: "x", onclick: fn}, child, "text", [more]). */
export function h(tag, props, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 -> "1.5 KiB"; three significant digits at most. */
export function bytes(n) {
  if (typeof n !== "number" || !isFinite(n)) return "?";
  let i = 0;
  while (Math.abs(n) >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  const digits = i === 0 || Math.abs(n) >= 100 ? 0 : Math.abs(n) >= 10 ? 1 : 2;
  return `${n.toFixed(digits)} ${UNITS[i]}`;
}

/** Seconds since the epoch -> "12 s ago", "3 min ago", "2 h ago", else a date. */
export function ago(epochSeconds, now = Date.now() / 1000) {
  if (typeof epochSeconds !== "number") return "never";
  const s = Math.max(0, now - epochSeconds);
  if (s < 2) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleString();
}

/** "12:04:31" for an event's time. */
export function clock(epochSeconds) {
  const d = typeof epochSeconds === "number" ? new Date(epochSeconds * 1000) : new Date();
  return d.toLocaleTimeString([], { hour12: false });
}

/** The last part of a path (either separator). */
export function basename(p) {
  return String(p ?? "").split(/[\\/]/).filter(Boolean).pop() || String(p ?? "");
}

/** A percentage 0..100 for a bar, clamped. */
export function pct(part, whole) {
  if (!(whole > 0) || typeof part !== "number") return 0;
  return Math.max(0, Math.min(100, (100 * part) / whole));
}

/** A horizontal bar: the filled share and an optional second share (e.g. used vs. budget). */
export function bar(percent, cls = "", label = "") {
  return h(`div.hearth-bar${cls ? "." + cls : ""}`, { role: "progressbar", "aria-valuenow": Math.round(percent),
    "aria-valuemin": 0, "aria-valuemax": 100, title: label || undefined },
  h("div.hearth-bar-fill", { style: { width: `${percent.toFixed(1)}%` } }));
}
