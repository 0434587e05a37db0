"""Eviction benchmark: how long the daemon keeps others waiting while an evicted segment's memory is freed.

    python -m bench.eviction                 # segments of 1 and 4 GiB
    python -m bench.eviction --sizes 1,2,4,8

The last close of a tmpfs file frees its pages; the daemon does that in its reaper thread (daemon/reaper.py),
where it used to be on the event loop, which then answered nothing for as long. For each size: one daemon of
its own fills a segment of that many real bytes and a small one; one thread probes /v1/health without a
pause and another acquires the small model (a hit) without a pause, each over a new connection as clients
do; then the big segment is evicted, and status is polled until nothing is being freed. Reported: how long
the free took (the evict's answer to status saying it ended), the longest health answer and hit acquire
while it ran (and the longest health answer in the half second before, for scale), and, as the baseline,
the same free done on the caller's thread here (close of an unlinked tmpfs file of that size): the stall
every request saw while the loop did it. Run against a daemon that frees on its loop (no `freeing` in its
status), the same table shows that stall itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

GiB = 1 << 30
CHUNK = 1 << 24


def write_model(path: Path, size: int) -> Path:
    """One U8 tensor of `size` bytes, every byte written (a file hole would fill as fast, but a user's is dense)."""
    head = json.dumps({"big": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    head += b" " * (-len(head) % 8)
    block = bytes([0x5A]) * CHUNK
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for begin in range(0, size, CHUNK):
            f.write(block[:min(CHUNK, size - begin)])
    return path


def close_time(folder: Path, size: int) -> float:
    """Seconds the last close of an unlinked, fully allocated tmpfs file of `size` bytes takes here."""
    path = folder / "close-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.unlink(path)
        t0 = time.perf_counter()
        os.close(fd)
    return time.perf_counter() - t0


class Prober(threading.Thread):
    """Sends one request after another (a new connection each) and keeps (sent at, seconds) of each."""

    def __init__(self, port: int, method: str, path: str, body: dict | None = None, token: str | None = None):
        super().__init__(daemon=True)
        self.port, self.method, self.path = port, method, path
        self.body = None if body is None else json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request(self.method, self.path, body=self.body, headers=self.headers)
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            self.samples.append((t0, time.monotonic() - t0))
            self.failures += not ok

    def longest(self, begin: float, end: float) -> tuple[float, int]:
        """The longest answer among the requests sent in [begin, end], and how many were sent."""
        within = [s for t, s in self.samples if begin <= t <= end]
        return max(within, default=float("nan")), len(within)


def one_size(root: Path, size: int) -> dict:
    from harness.daemon import Daemon

    models = root / f"models-{size}"
    models.mkdir()
    big = write_model(models / "big.safetensors", size)
    small = write_model(models / "small.safetensors", 1 << 20)
    shm = Path("/dev/shm") / f"hearth-bench-eviction-{os.getpid()}-{size}"
    daemon = Daemon(root / f"home-{size}", [models], shm_dir=shm)
    daemon.env["HEARTH_BUDGET"] = str(2 * size)
    daemon.start()
    try:
        daemon.api("POST", "/v1/acquire", {"path": str(big)})
        daemon.api("POST", "/v1/acquire", {"path": str(small)})
        port = json.loads((daemon.home / "daemon.json").read_text())["port"]
        token = (daemon.home / "token").read_text().strip()
        probers = [Prober(port, "GET", "/v1/health"),
                   Prober(port, "POST", "/v1/acquire", {"path": str(small)}, token)]
        for p in probers:
            p.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        daemon.api("POST", "/v1/evict", {"path": str(big)})
        answered = time.monotonic()
        while daemon.status()["shm"].get("freeing"):  # (a daemon that frees on its loop has no such field)
            time.sleep(0.005)
        freed = time.monotonic()
        time.sleep(0.2)
        for p in probers:
            p.stop.set()
        for p in probers:
            p.join(60)
        kept = [s["key"] for s in daemon.status()["segments"]]
        left = [n for n in os.listdir(shm) if not any(n.endswith(k) for k in kept)]
        health, n_health = probers[0].longest(t0, freed)
        quiet, _ = probers[0].longest(t0 - 0.5, t0)
        hit, n_hit = probers[1].longest(t0, freed)
        return {"size": size, "freed_s": freed - t0, "evict_answer_s": answered - t0,
                "health_max_s": health, "health_n": n_health, "quiet_max_s": quiet, "hit_max_s": hit, "hit_n": n_hit,
                "failures": sum(p.failures for p in probers), "left": left,
                "close_s": close_time(shm, size)}
    finally:
        daemon.stop()
        shutil.rmtree(shm, ignore_errors=True)


def report(rows: list[dict]) -> str:
    ms = 1000.0
    lines = ["| segment | freed in (reaper) | the same free on the caller's thread (the old stall) | evict answered "
             "| longest /v1/health during the free (n) | longest hit acquire during it (n) | stall / old stall "
             "| longest /v1/health in the 0.5 s before |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['size'] / GiB:g} GiB | {r['freed_s'] * ms:.0f} ms | {r['close_s'] * ms:.0f} ms | "
                     f"{r['evict_answer_s'] * ms:.1f} ms | {r['health_max_s'] * ms:.1f} ms ({r['health_n']}) | "
                     f"{r['hit_max_s'] * ms:.1f} ms ({r['hit_n']}) | "
                     f"{max(r['health_max_s'], r['hit_max_s']) / r['close_s']:.3f}x | {r['quiet_max_s'] * ms:.1f} ms |")
    bad = [r for r in rows if r["failures"] or r["left"]]
    lines += ["", "failed requests, names left in the tmpfs: " +
              ("; ".join(f"{r['size'] / GiB:g} GiB: {r['failures']} failed, left {r['left']}" for r in bad)
               if bad else "none")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,4", help="GiB per segment, comma-separated")
    args = p.parse_args(argv)
    sizes = [int(float(s) * GiB) for s in args.sizes.split(",")]
    free = shutil.disk_usage("/dev/shm").free
    if free < max(sizes) * 1.2:
        print(f"/dev/shm has {free / GiB:.1f} GiB free; the largest segment asked for needs "
              f"{max(sizes) / GiB:g} GiB and some room", file=sys.stderr)
        return 2
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"# eviction run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {cpu}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}; load average "
          f"{os.getloadavg()[0]:.1f} before", flush=True)
    root = Path(tempfile.mkdtemp(prefix="hearth-eviction-"))
    try:
        rows = [one_size(root, s) for s in sizes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(rows))
    print(f"load average {os.getloadavg()[0]:.1f} after")
    return 0 if not any(r["failures"] or r["left"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
