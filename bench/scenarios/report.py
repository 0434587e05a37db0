"""The scenario results as rows (stock beside Hearth, ratio, target), as a Markdown table, and as notes.

Every figure comes from the JSON a run wrote, so the table and the chart can be redrawn from it. A missed
target carries a `why`: what the measurements of this benchmark's development showed the time or memory
to be made of (see bench/RESULTS.md), with this run's figures where they tell.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

GIB = 1 << 30
SWITCH_LIMIT_S = 0.050  # scenario 4's target: a Hearth LoRA switch under 50 ms of node time
SIDES = ("stock", "hearth")


@dataclass
class Row:
    scenario: str
    label: str
    unit: str  # "s", "GiB", "GB/s"
    stock: list[float] | None
    hearth: list[float] | None
    target: str = ""
    met: bool | None = None
    stock_is: str = ""  # when the stock column holds a reference rather than stock ComfyUI, what it is
    chart: str | None = None  # the chart panel ("time", "memory") or None
    measure: str = ""  # what the target is checked on, where it is not Hearth / stock (e.g. "0.10x ckpt")
    why: str = ""  # said when the target is missed

    @property
    def ratio(self) -> float | None:
        if not self.stock or not self.hearth or statistics.median(self.stock) == 0:
            return None
        return statistics.median(self.hearth) / statistics.median(self.stock)

    @property
    def verdict(self) -> str:
        """The chart's right-hand column: the ratio (or the measure the target uses) and met/MISSED."""
        text = self.measure or (f"{self.ratio:.2f}x" if self.ratio is not None else "")
        return text + ("" if self.met is None else " met" if self.met else " MISSED")


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _ratio_target(row: Row, bound: float, why: str) -> Row:
    row.target, row.met, row.why = f"<= {bound:g}x", row.ratio is not None and row.ratio <= bound, why
    return row


def _series(result: dict, key: Callable[[dict], float]) -> dict[str, list[float]]:
    return {side: [key(r) for r in result[side]] for side in SIDES}


def _restart_rows(s: dict, n: str) -> list[Row]:
    """Scenarios 1 and 2: the loader alone in a fresh process (ComfyUI's clock, see loading.py)."""
    what = "page cache warm" if n == "1" else "page cache dropped"
    t = _series(s[n], lambda r: r["server_s"])
    why = ("Hearth's loader is ComfyUI building its ~1,200 modules (~0.2 s of Python, measured in-process) "
           "plus the segment's acquire; the ratio is bounded by how slow stock is")
    if n == "2" and "1" in s:
        lost = _median(t["stock"]) - _median(_series(s["1"], lambda r: r["server_s"])["stock"])
        why += (f"; losing the page cache cost stock only {lost:+.1f} s here (a fast disk), while Hearth's "
                f"segment is not page cache and its time does not change")
    rows = [_ratio_target(Row(n, f"restart, {what}: loader node", "s", t["stock"], t["hearth"], chart="time"),
                          0.15 if n == "1" else 0.1, why)]
    after = _series(s[n], lambda r: r["after"]["private"] / GIB)
    mem = Row(n, f"restart, {what}: private memory after load", "GiB", after["stock"], after["hearth"],
              chart="memory" if n == "1" else None)
    rows.append(_ratio_target(mem, 0.2, "ComfyUI's own runtime (~0.4 GiB, the same for both) dominates "
                                        "Hearth's figure") if n == "1" else mem)
    added = _series(s[n], lambda r: (r["after"]["private"] - r["before"]["private"]) / GIB)
    rows.append(Row(n, "↳ of which the load added", "GiB", added["stock"], added["hearth"]))
    return rows


def _sharing_rows(r3: dict, ckpt: int) -> list[Row]:
    """Scenario 3: totals at 1, 2, 4 processes and what each further process adds."""
    st, he = r3["stock"], r3["hearth"]
    rows = []
    for count in sorted(set(st["counts"]) | set(he["counts"]), key=int):
        rows.append(Row("3", f"{count} process{'es' if count != '1' else ''}: total PSS", "GiB",
                        _pick(st["counts"], count, lambda c: c["total_pss"] / GIB),
                        _pick(he["counts"], count, lambda c: c["total_pss"] / GIB), chart="memory"))
        rows.append(Row("3", "↳ private memory of each", "GiB",
                        _pick(st["counts"], count, lambda c: [p["private"] / GIB for p in c["processes"]]),
                        _pick(he["counts"], count, lambda c: [p["private"] / GIB for p in c["processes"]])))
    for key, when in (("added_load", "loaded"), ("added", "after its first prompt")):
        added = Row("3", f"PSS each process after the first adds, {when}", "GiB",
                    [a / GIB for a in st[key][1:]] or None, [a / GIB for a in he[key][1:]] or None,
                    chart="memory")
        if added.hearth:
            per_ckpt = _median(added.hearth) * GIB / ckpt
            added.target, added.met = f"Hearth {per_ckpt:.2f}x checkpoint <= 0.2x", per_ckpt <= 0.2
            added.measure = f"{per_ckpt:.2f}x ckpt"
            added.why = ("the fp16 weights are cast to fp32 per op at every step on CPU; the allocator keeps "
                         "those buffers after the prompt" if key == "added" else
                         "copies made at load: a dtype the build could not keep narrow")
        rows.append(added)
    return rows


def _switching_rows(r4: dict) -> list[Row]:
    """Scenario 4: the LoRA node on every switch (A, B, A), on a LoRA's first use and on the switch back
    to one used before; the prompt end to end; and the way back to none."""
    sw = {k: [x for x in r4[k]["steps"] if x["lora"] != "none"] for k in SIDES}
    off = {k: [x for x in r4[k]["steps"] if x["lora"] == "none"] for k in SIDES}
    node = Row("4", "LoRA switch (A->B->A): LoRA node", "s", [x["node_s"] for x in sw["stock"]],
               [x["node_s"] for x in sw["hearth"]], chart="time")
    if node.hearth:
        own = [e["seconds"] for x in sw["hearth"] for e in x["hearth_loads"]]
        node.target = f"Hearth median < {SWITCH_LIMIT_S * 1000:g} ms"
        node.met = _median(node.hearth) < SWITCH_LIMIT_S
        node.measure = f"Hearth {_median(node.hearth) * 1000:.0f} ms"
        node.why = (f"the node's own clock says {_median(own) * 1000:.0f} ms; the rest is ComfyUI around "
                    "the node" if own else "")
    rows = [node]
    for label, first in (("LoRA's first use in the process (A, B): LoRA node", True),
                         ("LoRA switch back (B->A): LoRA node", False)):
        part = {k: [x["node_s"] for x in sw[k] if x.get("first_use", True) is first] for k in SIDES}
        if part["stock"] and part["hearth"]:
            rows.append(Row("4", label, "s", part["stock"], part["hearth"]))
    prompt = Row("4", "LoRA switch (A->B->A): prompt end to end", "s", [x["prompt_s"] for x in sw["stock"]],
                 [x["prompt_s"] for x in sw["hearth"]], chart="time")
    none = Row("4", "LoRA off (-> none): prompt end to end", "s", [x["prompt_s"] for x in off["stock"]],
               [x["prompt_s"] for x in off["hearth"]])
    none.target, none.met = "image = base image", all(x["equals_base"] for x in off["hearth"])
    none.why = "ComfyUI did not restore the base weights after the LoRA"
    return [*rows, prompt, none]


def _first_prompt_rows(r5: dict) -> list[Row]:
    t = _series(r5, lambda r: r["prompt_s"])
    rows = [Row("5", "first prompt after start (txt2img 64x64, 1 step)", "s", t["stock"], t["hearth"],
                chart="time")]
    for node_id, name in (("1", "loader"), ("2", "text encoder"), ("5", "sampler (1 step)"), ("6", "VAE decode")):
        n = _series(r5, lambda r, node_id=node_id: r["nodes"].get(node_id, 0.0))
        rows.append(Row("5", f"↳ of which the {name} node", "s", n["stock"], n["hearth"]))
    return rows


def _daemon_rows(r6: dict) -> list[Row]:
    return [Row("6", "daemon restart -> checkpoint served again", "s", [r6["refill_s"]], r6["served_s"],
                stock_is="refill from disk", chart="time"),
            Row("6", "first prompt of a fresh ComfyUI after it", "s", r6["stock_prompt_s"], r6["prompt_s"])]


def _cuda_rows(r7: dict) -> list[Row]:
    gb = [1e-9 * x for x in r7["bw_segment"]]
    rows = [Row("7", "host-to-device: pageable memory vs segment", "GB/s", [1e-9 * x for x in r7["bw_pageable"]], gb),
            Row("7", "host-to-device: pinned memory vs segment", "GB/s", [1e-9 * x for x in r7["bw_pinned"]], gb,
                stock_is="pinned peak")]
    if "bw_segment_registered" in r7:
        rows.append(Row("7", "host-to-device: pinned vs segment registered read-only", "GB/s",
                        [1e-9 * x for x in r7["bw_pinned"]], [1e-9 * x for x in r7["bw_segment_registered"]],
                        stock_is="pinned peak"))
    rows.append(Row("7", "time to the model on the GPU", "s", r7["to_gpu_stock_s"], r7["to_gpu_hearth_s"],
                    chart="time"))
    return rows


def _stock_loader_rows(r: dict, n: str, what: str) -> list[Row]:
    """Scenarios 8 and 9: stock graphs' loaders, stock ComfyUI vs Hearth.StockLoaders (issue 18's targets)."""
    size = sum(r["files"].values()) / 1e9
    rows = []
    for page_cache, bound in (("warm", 0.2), ("cold", 0.1)):
        t = _series(r[page_cache], lambda x: x["server_s"])
        label = f"page cache {'warm' if page_cache == 'warm' else 'dropped'}, restart: {what} ({size:.1f} GB)"
        rows.append(_ratio_target(Row(n, label, "s", t["stock"], t["hearth"], chart="time"), bound,
                                  "ComfyUI's module construction (the same Python for both) is most of Hearth's "
                                  "time at this size"))
        mem = _series(r[page_cache], lambda x: x["after"]["private"] / GIB)
        rows.append(Row(n, "↳ private memory after load", "GiB", mem["stock"], mem["hearth"]))
    return rows


def _library_rows(r: dict) -> list[Row]:
    """Scenario 10: from_pretrained of a diffusers pipeline in a fresh process, stock vs patch()."""
    size = sum(r["files"].values()) / 1e9
    rows = []
    for page_cache in ("warm", "cold"):
        t = _series(r[page_cache], lambda x: x["load_s"])
        row = Row("10", f"diffusers from_pretrained ({size:.1f} GB), page cache "
                        f"{'warm' if page_cache == 'warm' else 'dropped'}", "s", t["stock"], t["hearth"], chart="time")
        if page_cache == "warm":
            row = _ratio_target(row, 1.0, "the segment's acquire round trip on top of a warm mmap read")
        rows.append(row)
    return rows


def rows(doc: dict) -> list[Row]:
    """Every row of the table, in scenario order; scenarios that failed or were skipped give none."""
    s = {n: r for n, r in doc["scenarios"].items() if "error" not in r and "skipped" not in r}
    out: list[Row] = []
    for n in ("1", "2"):
        if n in s:
            out += _restart_rows(s, n)
    if "3" in s:
        out += _sharing_rows(s["3"], doc["checkpoint"]["bytes"])
    if "4" in s:
        out += _switching_rows(s["4"])
    if "5" in s:
        out += _first_prompt_rows(s["5"])
    if "6" in s:
        out += _daemon_rows(s["6"])
    if "7" in s:
        out += _cuda_rows(s["7"])
    if "8" in s:
        out += _stock_loader_rows(s["8"], "8", "split FLUX-layout files via UNETLoader/CLIPLoader/VAELoader")
    if "9" in s:
        out += _stock_loader_rows(s["9"], "9", "checkpoint via CheckpointLoaderSimple")
    if "10" in s:
        out += _library_rows(s["10"])
    from .warm import rows as warm_rows  # scenarios 11-13 (issue 16); here, as warm.py imports Row

    return out + warm_rows(s)


def _pick(counts: dict, count: str, f) -> list[float] | None:
    if count not in counts:
        return None
    v = f(counts[count])
    return v if isinstance(v, list) else [v]


def _fmt(xs: list[float] | None, unit: str) -> tuple[str, str]:
    if not xs:
        return "-", "-"
    return _num(min(xs), unit), _num(statistics.median(xs), unit)


def _num(x: float, unit: str) -> str:
    if unit == "s":
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"
    return f"{x:.2f} {unit}"


def markdown(doc: dict) -> str:
    """One table: stock and Hearth (min / median over fresh processes), the ratio and the target."""
    lines = ["| # | scenario | stock min | stock median | Hearth min | Hearth median | Hearth / stock (median; min) "
             "| target |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows(doc):
        smin, smed = _fmt(r.stock, r.unit)
        hmin, hmed = _fmt(r.hearth, r.unit)
        if r.stock_is and r.stock:
            smed += f" ({r.stock_is})"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        if r.ratio is not None and len(r.stock) > 1:
            ratio += f"; {min(r.hearth) / min(r.stock):.2f}x"
        target = f"{r.target}: {'met' if r.met else '**MISSED** (see notes)'}" if r.target else ""
        lines.append(f"| {r.scenario} | {r.label.replace('->', '→')} | {smin} | {smed} | {hmin} | {hmed} | "
                     f"{ratio} | {target} |")
    return "\n".join(lines)


def notes(doc: dict) -> list[str]:
    """Why each missed target was missed, then what the numbers rest on (hits, same pixels, no rebuild)."""
    out = [f"scenario {r.scenario}, {r.label.replace('->', '→')}: target missed: {r.why}"
           for r in rows(doc) if r.met is False and r.why]
    out += [f"scenario {n} FAILED: {r['error']}" for n, r in doc["scenarios"].items() if "error" in r]
    out += [f"scenario {n} skipped: {r['skipped']}" for n, r in doc["scenarios"].items() if "skipped" in r]
    s = {n: r for n, r in doc["scenarios"].items() if "error" not in r and "skipped" not in r}
    for n in ("1", "2", "5"):
        if n in s:
            out.append(f"scenario {n}: Hearth's checkpoint loads {[r['status'] for r in s[n]['hearth']]} "
                       f"(all must be hits)")
    if "3" in s:
        out += [f"scenario 3, {k}: {s['3'][k]['stopped']}" for k in SIDES if "stopped" in s["3"][k]]
        if s["3"]["stock"]["added"][1:] and s["3"]["hearth"]["added"][1:]:
            ckpt = doc["checkpoint"]["bytes"]
            x = {k: [_median(s["3"][side][k][1:]) / ckpt for side in SIDES] for k in ("added_load", "added")}
            out.append(f"scenario 3: each process after the first adds {x['added_load'][0]:.2f}x (stock) and "
                       f"{x['added_load'][1]:.2f}x (Hearth) the checkpoint's size in PSS when loaded, "
                       f"{x['added'][0]:.2f}x and {x['added'][1]:.2f}x after its first prompt; Hearth's totals "
                       f"include the whole segment once")
    if "4" in s:
        pairs = list(zip(s["4"]["stock"]["steps"], s["4"]["hearth"]["steps"], strict=False))
        same = sum(a["pixels_sha256"] == b["pixels_sha256"] for a, b in pairs)
        out.append(f"scenario 4: stock and Hearth images identical in {same}/{len(pairs)} steps (same seed)")
        for k in SIDES:
            steps = s["4"][k]["steps"]
            cached = sum(x["loader_cached"] for x in steps)
            back = all(x["equals_base"] for x in steps if x["lora"] == "none")
            changed = all(not x["equals_base"] for x in steps if x["lora"] != "none")
            out.append(f"scenario 4, {k}: the checkpoint loader came from ComfyUI's cache in {cached}/{len(steps)} "
                       f"switches (base model not rebuilt); image after 'none' equals the base image: {back}; "
                       f"every LoRA changed the image: {changed}")
    for n in ("8", "9"):
        if n in s:
            loads = [x["loads"] for pc in ("warm", "cold") for x in s[n][pc]["hearth"]]
            out.append(f"scenario {n}: Hearth side's reads {[sorted({st for *_, st in load}) for load in loads]} "
                       f"(all must be hits); the stock side reads nothing through Hearth: "
                       f"{all(not x['loads'] for pc in ('warm', 'cold') for x in s[n][pc]['stock'])}")
    if "10" in s:
        sums = {x["out_sum"] for pc in ("warm", "cold") for side in SIDES for x in s["10"][pc][side]}
        out.append(f"scenario 10: the pipeline's UNet output is the same in every process, stock and patched: "
                   f"{len(sums) == 1}")
    if "6" in s:
        out.append(f"scenario 6: acquire after each restart was a hit (no refill): {s['6']['hit']}; the fresh "
                   f"ComfyUI's checkpoint loads: {s['6']['status']}")
    from .warm import notes as warm_notes

    return out + warm_notes(s)


def header(doc: dict) -> str:
    m = doc["machine"]
    return (f"{doc['date']}, {m['cpu']} ({m['cores']} cores), {m['ram_gib']:.0f} GiB RAM, Linux {m['kernel']}, "
            f"torch {m['torch']}, ComfyUI {m['comfyui']}; load average {m['load_before']} before, "
            f"{m['load_after']} after. Checkpoint {doc['checkpoint']['name']} "
            f"({doc['checkpoint']['bytes'] / 1e9:.2f} GB, {doc['mode']}), LoRAs "
            f"{', '.join(f'{b / 1e6:.0f} MB' for b in doc['loras'].values())}; {doc['repeats']} fresh processes "
            f"per side and row.")
