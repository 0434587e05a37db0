"""Issue-4 benchmark: Hearth's nodes against ComfyUI's stock nodes, in real ComfyUI processes on CPU, same run.

    python -m bench.comfy_nodes            # full SD1.5 shape (2.1 GB fp16), two ~300 MB LoRAs
    python -m bench.comfy_nodes --tiny     # the tests' tiny model: a quick check of the harness

A node's time is what a client of the server sees: from the node's `executing` message on ComfyUI's
websocket to the next one (the node's own work plus ComfyUI's per-node bookkeeping, the same for both).
Graphs alternate between the Hearth and the stock variant under the same node ids, so ComfyUI's cache never
skips the node being measured. Warm means: the stock file was read moments before (page cache warm), the
Hearth segment was filled moments before.

Rows:
- checkpoint loader node, warm: HearthCheckpointLoader vs CheckpointLoaderSimple (median of N); and the same
  after the file's page cache was dropped (posix_fadvise DONTNEED: what memory pressure or Dynamic VRAM do);
- sampler step: KSampler's time per extra step at --step-size (Hearth keeps the UNet fp16 and casts per op
  on CPU, stock widens it to fp32 at load);
- second process: two ComfyUI processes that ran the same graph; what the second one adds to the machine
  (sum of both processes' PSS after minus before its prompt, which equals its private growth), and its own
  RSS/PSS growth, as multiples of the checkpoint's size;
- LoRA switch: HearthLoraSwapper vs LoraLoader node time when the LoRA changes between two ~300 MB files,
  warm and with the LoRA's page cache dropped; and the whole prompt's time after a switch (which includes
  ComfyUI patching the weights).
Model files, the daemon's state and the JSON of the results live in bench/out/comfy (not versioned).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

from harness import graphs
from harness.checkout import find_comfyui
from harness.daemon import Daemon
from harness.models import build_checkpoint, build_lora, lora_bytes_per_rank
from harness.server import ComfyServer, write_extra_model_paths
from .load import drop_page_cache

OUT = Path(__file__).resolve().parent / "out" / "comfy"
LORA_BYTES = 300 * 10**6


def prepare_models(checkout: Path, shape: str) -> tuple[Path, Path, list[str]]:
    """models/<shape>/ with a checkpoint and two LoRAs (built once, reused by later runs)."""
    root = OUT / "models" / shape
    ckpt = root / "checkpoints" / f"sd15-{shape}.safetensors"
    if not ckpt.exists():
        build_checkpoint(checkout, ckpt, shape)
    rank = max(1, round(LORA_BYTES / lora_bytes_per_rank(ckpt))) if shape == "full" else 8
    loras = []
    for seed in (1, 2):
        lora = root / "loras" / f"lora-{shape}-r{rank}-{seed}.safetensors"
        if not lora.exists():
            build_lora(ckpt, lora, rank=rank, seed=seed)
        loras.append(lora.name)
    return root, write_extra_model_paths(root / "extra_model_paths.yaml", root), loras


def memory(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) of a process, in bytes, from smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def pixels(run):
    """The run's image as an array (the PNG files differ in the graph they embed)."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(run.images[0])).convert("RGB"))


class Bench:
    def __init__(self, checkout: Path, models: Path, extra: Path, ckpt: str, loras: list[str], repeat: int,
                 step_size: int):
        self.checkout, self.models, self.extra, self.ckpt, self.loras = checkout, models, extra, ckpt, loras
        self.repeat, self.step_size = repeat, step_size
        self.work = OUT / "run"
        shutil.rmtree(self.work, ignore_errors=True)
        self.shm = Path("/dev/shm") / f"hearth-bench-{uuid.uuid4().hex[:8]}"
        self.daemon = Daemon(self.work / "home", [models], shm_dir=self.shm)

    def server(self, name: str) -> ComfyServer:
        return ComfyServer(self.checkout, self.work / name, self.extra, {"HEARTH_HOME": str(self.daemon.home)})

    def graph(self, stock: bool, loras: list[graphs.Lora] | None = None, size: int = 64, steps: int = 1,
              seed: int = 42) -> dict:
        name = "hearth_txt2img_api" if loras is None else "hearth_lora_stack_api"
        g = graphs.configure(graphs.load(name), self.ckpt, loras, size=size, steps=steps, seed=seed)
        return graphs.to_stock(g) if stock else g

    def loader(self, s: ComfyServer, drop: bool) -> dict:
        """Loader node seconds, Hearth and stock alternating; `drop`: the file's page cache dropped first."""
        for stock in (False, True):  # fill the segment, read the file once
            s.run(self.graph(stock))
        times, images = {False: [], True: []}, {}
        for _ in range(self.repeat):
            for stock in (False, True):
                if drop:
                    drop_page_cache(self.models / "checkpoints" / self.ckpt)
                run = s.run(self.graph(stock))
                times[stock].append(run.node_seconds()["1"])
                images[stock] = pixels(run)
        return {"hearth": statistics.median(times[False]), "stock": statistics.median(times[True]),
                "hearth_all": times[False], "stock_all": times[True],
                "same_pixels": bool((images[False] == images[True]).all())}

    def step(self, s: ComfyServer, few: int = 1, more: int = 2) -> dict:
        """Seconds per sampler step: (KSampler time with `more` steps - with `few`) / (more - few).

        In blocks per variant: a discarded run loads the model (and faults in its pages), then the two
        measured runs sample the same loaded model with new seeds.
        """
        times = {(stock, n): [] for stock in (False, True) for n in (few, more)}
        for i in range(self.repeat):
            for stock in (False, True):
                s.run(self.graph(stock, size=self.step_size, steps=few, seed=1000 + i))
                for n in (few, more):
                    run = s.run(self.graph(stock, size=self.step_size, steps=n, seed=i))
                    times[stock, n].append(run.node_seconds()["5"])
        med = {k: statistics.median(v) for k, v in times.items()}
        return {"size": self.step_size, **{("stock" if stock else "hearth"): (med[stock, more] - med[stock, few])
                                           / (more - few) for stock in (False, True)}}

    def lora_switch(self, s: ComfyServer, drop: bool) -> dict:
        """LoRA node seconds and whole-prompt seconds when the LoRA changes between runs."""
        out, images = {}, {}
        for stock in (False, True):
            node = "8.1" if stock else "8"
            for name in self.loras:  # load the base model, fill or read both LoRAs
                s.run(self.graph(stock, [(name, 1.0, 1.0)]))
            node_times, prompt_times = [], []
            for i in range(self.repeat * 2):
                name = self.loras[i % 2]
                if drop:
                    drop_page_cache(self.models / "loras" / name)
                t0 = time.perf_counter()
                run = s.run(self.graph(stock, [(name, 1.0, 1.0)]))
                prompt_times.append(time.perf_counter() - t0)
                node_times.append(run.node_seconds()[node])
                images[stock, name] = pixels(run)
                assert "1" in run.events("execution_cached")[0]["nodes"], "the base model was reloaded"
            key = "stock" if stock else "hearth"
            out[key], out[f"{key}_prompt"] = statistics.median(node_times), statistics.median(prompt_times)
        out["same_pixels"] = all(bool((images[False, n] == images[True, n]).all()) for n in self.loras)
        return out

    def second_process(self, stock: bool) -> dict:
        first, second = self.server(f"mem-{stock}-1").start(), self.server(f"mem-{stock}-2").start()
        try:
            first.run(self.graph(stock))
            time.sleep(1)
            before = memory(first.proc.pid), memory(second.proc.pid)
            second.run(self.graph(stock))
            time.sleep(1)
            after = memory(first.proc.pid), memory(second.proc.pid)
        finally:
            first.stop()
            second.stop()
        return {"machine": after[0]["pss"] + after[1]["pss"] - before[0]["pss"] - before[1]["pss"],
                **{f"second_{k}": after[1][k] - before[1][k] for k in ("rss", "pss", "uss")}}

    def run(self, phases: list[str], save) -> dict:
        """Run the chosen phases; `save(results)` after each, so that a long run keeps what it measured."""
        results = {"load_average_before": os.getloadavg()}
        in_one_server = [(name, measure) for name, measure in (
            ("loader", lambda s: self.loader(s, drop=False)), ("loader_cold", lambda s: self.loader(s, drop=True)),
            ("step", self.step),
            ("lora", lambda s: self.lora_switch(s, drop=False)), ("lora_cold", lambda s: self.lora_switch(s, drop=True)),
        ) if name.split("_")[0] in phases]
        with self.daemon:
            try:
                if "memory" in phases:  # first: a fresh machine, no models left in anyone's memory
                    results["memory"] = {"hearth": self.second_process(False), "stock": self.second_process(True)}
                    save(results)
                if in_one_server:
                    with self.server("nodes") as s:
                        for name, measure in in_one_server:
                            results[name] = measure(s)
                            save(results)
            finally:
                shutil.rmtree(self.shm, ignore_errors=True)
        results["load_average_after"] = os.getloadavg()
        save(results)
        return results


def table(r: dict, ckpt_bytes: int, lora_bytes: int) -> str:
    rows = []

    def memory_row(what: str, key: str, target: str = "") -> None:
        if "memory" in r:
            rows.append((what, r["memory"]["hearth"][key] / ckpt_bytes, r["memory"]["stock"][key] / ckpt_bytes,
                         target))

    def pair(what: str, phase: str, suffix: str = "", target: str = "") -> None:
        if phase in r:
            rows.append((what, r[phase]["hearth" + suffix], r[phase]["stock" + suffix], target))

    pair("checkpoint loader node, warm (s)", "loader", target="<= 0.2x")
    pair("checkpoint loader node, page cache dropped (s)", "loader_cold")
    if "step" in r:
        pair(f"KSampler, per step at {r['step']['size']}x{r['step']['size']} (s)", "step")
    memory_row("2nd process adds to the machine (x ckpt)", "machine", "<= 0.2")
    memory_row("2nd process RSS growth (x ckpt)", "second_rss")
    memory_row("2nd process PSS growth (x ckpt)", "second_pss")
    memory_row("2nd process private growth (x ckpt)", "second_uss")
    pair("LoRA switch, node, warm (s)", "lora", target="< 0.1 s")
    pair("LoRA switch, node, page cache dropped (s)", "lora_cold")
    pair("LoRA switch, whole prompt, warm (s)", "lora", "_prompt")
    lines = [f"checkpoint {ckpt_bytes / 2**30:.2f} GiB, LoRAs {lora_bytes / 1e6:.0f} MB each, CPU, same run; "
             f"load average {r['load_average_before'][0]:.1f} before, {r['load_average_after'][0]:.1f} after",
             f"{'':48} {'Hearth':>9} {'stock':>9} {'ratio':>7}  target"]
    for what, ours, theirs, target in rows:
        ratio = f"{ours / theirs:7.3f}" if theirs else "      -"
        lines.append(f"{what:48} {ours:9.3f} {theirs:9.3f} {ratio}  {target}")
    same = {p: r[p]["same_pixels"] for p in ("loader", "loader_cold", "lora", "lora_cold") if p in r}
    if same:
        lines.append("images bit-identical to the stock graph's: " + ", ".join(
            f"{p} {'yes' if ok else 'NO'}" for p, ok in same.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tests' tiny SD1.5 shape instead of the full one")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per variant (median reported)")
    p.add_argument("--step-size", type=int, default=256, help="image size of the sampler step rows")
    p.add_argument("--phases", default="memory,loader,step,lora",
                   help="comma-separated subset of memory,loader,step,lora")
    args = p.parse_args(argv)
    checkout, why = find_comfyui()
    if checkout is None:
        print(f"skipped: {why}", file=sys.stderr)
        return 0
    shape = "tiny" if args.tiny else "full"
    models, extra, loras = prepare_models(checkout, shape)
    ckpt = f"sd15-{shape}.safetensors"
    ckpt_bytes = (models / "checkpoints" / ckpt).stat().st_size
    lora_bytes = (models / "loras" / loras[0]).stat().st_size
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"results-{shape}-{time.strftime('%Y%m%d-%H%M%S')}.json"

    def save(results: dict) -> None:
        out.write_text(json.dumps({"checkpoint_bytes": ckpt_bytes, "lora_bytes": lora_bytes, **results}, indent=1))

    bench = Bench(checkout, models, extra, ckpt, loras, args.repeat, args.step_size)
    results = bench.run(args.phases.split(","), save)
    print(table(results, ckpt_bytes, lora_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
