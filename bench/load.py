"""Load benchmark: stock safetensors vs Hearth, fresh processes, one table with ratios.

    python -m bench.load            # SD1.5-shaped, ~2.1 GB fp16, 1,135 tensors
    python -m bench.load --small    # same tensor count, ~70 MB (CI)

Rows: stock `safetensors.torch.load_file` with a warm page cache and after the file's page cache was
dropped (posix_fadvise DONTNEED: what memory pressure does), Hearth's cold fill, Hearth's warm acquire;
each as the time to return and the time to return plus reading every byte (min and median over fresh
processes); then the PSS of 4 processes holding the model. Ratios are against stock of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from comfyui_hearth.client.connection import connect
from comfyui_hearth.client.spawn import start_daemon
from comfyui_hearth.core.errors import NotFound
from comfyui_hearth.core.sizes import format_size

from .synth import build

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def probe(mode: str, path: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.probe", mode, str(path)], env=env, cwd=ROOT.parent,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def series(n: int, run) -> dict:
    runs = [run() for _ in range(n)]
    return {k: [r[k] for r in runs] for k in ("return_s", "read_s")} | {"last": runs[-1]}


def pss_of_holders(mode: str, path: Path, env: dict, n: int = 4) -> int:
    """Total PSS added by `n` processes that each loaded and read the whole model and still hold it."""
    procs = [subprocess.Popen([sys.executable, "-m", "bench.probe", mode, str(path), "--hold"], env=env,
                              cwd=ROOT.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    try:
        for p in procs:
            p.stdout.readline()
        before = sum(psutil.Process(p.pid).memory_full_info().pss for p in procs)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            p.stdout.readline()
        after = sum(psutil.Process(p.pid).memory_full_info().pss for p in procs)
        return after - before
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)


def run_bench(path: Path, env: dict, repeats: int) -> dict:
    """All rows for one checkpoint, against the daemon this process's environment points to."""
    conn = connect()

    def stock_warm():
        probe("stock", path, env)  # make sure the page cache holds the file
        return probe("stock", path, env)

    def stock_cold():
        drop_page_cache(path)
        return probe("stock", path, env)

    def hearth_cold():
        try:
            conn.post("/v1/evict", {"path": str(path)})
        except NotFound:
            pass  # not cached yet
        drop_page_cache(path)
        return probe("hearth", path, env)

    def hearth_warm():
        return probe("hearth", path, env)

    rows = {"stock_warm": series(repeats, stock_warm), "stock_cold": series(repeats, stock_cold),
            "hearth_cold": series(repeats, hearth_cold), "hearth_warm": series(repeats, hearth_warm)}
    assert rows["hearth_warm"]["last"].get("hit"), f"warm Hearth load was not a hit: {rows['hearth_warm']['last']}"
    stock_warm()
    rows["pss_stock"] = pss_of_holders("stock", path, env)
    rows["pss_hearth"] = pss_of_holders("hearth", path, env)
    return rows


def fmt_ms(xs: list[float]) -> str:
    return f"{1000 * min(xs):8.1f} {1000 * statistics.median(xs):8.1f}"


def table(path: Path, rows: dict, repeats: int) -> str:
    size = path.stat().st_size
    base_w, base_c = rows["stock_warm"], rows["stock_cold"]
    lines = [f"checkpoint: {path.name}, {format_size(size)}, {rows['hearth_warm']['last']['tensors']} tensors; "
             f"{repeats} fresh processes per row; times in ms (min, median); ratio = median / stock median",
             f"{'':34}{'return':>17}{'ratio':>8}   {'return+read all':>17}{'ratio':>8}"]
    for name, key, base in (("stock load_file, page cache warm", "stock_warm", base_w),
                            ("stock load_file, page cache cold", "stock_cold", base_c),
                            ("Hearth cold fill (vs stock cold)", "hearth_cold", base_c),
                            ("Hearth warm acquire (vs stock warm)", "hearth_warm", base_w)):
        r = rows[key]
        ratios = [statistics.median(r[k]) / statistics.median(base[k]) for k in ("return_s", "read_s")]
        lines.append(f"{name:34}{fmt_ms(r['return_s']):>17}{ratios[0]:7.2f}x   "
                     f"{fmt_ms(r['read_s']):>17}{ratios[1]:7.2f}x")
    lines.append(f"PSS of 4 processes holding it: stock {format_size(rows['pss_stock'])} "
                 f"({rows['pss_stock'] / size:.2f}x one copy), Hearth {format_size(rows['pss_hearth'])} "
                 f"({rows['pss_hearth'] / size:.2f}x one copy)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="~70 MB, same tensor count (CI)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.small else 5)
    OUT.mkdir(exist_ok=True)
    path = build(OUT / ("sd15-small.safetensors" if args.small else "sd15-shaped.safetensors"),
                 scale=0.03 if args.small else 1.0)
    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as home:
        # This process is a client of the bench's private daemon too, so the settings go in its environment.
        os.environ.update({"HEARTH_HOME": home, "HEARTH_PORT": "0", "HEARTH_MODEL_DIRS": str(path.parent)})
        os.environ.pop("HEARTH_DISABLE", None)
        env = dict(os.environ)
        daemon = start_daemon(env)
        try:
            rows = run_bench(path, env, repeats)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
            _remove_segments(home)
    print(table(path, rows, repeats))
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    return 0


def _remove_segments(home: str) -> None:
    """The bench's private daemon leaves its segments for re-adoption; a benchmark must not."""
    from comfyui_hearth.core.jsonfile import read_json
    from comfyui_hearth.daemon import segments

    for key in read_json(Path(home) / "index.json", {}) or {}:
        segments.unlink(key)


if __name__ == "__main__":
    sys.exit(main())
