// The standalone panel's transport: the daemon's /v1 API with the user's token, served by the daemon
// itself at "/". Pure exports, no side effects on import (ComfyUI loads every .js under web/).
//
// The token arrives in the URL fragment (http://127.0.0.1:PORT/#token=...), which the browser never sends
// to a server; it is kept in sessionStorage (this tab only) and removed from the address bar at once.

import { createPanel } from "./panel.js";
import { h } from "./dom.js";

const KEY = "hearth.token";

/** The token from the fragment (stored, then wiped from the address bar), else the one stored before. */
export function takeToken(win = window) {
  const m = /(?:^#|[#&])token=([^&]+)/.exec(win.location.hash || "");
  if (m) {
    const token = decodeURIComponent(m[1]);
    try { win.sessionStorage.setItem(KEY, token); } catch { /* storage off: the token lives in memory */ }
    win.history.replaceState(null, "", win.location.pathname + win.location.search);
    return token;
  }
  try { return win.sessionStorage.getItem(KEY); } catch { return null; }
}

export function forgetToken(win = window) {
  try { win.sessionStorage.removeItem(KEY); } catch { /* nothing stored */ }
}

export class Unauthorized extends Error {}

/** A transport over the daemon's /v1 routes (same origin). `onUnauthorized` runs when the token is refused. */
export function daemonTransport(token, { onUnauthorized = () => {}, base = "" } = {}) {
  async function call(method, path, body) {
    let resp;
    try {
      resp = await fetch(base + path, {
        method, cache: "no-store",
        headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch {
      throw new Error(`the daemon at ${location.host} does not answer; it may have stopped (start it with "hearth daemon")`);
    }
    let doc = {};
    try { doc = await resp.json(); } catch { /* empty or not JSON */ }
    if (resp.status === 401) {
      onUnauthorized();
      throw new Unauthorized(doc?.error?.message || "the daemon refused the token");
    }
    if (!resp.ok) throw new Error(doc?.error?.message || `HTTP ${resp.status}`);
    return doc;
  }

  return {
    kind: "daemon",
    status: async () => ({ daemon: "up", ...(await call("GET", "/v1/status")) }),
    activity: () => call("GET", "/v1/activity"),
    models: () => call("GET", "/v1/models"),
    settings: async () => {
      const [config, autostart] = await Promise.all([call("GET", "/v1/config"), call("GET", "/v1/autostart")]);
      return { daemon: config, autostart: { enabled: !!autostart.enabled } };
    },
    async changeSettings(changes) {
      const { autostart, ...rest } = changes;
      if (Object.keys(rest).length) await call("POST", "/v1/config", rest);
      if (autostart !== undefined) await call("POST", "/v1/autostart", { enabled: autostart });
      return this.settings();
    },
    preload: ({ path }) => call("POST", "/v1/preload", { paths: [path] }),
    evict: (seg) => call("POST", "/v1/evict", seg ? (seg.path ? { path: seg.path } : { key: seg.key }) : { all: true }),
    pin: (seg, pinned) => call("POST", "/v1/pin", { path: seg.path, pinned }),
    connect(onEvent, onLive) {
      let ws = null, stopped = false, wait = 1000, retry = null;
      const open = () => {
        const proto = location.protocol === "https:" ? "wss" : "ws";
        ws = new WebSocket(`${proto}://${location.host}${base}/v1/events?token=${encodeURIComponent(token)}`);
        ws.onopen = () => { wait = 1000; onLive("connected"); };
        ws.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch { /* not JSON: ignore */ } };
        ws.onclose = () => {
          if (stopped) return;
          onLive("reconnecting");
          retry = setTimeout(open, wait);
          wait = Math.min(wait * 2, 15000);
        };
      };
      open();
      return () => { stopped = true; clearTimeout(retry); if (ws) ws.close(); };
    },
  };
}

/** Mount the standalone page into `root`: the panel when a token is at hand, else a form asking for it. */
export function startStandalone(root, win = window) {
  let panel = null;
  const ask = (why) => {
    if (panel) { panel.destroy(); panel = null; }
    forgetToken(win);
    const input = h("input.hearth-input.hearth-grow", { type: "password", placeholder: "token", autocomplete: "off",
      "aria-label": "Hearth token" });
    root.replaceChildren(h("div.hearth-panel", {},
      h("header.hearth-header", {}, h("h2.hearth-title", {}, "Hearth")),
      h("div.hearth-message.is-error", {}, why),
      h("form.hearth-token", { onsubmit: (e) => { e.preventDefault(); if (input.value.trim()) start(input.value.trim()); } },
        h("p", {}, "Open this page from the tray icon's \u201cOpen panel\u201d, or paste the token from the ",
          h("code", {}, "token"), " file in Hearth's folder (", h("code", {}, "$HEARTH_HOME"), ", by default ",
          h("code", {}, "~/.config/hearth"), ")."),
        h("div.hearth-row", {}, input, h("button.hearth-btn.is-primary", { type: "submit" }, "Open")))));
    input.focus();
  };
  const start = (token) => {
    try { win.sessionStorage.setItem(KEY, token); } catch { /* memory only */ }
    panel = createPanel(root, daemonTransport(token, {
      onUnauthorized: () => setTimeout(() => {
        if (panel) ask("The daemon refused this token (a new token file makes a new token).");
      }, 0),
    }));
  };
  const token = takeToken(win);
  if (token) start(token);
  else ask("This page needs the daemon's token.");
  return () => panel && panel.destroy();
}
