"""Hardware detection: accelerators, RAM, /dev/shm and CPU cores, in bytes.

Never raises for a missing or broken GPU stack: whatever fails becomes "no accelerator" plus a note.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from types import ModuleType

import psutil

from ..core.home import shm_dir, shm_space
from ..core.sizes import GiB

log = logging.getLogger("hearth.planner")

FP8_MIN_CC = (8, 9)  # Ada/Hopper: the first CUDA devices with FP8 tensor cores (torch._scaled_mm)
BF16_MIN_CC = (8, 0)  # Ampere


@dataclass(frozen=True)
class Accelerator:
    """One GPU. `vram_free` is what the driver reports free now (other processes' use excluded)."""

    kind: str  # "cuda" (also ROCm, which torch exposes as cuda) or "mps"
    index: int
    name: str
    vram_total: int
    vram_free: int
    compute_capability: tuple[int, int] | None
    fp8: bool
    bf16: bool


@dataclass(frozen=True)
class Hardware:
    """What a machine offers; `notes` say what could not be detected and why."""

    accelerators: tuple[Accelerator, ...]
    ram_total: int
    ram_available: int
    shm_total: int
    shm_free: int
    cpu_cores: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def profile(cls, vram: int, ram: int, compute_capability: tuple[int, int] | None = None,
                kind: str = "cuda", shm: int | None = None) -> Hardware:
        """A machine one does not have: one GPU with `vram` bytes free (0: no GPU) and `ram` bytes free.

        /dev/shm defaults to the whole RAM, so a profile never warns about shared memory it cannot know.
        """
        accelerators: tuple[Accelerator, ...] = ()
        if vram > 0:
            cc = compute_capability if kind == "cuda" else None
            accelerators = (Accelerator(kind, 0, f"{vram / GiB:g} GiB {kind} (profile)", vram, vram, cc,
                                        fp8=cc is not None and cc >= FP8_MIN_CC,
                                        bf16=kind == "mps" or (cc is not None and cc >= BF16_MIN_CC)),)
        shm = ram if shm is None else shm
        return cls(accelerators, ram, ram, shm, shm, os.cpu_count() or 1)


def detect() -> Hardware:
    """Detect this machine's hardware. Imports torch (only to ask about GPUs) if it is installed."""
    notes: list[str] = []
    torch = _import_torch(notes)
    accelerators = (_cuda(torch, notes) or _mps(torch, notes)) if torch else []
    mem = psutil.virtual_memory()
    shm_total, shm_free = _shm(notes)
    return Hardware(tuple(accelerators), mem.total, mem.available, shm_total, shm_free,
                    os.cpu_count() or 1, tuple(notes))


def _import_torch(notes: list[str]) -> ModuleType | None:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - not only ImportError: a broken install can raise anything at import
        notes.append(f"torch unavailable ({exc.__class__.__name__}: {exc}); GPUs not detected")
        return None
    return torch


def _cuda(torch: ModuleType, notes: list[str]) -> list[Accelerator]:
    found = []
    try:
        if not torch.cuda.is_available():
            return []
        rocm = torch.version.hip is not None
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            # mem_get_info creates a CUDA context on the device (a few hundred MiB while this process lives).
            free, total = torch.cuda.mem_get_info(i)
            if rocm:  # major/minor are the gfx architecture there, not a CUDA compute capability
                cc, fp8, bf16 = None, False, torch.cuda.is_bf16_supported()
            else:
                cc = (props.major, props.minor)
                fp8, bf16 = cc >= FP8_MIN_CC, cc >= BF16_MIN_CC
            found.append(Accelerator("cuda", i, props.name, total, free, cc, fp8, bf16))
        if rocm:
            notes.append("ROCm device: compute capability and FP8 support not assessed")
    except Exception as exc:  # noqa: BLE001 - a missing or mismatched driver raises RuntimeError, AssertionError, ...
        log.warning("CUDA detection failed: %s", exc)
        notes.append(f"CUDA present but unusable ({exc.__class__.__name__}: {exc}); reporting no CUDA device")
        return []
    return found


def _mps(torch: ModuleType, notes: list[str]) -> list[Accelerator]:
    try:
        if not torch.backends.mps.is_available():
            return []
        # Unified memory: the GPU's share of RAM, minus what Metal already holds.
        total = torch.mps.recommended_max_memory()
        free = min(total - torch.mps.driver_allocated_memory(), psutil.virtual_memory().available)
        return [Accelerator("mps", 0, "Apple MPS", total, free, None, fp8=False, bf16=True)]
    except Exception as exc:  # noqa: BLE001 - as for CUDA: whatever fails means no MPS device, and a note
        log.warning("MPS detection failed: %s", exc)
        notes.append(f"MPS present but unusable ({exc.__class__.__name__}: {exc})")
        return []


def _shm(notes: list[str]) -> tuple[int, int]:
    try:
        return shm_space()
    except OSError as exc:
        notes.append(f"no shared memory at {shm_dir()} ({exc.strerror})")
        return 0, 0
