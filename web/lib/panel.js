// Hearth's panel: one renderer for two transports (ComfyUI's /hearth/ routes and the daemon's /v1).
// Pure exports, no side effects on import (ComfyUI loads every .js under web/ as an extension).
//
// A transport is an object with:
//   kind: "comfy" | "daemon"
//   status(): Promise<doc>        doc = {daemon: "up", ...the daemon's status} or {daemon: "down", reason}
//   activity(): Promise<{stats, totals, since, seq, events}>   the daemon's kept history (daemon/activity.py)
//   models(): Promise<...>        the preload picker's choices: ComfyUI's {checkpoints: [], loras: []}, or
//                                 the daemon's {roots: [{root, files: [{name, path, size, state}]}]}
//   preload(target), evict(segment | null for all), pin(segment, pinned): Promise<answer>; throw Error(message)
//   settings(), changeSettings(changes), setStockLoaders?(on): see settings.js
//   connect(onEvent, onLive): () => void   events as the daemon sends them ({type: status|fill|cache|strategy|
//                                          config}), plus {type: "down", reason} and {type: "load", ...a node's load}

import { ActivityLog } from "./activity.js";
import { ago, bar, basename, bytes, clock, h, pct } from "./dom.js";
import { createSettings } from "./settings.js";

const REFRESH_MS = 5000;
const PINNED_TIP = "Pinned: never evicted to make room for other models, and filled again when the daemon starts";

export function createPanel(root, transport, options = {}) {
  const notify = options.notify || ((msg, level) => showMessage(msg, level));
  const state = { doc: null, live: "connecting", log: options.log || new ActivityLog(), since: null, models: null,
    message: null, busy: new Set() };
  let timer = null, pending = null, refetch = null, closed = false, stopEvents = null;

  const view = {
    status: h("span.hearth-state", {}, "connecting…"),
    live: h("span.hearth-live", {}),
    summary: h("section.hearth-summary"),
    cache: h("section.hearth-cache"),
    strategy: h("section.hearth-strategy"),
    activity: h("section.hearth-activity"),
    message: h("div.hearth-message", { role: "status" }),
    settings: h("div.hearth-settings-box"),
  };
  const preload = buildPreload();
  const settings = createSettings(transport, { notify, onChanged: () => refreshSoon() });
  view.settings.append(settings.el);
  // Inside ComfyUI the extension feeds a log that outlives this panel (hearth.js); else the panel feeds its own.
  const ownLog = !options.log;
  const panel = h("div.hearth-panel", { dataset: { transport: transport.kind } },
    h("header.hearth-header", {},
      h("h2.hearth-title", {}, h("span.hearth-flame", { "aria-hidden": "true" }), "Hearth"), view.status, view.live,
      h("button.hearth-btn.hearth-refresh", { type: "button", title: "Refresh now", onclick: () => refresh() }, "Refresh")),
    view.message, view.summary, preload.el, view.cache, view.strategy, view.activity, view.settings);
  root.replaceChildren(panel);

  // ---- data ------------------------------------------------------------------------------------

  async function refresh() {
    try {
      state.doc = await transport.status();
    } catch (e) {
      state.doc = { daemon: "down", reason: e.message || String(e) };
    }
    schedule();
  }

  function refreshSoon() {
    clearTimeout(refetch);
    refetch = setTimeout(refresh, 250);
  }

  /** The daemon's history: after a reload, a reconnect, or a daemon restart. */
  async function loadActivity() {
    try {
      const doc = await transport.activity();
      state.log.merge(doc);
      state.since = doc.since ?? state.since;
    } catch { /* the daemon is down: the status says so */ }
    schedule();
  }

  function onEvent(ev) {
    if (!ev || typeof ev !== "object") return;
    const doc = state.doc;
    if (ownLog) state.log.add(ev);
    switch (ev.type) {
      case "status": {
        const { type, ...rest } = ev;
        state.doc = { ...(doc || {}), daemon: "up", ...rest };
        loadActivity(); // a (re)connected stream: what happened meanwhile is in the daemon's history
        settings.changed(); // and the daemon may be another one, with its own settings
        break;
      }
      case "down":
        state.doc = { daemon: "down", reason: ev.reason || "the daemon stopped" };
        refreshSoon(); // the status route says why in its own words
        break;
      case "fill": {
        const seg = doc?.segments?.find((s) => s.key === ev.key);
        if (seg) { seg.filled = ev.done; seg.size = ev.total || seg.size; } else refreshSoon();
        break;
      }
      case "cache":
        if (ev.action === "filling" && doc?.segments && !doc.segments.some((s) => s.key === ev.key)) {
          doc.segments.unshift({ key: ev.key, path: ev.path, name: ev.name, folder: ev.folder, size: ev.size,
            state: "filling", filled: 0, hits: 0, holders: [], held_by: [], pinned: false, last_use: ev.time });
        }
        if (ev.action === "ready" || ev.action === "evicted") preload.reloadModels?.();
        refreshSoon();
        break;
      case "config":
        settings.changed();
        refreshSoon();
        break;
      case "strategy": {
        const { type, time, seq, ...plan } = ev;
        if (doc && doc.daemon !== "down") doc.strategy = plan;
        break;
      }
      case "load":
        break;
      default:
        return;
    }
    schedule();
  }

  function onLive(live) {
    state.live = live;
    if (live === "connected") { refresh(); loadActivity(); settings.load(); }
    schedule();
  }

  async function act(id, fn, done) {
    if (state.busy.has(id)) return;
    state.busy.add(id);
    schedule();
    try {
      const answer = await fn();
      if (done) done(answer);
    } catch (e) {
      notify(e.message || String(e), "error");
    } finally {
      state.busy.delete(id);
      refreshSoon();
    }
  }

  function showMessage(msg, level = "info") {
    state.message = msg ? { msg, level, until: Date.now() + 8000 } : null;
    schedule();
  }

  // ---- rendering --------------------------------------------------------------------------------

  function schedule() {
    if (pending || closed) return;
    pending = setTimeout(() => { pending = null; render(); }, 30);
  }

  function render() {
    const doc = state.doc;
    const up = doc && doc.daemon !== "down";
    view.status.className = `hearth-state ${!doc ? "" : up ? "is-up" : "is-down"}`;
    view.status.textContent = !doc ? "connecting…" : up ? `daemon up · v${doc.version ?? "?"} · pid ${doc.pid ?? "?"}`
      : "daemon down";
    // ComfyUI's relay says whether it hears the daemon's events; the browser's own socket is the other half.
    const live = up && doc.relay === false ? "reconnecting" : state.live;
    view.live.textContent = !up ? "" : live === "connected" ? "live" : live === "connecting" ? "" : "live updates: reconnecting…";
    view.live.className = up ? `hearth-live is-${live}` : "hearth-live";
    const m = state.message && state.message.until > Date.now() ? state.message : null;
    view.message.className = `hearth-message${m ? " is-" + m.level : ""}`;
    view.message.textContent = m ? m.msg : "";
    fill(view.summary, !doc ? [] : up ? summary(doc) : down(doc));
    preload.el.hidden = !up;
    view.settings.hidden = !up;
    fill(view.cache, up ? cache(doc) : []);
    fill(view.strategy, up ? strategy(doc.strategy) : []);
    fill(view.activity, activity());
  }

  function down(doc) {
    const reason = String(doc.reason || "no reason given");
    return [h("div.hearth-down", {},
      h("strong", {}, "Hearth's daemon is not reachable"),
      h("div.hearth-reason", {}, reason.charAt(0).toUpperCase() + reason.slice(1)),
      h("div.hearth-hint", {}, "Models load the normal way meanwhile (no shared cache). This panel reconnects ",
        "by itself once the daemon runs", ...(doc.hint ? [" (", h("code", {}, doc.hint), ")"] : []), "."))];
  }

  function summary(doc) {
    const used = doc.used ?? 0, budget = doc.budget ?? 0;
    const ram = doc.ram || {}, shm = doc.shm || {}, st = doc.totals || doc.stats || {};
    const share = pct(used, budget);
    const first = doc.counted_since ?? state.since;
    const since = first ? ` since ${new Date(first * 1000).toLocaleString()}` : "";
    return [
      h("div.hearth-row", {}, h("span.hearth-label", {}, "Cache"),
        h("span", {}, `${bytes(used)} of ${bytes(budget)} budget (${share.toFixed(0)}%)`)),
      bar(share, share > 90 ? "is-hot" : "", `${bytes(used)} of ${bytes(budget)}`),
      h("div.hearth-facts", {},
        fact("RAM available", `${bytes(ram.available)} of ${bytes(ram.total)}`),
        fact(`${shm.dir || "/dev/shm"} free`,
          `${bytes(shm.free)} of ${bytes(shm.total)}${shm.freeing ? `, ${bytes(shm.freeing)} more being freed` : ""}`,
          shm.free + (shm.freeing || 0) < budget - used
            ? "shared memory is smaller than the room left in the budget" : "")),
      h("div.hearth-stats", { title: `Counted by the daemon${since}; they survive its restarts` },
        stat("hits", st.hits, "loads served from shared memory"),
        stat("misses", st.misses, "loads that had to read the file first"),
        stat("fills", st.fills, "files copied into shared memory"),
        stat("evictions", st.evictions, "models removed from the cache: to make room, by a lowered budget, or by hand")),
    ];
  }

  function cache(doc) {
    const segs = doc.segments || [];
    const head = h("div.hearth-section-head", {},
      h("h3", {}, `Cached models (${segs.length})`),
      segs.length ? h("button.hearth-btn.is-danger", { type: "button", disabled: state.busy.has("evict:*"),
        onclick: () => confirmAll() && act("evict:*", () => transport.evict(null)) }, "Evict all") : null);
    if (!segs.length) {
      return [head, h("p.hearth-empty", {}, "Nothing cached yet. Models enter the cache when a Hearth loader ",
        "loads them, or when you preload them.")];
    }
    const rows = segs.map(segmentRow);
    return [head, h("div.hearth-table", { role: "table" },
      h("div.hearth-tr.hearth-th", { role: "row" }, ["Model", "Size", "State", "Hits", "Last use", "Held by", ""]
        .map((t) => h("span", { role: "columnheader" }, t))), rows)];
  }

  function segmentRow(s) {
    const name = s.name || basename(s.path);
    const where = s.path || (s.folder ? `${s.folder}/${s.name}` : name);
    const filling = s.state === "filling";
    const share = pct(s.filled, s.size);
    const stateCell = filling
      ? h("span.hearth-filling", {}, bar(share, "is-fill", `${bytes(s.filled)} of ${bytes(s.size)}`),
        h("small", {}, `filling ${share.toFixed(0)}%`))
      : h("span", { class: `hearth-badge is-${s.state}`,
        title: s.state === "stale" ? "evicted; its memory goes when the last holder lets go" : undefined },
      s.state === "stale" ? "evicting" : s.state,
      typeof s.fill_seconds === "number" ? h("small", {}, ` in ${s.fill_seconds.toFixed(1)} s`) : null);
    const holders = s.holders || [];
    const heldBy = s.held_by?.length ? s.held_by : holders.map((p) => `pid ${p}`);
    const inUse = holders.length > 0 && s.state !== "filling";
    const canPin = transport.kind === "daemon" ? !!s.path : !!(s.folder && s.name);
    const pinId = `pin:${s.key}`, evictId = `evict:${s.key}`;
    return h("div.hearth-tr", { role: "row", dataset: { key: s.key, state: s.state, pinned: s.pinned ? "yes" : "no" } },
      h("span.hearth-name", { title: where, role: "cell" }, name,
        s.folder ? h("small.hearth-folder", {}, ` ${s.folder}`) : null,
        s.pinned ? h("span.hearth-badge.is-pinned", { title: PINNED_TIP }, "pinned") : null),
      h("span", { role: "cell", dataset: { label: "Size" } }, bytes(s.size)),
      h("span", { role: "cell", dataset: { label: "State" } }, stateCell),
      h("span", { role: "cell", dataset: { label: "Hits" } }, String(s.hits ?? 0)),
      h("span", { role: "cell", dataset: { label: "Last use" },
        title: inUse ? "mapped by a process right now (ComfyUI keeps a loaded model and reuses it without loading again)" : undefined },
      inUse ? h("span.hearth-inuse", {}, "in use") : ago(s.last_use)),
      h("span.hearth-holders", { role: "cell", dataset: { label: "Held by" },
        title: heldBy.length ? `mapped now by ${heldBy.join(", ")}` : "no process maps it" },
      heldBy.length ? heldBy.join(", ") : "—"),
      h("span.hearth-actions", { role: "cell" },
        h("button.hearth-btn", { type: "button", disabled: !canPin || state.busy.has(pinId) || filling,
          title: canPin ? (s.pinned ? "Let LRU evict it again" : "Never evict it; refill it when the daemon starts")
            : "Only models ComfyUI knows can be pinned from here",
          onclick: () => act(pinId, () => transport.pin(s, !s.pinned)) }, s.pinned ? "Unpin" : "Pin"),
        h("button.hearth-btn.is-danger", { type: "button", disabled: state.busy.has(evictId),
          title: "Remove it from shared memory now (processes that map it keep it until they let go)",
          onclick: () => act(evictId, () => transport.evict(s)) }, "Evict")));
  }

  function strategy(plan) {
    const head = h("h3", {}, "VRAM strategy");
    if (!plan || !plan.strategy) {
      return [head, h("p.hearth-empty", {}, "No plan reported yet: the Hearth VRAM Budget node reports one when it runs.")];
    }
    const figures = [["VRAM", plan.vram_bytes], ["resident", plan.resident_bytes], ["RAM", plan.ram_bytes]]
      .filter(([, v]) => typeof v === "number").map(([k, v]) => fact(k, bytes(v)));
    return [head,
      h("div.hearth-row", {}, h("span.hearth-badge.is-strategy", {}, plan.strategy),
        plan.model ? h("span.hearth-model", {}, String(plan.model)) : null,
        plan.reported ? h("small.hearth-muted", {}, ` ${ago(plan.reported)}`) : null),
      figures.length ? h("div.hearth-facts", {}, figures) : null,
      plan.explanation ? h("p.hearth-explanation", {}, String(plan.explanation)) : null,
      (plan.warnings || []).length ? h("ul.hearth-warnings", {}, plan.warnings.map((w) => h("li", {}, String(w)))) : null];
  }

  function activity() {
    const lines = state.log.lines(state.doc?.comfy_pid);
    if (!lines.length) return [];
    return [h("h3", {}, "Recent activity"), h("ul.hearth-log", {},
      lines.map((a) => h(`li${a.level ? ".is-" + a.level : ""}`, {}, h("time", {}, clock(a.time)), " ", a.text)))];
  }

  // ---- the preload control ------------------------------------------------------------------------

  function buildPreload() {
    const msg = (answer) => {
      const refused = answer?.refused || [];
      if (refused.length) notify(refused.map((r) => r.message || r.code).join("; "), "error");
      else if ((answer?.queued || []).length) notify(`Preloading ${answer.queued.map((q) => q.name || basename(q.path)).join(", ")}`, "info");
    };
    // The daemon's page: one choice per allowed folder; ComfyUI: its checkpoints and LoRAs.
    const folder = h("select.hearth-input", { "aria-label": transport.kind === "comfy" ? "Model folder" : "Allowed folder" });
    const list = h("datalist", { id: `hearth-models-${Math.random().toString(36).slice(2)}` });
    const name = h("input.hearth-input.hearth-grow", { type: "text", list: list.id, placeholder: "model name…",
      "aria-label": "Model name", autocomplete: "off", spellcheck: "false" });
    const choices = () => {
      const m = state.models;
      if (!m) return [];
      if (transport.kind === "comfy") return (m[folder.value] || []).map((n) => ({ name: n }));
      return m.roots?.[Number(folder.value)]?.files || [];
    };
    const fill = () => {
      const m = state.models;
      if (transport.kind === "comfy") {
        if (!folder.options.length) folder.append(h("option", { value: "checkpoints" }, "Checkpoint"), h("option", { value: "loras" }, "LoRA"));
      } else {
        const roots = m?.roots || [];
        const keep = folder.value;
        folder.replaceChildren(...roots.map((r, i) => h("option", { value: String(i), title: r.root }, shortRoot(r.root))));
        if (keep && Number(keep) < roots.length) folder.value = keep;
        folder.hidden = roots.length < 2;
      }
      const items = choices();
      list.replaceChildren(...items.map((f) => h("option", { value: f.name },
        f.size ? `${bytes(f.size)}${f.state ? ` · ${f.state === "ready" ? "cached" : f.state}` : ""}` : "")));
      const one = items.length === 1;
      const what = transport.kind === "comfy" ? (folder.value === "loras" ? (one ? "LoRA" : "LoRAs")
        : (one ? "checkpoint" : "checkpoints")) : (one ? "model" : "models");
      name.placeholder = m ? `${items.length} ${what}…` : "model name…";
    };
    folder.addEventListener("change", fill);
    const target = (typed) => {
      if (transport.kind === "comfy") return { folder: folder.value, name: typed };
      const found = choices().find((f) => f.name === typed);
      if (found) return { path: found.path };
      if (typed.startsWith("/")) return { path: typed }; // a path typed by hand: the daemon checks it
      throw new Error(`no model named ${typed} in ${state.models?.roots?.[Number(folder.value)]?.root ?? "the allowed folders"}`);
    };
    const go = (e) => {
      e.preventDefault();
      const typed = name.value.trim();
      if (!typed) return;
      act("preload", async () => transport.preload(target(typed)), (a) => { msg(a); if (!(a?.refused || []).length) name.value = ""; });
    };
    const el = h("form.hearth-preload", { onsubmit: go }, h("h3", {}, "Preload"),
      h("div.hearth-row", {}, folder, name, list, h("button.hearth-btn.is-primary", { type: "submit" }, "Preload")));
    const load = () => transport.models().then((m) => { state.models = m; fill(); }, () => {});
    fill();
    load();
    name.addEventListener("focus", () => load());
    return { el, reloadModels: load };
  }

  // ---- life cycle ---------------------------------------------------------------------------------

  stopEvents = transport.connect(onEvent, onLive); // "connected" loads the status, history and settings
  refresh();
  timer = setInterval(refresh, options.refreshMs || REFRESH_MS);

  return {
    refresh,
    onEvent,
    destroy() {
      closed = true;
      clearInterval(timer);
      clearTimeout(pending);
      clearTimeout(refetch);
      if (stopEvents) stopEvents();
      panel.remove();
    },
  };
}

function fill(el, children) {
  el.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
}

function fact(label, value, warn = "") {
  return h(`span.hearth-fact${warn ? ".is-warn" : ""}`, { title: warn || undefined },
    h("span.hearth-label", {}, label), " ", h("span", {}, value));
}

function stat(label, value, title) {
  return h("span.hearth-stat", { title, dataset: { stat: label } }, h("b", {}, String(value ?? 0)), " ", label);
}

/** The last two parts of a folder: enough to tell roots apart without the user's whole home path. */
function shortRoot(root) {
  const parts = String(root).split("/").filter(Boolean);
  return parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : String(root);
}

function confirmAll() {
  return typeof window.confirm !== "function" || window.confirm("Evict every cached model from shared memory?");
}
