"""The main job (`./dev.sh demo`): start the daemon, build a sample checkpoint, load it cold and warm.

Uses the user's own daemon (started headless if none runs) and leaves it running with the sample cached,
so `hearth status`, a ComfyUI restart or a second process can see the warm cache afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys

from comfyui_hearth.cli import main as hearth
from comfyui_hearth.client.connection import connect
from comfyui_hearth.client.spawn import start_daemon
from comfyui_hearth.core.errors import DaemonUnavailable

from .load import OUT, run_bench, table
from .synth import build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="size of the sample (1.0: ~2.1 GB, SD1.5-shaped)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    print("building the sample checkpoint (random weights, SD1.5's 1,135-tensor profile)...", flush=True)
    OUT.mkdir(exist_ok=True)
    path = build(OUT / f"sd15-demo-{args.scale:g}.safetensors", scale=args.scale)
    os.environ.pop("HEARTH_DISABLE", None)
    try:
        conn = connect()
        print(f"using the running Hearth daemon (pid {conn.pid})")
    except DaemonUnavailable:
        proc = start_daemon()
        conn = connect()
        print(f"started the Hearth daemon headless (pid {proc.pid}, port {conn.port})")
    dirs = conn.get("/v1/config")["model_dirs"]
    if str(path.parent) not in dirs:
        conn.post("/v1/config", {"model_dirs": dirs + [str(path.parent)]})
    print(f"loading {path.name} in fresh processes, cold and warm, stock and Hearth...", flush=True)
    rows = run_bench(path, dict(os.environ), args.repeats)
    print()
    print(table(path, rows, args.repeats))
    print()
    hearth(["status"])
    print(f"\nThe daemon keeps running with the sample cached; stop it with: kill {conn.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
