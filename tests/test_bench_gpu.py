"""`python -m bench.gpu --dry`: the prepared GPU check's whole flow on the CPU (small sizes), every CUDA step
reported as skipped with the reason, and its JSON and table written. Its ComfyUI part: tests/comfy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MB = 10**6


def run_dry(out: Path, *extra: str, env: dict | None = None, timeout: float = 600) -> dict:
    """Run the dry check into `out`; its gpu.json (the table beside it is checked too)."""
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry", "--out", str(out), *extra], cwd=REPO,
                          env=env or os.environ, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "gpu.json").read_text())
    table = (out / "gpu.md").read_text()
    assert "| size | pageable GB/s | segment GB/s | segment registered GB/s | torch pinned GB/s |" in table
    assert table in proc.stdout  # the table is printed too
    return doc


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the dry run's skips are not this machine's")
def test_dry_run_measures_what_the_cpu_can_and_says_why_not_the_rest(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HEARTH_COMFYUI"}
    doc = run_dry(tmp_path, env=env)
    why = f"no CUDA: torch {torch.__version__} is not a CUDA build"
    assert doc["dry"] is True and doc["cuda"] == why and doc["sizes"] == [64 * MB, 128 * MB]
    for tag, size in (("0.064GB", 64 * MB), ("0.128GB", 128 * MB)):
        assert doc[f"write {tag}"]["bytes"] == size
        b = doc[f"bandwidth {tag}"]
        # Served from the daemon's segment, every tensor's bytes as written, no page private after reading.
        assert b["cached"] and b["values_ok"] and b["private_pages_before"] == 0, b
        assert b["skipped"] == f"bandwidth and registration: {why}"
        assert b["pinning_status"]["reason"] == f"no CUDA: this torch ({torch.__version__}) is not a CUDA build"
    hazards = doc["bandwidth 0.064GB"]["hazards"]
    assert hazards["writable_registration"] == {"skipped": why}
    written = hazards["write_after_registration"]
    assert written["cpu_now"] == (written["old"] + 1) % 256 and written["private_pages"] == 1
    assert written["gpu"] == {"skipped": why}
    to_gpu = doc["to gpu 0.128GB"]
    assert set(to_gpu) >= {"stock", "stock-cold", "hearth", "hearth-registered"}
    for mode in ("stock", "stock-cold", "hearth", "hearth-registered"):
        assert to_gpu[mode]["values_ok"] and to_gpu[mode]["copy"] == f"skipped: {why}", to_gpu[mode]
    assert to_gpu["hearth"]["cached"] and to_gpu["hearth-registered"]["cached"]
    assert doc["comfyui"] == {"skipped": "no ComfyUI checkout given (--comfyui or $HEARTH_COMFYUI)"}
    assert not any("error" in v for v in doc.values() if isinstance(v, dict)), doc


def test_time_limit_skips_steps_with_the_reason(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HEARTH_COMFYUI"}
    doc = run_dry(tmp_path, "--time-limit", "0", env=env)
    assert doc["write 0.064GB"]["skipped"].startswith("time limit: ")
    assert doc["to gpu 0.128GB"]["skipped"].startswith("time limit: ")
