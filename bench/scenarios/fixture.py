"""What every scenario runs against: the models, a private Hearth daemon, and fresh ComfyUI processes.

Models are built once per shape under bench/out/scenarios/<shape>/ with the harness's builders (ComfyUI's
own classes, random weights) and reused by later runs. The daemon has its own HEARTH_HOME and /dev/shm
folder, so it never touches the user's segments.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness import graphs
from harness.daemon import Daemon
from harness.models import ModelFolder, build_models
from harness.server import ComfyServer

from ..load import OUT

STOCK, HEARTH = "stock", "hearth"
SIDES = (STOCK, HEARTH)
CKPT = "sd15.safetensors"
LORAS = ("lora_a.safetensors", "lora_b.safetensors")
LOADER_ID = "1"  # the checkpoint loader's node id in the pack's workflows (and in loader_graph)
SWAPPER_ID = "8"  # the LoRA swapper's; its stock twin is a chain of LoraLoaders "8.1", "8.2", ...
# LoRAs on every attention/MLP layer of UNet and CLIP: rank 256 gives ~300 MB each on the full shape.
LORA_RANK = {"full": 256, "tiny": 8}


def scenario_models(checkout: Path, shape: str) -> ModelFolder:
    """The checkpoint and two LoRAs of `shape` ("full" ~2.1 GB, "tiny" ~300 MB), built when absent."""
    return build_models(checkout, OUT / "scenarios" / shape, CKPT, list(LORAS), shape, rank=LORA_RANK[shape])


def warm_page_cache(path: Path) -> None:
    """Read the file once so its pages are in the page cache (a Hearth fill drops them afterwards)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 24)
        while f.readinto(buf):
            pass


GIB = 1 << 30
HEADROOM = 2 * GIB  # left free for the machine's other work
# Peak private memory of one ComfyUI process per checkpoint byte, measured here: stock widens the UNet to
# fp32 (~2x) and a LoRA adds patched fp32 copies of the targeted weights (~2.7x in all).
PEAK_PER_CKPT_BYTE = 2.7


class NoRoom(RuntimeError):
    """Not enough free RAM for the next process: the scenario stops rather than wake the OOM killer."""


def wait_for_room(need: int, wait_s: float = 180.0) -> None:
    """Wait until `need` bytes plus HEADROOM are available (others' jobs may end), or raise NoRoom.

    The machine may be shared: a benchmark that runs it out of memory gets someone's process killed.
    """
    deadline = time.monotonic() + wait_s
    while (available := psutil.virtual_memory().available) < need + HEADROOM:
        if time.monotonic() > deadline:
            raise NoRoom(f"{available / GIB:.1f} GiB available, {(need + HEADROOM) / GIB:.1f} GiB needed "
                         f"(one more process and {HEADROOM / GIB:.0f} GiB headroom)")
        time.sleep(5)


@dataclass
class Bench:
    """One benchmark run's ComfyUI checkout, models and daemon; hands out fresh ComfyUI processes."""

    checkout: Path
    models: ModelFolder
    daemon: Daemon
    work: Path  # servers' base folders

    @property
    def checkpoint(self) -> Path:
        return self.models.checkpoint(CKPT)

    def server(self, side: str, need: int | None = None) -> ComfyServer:
        """A fresh, started ComfyUI: stock with custom nodes disabled, Hearth with the pack and the daemon.

        Started only once `need` bytes (default: a stock process's peak for this checkpoint) are free.
        """
        wait_for_room(need if need is not None else int(PEAK_PER_CKPT_BYTE * self.checkpoint.stat().st_size))
        base = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=self.work))
        yaml = self.models.extra_model_paths
        server = (ComfyServer.stock(self.checkout, base, yaml) if side == STOCK else
                  ComfyServer.with_hearth(self.checkout, base, yaml, self.daemon.home))
        return server.start(timeout=180)

    @contextmanager
    def running(self, side: str) -> Iterator[ComfyServer]:
        server = self.server(side)
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(server.base, ignore_errors=True)

    def acquire(self, path: Path) -> dict:
        """Ask the daemon for `path`'s segment (filling it if needed) and let go of the lease at once."""
        answer = self.daemon.api("POST", "/v1/acquire", {"path": str(path), "pid": os.getpid()})
        self.daemon.api("POST", "/v1/release", {"key": answer["key"], "pid": os.getpid()})
        return answer

    def warm_segments(self) -> dict[str, dict]:
        """Fill (or find) the segments of the checkpoint and both LoRAs; {name: acquire answer}."""
        return {p.name: self.acquire(p) for p in [self.checkpoint, *map(self.models.lora, LORAS)]}

    def restart_daemon(self) -> float:
        """Stop the daemon (its segments stay in /dev/shm) and start it again; seconds to ready."""
        self.daemon.stop()
        t0 = time.perf_counter()
        self.daemon.start()
        return time.perf_counter() - t0


@contextmanager
def bench(checkout: Path, models: ModelFolder) -> Iterator[Bench]:
    """A private daemon (own HEARTH_HOME and /dev/shm folder) for one run; everything removed after."""
    work = Path(tempfile.mkdtemp(prefix="hearth-scenarios-"))
    shm = Path("/dev/shm") / f"hearth-scenarios-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(work / "hearth-home", [models.root], shm_dir=shm)
    try:
        yield Bench(checkout, models, daemon.start(), work)
    finally:
        daemon.stop()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


# ---- graphs ---------------------------------------------------------------------------------------

def loader_graph(side: str) -> dict:
    """The checkpoint loader alone (PreviewAny makes it an output): the load and nothing after it."""
    loader = "CheckpointLoaderSimple" if side == STOCK else "HearthCheckpointLoader"
    return {LOADER_ID: {"class_type": loader, "inputs": {"ckpt_name": CKPT}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": [LOADER_ID, 0]}}}


def txt2img_graph(side: str, loras: list[graphs.Lora] | None = None, prefix: str = "scenario") -> dict:
    """The pack's txt2img graph (the LoRA-stack one when `loras` is a list), 64x64, 1 step; stock twin for stock."""
    g = graphs.txt2img(CKPT, loras, size=64, steps=1, prefix=prefix)
    return graphs.to_stock(g) if side == STOCK else g
