// Hearth's sidebar tab and top-bar meter in ComfyUI. The browser talks only to ComfyUI's /hearth/ routes, which
// forward to the daemon with the user's token (the token never reaches the browser) and take model names, not
// paths. Daemon events arrive as "hearth.cache" and node loads as "hearth.load" on ComfyUI's own websocket.
//
// The extension, not the tab, listens: ComfyUI destroys a sidebar tab's content when it is closed, and the
// events of that time (node loads above all: the daemon keeps only its own) belong in the activity when it
// opens again. The log and the last status live here for the page's life; each panel mounted shows them.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ActivityLog } from "./lib/activity.js";
import { createMeter } from "./lib/meter.js";
import { createPanel } from "./lib/panel.js";

const TAB_ID = "hearth";
const METER_MS = 5000;
const log = new ActivityLog();
const listeners = new Set();
const liveListeners = new Set();
const statusListeners = new Set();
let lastStatusAt = 0;
let clockOffset = 0; // ComfyUI's clock minus the browser's: a node's load is dated as the daemon dates its acquire

// Registered at import, before the first event can arrive.
api.addEventListener("hearth.cache", (e) => {
  const ev = e.detail;
  log.add(ev);
  if (ev?.type === "status") showStatus({ daemon: "up", ...ev });
  if (ev?.type === "down") showStatus({ daemon: "down", reason: ev.reason });
  emit(ev);
});
api.addEventListener("hearth.load", (e) => {
  const ev = { type: "load", time: Date.now() / 1000 + clockOffset, ...e.detail };
  log.add(ev);
  emit(ev);
});
api.addEventListener("reconnecting", () => liveListeners.forEach((fn) => fn("reconnecting")));
api.addEventListener("reconnected", () => liveListeners.forEach((fn) => fn("connected")));

function emit(ev) {
  for (const fn of listeners) {
    try { fn(ev); } catch (err) { console.error("Hearth panel:", err); }
  }
}

function showStatus(doc) {
  for (const fn of statusListeners) {
    try { fn(doc); } catch (err) { console.error("Hearth meter:", err); }
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
  if (!start || !["failed", "outdated", "incompatible"].includes(start.state) || !start.reason
      || start.reason === startSaid) return;
  startSaid = start.reason;
  notify(start.reason, start.state === "failed" ? "error" : "info");
}

const transport = {
  kind: "comfy",
  status: async () => {
    let doc;
    try {
      doc = await call("GET", "/hearth/status");
    } catch (e) {
      doc = { daemon: "down", reason: e.message || String(e) };
    }
    lastStatusAt = Date.now();
    if (typeof doc.now === "number") clockOffset = doc.now - Date.now() / 1000;
    sayStart(doc.start);
    showStatus(doc);
    return doc;
  },
  activity: () => call("GET", "/hearth/activity"),
  models: () => call("GET", "/hearth/models"),
  settings: () => call("GET", "/hearth/settings"),
  changeSettings: (changes) => call("POST", "/hearth/settings", changes),
  // ComfyUI's own setting, written the frontend's way (its settings dialog shows the change); the server reads
  // it from the settings file at every load (nodes/stock_setting.py).
  async setStockLoaders(on) {
    const store = app.extensionManager?.setting;
    if (store?.set) await store.set(STOCK_SETTING, on);
    else await api.storeSetting(STOCK_SETTING, on);
  },
  preload: ({ folder, name }) => call("POST", "/hearth/preload", { folder, name }),
  evict: (seg) => call("POST", "/hearth/evict", seg ? segmentRef(seg) : { all: true }),
  pin: (seg, pinned) => call("POST", "/hearth/pin", { folder: seg.folder, name: seg.name, pinned }),
  connect(onEvent, onLive) {
    listeners.add(onEvent);
    liveListeners.add(onLive);
    onLive("connected");
    return () => { listeners.delete(onEvent); liveListeners.delete(onLive); };
  },
};

function notify(message, level) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity: level === "error" ? "error" : "info", summary: "Hearth", detail: message, life: 6000 });
  else console.log("Hearth:", message);
}

function openTab() {
  const em = app.extensionManager;
  if (em?.command?.execute) em.command.execute(`Workspace.ToggleSidebarTab.${TAB_ID}`);
  else em?.sidebarTab?.toggleSidebarTab?.(TAB_ID);
}

// ---- the top-bar meter ---------------------------------------------------------------------------

const meter = createMeter({ onClick: openTab });
statusListeners.add((doc) => meter.update(doc));
let meterTimer = null;

function showMeter(on) {
  const host = app.menu?.element; // the top bar's group of legacy buttons, in every frontend since 1.2
  if (!on || !host) {
    meter.el.remove();
    clearInterval(meterTimer);
    meterTimer = null;
    return;
  }
  if (!meter.el.isConnected) host.prepend(meter.el);
  if (!meterTimer) {
    transport.status();
    // The panel's own refresh feeds the meter while it is open: poll only when nobody else did lately.
    meterTimer = setInterval(() => {
      if (!document.hidden && Date.now() - lastStatusAt > METER_MS - 500) transport.status();
    }, METER_MS);
  }
}

// ---- registration --------------------------------------------------------------------------------

const STOCK_SETTING = "Hearth.StockLoaders";
let panel = null;
let mountedOn = null;

app.registerExtension({
  name: "hearth.panel",
  settings: [{
    // Read by the server from the default user's comfy.settings.json when it decides (nodes/lifecycle.py).
    id: "Hearth.StartDaemon",
    category: ["Hearth", "Daemon", "StartDaemon"],
    name: "Start the Hearth daemon with ComfyUI",
    tooltip: "When ComfyUI starts (and when a Hearth load finds the daemon gone), start your Hearth daemon, "
      + "which keeps models warm in shared memory and outlives ComfyUI, or replace one older than the pack. "
      + "Off: Hearth uses a daemon you start yourself, else models load the normal way.",
    type: "boolean",
    defaultValue: true,
  }, {
    // Read by the server at every load (nodes/stock_setting.py); HEARTH_STOCK_LOADERS in ComfyUI's environment wins.
    id: STOCK_SETTING,
    category: ["Hearth", "Loaders", "StockLoaders"],
    name: "ComfyUI's own loaders read through Hearth",
    tooltip: "Load Checkpoint, Load LoRA, Load Diffusion Model, Load CLIP and Load VAE read .safetensors files "
      + "through Hearth's shared-memory cache (same tensors; any problem falls back to ComfyUI's own read). "
      + "Applies from the next load.",
    type: "boolean",
    defaultValue: true,
  }, {
    id: "Hearth.Meter",
    category: ["Hearth", "Panel", "Meter"],
    name: "Show Hearth's cache and RAM meter in the top bar",
    tooltip: "Two small bars: the cache's share of its budget and the RAM in use. A click opens Hearth's panel.",
    type: "boolean",
    defaultValue: true,
    onChange: (on) => showMeter(on !== false),
  }],
  setup() {
    if (!document.getElementById("hearth-panel-css")) {
      const link = document.createElement("link");
      link.id = "hearth-panel-css";
      link.rel = "stylesheet";
      link.href = new URL("./lib/panel.css", import.meta.url).href;
      document.head.append(link);
    }
    showMeter(app.extensionManager?.setting?.get?.("Hearth.Meter") !== false);
    if (!app.extensionManager?.registerSidebarTab) {
      console.warn("Hearth: this ComfyUI frontend has no sidebar tabs; the panel is at the daemon's own page.");
      return;
    }
    app.extensionManager.registerSidebarTab({
      id: TAB_ID,
      icon: "hearth-flame",
      title: "Hearth",
      label: "Hearth",
      tooltip: "Hearth: models kept warm in shared memory, RAM and VRAM strategy",
      type: "custom",
      render(el) {
        if (panel && mountedOn === el) return; // the frontend may call render again for the same element
        if (panel) panel.destroy();
        panel = createPanel(el, transport, { notify, log });
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
