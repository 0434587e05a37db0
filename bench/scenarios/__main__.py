"""python -m bench.scenarios [--quick] [--repeats N] [--only 1,4]: see bench/scenarios/__init__.py."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from harness.checkout import find_comfyui

from . import __doc__ as DOC
from . import cuda, loading, sharing, stock_loaders, switching, warm
from .fixture import CKPT, LORAS, Bench, bench, scenario_models
from .report import header, markdown, notes
from .restart import daemon_restart

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
RESULTS = BENCH / "results"  # a full run's figures, versioned: the README shows them


def machine(checkout: Path) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    version = {}
    exec((checkout / "comfyui_version.py").read_text(), version)  # noqa: S102 - ComfyUI's own one-line file
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": psutil.virtual_memory().total / (1 << 30),
            "kernel": platform.release(), "python": platform.python_version(), "torch": torch.__version__,
            "comfyui": version.get("__version__", "?"), "load_before": _load()}


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scenarios(b: Bench, repeats: int, counts: tuple[int, ...], segment: Path) -> dict[str, tuple[str, Callable]]:
    return {
        "1": ("restart, page cache warm", lambda: loading.restart_warm(b, repeats)),
        "2": ("restart, page cache dropped", lambda: loading.restart_cold(b, repeats)),
        "3": (f"{', '.join(map(str, counts))} processes", lambda: sharing.sharing(b, counts, segment)),
        "4": ("LoRA switching", lambda: switching.switching(b, repeats)),
        "5": ("first prompt after start", lambda: loading.first_prompt(b, repeats)),
        "6": ("daemon restart", lambda: daemon_restart(b, repeats, segment)),
        "7": ("CUDA host-to-device", lambda: cuda.run_child(b.checkpoint, b.daemon.env, REPO)),
        "8": ("split files through the stock loaders", lambda: stock_loaders.split_files(b, repeats)),
        "9": ("stock checkpoint loader", lambda: stock_loaders.stock_checkpoint(b, repeats)),
        "10": ("diffusers from_pretrained through patch()", lambda: stock_loaders.library_hook(b, repeats)),
        "11": ("reboot -> first prompt, warm set", lambda: warm.reboot_first_prompt(b, repeats)),
        "12": ("queue of 4 prompts over 2 checkpoints, prefetch", lambda: warm.queue_prefetch(b, repeats)),
        "13": ("first sampler step, eager load", lambda: warm.eager_first_step(b, repeats)),
    }


def measure(checkout: Path, quick: bool, repeats: int, only: set[str] | None, partial: Path) -> dict:
    """Build or find the models, start the private daemon, run the chosen scenarios; the run's document.

    After each scenario the document so far is written to `partial`: a crash keeps what was measured.
    """
    counts = (1, 2) if quick else (1, 2, 4)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M"), "mode": "quick" if quick else "full", "repeats": repeats,
           "machine": machine(checkout), "scenarios": {}}
    t_start = time.perf_counter()
    _say(f"building or finding the {'tiny' if quick else 'full-size'} SD1.5 checkpoint and two LoRAs...")
    models = scenario_models(checkout, "tiny" if quick else "full")
    doc["checkpoint"] = {"name": CKPT, "bytes": models.checkpoint(CKPT).stat().st_size}
    doc["loras"] = {name: models.lora(name).stat().st_size for name in LORAS}
    with bench(checkout, models) as b:
        segment = Path(b.warm_segments()[CKPT]["segment"])
        for n, (title, run) in scenarios(b, repeats, counts, segment).items():
            if only is not None and n not in only:
                continue
            _say(f"scenario {n}: {title}...")
            try:
                doc["scenarios"][n] = run()
            except Exception as e:  # noqa: BLE001 - one failed scenario must not lose the others' figures
                _say(f"scenario {n} failed: {type(e).__name__}: {e}")
                doc["scenarios"][n] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            partial.write_text(json.dumps(doc, indent=1))
    doc["machine"]["load_after"] = _load()
    doc["wall_s"] = time.perf_counter() - t_start
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny SD1.5-format checkpoint, one repeat (tests)")
    ap.add_argument("--repeats", type=int, help="fresh processes per side and row (default 3, quick 1)")
    ap.add_argument("--only", help="comma-separated scenario numbers (default: all)")
    ap.add_argument("--out", type=Path, help="folder for scenarios.json, scenarios.png and README-results.md "
                                             "(default: bench/results/ for a full run, bench/out/quick/ for "
                                             "--quick)")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only redraw the table, chart and README text "
                                                               "from a run's scenarios.json (into --out)")
    args = ap.parse_args(argv)
    out_dir = args.out or (args.render.parent if args.render else BENCH / "out" / "quick" if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render:
        write(json.loads(args.render.read_text()), out_dir)
        return 0
    checkout, why = find_comfyui()
    if checkout is None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    partial = out_dir / "scenarios.partial.json"
    doc = measure(checkout, args.quick, args.repeats or (1 if args.quick else 3),
                  set(args.only.split(",")) if args.only else None, partial)
    write(doc, out_dir)
    partial.unlink(missing_ok=True)
    return 1 if any("error" in r for r in doc["scenarios"].values()) else 0


def write(doc: dict, out_dir: Path) -> None:
    """scenarios.json, the chart, README-results.md, and the table on stdout."""
    from ..chart import draw

    (out_dir / "scenarios.json").write_text(json.dumps(doc, indent=1))
    draw(doc, out_dir / "scenarios.png")
    table, said = markdown(doc), notes(doc)
    (out_dir / "README-results.md").write_text(readme_text(doc, table, said))
    print(header(doc), table, *said, f"wall time {doc['wall_s'] / 60:.1f} min; wrote {out_dir}/scenarios.json, "
          f"scenarios.png, README-results.md", sep="\n")


def readme_text(doc: dict, table: str, said: list[str]) -> str:
    m = doc["machine"]
    busy = max(float(x) for x in (m["load_before"] + " " + m["load_after"]).split()) > m["cores"]
    caveat = ([f"Read with care: the load average was above the machine's {m['cores']} cores during this run: "
               "other work shared the CPU, and the times (medians most) carry its noise; the memory figures do not."]
              if busy else [])
    return "\n".join([
        "## Measured: stock ComfyUI vs Hearth (`python -m bench.scenarios`)", "",
        "![stock vs Hearth per scenario](bench/results/scenarios.png)", "",
        header(doc), "", table, "",
        *[f"- {n}" for n in said], "", *caveat, *([""] if caveat else []),
        "Reproduce with `python -m bench.scenarios` in this folder, run by the Python of a ComfyUI "
        "checkout's environment (the checkout at `$HEARTH_COMFYUI` or `~/comfy/ComfyUI`; the pack is imported "
        "from this folder, nothing is installed), which rewrites this table, the chart and their JSON in "
        "`bench/results/`; every run's figures and what they taught are in "
        "[bench/RESULTS.md](bench/RESULTS.md).", ""])


if __name__ == "__main__":
    sys.exit(main())
