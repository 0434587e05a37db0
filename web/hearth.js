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

const transport = {
  kind: "comfy",
  status: () => call("GET", "/hearth/status"),
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
