"""Scenarios 8-10: ComfyUI's own loaders, and any torch program, through Hearth (issue 18).

8. split files: a FLUX-layout graph's loaders (UNETLoader, CLIPLoader, VAELoader; harness/split_models.py
   "bench": FLUX's width at 2 + 4 of its 19 + 38 blocks, 2.3 GB bf16, with CLIP-L and FLUX's VAE), stock
   ComfyUI beside the same graph with Hearth.StockLoaders on, page cache warm and dropped;
9. the stock checkpoint loader (CheckpointLoaderSimple) of the run's checkpoint, the same two ways;
10. a diffusers pipeline's from_pretrained in a fresh Python process, stock beside `comfyui_hearth.patch()`,
    page cache warm and dropped (a UNet2DModel pipeline, ~0.9 GB fp32, built locally from random weights).

Sizes: on the 24 GB machines here a stock process holds the widened fp32 copy (2x the bf16/fp16 file) while
the file's page cache and Hearth's segment hold one copy each; an SDXL-shaped 6.9 GB checkpoint would need
~14 GB private beside 6.9 GB of segment, more than the machine has free while others work on it.
Each side's timing is the prompt's execution on ComfyUI's clock (loaders only, PreviewAny as outputs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from harness.server import ComfyServer
from harness.split_models import CLIP_TYPE, SplitFolder, build_split

from ..load import OUT, drop_page_cache
from .fixture import CKPT, HEARTH, SIDES, STOCK, Bench, wait_for_room, warm_page_cache
from .loading import server_seconds
from .memory import usage

SPLIT_FOLDERS = ("diffusion_models", "text_encoders", "vae")
WIDENED = 2.2  # a stock CPU process's peak per file byte: fp16/bf16 widened to fp32, plus runtime


def _yaml(b: Bench, split: SplitFolder | None) -> Path:
    doc = {"sd": {"base_path": str(b.models.root), "checkpoints": "checkpoints", "loras": "loras"}}
    if split is not None:
        doc["split"] = {"base_path": str(split.root), **{f: f for f in SPLIT_FOLDERS}}
    path = b.work / "stock-loaders.yaml"
    path.write_text(json.dumps(doc))
    return path


@contextmanager
def _server(b: Bench, side: str, yaml: Path, need: int):
    wait_for_room(need)
    base = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=b.work))
    server = (ComfyServer.stock(b.checkout, base, yaml) if side == STOCK else
              ComfyServer.with_hearth(b.checkout, base, yaml, b.daemon.home, stock_loaders=True))
    server.start(timeout=180)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _measure(b: Bench, side: str, yaml: Path, graph: dict, files: list[Path], page_cache: str) -> dict:
    with _server(b, side, yaml, int(WIDENED * sum(f.stat().st_size for f in files))) as server:
        for f in files:
            (warm_page_cache if page_cache == "warm" else drop_page_cache)(f)
        before = usage(server.proc.pid)
        run = server.run(graph, timeout=900)
        after = usage(server.proc.pid)
    return {"server_s": server_seconds(run), "nodes": run.node_seconds(),
            "loads": [(e["kind"], e["name"], e["status"]) for e in run.hearth_loads()],
            "before": before.as_dict(), "after": after.as_dict()}


def _rows(b: Bench, yaml: Path, graph: dict, files: list[Path], repeats: int) -> dict:
    # One unmeasured run fills Hearth's segments, as any earlier use would have: the files are allowed
    # to the daemon because that ComfyUI registers its model folders (the bench daemon knows only its own).
    _measure(b, HEARTH, yaml, graph, files, "warm")
    out = {}
    for page_cache in ("warm", "cold"):
        out[page_cache] = {side: [] for side in SIDES}
        for _ in range(repeats):
            for side in SIDES:  # alternating, so that a noisy neighbour hits both
                out[page_cache][side].append(_measure(b, side, yaml, graph, files, page_cache))
    return out


def _preview(graph: dict) -> dict:
    for i, node_id in enumerate(list(graph)):
        graph[f"p{i}"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}
    return graph


def split_files(b: Bench, repeats: int) -> dict:
    """Scenario 8; HEARTH_BENCH_SPLIT=tiny measures the 1.1 GB test shape where 2.3 GB does not fit."""
    shape = os.environ.get("HEARTH_BENCH_SPLIT", "bench")
    split = build_split(b.checkout, OUT / "scenarios" / f"split-{shape}", shape)
    graph = _preview({"1": {"class_type": "UNETLoader", "inputs": {"unet_name": split.unet, "weight_dtype": "default"}},
                      "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": split.clip, "type": CLIP_TYPE}},
                      "3": {"class_type": "VAELoader", "inputs": {"vae_name": split.vae}}})
    result = _rows(b, _yaml(b, split), graph, split.files, repeats)
    result["files"] = {p.name: p.stat().st_size for p in split.files}
    return result


def stock_checkpoint(b: Bench, repeats: int) -> dict:
    """Scenario 9."""
    graph = _preview({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}})
    result = _rows(b, _yaml(b, None), graph, [b.checkpoint], repeats)
    result["files"] = {CKPT: b.checkpoint.stat().st_size}
    return result


_PIPELINE = """
import json, sys, time
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
folder, mode = sys.argv[1], sys.argv[2]
if mode == "build":
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(256, 512, 768, 1024),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    sys.exit(0)
if mode == "hearth":
    import comfyui_hearth
    comfyui_hearth.patch(roots=[folder])
t0 = time.perf_counter()
pipe = DDPMPipeline.from_pretrained(folder, local_files_only=True)
loaded = time.perf_counter() - t0
x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    y = pipe.unet(x, 10).sample
print(json.dumps({"load_s": loaded, "out_sum": float(y.double().sum())}))
"""


def library_hook(b: Bench, repeats: int) -> dict:
    """Scenario 10: from_pretrained in fresh processes; the model's files are allowed through patch(roots=)."""
    folder = OUT / "scenarios" / "ddpm-bench"
    env = {**b.daemon.env, "HF_HUB_OFFLINE": "1"}  # PYTHONPATH: harness.pack's folder, the pack found there
    env.pop("HEARTH_MODEL_DIRS", None)
    # ComfyUI's environment need not have diffusers: HEARTH_BENCH_PYTHON names an interpreter that has it.
    python = os.environ.get("HEARTH_BENCH_PYTHON", sys.executable)
    if subprocess.run([python, "-c", "import diffusers"], capture_output=True).returncode:
        return {"skipped": f"diffusers is not installed for {python} (set HEARTH_BENCH_PYTHON)"}

    def child(mode: str) -> dict:
        done = subprocess.run([python, "-c", _PIPELINE, str(folder), mode], env=env, capture_output=True,
                              text=True, timeout=900, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1]) if mode != "build" else {}

    if not (folder / "model_index.json").exists():
        child("build")
    weights = sorted(folder.rglob("*.safetensors"))
    child("hearth")  # fills the segments once
    out = {"files": {str(p.relative_to(folder)): p.stat().st_size for p in weights}}
    for page_cache in ("warm", "cold"):
        out[page_cache] = {side: [] for side in SIDES}
        for _ in range(repeats):
            for side in SIDES:
                for p in weights:
                    (warm_page_cache if page_cache == "warm" else drop_page_cache)(p)
                t0 = time.perf_counter()
                r = child("stock" if side == STOCK else "hearth")
                r["process_s"] = time.perf_counter() - t0
                out[page_cache][side].append(r)
    return out
