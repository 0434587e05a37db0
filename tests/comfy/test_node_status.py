"""What a load shows on its node in a real ComfyUI: hit, miss (what was filled and how long it took) or the
stock fallback and its reason, and the node's time, read where the frontend reads it: ComfyUI's progress
text for the node (a binary websocket frame: node id and text; the frontend puts the text on the node).

Each case loads files under names no other test uses, so ComfyUI runs the loader instead of reusing its
cached output, and a copy of a file is a new segment (a segment's key is its file's real path and stat).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.server import ComfyServer

from .comfy_support import CKPT, LORA_A, LORA_B

SECONDS = r"(\d+ ms|\d+\.\d\d s)"


def _loader(ckpt: str, class_type: str = "HearthCheckpointLoader") -> dict:
    return {"1": {"class_type": class_type, "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def _swapper(ckpt: str, rows: list[dict]) -> dict:
    return {"1": {"class_type": "HearthCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
            "8": {"class_type": "HearthLoraSwapper", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                               "loras": {"__value__": rows}}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}}}


@pytest.fixture
def no_prefetch(daemon):
    """The daemon's prefetch off: a queued prompt's files would be filled before its loader asks for them,
    and a first load here must be a miss."""
    daemon.api("POST", "/v1/config", {"prefetch": False})
    yield
    daemon.api("POST", "/v1/config", {"prefetch": True})


@pytest.fixture
def copies():
    """copies(src, dst): a copy of a model file under a new name, removed after the test."""
    made: list[Path] = []

    def copy(src: Path, dst: Path) -> Path:
        shutil.copyfile(src, dst)
        made.append(dst)
        return dst

    yield copy
    for path in made:
        path.unlink(missing_ok=True)


def test_the_loader_node_says_miss_with_what_was_filled_then_hit(comfy, models, copies, no_prefetch):
    fresh = copies(models.checkpoint(CKPT), models.checkpoint("status-fresh.safetensors"))
    alias = models.checkpoint("status-alias.safetensors")
    alias.symlink_to(fresh)  # another name for ComfyUI, the same real file and segment for Hearth
    try:
        miss = comfy.run(_loader(fresh.name))
        text = miss.progress_texts()["1"]
        assert re.fullmatch(rf"Hearth: miss \(filled \d+\.\d MiB in {SECONDS}\) · {SECONDS}", text), text
        [event] = miss.hearth_loads()
        assert event["size"] == fresh.stat().st_size and event["text"] in text
        assert f"{event['size'] / 2**20:.1f} MiB" in text

        hit = comfy.run(_loader(alias.name))
        assert re.fullmatch(rf"Hearth: hit · {SECONDS}", hit.progress_texts()["1"]), hit.progress_texts()
    finally:
        alias.unlink()


def test_the_swapper_names_each_lora_and_escapes_names_for_the_frontends_html(comfy, models, copies,
                                                                             no_prefetch):
    # The frontend puts the text into the node as HTML (0.3.64's unsanitised): a file name must stay text.
    hostile = copies(models.lora(LORA_B), models.lora("status-<img src=x onerror=alert(1)>&.safetensors"))
    rows = [{"on": True, "lora": LORA_A, "strength_model": 0.7, "strength_clip": 0.7},
            {"on": False, "lora": LORA_B, "strength_model": 1.0, "strength_clip": 1.0},
            {"on": True, "lora": hostile.name, "strength_model": 0.4, "strength_clip": 0.2}]
    run = comfy.run(_swapper(CKPT, rows))
    lines = run.progress_texts()["8"].split("\n")
    assert lines[0] == "Hearth:" and len(lines) == 3, lines  # the row that is off loads nothing
    assert re.fullmatch(rf"{re.escape(LORA_A)}: (hit|miss.*) · {SECONDS}( · patches reused)?", lines[1]), lines
    escaped = "status-&lt;img src=x onerror=alert(1)&gt;&amp;.safetensors"
    assert lines[2].startswith(f"{escaped}: miss (filled "), lines
    assert [e["name"] for e in run.hearth_loads() if e["kind"] == "lora"] == [LORA_A, hostile.name]  # real names


def test_a_fallback_says_why_on_the_node(comfy, models):
    # A pickle is never cached: the swapper loads it the stock way (weights only) and the node says so.
    pickle = models.lora("status-lora.pt")
    torch.save(load_file(str(models.lora(LORA_A))), pickle)
    try:
        run = comfy.run(_swapper(CKPT, [{"on": True, "lora": pickle.name, "strength_model": 1.0,
                                         "strength_clip": 1.0}]))
    finally:
        pickle.unlink()
    text = run.progress_texts()["8"]
    assert re.fullmatch(rf"Hearth: not cached: \.pt files are pickles and are not cached · {SECONDS}", text), text
    assert [e["status"] for e in run.hearth_loads()] == ["fallback"]


def test_comfyuis_own_loader_shows_its_load_under_the_stock_loader_setting(comfy_checkout, models, daemon,
                                                                           copies, no_prefetch, tmp_path):
    fresh = copies(models.checkpoint(CKPT), models.checkpoint("status-stock.safetensors"))
    with ComfyServer.with_hearth(comfy_checkout, tmp_path / "comfy", models.extra_model_paths, daemon.home,
                                 stock_loaders=True) as server:
        first = server.run(_loader(fresh.name, "CheckpointLoaderSimple"))
        assert first.progress_texts()["1"].startswith("Hearth: miss (filled "), first.progress_texts()
        again = server.run(_loader(CKPT, "CheckpointLoaderSimple"))
        assert re.fullmatch(rf"Hearth: (hit|miss.*) · {SECONDS}", again.progress_texts()["1"])
