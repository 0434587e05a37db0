"""Page-locked views for the GPU that keep the copy-on-write sharing: a read-only CUDA registration of a
segment mapping.

Why. A host-to-GPU copy from pageable memory is staged through a driver buffer; from page-locked memory the
GPU's copy engine reads the pages itself, several times faster (DESIGN section 0). ComfyUI pins offloaded
weights on its own (`model_management.pin_memory`, 0.13+: `cudaHostRegister(ptr, size, 1)`) unless
`tensor.is_pinned()` is already true, which registered memory answers. Registering Hearth's mapping makes
its views pinned, and ComfyUI then leaves them alone instead of pinning them its way.

How. `cudaHostRegister(base, length, cudaHostRegisterPortable | cudaHostRegisterReadOnly)` on the whole
mapping, once per mapping, undone (`cudaHostUnregister`) before the mapping is unmapped (client/mapping.py
calls `forget` from the mapping's finalizer), within a per-process budget of registered bytes
(HEARTH_PIN_BUDGET: '24G', '40%' of RAM, bytes; default 50 % of RAM; registering shared pages costs no RAM,
but pinned pages can be neither reclaimed nor swapped). Portable: every CUDA context of the process sees it
as pinned (ComfyUI's multi-GPU paths copy to other devices). The call goes through `torch.cuda.cudart()`,
not ctypes on libcudart: that binding is the CUDA runtime torch itself loaded (a libcudart found by ctypes
may be another version with its own error state), ComfyUI uses the same one, and the flags are a plain
unsigned int. It lacks cudaGetLastError and cudaDeviceGetAttribute, so a refusal's sticky "last error" is
consumed the way ComfyUI does it (a tiny kernel whose launch check reads it) and support for the read-only
flag is learnt by trying. Nothing registers in a process that has not initialised CUDA itself: Hearth never
creates a CUDA context (hundreds of MiB of VRAM) behind a program's back.

The two hazards of DESIGN section 4, and what this module does about them:

1. A writable registration (without cudaHostRegisterReadOnly, as ComfyUI's pin_memory makes it) pins every
   page for writing; on a MAP_PRIVATE mapping the kernel first gives the process a private copy of each
   page, so the process ends up with its own copy of the model and the sharing is gone. Hearth registers
   read-only, and where the driver or device refuses that flag (cudaErrorNotSupported: CUDA before 11.1, or
   a device without cudaDevAttrHostRegisterReadOnlySupported) it never falls back to a writable one: the
   mapping stays pageable and the reason says why.
2. A read-only registration pins the segment's shared pages as they are. A later CPU write into a view
   (copy-on-write) moves the process onto a new private page while the GPU's DMA keeps reading the pinned
   old one: the GPU would get the weights as they were before the write, a wrong tensor. Registration is
   therefore safe only for views nobody writes in place while they are registered. In ComfyUI the
   readers are the assignment builds, the classic LoRA patching (`patch_weight_to_device` without
   inplace_update installs new tensors and keeps the original as the backup), the Dynamic VRAM path and
   plain `.to(device)` copies. The writers in place are the hooks path (CreateHookLora, scheduled LoRA:
   `copy_to_param` into the weight; on a GPU-resident weight that writes VRAM, on an offloaded one our page),
   patchers made with `weight_inplace_update` (and their backup restore), `convert_diffusers_mmdit` on a
   diffusers-format FLUX/SD3 file (`w[:] = ...` while building), training nodes, and any script holding
   the drop-in's tensors. Hence the rules this module keeps:
   - nothing registers when a segment is mapped: a caller that knows the views' consumers asks
     (`register_views`), after the build; the pack's VRAM node does it at sampling time for a model
     whose patcher has no hooks and no `weight_inplace_update` (nodes/vram.py);
   - a mapping where a page is already private (someone wrote into it) is not registered;
   - `verify_views` finds pages written since registration (in /proc/self/pagemap they are no longer the
     segment's file pages) and unregisters their mapping at once, reporting it; a caller runs it at each
     point it controls. It cannot stop a write between two checks: that is why the rule above comes first.

Every refusal leaves the load as it was (pageable views, ComfyUI's own behaviour) and is reported once in
the log and in `status()`, which the VRAM node sends to the daemon with its plan (panel, `hearth status`).
"""

from __future__ import annotations

import bisect
import ctypes
import logging
import mmap
import os
import resource
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import psutil
import torch

from ..core.sizes import format_size, parse_size

log = logging.getLogger("hearth.client")

PORTABLE, READ_ONLY = 1, 8  # cudaHostRegisterPortable, cudaHostRegisterReadOnly
FLAGS = PORTABLE | READ_ONLY
DEFAULT_BUDGET = "50%"
PAGE = mmap.PAGESIZE

# cudaError_t values a registration can answer, in words for the reason.
_CUDA_ERRORS = {
    1: "cudaErrorInvalidValue", 2: "cudaErrorMemoryAllocation (the driver could not lock the pages)",
    3: "cudaErrorInitializationError", 35: "cudaErrorInsufficientDriver", 100: "cudaErrorNoDevice",
    304: "cudaErrorOperatingSystem", 712: "cudaErrorHostMemoryAlreadyRegistered",
    801: "cudaErrorNotSupported (this driver or device has no read-only registration; Hearth does not fall "
         "back to a writable one, which would copy every page)",
}


@dataclass
class Pin:
    """One mapping this process made, and whether CUDA has it registered."""

    base: int
    size: int
    name: str
    registered: bool = False
    reason: str | None = None  # why it is not registered (None: registered, or never asked)

    def to_dict(self) -> dict:
        # The file name only: this goes to the panel, which never shows paths.
        return {"name": os.path.basename(self.name), "size": self.size, "registered": self.registered,
                "reason": self.reason}


class PinBudget:
    """Bytes this process may keep registered: a registration that would pass the limit is refused whole."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self, size: int) -> str | None:
        """Count `size` in, or say why not (None: taken)."""
        if self.used + size > self.limit:
            return (f"over the pinned budget: {format_size(self.used)} of {format_size(self.limit)} registered, "
                    f"this mapping needs {format_size(size)} (HEARTH_PIN_BUDGET)")
        self.used += size
        return None

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)


def budget_from_env() -> int:
    text = os.environ.get("HEARTH_PIN_BUDGET", DEFAULT_BUDGET)
    try:
        return parse_size(text, total=psutil.virtual_memory().total)
    except ValueError:
        log.warning("HEARTH_PIN_BUDGET=%r is not a size; using %s of RAM", text, DEFAULT_BUDGET)
        return parse_size(DEFAULT_BUDGET, total=psutil.virtual_memory().total)


def memlock_limit() -> dict:
    """RLIMIT_MEMLOCK of this process (bytes; None: unlimited). mlock counts against it; the NVIDIA driver
    is not known to charge registrations to it (not yet measured here), so it is context for a refusal."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return {"soft": None if soft == resource.RLIM_INFINITY else soft,
            "hard": None if hard == resource.RLIM_INFINITY else hard}


def written_pages(base: int, size: int) -> int:
    """Pages of [base, base + size) of this process that are private now (written since mapped, copy-on-write)
    rather than the mapped file's own: /proc/self/pagemap, bit 63 present, 62 swapped, 61 file or shared."""
    first, count = base // PAGE, (base + size + PAGE - 1) // PAGE - base // PAGE
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        raw = bytearray(count * 8)
        view, got = memoryview(raw), 0
        f.seek(first * 8)
        while got < len(raw):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    entries = torch.frombuffer(raw, dtype=torch.int64)[: got // 8]
    present, swapped, shared = (entries >> 63) & 1, (entries >> 62) & 1, (entries >> 61) & 1
    return int(((present | swapped) & (1 - shared)).sum())


class _Pins:
    """The mappings of this process by base address, their registrations and the budget (one lock)."""

    def __init__(self) -> None:
        # Re-entrant: a mapping's finalizer (forget) can run from a garbage collection that any allocation
        # under the lock triggers, on the thread that holds it.
        self.lock = threading.RLock()
        self.by_id: dict[int, Pin] = {}
        self.bases: list[int] = []  # sorted, for finding a tensor's mapping
        self.by_base: dict[int, Pin] = {}
        self.budget: PinBudget | None = None
        self.reported: set[str] = set()

    def find(self, ptr: int) -> Pin | None:
        i = bisect.bisect_right(self.bases, ptr) - 1
        if i >= 0:
            pin = self.by_base[self.bases[i]]
            if ptr < pin.base + pin.size:
                return pin
        return None


_pins = _Pins()


def track(mm: mmap.mmap, size: int, name: str) -> None:
    """Remember a new mapping (client/mapping.py, for every segment it maps); registers nothing."""
    holder = ctypes.c_char.from_buffer(mm)  # a buffer export, released at once: only the address is kept
    base = ctypes.addressof(holder)
    del holder
    pin = Pin(base, size, name)
    with _pins.lock:
        _pins.by_id[id(mm)] = pin
        _pins.by_base[base] = pin
        bisect.insort(_pins.bases, base)


def forget(mm: mmap.mmap) -> None:
    """The mapping is about to be unmapped: unregister it first (the pages must not stay locked for a range
    that no longer exists, nor collide with the next mapping placed there)."""
    with _pins.lock:
        pin = _pins.by_id.pop(id(mm), None)
        if pin is None:
            return
        del _pins.by_base[pin.base]
        _pins.bases.remove(pin.base)
        if pin.registered:
            _unregister(pin)


def register_views(tensors: Iterable[torch.Tensor]) -> list[Pin]:
    """Register, read-only and once each, the mappings that back these tensors; the outcome per mapping.

    Call only for views no one will write in place while registered (module docstring). Tensors that are
    not Hearth's views (ComfyUI's own copies, GPU tensors) are skipped.
    """
    pins = _pins_of(tensors)
    with _pins.lock:
        why_not = _why_not_registrable()
        if why_not:
            _say_once(why_not, logging.INFO)  # no CUDA here: nothing to warn about
        for pin in pins:
            if pin.registered:
                continue
            pin.reason = why_not or _register(pin)
            pin.registered = pin.reason is None
            if pin.reason and not why_not:
                _say_once(pin.reason, logging.WARNING)
    return pins


def unregister_views(tensors: Iterable[torch.Tensor], reason: str) -> list[Pin]:
    """Unregister the mappings behind these tensors (their consumers are about to write in place); those."""
    undone = []
    with _pins.lock:
        for pin in _pins_of_locked(tensors):
            if pin.registered:
                _unregister(pin)
                undone.append(pin)
            pin.reason = reason
    for pin in undone:
        log.info("Hearth: %s unregistered for CUDA: %s", pin.name, reason)
    return undone


def mapping_of(tensor: torch.Tensor) -> Pin | None:
    """The mapping this process made that holds `tensor`'s data, or None (not a view of a segment)."""
    found = _pins_of([tensor])
    return found[0] if found else None


def verify_views(tensors: Iterable[torch.Tensor]) -> list[Pin]:
    """Unregister each registered mapping behind these tensors in which a page was written since; those."""
    undone = []
    for pin in _pins_of(tensors):
        with _pins.lock:
            if not pin.registered:
                continue
            try:
                written = written_pages(pin.base, pin.size)
                why = (f"{written} page(s) written after registration (an in-place patch): unregistered, so "
                       "the GPU reads what the CPU sees; copies are pageable again") if written else None
            except OSError as e:  # cannot look: cannot vouch for the pages either
                why = f"/proc/self/pagemap unreadable ({e.strerror}): unregistered, writes could not be seen"
            if why:
                _unregister(pin)
                pin.reason = why
                log.warning("Hearth: %s: %s", pin.name, why)
                undone.append(pin)
    return undone


def status() -> dict:
    """What is registered in this process and why not, for the daemon's status and the panel."""
    with _pins.lock:
        pins = list(_pins.by_id.values())
        budget = _pins.budget
    return {"available": _why_not_registrable() is None, "reason": _why_not_registrable(),
            "budget": budget.limit if budget else budget_from_env(),
            "registered": sum(p.size for p in pins if p.registered),
            "memlock": memlock_limit(), "mappings": [p.to_dict() for p in pins]}


def _pins_of(tensors: Iterable[torch.Tensor]) -> list[Pin]:
    with _pins.lock:
        return _pins_of_locked(tensors)


def _pins_of_locked(tensors: Iterable[torch.Tensor]) -> list[Pin]:
    found: dict[int, Pin] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.numel():
            pin = _pins.find(t.data_ptr())
            if pin is not None:
                found[pin.base] = pin
    return list(found.values())


def _why_not_registrable() -> str | None:
    """Why nothing can be registered in this process now (None: it can be tried)."""
    if os.environ.get("HEARTH_PIN", "").lower() in ("0", "off", "no", "false"):
        return "HEARTH_PIN is off"
    if torch.version.cuda is None:
        return f"no CUDA: this torch ({torch.__version__}) is not a CUDA build"
    if not torch.cuda.is_available():
        return "no CUDA device is available to this process"
    if not torch.cuda.is_initialized():
        return "this process has not initialised CUDA (Hearth never creates a CUDA context itself)"
    return None


def _register(pin: Pin) -> str | None:
    """cudaHostRegister the mapping read-only within the budget (lock held); None, or why not."""
    if _pins.budget is None:
        _pins.budget = PinBudget(budget_from_env())
    try:
        written = written_pages(pin.base, pin.size)
    except OSError as e:  # without it a later write could not be detected
        return f"/proc/self/pagemap unreadable ({e.strerror}): writes into the views could not be detected"
    if written:
        return f"{written} page(s) already written in this process: some consumer writes in place, not safe to pin"
    refused = _pins.budget.take(pin.size)
    if refused:
        return refused
    err = int(torch.cuda.cudart().cudaHostRegister(pin.base, pin.size, FLAGS))
    if err == 0:
        log.info("Hearth: %s registered read-only for CUDA (%s)", pin.name, format_size(pin.size))
        return None
    _pins.budget.give_back(pin.size)
    _consume_cuda_error()
    reason = f"cudaHostRegister refused: {_CUDA_ERRORS.get(err, f'cudaError {err}')}"
    limit = memlock_limit()["soft"]
    if err == 2 and limit is not None:
        reason += f"; RLIMIT_MEMLOCK is {format_size(limit)}"
    return reason


def _unregister(pin: Pin) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(pin.base)
    except Exception as e:  # noqa: BLE001 - at interpreter exit CUDA may be gone; the kernel unpins at exit
        log.debug("cudaHostUnregister of %s: %s", pin.name, e)
    pin.registered = False
    if _pins.budget is not None:
        _pins.budget.give_back(pin.size)


def _consume_cuda_error() -> None:
    """A failed runtime call leaves its error as the thread's last error, which torch's next kernel launch
    check would raise as its own; a tiny kernel reads it here instead (what ComfyUI does after a failed pin)."""
    try:
        (torch.ones(1, device="cuda") + 1).item()
    except RuntimeError:
        pass


def _say_once(reason: str, level: int) -> None:
    if reason not in _pins.reported:
        _pins.reported.add(reason)
        log.log(level, "Hearth: views not pinned for CUDA: %s", reason)
