"""Scenario 6: the daemon restarts; its segments outlived it and are re-adopted, not refilled.

Per repeat: stop the daemon (SIGTERM; the segments stay in the tmpfs), start it again and time until it
answers and until an acquire of the checkpoint is served as a hit; then the first txt2img prompt of a
fresh ComfyUI, beside a stock ComfyUI's first prompt at the same moment. The reference for the restart
is a refill: the checkpoint's fill from disk with a cold page cache.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..load import drop_page_cache
from .fixture import HEARTH, STOCK, Bench, txt2img_graph, warm_page_cache
from .loading import checkpoint_status, timed_run


def refill_seconds(bench: Bench) -> float:
    """What a daemon that lost its segments pays: evict the checkpoint, drop its page cache, fill again."""
    ckpt = bench.checkpoint
    bench.daemon.api("POST", "/v1/evict", {"path": str(ckpt)})
    drop_page_cache(ckpt)
    t0 = time.perf_counter()
    answer = bench.acquire(ckpt)
    assert not answer["hit"], "the evicted checkpoint was served as a hit"
    return time.perf_counter() - t0


def daemon_restart(bench: Bench, repeats: int, segment: Path) -> dict:
    out: dict = {"refill_s": refill_seconds(bench), "ready_s": [], "served_s": [], "hit": [], "prompt_s": [],
                 "status": [], "stock_prompt_s": []}
    for _ in range(repeats):
        bench.daemon.stop()
        if not segment.exists():
            raise RuntimeError(f"the segment {segment} did not outlive the daemon")
        t0 = time.perf_counter()
        bench.daemon.start()
        out["ready_s"].append(time.perf_counter() - t0)
        answer = bench.acquire(bench.checkpoint)
        out["served_s"].append(time.perf_counter() - t0)
        out["hit"].append(bool(answer["hit"]))
        with bench.running(HEARTH) as server:
            run, wall = timed_run(server, txt2img_graph(HEARTH))
        out["prompt_s"].append(wall)
        out["status"].append(checkpoint_status(run))
        # The reference: stock's first prompt at the same moment (its page cache warm), not one taken
        # minutes earlier under another load.
        warm_page_cache(bench.checkpoint)
        with bench.running(STOCK) as server:
            out["stock_prompt_s"].append(timed_run(server, txt2img_graph(STOCK))[1])
    return out
