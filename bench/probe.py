"""One fresh process's load, for the benchmarks: `python -m bench.probe stock|hearth PATH [--hold]`.

Prints one JSON line with the time to return and the time to return plus reading every byte. With
--hold it waits for "go" on stdin before loading and for a line after, so a parent can measure PSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import safetensors.torch
import torch

from comfyui_hearth.client import load


def read_all(sd: dict[str, torch.Tensor]) -> int:
    """Touch every byte (a uint8 reduction per tensor) so lazily mapped pages are really read."""
    acc = 0
    for t in sd.values():
        if t.numel():
            acc ^= int(t.reshape(-1).view(torch.uint8).max())
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["stock", "hearth"])
    ap.add_argument("path")
    ap.add_argument("--hold", action="store_true")
    args = ap.parse_args()
    if args.hold:
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
    t0 = time.perf_counter()
    if args.mode == "stock":
        sd, extra = safetensors.torch.load_file(args.path), {}
    else:
        loaded = load(args.path)
        sd, extra = loaded.tensors, {"cached": loaded.cached, "hit": loaded.hit, "reason": loaded.reason}
    t1 = time.perf_counter()
    read_all(sd)
    t2 = time.perf_counter()
    print(json.dumps({"return_s": t1 - t0, "read_s": t2 - t0, "tensors": len(sd), **extra}), flush=True)
    if args.hold:
        sys.stdin.readline()


if __name__ == "__main__":
    main()
