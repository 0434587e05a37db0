// The Hearth LoRA Swapper's stack: rows the user adds, removes, reorders and turns on and off.
//
// The node has one input for the whole stack, `loras` (type HEARTH_LORA_STACK, nodes/lora.py). This script
// gives it a widget: a list of rows, each a LoRA file, an on/off switch and its strengths on the model and on
// CLIP, applied top to bottom. The widget's value is the list of rows {on, lora, strength_model, strength_clip};
// the saved workflow keeps it as the node's one widget value, and the prompt sends it as {"__value__": rows}
// (ComfyUI reads a bare list as a link). Every change replaces the list, never edits it: the frontend keeps
// earlier serialisations for undo, and they must not change under it.
//
// Rows are HTML (a DOM widget): a real checkbox, select and number fields work with the keyboard, in the
// classic canvas and in the Vue nodes of newer frontends alike. Workflows saved with the first version's
// four fixed slots (12 widget values: name, model strength, clip strength, four times) become rows on load.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "HearthLoraSwapper";
const TYPE = "HEARTH_LORA_STACK";
const NONE = "None";
const LEGACY_SLOTS = 4;
const ROW_PX = 26;
const HEAD_PX = 20;
const ADD_PX = 30;
const LIST_MS = 5000; // the LoRA list is read again at most this often (when the pointer comes to a stack)
const STYLE_ID = "hearth-lora-stack-style";

let loraList = [];
let listRead = 0;
let listReading = null;

async function readLoraList(force = false) {
  if (!force && Date.now() - listRead < LIST_MS) return loraList;
  listReading ??= (async () => {
    try {
      const resp = await api.fetchApi("/models/loras", { cache: "no-store" });
      if (resp.ok) {
        loraList = await resp.json();
        listRead = Date.now();
      }
    } catch (err) {
      console.warn("Hearth LoRA stack: could not read the LoRA list", err);
    } finally {
      listReading = null;
    }
    return loraList;
  })();
  return listReading;
}

const missing = (name) => listRead > 0 && !loraList.includes(name);

function row(lora, strengthModel = 1, strengthClip = 1, on = true) {
  return { on, lora, strength_model: strengthModel, strength_clip: strengthClip };
}

function cleanRows(value) {
  if (!Array.isArray(value)) return [];
  return value.filter((r) => r && typeof r === "object" && typeof r.lora === "string").map((r) => row(
    r.lora, Number.isFinite(r.strength_model) ? r.strength_model : 1,
    Number.isFinite(r.strength_clip) ? r.strength_clip : 1, r.on !== false));
}

/** The rows of a first-version node's 12 widget values, or null when `values` are not that. */
function legacyRows(values) {
  if (!Array.isArray(values) || values.length !== 3 * LEGACY_SLOTS) return null;
  const rows = [];
  for (let i = 0; i < LEGACY_SLOTS; i++) {
    const [name, sm, sc] = values.slice(3 * i, 3 * i + 3);
    if (typeof name !== "string" || typeof sm !== "number" || typeof sc !== "number") return null;
    if (name !== NONE) rows.push(row(name, sm, sc));
  }
  return rows;
}

function addStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = `
.hearth-lora-stack { display: flex; flex-direction: column; gap: 2px; box-sizing: border-box; font: 12px sans-serif;
  color: var(--input-text, #ddd); padding: 0 2px; overflow: hidden; }
.hearth-lora-head, .hearth-lora-row { display: grid; align-items: center; gap: 4px;
  grid-template-columns: 18px minmax(60px, 1fr) 52px 52px 20px 20px; }
.hearth-lora-head { height: ${HEAD_PX - 2}px; color: var(--descrip-text, #999); font-size: 11px; }
.hearth-lora-row { height: ${ROW_PX - 2}px; }
.hearth-lora-row[data-on="false"] > :not(.hearth-lora-on):not(.hearth-lora-remove) { opacity: 0.45; }
.hearth-lora-row[data-missing="true"] .hearth-lora-name { outline: 1px solid #d9534f; }
.hearth-lora-stack select, .hearth-lora-stack input[type=number], .hearth-lora-stack button {
  box-sizing: border-box; height: 22px; min-width: 0; margin: 0; font: inherit; color: inherit;
  background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #444); border-radius: 4px; }
.hearth-lora-stack input[type=number] { padding: 0 2px; text-align: right; }
.hearth-lora-stack input[type=checkbox] { margin: 0; width: 14px; height: 14px; }
.hearth-lora-stack button { padding: 0; cursor: pointer; }
.hearth-lora-stack button:hover { filter: brightness(1.3); }
.hearth-lora-add { height: ${ADD_PX - 6}px !important; margin-top: 2px !important; }`;
  document.head.appendChild(style);
}

function element(tag, props = {}, children = []) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el) el[k] = v;
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

function strengthField(cls, value, title, onChange) {
  const input = element("input", { type: "number", className: cls, step: "0.05", min: "-100", max: "100", title,
                                   value: Number(value).toFixed(2) });
  input.addEventListener("change", () => {
    const v = Number.parseFloat(input.value);
    if (Number.isFinite(v)) onChange(Math.min(100, Math.max(-100, v)));
    else input.value = Number(value).toFixed(2);
  });
  return input;
}

/** The stack widget of `node`: its element, value (the rows) and size follow every change. */
function addStackWidget(node, inputName) {
  addStyle();
  let rows = [];
  const root = element("div", { className: "hearth-lora-stack" });
  const height = () => (rows.length ? HEAD_PX + rows.length * ROW_PX : 0) + ADD_PX;

  const set = (next) => {
    rows = next;
    render();
    widget.callback?.(widget.value);
    fitNode();
    node.graph?.setDirtyCanvas?.(true, true);
  };
  const change = (i, patch) => set(rows.map((r, j) => (j === i ? { ...r, ...patch } : r)));

  function fitNode() {
    const size = node.computeSize?.();
    if (size && node.setSize) node.setSize([Math.max(node.size[0], size[0]), size[1]]);
  }

  function select(current, onPick) {
    // A LoRA the folders do not have (a shared workflow's) stays chosen, marked missing once the list is read
    const names = loraList.includes(current) ? loraList : [current, ...loraList];
    const sel = element("select", { className: "hearth-lora-name", title: current },
      names.map((n) => element("option", { value: n, textContent: missing(n) ? `${n} (missing)` : n })));
    sel.value = current;
    sel.addEventListener("change", () => onPick(sel.value));
    return sel;
  }

  function render() {
    const children = [];
    if (rows.length) {
      const all = element("input", { type: "checkbox", className: "hearth-lora-all", title: "All on or off",
                                     checked: rows.every((r) => r.on) });
      all.indeterminate = !all.checked && rows.some((r) => r.on);
      all.addEventListener("change", () => set(rows.map((r) => ({ ...r, on: all.checked }))));
      children.push(element("div", { className: "hearth-lora-head" }, [
        all, element("span", { textContent: "LoRA" }), element("span", { textContent: "model" }),
        element("span", { textContent: "clip" }), element("span"), element("span")]));
    }
    rows.forEach((r, i) => {
      const on = element("input", { type: "checkbox", className: "hearth-lora-on", checked: r.on,
                                    title: r.on ? "On: applied" : "Off: skipped" });
      on.addEventListener("change", () => change(i, { on: on.checked }));
      const up = element("button", { className: "hearth-lora-up", textContent: "↑", title: "Move up",
                                     disabled: i === 0 });
      up.addEventListener("click", () => {
        const next = rows.slice();
        [next[i - 1], next[i]] = [next[i], next[i - 1]];
        set(next);
      });
      const remove = element("button", { className: "hearth-lora-remove", textContent: "✕", title: "Remove" });
      remove.addEventListener("click", () => set(rows.filter((_, j) => j !== i)));
      children.push(element("div", {
        className: "hearth-lora-row",
        dataset: { index: String(i), on: String(r.on), missing: String(missing(r.lora)) },
      }, [
        on,
        select(r.lora, (name) => change(i, { lora: name })),
        strengthField("hearth-lora-model", r.strength_model, "Strength on the model",
                      (v) => change(i, { strength_model: v })),
        strengthField("hearth-lora-clip", r.strength_clip, "Strength on CLIP", (v) => change(i, { strength_clip: v })),
        up, remove,
      ]));
    });
    const add = element("button", { className: "hearth-lora-add", textContent: "+ Add LoRA" });
    add.addEventListener("click", async () => {
      const list = await readLoraList(true);
      if (!list.length) {
        add.textContent = "No LoRA in the loras folders";
        setTimeout(() => { add.textContent = "+ Add LoRA"; }, 3000);
        return;
      }
      const unused = list.find((n) => !rows.some((r) => r.lora === n)) ?? list[0];
      set([...rows, row(unused)]);
      root.querySelector(".hearth-lora-row:last-of-type .hearth-lora-name")?.focus();
    });
    children.push(add);
    root.replaceChildren(...children);
  }

  root.addEventListener("pointerenter", async () => {
    const before = listRead;
    await readLoraList();
    if (listRead !== before) render();
  });

  const widget = node.addDOMWidget(inputName, TYPE, root, {
    getValue: () => rows,
    setValue: (value) => { rows = cleanRows(value); render(); },
    getMinHeight: height,
    getMaxHeight: height,
    getHeight: height,
    hideOnZoom: true,
  });
  widget.serializeValue = () => ({ __value__: rows.map((r) => ({ ...r })) });
  widget.hearthSet = set; // for tests and other scripts: replace the rows as the user would
  render();
  readLoraList().then(render);
  return widget;
}

app.registerExtension({
  name: "Hearth.LoraStack",
  getCustomWidgets() {
    return { [TYPE]: (node, inputName) => ({ widget: addStackWidget(node, inputName) }) };
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const configure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = configure?.apply(this, arguments);
      const old = legacyRows(info?.widgets_values);
      const widget = this.widgets?.find((w) => w.type === TYPE);
      if (old && widget) widget.hearthSet(old); // a first-version node: its slots become rows
      return result;
    };
  },
});
