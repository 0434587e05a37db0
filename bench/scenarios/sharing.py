"""Scenario 3: 1, 2 and 4 ComfyUI processes with the same checkpoint loaded and used: their RAM.

Processes are added one at a time; each loads the checkpoint (the loader alone), then runs the txt2img
prompt (so its weights are really in use), and every process is measured after each step.

How Hearth's shared memory is counted: the segment is a tmpfs file, RAM that no process's private memory
includes, so the Hearth total is each process's PSS without its share of the segment, plus the whole
segment once. Stock's page cache of the file is not counted (the kernel
may drop it; that is scenario 2's point), which favours stock.

"Each process after the first adds" is the PSS that one more process added to the total from idle to
loaded (`added_load`) and to after its first prompt (`added`): ComfyUI's own runtime (~0.3-0.5 GB, the
same for both) is not part of the model's cost.
"""

from __future__ import annotations

from pathlib import Path

from harness.server import ComfyServer

from .fixture import HEARTH, Bench, NoRoom, loader_graph, txt2img_graph
from .loading import checkpoint_status, timed_run
from .memory import mapping_pss, usage


def total(servers: list[ComfyServer], segment: Path | None, segment_bytes: int) -> dict:
    """PSS of the processes (the segment counted once, whole), and each one's private memory."""
    procs = []
    for s in servers:
        u = usage(s.proc.pid)
        seg = mapping_pss(s.proc.pid, segment) if segment else 0
        procs.append({**u.as_dict(), "segment_pss": seg})
    pss = sum(p["pss"] - p["segment_pss"] for p in procs) + segment_bytes
    return {"total_pss": pss, "processes": procs}


def processes(bench: Bench, side: str, counts: tuple[int, ...], segment: Path | None) -> dict:
    """Add processes up to max(counts); totals at each count and the PSS each load added."""
    segment_bytes = segment.stat().st_size if segment else 0
    servers: list[ComfyServer] = []
    out: dict = {"counts": {}, "added_load": [], "added": [], "segment_bytes": segment_bytes, "status": []}
    try:
        for n in range(1, max(counts) + 1):
            try:  # one more process needs about what the last one added
                server = bench.server(side, need=int(1.3 * out["added"][-1]) if out["added"] else None)
            except NoRoom as e:
                out["stopped"] = f"{n} processes not started: {e}"
                break
            servers.append(server)
            idle = total(servers, segment, segment_bytes)["total_pss"]
            run, _ = timed_run(servers[-1], loader_graph(side))
            out["status"].append(checkpoint_status(run))
            out["added_load"].append(total(servers, segment, segment_bytes)["total_pss"] - idle)
            timed_run(servers[-1], txt2img_graph(side, prefix=f"p{n}"))
            now = total(servers, segment, segment_bytes)
            out["added"].append(now["total_pss"] - idle)
            if n in counts:
                out["counts"][str(n)] = now
    finally:
        for s in servers:
            s.stop()
    if side == HEARTH:  # the first load is what makes the segment worth its RAM
        out["added_load"][0] += segment_bytes
        out["added"][0] += segment_bytes
    return out


def sharing(bench: Bench, counts: tuple[int, ...], segment: Path) -> dict:
    """Both sides, stock first (its copies are freed before Hearth's processes start)."""
    return {"stock": processes(bench, "stock", counts, None), HEARTH: processes(bench, HEARTH, counts, segment)}
