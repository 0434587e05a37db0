"""Where Python's garbage collections land in a ComfyUI prompt (issue 18, item 5).

    python -m bench.scenarios.gc_probe [--repeats 3] [--stock-loaders]

For each ComfyUI release given (HEARTH_COMFYUI, or --checkouts A B ...): fresh servers with the pack and a
probe custom node that records every collection (generation, duration, objects tracked, the node that was
executing: PromptServer.last_node_id), each running the issue's graph once, the first prompt after start:
the full SD1.5-shaped checkpoint and one LoRA through the Hearth loader and swapper (or, with
--stock-loaders, the same graph with CheckpointLoaderSimple + LoraLoader under Hearth.StockLoaders), txt2img
64x64, 1 step. Prints, per run, the loader node's time and the collections inside it; writes the JSON to
bench/out/gc_probe.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from harness.checkout import find_comfyui
from harness.server import ComfyServer

from ..load import OUT
from .fixture import CKPT, LOADER_ID, LORAS, bench, scenario_models, txt2img_graph, warm_page_cache

PROBE = '''\
"""Records every garbage collection of this ComfyUI process (bench/scenarios/gc_probe.py)."""
import gc, json, os, time
OUT = os.environ["HEARTH_GC_PROBE"]
_t = {}
def _node():
    try:
        from server import PromptServer
        return PromptServer.instance.last_node_id
    except Exception:
        return None
def _cb(phase, info):
    if phase == "start":
        _t["t"] = time.perf_counter()
        return
    with open(OUT, "a") as f:
        f.write(json.dumps({"t": time.perf_counter(), "gen": info["generation"], "s": time.perf_counter() - _t["t"],
                            "collected": info["collected"], "node": _node()}) + "\\n")
gc.callbacks.append(_cb)
NODE_CLASS_MAPPINGS = {}
'''


def one_run(checkout: Path, models, daemon_home: Path, work: Path, stock_loaders: bool) -> dict:
    base = Path(tempfile.mkdtemp(prefix="gc-", dir=work))
    probe = base / "custom_nodes" / "hearth_gc_probe"
    probe.mkdir(parents=True)
    (probe / "__init__.py").write_text(PROBE)
    events = base / "gc.jsonl"
    server = ComfyServer.with_hearth(checkout, base, models.extra_model_paths, daemon_home, stock_loaders=stock_loaders)
    server.env_overrides["HEARTH_GC_PROBE"] = str(events)
    loras = [(LORAS[0], 1.0, 1.0)]
    graph = txt2img_graph("stock" if stock_loaders else "hearth", loras, prefix="gc")
    server.start(timeout=180)
    try:
        warm_page_cache(models.checkpoint(CKPT))
        events.write_text("")  # start-up's collections are not the prompt's
        t0 = time.perf_counter()
        run = server.run(graph, timeout=900)
        prompt_s = time.perf_counter() - t0
    finally:
        server.stop()
    gcs = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    shutil.rmtree(base, ignore_errors=True)
    nodes = run.node_seconds()
    return {"loader_s": nodes.get(LOADER_ID), "nodes": nodes, "prompt_s": prompt_s,
            "gen2_in_loader": [g["s"] for g in gcs if g["gen"] == 2 and g["node"] == LOADER_ID],
            "gen2_elsewhere": [(g["node"], g["s"]) for g in gcs if g["gen"] == 2 and g["node"] != LOADER_ID],
            "young_s": sum(g["s"] for g in gcs if g["gen"] < 2), "collections": len(gcs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkouts", nargs="*", type=Path, help="ComfyUI checkouts (default: find_comfyui's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stock-loaders", action="store_true")
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. the code measured)")
    args = ap.parse_args(argv)
    checkouts = args.checkouts or [find_comfyui()[0]]
    results = json.loads((OUT / "gc_probe.json").read_text()) if (OUT / "gc_probe.json").exists() else []
    for checkout in checkouts:
        models = scenario_models(checkout, "full")
        with bench(checkout, models) as b:
            b.warm_segments()
            for i in range(args.repeats):
                r = one_run(checkout, models, b.daemon.home, b.work, args.stock_loaders)
                r.update(checkout=str(checkout), label=args.label, stock_loaders=args.stock_loaders,
                         date=time.strftime("%Y-%m-%d %H:%M"))
                results.append(r)
                print(f"{checkout.parent.name} {args.label} run {i + 1}: loader {r['loader_s']:.2f} s, gen-2 in "
                      f"loader {[format(s, '.2f') for s in r['gen2_in_loader']]}, elsewhere "
                      f"{[(n, format(s, '.2f')) for n, s in r['gen2_elsewhere']]}, young total {r['young_s']:.2f} s, "
                      f"prompt {r['prompt_s']:.2f} s", flush=True)
    (OUT / "gc_probe.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
