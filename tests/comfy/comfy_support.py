"""Helpers of the real-ComfyUI tests: the tiny models' names, their graphs, stock reference images."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from harness import graphs
from harness.models import ModelFolder
from harness.server import ComfyServer

CKPT = "tiny-sd15.safetensors"
LORA_A, LORA_B = "lora_a.safetensors", "lora_b.safetensors"


def start_comfy(checkout: Path, models: ModelFolder, base: Path, hearth_home: Path) -> ComfyServer:
    """A started ComfyUI process whose Hearth client looks for the daemon of `hearth_home`."""
    return ComfyServer.with_hearth(checkout, base, models.extra_model_paths, hearth_home).start()


def set_setting(server: ComfyServer, key: str, value) -> None:
    """Set a frontend setting as the settings dialog does (ComfyUI answers with an empty body)."""
    req = urllib.request.Request(f"{server.url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def free_cache(server: ComfyServer) -> None:
    """Have ComfyUI drop its cached node outputs before the next prompt: a graph another test ran already
    would otherwise reuse its loader's output and load nothing."""
    req = urllib.request.Request(f"{server.url}/free", data=json.dumps({"free_memory": True}).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def hearth_graph(loras: list[graphs.Lora] | None = None, seed: int = 42) -> dict:
    """The pack's txt2img graph (the LoRA stack one when `loras` is given) set up for the tiny model."""
    return graphs.txt2img(CKPT, loras, seed=seed)


class StockRenders:
    """Images of the stock graphs (CheckpointLoaderSimple + LoraLoader), each rendered once per session."""

    def __init__(self, server: ComfyServer):
        self.server, self._cache = server, {}

    def __call__(self, loras: list[graphs.Lora] | None = None, seed: int = 42):
        key = (tuple(loras or ()), seed)
        if key not in self._cache:
            self._cache[key] = self.server.run(graphs.to_stock(hearth_graph(loras, seed))).pixels()
        return self._cache[key]
