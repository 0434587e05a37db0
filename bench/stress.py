"""Load benchmark: many processes acquiring, mapping and releasing under eviction pressure, beside stock.

    python -m bench.stress                       # 8 processes x 1,000 cycles, 16 files of 4 MiB, budget 40 MiB
    python -m bench.stress --procs 4 --cycles 200

One daemon of its own; a working set larger than its budget (16 files, room for 10), so random picks keep
evicting and refilling. Each process runs cycles on files picked at random (seeded): acquire (the HTTP
round trip; on a miss it includes the fill and the eviction that makes room), map (open, flock, header,
views), release (the lease, sent before the cycle ends), then every byte of every tensor is compared with the
file's, read by the stock loader, and the tensors are dropped. In the same processes, interleaved with the
cycles, the stock baseline: `safetensors.torch.load_file` of another random file of the same set (warm page
cache), checked the same way. An error is any exception of a cycle (over_budget included: with at most one
segment held per process, the budget always has room); a wrong tensor is any byte that differs.

Reported: p50/p99/max of acquire, of the whole cycle, and of the stock load; errors, wrong tensors; the
daemon's hits, misses, fills and evictions; the load average before, during and after; and whether the
emptied cache left a name in its tmpfs folder. The target (issue 13): p99 acquire under 50 ms here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MB = 1 << 20


def make_files(folder: Path, n: int, size: int, tensors: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    numel = size // 2 // tensors
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        sd = {f"lora.{k}.weight": torch.randn(numel, generator=g).half() for k in range(tensors)}
        path = folder / f"lora{i:02d}.safetensors"
        save_file(sd, str(path))
        paths.append(path)
    return paths


def worker(args) -> None:
    """One process's cycles; prints one JSON line of its timings and counts."""
    import torch
    from safetensors.torch import load_file

    from comfyui_hearth.client.acquire import acquire, release
    from comfyui_hearth.client.connection import connect
    from comfyui_hearth.client.mapping import map_segment

    paths = [str(p) for p in sorted(Path(args.folder).glob("*.safetensors"))]
    refs = {p: load_file(p) for p in paths}  # views of the page cache: no copy per process

    def wrong(got: dict, want: dict) -> int:
        if set(got) != set(want):
            return 1
        return sum(got[k].dtype != t.dtype or got[k].shape != t.shape
                   or not torch.equal(got[k].view(torch.uint8), t.view(torch.uint8)) for k, t in want.items())

    conn = connect()
    rng = random.Random(args.seed)
    print("ready", flush=True)
    sys.stdin.readline()
    acquire_s, cycle_s, stock_s, errors, wrongs, kinds = [], [], [], 0, 0, {}
    for _ in range(args.cycles):
        path = rng.choice(paths)
        t0 = time.perf_counter()
        try:
            answer = acquire(conn, path)
            t1 = time.perf_counter()
            tensors, _ = map_segment(answer["segment"], answer["size"], path)
            release(conn, answer["key"], path)
            t2 = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - counted, by kind
            errors += 1
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
        else:
            acquire_s.append(t1 - t0)
            cycle_s.append(t2 - t0)
            wrongs += wrong(tensors, refs[path])
            del tensors  # the mapping, its descriptor and its hold go with the last view
        other = rng.choice(paths)
        t0 = time.perf_counter()
        stock = load_file(other)
        stock_s.append(time.perf_counter() - t0)
        wrongs += wrong(stock, refs[other])
        del stock
    print(json.dumps({"acquire": acquire_s, "cycle": cycle_s, "stock": stock_s, "errors": errors,
                      "error_kinds": kinds, "wrong": wrongs}), flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def run(args) -> dict:
    from harness.daemon import Daemon

    root = Path(tempfile.mkdtemp(prefix="hearth-stress-"))
    shm = Path("/dev/shm") / f"hearth-stress-{os.getpid()}"
    files = root / "models"
    make_files(files, args.files, args.size * MB, args.tensors)
    daemon = Daemon(root / "home", [files], shm_dir=shm)
    daemon.env["HEARTH_BUDGET"] = f"{args.budget}M"
    daemon.start()
    env = {**daemon.env}
    loads: list[float] = []
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "bench.stress", "--worker", "--folder", str(files),
                                   "--cycles", str(args.cycles), "--seed", str(args.seed * 1000 + i)],
                                  cwd=BENCH.parent, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) for i in range(args.procs)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        load_before = os.getloadavg()[0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(1.0):
                loads.append(os.getloadavg()[0])

        threading.Thread(target=sample, daemon=True).start()
        t0 = time.monotonic()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        wall = time.monotonic() - t0
        done.set()
        for p in procs:
            p.wait()
        status = daemon.status()
        daemon.api("POST", "/v1/evict", {"all": True})
        time.sleep(0.5)
        left = sorted(os.listdir(shm))
    finally:
        daemon.stop()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    merged = {k: [x for r in results for x in r[k]] for k in ("acquire", "cycle", "stock")}
    kinds: dict[str, int] = {}
    for r in results:
        for k, n in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + n
    return {"merged": merged, "errors": sum(r["errors"] for r in results), "error_kinds": kinds,
            "wrong": sum(r["wrong"] for r in results), "stats": status["stats"], "left": left, "wall_s": wall,
            "load_before": load_before, "load_during": statistics.mean(loads) if loads else float("nan"),
            "load_max": max(loads, default=float("nan")), "load_after": os.getloadavg()[0]}


def report(args, r: dict) -> str:
    ms = 1000.0
    stock_p50 = pct(r["merged"]["stock"], 0.5)
    lines = [f"{args.procs} processes x {args.cycles:,} cycles, {args.files} files of {args.size} MiB "
             f"({args.tensors} fp16 tensors each), budget {args.budget} MiB (room for "
             f"{args.budget // args.size} of {args.files}); wall time {r['wall_s']:.0f} s; load average "
             f"{r['load_before']:.1f} before, {r['load_during']:.1f} mean and {r['load_max']:.1f} max during, "
             f"{r['load_after']:.1f} after", "",
             "| per cycle | n | p50 (ms) | p99 (ms) | max (ms) | p50 / p99 ratio to stock |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    stock_p99 = pct(r["merged"]["stock"], 0.99)
    for name, key in (("Hearth acquire (HTTP; a miss includes eviction and fill)", "acquire"),
                      ("Hearth acquire + map + release", "cycle"),
                      ("stock `load_file`, same files, same processes", "stock")):
        v = r["merged"][key]
        lines.append(f"| {name} | {len(v):,} | {pct(v, 0.5) * ms:.2f} | {pct(v, 0.99) * ms:.2f} | "
                     f"{max(v, default=float('nan')) * ms:.1f} | {pct(v, 0.5) / stock_p50:.2f}x / "
                     f"{pct(v, 0.99) / stock_p99:.2f}x |")
    st = r["stats"]
    lines += ["", f"errors {r['errors']} {r['error_kinds'] or ''}, wrong tensors {r['wrong']}; daemon: "
                  f"{st['hits']:,} hits, {st['misses']:,} misses, {st['fills']:,} fills, {st['evictions']:,} "
                  f"evictions; left in the tmpfs after evicting all: {r['left'] or 'nothing'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--files", type=int, default=16, help="number of files")
    p.add_argument("--size", type=int, default=4, help="MiB per file")
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--budget", type=int, default=40, help="MiB")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"# stress run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {cpu}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}", flush=True)
    r = run(args)
    print(report(args, r))
    ok = r["errors"] == 0 and r["wrong"] == 0 and not r["left"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
