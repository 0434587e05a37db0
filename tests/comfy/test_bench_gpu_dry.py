"""`python -m bench.gpu --dry` with a ComfyUI checkout: stock and Hearth loaders through ComfyUI on the CPU
(same pixels), and every VRAM strategy applied; on a GPU machine the same run measures them there."""

from __future__ import annotations

import os

from test_bench_gpu import run_dry  # tests/ is on sys.path, as for the suite's conftest


def test_dry_run_with_comfyui(comfy_checkout, tmp_path):
    env = {**os.environ, "HEARTH_COMFYUI": str(comfy_checkout)}
    doc = run_dry(tmp_path, "--sizes", "0.064", env=env, timeout=900)
    c = doc["comfyui"]
    assert "error" not in c, c
    stock, hearth = c["runs"]
    assert stock["mode"] == "stock" and hearth["mode"] == "hearth" and stock["flags"] == hearth["flags"] == ["--cpu"]
    assert hearth["max_pixel_diff_to_stock"] == 0, c["runs"]
    assert stock["device"] == hearth["device"] == "cpu" and stock["rss"] > 0 and hearth["anonymous"] > 0
    assert isinstance(c["strategies"], list), c["strategies"]  # else the child's error
    strategies = {s["strategy"]: s for s in c["strategies"]}
    assert set(strategies) == {"full_gpu", "fp8", "partial", "sequential", "cpu", "node auto"}
    assert all(strategies[s]["rel_diff"] == 0 for s in ("full_gpu", "partial", "sequential", "cpu"))
    assert 0 < strategies["fp8"]["rel_diff"] < 0.25  # FP8 weights: a near image, not the same
    assert "Chose cpu" in strategies["node auto"]["text"]
