"""Scenario 7 (CUDA only): host-to-device bandwidth from Hearth's segment, from pageable memory and from
pinned memory (the device's practical peak), and the time to a model on the GPU, stock vs Hearth.

Runs as a child of the benchmark (`python -m bench.scenarios.cuda CHECKPOINT`) with the benchmark
daemon's environment, and prints one JSON line: the figures, or {"skipped": reason} without CUDA.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PASSES = 3


def run_child(checkpoint: Path, env: dict[str, str], cwd: Path) -> dict:
    """Scenario 7 in a fresh process (CUDA must not be initialised in the benchmark itself)."""
    out = subprocess.run([sys.executable, "-m", __name__, str(checkpoint)], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"skipped": f"the CUDA scenario failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _copy_rate(sources: list, device) -> list[float]:
    """Bytes/s of copying every tensor into preallocated device buffers, once per pass."""
    import torch

    dst = [torch.empty(t.shape, dtype=t.dtype, device=device) for t in sources]
    size = sum(t.numel() * t.element_size() for t in sources)
    rates = []
    for _ in range(PASSES):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for d, s in zip(dst, sources, strict=True):
            d.copy_(s, non_blocking=True)
        torch.cuda.synchronize()
        rates.append(size / (time.perf_counter() - t0))
    del dst
    torch.cuda.empty_cache()
    return rates


def _register_read_only(views: list) -> tuple[int, int] | str:
    """cudaHostRegister the segment's mapping read-only (an experiment for DESIGN section 4's pinning)."""
    import torch

    lo = min(v.data_ptr() for v in views) & ~4095
    hi = max(v.data_ptr() + v.numel() * v.element_size() for v in views)
    read_only = 8  # cudaHostRegisterReadOnly: no write access, so no copy-on-write of the private mapping
    err = torch.cuda.cudart().cudaHostRegister(lo, hi - lo, read_only)
    return (lo, hi - lo) if int(err) == 0 else f"cudaHostRegister returned {err}"


def _to_device_seconds(load) -> list[float]:
    import torch

    times = []
    for _ in range(PASSES):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sd = load()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del sd
        torch.cuda.empty_cache()
    return times


def measure(path: str) -> dict:
    import safetensors.torch
    import torch

    from comfyui_hearth.client.load import load

    if not torch.cuda.is_available():
        return {"skipped": f"no CUDA device (torch {torch.__version__}, "
                           f"CUDA build: {torch.version.cuda or 'none'})"}
    device = torch.device("cuda", 0)
    torch.zeros(1, device=device)  # CUDA's start-up is no part of any figure
    loaded = load(path)
    if not loaded.cached:
        return {"skipped": f"Hearth did not serve the checkpoint: {loaded.reason}"}
    views = [t for t in loaded.tensors.values() if t.numel()]
    pageable = [t.clone() for t in views]
    pinned = [t.pin_memory() for t in views]
    out = {"device": torch.cuda.get_device_name(device), "bytes": sum(t.numel() * t.element_size() for t in views),
           "bw_segment": _copy_rate(views, device), "bw_pageable": _copy_rate(pageable, device),
           "bw_pinned": _copy_rate(pinned, device)}
    del pageable, pinned
    registered = _register_read_only(views)
    if isinstance(registered, tuple):
        out["bw_segment_registered"] = _copy_rate(views, device)
        torch.cuda.cudart().cudaHostUnregister(registered[0])
    else:
        out["registered_error"] = registered
    out["to_gpu_stock_s"] = _to_device_seconds(lambda: safetensors.torch.load_file(path, device="cuda:0"))
    out["to_gpu_hearth_s"] = _to_device_seconds(
        lambda: {k: v.to(device, non_blocking=True) for k, v in load(path).tensors.items()})
    out["summary"] = {k: statistics.median(v) for k, v in out.items() if isinstance(v, list)}
    return out


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])), flush=True)
