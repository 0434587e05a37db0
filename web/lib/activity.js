// The panel's activity: the daemon's kept events (numbered, daemon/activity.py) merged with what the panel
// saw live, and, inside ComfyUI, the nodes' own load reports. Pure exports, no side effects on import.
//
// One load is one line. A Hearth node's load reaches the browser twice: the daemon's "acquire" for
// ComfyUI's process and the node's "hearth.load" report (hit or miss, the node's time, patches reused).
// The report says more, so the acquire it pairs with is left out; an acquire without a report (another
// process, or a report lost with a reloaded page) stays.

import { basename, bytes } from "./dom.js";

export const KEPT = 200;
const PAIR_S = 5; // an acquire belongs to a load report for the same name from about the same moment

/** An activity log: daemon events by sequence number, and load reports (which have none). */
export class ActivityLog {
  constructor() {
    this.events = new Map();
    this.loads = [];
    this.seq = 0;
  }

  /** Take the daemon's history ({seq, events}); a lower seq than seen means a new history: start over. */
  merge(doc) {
    if (!doc || !Array.isArray(doc.events)) return;
    if (typeof doc.seq === "number" && doc.seq < this.seq) { this.events.clear(); this.seq = 0; }
    for (const ev of doc.events) this.add(ev);
  }

  /** One event as it arrives; true when it belongs in the log. */
  add(ev) {
    if (!ev || typeof ev !== "object") return false;
    if (ev.type === "load") {
      this.loads.push(ev);
      if (this.loads.length > KEPT) this.loads.shift();
      return true;
    }
    if (typeof ev.seq !== "number") return false;
    this.events.set(ev.seq, ev);
    this.seq = Math.max(this.seq, ev.seq);
    while (this.events.size > KEPT) this.events.delete(this.events.keys().next().value);
    return true;
  }

  /** Newest first, each load once (see above); `comfyPid` is this ComfyUI's process. */
  lines(comfyPid, limit = 60) {
    const all = [...this.events.values(), ...this.loads].sort((a, b) => (b.time ?? 0) - (a.time ?? 0));
    const paired = new Set();
    for (const load of this.loads) {
      if (load.status !== "hit" && load.status !== "miss") continue;
      const t = load.time ?? 0, since = t - (load.seconds ?? 0) - PAIR_S;
      const match = all.find((e) => e.type === "cache" && e.action === "acquire" && !paired.has(e)
        && e.pid === comfyPid && e.name === load.name && (e.time ?? 0) >= since && (e.time ?? 0) <= t + PAIR_S);
      if (match) paired.add(match);
    }
    return all.filter((e) => !paired.has(e)).slice(0, limit).map(line);
  }
}

/** {time, text, level} of one event. */
export function line(ev) {
  switch (ev.type) {
    case "load": return { time: ev.time, text: loadText(ev), level: ev.status === "fallback" ? "warn" : "" };
    case "strategy":
      return { time: ev.time, text: `VRAM strategy: ${ev.strategy ?? "?"}${ev.model ? ` for ${ev.model}` : ""}`, level: "" };
    case "config": return { time: ev.time, text: configText(ev), level: "" };
    default: return { time: ev.time, text: cacheText(ev), level: ev.action === "failed" ? "error" : "" };
  }
}

export function modelName(ev) {
  return ev.name || basename(ev.path) || "a model";
}

function cacheText(ev) {
  const name = modelName(ev);
  switch (ev.action) {
    case "filling": return `filling ${name} (${bytes(ev.size)}${ev.priority && ev.priority !== "urgent" ? `, ${ev.priority}` : ""})`;
    case "ready": return `${name} ready${typeof ev.seconds === "number" ? ` in ${ev.seconds.toFixed(2)} s` : ""}`;
    case "evicted": return `${name} ${ev.reason || "evicted"}${ev.pending ? " (memory freed when its holders let go)" : ""}`;
    case "acquire": return `${name}: ${ev.hit ? "hit" : "miss"}${ev.by ? ` for ${ev.by}` : ev.pid ? ` for pid ${ev.pid}` : ""}`;
    case "pinned": return `${name} pinned: kept through evictions and refilled at start`;
    case "unpinned": return `${name} unpinned`;
    case "failed": return `${name} failed${ev.error?.message ? `: ${ev.error.message}` : ""}`;
    default: return `${ev.action} ${name}`;
  }
}

const SETTING_NAMES = { budget: "budget", warm_set: "warm set", warm_set_size: "warm set size", prefetch: "prefetch",
  eager_load: "eager load", max_fills: "parallel fills", autostart: "start at login" };

function configText(ev) {
  const changes = ev.changes || {};
  const said = Object.entries(changes).map(([k, v]) => `${SETTING_NAMES[k] || k} ${typeof v === "boolean" ? (v ? "on" : "off") : v}`);
  const rest = (ev.changed || []).filter((k) => !(k in changes));
  if (rest.length) said.push(`${rest.join(", ")} changed`);
  return `settings: ${said.join(", ") || "changed"}`;
}

function loadText(ev) {
  const what = { hit: "cache hit", miss: "cache miss", fallback: "not cached" }[ev.status] || ev.status;
  const secs = typeof ev.seconds === "number" ? ` in ${ev.seconds.toFixed(3)} s` : "";
  const kept = ev.patches_reused ? ", patches reused" : "";
  return `${ev.kind || "model"} ${ev.name || ""}: ${what}${kept}${secs}${ev.status === "fallback" && ev.reason ? ` (${ev.reason})` : ""}`;
}
