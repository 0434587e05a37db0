"""Scenarios 1, 2 and 5: one fresh ComfyUI process per measurement, stock and Hearth taking turns.

1. restart with the checkpoint's page cache warm: the loader node's time and the private memory after it;
2. the same after the page cache lost the file (posix_fadvise DONTNEED);
5. the first txt2img prompt after ComfyUI starts, end to end, with every node's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.server import ComfyServer, Run

from ..load import drop_page_cache
from .fixture import LOADER_ID, SIDES, Bench, loader_graph, txt2img_graph, warm_page_cache
from .memory import usage

# How node times are taken, the same for stock and Hearth:
# - scenarios 1 and 2 run the loader alone (with a PreviewAny to make it an output), so the prompt's
#   execution on ComfyUI's own clock (`execution_start` to `execution_success`, timestamps in ms) is the
#   loader's time plus a millisecond of bookkeeping;
# - inside a whole graph (scenarios 4 and 5) a node's time is from its websocket `executing` message to
#   the next one, as the client receives them. That includes delivery lag of ComfyUI's event loop: on a
#   CPU-starved machine it was seen to add ~0.3 s to a 0.2 s node, which is why 1 and 2 use the clock.
# Hearth's nodes also report their own time (`hearth.load` events); it is kept as a cross-check.


def checkpoint_event(run: Run) -> dict | None:
    """Hearth's own report of the checkpoint load (status "hit", "miss" or "fallback"; the node's seconds)."""
    events = [e for e in run.hearth_loads() if e.get("kind") == "checkpoint"]
    return events[0] if events else None


def checkpoint_status(run: Run) -> str | None:
    """"hit", "miss" or "fallback" for Hearth's loader; None for stock nodes."""
    event = checkpoint_event(run)
    return event["status"] if event else None


def server_seconds(run: Run) -> float | None:
    """The prompt's execution as ComfyUI's own clock saw it (execution_start to execution_success, ms)."""
    start, done = run.events("execution_start"), run.events("execution_success")
    if not start or not done:
        return None
    return (done[-1]["timestamp"] - start[-1]["timestamp"]) / 1000


def timed_run(server: ComfyServer, graph: dict, timeout: float = 900) -> tuple[Run, float]:
    """The prompt's result and its end-to-end wall time: queued over HTTP until its images are fetched."""
    t0 = time.perf_counter()
    run = server.run(graph, timeout=timeout)
    return run, time.perf_counter() - t0


def fresh_process(bench: Bench, side: str, graph: dict, page_cache: str) -> dict:
    """Start ComfyUI, set the checkpoint's page cache ("warm" or "cold"), run `graph` once, measure."""
    with bench.running(side) as server:
        pid = server.proc.pid
        before = usage(pid)
        # After start-up, right before the prompt: ComfyUI's start reads no model file.
        (warm_page_cache if page_cache == "warm" else drop_page_cache)(bench.checkpoint)
        run, wall = timed_run(server, graph)
        after = usage(pid)
    nodes = run.node_seconds()
    event = checkpoint_event(run) or {}
    # The node's own figure (Hearth only) cross-checks the websocket timing that both sides share.
    return {"node_s": nodes[LOADER_ID], "prompt_s": wall, "nodes": nodes, "status": event.get("status"),
            "event_s": event.get("seconds"), "server_s": server_seconds(run), "before": before.as_dict(),
            "after": after.as_dict()}


def series(repeats: int, measure: Callable[[str], dict]) -> dict[str, list[dict]]:
    """`repeats` fresh measurements per side, alternating sides so that a noisy neighbour hits both."""
    out: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(repeats):
        for side in SIDES:
            out[side].append(measure(side))
    return out


def restart_warm(bench: Bench, repeats: int) -> dict:
    """Scenario 1: the loader node after a restart, page cache warm."""
    return series(repeats, lambda side: fresh_process(bench, side, loader_graph(side), "warm"))


def restart_cold(bench: Bench, repeats: int) -> dict:
    """Scenario 2: the loader node after the page cache lost the checkpoint (Hearth's segment stays)."""
    return series(repeats, lambda side: fresh_process(bench, side, loader_graph(side), "cold"))


def first_prompt(bench: Bench, repeats: int) -> dict:
    """Scenario 5: the first txt2img prompt (1 step, 64x64) of a fresh ComfyUI, page cache and segment warm."""
    return series(repeats, lambda side: fresh_process(bench, side, txt2img_graph(side), "warm"))

