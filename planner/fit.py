"""What would fit where a plan is refused: the largest model this machine runs, the RAM or VRAM this model needs.

Each figure is a search over plan.fitting(), so it follows the ladder's rules and nothing else: every rule
holds for a smaller model and for more RAM or VRAM if it holds at all, so bisection finds the edge. A figure
is rounded to what format_size prints (one decimal of its unit) on the safe side: a size printed as fitting
fits, a need printed is enough.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .detect import Hardware
from .plan import DEFAULT_RESERVE, LADDER, WORKSPACE_FLOOR, ModelSpec, compute_bytes, fitting
from .work import GENERIC, Work


@dataclass(frozen=True)
class Fit:
    """A figure and the strategy the planner picks at it. `usable`: for a VRAM figure, the VRAM left after the
    reserve (what a budget must allow)."""

    bytes: int
    strategy: str
    usable: int | None = None


@dataclass(frozen=True)
class WouldFit:
    """What would fit instead of a refused plan.

    `largest`: per strategy (only those that can run some model of this kind here), the largest model of the
    same kind, stored type and family this machine runs with it; `best`: the largest of them all. `ram`: the
    RAM this model needs on this GPU (None: no RAM is enough); `vram`: the free VRAM it needs with this RAM,
    on this GPU (on a CUDA GPU where there is none), without a budget (None: no VRAM is enough).
    """

    largest: dict[str, int]
    best: Fit | None
    ram: Fit | None
    vram: Fit | None


def would_fit(model: ModelSpec, hardware: Hardware, budget: int | None = None, reserve: int | None = None,
              strategy: str = "auto", work: Work | None = None) -> WouldFit:
    """The figures for a model plan() refused with these arguments; with a `strategy` asked for, for that one."""
    def runs(m: ModelSpec, hw: Hardware, b: int | None, s: str = strategy) -> bool:
        fits = fitting(m, hw, b, reserve, work)
        return bool(fits) if s == "auto" else s in fits

    def choice(hw: Hardware, b: int | None) -> str:
        return fitting(model, hw, b, reserve, work)[0] if strategy == "auto" else strategy

    def sized(s: str) -> Callable[[int], bool]:  # whether a model of w bytes runs here with strategy s
        return lambda w: runs(_scaled(model, w), hardware, budget, s)

    def with_ram(r: int) -> Hardware:
        return dataclasses.replace(hardware, ram_available=r, ram_total=max(hardware.ram_total, r))

    def with_vram(v: int) -> Hardware:
        card = (dataclasses.replace(gpu, vram_free=v, vram_total=max(gpu.vram_total, v)),) if gpu else \
            Hardware.profile(v, 0).accelerators
        return dataclasses.replace(hardware, accelerators=card)

    gpu = hardware.accelerators[0] if hardware.accelerators else None
    # No model fits past the VRAM and the RAM together (at the width a GPU holds it: fp32 is 16-bit there).
    top = ((gpu.vram_free if gpu else 0) + hardware.ram_available) * model.dtype_bytes // \
        compute_bytes(model, "full_gpu")
    largest = {s: n for s in (LADDER if strategy == "auto" else (strategy,)) if (n := _most(sized(s), top))}
    best = None
    if largest:
        size = max(largest.values())
        best = Fit(size, next(s for s in LADDER if largest.get(s) == size))

    workspace = max(WORKSPACE_FLOOR, (model.family or GENERIC).workspace(work))
    ram_top = model.params * compute_bytes(model, "cpu") + workspace  # what the CPU needs: no plan needs more
    need = _least(lambda r: runs(model, with_ram(r), budget), ram_top)
    ram = None if need is None else Fit(need, choice(with_ram(need), budget))

    vram = None
    if strategy != "cpu":  # the CPU needs no VRAM: more of it would change nothing
        reserved = DEFAULT_RESERVE if reserve is None else reserve
        vram_top = model.params * compute_bytes(model, "full_gpu") + workspace + reserved  # full_gpu fits there
        need = _least(lambda v: runs(model, with_vram(v), None), vram_top)
        if need is not None:
            vram = Fit(need, choice(with_vram(need), None), max(0, need - reserved))
    return WouldFit(largest, best, ram, vram)


def _scaled(model: ModelSpec, weights: int) -> ModelSpec:
    """The same kind of model at another size, its largest tensor in the same proportion."""
    largest = None if model.largest_bytes is None else max(1, model.largest_bytes * weights // model.weights_bytes)
    return dataclasses.replace(model, weights_bytes=weights, largest_bytes=largest)


def _most(fits: Callable[[int], bool], top: int) -> int | None:
    """The largest size up to `top` bytes that fits, rounded down to what is printed; None when not even 1 byte does."""
    lo, hi = 1, max(1, top)
    if not fits(lo):
        return None
    if fits(hi):
        return _printed(hi, up=False)
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return _printed(lo, up=False)


def _least(fits: Callable[[int], bool], top: int) -> int | None:
    """The least amount up to `top` bytes that fits, rounded up to what is printed; None when `top` does not."""
    lo, hi = 0, top
    if not fits(hi):
        return None
    if fits(lo):
        return 0
    while hi - lo > 1:  # not fits(lo), fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return _printed(hi, up=True)


def _printed(n: int, up: bool) -> int:
    """`n` rounded to one decimal of the unit format_size prints it in (bytes stay whole)."""
    unit = 1
    while unit < 1 << 40 and n >= unit * 1024:
        unit *= 1024
    if unit == 1:
        return n
    if up:
        return _ceil_div(_ceil_div(n * 10, unit) * unit, 10)
    return n * 10 // unit * unit // 10


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
