"""Eager load (nodes/eager.py) in a real ComfyUI on the CPU: the segment's pages are in the process at load.

Read from /proc/<ComfyUI>/smaps: the loader maps the segment lazily (only the pages the build read are in
the process afterwards); with eager load every page of the mapping is. The GPU part (load_models_gpu at
load time) cannot run here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.server import ComfyServer

from .comfy_support import CKPT, hearth_graph

MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")


def _loader_graph(eager: str) -> dict:
    return {"1": {"class_type": "HearthCheckpointLoader", "inputs": {"ckpt_name": CKPT, "eager_load": eager}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def _mappings(pid: int, segment: str) -> list[tuple[int, int]]:
    """(size, resident bytes) of each mapping of `segment` in the process."""
    out, current = [], None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if MAPPING.match(line):  # a mapping's first line (anonymous ones have no path)
            current = None
            if head[-1] == segment:
                begin, end = (int(x, 16) for x in head[0].split("-"))
                current = [end - begin, 0]
                out.append(current)
        elif current is not None and line.startswith("Rss:"):
            current[1] = int(line.split()[1]) * 1024
    return [tuple(m) for m in out]


def test_eager_load_maps_every_page_at_load_and_changes_no_pixel(comfy_checkout, models, daemon, tmp_path):
    server = ComfyServer.with_hearth(comfy_checkout, tmp_path / "comfy", models.extra_model_paths, daemon.home)
    size = models.checkpoint(CKPT).stat().st_size
    with open(models.checkpoint(CKPT), "rb") as f:
        data = size - 8 - int.from_bytes(f.read(8), "little")  # the tensors' bytes, after the JSON header
    with server:
        lazy = server.run(_loader_graph("off"))
        segment = str(daemon.segment(models.checkpoint(CKPT)))
        [(mapped, resident)] = _mappings(server.proc.pid, segment)
        assert mapped >= size and resident < size // 2, (mapped, resident)
        assert "eager" not in lazy.hearth_loads()[0]

        eager = server.run(_loader_graph("on"))
        [report] = eager.hearth_loads()
        assert report["eager"] in ("madvise", "touch") and report["eager_bytes"] >= data, report
        full = [m for m in _mappings(server.proc.pid, segment) if m[1] >= data]
        assert full, _mappings(server.proc.pid, segment)

        daemon.api("POST", "/v1/config", {"eager_load": True})
        try:
            by_setting = server.run(_loader_graph("setting"))
            assert by_setting.hearth_loads()[0]["eager"] in ("madvise", "touch")
        finally:
            daemon.api("POST", "/v1/config", {"eager_load": False})

        graph = hearth_graph(seed=11)
        plain = server.run(graph).pixels()
        graph["1"]["inputs"]["eager_load"] = "on"
        assert (server.run(graph).pixels() == plain).all()
    assert os.path.exists(segment)
