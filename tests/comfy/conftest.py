"""Fixtures of the tests against a real ComfyUI (skipped, with the reason, where no checkout is found).

One session builds a tiny SD1.5-shaped checkpoint and two LoRAs (random weights, nothing downloaded), starts
a Hearth daemon with its own HEARTH_HOME and /dev/shm folder, and one ComfyUI that uses it. Tests that need
a process of their own (second process, daemon down) start one more ComfyUI each.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.checkout import find_comfyui
from harness.daemon import Daemon
from harness.models import ModelFolder, build_models
from harness.server import ComfyServer

from .comfy_support import CKPT, LORA_A, LORA_B, StockRenders, start_comfy


@pytest.fixture(scope="session")
def comfy_checkout() -> Path:
    path, why = find_comfyui()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def models(comfy_checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelFolder:
    # LoRAs on a handful of UNet and CLIP layers; different seeds, different pictures.
    return build_models(comfy_checkout, tmp_path_factory.mktemp("comfy-models"), CKPT, [LORA_A, LORA_B],
                        rank=8, unet_layers=8, clip_layers=12)


@pytest.fixture(scope="session")
def daemon(models: ModelFolder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    shm = Path("/dev/shm") / f"hearth-comfy-tests-{uuid.uuid4().hex[:8]}"
    # No HEARTH_MODEL_DIRS: the files are allowed only because ComfyUI registers its model folders.
    d = Daemon(tmp_path_factory.mktemp("hearth-home"), [], shm_dir=shm)
    try:
        yield d.start()
    finally:
        d.stop()
        shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy(comfy_checkout: Path, models: ModelFolder, daemon: Daemon,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    server = start_comfy(comfy_checkout, models, tmp_path_factory.mktemp("comfy-1"), daemon.home)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stock(comfy: ComfyServer) -> StockRenders:
    return StockRenders(comfy)
