// Hearth's sidebar tab in ComfyUI. The browser talks only to ComfyUI's /hearth/ routes, which forward to
// the daemon with the user's token (the token never reaches the browser) and take model names, not paths.
// Daemon events arrive as "hearth.cache" and node loads as "hearth.load" on ComfyUI's own websocket.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { createPanel } from "./lib/panel.js";

const RECENT_LOADS = 8;
const listeners = new Set();
const liveListeners = new Set();
const recentLoads = [];

// Registered at import, before the first event can arrive.
api.addEventListener("hearth.cache", (e) => emit(e.detail));
api.addEventListener("hearth.load", (e) => {
  const ev = { type: "load", time: Date.now() / 1000, ...e.detail };
  recentLoads.push(ev);
  if (recentLoads.length > RECENT_LOADS) recentLoads.shift();
  emit(ev);
});
api.addEventListener("reconnecting", () => liveListeners.forEach((fn) => fn("reconnecting")));
api.addEventListener("reconnected", () => liveListeners.forEach((fn) => fn("connected")));

function emit(ev) {
  for (const fn of listeners) {
    try { fn(ev); } catch (err) { console.error("Hearth panel:", err); }
  }
}

async function call(method, path, body) {
  const resp = await api.fetchApi(path, {
    method, cache: "no-store",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let doc = {};
  try { doc = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok) throw new Error(doc?.error?.message || `Hearth: HTTP ${resp.status} for ${path}`);
  return doc;
}

const segmentRef = (seg) => (seg.folder && seg.name ? { folder: seg.folder, name: seg.name } : { key: seg.key });

// What the pack did about the daemon at ComfyUI's start or a later load (nodes/lifecycle.py): a start that
// failed or an outdated daemon left running is told once as a toast; the panel's body says it while it lasts.
let startSaid = null;
function sayStart(start) {
  if (!start || !["failed", "outdated"].includes(start.state) || !start.reason || start.reason === startSaid) return;
  startSaid = start.reason;
  notify(start.reason, start.state === "failed" ? "error" : "info");
}

const transport = {
  kind: "comfy",
  status: async () => {
    const doc = await call("GET", "/hearth/status");
    sayStart(doc.start);
    return doc;
  },
  models: () => call("GET", "/hearth/models"),
  preload: ({ folder, name }) => call("POST", "/hearth/preload", { folder, name }),
  evict: (seg) => call("POST", "/hearth/evict", seg ? segmentRef(seg) : { all: true }),
  pin: (seg, pinned) => call("POST", "/hearth/pin", { folder: seg.folder, name: seg.name, pinned }),
  connect(onEvent, onLive) {
    listeners.add(onEvent);
    liveListeners.add(onLive);
    recentLoads.forEach(onEvent);
    onLive("connected");
    return () => { listeners.delete(onEvent); liveListeners.delete(onLive); };
  },
};

function notify(message, level) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity: level === "error" ? "error" : "info", summary: "Hearth", detail: message, life: 6000 });
  else console.log("Hearth:", message);
}

let panel = null;
let mountedOn = null;

app.registerExtension({
  name: "hearth.panel",
  // Read by the server from the default user's comfy.settings.json when it decides (nodes/lifecycle.py).
  settings: [{
    id: "Hearth.StartDaemon",
    category: ["Hearth", "Daemon", "StartDaemon"],
    name: "Start the Hearth daemon with ComfyUI",
    tooltip: "When ComfyUI starts (and when a Hearth load finds the daemon gone), start your Hearth daemon, "
      + "which keeps models warm in shared memory and outlives ComfyUI, or replace one older than the pack. "
      + "Off: Hearth uses a daemon you start yourself, else models load the normal way.",
    type: "boolean",
    defaultValue: true,
  }],
  setup() {
    if (!document.getElementById("hearth-panel-css")) {
      const link = document.createElement("link");
      link.id = "hearth-panel-css";
      link.rel = "stylesheet";
      link.href = new URL("./lib/panel.css", import.meta.url).href;
      document.head.append(link);
    }
    if (!app.extensionManager?.registerSidebarTab) {
      console.warn("Hearth: this ComfyUI frontend has no sidebar tabs; the panel is at the daemon's own page.");
      return;
    }
    app.extensionManager.registerSidebarTab({
      id: "hearth",
      icon: "pi pi-bolt",
      title: "Hearth",
      tooltip: "Hearth: cached models, RAM and VRAM strategy",
      type: "custom",
      render(el) {
        if (panel && mountedOn === el) return; // the frontend may call render again for the same element
        if (panel) panel.destroy();
        panel = createPanel(el, transport, { notify });
        mountedOn = el;
      },
      destroy() {
        if (panel) panel.destroy();
        panel = null;
        mountedOn = null;
      },
    });
  },
});
