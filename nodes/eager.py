"""Eager load (stable-diffusion.cpp's --eager-load): the weights resident where the model runs, at load time.

A Hearth load maps the segment lazily: the UNet's pages are mapped into the process at the first sampler
step (minor faults on the tmpfs; from disk where the load fell back to the file), and on a GPU the weights
are copied there when the sampler first loads the model. With eager load the loader does that work, so
the first step pays neither:
- model on the CPU: every page under the loaded tensors is mapped now, by `madvise(MADV_POPULATE_READ)`
  (Linux 5.14+: read faults only, so the private mapping stays shared, no page is copied), else by reading
  one byte of every page (bench/RESULTS.md compares the two and lazy faults);
- model on a GPU: `comfy.model_management.load_models_gpu([model])`, what the sampler itself calls first,
  which moves the share of the weights that ComfyUI's memory strategy keeps on the GPU (all of them when
  they fit; lowvram/Dynamic VRAM keep less). Not measured: no GPU here.

Off by default: a workflow that loads a checkpoint and never samples with it (or samples on another
device) would pay for nothing. The loader's `eager_load` input (`setting`, `on`, `off`) follows the
daemon's `eager_load` setting unless it says otherwise.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import time

import torch

from ..client import Loaded
from ..client.config import daemon_config
from ..core.errors import HearthError

log = logging.getLogger("hearth.nodes")

CHOICES = ["setting", "on", "off"]
INPUT = (CHOICES, {"default": "setting", "tooltip": (
    "Make the weights resident where the model runs at load time (mapped in on the CPU, moved to the GPU), "
    "so the first sampler step pays no I/O. setting: the daemon's eager_load setting (off unless set).")})

MADV_POPULATE_READ = 22  # linux/mman.h; not in Python's mmap constants
PAGE = mmap.PAGESIZE
_libc = None


def wanted(choice: str, cached: bool) -> bool:
    """`on`, `off`, or for `setting` the daemon's setting; a load that fell back does not ask a daemon that
    is down or refused it (it would wait for its start again)."""
    if choice in ("on", "off"):
        return choice == "on"
    if not cached:
        return False
    try:
        return bool(daemon_config().get("eager_load", False))
    except HearthError:
        return False


def _ranges(tensors: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """The page-aligned address ranges the CPU tensors' storages cover, merged."""
    spans = []
    for t in tensors.values():
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        s = t.untyped_storage()
        begin = s.data_ptr() // PAGE * PAGE
        spans.append((begin, -(-(s.data_ptr() + s.nbytes()) // PAGE) * PAGE))
    merged: list[list[int]] = []
    for b, e in sorted(spans):
        if merged and b <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([b, e])
    return [(b, e) for b, e in merged]


def populate(tensors: dict[str, torch.Tensor], how: str = "madvise") -> tuple[int, str]:
    """Map in every page under `tensors` now: (bytes, how it was done: "madvise" or "touch")."""
    global _libc
    ranges = _ranges(tensors)
    total = sum(e - b for b, e in ranges)
    if how == "madvise":
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if all(_libc.madvise(b, e - b, MADV_POPULATE_READ) == 0 for b, e in ranges):
            return total, "madvise"
        log.debug("MADV_POPULATE_READ refused (errno %d); touching the pages", ctypes.get_errno())
    for t in tensors.values():
        if t.device.type == "cpu" and t.numel():
            flat = t.reshape(-1).view(torch.uint8) if t.is_contiguous() else None
            if flat is not None:
                flat[::PAGE].sum()  # one byte of every page: a read fault maps it (and its neighbours)
    return total, "touch"


def make_resident(out: tuple, loaded: Loaded, choice: str) -> dict:
    """Apply eager load to a built checkpoint (MODEL, CLIP, VAE) from `loaded`, if it is wanted; what was
    done, for the load's report."""
    if not wanted(choice, loaded.cached):
        return {}
    t0 = time.perf_counter()
    model = out[0]
    device = getattr(model, "load_device", torch.device("cpu"))
    if torch.device(device).type != "cpu":
        import comfy.model_management as mm

        mm.load_models_gpu([model])
        done: dict[str, str | int | float] = {"eager": "gpu", "eager_device": str(device)}
    else:
        nbytes, how = populate(loaded.tensors)
        done = {"eager": how, "eager_bytes": nbytes}
    done["eager_seconds"] = round(time.perf_counter() - t0, 4)
    log.info("Hearth eager load: %s in %.3f s", done["eager"], done["eager_seconds"])
    return done
