"""Helpers of the real-ComfyUI tests: the tiny models' names, graphs, pixels, stock reference images."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from harness import graphs
from harness.server import ComfyServer, Run

CKPT = "tiny-sd15.safetensors"
LORA_A, LORA_B = "lora_a.safetensors", "lora_b.safetensors"


@dataclass
class Models:
    root: Path  # checkpoints/ and loras/
    extra_model_paths: Path  # the YAML that shows them to ComfyUI

    def path(self, folder: str, name: str) -> Path:
        return self.root / folder / name


def start_comfy(checkout: Path, models: Models, base: Path, hearth_home: Path) -> ComfyServer:
    """A ComfyUI process whose Hearth client looks for the daemon of `hearth_home`."""
    return ComfyServer(checkout, base, models.extra_model_paths,
                       {"HEARTH_HOME": str(hearth_home), "HEARTH_DISABLE": None}).start()


def pixels(run: Run):
    """The run's one image as an array (PNG files differ in their embedded graph, pixels must not)."""
    import numpy as np
    from PIL import Image

    assert len(run.images) == 1, run.history
    return np.asarray(Image.open(io.BytesIO(run.images[0])).convert("RGB"))


def hearth_graph(loras: list[graphs.Lora] | None = None, seed: int = 42) -> dict:
    """The pack's txt2img graph (the LoRA stack one when `loras` is given) set up for the tiny model."""
    return graphs.txt2img(CKPT, loras, seed=seed)


def loads(run: Run) -> list[dict]:
    """The `hearth.load` events of the run (the nodes' status for the panel)."""
    return run.events("hearth.load")


class StockRenders:
    """Images of the stock graphs (CheckpointLoaderSimple + LoraLoader), each rendered once per session."""

    def __init__(self, server: ComfyServer):
        self.server, self._cache = server, {}

    def __call__(self, loras: list[graphs.Lora] | None = None, seed: int = 42):
        key = (tuple(loras or ()), seed)
        if key not in self._cache:
            self._cache[key] = pixels(self.server.run(graphs.to_stock(hearth_graph(loras, seed))))
        return self._cache[key]
