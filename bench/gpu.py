"""The prepared GPU check (issue 19): `python -m bench.gpu [--dry] [--out DIR] [--comfyui PATH] [--sizes 4,23]`.

One command, under 8 minutes on a CUDA machine (--time-limit; a step that would start past it is reported
as skipped), that writes gpu.json and gpu.md (the tables) to --out (default bench/out/gpu). Every figure
stands beside its baseline from the same run:

1. Host-to-device GB/s of a synthetic FLUX-like model (bf16 tensors of FLUX's shapes) at each size (4 GB and
   23 GB, sized down when RAM, /dev/shm, disk or VRAM is short, and the JSON says so): from pageable memory
   (malloc), from Hearth's segment before and after its read-only registration (client/pinning.py), and
   from torch's pinned memory (cudaHostAlloc: the peak).
2. The process's Anonymous memory and the segment mapping's private pages before and after registration
   (the sharing intact: both unchanged), and the time registration takes per GB.
3. The two hazards of DESIGN section 4, measured (at the first size): a writable registration (flags 1, what
   ComfyUI's pin_memory does) of a second mapping of the same segment, and what it costs in Anonymous
   memory; a CPU write into a read-only registered view, whether the GPU then reads the old page, and whether
   verify_views undoes the registration so the next copy reads the new one.
4. Time to a FLUX-size model on the GPU, each in a fresh process (CUDA's start-up excluded): stock
   safetensors load_file(device='cuda') with the file in the page cache and after dropping it, Hearth's warm
   segment copied from pageable views, and registered first (registration included).
5. Where a ComfyUI checkout is given (--comfyui or $HEARTH_COMFYUI): a tiny SD1.5 txt2img with
   CheckpointLoaderSimple (stock) and with HearthCheckpointLoader, in fresh processes, with ComfyUI's default
   patcher (Dynamic VRAM on NVIDIA in 0.28) and with --disable-dynamic-vram where the release has it: node
   times, pixels (max difference to stock), process memory (RSS, PSS, Anonymous) and peak VRAM; and the VRAM
   Budget node's strategies applied to that model (placement, VRAM, step time, difference to the plain run).

--dry runs the same flow on the CPU at 64 and 128 MB: every CUDA step is reported as skipped with the reason
(tests/test_bench_gpu.py runs it). Needs the ComfyUI venv's Python for item 5 (it builds the tiny model from
ComfyUI's classes); README says how to take ComfyUI and its missing wheels to a GPU machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import psutil

from harness.checkout import comfy_env
from harness.daemon import Daemon
from harness.models import build_models
from harness.pack import import_root

GB = 10**9
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PASSES = 3
TIME_LIMIT_S = 450.0  # 7.5 min: the 8 less a margin for the report
# (rows, cols) of FLUX's bf16 weights, in the proportions of its blocks: attention and MLP projections, norms
FLUX_SHAPES = ((3072, 3072), (3072, 12288), (12288, 3072), (3072, 3072), (3072, 9216), (3072,))
CKPT = "tiny-sd15.safetensors"


class Clock:
    def __init__(self, limit_s: float):
        self.start, self.limit = time.monotonic(), limit_s

    def left(self) -> float:
        return self.limit - (time.monotonic() - self.start)


def step(results: dict, name: str, clock: Clock, fn, needs_s: float = 0.0):
    """Run one step: its dict, or {"error": ...}, or {"skipped": ...} past the time limit; seconds taken."""
    if clock.left() < needs_s:
        results[name] = {"skipped": f"time limit: {clock.left():.0f} s left, the step needs ~{needs_s:.0f} s"}
        return results[name]
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - one failed step must not lose the others' figures
        out = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"}
    out["step_s"] = round(time.perf_counter() - t0, 3)
    results[name] = out
    print(f"bench.gpu: {name}: {json.dumps(out)[:300]}", file=sys.stderr, flush=True)
    return out


# ---- the synthetic model ------------------------------------------------------------------------------

def tensor_plan(total: int) -> list[tuple[str, list[int]]]:
    """Names and shapes of bf16 tensors in FLUX's shapes adding up to about `total` bytes."""
    out, used, i = [], 0, 0
    while True:
        shape = FLUX_SHAPES[i % len(FLUX_SHAPES)]
        size = 2 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        if used + size > total:
            rest = (total - used) // 2
            if rest > 0:
                out.append((f"blocks.{i}.rest", [rest]))
            return out
        out.append((f"blocks.{i // len(FLUX_SHAPES)}.w{i % len(FLUX_SHAPES)}", list(shape)))
        used, i = used + size, i + 1


def expected_value(index: int) -> float:
    """Tensor `index`'s every element (exact in bf16): what the GPU copies are checked against."""
    return (index % 251) / 64


def write_model(path: Path, total: int) -> dict:
    """Stream a safetensors file of `total` bytes to disk (never all in RAM), fsync it; its layout."""
    import torch

    plan = tensor_plan(total)
    header, pos = {}, 0
    for name, shape in plan:
        n = 2 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for i, (_, shape) in enumerate(plan):
            f.write(torch.full(shape, expected_value(i), dtype=torch.bfloat16).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": pos, "tensors": len(plan), "write_s": round(time.perf_counter() - t0, 2)}


def check_values(tensors: dict) -> bool:
    """Each tensor's first and last element is what write_model put there (order = file order)."""
    for i, t in enumerate(tensors.values()):
        flat = t.reshape(-1)
        if flat.numel() and not (flat[0].item() == flat[-1].item() == expected_value(i)):
            return False
    return True


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---- measuring ---------------------------------------------------------------------------------------

def smaps() -> dict[str, int]:
    """This process's Rss, Pss, Shared_Clean, Private_Dirty, Anonymous (bytes), from smaps_rollup."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Shared_Clean", "Private_Dirty", "Anonymous"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def copy_rate(sources: list, dst_flat) -> dict:
    """GB/s of copying every source tensor into its slice of one preallocated device buffer, per pass."""
    import torch

    slices, pos = [], 0
    for s in sources:
        n = s.numel() * s.element_size()
        slices.append(dst_flat[pos:pos + n])
        pos += n
    flat = [s.reshape(-1).view(torch.uint8) for s in sources]
    rates = []
    for _ in range(PASSES):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for d, s in zip(slices, flat, strict=True):
            d.copy_(s, non_blocking=True)
        torch.cuda.synchronize()
        rates.append(pos / (time.perf_counter() - t0) / GB)
    return {"gbps_best": round(max(rates), 2), "gbps_median": round(statistics.median(rates), 2),
            "bytes": pos}


def like(views: list, buffer) -> list:
    """Slices of a flat uint8 host buffer with the views' sizes (same copy pattern, another memory)."""
    out, pos = [], 0
    for v in views:
        n = v.numel() * v.element_size()
        out.append(buffer[pos:pos + n])
        pos += n
    return out


def cuda_reason() -> str | None:
    import torch

    if torch.version.cuda is None:
        return f"no CUDA: torch {torch.__version__} is not a CUDA build"
    if not torch.cuda.is_available():
        return "no CUDA device available"
    return None


def bandwidth_and_registration(path: Path, size: int, first: bool) -> dict:
    """Items 1-3 at one size, in this process (CUDA initialised here first)."""
    import torch

    from comfyui_hearth.client import load, pinning

    why = cuda_reason()
    if why is None:
        torch.zeros(1, device="cuda")  # CUDA's start-up is no part of any figure
    t0 = time.perf_counter()
    got = load(path)
    out: dict = {"acquire_s": round(time.perf_counter() - t0, 3), "cached": got.cached}
    if not got.cached:
        return {**out, "error": f"Hearth did not serve the file: {got.reason}"}
    views = [t for t in got.tensors.values() if t.numel()]
    out["values_ok"] = check_values(got.tensors)  # reads every tensor's ends: the mapping is in use
    mapping = pinning.mapping_of(views[0])
    before = smaps()
    out["private_pages_before"] = pinning.written_pages(mapping.base, mapping.size)
    if why:
        out["skipped"] = f"bandwidth and registration: {why}"
        out["pinning_status"] = {k: v for k, v in pinning.status().items() if k != "mappings"}
        if first:
            out["hazards"] = hazards(path, got.tensors, None, why)
        return out
    dst = torch.empty(sum(v.numel() * v.element_size() for v in views), dtype=torch.uint8, device="cuda")
    out["segment_pageable"] = copy_rate(views, dst)
    t0 = time.perf_counter()
    pins = pinning.register_views(views)
    reg_s = time.perf_counter() - t0
    after = smaps()
    out["registration"] = {"seconds": round(reg_s, 3), "s_per_gb": round(reg_s / (size / GB), 3),
                           "registered": all(p.registered for p in pins), "reasons": [p.reason for p in pins],
                           "is_pinned": all(v.is_pinned() for v in views[:: max(1, len(views) // 16)])}
    out["anonymous"] = {"before": before["Anonymous"], "after": after["Anonymous"],
                        "delta": after["Anonymous"] - before["Anonymous"],
                        "private_pages_after": pinning.written_pages(mapping.base, mapping.size),
                        "shared_clean_delta": after["Shared_Clean"] - before["Shared_Clean"]}
    out["segment_registered"] = copy_rate(views, dst) if out["registration"]["registered"] else {
        "skipped": f"not registered: {pins[0].reason}"}
    pageable = torch.empty(dst.numel(), dtype=torch.uint8)
    pageable.fill_(1)  # fault the pages in: first-touch cost is no part of the copy
    out["pageable"] = copy_rate(like(views, pageable), dst)
    del pageable
    t0 = time.perf_counter()
    pinned = torch.empty(dst.numel(), dtype=torch.uint8, pin_memory=True)
    out["torch_pinned_alloc_s"] = round(time.perf_counter() - t0, 3)
    out["torch_pinned"] = copy_rate(like(views, pinned), dst)
    del pinned
    if "gbps_best" in out["segment_registered"]:
        out["registered_vs_pinned"] = round(out["segment_registered"]["gbps_best"]
                                            / out["torch_pinned"]["gbps_best"], 3)
    del dst
    torch.cuda.empty_cache()
    if first:
        out["hazards"] = hazards(path, got.tensors, views, None)
    return out


def hazards(path: Path, tensors: dict, views: list | None, why: str | None) -> dict:
    """DESIGN section 4's two hazards, measured (the first on a second mapping, the second last: it writes)."""
    import torch

    from comfyui_hearth.client import load, pinning

    out: dict = {}
    if why:
        out["writable_registration"] = {"skipped": why}
    else:
        second = load(path)
        pin = pinning.mapping_of(next(t for t in second.tensors.values() if t.numel()))
        before = smaps()["Anonymous"]
        t0 = time.perf_counter()
        err = int(torch.cuda.cudart().cudaHostRegister(pin.base, pin.size, 1))  # ComfyUI's flags
        out["writable_registration"] = {
            "error": err, "seconds": round(time.perf_counter() - t0, 3),
            "anonymous_delta": smaps()["Anonymous"] - before,
            "private_pages": pinning.written_pages(pin.base, pin.size), "mapping_pages": -(-pin.size // 4096)}
        if err == 0:
            torch.cuda.cudart().cudaHostUnregister(pin.base)
        del second, pin
        gc.collect()
    # A CPU write into a view after registration: copy-on-write moves the CPU to a new page.
    big = max((t for t in tensors.values() if t.numel()), key=lambda t: t.numel())
    u8 = big.reshape(-1).view(torch.uint8)
    old = int(u8[0])
    u8[0] = (old + 1) % 256
    pin = pinning.mapping_of(big)
    stale: dict = {"cpu_now": int(u8[0]), "old": old, "private_pages": pinning.written_pages(pin.base, pin.size)}
    if why:
        stale["gpu"] = {"skipped": why}
    else:
        stale["gpu_reads_old_page"] = int(u8[:4096].to("cuda")[0]) == old
        stale["verify_unregistered"] = [p.name for p in pinning.verify_views([big])] != []
        stale["gpu_after_verify_matches_cpu"] = int(u8[:4096].to("cuda")[0]) == int(u8[0])
    out["write_after_registration"] = stale
    return out


CHILD_TO_GPU = "to-gpu"


def to_gpu_child(mode: str, path: str) -> dict:
    """Item 4 in a fresh process: seconds from nothing to every tensor usable on the GPU."""
    import safetensors.torch
    import torch

    from comfyui_hearth.client import load, pinning

    why = cuda_reason()
    if why is None:
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    device = "cpu" if why else "cuda:0"
    out: dict = {"mode": mode, "device": device}
    t0 = time.perf_counter()
    if mode.startswith("stock"):
        sd = safetensors.torch.load_file(path, device=device)
    else:
        got = load(path)
        out["cached"] = got.cached
        out["load_s"] = round(time.perf_counter() - t0, 3)
        if mode == "hearth-registered" and not why:
            pins = pinning.register_views(got.tensors.values())
            out["registered"] = all(p.registered for p in pins)
            out["register_s"] = round(time.perf_counter() - t0 - out["load_s"], 3)
        sd = got.tensors if why else {k: v.to(device, non_blocking=True) for k, v in got.tensors.items()}
    if not why:
        torch.cuda.synchronize()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["values_ok"] = check_values(sd)
    if why:
        out["copy"] = f"skipped: {why}"
    return out


def time_to_gpu(path: Path, env: dict) -> dict:
    out = {}
    for mode in ("stock", "stock-cold", "hearth", "hearth-registered"):
        if mode == "stock":
            with open(path, "rb") as f:  # warm: the whole file in the page cache
                while f.read(64 << 20):
                    pass
        if mode == "stock-cold":
            drop_page_cache(path)
        proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--child", CHILD_TO_GPU, mode, str(path)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        out[mode] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                     else {"error": proc.stderr.strip().splitlines()[-1:]})
    return out


# ---- ComfyUI ---------------------------------------------------------------------------------------

GRAPH_CHILD = r"""
import json, os, sys, time
mode, flags, ckpt_dir, ckpt, out, size, steps = sys.argv[1:8]
sys.argv = sys.argv[:1] + json.loads(flags)
import comfy.options
comfy.options.enable_args_parsing()
import utils  # ComfyUI's utils/ first, as main.py does: 0.3.64's nodes.py puts comfy/ (utils.py) first on sys.path
import numpy as np, psutil, torch
import folder_paths
folder_paths.add_model_folder_path("checkpoints", ckpt_dir)
import nodes, comfy.model_management as mm
if mode == "hearth":
    from comfyui_hearth.nodes.checkpoint import HearthCheckpointLoader
    loader = lambda: HearthCheckpointLoader().load_checkpoint(ckpt)
else:
    loader = lambda: nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)
cuda = torch.cuda.is_available() and "--cpu" not in sys.argv
sync = torch.cuda.synchronize if cuda else (lambda: None)
t0 = time.perf_counter()
model, clip, vae = loader()[:3]
t_load = time.perf_counter() - t0
encode = nodes.CLIPTextEncode().encode
pos, neg = encode(clip, "a house by a lake")[0], encode(clip, "")[0]
latent = nodes.EmptyLatentImage().generate(int(size), int(size))[0]
t1 = time.perf_counter()
samples = nodes.common_ksampler(model, 42, int(steps), 7.0, "euler", "normal", pos, neg, latent)[0]
sync()
t_sample = time.perf_counter() - t1
image = vae.decode(samples["samples"])
pixels = (image[0] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
np.save(out, pixels)
rollup = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/smaps_rollup").read().splitlines()[1:]}
is_dynamic = getattr(model, "is_dynamic", None)
print(json.dumps({"mode": mode, "flags": json.loads(flags), "load_s": round(t_load, 3), "sample_s": round(t_sample, 3),
                  "total_s": round(time.perf_counter() - t0, 3), "device": str(model.load_device),
                  "dynamic": bool(is_dynamic()) if callable(is_dynamic) else False,
                  "rss": rollup.get("Rss"), "pss": rollup.get("Pss"), "anonymous": rollup.get("Anonymous"),
                  "vram_peak": torch.cuda.max_memory_allocated() if cuda else None}), flush=True)
"""

STRATEGY_CHILD = r"""
import json, sys, time
flags, ckpt_dir, ckpt, size, steps, again = sys.argv[1:7]
sys.argv = sys.argv[:1] + json.loads(flags)
import comfy.options
comfy.options.enable_args_parsing()
import utils  # before nodes, as in GRAPH_CHILD
import torch, folder_paths
folder_paths.add_model_folder_path("checkpoints", ckpt_dir)
import nodes, comfy.model_management as mm
from comfyui_hearth.nodes.checkpoint import HearthCheckpointLoader
from comfyui_hearth.nodes.vram import HearthVRAMBudget, apply_plan
from comfyui_hearth.planner import LADDER, Plan
cuda = torch.cuda.is_available() and "--cpu" not in sys.argv
sync = torch.cuda.synchronize if cuda else (lambda: None)
model, clip = HearthCheckpointLoader().load_checkpoint(ckpt)[:2]
encode = nodes.CLIPTextEncode().encode
pos, neg = encode(clip, "a house by a lake")[0], encode(clip, "")[0]
latent = nodes.EmptyLatentImage().generate(int(size), int(size))[0]
def sample(m):
    sync(); t0 = time.perf_counter()
    out = nodes.common_ksampler(m, 42, int(steps), 7.0, "euler", "normal", pos, neg, latent)[0]["samples"].float()
    sync(); return out, time.perf_counter() - t0
reference, _ = sample(model)
for strategy in LADDER:
    mm.unload_all_models(); mm.soft_empty_cache()
    if cuda: torch.cuda.reset_peak_memory_stats()
    resident = model.model_size() // 2 if strategy == "partial" else 0
    out, applied = apply_plan(model, Plan(strategy, 0, 0, resident, (), ""))
    first, t_first = sample(out)
    t_again = round(sample(out)[1], 3) if again == "1" else None
    print(json.dumps({"strategy": strategy, "first_s": round(t_first, 3), "again_s": t_again,
                      "device": str(out.current_loaded_device()), "loaded": out.loaded_size(), "size": out.model_size(),
                      "resident_planned": resident, "lowvram": bool(getattr(out.model, "model_lowvram", False)),
                      "vram_peak": torch.cuda.max_memory_allocated() if cuda else None,
                      "rel_diff": ((first - reference).abs().max() / reference.abs().max()).item()}), flush=True)
auto = HearthVRAMBudget().apply(model, "auto", "auto")["result"][1]
print(json.dumps({"strategy": "node auto", "text": auto}), flush=True)
"""


def comfy_runs(checkout: Path, daemon: Daemon, work: Path, out_dir: Path, dry: bool) -> dict:
    """Item 5: the tiny SD1.5 through ComfyUI, stock and Hearth, per patcher; the VRAM node's strategies."""
    import numpy as np

    folder = build_models(checkout, work / "comfy-models", CKPT, [])
    ckpt_dir = str(folder.checkpoint(CKPT).parent)
    size, steps = ("64", "1") if dry else ("512", "20")
    has_flag = "disable_dynamic_vram" in (checkout / "comfy" / "cli_args.py").read_text()
    patchers = [["--cpu"]] if dry else [[], *([["--disable-dynamic-vram"]] if has_flag else [])]
    hearth_env = comfy_env(checkout, extra_path=[import_root()], **{k: v for k, v in daemon.env.items()
                                                                   if k.startswith("HEARTH_")})
    stock_env = comfy_env(checkout, extra_path=[import_root()], HEARTH_DISABLE="1")
    out: dict = {"checkout": str(checkout), "version": _comfy_version(checkout), "runs": []}
    for flags in patchers:
        pixels = {}
        runs = [("stock", stock_env), ("hearth", hearth_env)] + ([] if dry else [("hearth", hearth_env)])  # warm
        for mode, env in runs:
            npy = out_dir / f"pixels-{mode}-{len(out['runs'])}.npy"
            proc = subprocess.run([sys.executable, "-c", GRAPH_CHILD, mode, json.dumps(flags), ckpt_dir, CKPT,
                                   str(npy), size, steps], cwd=checkout, env=env, capture_output=True, text=True,
                                  timeout=600)
            run = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                   else {"mode": mode, "flags": flags, "error": proc.stderr.strip().splitlines()[-3:]})
            if npy.exists():
                pixels.setdefault(mode, np.load(npy).astype(int))
                if mode == "hearth" and "stock" in pixels:
                    run["max_pixel_diff_to_stock"] = int(np.abs(np.load(npy).astype(int) - pixels["stock"]).max())
            out["runs"].append(run)
    proc = subprocess.run([sys.executable, "-c", STRATEGY_CHILD, json.dumps(patchers[-1]), ckpt_dir, CKPT, size,
                           "1" if dry else "8", "0" if dry else "1"], cwd=checkout, env=hearth_env,
                          capture_output=True, text=True, timeout=600)
    out["strategies"] = ([json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
                         if proc.returncode == 0 else {"error": proc.stderr.strip().splitlines()[-3:]})
    return out


def _comfy_version(checkout: Path) -> str:
    found = {}
    try:
        exec((checkout / "comfyui_version.py").read_text(), found)  # noqa: S102 - ComfyUI's own one-line file
    except OSError:
        pass
    return found.get("__version__", "?")


# ---- the run -------------------------------------------------------------------------------------

def fit_sizes(targets: list[float], work: Path, shm: Path, dry: bool) -> tuple[list[int], list[str]]:
    """The sizes this machine can hold at once: the segment, a host buffer as large, the file on disk."""
    wanted = [int(t * GB) for t in targets]
    if dry:
        return wanted, []
    vm = psutil.virtual_memory()
    st = os.statvfs(shm)
    caps = {"RAM": (vm.available - 8 * GB) / 2.2, "/dev/shm": 0.9 * st.f_bavail * st.f_frsize,
            "disk": shutil.disk_usage(work).free - 2 * GB}
    why = cuda_reason()
    if why is None:
        import torch

        caps["VRAM"] = 0.45 * torch.cuda.mem_get_info()[0]
    limit, by = min((v, k) for k, v in caps.items())
    sizes, notes = [], []
    for w in wanted:
        s = int(min(w, limit))
        if s < w:
            notes.append(f"{w / GB:g} GB sized down to {s / GB:.1f} GB: {by} is short "
                         f"({', '.join(f'{k} allows {v / GB:.1f} GB' for k, v in caps.items())})")
        if s > GB // 10:
            sizes.append(s)
    return sizes, notes


def machine() -> dict:
    import torch

    info = {"host": platform.node(), "kernel": platform.release(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cores": os.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / GB, 1), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    if cuda_reason() is None:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["vram_gb"] = round(torch.cuda.get_device_properties(0).total_memory / GB, 1)
    from comfyui_hearth.client import pinning

    info["memlock"] = pinning.memlock_limit()
    return info


def run(args: argparse.Namespace) -> dict:
    clock = Clock(args.time_limit)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out_dir / "work")
    models, shm = work / "models", Path("/dev/shm") / f"hearth-bench-gpu-{os.getpid()}"
    models.mkdir(parents=True, exist_ok=True)
    results: dict = {"dry": args.dry, "cuda": cuda_reason() or "available", "machine": machine()}
    sizes, notes = fit_sizes(args.sizes, work, Path("/dev/shm"), args.dry)
    results["sizes"], results["size_notes"] = sizes, notes
    daemon = Daemon(work / "home", [models, work / "comfy-models"], shm_dir=shm)
    daemon.env["HEARTH_BUDGET"] = "95%"
    with daemon:
        for k, v in daemon.env.items():
            if k.startswith("HEARTH_"):
                os.environ[k] = v
        for i, size in enumerate(sizes):
            path = models / f"flux-like-{size}.safetensors"
            tag = f"{size / GB:.3g}GB"
            step(results, f"write {tag}", clock, partial(write_model, path, size), needs_s=size / (0.3 * GB))
            step(results, f"bandwidth {tag}", clock,
                 partial(bandwidth_and_registration, path, size, first=i == 0), needs_s=size / (0.5 * GB))
            gc.collect()  # the views go: the segment is no longer held by this process
            if i == len(sizes) - 1:
                step(results, f"to gpu {tag}", clock, partial(time_to_gpu, path, daemon.env),
                     needs_s=size / (0.4 * GB))
            try:
                daemon.api("POST", "/v1/evict", {"path": str(path)})
            except OSError as e:  # never filled (an earlier step failed): nothing to evict
                results.setdefault("cleanup", []).append(f"evict {path.name}: {e}")
            path.unlink(missing_ok=True)
        checkout = Path(args.comfyui) if args.comfyui else None
        if checkout is None:
            results["comfyui"] = {"skipped": "no ComfyUI checkout given (--comfyui or $HEARTH_COMFYUI)"}
        else:
            step(results, "comfyui", clock, lambda: comfy_runs(checkout, daemon, work, out_dir, args.dry),
                 needs_s=60)
    shutil.rmtree(shm, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - clock.start, 1)
    (out_dir / "gpu.json").write_text(json.dumps(results, indent=1))
    (out_dir / "gpu.md").write_text(table(results))
    return results


def table(r: dict) -> str:
    """The figures as Markdown tables (each beside its baseline)."""
    def bw(d: dict, key: str) -> str:
        v = d.get(key, {})
        return f"{v['gbps_best']:.1f}" if "gbps_best" in v else v.get("skipped", "-") if isinstance(v, dict) else "-"

    m = r["machine"]
    lines = [f"# bench.gpu {'(dry run, CPU)' if r['dry'] else ''}", "",
             f"{m.get('gpu', 'no GPU')}, torch {m['torch']} (CUDA {m['cuda']}), {m['ram_gb']} GB RAM, {m['date']}; "
             f"CUDA: {r['cuda']}; {r['seconds']} s", *[f"- {n}" for n in r["size_notes"]], "",
             "| size | pageable GB/s | segment GB/s | segment registered GB/s | torch pinned GB/s "
             "| registered / pinned | registration s/GB | Anonymous delta | private pages after |", "|" + "---|" * 9]
    for key, b in r.items():
        if key.startswith("bandwidth ") and isinstance(b, dict):
            reg, anon = b.get("registration", {}), b.get("anonymous", {})
            lines.append(f"| {key.split()[1]} | {bw(b, 'pageable')} | {bw(b, 'segment_pageable')} | "
                         f"{bw(b, 'segment_registered')} | {bw(b, 'torch_pinned')} "
                         f"| {b.get('registered_vs_pinned', '-')} | {reg.get('s_per_gb', '-')} "
                         f"| {anon.get('delta', b.get('skipped', b.get('error', '-')))} "
                         f"| {anon.get('private_pages_after', '-')} |")
    for key, b in r.items():
        if key.startswith("bandwidth ") and isinstance(b, dict) and "hazards" in b:
            h = b["hazards"]
            lines += ["", "Hazards (DESIGN section 4):",
                      f"- writable registration: {json.dumps(h['writable_registration'])}",
                      f"- write after a read-only registration: {json.dumps(h['write_after_registration'])}"]
        if key.startswith("to gpu ") and isinstance(b, dict):
            lines += ["", f"| time to the model on the GPU ({key.split()[2]}) | seconds | values ok |", "|---|---|---|"]
            lines += [f"| {mode} | {v.get('seconds', v.get('error', '-'))} | {v.get('values_ok', '-')} |"
                      for mode, v in b.items() if isinstance(v, dict)]
    c = r.get("comfyui", {})
    if "runs" in c:
        lines += ["", f"ComfyUI {c['version']}:", "", "| loader | flags | load s | sample s | max pixel diff to stock "
                  "| RSS | PSS | Anonymous | VRAM peak | dynamic |", "|" + "---|" * 10]
        for x in c["runs"]:
            lines.append(f"| {x.get('mode')} | {' '.join(x.get('flags', [])) or 'default'} "
                         f"| {x.get('load_s', x.get('error'))} | {x.get('sample_s', '-')} "
                         f"| {x.get('max_pixel_diff_to_stock', '-')} | {_gb(x.get('rss'))} "
                         f"| {_gb(x.get('pss'))} | {_gb(x.get('anonymous'))} | {_gb(x.get('vram_peak'))} "
                         f"| {x.get('dynamic', '-')} |")
        if isinstance(c.get("strategies"), list):
            lines += ["", "| VRAM strategy | first s | again s | device | loaded / size | VRAM peak | rel diff |",
                      "|" + "---|" * 7]
            lines += [f"| {s['strategy']} | {s.get('first_s', '-')} | {s.get('again_s', '-')} | {s.get('device', '-')} "
                      f"| {_gb(s.get('loaded'))} / {_gb(s.get('size'))} | {_gb(s.get('vram_peak'))} "
                      f"| {s.get('rel_diff', '-')} |"
                      for s in c["strategies"] if "text" not in s]
    elif c:
        lines += ["", f"ComfyUI: {c.get('skipped', c.get('error'))}"]
    return "\n".join(lines) + "\n"


def _gb(n) -> str:
    return f"{n / GB:.2f} GB" if isinstance(n, (int, float)) else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="the whole flow on the CPU at small sizes")
    p.add_argument("--out", default=str(BENCH / "out" / "gpu"), help="where gpu.json and gpu.md go")
    p.add_argument("--work", help="where the synthetic models and the daemon's home go (default OUT/work)")
    p.add_argument("--sizes", type=lambda s: [float(x) for x in s.split(",")], default=None,
                   help="model sizes in GB (default 4,23; dry 0.064,0.128)")
    p.add_argument("--comfyui", default=os.environ.get("HEARTH_COMFYUI"), help="a ComfyUI checkout")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds before steps are skipped")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(to_gpu_child(args.child[1], args.child[2])), flush=True)
        return 0
    if args.sizes is None:
        args.sizes = [0.064, 0.128] if args.dry else [4.0, 23.0]
    if args.comfyui and not (Path(args.comfyui) / "main.py").is_file():
        print(f"bench.gpu: no ComfyUI checkout at {args.comfyui}; its step is skipped", file=sys.stderr)
        args.comfyui = None  # a checkout missing some of its requirements still runs: what fails says so
    results = run(args)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
